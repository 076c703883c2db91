"""The vision demo: a tiny random LLaVA-style model learns to name the colour and shape of a drawn figure.

Everything is made here: the images (shapes.py), the model from a config (tiny.py, with the embedded
SmolLM2 tokenizer), the run through the ordinary recipe. Held-out accuracy is measured before and
after: an answer counts when every one of its tokens is the model's top choice given the ones
before it, which is exactly when greedy decoding writes it.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from sftune.encode import IGNORE


@torch.no_grad()
def accuracy(model: Any, processor: Any, rows: Any, batch_size: int = 16) -> float:
    """Share of rows whose whole answer greedy decoding would write (teacher-forced argmax, all tokens)."""
    from sftune.vision.dataset import collate

    model.eval()
    hits = 0
    for start in range(0, len(rows), batch_size):
        batch = collate([rows[k] for k in range(start, min(start + batch_size, len(rows)))], processor=processor,
                        pad_token_id=processor.tokenizer.pad_token_id)
        labels = batch.pop("labels")
        logits = model(**batch, use_cache=False).logits
        guess = logits[:, :-1].argmax(-1)
        target = labels[:, 1:]
        trained = target != IGNORE
        hits += int(((guess == target) | ~trained).all(-1).sum())
    return hits / len(rows)


def run(folder: str | Path, *, n_train: int = 600, n_eval: int = 90, steps: int = 300, family: str = "llava",
        method: str = "full", lr: float = 3e-3, console=None) -> dict[str, Any]:
    """Write the task and the tiny model under `folder`, train, and return accuracy before/after and seconds."""
    from rich.console import Console

    from sftune import models, templates
    from sftune.data import read
    from sftune.training.recipe import train
    from sftune.vision import models as vision_models
    from sftune.vision import shapes, tiny
    from sftune.vision.dataset import encode_dataset

    console = console or Console()
    folder = Path(folder)
    _, tokenizer = models.load(models.DEFAULT_MODEL, tokenizer_only=True)
    model_dir = tiny.build(family, folder / "model", tokenizer)
    train_file = shapes.write(folder / "data", n_train, seed=1, name="train")
    eval_file = shapes.write(folder / "data", n_eval, seed=2, name="heldout")

    model, processor = vision_models.load(model_dir, dtype=torch.float32)
    template = templates.default_for(processor.tokenizer)
    rows, _ = encode_dataset(list(read([eval_file])), processor, template)
    before = accuracy(model, processor, rows)
    console.print(f"held-out accuracy before training: {before:.1%} ({len(rows)} images, 9 classes)")

    started = time.perf_counter()
    result = train({
        "model": {"name": str(model_dir)},
        "data": {"train": [str(train_file)], "eval": [str(eval_file)], "max_len": 128},
        "method": {"name": method},
        "train": {"max_steps": steps, "batch_size": 8, "lr": lr, "save_steps": steps, "logging_steps": 10},
        "eval": {"steps": steps},
        "vision": {"train_projector": True, "train_vision_tower": True},
        "output": {"dir": str(folder / "run"), "overwrite": True},
    }, console=console)
    seconds = time.perf_counter() - started
    after = accuracy(result.model, processor, rows)
    console.print(f"held-out accuracy after {steps} steps: {after:.1%} (before: {before:.1%}; {seconds:.0f} s)")
    return {"before": before, "after": after, "seconds": seconds, "steps": steps, "run_dir": str(result.run_dir)}
