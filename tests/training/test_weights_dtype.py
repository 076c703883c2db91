"""The base model's dtype: a frozen base under an adapter trained in bf16 or fp16 is held in that dtype (SFT and
preference), and the adapter trained on it stays fp32 (fp16's gradient scaler refuses fp16 gradients)."""

from __future__ import annotations

import pytest
import torch

from sftune import config as config_module
from sftune import methods
from sftune.methods import MethodConfig
from sftune.training.run import weights_dtype
from tests.conftest import tiny_model


@pytest.mark.parametrize("method, precision, dtype, expected", [
    ("lora", "bf16", "auto", torch.bfloat16), ("qlora", "bf16", "auto", torch.bfloat16),
    ("lora", "fp16", "auto", torch.float16), ("qlora", "fp16", "auto", torch.float16),
    ("prompt_tuning", "fp16", "auto", torch.float16),
    ("lora", "fp32", "auto", torch.float32), ("full", "bf16", "auto", torch.float32),
    ("full", "fp16", "auto", torch.float32), ("freeze", "fp16", "auto", torch.float32),
    ("freeze", "bf16", "auto", torch.float32), ("lora", "bf16", "float32", torch.float32),
    ("full", "fp32", "bfloat16", torch.bfloat16),
])
def test_weights_dtype(method, precision, dtype, expected):
    cfg = config_module.load({"model": {"name": "smollm2-135m-instruct", "dtype": dtype}, "method": {"name": method},
                              "data": {"train": "x.jsonl"}})
    assert weights_dtype(cfg, precision) == expected


@pytest.mark.parametrize("options", [{"name": "lora", "r": 4}, {"name": "prompt_tuning", "num_virtual_tokens": 4},
                                     {"name": "prefix_tuning", "num_virtual_tokens": 4}])
def test_adapter_on_an_fp16_base_trains_in_fp32(options):
    model = methods.apply_method(tiny_model("llama").to(torch.float16), MethodConfig(**options), verbose=False)
    trained = {name: p.dtype for name, p in model.named_parameters() if p.requires_grad}
    frozen = {p.dtype for p in model.parameters() if not p.requires_grad}
    assert trained and set(trained.values()) == {torch.float32}, trained
    assert frozen == {torch.float16}


@pytest.mark.parametrize("method, precision, dtype", [("lora", "bf16", "auto"), ("qlora", "fp16", "auto"),
                                                      ("full", "bf16", "auto"), ("lora", "bf16", "bfloat16")])
def test_the_vision_branch_keeps_an_auto_base_in_fp32_on_a_cpu_only(monkeypatch, method, precision, dtype):
    """half_on_cpu=False (setup_vision_model): without CUDA an auto base stays fp32; with CUDA the rule is the text
    branch's; a dtype the config names is kept either way."""
    cfg = config_module.load({"model": {"name": "smollm2-135m-instruct", "dtype": dtype}, "method": {"name": method},
                              "data": {"train": "x.jsonl"}})
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert weights_dtype(cfg, precision, half_on_cpu=False) == (torch.float32 if dtype == "auto" else torch.bfloat16)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert weights_dtype(cfg, precision, half_on_cpu=False) == weights_dtype(cfg, precision)
