"""How a launch is read from the environment, and the launches refused before any work."""

from __future__ import annotations

import pytest
import torch

from sftune import distributed
from sftune.config import Config, ConfigError


def test_launcher_reads_accelerate_and_torchrun(monkeypatch):
    for name in ("ACCELERATE_USE_DEEPSPEED", "ACCELERATE_USE_FSDP", "WORLD_SIZE", "ACCELERATE_DEEPSPEED_ZERO_STAGE"):
        monkeypatch.delenv(name, raising=False)
    assert distributed.launcher() == "single" and not distributed.shards_weights()
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert distributed.launcher() == "ddp" and not distributed.shards_weights()
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_ZERO_STAGE", "2")
    assert distributed.launcher() == "deepspeed" and not distributed.shards_weights()
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_ZERO_STAGE", "3")
    assert distributed.shards_weights()
    monkeypatch.delenv("ACCELERATE_USE_DEEPSPEED")
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    assert distributed.launcher() == "fsdp" and distributed.shards_weights()


def test_fsdp_without_cuda_is_refused(monkeypatch):
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    with pytest.raises(ConfigError, match="accelerate runs FSDP only on GPUs"):
        distributed.check_launch(Config(), cuda=False)
    distributed.check_launch(Config(), cuda=True)


def test_qlora_with_zero3_init_is_refused(monkeypatch):
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_ZERO3_INIT", "true")
    cfg = Config.model_validate({"method": {"name": "qlora"}})
    with pytest.raises(ConfigError, match="zero3_init_flag: false"):
        distributed.check_launch(cfg, cuda=True)
    distributed.check_launch(Config.model_validate({"method": {"name": "lora"}}), cuda=True)


def test_qlora_weights_are_stored_shardable_under_fsdp(monkeypatch):
    """FSDP / ZeRO-3 split parameters evenly: 4-bit weights are stored in the compute dtype there."""
    from sftune import methods
    from sftune.methods import MethodConfig

    monkeypatch.delenv("ACCELERATE_USE_FSDP", raising=False)
    plain = methods.load_kwargs(MethodConfig(name="qlora"), device="cpu")["quantization_config"]
    assert plain.bnb_4bit_quant_storage == torch.uint8
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    sharded = methods.load_kwargs(MethodConfig(name="qlora"), device="cpu")["quantization_config"]
    assert sharded.bnb_4bit_quant_storage == sharded.bnb_4bit_compute_dtype != torch.uint8


def test_deepspeed_without_cuda_trains_in_fp32_or_says_why(monkeypatch):
    """transformers refuses bf16 without a GPU unless use_cpu is set, and accelerate turns DeepSpeed off when it is:
    a DeepSpeed launch on CPUs takes fp32 for `auto` and refuses an explicit bf16 before any work."""
    launch_precision = distributed.launch_precision
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    assert launch_precision("bf16", "auto", cuda=False) == "fp32"
    assert launch_precision("fp32", "fp32", cuda=False) == "fp32"
    assert launch_precision("bf16", "bf16", cuda=True) == "bf16"
    with pytest.raises(ConfigError, match="train.precision=fp32"):
        launch_precision("bf16", "bf16", cuda=False)
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "false")
    assert launch_precision("bf16", "bf16", cuda=False) == "bf16"  # DDP / one process: as configured
