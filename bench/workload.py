"""The one workload every system in the benchmark trains on, and the instruments that measure it.

Same model, same examples, same token ids and labels (response-only loss), same LoRA, same
examples per optimizer step. Each system keeps its own defaults for everything else (precision,
activation checkpointing, padding, packing), which is what the benchmark compares.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

DATA = Path(__file__).parent / "data" / "sharegpt_bench.jsonl"
MODEL = "smollm2-135m-instruct"
MAX_LENGTH = 512  # longest example; also the tutorial recipe's padded length


def lora_settings() -> dict[str, Any]:
    """The method, identical for every system: sftune's default LoRA (r=16 on all linear layers)."""
    from sftune.methods import MethodConfig

    m = MethodConfig(name="lora")
    return {"r": m.r, "lora_alpha": m.alpha, "lora_dropout": m.dropout, "target_modules": m.target_modules}


@dataclass
class Workload:
    examples: int = 64
    batch: int = 8  # examples per optimizer step, for every system
    warmup_steps: int = 1  # optimizer steps left out of the timings
    model: str = MODEL
    data: str = str(DATA)
    seed: int = 0


def set_threads() -> int:
    """Give torch every core, the same way in every system's process."""
    import torch

    cores = os.cpu_count() or 1
    torch.set_num_threads(cores)
    return cores


def read_conversations(path: str, limit: int) -> list:
    """The first `limit` conversations of the benchmark file, read by sftune's data layer."""
    from sftune.data import read

    conversations = []
    for conversation in read(path):
        conversations.append(conversation)
        if len(conversations) == limit:
            break
    if len(conversations) < limit:
        raise SystemExit(f"{path} holds {len(conversations)} conversations; the benchmark asked for {limit}.")
    return conversations


def encode_reference(conversations: list, tokenizer) -> list[dict[str, list[int]]]:
    """input_ids + labels for each conversation: the ids every system trains on.

    sftune's own encoder with the model's own template, response-only (each assistant reply and
    its end-of-turn token), so the peers train on exactly the tokens sftune trains on.
    """
    from sftune import templates
    from sftune.encode import encode

    template = templates.default_for(tokenizer)
    out = []
    for k, conversation in enumerate(conversations):
        encoded = encode(conversation, tokenizer, template, max_len=MAX_LENGTH)
        if encoded is None or len(encoded["input_ids"]) > MAX_LENGTH:
            raise SystemExit(f"benchmark example {k} does not fit in {MAX_LENGTH} tokens with a trained token")
        out.append({"input_ids": list(encoded["input_ids"]), "labels": list(encoded["labels"])})
    return out


def trained_in(labels) -> int:
    """Positions that contribute to the causal-LM loss: labels shifted by one, not -100."""
    return int((labels[..., 1:] != -100).sum())


@dataclass
class Meter:
    """Counts tokens per micro-batch as the collator builds them, and times optimizer steps."""

    accumulation: int = 1
    batches: list[dict[str, int]] = field(default_factory=list)
    step_ends: list[float] = field(default_factory=list)
    start: float = 0.0

    def wrap(self, collate: Callable[[list], dict[str, Any]]) -> Callable[[list], dict[str, Any]]:
        def counted(features: list) -> dict[str, Any]:
            batch = collate(features)
            ids = batch["input_ids"]
            mask = batch.get("attention_mask")
            self.batches.append({
                "examples": len(features) if "position_ids" not in batch else _sequences(batch),
                "fed": int(ids.numel()),
                "real": int(mask.sum()) if mask is not None else int(ids.numel()),
                "trained": trained_in(batch["labels"]),
                "lengths": _lengths(batch),
                "layout": layout_of(batch),
            })
            return batch

        return counted

    def callback(self):
        from transformers import TrainerCallback

        meter = self

        class StepClock(TrainerCallback):
            def on_train_begin(self, args, state, control, **kwargs):
                synchronize()
                meter.start = time.perf_counter()

            def on_step_end(self, args, state, control, **kwargs):
                synchronize()  # a GPU step ends when its kernels have run, not when they were queued
                meter.step_ends.append(time.perf_counter())

        return StepClock()

    def steps(self) -> list[dict[str, Any]]:
        """Per optimizer step: seconds, and the token counts of its micro-batches."""
        out = []
        previous = self.start
        for i, end in enumerate(self.step_ends):
            group = self.batches[i * self.accumulation : (i + 1) * self.accumulation]
            out.append({
                "seconds": end - previous,
                "examples": sum(b["examples"] for b in group),
                "fed": sum(b["fed"] for b in group),
                "real": sum(b["real"] for b in group),
                "trained": sum(b["trained"] for b in group),
                "lengths": [n for b in group for n in b["lengths"]],
                "layouts": sorted({b["layout"] for b in group}),
            })
            previous = end
        return out


def synchronize() -> None:
    """Wait for the GPU's queued work (nothing on a CPU), so that a clock read after it times the work."""
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def settings_of(trainer) -> dict[str, Any]:
    """What a Trainer really runs with, read back from it (not from the label we gave it)."""
    args = trainer.args
    columns = getattr(trainer.train_dataset, "column_names", None) or []
    return {
        "precision": "bf16" if args.bf16 else "fp16" if args.fp16 else "fp32",
        "activation_checkpointing": bool(args.gradient_checkpointing),
        "packing": bool(getattr(args, "packing", False)) or "position_ids" in columns,
        "micro_batch": args.per_device_train_batch_size,
        "accumulation": args.gradient_accumulation_steps,
        "weights": str(next(trainer.model.parameters()).dtype).replace("torch.", ""),
    }


def layout_of(batch: dict[str, Any]) -> str:
    if batch.get("attention_mask") is None and "position_ids" in batch:
        return "padding-free"
    return f"padded to {batch['input_ids'].shape[-1]}" if batch["input_ids"].shape[-1] >= MAX_LENGTH else "padded"


def _sequences(batch: dict[str, Any]) -> int:
    return int((batch["position_ids"] == 0).sum())


def _lengths(batch: dict[str, Any]) -> list[int]:
    """Length of each real sequence in the micro-batch (for the attention term of the FLOP count)."""
    if "position_ids" in batch and batch.get("attention_mask") is None:
        starts = (batch["position_ids"].flatten() == 0).nonzero().flatten().tolist()
        total = batch["position_ids"].numel()
        return [b - a for a, b in zip(starts, starts[1:] + [total])]
    mask = batch.get("attention_mask")
    if mask is None:
        return [batch["input_ids"].shape[-1]] * batch["input_ids"].shape[0]
    return [int(n) for n in mask.sum(dim=-1).tolist()]


def summarize(steps: list[dict[str, Any]], warmup: int) -> dict[str, Any]:
    """Totals over the whole run (the same-work check) and rates over the timed steps."""
    timed = steps[warmup:]
    if not timed:
        raise SystemExit(f"the run made {len(steps)} optimizer steps; nothing is left after {warmup} warm-up steps")
    seconds = sum(s["seconds"] for s in timed)
    return {
        "layout": sorted({layout for s in steps for layout in s["layouts"]}),
        "steps": len(steps),
        "timed_steps": len(timed),
        "examples_total": sum(s["examples"] for s in steps),
        "trained_total": sum(s["trained"] for s in steps),
        "real_total": sum(s["real"] for s in steps),
        "fed_total": sum(s["fed"] for s in steps),
        "timed_seconds": seconds,
        "timed_trained": sum(s["trained"] for s in timed),
        "timed_real": sum(s["real"] for s in timed),
        "timed_fed": sum(s["fed"] for s in timed),
        "timed_lengths": [n for s in timed for n in s["lengths"]],
        "trained_per_s": sum(s["trained"] for s in timed) / seconds,
        "fed_per_s": sum(s["fed"] for s in timed) / seconds,
        "real_per_s": sum(s["real"] for s in timed) / seconds,
        "s_per_step": seconds / len(timed),
    }
