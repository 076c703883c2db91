"""sftune: supervised fine-tuning of causal language models."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("sftune")
except PackageNotFoundError:  # running from a source tree without installing
    __version__ = "0.0.0+source"

__all__ = ["__version__", "train"]


def __getattr__(name: str):
    # `from sftune import train` without importing torch and transformers at `import sftune`.
    if name == "train":
        from sftune.recipes import train

        return train
    raise AttributeError(f"module 'sftune' has no attribute {name!r}")
