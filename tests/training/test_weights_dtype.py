"""The base model's dtype: a frozen base under an adapter trained in bf16 is held in bf16 (SFT and preference)."""

from __future__ import annotations

import pytest
import torch

from sftune import config as config_module
from sftune.training.recipe import weights_dtype


@pytest.mark.parametrize("method, precision, dtype, expected", [
    ("lora", "bf16", "auto", torch.bfloat16), ("qlora", "bf16", "auto", torch.bfloat16),
    ("lora", "fp32", "auto", torch.float32), ("full", "bf16", "auto", torch.float32),
    ("freeze", "bf16", "auto", torch.float32), ("lora", "bf16", "float32", torch.float32),
    ("full", "fp32", "bfloat16", torch.bfloat16),
])
def test_weights_dtype(method, precision, dtype, expected):
    cfg = config_module.load({"model": {"name": "smollm2-135m-instruct", "dtype": dtype}, "method": {"name": method},
                              "data": {"train": "x.jsonl"}})
    assert weights_dtype(cfg, precision) == expected
