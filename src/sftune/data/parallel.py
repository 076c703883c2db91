"""check() and convert(): read everything with the skip policy, on several processes.

    check(paths, *, quarantine=None, max_chars=1_000_000, workers=None, **read options) -> Report
    convert(paths, out, style="messages", *, on_error="skip", quarantine=None, workers=None,
            max_chars=1_000_000, **read options) -> Report

Large plain JSONL / text files are cut into byte ranges. Each range starts at a line start and
knows its first line number, so every worker reports the same file:line locations a single process
would; the format is detected once per file, from its first records, before the ranges go out, so
every range reads the file by the same format. Parts are joined in order, so the output, the
quarantine file and the report are the same for any number of workers. Other file kinds (JSON
arrays, Parquet, Arrow, CSV, compressed files) are one job each. Outputs are written beside their
final names and moved into place when complete; an output that is one of the inputs is refused
before anything is written.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
from pathlib import Path
from typing import Any

from sftune import scratch
from sftune.data import files, writers
from sftune.data.load import Report, check_max_chars, first_format, log_rejections, prepare, read_paths, read_plan
from sftune.data.validate import DEFAULT_MAX_CHARS

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
            for _ in files.bounded_lines(handle, files.CHUNK):  # to the next line start, a piece at a time
                break
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
        if item["kind"] in ("jsonl", "text") and workers > 1 and files.splittable(item["path"]):
            parts = min(workers * 4, max(1, item["path"].stat().st_size // MIN_BYTES_PER_JOB))
            if parts > 1:
                fmt, number = first_format(item)
                found = {"format": fmt, "detected_at": number} if fmt and not item["format"] else {}
                jobs.extend({**item, **found, "range": piece} for piece in ranges(item["path"], parts))
                continue
        jobs.append(item)
    return jobs


def _run_job(args: tuple) -> Report:
    job, out, style, quarantine, max_chars = args
    report = Report()
    shape = _shaper(style, job["options"].get("preference")) if out else None
    records = read_plan([job], "skip", Path(quarantine) if quarantine else None, max_chars, report, shape, log=False)
    if out is None:
        for _ in records:
            pass
        return report
    with open(out, "w", encoding="utf-8") as handle:
        for line in records:
            handle.write(line + "\n")
    return report


def _shaper(style: str, preference: bool | None):
    """record -> its output line: a Conversation in `style`, or a preference Pair as prompt / chosen / rejected
    messages (the layout preference training reads back)."""
    if not preference:
        return writers.shaper(style)
    if style != "messages":
        raise ValueError(f"preference pairs are written as prompt / chosen / rejected messages, not {style}: use "
                         "--to messages (style='messages'), or read the records as SFT data (--sft, preference=False)")
    return lambda pair: json.dumps(pair.to_dict(), ensure_ascii=False)


def _join(parts: list[str], name: str | Path) -> None:
    joined = files.Replacing(name)
    joined.handle.close()
    with open(joined.partial, "wb") as handle:
        for part in parts:
            with open(part, "rb") as piece:
                shutil.copyfileobj(piece, handle)
    os.replace(joined.partial, name)


def run(
    plan: list[dict[str, Any]],
    *,
    out: str | Path | None,
    style: str = "messages",
    quarantine: str | Path | None = None,
    max_chars: int | None = None,
    workers: int | None = None,
) -> Report:
    """Read the plan with skip, writing valid conversations to `out` (None: only count).

    The caller has refused outputs that would write over an input (files.refuse_overwrite).
    """
    workers = workers or min(DEFAULT_WORKERS, os.cpu_count() or 1)
    if workers < 1:
        raise ValueError(f"workers is {workers}; use 1 or more processes")
    jobs = _jobs(plan, workers)
    report = Report(quarantine=str(quarantine) if quarantine else None)
    for name in (out, quarantine):
        if name is not None:
            Path(name).parent.mkdir(parents=True, exist_ok=True)
    anchor = Path(out).parent if out else (Path(quarantine).parent if quarantine else None)
    with scratch.folder(anchor, prefix=".sftune-") as folder:  # a killed run's parts: swept by the next one
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
            with multiprocessing.get_context("fork").Pool(min(workers, len(jobs)), scratch.die_with_parent,
                                                          (os.getpid(),)) as pool:
                for part in pool.imap(_run_job, parts):
                    report.merge(part)
        else:
            for args in parts:
                report.merge(_run_job(args))
        for index, name in ((1, out), (3, quarantine)):
            if name is not None:
                _join([args[index] for args in parts], name)
    return report


def check(
    paths: str | Path | list[str | Path],
    *,
    quarantine: str | Path | None = None,
    max_chars: int | None = DEFAULT_MAX_CHARS,
    workers: int | None = None,
    **read_options: Any,
) -> Report:
    """Read everything with on_error="skip" and return the counts (total, valid, invalid, reasons).

    Takes read()'s options; large JSONL / text files are checked on `workers` processes.
    """
    check_max_chars(max_chars)
    plan = prepare(paths, **read_options)
    files.refuse_overwrite(read_paths(paths, plan), quarantine=quarantine)
    report = run(plan, out=None, quarantine=quarantine, max_chars=max_chars, workers=workers)
    log_rejections(report)
    return report


def convert(
    paths: Any,
    out: str | Path,
    style: str = "messages",
    *,
    on_error: str = "skip",
    quarantine: str | Path | None = None,
    workers: int | None = None,
    max_chars: int | None = DEFAULT_MAX_CHARS,
    **read_options: Any,
) -> Report:
    """Read `paths` (any format) and write every valid conversation to `out` in `style`.

    Returns the read's Report. A conversation the style cannot hold counts as rejected, with
    reason "unsupported", like a record that failed validation. With on_error="skip", large
    JSONL / text files are split over `workers` processes (default: up to 2). With preference=True the
    records are read as preference pairs (as `check` and preference training read them) and written as
    prompt / chosen / rejected messages (style "messages" only).
    """
    shape = _shaper(style, read_options.get("preference"))  # an unknown style is refused before anything is read
    check_max_chars(max_chars)
    images_to = Path(out).parent.absolute()  # relative image paths are written relative to the output
    plan = [{**item, "images_to": images_to, "style": style} for item in prepare(paths, **read_options)]
    files.refuse_overwrite(read_paths(paths, plan), output=out, quarantine=quarantine)
    if on_error == "skip":
        report = run(plan, out=out, style=style, quarantine=quarantine, max_chars=max_chars, workers=workers)
        log_rejections(report)
        return report
    report = Report()
    lines = read_plan(plan, on_error, Path(quarantine) if quarantine else None, max_chars, report, shape)
    writers.write_lines(lines, out)
    return report
