"""The sftune configuration mapped onto `transformers.TrainingArguments`, with the checks that only
make sense together (checkpoints and evaluations on one schedule for keep-best, a micro-batch that
divides the batch)."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from sftune.config import Config, ConfigError, TrainSection
from sftune.distributed import arguments_before_model, launcher


def micro_batch_size(t: TrainSection, *, packing: bool, cuda: bool) -> int:
    """Rows (or sequences) per forward pass. On a CPU one packed row at a time is faster than several
    (the activations of ~512 tokens stay in cache; see bench/results) and needs less memory; the loss
    and gradients are the same (normalized per optimizer step)."""
    micro = t.micro_batch_size or (1 if packing and not cuda else t.batch_size)
    micro = min(micro, t.batch_size)
    if t.batch_size % micro:
        raise ConfigError(
            f"train.micro_batch_size={micro} must divide train.batch_size={t.batch_size}: each optimizer step "
            f"accumulates batch_size / micro_batch_size forward passes; e.g. train.micro_batch_size=1"
        )
    return micro


def optimizer(configured: str, *, cuda: bool) -> str:
    """train.optim with auto decided: on a CUDA GPU transformers' default (fused AdamW: one kernel for all
    parameters instead of a loop over them), elsewhere adamw_torch."""
    from transformers import TrainingArguments

    if configured != "auto":
        return configured
    return str(TrainingArguments.__dataclass_fields__["optim"].default) if cuda else "adamw_torch"


def tf32(cuda: bool, capability: tuple[int, int] | None) -> bool | None:
    """TF32 matmuls on (True) for CUDA GPUs from Ampere on (compute capability 8.0): fp32 matmuls, such as the
    output layer's fp32 weight gradient, run on tensor cores. None leaves torch's setting (off) elsewhere."""
    return True if cuda and capability is not None and capability >= (8, 0) else None


def dataloader_workers(configured: int | None, *, cuda: bool, cpus: int, local_processes: int) -> int:
    """train.dataloader_workers with None decided: on a CUDA GPU up to 4 workers per process (leaving each process
    a CPU of its own), so batches are read and collated while the GPU computes; 0 elsewhere (a CPU trains on
    the same cores the workers would take)."""
    if configured is not None:
        return configured
    return max(0, min(4, cpus // max(local_processes, 1) - 1)) if cuda else 0


# train.report_to names whose transformers check (integration_utils.is_<name>_available) or pip package differ
_AVAILABILITY_CHECK = {"azure_ml": "azureml", "comet_ml": "comet", "flyte": "flytekit"}
_PIP_PACKAGE = {"azure_ml": "azureml-core", "flyte": "flytekit"}


def check_report_to(report_to: list[str]) -> None:
    """Each train.report_to logger is one transformers knows and its package is installed (else a ConfigError
    naming the package to install), checked before the model loads rather than when the Trainer starts."""
    from transformers.integrations import integration_utils

    known = integration_utils.INTEGRATION_TO_CALLBACK
    for name in report_to:
        if name in ("none", "all"):
            continue
        if name not in known:
            raise ConfigError(f"train.report_to: {name!r} is not a logger transformers knows; use one of "
                              f"{', '.join(known)} (or none)")
        available = getattr(integration_utils, f"is_{_AVAILABILITY_CHECK.get(name, name)}_available", None)
        if available is not None and not available():
            package = _PIP_PACKAGE.get(name, name)
            raise ConfigError(f"train.report_to: {name} needs the {package} package, which is not installed: "
                              f"pip install {package} (or drop {name} from train.report_to)")


def training_arguments(cfg: Config, run_dir: Path, *, precision: str, has_eval: bool, packing: bool,
                       resumed: bool = False, candidates: int | None = None):
    """Map the sftune configuration onto `transformers.TrainingArguments`, once, complete. `resumed`: the run goes
    on from a checkpoint (eval.on_start's baseline was measured when it began); `candidates`: the rows (or
    sequences) each forward pass reads when train.batch_selection keeps the micro-batch's worth of them."""
    from transformers import TrainingArguments

    from sftune.methods import DEFAULT_LEARNING_RATE

    t, e = cfg.train, cfg.eval
    save_steps = t.save_steps
    if has_eval and e.steps and save_steps is None:
        save_steps = e.steps  # keep-best needs a checkpoint at every evaluation
    keep_best = bool(e.keep_best and has_eval)
    if keep_best and e.steps and save_steps and save_steps % e.steps:
        raise ConfigError(
            f"train.save_steps={save_steps} must be a multiple of eval.steps={e.steps} with eval.keep_best=true "
            "(the best model is chosen among saved checkpoints); change one, or set eval.keep_best=false"
        )
    if keep_best and (save_steps is None) != (e.steps is None):
        raise ConfigError(
            "eval.keep_best=true needs checkpoints and evaluations on the same schedule: set both "
            "train.save_steps and eval.steps, or neither (both each epoch)"
        )
    if e.early_stopping_patience and not has_eval:
        raise ConfigError("eval.early_stopping_patience needs held-out data: set data.eval or data.val_ratio > 0")
    best_metric, greater = best_model_metric(cfg) if has_eval else (None, None)
    cuda = torch.cuda.is_available()
    micro = micro_batch_size(t, packing=packing, cuda=cuda)
    workers = dataloader_workers(t.dataloader_workers, cuda=cuda, cpus=len(os.sched_getaffinity(0)),
                                 local_processes=int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    return TrainingArguments(
        output_dir=str(run_dir / "checkpoints"),
        per_device_train_batch_size=candidates or micro,
        per_device_eval_batch_size=e.batch_size or micro,
        gradient_accumulation_steps=t.grad_accum * (t.batch_size // micro),
        num_train_epochs=t.epochs,
        max_steps=t.max_steps or -1,
        learning_rate=t.lr or DEFAULT_LEARNING_RATE[cfg.method.name],
        lr_scheduler_type=t.scheduler,
        warmup_steps=t.warmup if t.warmup < 1 else int(t.warmup),
        weight_decay=t.weight_decay,
        max_grad_norm=t.max_grad_norm,
        optim=optimizer(t.optim, cuda=cuda),
        tf32=tf32(cuda, torch.cuda.get_device_capability() if cuda else None),
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        # accelerate turns DeepSpeed off in a use_cpu run: without CUDA, DeepSpeed runs on its CPU accelerator
        # over gloo instead
        use_cpu=not cuda and launcher() != "deepspeed",
        activation_checkpointing=t.gradient_checkpointing,
        activation_checkpointing_kwargs={"use_reentrant": False} if t.gradient_checkpointing else None,
        neftune_noise_alpha=t.neftune_alpha,
        seed=t.seed,
        data_seed=t.seed,
        logging_steps=t.logging_steps,
        logging_first_step=True,
        logging_nan_inf_filter=False,  # a non-finite loss stops the run instead of being hidden
        save_strategy="steps" if save_steps else "epoch",
        save_steps=save_steps or 500,
        save_total_limit=t.save_total_limit,
        eval_strategy=("steps" if e.steps else "epoch") if has_eval else "no",
        eval_steps=e.steps,
        eval_on_start=e.on_start and has_eval and not resumed,
        load_best_model_at_end=keep_best,
        metric_for_best_model=best_metric,
        greater_is_better=greater,
        report_to=t.report_to,
        disable_tqdm=True,
        remove_unused_columns=False,
        train_sampling_strategy="random" if packing else "group_by_length",
        length_column_name="length",  # padded sequences' lengths, a column training.data.batches adds
        dataloader_num_workers=workers,
        dataloader_persistent_workers=workers > 0,  # not started again for every epoch and evaluation
        dataloader_pin_memory=cuda,
        accelerator_config={"non_blocking": cuda},  # pinned batches copied to the GPU while it computes
        ddp_find_unused_parameters=False,
        ddp_backend="gloo" if not cuda and launcher() == "deepspeed" else None,
    )


def arguments_for_loading(cfg: Config, run_dir: Path, *, precision: str):
    """TrainingArguments built before the model loads, where the launch needs them then (DeepSpeed's
    zero3_init_flag, FSDP's cpu_ram_efficient_loading: see distributed.arguments_before_model), else None.
    The caller keeps them until the model is loaded (transformers holds their DeepSpeed config by weak
    reference)."""
    if not arguments_before_model():
        return None
    return training_arguments(cfg, run_dir, precision=precision, has_eval=True, packing=cfg.data.packing)


def best_model_metric(cfg: Config) -> tuple[str, bool]:
    """(metric the best checkpoint is chosen by, whether higher is better): eval loss, or the generation
    metric that eval.keep_best names (it must be one eval.generate_metrics logs)."""
    from sftune.training.generate_eval import LOGGED

    e = cfg.eval
    if not isinstance(e.keep_best, str) or e.keep_best == "loss":
        return "eval_loss", False
    logged = {name: metric for metric in e.generate_metrics for name in LOGGED[metric]}
    if e.keep_best not in logged:
        every = {name: metric for metric, names in LOGGED.items() for name in names}
        hint = (f"add {every[e.keep_best]} to eval.generate_metrics" if e.keep_best in every else
                f"name one of {', '.join(every)} (or true for eval loss)")
        raise ConfigError(f"eval.keep_best={e.keep_best}: no evaluation logs eval_{e.keep_best}; {hint}")
    return f"eval_{e.keep_best}", True
