"""What the command line shows of the libraries underneath: their warnings and logs are for
developers, so a user sees them only with `--verbose` (or SFTUNE_VERBOSE=1).

Three sources are quieted. Python warnings (FutureWarning, DeprecationWarning and UserWarning raised
inside torch, transformers, peft, accelerate, datasets, bitsandbytes, deepspeed), library loggers, and
progress bars. The loudest: `import peft` imports bitsandbytes whenever it is installed, and on CPUs
with AVX512-BF16 bitsandbytes then logs "Failed to load CPU gemm_4bit_forward from kernels-community"
(an optional faster kernel from the hub, which sftune does not use); accelerate imports deepspeed,
whenever it is installed, in every `save_pretrained` (`extract_model_from_parallel`), and deepspeed
then logs "Setting accelerator to CPU" on a machine without a GPU; transformers draws tqdm bars while it
loads, de-quantizes (GGUF) and writes weights. sftune's own code imports bitsandbytes only for a
4-bit model, and draws its own progress with rich.
"""

from __future__ import annotations

import logging
import os
import warnings

LIBRARIES = ("torch", "transformers", "peft", "accelerate", "datasets", "bitsandbytes", "huggingface_hub", "tokenizers",
             "deepspeed")
# Read by the libraries when they are first imported, so set before any of them is: transformers' and
# datasets' log levels, and tqdm's default for every bar (tqdm reads TQDM_* once, at its import).
QUIET_ENVIRONMENT = {"TRANSFORMERS_VERBOSITY": "error", "DATASETS_VERBOSITY": "error", "TQDM_DISABLE": "1"}
# deepspeed sets its own logger's level (WARNING) and handler (stdout) when imported: a level set here
# would not hold, a filter does.
OWN_LEVEL_LOGGERS = ("DeepSpeed",)

_verbose = False
_set_here: dict[str, str] = {}  # the QUIET_ENVIRONMENT variables this process set (verbose takes back only these)


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
    for name in OWN_LEVEL_LOGGERS:
        logging.getLogger(name).addFilter(_errors_unless_verbose)  # the same function once: adding twice is a no-op
    if verbose:
        for key, value in QUIET_ENVIRONMENT.items():
            if _set_here.pop(key, None) == value and os.environ.get(key) == value:
                del os.environ[key]
        return
    for key, value in QUIET_ENVIRONMENT.items():
        if key not in os.environ:  # a user's own setting wins
            os.environ[key] = _set_here[key] = value
    pattern = "|".join(LIBRARIES)
    for category in (FutureWarning, DeprecationWarning, UserWarning):
        warnings.filterwarnings("ignore", category=category, module=rf"({pattern})(\.|$)")
    # Raised with a stacklevel that points into the caller (sftune), so matched by text instead.
    warnings.filterwarnings("ignore", message=r".*(deprecated|will be removed).*", category=FutureWarning)


def _errors_unless_verbose(record: logging.LogRecord) -> bool:
    return _verbose or record.levelno >= logging.ERROR
