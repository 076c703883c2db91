"""Which checkpoints are complete: a marker written once Trainer has saved all of a checkpoint, and
the newest marked one, which is what `train.resume_from=last` resumes."""

from __future__ import annotations

import os
from pathlib import Path

from transformers import TrainerCallback

from sftune.models import COMPLETE_MARKER


def last_checkpoint(checkpoints_dir: str | os.PathLike) -> str | None:
    """The newest checkpoint folder that was completely written, or None."""
    folder = Path(checkpoints_dir)
    if not folder.is_dir():
        return None
    done = [
        p for p in folder.glob("checkpoint-*")
        if p.name.split("-")[-1].isdigit() and (p / COMPLETE_MARKER).exists()
    ]
    return str(max(done, key=lambda p: int(p.name.split("-")[-1]))) if done else None


class CheckpointCompleteCallback(TrainerCallback):
    """Marks a checkpoint complete once Trainer has written all of it; resume uses only those."""

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if folder.is_dir():
                (folder / COMPLETE_MARKER).write_text(f"step {state.global_step}\n")
