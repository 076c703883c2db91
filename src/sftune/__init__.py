"""sftune: supervised fine-tuning of causal language models."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("sftune")
except PackageNotFoundError:  # running from a source tree without installing
    __version__ = "0.0.0+source"

__all__ = ["__version__", "train"]


def __getattr__(name: str):
    # `sftune.train(config)` without importing torch and transformers at `import sftune`.
    # sftune.train is also the module's name; the module is callable (it runs train()).
    if name == "train":
        import importlib

        return importlib.import_module("sftune.train")
    raise AttributeError(f"module 'sftune' has no attribute {name!r}")
