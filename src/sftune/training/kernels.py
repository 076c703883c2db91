"""train.kernels: liger replaces a supported model's RMSNorm, rotary embedding and SwiGLU MLP by Liger Kernel's
fused Triton kernels (CUDA only, the optional `liger-kernel` package). sftune's own chunked loss head stays: it
takes per-token loss weights and every token loss of train.loss, which Liger's fused linear cross-entropy does not.
"""

from __future__ import annotations

import importlib.util
from typing import Any

from sftune.config import ConfigError


def check_kernels(kernels: str, *, cuda: bool, installed: bool | None = None) -> None:
    """Refuse train.kernels=liger before the model loads where it cannot run: without the liger_kernel package,
    or without a CUDA GPU (its kernels are Triton kernels for CUDA). `installed` defaults to whether it imports."""
    if kernels != "liger":
        return
    if installed is None:
        installed = importlib.util.find_spec("liger_kernel") is not None
    if not installed:
        raise ConfigError("train.kernels=liger needs the liger-kernel package, which is not installed: "
                          "pip install liger-kernel, or set train.kernels=torch")
    if not cuda:
        raise ConfigError("train.kernels=liger runs on a CUDA GPU only (Triton kernels) and this machine has none: "
                          "set train.kernels=torch")


def apply_kernels(model: Any, kernels: str, supported: dict[str, Any] | None = None) -> str | None:
    """Put Liger's fused RMSNorm, rotary embedding and SwiGLU into `model` (a transformers causal LM, before its
    method wraps it) for train.kernels=liger; a model type Liger does not cover is refused. `supported` is
    Liger's own table of model types (liger_kernel.transformers.monkey_patch.MODEL_TYPE_TO_APPLY_LIGER_FN)."""
    if kernels != "liger":
        return None
    if supported is None:
        from liger_kernel.transformers.monkey_patch import MODEL_TYPE_TO_APPLY_LIGER_FN as supported
    model_type = model.config.model_type
    if model_type not in supported:
        raise ConfigError(f"train.kernels=liger: Liger Kernel has no kernels for model type {model_type!r} "
                          f"(it covers {', '.join(sorted(supported))}): set train.kernels=torch")
    supported[model_type](model=model, rope=True, rms_norm=True, swiglu=True, cross_entropy=False,
                          fused_linear_cross_entropy=False)
    return f"train.kernels=liger: Liger's fused RMSNorm, RoPE and SwiGLU in {model_type}; sftune's loss head"
