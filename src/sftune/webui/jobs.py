"""Training runs as separate processes: start, stop and resume `sftune train`, find run folders, and read
a run's progress from its folder alone (metrics.jsonl), so a run survives a reload of the page or a crash
of the UI, and the UI survives a crash of the run.

A run started here writes the usual run folder plus two files: `webui-process.json` (the process id, the
command, whether the user stopped it) and `train.log` (the process's output).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from sftune.config import Config, to_yaml

PROCESS_FILE = "webui-process.json"
LOG_FILE = "train.log"
_children: dict[int, subprocess.Popen] = {}  # processes this UI started: polled, so none is left a zombie


def find_runs(root: str | Path) -> list[Path]:
    """Run folders under `root` (and `root` itself): those with a config.yaml, metrics.jsonl or a process
    file, newest first; hidden folders are not runs."""
    root = Path(root).expanduser()
    if not root.is_dir():
        return []
    marks = ("config.yaml", "metrics.jsonl", PROCESS_FILE)
    found = {p.parent for mark in marks for p in [*root.glob(mark), *root.glob(f"*/{mark}"), *root.glob(f"*/*/{mark}")]}
    found = {f for f in found if f.name != "checkpoints" and f.parent.name != "checkpoints"
             and not any(part.startswith(".") for part in f.relative_to(root).parts)}  # nor the UI's scratch folder
    return sorted(found, key=_last_change, reverse=True)


def _last_change(folder: Path) -> float:
    times = [p.stat().st_mtime for p in (folder / "metrics.jsonl", folder / PROCESS_FILE, folder / "config.yaml")
             if p.exists()]
    return max(times, default=0.0)


def start(cfg: Config, *, resume: bool = False) -> int:
    """Start `sftune train` on `cfg` as a process of its own (its own session: Ctrl-C on the UI leaves it
    running); write the config to the run folder first. Returns the process id."""
    run_dir = Path(cfg.output.dir).expanduser()
    if status(run_dir)["state"] == "running":
        raise RuntimeError(f"{run_dir}: a run is already training in this folder; stop it first")
    run_dir.mkdir(parents=True, exist_ok=True)
    config_path = run_dir / "config.yaml"
    config_path.write_text(to_yaml(cfg), encoding="utf-8")
    command = [sys.executable, "-m", "sftune", "train", str(config_path)]
    if resume:
        command.append("train.resume_from=last")
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "120"}
    with (run_dir / LOG_FILE).open("a", encoding="utf-8") as log:
        log.write(f"\n$ {' '.join(command)}\n")
        log.flush()
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   env=env, start_new_session=True)
    _children[process.pid] = process
    _write_process(run_dir, {"pid": process.pid, "command": command, "started": time.time(), "stopped": False,
                             "resume": resume})
    return process.pid


def resume(run_dir: str | Path) -> int:
    """Start the run again from its last complete checkpoint (train.resume_from=last), with its own config."""
    return start(resume_config(run_dir), resume=True)


def resume_config(run_dir: str | Path) -> Config:
    """The config a resume of the run trains with: its config.yaml, output.dir where the folder is now (even if
    it was moved)."""
    from sftune import runs

    run_dir = Path(run_dir).expanduser()
    if not (run_dir / runs.RUN_CONFIG).is_file():
        raise RuntimeError(f"{run_dir} has no config.yaml: there is nothing to resume; start a new run instead")
    return runs.run_config(run_dir)


def stop(run_dir: str | Path) -> bool:
    """Stop the run's process (SIGTERM to its process group); True when one was running. Its complete
    checkpoints stay, so `resume` continues from the last one."""
    run_dir = Path(run_dir).expanduser()
    info = _read_process(run_dir)
    if not info or not _alive(info["pid"]):
        return False
    info["stopped"] = True
    _write_process(run_dir, info)
    try:
        os.killpg(info["pid"], signal.SIGTERM)
    except ProcessLookupError:
        return False
    return True


def status(run_dir: str | Path) -> dict[str, Any]:
    """{state, pid, returncode, log}: state is running, finished, stopped, failed or idle (no process known:
    a run started from the terminal, or not started yet). `log` is the end of train.log."""
    run_dir = Path(run_dir).expanduser()
    info = _read_process(run_dir)
    finished = (run_dir / "summary.json").is_file()
    log = _tail(run_dir / LOG_FILE)
    if info is None:
        return {"state": "finished" if finished else "idle", "pid": None, "returncode": None, "log": log}
    pid = info["pid"]
    if _alive(pid):
        state = "running"
    elif finished and (run_dir / "summary.json").stat().st_mtime >= info["started"]:
        state = "finished"
    elif info.get("stopped"):
        state = "stopped"
    else:
        state = "failed"
    child = _children.get(pid)
    returncode = child.returncode if child is not None else None
    return {"state": state, "pid": pid, "returncode": returncode, "log": log}


def progress(run_dir: str | Path) -> dict[str, Any]:
    """What metrics.jsonl says so far: step, max_steps, the latest loss, learning rate and trained tokens/s,
    seconds left (from the wall-clock time of the logged steps), and the train and held-out records."""
    records = read_metrics(run_dir)
    train = [r for r in records if "loss" in r]
    held = [r for r in records if "eval_loss" in r]
    last = train[-1] if train else {}
    step = max((r.get("step", 0) for r in records), default=0)
    max_steps = next((r["max_steps"] for r in reversed(records) if r.get("max_steps")), None)
    return {
        "step": step,
        "max_steps": max_steps,
        "loss": last.get("loss"),
        "learning_rate": last.get("learning_rate"),
        "tokens_per_second": last.get("trained_tokens_per_second"),
        "seconds_left": seconds_left(train, max_steps),
        "train": train,
        "eval": held,
    }


def seconds_left(train: list[dict[str, Any]], max_steps: int | None) -> float | None:
    """Time left at the pace of the logged steps so far: (steps left) x (seconds per step between the
    first and the last logged step). None until two steps with a time are logged."""
    timed = [r for r in train if "time" in r]
    if not max_steps or len(timed) < 2 or timed[-1]["step"] <= timed[0]["step"]:
        return None
    per_step = (timed[-1]["time"] - timed[0]["time"]) / (timed[-1]["step"] - timed[0]["step"])
    return max(0.0, (max_steps - timed[-1]["step"]) * per_step)


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """The records of metrics.jsonl; a line still being written (the run appends as it goes) is left for the
    next read."""
    path = Path(run_dir).expanduser() / "metrics.jsonl"
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return records


def _alive(pid: int) -> bool:
    """Whether the process is running: a child of this UI is polled (and reaped); another (started by an
    earlier UI) is looked up, and must still be an sftune process (pids are reused)."""
    child = _children.get(pid)
    if child is not None:
        return child.poll() is None
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    proc = Path(f"/proc/{pid}")
    if proc.is_dir():
        try:
            if (proc / "stat").read_text().split(")")[-1].split()[0] == "Z":
                return False
            return b"sftune" in (proc / "cmdline").read_bytes()
        except OSError:
            return False
    return True


def _read_process(run_dir: Path) -> dict[str, Any] | None:
    try:
        return json.loads((run_dir / PROCESS_FILE).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def _write_process(run_dir: Path, info: dict[str, Any]) -> None:
    temporary = run_dir / (PROCESS_FILE + ".tmp")
    temporary.write_text(json.dumps(info), encoding="utf-8")
    temporary.replace(run_dir / PROCESS_FILE)


def _tail(path: Path, chars: int = 4000) -> str:
    if not path.is_file():
        return ""
    with path.open("rb") as f:
        f.seek(max(0, path.stat().st_size - chars))
        return f.read().decode("utf-8", errors="replace")
