"""Shared by the training tests: hand-made encoded records, a padding-free collator, TrainingArguments
for a tiny CPU run, and callbacks that stop or poison a run at a given step."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import TrainerCallback, TrainingArguments

VOCAB = 512


def encoded_examples(n: int = 16, seed: int = 0, vocab: int = VOCAB) -> list[dict]:
    """Hand-made encoded records: a prompt (masked) then a response (trained), varied lengths."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(n):
        prompt = int(torch.randint(3, 12, (1,), generator=g))
        answer = int(torch.randint(2, 10, (1,), generator=g))
        start = int(torch.randint(0, vocab - 64, (1,), generator=g))
        ids = [(start + 3 * i) % vocab for i in range(prompt + answer)]  # learnable: arithmetic
        rows.append({"input_ids": ids, "labels": [-100] * prompt + ids[prompt:]})
    return rows


def padding_free_collate(rows: list[dict]) -> dict[str, torch.Tensor]:
    """Concatenate records into one [1, T] row; position_ids restart per record; no attention mask."""
    ids, labels, pos, weights = [], [], [], []
    for r in rows:
        ids += r["input_ids"]
        labels += r["labels"]
        pos += list(range(len(r["input_ids"])))
        weights += r.get("loss_weights", [1.0] * len(r["input_ids"]))
    batch = {
        "input_ids": torch.tensor([ids]),
        "labels": torch.tensor([labels]),
        "position_ids": torch.tensor([pos]),
    }
    if any("loss_weights" in r for r in rows):
        batch["loss_weights"] = torch.tensor([weights])
    return batch


def make_args(tmp_path: Path, **overrides) -> TrainingArguments:
    settings = dict(
        output_dir=str(tmp_path),
        per_device_train_batch_size=4,
        gradient_accumulation_steps=1,
        learning_rate=1e-3,
        max_steps=4,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        disable_tqdm=True,
        remove_unused_columns=False,
        train_sampling_strategy="sequential",
        dataloader_num_workers=0,
        seed=0,
        max_grad_norm=0.0,
        optim="adamw_torch",
    )
    settings.update(overrides)
    return TrainingArguments(**settings)


class GradientRecorder(TrainerCallback):
    """Keeps the gradients just before each optimizer step."""

    def __init__(self):
        self.steps: list[dict[str, torch.Tensor]] = []

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        self.steps.append({n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None})


def losses(trainer) -> list[float]:
    return [r["loss"] for r in trainer.state.log_history if "loss" in r]



class StopAt(TrainerCallback):
    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            control.should_save = True
            control.should_training_stop = True



class PoisonAt(TrainerCallback):
    """Turns a trained parameter into NaN after `step` (on one process only, if `process` is given)."""

    def __init__(self, step: int, process: int | None = None):
        self.step = step
        self.process = process

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step == self.step and self.process in (None, args.process_index):
            with torch.no_grad():
                next(p for p in model.parameters() if p.requires_grad).fill_(float("nan"))

