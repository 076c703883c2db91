"""What a killed process leaves behind: its scratch folders go at the next start (not while their owner lives,
and never a folder sftune did not make), and its forked workers die with it."""

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

ROOT = Path(__file__).resolve().parents[1]

HOLD_A_FOLDER = """
import sys, time
from sftune import scratch
with scratch.folder(sys.argv[1], prefix=".writing-") as path:
    (path / "part").write_bytes(b"x" * 1000)
    print(path, flush=True)
    time.sleep(600)
"""

FORK_A_WORKER = """
import multiprocessing, os, sys, time
from sftune import scratch

def work(parent):
    scratch.die_with_parent(parent)
    time.sleep(600)

if __name__ == "__main__":
    worker = multiprocessing.get_context("fork").Process(target=work, args=(os.getpid(),))
    worker.start()
    print(worker.pid, flush=True)
    time.sleep(600)
"""


def _start(program: str, *args: str) -> tuple[subprocess.Popen, str]:
    """A Python process running `program`, and the first line it prints."""
    process = subprocess.Popen([sys.executable, "-c", program, *args], stdout=subprocess.PIPE, text=True, cwd=ROOT,
                               env={**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)])})
    return process, process.stdout.readline().strip()


def _kill(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGKILL)
    process.wait()
    process.stdout.close()


def test_a_killed_process_folder_is_removed_by_the_next_start(tmp_path):
    process, left = _start(HOLD_A_FOLDER, str(tmp_path))
    _kill(process)
    assert Path(left, "part").exists()  # the process could not clean up
    with scratch.folder(tmp_path, prefix=".writing-") as mine:
        assert not Path(left).exists()
        assert [p.name for p in tmp_path.iterdir()] == [mine.name]
    assert list(tmp_path.iterdir()) == []


def test_a_live_process_folder_and_folders_not_made_here_are_kept(tmp_path):
    theirs = tmp_path / ".writing-by-hand"  # the prefix, but no marker: not ours to remove
    theirs.mkdir()
    process, live = _start(HOLD_A_FOLDER, str(tmp_path))
    try:
        assert scratch.sweep(tmp_path, ".writing-") == []
        assert Path(live, "part").exists() and theirs.exists()
    finally:
        _kill(process)
    assert scratch.sweep(tmp_path, ".writing-") == [Path(live)]
    assert theirs.exists()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prctl(PR_SET_PDEATHSIG) is Linux's")
def test_a_forked_worker_dies_with_its_parent():
    process, worker = _start(FORK_A_WORKER)
    worker = psutil.Process(int(worker))
    _kill(process)
    deadline = time.monotonic() + 10
    while worker.is_running() and worker.status() != psutil.STATUS_ZOMBIE and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not worker.is_running() or worker.status() == psutil.STATUS_ZOMBIE
