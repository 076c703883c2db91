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


@pytest.mark.parametrize("env, expected", [
    ({}, False), ({"WORLD_SIZE": "2"}, False),
    ({"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "3"}, False),  # zero3_init_flag off
    ({"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "3", "ACCELERATE_DEEPSPEED_ZERO3_INIT": "true"},
     True),
    ({"ACCELERATE_USE_FSDP": "true"}, False), ({"ACCELERATE_USE_FSDP": "true", "FSDP_CPU_RAM_EFFICIENT_LOADING": "true"}, True),
])
def test_arguments_before_model_where_loading_reads_them(env, expected):
    assert distributed.arguments_before_model(env) is expected


LOAD_ORDER_SCRIPT = r"""
import json, sys
from pathlib import Path
from transformers.integrations import is_deepspeed_zero3_enabled
from sftune import train
from sftune.preference import recipe as preference_recipe
from sftune.training import recipe

class Loaded(Exception):
    pass

def seen(*args, **kwargs):  # what from_pretrained would see, in place of loading the model
    Path(sys.argv[2]).write_text(json.dumps(is_deepspeed_zero3_enabled()))
    raise Loaded()

recipe.setup_model = preference_recipe.setup_model = seen
try:
    train(json.loads(Path(sys.argv[1]).read_text()))
except Loaded:
    pass
"""


@pytest.mark.parametrize("stage", ["sft", "preference"])
def test_zero3_init_flag_holds_when_the_model_loads(tmp_path, tiny_checkpoint, stage):
    """With DeepSpeed ZeRO-3 and zero3_init_flag: true, from_pretrained runs while transformers sees ZeRO-3 (it then
    creates each weight already split instead of the whole model in every process's memory)."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    from tests.preference.test_recipe import _config
    from tests.training.test_recipe import run_config

    cfg = run_config(tmp_path, tiny_checkpoint) if stage == "sft" else \
        _config(tmp_path, tiny_checkpoint, {"name": "full"}, "run")
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    (tmp_path / "load.py").write_text(LOAD_ORDER_SCRIPT)
    root = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([root + "/src", root, os.environ.get("PYTHONPATH", "")]),
           "ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "3",
           "ACCELERATE_DEEPSPEED_ZERO3_INIT": "true", "RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1",
           "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(29400 + os.getpid() % 500), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, str(tmp_path / "load.py"), str(tmp_path / "cfg.json"),
                           str(tmp_path / "seen.json")], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads((tmp_path / "seen.json").read_text()) is True
