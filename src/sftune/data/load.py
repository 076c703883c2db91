"""read(): files in any known format -> validated Conversations, with every rejection accounted for.

    read(paths, *, format=None, columns=None, on_error="raise", quarantine=None, dataset_name=None,
         roles=None, cot_layout=None, task_templates=None, max_chars=1_000_000, report=None)
        -> Iterator[Conversation]

    check(paths, **same options) -> Report      # reads everything with on_error="skip"

`paths`: a file, folder, glob, datasets save_to_disk folder or LLaMA-Factory dataset_info.json, or
a list of them. The format is detected per file from its first record (see formats.DETECTORS), or
forced with `format`. `columns` maps format fields to source paths ({"instruction": "query",
"output": "meta.answer"}). With on_error="raise" the first bad record raises DataError (file,
line/record, field, fix); with "skip" it is written to the `quarantine` JSONL with its reason,
counted in `report`, and reading goes on. Each Conversation's meta holds dataset, source, format
and line (1-based, line-based files) or record (0-based index), plus the record's unread fields
under "extra".
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sftune.data import files, llamafactory
from sftune.data.errors import DataError
from sftune.data.formats import FORMATS, KNOWN_FIELDS, detect, format_name, remap
from sftune.data.schema import Conversation
from sftune.data.validate import DEFAULT_MAX_CHARS, validate

logger = logging.getLogger("sftune.data")


@dataclass
class Report:
    """Counts of one read: how many records, how many valid, and why the others were rejected."""

    total: int = 0
    valid: int = 0
    invalid: int = 0
    reasons: Counter = field(default_factory=Counter)  # reason -> count
    examples: dict[str, str] = field(default_factory=dict)  # reason -> the first such error message
    formats: dict[str, str] = field(default_factory=dict)  # file -> detected (or forced) format
    quarantine: str | None = None

    @property
    def validation_rate(self) -> float:
        return self.valid / self.total if self.total else 1.0

    def add_error(self, error: DataError) -> None:
        self.invalid += 1
        self.reasons[error.reason] += 1
        self.examples.setdefault(error.reason, str(error))

    def to_dict(self) -> dict[str, Any]:
        return {
            "total": self.total,
            "valid": self.valid,
            "invalid": self.invalid,
            "validation_rate": round(self.validation_rate, 6),
            "reasons": dict(self.reasons.most_common()),
            "examples": self.examples,
            "formats": self.formats,
            "quarantine": self.quarantine,
        }


def _plan(paths, format, columns, options, dataset_name) -> list[dict[str, Any]]:
    """Every file to read, with the format, columns and options to read it by."""
    plan = []
    for path in files.expand(paths):
        kind = files.kind_of(path)
        if kind == "llamafactory":
            for entry in llamafactory.sources(path, dataset_name):
                for entry_path in files.expand(entry["path"]):
                    plan.append({**entry, "path": entry_path, "kind": files.kind_of(entry_path),
                                 "options": {**options, **entry["options"]}})
            continue
        fmt = format_name(format) if format else ("text" if kind == "text" else None)
        plan.append({
            "path": path,
            "kind": kind,
            "format": fmt,
            "columns": columns,
            "options": options,
            "dataset": dataset_name or (path.name if path.is_dir() else path.stem),
        })
    return plan


def prepare(
    paths: Any,
    format: str | None = None,
    columns: dict[str, str] | None = None,
    dataset_name: str | None = None,
    roles: dict[str, str] | None = None,
    cot_layout: str | None = None,
    task_templates: dict[str, str] | None = None,
) -> list[dict[str, Any]]:
    """The reading plan: every file with its kind, format, columns and options (paths checked now)."""
    options = {"roles": roles, "cot_layout": cot_layout, "task_templates": task_templates}
    options = {key: value for key, value in options.items() if value}
    return _plan(paths, format, columns, options, dataset_name)


def read(
    paths: str | Path | list[str | Path],
    *,
    format: str | None = None,
    columns: dict[str, str] | None = None,
    on_error: str = "raise",
    quarantine: str | Path | None = None,
    dataset_name: str | None = None,
    roles: dict[str, str] | None = None,
    cot_layout: str | None = None,
    task_templates: dict[str, str] | None = None,
    max_chars: int | None = DEFAULT_MAX_CHARS,
    report: Report | None = None,
) -> Iterator[Conversation]:
    """Stream validated Conversations from files (see the module docstring for every option).

    Paths, format and options are checked now; records are read as the iterator is consumed.
    Pass a Report to get the counts once the iterator is exhausted.
    """
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error is {on_error!r}; use 'raise' or 'skip'")
    plan = prepare(paths, format, columns, dataset_name, roles, cot_layout, task_templates)
    report = report if report is not None else Report()
    return _read(plan, on_error, Path(quarantine) if quarantine else None, max_chars, report)


def _read(plan, on_error, quarantine, max_chars, report, log: bool = True) -> Iterator[Conversation]:
    sink = None
    if quarantine is not None:
        quarantine.parent.mkdir(parents=True, exist_ok=True)
        sink = open(quarantine, "w", encoding="utf-8")
        report.quarantine = str(quarantine)

    def reject(error: DataError) -> None:
        report.add_error(error)
        if on_error == "raise":
            raise error
        if sink is not None:
            sink.write(json.dumps(error.to_dict(), ensure_ascii=False, default=str) + "\n")

    try:
        for item in plan:
            source = str(item["path"])
            unit = "line" if item["kind"] in files.LINE_KINDS else "record"
            columns, options = item["columns"], item["options"]
            fmt = item["format"]
            convert = FORMATS[fmt] if fmt else None
            known = KNOWN_FIELDS[fmt] if fmt else None
            if fmt:
                report.formats[source] = fmt
            base = {"dataset": item["dataset"], "source": source, "format": fmt}
            try:
                for number, record in files.iter_records(item["path"], item["kind"], item.get("range")):
                    report.total += 1
                    try:
                        if type(record) is not dict:
                            if isinstance(record, DataError):
                                raise record
                            raise DataError(
                                "not_an_object", "", f"is a {type(record).__name__}, not an object",
                                'each record is one JSON object, e.g. {"instruction": ..., "output": ...}',
                            )
                        fields = remap(record, columns) if columns else record
                        if convert is None:
                            # with a column mapping, the mapping's names say the format, present or not
                            fmt = detect({k: "" if v is None else v for k, v in fields.items()} if columns else fields)
                            if fmt is None:
                                raise DataError(
                                    "unknown_format",
                                    "",
                                    f"has fields {sorted(fields)[:12]}, which match no known format",
                                    f"pass format= one of {', '.join(FORMATS)}, or columns= mapping its "
                                    "fields, e.g. {'instruction': 'query', 'output': 'answer'}",
                                )
                            convert, known = FORMATS[fmt], KNOWN_FIELDS[fmt]
                            report.formats[source] = fmt
                            base["format"] = fmt
                        conversation = convert(fields, options)
                        validate(conversation, max_chars)
                    except DataError as error:
                        error.source = error.source or source
                        error.location = error.location or f"{unit} {number}"
                        if error.record is None:
                            error.record = record
                        if error.reason == "missing_field" and type(record) is dict:
                            other = detect(fields)
                            if other and other != fmt:
                                error.fix += (
                                    f" (this file reads as {fmt}, from its first record, but this record "
                                    f"looks like {other}: keep one format per file, or pass format=)"
                                )
                        if columns and error.field:
                            root = error.field.split("[", 1)[0].split(".", 1)[0]
                            if root in columns:
                                error.problem += f" (read from {columns[root]!r} by the column mapping)"
                        reject(error)
                        continue
                    meta = conversation.meta
                    meta.update(base)
                    meta[unit] = number
                    if not columns:
                        extra = record.keys() - known
                        if extra:
                            meta["extra"] = {key: record[key] for key in extra}
                    report.valid += 1
                    yield conversation
            except DataError as error:  # the file as a whole (a broken JSON array, bad bytes in a CSV)
                if error.location:  # a record's error, already counted, on its way out (on_error="raise")
                    raise
                error.source = error.source or source
                report.total += 1
                reject(error)
    finally:
        if sink is not None:
            sink.close()
    if log:
        log_rejections(report)


def log_rejections(report: Report) -> None:
    """Nothing is dropped silently: a skipped record is at least counted in the log."""
    if report.invalid:
        logger.warning(
            "%d of %d records rejected (%s)%s",
            report.invalid,
            report.total,
            ", ".join(f"{reason}: {count}" for reason, count in report.reasons.most_common()),
            f"; see {report.quarantine}" if report.quarantine else "",
        )


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
    from sftune.data import parallel

    plan = prepare(paths, **read_options)
    report = parallel.run(plan, out=None, quarantine=quarantine, max_chars=max_chars, workers=workers)
    log_rejections(report)
    return report


read_report = check
