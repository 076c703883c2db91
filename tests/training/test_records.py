"""What a run records of itself: the progress line, curves.png's points, consistent clocks, environment.json,
and a resume that goes past its learning-rate schedule (said, and without evaluating a step twice)."""

from __future__ import annotations

import io
import json
import re
from types import SimpleNamespace

from rich.console import Console
from transformers import TrainerCallback, TrainerState, TrainingArguments

from tests.training.test_recipe import run_config


class StepRates(TrainerCallback):
    """The learning rate the optimizer applied at each step, and each evaluation's step."""

    def __init__(self):
        self.rates, self.evaluated = {}, []

    def on_optimizer_step(self, args, state, control, optimizer=None, **kwargs):
        self.rates[state.global_step + 1] = optimizer.param_groups[0]["lr"]

    def on_evaluate(self, args, state, control, **kwargs):
        self.evaluated.append(state.global_step)


def test_progress_line_says_elapsed_and_left_with_the_rate_of_the_last_step(tmp_path):
    from sftune.training.callbacks import RichProgressCallback

    out = io.StringIO()
    progress = RichProgressCallback(Console(file=out, width=200))
    args = TrainingArguments(output_dir=str(tmp_path), report_to=[])
    state = TrainerState(max_steps=6, global_step=0)
    progress.on_train_begin(args, state, None)
    rates = [1e-3, 8e-4, 6e-4, 4e-4, 2e-4, 5e-5]
    for step, rate in enumerate(rates, start=1):
        progress.on_optimizer_step(args, state, None, optimizer=SimpleNamespace(param_groups=[{"lr": rate}]))
        state.global_step = step
        progress.on_step_end(args, state, None)
        if step == 4:  # logging every 4 steps: the loss of step 4 is the last logged
            progress.on_log(args, state, None, logs={"loss": 2.5, "learning_rate": rate, "trained_tokens_per_second": 9})
    progress.on_train_end(args, state, None)
    line = out.getvalue().splitlines()[-1]
    assert "6/6" in line and "loss 2.5000" in line and "lr 5.00e-05" in line  # the last step's rate, not step 4's
    assert re.search(r"elapsed \d+:\d\d:\d\d · about \d+:\d\d:\d\d left", line), line


def test_a_resumed_run_records_every_step_its_sessions_and_consistent_clocks(tmp_path, tiny_checkpoint, monkeypatch):
    from sftune import train
    from sftune.training import trainer as trainer_module
    from sftune.training.plot import curve_points

    # every reading of the trainer's clock moves it 10 s on: the first session's training time is long, so a
    # total that counted only the resumed session would fall below the time excluding evaluations
    clock = SimpleNamespace(now=0.0)

    def perf_counter():
        clock.now += 10.0
        return clock.now

    monkeypatch.setattr(trainer_module, "time", SimpleNamespace(perf_counter=perf_counter))
    rates = StepRates()
    cfg = run_config(tmp_path, tiny_checkpoint, train={"max_steps": 4, "scheduler": "linear", "warmup": 0,
                                                      "save_total_limit": 3}, eval={"steps": 2, "on_start": True})
    del cfg["train"]["logging_steps"]  # the default: every step is logged
    first = train(cfg, callbacks=[rates])
    run = first.run_dir
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    curves = curve_points(records)
    assert [step for step, _ in curves["loss"]] == [1, 2, 3, 4]
    assert curves["learning_rate"] == sorted(rates.rates.items())  # the rate each step trained at
    environment = json.loads((run / "environment.json").read_text())
    assert {"torch", "transformers", "peft", "accelerate", "datasets"} <= set(environment["packages"])
    assert environment["precision"] == first.summary["precision"] and environment["machine"]["cpu"]
    assert environment["command"] and environment["sftune"]
    assert re.fullmatch(r"[0-9a-f]{40}", environment["source"]["commit"])  # the tests run from a git checkout
    assert isinstance(environment["source"]["dirty"], bool)

    out = io.StringIO()
    resumed = train(cfg, ["train.resume_from=last", "train.max_steps=6"], console=Console(file=out, width=400),
                    callbacks=[rates])
    said = " ".join(out.getvalue().split())
    assert "schedule of this run ended at step 4; steps 5-6 train on the tail of a new 6-step linear schedule" in said
    assert "output.overwrite=true" in said and f"sftune export {run}" in said
    assert rates.rates[5] == 0.0  # what the warning is about: the ended schedule's rate goes on
    s = resumed.summary
    assert 0 < s["train_seconds_excluding_eval"] <= s["train_seconds"]
    assert s["train_seconds"] > first.summary["train_seconds"]  # both clocks add up the two sessions
    # each step evaluated once: the resume does not measure its start again, nor the kept model at the end
    assert rates.evaluated == [0, 2, 4, 6]
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "eval_loss" in r] == [0, 2, 4, 6]
    assert [step for step, _ in curve_points(records)["loss"]] == [1, 2, 3, 4, 5, 6]
    again = json.loads((run / "environment.json").read_text())
    assert again["resumed_from"].endswith("checkpoint-4") and again["earlier_sessions"][0]["resumed_from"] is None
