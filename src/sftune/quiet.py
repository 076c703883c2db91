"""What the command line shows of the libraries underneath: their warnings and logs are for
developers, so a user sees them only with `--verbose` (or SFTUNE_VERBOSE=1).

Two sources are quieted. Python warnings (FutureWarning, DeprecationWarning and UserWarning raised
inside torch, transformers, peft, accelerate, datasets, bitsandbytes), and library loggers. The
loudest: `import peft` imports bitsandbytes whenever it is installed, and on CPUs with AVX512-BF16
bitsandbytes then logs "Failed to load CPU gemm_4bit_forward from kernels-community" (an optional
faster kernel from the hub, which sftune does not use). sftune's own code imports bitsandbytes only
for a 4-bit model.
"""

from __future__ import annotations

import logging
import os
import warnings

LIBRARIES = ("torch", "transformers", "peft", "accelerate", "datasets", "bitsandbytes", "huggingface_hub", "tokenizers")

_verbose = False


def verbose_from_env() -> bool:
    return os.environ.get("SFTUNE_VERBOSE", "").lower() in ("1", "true", "yes")


def is_verbose() -> bool:
    return _verbose


def configure(verbose: bool) -> None:
    """Quiet the libraries (verbose=False) or let everything through (verbose=True)."""
    global _verbose
    _verbose = verbose
    level = logging.NOTSET if verbose else logging.ERROR
    for name in LIBRARIES:
        logging.getLogger(name).setLevel(level)
    if verbose:
        os.environ.pop("TRANSFORMERS_VERBOSITY", None)
        return
    # transformers has its own logging setup, which reads this when it is first imported.
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DATASETS_VERBOSITY", "error")
    pattern = "|".join(LIBRARIES)
    for category in (FutureWarning, DeprecationWarning, UserWarning):
        warnings.filterwarnings("ignore", category=category, module=rf"({pattern})(\.|$)")
    # Raised with a stacklevel that points into the caller (sftune), so matched by text instead.
    warnings.filterwarnings("ignore", message=r".*(deprecated|will be removed).*", category=FutureWarning)
