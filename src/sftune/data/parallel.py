"""Check and convert on several processes: large JSONL / text files are cut into byte ranges.

Each range starts at a line start and knows its first line number, so every worker reports the
same file:line locations a single process would; parts are joined in order, so the output is the
same file a single process writes. Other file kinds (JSON arrays, Parquet, Arrow, CSV) are one
job each. Only the skip policy runs here: with on_error="raise" the first error stops one reader.
"""

from __future__ import annotations

import multiprocessing
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from sftune.data import files
from sftune.data.load import Report, _read

# A range smaller than this is not worth a process of its own.
MIN_BYTES_PER_JOB = 8 << 20
DEFAULT_WORKERS = 2


def ranges(path: Path, parts: int) -> list[tuple[int, int, int]]:
    """(start, end, first line number) for `parts` pieces of a file, each cut at a line start."""
    size = path.stat().st_size
    cuts = [0]
    with open(path, "rb") as handle:
        for k in range(1, parts):
            handle.seek(size * k // parts)
            handle.readline()
            cuts.append(min(handle.tell(), size))
    cuts.append(size)
    cuts = sorted(set(cuts))
    pieces, line = [], 1
    with open(path, "rb") as handle:
        for start, end in zip(cuts, cuts[1:]):
            pieces.append((start, end, line))
            remaining = end - start
            while remaining:  # count the newlines in this piece to number the next one
                chunk = handle.read(min(remaining, 1 << 24))
                line += chunk.count(b"\n")
                remaining -= len(chunk)
    return pieces


def _jobs(plan: list[dict[str, Any]], workers: int) -> list[dict[str, Any]]:
    jobs = []
    for item in plan:
        if item["kind"] in ("jsonl", "text") and workers > 1 and not files.is_compressed(item["path"]):
            parts = min(workers * 4, max(1, item["path"].stat().st_size // MIN_BYTES_PER_JOB))
            if parts > 1:
                jobs.extend({**item, "range": piece} for piece in ranges(item["path"], parts))
                continue
        jobs.append(item)
    return jobs


def _run_job(args: tuple) -> Report:
    from sftune.data.writers import append_rejected, write_valid

    job, out, style, quarantine, max_chars = args
    report = Report()
    conversations = _read([job], "skip", Path(quarantine) if quarantine else None, max_chars, report, log=False)
    if out is None:
        for _ in conversations:
            pass
    else:
        append_rejected(write_valid(conversations, out, style, report, "skip"), quarantine)
    return report


def _merge(total: Report, part: Report) -> None:
    total.total += part.total
    total.valid += part.valid
    total.invalid += part.invalid
    total.reasons.update(part.reasons)
    for reason, example in part.examples.items():
        total.examples.setdefault(reason, example)
    total.formats.update(part.formats)


def run(
    plan: list[dict[str, Any]],
    *,
    out: str | Path | None,
    style: str = "messages",
    quarantine: str | Path | None = None,
    max_chars: int | None = None,
    workers: int | None = None,
) -> Report:
    """Read the plan with skip, writing valid conversations to `out` (None: only count)."""
    workers = workers or min(DEFAULT_WORKERS, os.cpu_count() or 1)
    jobs = _jobs(plan, workers)
    report = Report(quarantine=str(quarantine) if quarantine else None)
    anchor = Path(out).parent if out else (Path(quarantine).parent if quarantine else None)
    with tempfile.TemporaryDirectory(dir=anchor) as folder:
        parts = [
            (
                job,
                os.path.join(folder, f"{i}.out") if out else None,
                style,
                os.path.join(folder, f"{i}.rejected") if quarantine else None,
                max_chars,
            )
            for i, job in enumerate(jobs)
        ]
        if workers > 1 and len(jobs) > 1:
            with multiprocessing.get_context("fork").Pool(min(workers, len(jobs))) as pool:
                for part in pool.imap(_run_job, parts):
                    _merge(report, part)
        else:
            for args in parts:
                _merge(report, _run_job(args))
        for index, name in ((1, out), (3, quarantine)):
            if name is None:
                continue
            with open(name, "wb") as joined:
                for args in parts:
                    with open(args[index], "rb") as piece:
                        shutil.copyfileobj(piece, joined)
    return report
