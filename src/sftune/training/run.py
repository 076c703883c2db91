"""What the SFT and preference recipes share about a run: start it or resume it, the dtype of its base
weights, whether it packs its rows, its final held-out metrics, whether this process writes the run folder,
its peak memory, and the result a recipe returns."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from sftune import methods
from sftune.config import Config, ConfigError
from sftune.packing import packing_refused
from sftune.training.checkpoints import last_checkpoint

if TYPE_CHECKING:
    from sftune.training.trainer import SFTTrainer


@dataclass
class TrainResult:
    """What a run produced: its folder, the summary written there, and the trained model in memory."""

    run_dir: Path
    summary: dict[str, Any]
    model: Any = field(repr=False, default=None)
    tokenizer: Any = field(repr=False, default=None)


def start_or_resume(cfg: Config, run_dir: Path, console) -> str | None:
    """The checkpoint to resume from, or None for a fresh run (clearing a finished run's files only
    with output.overwrite=true)."""
    checkpoints = run_dir / "checkpoints"
    resume = _resolve_resume(cfg.train.resume_from, checkpoints, console)
    if resume is None and (last_checkpoint(checkpoints) or (run_dir / "summary.json").exists()):
        if not cfg.output.overwrite:
            raise ConfigError(
                f"{run_dir} already holds a run. Resume it with train.resume_from=last, replace it with "
                "output.overwrite=true, or choose another output.dir"
            )
        if is_main_process():
            shutil.rmtree(checkpoints, ignore_errors=True)
            for name in ("metrics.jsonl", "summary.json"):
                (run_dir / name).unlink(missing_ok=True)
    return resume


# The half precisions of mixed-precision training, as the dtype a frozen base is held in.
HALF_DTYPE = {"bf16": torch.bfloat16, "fp16": torch.float16}


def weights_dtype(cfg: Config, precision: str, *, half_on_cpu: bool = True, cuda: bool | None = None) -> torch.dtype:
    """The dtype the base model's weights are loaded in: model.dtype, or for auto fp32, except a frozen base
    under an adapter trained in bf16 or fp16, held in that dtype: autocast would recast the fp32 weights to the
    same half values at every forward; holding them halves the weights' memory. The adapter stays fp32 (peft
    upcasts it, as fp16's gradient scaler needs). `half_on_cpu=False` keeps an auto base in fp32 without CUDA
    (the vision-language branch's rule on a CPU). `cuda`: whether the run has CUDA (default: this machine's);
    the memory estimate passes the device it estimates for."""
    if cfg.model.dtype != "auto":
        return getattr(torch, cfg.model.dtype)
    adapter = cfg.method.name not in ("full", "freeze")
    if not adapter or not (half_on_cpu or (torch.cuda.is_available() if cuda is None else cuda)):
        return torch.float32
    return HALF_DTYPE.get(precision, torch.float32)


def packing_decision(cfg: Config, model: Any = None, *, refused: str | None = None) -> tuple[bool, str | None]:
    """(whether this run packs its rows, why not when data.packing asked for it). Before the model loads
    (model=None) the method alone decides, so the attention implementation can follow; with the model, the
    method on this model and then the model's own packed rows against its sequences alone (the start-up probe,
    packing.packing_refused). `refused`: a reason the caller knows already (a family's rule), which wins."""
    if not cfg.data.packing:
        return False, None
    ok, why = methods.packing_supported(cfg.method, model)
    if ok and refused is not None:
        why = refused
    elif ok and model is not None:
        why = packing_refused(model)
    return not why, why or None


def final_evaluation(trainer: SFTTrainer) -> dict[str, Any]:
    """Held-out metrics of the model as saved: the evaluation of its step when there was one (the last step's,
    or the best checkpoint's with eval.keep_best), else a new one."""
    state = trainer.state
    loaded_best = trainer.args.load_best_model_at_end and state.best_model_checkpoint is not None
    step = state.best_global_step if loaded_best and state.best_global_step is not None else state.global_step
    done = next((r for r in reversed(state.log_history) if "eval_loss" in r and r["step"] == step), None)
    if done is not None:
        return {k: v for k, v in done.items() if k.startswith("eval_")}
    return trainer.evaluate()


def _resolve_resume(resume_from: str | None, checkpoints: Path, console) -> str | None:
    if resume_from is None:
        return None
    if resume_from == "last":
        found = last_checkpoint(checkpoints)
        if found is None:
            console.print(f"[yellow]resume_from=last: no complete checkpoint in {checkpoints}; starting fresh[/yellow]")
        return found
    if not (Path(resume_from) / "trainer_state.json").exists():
        raise ConfigError(f"train.resume_from={resume_from}: not a checkpoint folder (no trainer_state.json)")
    return resume_from


def is_main_process() -> bool:
    """Whether this is the first process of a launch (RANK 0), the one that writes the run folder's files."""
    return int(os.environ.get("RANK", "0")) == 0


def peak_memory_mb() -> float:
    """The peak memory of this process: the GPU's allocated peak, else the CPU's resident peak."""
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kilobytes
