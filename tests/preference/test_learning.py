"""Preference training learns: on a tiny model, a short run drives the loss below its starting value
(log 2 for DPO, where the policy equals the reference) and raises the reward accuracy on training and
held-out pairs, for DPO with LoRA and for the reference-free SimPO."""

from __future__ import annotations

import json
import math

import pytest

from tests.conftest import tiny_model

WORDS = ("cats", "dogs", "rain", "snow", "tea", "bread", "ships", "trees", "stars", "rivers", "salt", "glass",
         "maps", "bells", "coins", "clouds", "hills", "lamps", "roads", "wolves")
# chosen: a short cheerful answer; rejected: a refusal. Held-out pairs use words never seen in training.
PAIRS = [{"prompt": f"Say a word about {w}.", "chosen": f"{w.capitalize()}! Done.",
          "rejected": f"I will not talk of {w}."} for w in WORDS]


def _run(tmp_path, model, loss: str, method: dict, lr: float, pairs=PAIRS, precision="fp32", steps=12,
         **preference):
    from sftune import train

    train_file, eval_file = tmp_path / "train.jsonl", tmp_path / "eval.jsonl"
    train_file.write_text("".join(json.dumps(p) + "\n" for p in pairs[:16]))
    eval_file.write_text("".join(json.dumps(p) + "\n" for p in pairs[16:]))
    cfg = {"stage": "preference", "preference": {"loss": loss, "beta": 0.1, **preference},
           "model": {"name": str(model)},
           "data": {"train": str(train_file), "eval": str(eval_file), "max_len": 64},
           "method": method,
           "train": {"max_steps": steps, "batch_size": 4, "logging_steps": 1, "lr": lr, "save_steps": None,
                     "precision": precision},
           "eval": {"steps": steps, "on_start": True, "keep_best": False},
           "output": {"dir": str(tmp_path / loss)}}
    result = train(cfg)
    records = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    logged = [r for r in records if "loss" in r and "eval_loss" not in r]
    evals = [r for r in records if "eval_rewards/accuracies" in r]
    return result.summary, logged, evals


def test_dpo_with_lora_learns_the_preference(tmp_path, tiny_checkpoint):  # noqa: F811
    summary, logged, evals = _run(tmp_path, tiny_checkpoint, "dpo", {"name": "lora", "r": 8, "alpha": 16}, 1e-2)
    # step 1: policy == reference (a fresh adapter adds nothing), so the loss is log 2 and the rewards 0 up
    # to fp32 rounding (training packs the sequences in other batches than the reference pass); with the default warm-up
    # (5% of 12 steps -> 1 step) step 1's learning rate is 0, so step 2 still starts from the reference
    assert logged[0]["loss"] == pytest.approx(math.log(2), abs=1e-5)
    assert abs(logged[0]["rewards/margins"]) < 1e-5
    assert logged[0]["learning_rate"] == 0
    assert logged[1]["loss"] == pytest.approx(math.log(2), abs=1e-5)
    assert logged[1]["learning_rate"] > 0
    # it learns: the last steps' loss is well under log 2 and (nearly) every training pair is ranked right
    assert max(r["loss"] for r in logged[-3:]) < 0.6 * math.log(2)
    assert min(r["rewards/accuracies"] for r in logged[-3:]) >= 0.75
    # and on held-out pairs (words never trained on); at the start every reward is 0 but for rounding, so
    # the starting accuracy is decided by rounding noise and only the margin is checked
    assert evals[0]["step"] == 0 and abs(evals[0]["eval_rewards/margins"]) < 1e-5
    assert evals[0]["eval_loss"] == pytest.approx(math.log(2), abs=1e-5)
    assert summary["eval_rewards/accuracies"] >= 0.75 and summary["eval_loss"] < 0.6 * math.log(2)
    assert summary["eval_rewards/margins"] > 0


def test_simpo_learns_the_preference(tmp_path, tiny_checkpoint):  # noqa: F811
    # the random model already ranks the short cheerful answer higher by averaged log-prob, so here the
    # refusal is the chosen answer: the run has to turn the ranking round
    flipped = [{**p, "chosen": p["rejected"], "rejected": p["chosen"]} for p in PAIRS]
    summary, logged, evals = _run(tmp_path, tiny_checkpoint, "simpo", {"name": "full"}, 1e-3, flipped, beta=2.0)
    start = evals[0]
    assert start["step"] == 0
    # reference-free: the starting rewards are the random model's own averaged log-probs, not 0
    assert summary["eval_loss"] < 0.5 * start["eval_loss"]
    assert start["eval_rewards/accuracies"] <= 0.25 and summary["eval_rewards/accuracies"] >= 0.75
    assert summary["eval_rewards/margins"] > start["eval_rewards/margins"]
    assert max(r["loss"] for r in logged[-3:]) < logged[0]["loss"]
    assert min(r["rewards/accuracies"] for r in logged[-3:]) >= 0.75


def test_bf16_reference_matches_the_bf16_policy_at_the_start(tmp_path, smollm2_tokenizer):
    # in bf16 the policy runs under autocast; a reference computed in fp32 would make the step-0 rewards
    # the bf16 rounding gap (on SmolLM2: margin 0.008, loss 0.6891). Larger random weights make bf16 rounding
    # show: here the step-0 held-out margin is -0.0028 with an fp32 reference, 0.0005 with the bf16 one (a
    # smaller gap, not yet explained, remains between the adapter switched off and a zero adapter in bf16).
    folder = tmp_path / "tiny-model"
    tiny_model("llama", vocab_size=len(smollm2_tokenizer), initializer_range=0.2).save_pretrained(folder)
    smollm2_tokenizer.save_pretrained(folder)
    _, _, evals = _run(tmp_path, folder, "dpo", {"name": "lora", "r": 8}, 1e-2, precision="bf16", steps=1)
    start = evals[0]
    assert start["step"] == 0 and start["eval_loss"] == pytest.approx(math.log(2), abs=7e-4)
    assert abs(start["eval_rewards/margins"]) < 1.5e-3
