"""RUN/README.md: the model card written from the run folder, front matter the Hub reads, and the
before/after table once `sftune eval` wrote the run's results (training itself: tests/test_publish.py)."""

from __future__ import annotations

import json

import yaml
from huggingface_hub import ModelCard

from sftune import model_card
from sftune.config import load, to_yaml


def run_folder(tmp_path, overrides, summary):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(to_yaml(load(None, overrides)), encoding="utf-8")
    (run / "adapter_config.json").write_text("{}")
    (run / "summary.json").write_text(json.dumps(summary))
    (run / "metrics.jsonl").write_text('{"step": 1, "loss": 2.5}\n{"step": 2, "loss": 1.25}\n{"step": 2, "eval_loss": 1.5}\n')
    (run / "README.md").write_text("# Model Card for Model ID\n")  # what peft's save_pretrained leaves
    return run


SUMMARY = {"model": "smollm2-135m-instruct", "method": "lora", "precision": "fp32", "packing": True, "steps": 30,
           "epochs": 1.5, "train_examples": 320, "eval_examples": 40, "skipped": {"train": 2, "eval": 0},
           "trained_tokens": 4800, "train_loss": 1.8, "train_seconds": 120.5, "eval_loss": 0.4321,
           "trainable_parameters": 1000, "total_parameters": 135000}


def test_the_card_names_base_data_method_results_and_versions(tmp_path):
    run = run_folder(tmp_path, ["data.train=[data/train.jsonl, 'hub:tatsu-lab/alpaca:train[:100]']",
                                "method.r=8", "train.lr=0.001"], SUMMARY)
    card = ModelCard.load(model_card.write(run))
    meta = card.data.to_dict()
    assert meta["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct" and meta["license"] == "apache-2.0"
    assert meta["library_name"] == "peft" and meta["datasets"] == ["tatsu-lab/alpaca"] and "sftune" in meta["tags"]
    text = card.text
    assert "Model Card for Model ID" not in text
    assert "`data/train.jsonl`, `hub:tatsu-lab/alpaca:train[:100]` | 320 |" in text
    assert "| held out | 10% of the training data | 40 |" in text and "2 training and 0 held-out" in text
    assert "| method.r | 8 |" in text and "| train.lr | 0.001 |" in text and "| train.max_steps | None |" in text
    assert "| last logged training loss | 1.25 |" in text and "| held-out loss of the saved model | 0.4321 |" in text
    assert "| transformers |" in text and "| peft |" in text
    assert "Before and after" not in text  # no evaluation yet


def test_eval_results_add_the_before_after_table(tmp_path):
    run = run_folder(tmp_path, [], SUMMARY)
    (run / "eval").mkdir()
    results = {"model": str(run), "base": "smollm2-135m-instruct", "created": "2025-01-01T00:00:00+00:00", "tasks": [
        {"task": "heldout", "rows": [
            {"metric": "json_match", "base": 0.0, "model": 0.95, "delta": 0.95, "delta_interval": [0.875, 1.0],
             "verdict": "better"},
            {"metric": "perplexity", "base": 3.2, "model": 1.1, "delta": -2.1, "delta_interval": None,
             "verdict": "n/a"}]}]}
    (run / "eval" / "results.json").write_text(json.dumps(results))
    text = model_card.write(run).read_text(encoding="utf-8")
    assert "## Before and after" in text and "against `smollm2-135m-instruct`" in text
    assert "| heldout | json_match | 0 | 0.95 | +0.95 | [+0.875, +1] | better |" in text
    assert "| heldout | perplexity | 3.2 | 1.1 | -2.1 |  | n/a |" in text


def test_a_local_base_model_has_no_hub_id(tmp_path):
    model = tmp_path / "my-model"
    model.mkdir()
    run = run_folder(tmp_path, [f"model.name={model}", "method.name=full"], {})
    (run / "adapter_config.json").unlink()
    front = yaml.safe_load(model_card.write(run).read_text(encoding="utf-8").split("---")[1])
    assert "base_model" not in front and front["library_name"] == "transformers" and "full" in front["tags"]
