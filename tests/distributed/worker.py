"""One process of a multi-process test run (started by torchrun or accelerate launch): trains with
`sftune.train` and writes what this process saw to <output.dir>/probe-<rank>.json."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from transformers import TrainerCallback


class Probe(TrainerCallback):
    """Records how the model was wrapped (DDP, FSDP2 DTensors, DeepSpeed stage)."""

    def __init__(self):
        self.seen: dict = {}

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        from accelerate.state import AcceleratorState, PartialState
        from torch.distributed.tensor import DTensor

        self.seen = {
            "distributed_type": str(PartialState().distributed_type),
            "num_processes": PartialState().num_processes,
            "dtensor_parameters": sum(isinstance(p, DTensor) for p in model.parameters()),
            "deepspeed_stage": (AcceleratorState().deepspeed_plugin.zero_stage
                                if AcceleratorState().deepspeed_plugin else None),
        }


def main(config: str, overrides: list[str]) -> None:
    from sftune import train

    probe = Probe()
    result = train(config, overrides, callbacks=[probe])
    rank = int(os.environ.get("RANK", "0"))
    out = Path(result.run_dir) / f"probe-{rank}.json"
    out.write_text(json.dumps({**probe.seen, "summary": result.summary}, default=str))


def shards(config: str, overrides: list[str]) -> None:
    """Set up the run as `sftune.train` does, then write the rows this process gets in one epoch of the
    Trainer's (sharded) training data loader, and how its data was encoded."""
    import torch

    from sftune import templates
    from sftune.config import load
    from sftune.training.arguments import training_arguments
    from sftune.training.data import prepare_data
    from sftune.training.recipe import setup_model, setup_trainer

    cfg = load(config, overrides)
    from rich.console import Console

    console = Console()
    model, tokenizer, packing = setup_model(cfg, "fp32", console)
    template = templates.default_for(tokenizer)
    args = training_arguments(cfg, Path(cfg.output.dir), precision="fp32", has_eval=False, packing=packing)
    with args.main_process_first(local=True):
        encoded = prepare_data(cfg, tokenizer, template)
    trainer = setup_trainer(cfg, model, tokenizer, template, encoded, args, packing=packing, console=console,
                            callbacks=None)
    rows = [batch["input_ids"][0].tolist() for batch in trainer.get_train_dataloader()]
    everything = [list(r) for r in trainer.train_dataset["input_ids"]]
    rank = int(os.environ.get("RANK", "0"))
    Path(cfg.output.dir).mkdir(parents=True, exist_ok=True)
    (Path(cfg.output.dir) / f"shard-{rank}.json").write_text(json.dumps(
        {"rows": rows, "all_rows": everything, "cache": encoded.reports["train"].cache,
         "world_size": torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1}))


if __name__ == "__main__":
    if sys.argv[1] == "--shards":
        shards(sys.argv[2], sys.argv[3:])
    else:
        main(sys.argv[1], sys.argv[2:])
