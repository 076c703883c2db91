"""Data-layer speed: check + convert of N Alpaca records (default 1,000,000), records/s and peak RSS.

Target: >= 50,000 records/s on 2 cores, peak RSS < 2 GB. The input is generated in a temporary
folder (about 250 MB for 1M records), read with `sftune.data` (format detection, conversion,
validation) and written back as messages JSONL, as `sftune data convert` does.

    python bench/bench_data.py            # 1,000,000 records
    python bench/bench_data.py --quick    # 50,000 records, a smoke run for CI
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import sys
import tempfile
import time
from pathlib import Path

from sftune import data
from sftune.data import convert

WORDS = "the model learns to follow instructions from examples written by people and checked twice".split()


def _sentence(rng: random.Random, low: int, high: int) -> str:
    return " ".join(rng.choices(WORDS, k=rng.randint(low, high)))


def write_alpaca(path: Path, count: int, seed: int = 0) -> None:
    """Alpaca-shaped records of realistic size (about 250 bytes), a third with an input field."""
    rng = random.Random(seed)
    with open(path, "w", encoding="utf-8") as handle:
        for i in range(count):
            record = {
                "instruction": _sentence(rng, 6, 20),
                "input": _sentence(rng, 4, 12) if i % 3 == 0 else "",
                "output": _sentence(rng, 10, 40),
            }
            handle.write(json.dumps(record) + "\n")


def peak_rss_mb() -> tuple[float, float]:
    """Peak resident memory of this process and of its largest worker process, in MB."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kilobytes on Linux
    workers = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return own, workers


def cpu_seconds() -> float:
    """CPU time of this process and its finished workers: what the work costs, whatever the load."""
    times = os.times()
    return times.user + times.system + times.children_user + times.children_system


def measure(label: str, count: int, work) -> None:
    wall, cpu = time.perf_counter(), cpu_seconds()
    report = work()
    wall, cpu = time.perf_counter() - wall, cpu_seconds() - cpu
    assert report.valid == count, report.to_dict()
    print(f"{label:<16} {count / wall:>9,.0f} records/s wall ({wall:.2f} s)   {count / cpu:>9,.0f} records per CPU-second")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="50,000 records (CI smoke run)")
    args = parser.parse_args()
    count = 50_000 if args.quick else args.records

    with tempfile.TemporaryDirectory() as folder:
        source = Path(folder) / "alpaca.jsonl"
        started = time.perf_counter()
        write_alpaca(source, count)
        size_mb = source.stat().st_size / 1e6
        print(f"generated {count:,} Alpaca records ({size_mb:.0f} MB) in {time.perf_counter() - started:.1f} s")
        print(f"{os.cpu_count()} CPUs visible, load average {os.getloadavg()[0]:.1f}, {args.workers} workers")
        measure("check", count, lambda: data.check(source, workers=args.workers))
        out = Path(folder) / "messages.jsonl"
        measure("check + convert", count, lambda: convert(source, out, "messages", workers=args.workers))
    own, worker = peak_rss_mb()
    print(f"peak RSS: main process {own:,.0f} MB, largest worker {worker:,.0f} MB; python {sys.version.split()[0]}")
    print("target: >= 50,000 records/s on 2 cores, peak RSS < 2,048 MB")


if __name__ == "__main__":
    main()
