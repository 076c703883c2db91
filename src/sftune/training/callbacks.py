"""What a run shows and records as it goes: metrics.jsonl (one JSON line per log) and a progress bar."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

# Generation metrics an evaluation may log (eval.generate_metrics), shown after the loss.
GENERATED = ("eval_exact_match", "eval_bleu", "eval_rouge1", "eval_rouge2", "eval_rougeL", "eval_token_f1")


class MetricsFileCallback(TrainerCallback):
    """Appends every log record (train and eval) to metrics.jsonl as one JSON line, with the planned number of
    steps and the wall-clock time, so a reader of the file alone (the web UI) shows progress and time left."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and logs:
            record = {"step": state.global_step, "epoch": state.epoch, "max_steps": state.max_steps,
                      "time": round(time.time(), 3), **logs}
            with self.path.open("a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")


class RichProgressCallback(TrainerCallback):
    """One progress line: steps, the last logged loss, the learning rate of the last step, trained tokens per
    second (on a terminal of 120 columns or more, with a bar), then the time elapsed and an estimate of the
    time left, each named."""

    def __init__(self, console=None):
        self.console = console
        self.progress = None
        self.step_lr = None  # the learning rate the optimizer applied in the running step

    def on_train_begin(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        from rich import get_console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        console = self.console or get_console()
        wide = console.width >= 120  # a narrow terminal (80 columns) keeps the numbers whole: no bar, no tokens/s
        self.progress = Progress(
            *([TextColumn("[bold]train"), BarColumn(bar_width=20)] if wide else []),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]} · lr {task.fields[lr]}"
                       + (" · {task.fields[tps]} tok/s" if wide else "") + " · elapsed"),
            TimeElapsedColumn(),
            TextColumn("· about"),
            TimeRemainingColumn(),
            TextColumn("left"),
            console=console,
            transient=False,
        )
        self.progress.start()
        self.task = self.progress.add_task(
            "train", total=state.max_steps, completed=state.global_step, loss="-", lr="-", tps="-"
        )

    def on_optimizer_step(self, args, state, control, optimizer=None, **kwargs):
        if optimizer is not None:  # before the scheduler moves on to the next step's rate
            self.step_lr = optimizer.param_groups[0]["lr"]

    def on_step_end(self, args, state, control, **kwargs):
        if self.progress is not None:
            lr = {} if self.step_lr is None else {"lr": f"{self.step_lr:.2e}"}
            self.progress.update(self.task, completed=state.global_step, **lr)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.progress is None or not logs:
            return
        if "loss" in logs:
            self.progress.update(self.task, loss=f"{logs['loss']:.4f}",
                                 tps=f"{logs.get('trained_tokens_per_second', 0):.0f}")
        elif "eval_rewards/accuracies" in logs:  # a preference run (sftune.preference)
            self.progress.console.print(
                f"step {state.global_step}: eval loss {logs['eval_loss']:.4f}, reward accuracy "
                f"{logs['eval_rewards/accuracies']:.3f}, margin {logs['eval_rewards/margins']:.4f}"
            )
        elif "eval_loss" in logs:
            generated = "".join(f", {k[len('eval_'):]} {logs[k]:.3f}" for k in GENERATED if k in logs)
            self.progress.console.print(
                f"step {state.global_step}: eval loss {logs['eval_loss']:.4f}, perplexity "
                f"{logs['eval_perplexity']:.2f}, token accuracy {logs['eval_token_accuracy']:.3f}{generated}"
            )

    def on_train_end(self, args, state, control, **kwargs):
        self.close()

    def close(self) -> None:
        """Stop the line and its refresh thread (also when training ends by an exception, where the Trainer
        calls no on_train_end: the thread would otherwise redraw a dead line for the rest of the process)."""
        if self.progress is not None:
            self.progress.stop()
            self.progress = None


def close_progress(trainer: Any) -> None:
    """After trainer.train(), however it ended: no progress line is left running."""
    for callback in trainer.callback_handler.callbacks:
        if isinstance(callback, RichProgressCallback):
            callback.close()
