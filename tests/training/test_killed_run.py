"""`sftune train` killed with SIGKILL (what a user's kill -9, an OOM killer or a lost node does): its encoding
workers die with it, and the next start removes what it left in the temporary and cache folders."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from sftune import scratch
from tests.test_scratch import HOLD_A_FOLDER, _kill, _start

ROOT = Path(__file__).resolve().parents[2]
RECORDS = 12_000  # enough for two encoding processes (encode/workers.py: MIN_RECORDS_PER_WORKER)


def _train(model: Path, data: Path, run: Path, env: dict[str, str], *overrides: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "sftune", "train", "examples/lora.yaml", f"model.name={model}",
                             f"data.train={data}", "data.eval=[]", "data.val_ratio=0", f"output.dir={run}",
                             *overrides], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


def _alive(processes: list[psutil.Process]) -> list[str]:
    alive = []
    for process in processes:
        try:
            if process.status() != psutil.STATUS_ZOMBIE:
                alive.append(" ".join(process.cmdline())[:120] or process.name())
        except psutil.NoSuchProcess:
            pass
    return alive


@pytest.mark.slow
@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2 or not sys.platform.startswith("linux"),
                    reason="encoding workers start only with two cores or more; PR_SET_PDEATHSIG is Linux's")
def test_a_killed_run_leaves_no_worker_and_the_next_start_no_scratch_folder(tmp_path, tiny_checkpoint):
    lines = (ROOT / "examples/data/train.jsonl").read_text(encoding="utf-8").splitlines(True)
    data = tmp_path / "data" / "train.jsonl"
    data.parent.mkdir()
    data.write_text("".join(lines[i % len(lines)] for i in range(RECORDS)), encoding="utf-8")
    home, tmp = tmp_path / "home", tmp_path / "tmp"
    tmp.mkdir()
    env = {**os.environ, "SFTUNE_HOME": str(home), "TMPDIR": str(tmp),
           "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)])}
    # what an encoder killed while writing the cache left: its half-written folder
    writer, left = _start(HOLD_A_FOLDER, str(home / "cache" / "encoded"))
    _kill(writer)

    run = _train(tiny_checkpoint, data, tmp_path / "run", env, "train.max_steps=1000")
    parent = psutil.Process(run.pid)
    workers: list[psutil.Process] = []
    try:
        while not workers and run.poll() is None:  # the encoding workers are forked children
            workers = parent.children(recursive=True)
            time.sleep(0.05)
        assert workers, "the run ended before its encoding workers started:\n" + run.stdout.read()
        run.send_signal(signal.SIGKILL)
        run.wait()
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
        run.stdout.close()
    for _ in range(100):  # each gets SIGKILL from the kernel when the run dies
        if not _alive(workers):
            break
        time.sleep(0.1)
    assert _alive(workers) == []

    again = _train(tiny_checkpoint, data, tmp_path / "run", env, "train.max_steps=1")
    output, _ = again.communicate(timeout=600)
    assert again.returncode == 0, output
    assert not Path(left).exists()
    assert [str(p.parent) for p in tmp_path.rglob(scratch.MARKER)] == []
