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


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
