"""train.kernels: liger is refused where it cannot run (no liger-kernel, no CUDA, a model type Liger does not
cover) before anything loads, and otherwise puts Liger's fused kernels into the base model, not its loss."""

from __future__ import annotations

import pytest

from sftune.config import ConfigError
from sftune.training.kernels import apply_kernels, check_kernels
from sftune.training.recipe import train
from tests.conftest import tiny_model


def test_liger_without_the_package_or_a_gpu_is_refused_with_the_fix():
    with pytest.raises(ConfigError, match=r"train.kernels=liger needs the liger-kernel package.*pip install liger-kernel"):
        check_kernels("liger", cuda=True, installed=False)
    with pytest.raises(ConfigError, match=r"train.kernels=liger runs on a CUDA GPU only.*train.kernels=torch"):
        check_kernels("liger", cuda=False, installed=True)
    check_kernels("liger", cuda=True, installed=True)
    check_kernels("torch", cuda=False, installed=False)


def test_a_training_run_with_liger_on_this_cpu_stops_before_loading(tmp_path):
    """Here liger_kernel is not installed and there is no GPU: train() refuses at once, naming the option."""
    cfg = {"model": {"name": "smollm2-135m-instruct"}, "data": {"train": str(tmp_path / "absent.jsonl")},
           "train": {"kernels": "liger"}, "output": {"dir": str(tmp_path / "run")}}
    with pytest.raises(ConfigError, match=r"train.kernels=liger"):
        train(cfg)
    assert not (tmp_path / "run").exists()


def test_liger_applies_to_the_model_types_it_covers_only():
    """Liger's own table decides (a stand-in of it here): its function gets the base model with the fused RMSNorm,
    RoPE and SwiGLU on and both of its cross-entropies off (sftune's chunked head stays)."""
    model = tiny_model("llama", vocab_size=64)
    calls = []
    table = {"llama": lambda **kw: calls.append(kw), "qwen2": lambda **kw: None}
    assert "llama" in apply_kernels(model, "liger", supported=table)
    assert calls == [dict(model=model, rope=True, rms_norm=True, swiglu=True, cross_entropy=False,
                          fused_linear_cross_entropy=False)]
    assert apply_kernels(model, "torch", supported=table) is None
    with pytest.raises(ConfigError, match=r"no kernels for model type 'llama' \(it covers qwen2\)"):
        apply_kernels(model, "liger", supported={"qwen2": table["qwen2"]})
