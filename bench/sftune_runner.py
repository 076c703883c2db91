"""sftune's side of the benchmark: `sftune.train(config)` with its defaults, on the benchmark's work.

sftune reads the same examples from a JSONL file with its own data layer and encodes them with its
own encoder (the same ids and labels the peers get). Only what the workload fixes is set: the
examples, max length 512, the examples per optimizer step, one epoch, no held-out split. The rest
(fp32 on a CPU without bf16 units, no checkpointing, padding-free packing with per-sequence
varlen attention, one packed row per forward pass on a CPU, the chunked loss on trained positions)
is sftune's default.

`train()` builds its Trainer inside; the harness's instruments (the counting collator and the step
clock that every peer gets too) are attached by a subclass of `SFTTrainer` put in its place in the
recipe module (`sftune.training.recipe`), in this benchmark process only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.workload import MAX_LENGTH, Meter, Workload, settings_of


def examples_file(work: Workload, folder: str) -> str:
    """The first `work.examples` lines of the benchmark data, as the file sftune reads."""
    path = Path(folder) / "train.jsonl"
    with open(work.data, encoding="utf-8") as source:
        lines = [line for _, line in zip(range(work.examples), source)]
    path.write_text("".join(lines), encoding="utf-8")
    return str(path)


def rows_per_step(encoded: list[dict[str, list[int]]], batch: int) -> int:
    """Packed rows per micro-batch that hold about `batch` examples, from sftune's own packer."""
    from sftune.packing import pack

    bins = pack([len(e["input_ids"]) for e in encoded], MAX_LENGTH)
    return max(1, round(batch * len(bins) / len(encoded)))


def train_sftune(work: Workload, encoded: list[dict[str, list[int]]], meter: Meter, out: str
                 ) -> tuple[list[dict[str, Any]], int, dict[str, Any]]:
    """Train once; return the measured steps, the number of LoRA parameters and the settings run."""
    import importlib

    from rich.console import Console

    from bench.flops import lora_params

    engine = importlib.import_module("sftune.training.recipe")
    config = {
        "model": {"name": work.model},
        "data": {"train": [examples_file(work, out)], "val_ratio": 0, "max_len": MAX_LENGTH},
        "train": {"batch_size": rows_per_step(encoded, work.batch), "epochs": 1, "seed": work.seed},
        "output": {"dir": str(Path(out) / "run"), "overwrite": True},
    }
    measured: dict[str, Any] = {}

    class MeteredTrainer(engine.SFTTrainer):
        def __init__(self, *args, **kwargs):
            kwargs["data_collator"] = meter.wrap(kwargs["data_collator"])
            kwargs["callbacks"] = [*kwargs.get("callbacks", []), meter.callback()]
            super().__init__(*args, **kwargs)
            meter.accumulation = self.args.gradient_accumulation_steps
            measured["lora"] = lora_params(self.model)
            measured["settings"] = settings_of(self)

    engine.SFTTrainer = MeteredTrainer
    result = engine.train(config, console=Console(stderr=True, quiet=True))
    if result.summary["trained_tokens"] != sum(s["trained"] for s in meter.steps()):
        raise RuntimeError(f"sftune counted {result.summary['trained_tokens']} trained tokens, the benchmark "
                           f"{sum(s['trained'] for s in meter.steps())}")
    return meter.steps(), measured["lora"], measured["settings"]
