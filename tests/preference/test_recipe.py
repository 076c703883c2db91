"""`sftune train` with stage: preference: from an SFT run folder (its adapter continued, or its weights),
the usual run folder, reward metrics logged, a non-finite loss stopping the run with its step named."""

from __future__ import annotations

import json

import pytest

from tests.training.helpers import PoisonAt

PAIRS = [{"prompt": f"Say a word about {w}.", "chosen": f"{w.capitalize()}! Done.", "rejected": f"I will not talk of {w}."}
         for w in ("cats", "dogs", "rain", "snow", "tea", "bread", "ships", "trees", "stars", "rivers", "salt", "glass")]




def _config(tmp_path, model, method, out, **preference):
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps(p) + "\n" for p in PAIRS))
    return {"stage": "preference", "preference": {"loss": "dpo", "beta": 0.1, **preference},
            "model": {"name": str(model)}, "data": {"train": str(pairs), "val_ratio": 0.25, "max_len": 128},
            "method": method, "train": {"max_steps": 3, "batch_size": 2, "logging_steps": 1, "lr": 1e-3},
            "output": {"dir": str(tmp_path / out)}}


def _sft_run(tmp_path, model, **data):
    from sftune import train
    from tests.training.test_recipe import run_config

    cfg = run_config(tmp_path, model, train={"max_steps": 2, "save_steps": None}, eval={"steps": None}, data=data)
    cfg["output"]["dir"] = str(tmp_path / "sft")
    return train(cfg).run_dir


def test_dpo_continues_an_sft_runs_adapter(tmp_path, tiny_checkpoint):
    from sftune import runs, train

    sft = _sft_run(tmp_path, tiny_checkpoint)
    result = train(_config(tmp_path, sft, {"name": "lora", "r": 4}, "dpo"))
    run = result.run_dir
    for name in ("adapter_model.safetensors", "tokenizer.json", "config.yaml", "metrics.jsonl", "summary.json"):
        assert (run / name).exists(), name
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 3 and summary["started_from"] == str(sft) and summary["eval_pairs"] == 3
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    logged = [r for r in records if "loss" in r]
    assert len(logged) == 3 and all("rewards/accuracies" in r and "rewards/margins" in r for r in logged)
    # the first step starts at the reference (the SFT model): loss log 2, rewards 0
    assert logged[0]["loss"] == pytest.approx(0.6931, abs=1e-3) and abs(logged[0]["rewards/margins"]) < 1e-4
    assert "eval_rewards/accuracies" in summary
    loaded = runs.load(run)  # the adapter loads back on the SFT run's base, with the SFT run's template
    assert loaded.is_adapter and loaded.template.name == runs.load(sft).template.name


@pytest.mark.parametrize("method, loss", [({"name": "full"}, "ipo"), ({"name": "lora", "r": 4}, "orpo")])
def test_other_methods_and_losses_run(tmp_path, tiny_checkpoint, method, loss):
    from sftune import train

    result = train(_config(tmp_path, tiny_checkpoint, method, "run", loss=loss))
    assert result.summary["steps"] == 3 and result.summary["loss"] == loss and result.summary["processes"] == 1
    assert result.summary["train_loss"] == result.summary["train_loss"]  # finite, not NaN


def test_non_finite_loss_stops_naming_the_step(tmp_path, tiny_checkpoint):
    from sftune import train
    from sftune.training import NonFiniteLossError

    with pytest.raises(NonFiniteLossError, match=r"step 2\b"):
        train(_config(tmp_path, tiny_checkpoint, {"name": "full"}, "nan"), callbacks=[PoisonAt(1)])
    # the progress line stopped with the run (its refresh thread redrew a dead line for the rest of the process)
    import threading

    assert not [t for t in threading.enumerate() if type(t).__name__ == "_RefreshThread"]


def test_setup_model_returns_what_it_resolved_and_leaves_the_config_alone(tmp_path, tiny_checkpoint):
    """From an SFT run folder with its adapter continued: the base and the template the saved config names come
    back from setup_model; the caller's config still names the run folder and no template."""
    from rich.console import Console

    from sftune import config, runs
    from sftune.preference.recipe import setup_model

    sft = _sft_run(tmp_path, tiny_checkpoint, template="chatml")
    cfg = config.load(_config(tmp_path, sft, {"name": "lora", "r": 4}, "dpo"))
    setup = setup_model(cfg, "fp32", Console(quiet=True))
    assert setup.continued and setup.base == runs.run_config(sft).model.name == str(tiny_checkpoint)
    assert setup.template_name == "chatml" and setup.template.name == "chatml"
    assert cfg.model.name == str(sft) and cfg.data.template is None


def test_a_preference_run_audits_its_stops_and_its_generation_config_stops_there(tmp_path, tiny_checkpoint):
    """`sftune train` with stage: preference: the stop-token audit runs as in SFT (said once), and the run folder's
    generation_config stops at every stop the audit found: here the model's own eos (<|endoftext|>) and the
    template's end of turn (<|im_end|>)."""
    import yaml
    from transformers import AutoTokenizer, GenerationConfig
    from typer.testing import CliRunner

    from sftune.cli import app

    GenerationConfig(eos_token_id=0).save_pretrained(tiny_checkpoint)  # the base stops at <|endoftext|> only
    path = tmp_path / "dpo.yaml"
    path.write_text(yaml.safe_dump(_config(tmp_path, tiny_checkpoint, {"name": "full"}, "run")))
    result = CliRunner().invoke(app, ["train", str(path)], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert result.output.count("stop tokens: ") == 1 and "Done: 3 steps" in result.output
    run = tmp_path / "run"
    tokenizer = AutoTokenizer.from_pretrained(run)
    expected = sorted(tokenizer.convert_tokens_to_ids(["<|endoftext|>", "<|im_end|>"]))
    assert GenerationConfig.from_pretrained(run).eos_token_id == expected


def test_a_full_preference_run_starts_from_the_sft_runs_merged_adapter(tmp_path, tiny_checkpoint):
    """method full on an SFT LoRA run: runs.load_weights folds the adapter into its base, and training goes on from
    there (with a negligible lr the saved weights are that start: they answer as the SFT run does)."""
    import torch

    from sftune import runs, train

    sft = _sft_run(tmp_path, tiny_checkpoint)
    cfg = _config(tmp_path, sft, {"name": "full"}, "full")
    cfg["train"]["lr"] = 1e-12  # three AdamW steps move each weight by about 3e-12
    run = train(cfg).run_dir
    assert (run / "config.json").exists() and not (run / runs.ADAPTER_CONFIG).exists()
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        want, got = runs.load(sft).model(ids).logits, runs.load(run).model(ids).logits
        base = runs.load(tiny_checkpoint).model(ids).logits
    assert not torch.allclose(want, base, atol=1e-4)  # the adapter changes the answer: the merge has something to show
    assert torch.allclose(got, want, atol=1e-4)
