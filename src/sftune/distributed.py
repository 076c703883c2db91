"""How this process was launched (one process, DDP, FSDP, DeepSpeed) as `accelerate launch` / torchrun tell
it through the environment, and the combinations that cannot run, refused before any work."""

from __future__ import annotations

import os
from collections.abc import Mapping

from sftune.config import Config, ConfigError


def launcher(environ: Mapping[str, str] | None = None) -> str:
    """'deepspeed', 'fsdp', 'ddp' (several processes, no sharding) or 'single' (from `environ`, default this
    process's environment)."""
    env = os.environ if environ is None else environ
    if env.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true":
        return "deepspeed"
    if env.get("ACCELERATE_USE_FSDP", "false").lower() == "true":
        return "fsdp"
    return "ddp" if int(env.get("WORLD_SIZE", "1")) > 1 else "single"


def shards_weights() -> bool:
    """Whether the weights themselves are split over processes (FSDP, DeepSpeed ZeRO-3)."""
    kind = launcher()
    return kind == "fsdp" or (kind == "deepspeed" and os.environ.get("ACCELERATE_DEEPSPEED_ZERO_STAGE") == "3")


def arguments_before_model(environ: Mapping[str, str] | None = None) -> bool:
    """Whether this launch needs its TrainingArguments built before the model loads, because transformers'
    from_pretrained decides from what they set up:
    - DeepSpeed with zero3_init_flag: true creates each weight already split (deepspeed.zero.Init) only while
      an HfDeepSpeedConfig is alive (is_deepspeed_zero3_enabled), which TrainingArguments creates;
    - FSDP with fsdp_cpu_ram_efficient_loading: true loads the weights on each machine's first process only,
      the others on the meta device, once torch.distributed is initialized (is_fsdp_enabled), which
      TrainingArguments does.
    Loaded first, every process holds the whole model in host memory. Without those flags the order is kept
    (an HfDeepSpeedConfig alive at load time would split the weights although zero3_init_flag is false)."""
    env = os.environ if environ is None else environ
    kind = launcher(env)
    if kind == "deepspeed":
        return env.get("ACCELERATE_DEEPSPEED_ZERO3_INIT", "false").lower() == "true"
    return kind == "fsdp" and env.get("FSDP_CPU_RAM_EFFICIENT_LOADING", "false").lower() == "true"


def launch_precision(precision: str, configured: str, cuda: bool) -> str:
    """The precision this launch can train in. DeepSpeed without CUDA computes in fp32: transformers refuses
    bf16 / fp16 without a GPU unless use_cpu is set, and accelerate turns DeepSpeed off when it is. There
    `auto` becomes fp32; an explicit bf16 / fp16 is refused with the fix."""
    if cuda or precision == "fp32" or launcher() != "deepspeed":
        return precision
    if configured == "auto":
        return "fp32"
    raise ConfigError(f"train.precision={configured}: DeepSpeed on a machine without a CUDA GPU trains in fp32 only "
                      "(transformers refuses bf16/fp16 there); set train.precision=fp32 (or auto)")


def check_launch(cfg: Config, cuda: bool) -> None:
    """Refuse, before loading anything, a launch that would not do what its config says."""
    if launcher() == "fsdp" and not cuda:
        raise ConfigError(
            "FSDP was asked for (accelerate config distributed_type: FSDP) on a machine without a CUDA GPU: "
            "accelerate runs FSDP only on GPUs (and other accelerators), and would silently train plain DDP "
            "here. On CPU processes use DeepSpeed (examples/accelerate/deepspeed_zero3.yaml) or DDP "
            "(examples/accelerate/ddp.yaml)"
        )
    if cfg.method.name == "qlora" and launcher() == "deepspeed" and \
            os.environ.get("ACCELERATE_DEEPSPEED_ZERO3_INIT", "false").lower() == "true":
        raise ConfigError(
            "method.name=qlora with DeepSpeed zero3_init_flag: true: 4-bit weights cannot be created already "
            "split; set zero3_init_flag: false in the accelerate config (each process quantizes, then ZeRO-3 splits)"
        )
