"""What a run folder records about how it ran, beyond its metrics: environment.json (sftune and library
versions, the command line, the source revision, the machine and the precision), written when a run starts
so that a run which fails has it too; and the warning of a resume whose learning-rate schedule has changed.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

ENVIRONMENT = "environment.json"
# The libraries a run's numbers depend on, by distribution name.
PACKAGES = ("torch", "transformers", "peft", "accelerate", "datasets", "tokenizers", "safetensors", "huggingface_hub",
            "bitsandbytes", "deepspeed")


def write_environment(run_dir: Path, *, precision: str, resumed_from: str | None) -> dict[str, Any]:
    """Write RUN/environment.json for this training session; a resume keeps the earlier sessions' records
    in `earlier_sessions` (a run resumed under other versions shows both)."""
    record = {**environment(precision), "resumed_from": resumed_from}
    path = Path(run_dir) / ENVIRONMENT
    if resumed_from is not None and path.is_file():
        earlier = json.loads(path.read_text(encoding="utf-8"))
        record["earlier_sessions"] = earlier.pop("earlier_sessions", []) + [earlier]
    path.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return record


def environment(precision: str) -> dict[str, Any]:
    """sftune's version and source revision, python and the libraries' versions, the command line, the machine."""
    from sftune import __version__

    return {
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "sftune": __version__,
        "source": source_revision(Path(__file__).resolve().parents[1]),
        "python": platform.python_version(),
        "packages": {name: _version(name) for name in PACKAGES if _version(name) is not None},
        "command": list(sys.argv),
        "working_dir": os.getcwd(),
        "machine": machine(),
        "precision": precision,
    }


def source_revision(package_dir: Path) -> dict[str, Any] | None:
    """{"commit", "dirty"} of the git checkout sftune runs from (dirty: tracked files differ from the commit);
    None when sftune is not a tracked file of a git checkout (installed from a wheel) or git is missing."""
    def git(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["git", "-C", str(package_dir), *args], capture_output=True, text=True, timeout=30)

    try:
        tracked = git("ls-files", "--error-unmatch", "__init__.py")
        if tracked.returncode != 0:  # e.g. site-packages inside some other repository's folder
            return None
        commit = git("rev-parse", "HEAD").stdout.strip()
        changed = git("status", "--porcelain", "--untracked-files=no").stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": commit, "dirty": bool(changed)} if commit else None


def machine() -> dict[str, Any]:
    """The CPU kind (and its bf16 units), and the GPUs this process sees."""
    import torch

    from sftune import hardware

    found: dict[str, Any] = {"platform": platform.platform(), "cpu": hardware.cpu_model(),
                             "cpu_bf16_units": hardware.cpu_bf16_units(), "cpu_count": os.cpu_count(),
                             "processes": int(os.environ.get("WORLD_SIZE", "1"))}
    if torch.cuda.is_available():
        found["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        found["cuda"] = torch.version.cuda
    return found


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


class ResumeScheduleCheck(TrainerCallback):
    """At a resume, says when the run goes on with another number of steps than the checkpoint planned: the
    learning-rate schedule is then recomputed, and past the end of a finished one the extra steps train at
    (almost) no learning rate. Names the steps and how to train them at a real learning rate."""

    def __init__(self, checkpoint: str | os.PathLike, console):
        self.checkpoint, self.console = Path(checkpoint), console

    def on_train_begin(self, args, state, control, optimizer=None, lr_scheduler=None, **kwargs):
        saved = self.checkpoint / "trainer_state.json"
        if not state.is_world_process_zero or not saved.is_file() or optimizer is None:
            return
        planned, done = (json.loads(saved.read_text(encoding="utf-8"))[k] for k in ("max_steps", "global_step"))
        if planned == state.max_steps or done >= state.max_steps:
            return
        now = optimizer.param_groups[0]["lr"]  # restored with the optimizer: what step done + 1 trains at
        lambdas = getattr(lr_scheduler, "lr_lambdas", None)  # transformers' schedules are LambdaLR
        later = ([base * fn(step) for step in range(done + 1, state.max_steps)
                  for base, fn in zip(lr_scheduler.base_lrs, lambdas)] if lambdas else [])
        steps = f"steps {done + 1}-{state.max_steps}" if state.max_steps > done + 1 else f"step {done + 1}"
        rates = f"lr {now:.2e}" + (f", then at most {max(later):.2e}" if later else "")
        if done >= planned:
            run, schedule = self.checkpoint.parent.parent, getattr(args.lr_scheduler_type, "value", args.lr_scheduler_type)
            self.console.print(
                f"[yellow]warning: the learning-rate schedule of this run ended at step {planned}; {steps} train on "
                f"the tail of a new {state.max_steps}-step {schedule} schedule ({rates}; the peak was "
                f"{args.learning_rate:.2e}). To train them at a real learning rate, start a new run from this one's "
                f"weights (`sftune export {run} -o MERGED`, then model.name=MERGED), or train again with "
                f"train.max_steps={state.max_steps} and output.overwrite=true.[/yellow]")
        else:
            self.console.print(
                f"[yellow]warning: the checkpoint planned {planned} steps and this run {state.max_steps}: the "
                f"learning-rate schedule is recomputed for {state.max_steps} steps from step {done + 2} "
                f"({steps}: {rates}).[/yellow]")
