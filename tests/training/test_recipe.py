"""train(config): the run folder, the caller's callbacks, resume, early stopping, mixing from the config."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from transformers import TrainerCallback





def demo_data(tmp_path: Path) -> tuple[Path, Path]:
    from sftune.demo import write_dataset

    return write_dataset(tmp_path / "data", n_train=48, n_eval=8)


def run_config(tmp_path, model_dir, **sections) -> dict:
    train_path, eval_path = demo_data(tmp_path)
    cfg = {
        "model": {"name": str(model_dir)},
        "data": {"train": str(train_path), "eval": str(eval_path), "max_len": 128},
        "method": {"name": "lora", "r": 4},
        "train": {"max_steps": 6, "batch_size": 2, "logging_steps": 1, "lr": 5e-3, "save_steps": 2,
                  "save_total_limit": 1},
        "eval": {"steps": 2},
        "output": {"dir": str(tmp_path / "run")},
    }
    for section, values in sections.items():
        cfg[section] = {**cfg.get(section, {}), **values}
    return cfg


def test_train_writes_the_run_folder(tmp_path, tiny_checkpoint):
    from transformers import AutoTokenizer

    from sftune import templates
    from sftune import train

    from rich.console import Console

    console = Console(record=True, width=200)
    result = train(run_config(tmp_path, tiny_checkpoint), console=console)
    run = result.run_dir
    for name in ("adapter_model.safetensors", "adapter_config.json", "tokenizer.json", "config.yaml",
                 "metrics.jsonl", "curves.png", "summary.json", "generation_config.json"):
        assert (run / name).exists(), name
    # the stop-token audit is said once, and the run's generation_config stops where training trained the stop
    assert console.export_text().count("stop tokens: <|im_end|>") == 1
    from transformers import GenerationConfig

    eos = GenerationConfig.from_pretrained(run).eos_token_id
    assert AutoTokenizer.from_pretrained(run).convert_tokens_to_ids("<|im_end|>") in ([eos] if isinstance(eos, int)
                                                                                     else eos)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 6 and summary["trained_tokens"] > 0 and summary["peak_memory_mb"] > 0
    assert summary["trained_tokens_per_second"] > 0 and summary["packing"] is True
    assert 0 < summary["train_seconds_excluding_eval"] < summary["train_seconds"]
    assert summary["trained_tokens_per_second"] == pytest.approx(
        summary["trained_tokens"] / summary["train_seconds_excluding_eval"], rel=1e-2)
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r] == [1, 2, 3, 4, 5, 6]
    assert [r["step"] for r in records if "eval_loss" in r][:3] == [2, 4, 6]
    # the best checkpoint is kept besides the newest, older ones are rotated away
    kept = sorted(p.name for p in (run / "checkpoints").glob("checkpoint-*"))
    assert len(kept) <= 2 and "checkpoint-6" in kept
    # the template used in training is the saved tokenizer's chat template (token ids compared)
    saved = AutoTokenizer.from_pretrained(run)
    template = templates.default_for(AutoTokenizer.from_pretrained(tiny_checkpoint))
    messages = [{"role": "user", "content": "你好, hello"}]
    assert saved.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False) == \
        saved(template.render(messages, add_generation_prompt=True), add_special_tokens=False)["input_ids"]
    # an existing run is not overwritten by accident
    from sftune.config import ConfigError

    with pytest.raises(ConfigError, match="resume_from=last"):
        train(run_config(tmp_path, tiny_checkpoint))


class StepRecorder(TrainerCallback):
    """Records each step's end, and at each log whether metrics.jsonl already holds that record."""

    def __init__(self, metrics_file: Path):
        self.metrics_file = metrics_file
        self.steps: list[int] = []
        self.logged_before_me: list[bool] = []

    def on_step_end(self, args, state, control, **kwargs):
        self.steps.append(state.global_step)

    def on_log(self, args, state, control, logs=None, **kwargs):
        last = json.loads(self.metrics_file.read_text().splitlines()[-1])
        self.logged_before_me.append(all(last.get(k) == v for k, v in logs.items()))


def test_train_runs_the_callers_callbacks_after_its_own(tmp_path, tiny_checkpoint):
    from sftune import train

    recorder = StepRecorder(tmp_path / "run" / "metrics.jsonl")
    result = train(run_config(tmp_path, tiny_checkpoint, train={"max_steps": 4}), callbacks=[recorder])
    assert recorder.steps == [1, 2, 3, 4] and result.summary["steps"] == 4
    assert len(recorder.logged_before_me) >= 6 and all(recorder.logged_before_me)  # 4 train + 2 eval logs


def test_train_resume_last_continues_to_the_same_loss(tmp_path, tiny_checkpoint):
    from sftune import train

    straight = train(run_config(tmp_path / "a", tiny_checkpoint, train={"save_total_limit": 3}))
    cfg = run_config(tmp_path / "b", tiny_checkpoint, train={"save_total_limit": 3})
    first = train(cfg)
    # as if the run had been stopped after step 4: drop what came later
    import shutil

    shutil.rmtree(first.run_dir / "checkpoints" / "checkpoint-6")
    (first.run_dir / "summary.json").unlink()
    resumed = train(cfg, ["train.resume_from=last"])
    assert resumed.summary["resumed_from"].endswith("checkpoint-4")
    assert resumed.summary["steps"] == 6
    assert resumed.summary["trained_tokens"] == straight.summary["trained_tokens"]
    loss = lambda r: [json.loads(l) for l in (r.run_dir / "metrics.jsonl").read_text().splitlines() if '"loss"' in l][-1]["loss"]
    assert loss(resumed) == pytest.approx(loss(straight), abs=1e-6)


def test_early_stopping_stops_when_eval_loss_stops_improving(tmp_path, tiny_checkpoint):
    from sftune import train

    # lr ~0 with constant schedule: the held-out loss moves only by rounding (1.6e-7 seen on a CPU with
    # AVX-512), which the threshold does not count as a gain
    result = train(run_config(tmp_path, tiny_checkpoint, train={"max_steps": 20, "lr": 1e-12, "scheduler": "constant",
                                                                "warmup": 0},
                              eval={"early_stopping_patience": 2, "early_stopping_threshold": 1e-4}))
    assert result.summary["steps"] == 6  # evaluations at 2 (best), 4, 6 without gain -> stop


@pytest.mark.slow
def test_demo_learns_the_task(tmp_path, monkeypatch):
    """The README's main job on the real model: held-out exact match and loss improve clearly."""
    from sftune import demo

    monkeypatch.chdir(tmp_path)
    result = demo.run()
    assert result["loss_after"] < result["loss_before"]
    assert result["exact_match_after"] >= result["exact_match_before"] + 0.3
    report = json.loads((Path(result["report"]).parent / "results.json").read_text())  # it ends with its report
    rows = {row["metric"]: row for row in report["tasks"][0]["rows"]}
    assert rows["json_match"]["verdict"] == "better" and rows["json_match"]["model"] == result["exact_match_after"]


def test_sftune_train_mixes_weighted_entries_with_their_own_format_and_llamafactory_datasets(tmp_path,
                                                                                             tiny_checkpoint):
    """`sftune train` on data.train entries with a weight, their own format / columns, and the named
    datasets of a dataset_info.json whose other entries are a hub dataset and a file that is absent."""
    import yaml
    from typer.testing import CliRunner

    from sftune.cli import app

    chat = tmp_path / "chat.jsonl"
    chat.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"q{i}"},
                                                     {"role": "assistant", "content": f"a{i}"}]}) + "\n"
                            for i in range(3)))
    sheet = tmp_path / "sheet.csv"
    sheet.write_text("ask,say\n" + "".join(f"p{i},c{i}\n" for i in range(4)))
    factory = tmp_path / "factory"
    factory.mkdir()
    (factory / "alpaca_en_demo.json").write_text(json.dumps([{"instruction": f"i{i}", "input": "", "output": f"o{i}"}
                                                              for i in range(5)]))
    (factory / "identity.json").write_text(json.dumps([{"instruction": "Who are you?", "input": "", "output": "sftune"}]))
    (factory / "dataset_info.json").write_text(json.dumps({
        "alpaca_en_demo": {"file_name": "alpaca_en_demo.json"},
        "identity": {"file_name": "identity.json"},
        "glaive_toolcall_en": {"hf_hub_url": "someone/glaive"},
        "not_downloaded": {"file_name": "not_downloaded.json"},
    }))
    cfg = run_config(tmp_path, tiny_checkpoint, train={"max_steps": 1, "save_steps": None}, eval={"steps": None})
    cfg["data"] = {"train": [{"path": str(chat), "weight": 2},
                             {"path": str(sheet), "format": "prompt_completion",
                              "columns": {"prompt": "ask", "completion": "say"}},
                             {"path": str(factory / "dataset_info.json"), "datasets": ["alpaca_en_demo", "identity"]}],
                   "val_ratio": 0, "max_len": 128}
    path = tmp_path / "mix.yaml"
    path.write_text(yaml.safe_dump(cfg))
    done = CliRunner().invoke(app, ["train", str(path)], env={"COLUMNS": "200"})
    assert done.exit_code == 0, done.output
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["train_examples"] == 2 * 3 + 4 + 5 + 1 and summary["eval_examples"] == 0
    bad = {**cfg, "data": {**cfg["data"], "train": [{"path": str(chat), "weight": 2, "ratio": 0.5}]}}
    path.write_text(yaml.safe_dump(bad))
    done = CliRunner().invoke(app, ["train", str(path), "output.overwrite=true"], env={"COLUMNS": "200"})
    assert done.exit_code == 2 and "a weight or a ratio, not both" in done.output


def test_generation_metrics_at_each_evaluation_and_keep_best_by_one(tmp_path, tiny_checkpoint):
    """eval.generate_metrics logs eval_bleu / eval_rouge* / eval_exact_match at every evaluation; keep_best
    picks the checkpoint by one of them; the saved model's answers score what that evaluation logged."""
    from sftune import generation, runs, train
    from sftune.evaluate import metrics

    def chats(path, n, start):  # one constant answer: a tiny model learns it in a few steps
        path.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"Is {i} a number?"},
                                                         {"role": "assistant", "content": "yes it is"}]}) + "\n"
                                for i in range(start, start + n)))
        return str(path)

    cfg = run_config(tmp_path, tiny_checkpoint, method={"name": "full"},
                     # fp32 on every machine: the evaluation inside training and the loaded model must compute alike
                     # (under bf16 autocast a tiny random model's greedy answers can flip against fp32 inference).
                     train={"lr": 1e-2, "max_steps": 8, "batch_size": 4, "warmup": 0, "save_total_limit": 4,
                            "precision": "fp32"},
                     eval={"generate_metrics": ["bleu", "rouge", "exact_match"], "generate_max_examples": 3,
                           "generate_max_new_tokens": 6, "keep_best": "rougeL"})
    cfg["method"] = {"name": "full"}
    cfg["data"].update(train=chats(tmp_path / "train.jsonl", 32, 0), eval=chats(tmp_path / "eval.jsonl", 4, 1000))
    result = train(cfg)
    records = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if "eval_loss" in r][:4]
    assert [r["step"] for r in evals] == [2, 4, 6, 8]
    for r in evals:
        assert {"eval_bleu", "eval_rouge1", "eval_rouge2", "eval_rougeL", "eval_exact_match"} <= r.keys()
    best_score = max(r["eval_rougeL"] for r in evals)
    assert best_score > 0.2  # answers partly learned: the metric has something to choose by
    best = next(r for r in evals if r["eval_rougeL"] == best_score)  # Trainer keeps the first of equals
    assert result.summary["best_checkpoint"].endswith(f"checkpoint-{best['step']}")
    # the saved (best) model, loaded and generating outside training, scores what that evaluation logged
    loaded = runs.load(result.run_dir)
    conversations = [json.loads(line)["messages"] for line in Path(cfg["data"]["eval"]).read_text().splitlines()][:3]
    prompts = [loaded.template.render(c[:-1], add_generation_prompt=True) for c in conversations]
    answers = [c.text.strip() for c in generation.generate(loaded.model, loaded.tokenizer, prompts,
                                                           generation.GenerationOptions(max_new_tokens=6),
                                                           stop_token_ids=loaded.stop_token_ids, batch_size=1)]
    references = [c[-1]["content"] for c in conversations]
    assert metrics.rouge(answers, references)["rougeL"] == pytest.approx(best["eval_rougeL"], abs=1e-6)
    assert metrics.bleu(answers, references) == pytest.approx(best["eval_bleu"], abs=1e-6)
    assert metrics.exact_match(answers, references) == pytest.approx(best["eval_exact_match"], abs=1e-6)

def test_keep_best_by_a_metric_that_is_not_generated_is_a_clear_error(tmp_path, tiny_checkpoint):
    from sftune import train
    from sftune.config import ConfigError

    with pytest.raises(ConfigError, match="eval.keep_best=rougeL.*add rouge to eval.generate_metrics"):
        train(run_config(tmp_path, tiny_checkpoint, eval={"keep_best": "rougeL", "generate_metrics": ["bleu"]}))


@pytest.mark.parametrize("train_folder, output", [(True, "data/run"), (False, "data")],
                         ids=["output.dir inside the data folder", "output.dir holding a data file"])
def test_an_output_dir_that_would_mix_with_the_data_is_refused_before_the_model_loads(tmp_path, monkeypatch,
                                                                                        train_folder, output):
    """A run folder inside the data folder is read as data by the next run (metrics.jsonl, checkpoints); one that
    holds a data file beside its own files may write over it. Refused naming both paths, before anything is loaded
    or written (data in a subfolder of the run is allowed: tests/test_runs.py keeps held-out data there)."""
    from sftune import train
    from sftune.config import ConfigError
    from sftune.training import recipe

    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded before output.dir was checked")

    monkeypatch.setattr(recipe, "setup_model", no_model)
    train_path, eval_path = demo_data(tmp_path)
    data = {"train": str(tmp_path / "data") if train_folder else str(train_path), "eval": str(eval_path)}
    with pytest.raises(ConfigError, match=rf"data\.train and output\.dir: .*{tmp_path / output}.*"
                                          rf"{tmp_path / 'data'}") as refused:
        train({"model": {"name": "smollm2-135m-instruct"}, "data": data, "output": {"dir": str(tmp_path / output)}})
    assert "choose an output path outside" in str(refused.value)
    assert not (tmp_path / output / "config.yaml").exists()


def test_a_missing_data_file_is_reported_before_the_model_loads(tmp_path, monkeypatch):
    """A typo in data.eval costs a second, not a model load followed by the same error."""
    from sftune import train
    from sftune.config import ConfigError
    from sftune.training import recipe

    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded before the data paths were checked")

    monkeypatch.setattr(recipe, "setup_model", no_model)
    train_path, _ = demo_data(tmp_path)
    with pytest.raises(ConfigError, match=r"data\.eval: .*nope\.jsonl: no such file"):
        train({"model": {"name": "smollm2-135m-instruct"},
               "data": {"train": [str(train_path)], "eval": [{"path": str(tmp_path / "nope.jsonl")}]},
               "output": {"dir": str(tmp_path / "run")}})
