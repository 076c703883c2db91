"""The reference model's log-probabilities, computed once before training and cached in the dataset.

The reference is the model as training starts, with no second copy held: a full or freeze model is
run before its first step; a fresh LoRA / QLoRA adapter is switched off (peft's `disable_adapter`), which
is the same model; an adapter continued from an SFT run stays on (the SFT model is the reference).
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable

import torch

from sftune.preference.logps import sequence_logps
from sftune.training.loss import gathered


@torch.no_grad()
def add_reference_logps(model: Any, dataset: Any, collate: Callable, *, batch_size: int, adapter_off: bool,
                        device: Any = None, progress: bool = True, precision: str = "fp32") -> Any:
    """`dataset` with columns ref_chosen and ref_rejected: each answer's summed log-prob under the reference.

    `precision` is training's (bf16 / fp16 run under autocast): the reference must be computed as the policy
    is, else at step 0 the rewards are the bf16-vs-fp32 rounding gap, not 0. `device` is where training runs
    the model (see reference_device).
    """
    from rich.progress import track

    was_training = model.training
    model.eval()
    off = model.disable_adapter() if adapter_off and hasattr(model, "disable_adapter") else contextlib.nullcontext()
    chosen, rejected = [], []
    starts = range(0, len(dataset), batch_size)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    device = reference_device(model, device)
    cast = torch.autocast(device.type, dtype=dtype) if dtype else contextlib.nullcontext()
    with off, cast, gathered_per_module(model):
        for start in track(starts, description="reference log-probs", disable=not progress):
            features = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
            batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in collate(features).items()}
            sums, _ = sequence_logps(model, batch)
            half = len(features)
            chosen += sums[:half].tolist()
            rejected += sums[half:].tolist()
    model.train(was_training)
    return dataset.add_column("ref_chosen", chosen).add_column("ref_rejected", rejected)


def reference_device(model: Any, device: Any = None) -> torch.device:
    """The device the reference pass runs on, with the model there: moved to `device` (where training will run
    it), unless it was placed when loaded (a 4-bit base's device_map; weights ZeRO-3 split as they loaded, each
    part already on its process's device), which stays. The batches follow the model."""
    if device is not None and getattr(model, "hf_device_map", None) is None and not zero3_split(model):
        model.to(device)
    return next(model.parameters()).device


def zero3_split(model: Any) -> bool:
    """Whether DeepSpeed ZeRO-3 holds the model's weights split over processes (zero3_init_flag: true)."""
    return any(getattr(p, "ds_status", None) is not None for p in model.parameters())


@contextlib.contextmanager
def gathered_per_module(model: Any):
    """Inside, each module's own weights are gathered whole for its forward and split again after it, where
    ZeRO-3 split them as they loaded (zero3_init_flag: true): the reference pass runs before the Trainer builds
    the DeepSpeed engine whose hooks do this in training, and would otherwise meet empty weights. One module's
    weights are whole at a time, as in training; every process runs the same batches, so the gathers pair up.
    Nothing to do otherwise."""
    if not zero3_split(model):
        yield
        return
    held: dict[torch.nn.Module, Any] = {}

    def gather(module, args):
        held[module] = gathered(module)
        held[module].__enter__()

    def release(module, args, output):
        held.pop(module).__exit__(None, None, None)

    owners = [m for m in model.modules() if next(m.parameters(recurse=False), None) is not None]
    hooks = [hook for m in owners for hook in (m.register_forward_pre_hook(gather), m.register_forward_hook(release))]
    try:
        yield
    finally:
        for hook in hooks:
            hook.remove()
        for context in held.values():  # a forward that raised: split its weights again
            context.__exit__(None, None, None)
