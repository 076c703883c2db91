"""sftune: supervised fine-tuning of causal language models."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("sftune")
except PackageNotFoundError:  # running from a source tree without installing
    __version__ = "0.0.0+source"

__all__ = ["__version__"]
