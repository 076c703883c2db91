"""`sftune eval RUN`: base and fine-tuned on the same tasks, one command, the report files; task errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.conftest import tiny_model

ENV = {"COLUMNS": "200"}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, smollm2_tokenizer):
    """A tiny random llama (with the SmolLM2 tokenizer) and a 2-step LoRA run on the demo task from it."""
    from sftune import train
    from sftune.demo import write_dataset

    root = tmp_path_factory.mktemp("eval-run")
    base = root / "tiny-model"
    tiny_model("llama", vocab_size=len(smollm2_tokenizer)).save_pretrained(base)
    smollm2_tokenizer.save_pretrained(base)
    train_path, _ = write_dataset(root / "data", n_train=24, n_eval=6)
    train({"model": {"name": str(base)}, "data": {"train": str(train_path), "val_ratio": 0.25, "max_len": 128},
           "method": {"name": "lora", "r": 4}, "train": {"max_steps": 2, "batch_size": 2, "lr": 5e-3},
           "eval": {"keep_best": False}, "output": {"dir": str(root / "run")}})
    return root / "run", base


def test_eval_compares_the_run_with_its_base_in_one_command(tmp_path, tiny_run):
    from sftune.cli import app

    run, base = tiny_run
    out = tmp_path / "report"
    done = CliRunner().invoke(app, ["eval", str(run), "--tasks", "heldout", "--limit", "3", "--max-new-tokens", "6",
                                    "-o", str(out)], env=ENV)
    assert done.exit_code == 0, done.output
    assert "exact_match" in done.output and str(out / "report.html") in done.output.replace("\n", "")
    report = json.loads((out / "results.json").read_text())
    assert report["base"] == str(base) and report["model"] == str(run)  # the base comes from the run's config
    task = report["tasks"][0]
    assert task["task"] == "heldout" and task["base"]["details"]["n"] == task["model"]["details"]["n"] == 3
    assert {r["metric"] for r in task["rows"]} >= {"exact_match", "json_match", "bleu", "rougeL", "token_f1",
                                                   "perplexity"}
    # the held-out file is the run's own split: 25% of 24 training examples, as training held them out
    summary = json.loads((run / "summary.json").read_text())
    assert len((out / "heldout.jsonl").read_text().splitlines()) == summary["eval_examples"] == 6
    # the run and its base are different models here: the LoRA run's perplexity is its own
    ppl = {r["metric"]: r for r in task["rows"]}["perplexity"]
    assert ppl["base"] != ppl["model"]
    assert (out / "chart.png").exists() and "<table" in (out / "report.html").read_text()


def test_eval_into_the_run_folder_puts_the_before_after_table_in_its_model_card(tiny_run):
    from sftune.cli import app

    run, base = tiny_run
    assert "Before and after" not in (run / "README.md").read_text(encoding="utf-8")  # the card training wrote
    done = CliRunner().invoke(app, ["eval", str(run), "--tasks", "heldout", "--limit", "2", "--max-new-tokens", "4"],
                              env=ENV)
    assert done.exit_code == 0, done.output
    card = (run / "README.md").read_text(encoding="utf-8")
    rows = {r["metric"]: r for r in json.loads((run / "eval" / "results.json").read_text())["tasks"][0]["rows"]}
    assert f"## Before and after\n\n`sftune eval` against `{base}`" in card
    assert f"| heldout | perplexity | {rows['perplexity']['base']:.4g} | {rows['perplexity']['model']:.4g} |" in card


@pytest.mark.parametrize("case", ["the run folder", "a data file", "inside the base model", "the data folder"])
def test_an_output_over_what_eval_reads_is_refused_before_anything_loads(tmp_path, tiny_run, case):
    """-o is checked with the shared output guard: not a model's folder or a file of it, not a data file or a folder
    holding one; RUN/eval (the default) stays allowed."""
    from sftune.cli import app

    run, base = tiny_run
    data = tmp_path / "items" / "items.jsonl"
    data.parent.mkdir()
    data.write_text(json.dumps({"messages": [{"role": "user", "content": "2+2?"},
                                             {"role": "assistant", "content": "4"}]}) + "\n", encoding="utf-8")
    out, reads = {"the run folder": (run, run / "adapter_model.safetensors"), "a data file": (data, data),
                  "inside the base model": (base / "eval", base), "the data folder": (data.parent, data)}[case]
    before = sorted(p.name for p in out.parent.iterdir())
    done = CliRunner().invoke(app, ["eval", str(run), "--tasks", f"heldout,data:{data}", "--limit", "1",
                                    "-o", str(out)], env=ENV)
    assert done.exit_code == 2, done.output
    message = " ".join(done.output.split())
    assert f"--output: output {out}" in message and str(reads) in message
    assert sorted(p.name for p in out.parent.iterdir()) == before


def test_base_none_evaluates_the_model_alone(tmp_path, tiny_run):
    from sftune.cli import app

    run, _ = tiny_run
    done = CliRunner().invoke(app, ["eval", str(run), "--base", "none", "--tasks", "heldout", "--limit", "2",
                                    "--max-new-tokens", "4", "-o", str(tmp_path)], env=ENV)
    assert done.exit_code == 0, done.output
    report = json.loads((tmp_path / "results.json").read_text())
    assert report["base"] is None and report["tasks"][0]["base"] is None


def test_unknown_tasks_and_heldout_of_a_plain_model_are_clear_errors(tmp_path, tiny_run):
    from sftune.cli import app

    run, base = tiny_run
    done = CliRunner().invoke(app, ["eval", str(run), "--tasks", "heldout,mmlux", "-o", str(tmp_path)], env=ENV)
    assert done.exit_code == 2 and "unknown task 'mmlux'" in done.output and "heldout, data:PATH" in done.output
    done = CliRunner().invoke(app, ["eval", str(base), "--tasks", "heldout", "-o", str(tmp_path)], env=ENV)
    assert done.exit_code == 2 and "not a run folder" in done.output and "data:PATH" in done.output
    done = CliRunner().invoke(app, ["eval", str(run), "--tasks", f"data:{tmp_path}/missing.jsonl"], env=ENV)
    assert done.exit_code == 2 and "no such file" in done.output


def test_a_benchmark_beside_heldout_is_in_the_forgetting_section(tmp_path, tiny_run):
    from sftune.cli import app

    run, _ = tiny_run
    mmlu = Path(__file__).parent.parent / "fixtures" / "benchmarks" / "mmlu"
    done = CliRunner().invoke(app, ["eval", str(run), "--tasks", "heldout,mmlu", "--limit", "2", "--max-new-tokens",
                                    "4", "--data-dir", str(mmlu), "-o", str(tmp_path)], env=ENV)
    assert done.exit_code == 0, done.output
    report = json.loads((tmp_path / "results.json").read_text())
    assert [t["task"] for t in report["tasks"]] == ["heldout", "mmlu"]
    assert [(f["task"], f["metric"]) for f in report["forgetting"]] == [("mmlu", report["tasks"][1]["rows"][0]["metric"])]
    assert "Forgetting" in (tmp_path / "report.html").read_text()
