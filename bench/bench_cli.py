"""How long the simple `sftune` commands take to start and finish: each is run as a fresh process N times.

    .venv/bin/python bench/bench_cli.py                 # this tree's src/, 5 runs of each command
    .venv/bin/python bench/bench_cli.py --rev main~3    # and the same commands from another revision, side by side
    .venv/bin/python bench/bench_cli.py --runs 10

Prints the median wall seconds and the median CPU seconds (user + system, the process and its children) of
each command. The target is under 1.5 s wall on a quiet machine, which only a command that leaves the
training stack (torch, transformers, peft ...) unimported can meet. On a shared machine wall time grows
with the load (printed at the start), CPU seconds much less: compare those. `--rev` extracts that
revision's src/ with `git archive` into a temporary folder and runs it with the same interpreter and
installed libraries.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGET_SECONDS = 1.5
COMMANDS = (
    ("--help",),
    ("--version",),
    ("train", "examples/lora.yaml", "--print-config"),
    ("data", "check", "examples/data/train.jsonl"),
    ("template", "list"),
)


def run_once(args: tuple[str, ...], src: Path) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of one `python -m sftune ARGS` with `src` first on the path."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(src), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    env.pop("SFTUNE_VERBOSE", None)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "sftune", *args], cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if result.returncode != 0:
        raise SystemExit(f"`sftune {' '.join(args)}` from {src} failed ({result.returncode}):\n{result.stderr}")
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def measure(src: Path, runs: int) -> dict[tuple[str, ...], tuple[float, float]]:
    """Median (wall, CPU) per command; the commands take turns so that a change of load hits them alike."""
    samples: dict[tuple[str, ...], list[tuple[float, float]]] = {args: [] for args in COMMANDS}
    for _ in range(runs):
        for args in COMMANDS:
            samples[args].append(run_once(args, src))
    return {args: (statistics.median(w for w, _ in s), statistics.median(c for _, c in s)) for args, s in samples.items()}


def extract_src(rev: str, folder: Path) -> Path:
    archive = folder / "src.tar"
    with archive.open("wb") as out:
        subprocess.run(["git", "archive", rev, "src"], cwd=ROOT, stdout=out, check=True)
    with tarfile.open(archive) as tar:
        tar.extractall(folder, filter="data")
    return folder / "src"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5, help="fresh processes per command (default 5)")
    parser.add_argument("--rev", help="also time this git revision's src/ (e.g. main), printed beside this tree")
    options = parser.parse_args()

    print(f"sftune start-up: median of {options.runs} fresh processes per command, {sys.executable}")
    print(f"load average at start {' '.join(f'{x:.1f}' for x in os.getloadavg())} on {os.cpu_count()} CPUs "
          "(above the CPU count the machine is busy: compare CPU seconds)")
    columns = {"this tree": measure(ROOT / "src", options.runs)}
    if options.rev:
        with tempfile.TemporaryDirectory(prefix="sftune-bench-cli-") as folder:
            columns[options.rev] = measure(extract_src(options.rev, Path(folder)), options.runs)
    width = max(len(" ".join(args)) for args in COMMANDS) + len("sftune ") + 2
    print("command".ljust(width) + "".join(f"{name + ': wall s / cpu s':>28}" for name in columns))
    for args in COMMANDS:
        cells = "".join(f"{wall:>19.2f} / {cpu:>6.2f}" for wall, cpu in (figures[args] for figures in columns.values()))
        over = " over target" if columns["this tree"][args][0] > TARGET_SECONDS else ""
        print(f"sftune {' '.join(args)}".ljust(width) + cells + over)
    print(f"target: under {TARGET_SECONDS} s wall each on a quiet machine")


if __name__ == "__main__":
    main()
