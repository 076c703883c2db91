"""QLoRA through the preference stage: DPO on a 4-bit NF4 base (bitsandbytes on CPU), the reference
taken from the same 4-bit model with the adapter switched off; the run learns and leaves the base as it was."""

from __future__ import annotations

import json
import math
import warnings

import pytest

from tests.preference.test_learning import PAIRS

bnb = pytest.importorskip("bitsandbytes")


def test_dpo_with_qlora_learns_and_loads_back(tmp_path, tiny_checkpoint):  # noqa: F811
    from sftune import runs, train

    train_file, eval_file = tmp_path / "train.jsonl", tmp_path / "eval.jsonl"
    train_file.write_text("".join(json.dumps(p) + "\n" for p in PAIRS[:16]))
    eval_file.write_text("".join(json.dumps(p) + "\n" for p in PAIRS[16:]))
    cfg = {"stage": "preference", "preference": {"loss": "dpo", "beta": 0.1},
           "model": {"name": str(tiny_checkpoint)},
           "data": {"train": str(train_file), "eval": str(eval_file), "max_len": 64},
           "method": {"name": "qlora", "r": 8, "alpha": 16},
           "train": {"max_steps": 12, "batch_size": 4, "logging_steps": 1, "lr": 1e-2, "save_steps": None,
                     "warmup": 0, "precision": "fp32"},
           "eval": {"steps": 12, "on_start": True, "keep_best": False},
           "output": {"dir": str(tmp_path / "qlora")}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = train(cfg)
    records = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    logged = [r for r in records if "loss" in r and "eval_loss" not in r]
    start = next(r for r in records if "eval_loss" in r)
    # the reference is the 4-bit base itself (adapter off): step 0 is log 2 with zero margins
    assert start["step"] == 0 and start["eval_loss"] == pytest.approx(math.log(2), abs=1e-5)
    assert logged[0]["loss"] == pytest.approx(math.log(2), abs=1e-5)
    s = result.summary
    assert s["method"] == "qlora" and s["steps"] == 12
    assert s["eval_loss"] < 0.6 * math.log(2) and s["eval_rewards/accuracies"] >= 0.75
    assert (result.run_dir / "adapter_model.safetensors").is_file()
    loaded = runs.load(result.run_dir)  # back on its 4-bit base
    assert loaded.is_adapter
    assert any(isinstance(m, bnb.nn.Linear4bit) for m in loaded.model.modules())
