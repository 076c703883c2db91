"""read(): files in any known format -> validated Conversations, with every rejection accounted for.

    read(paths, *, format=None, columns=None, on_error="raise", quarantine=None, dataset_name=None,
         roles=None, cot_layout=None, task_templates=None, max_chars=1_000_000, report=None,
         instruction_position="before")
        -> Iterator[Conversation]

    check(paths, **same options) -> Report      # reads everything with on_error="skip" (parallel.py)

`paths`: a file, folder, glob, datasets save_to_disk folder, LLaMA-Factory dataset_info.json or
Hugging Face Hub dataset (`hub:ORG/NAME[/SUBSET][:SPLIT]`, hub.py), or a list of them. The format is detected per file from its first record (see formats.DETECTORS), or
forced with `format`. `columns` maps format fields to source paths ({"instruction": "query",
"output": "meta.answer"}). With on_error="raise" the first bad record raises DataError (file,
line/record, field, fix); with "skip" it is written to the `quarantine` JSONL with its reason,
counted in `report`, and reading goes on. Each Conversation's meta holds dataset, source, format
and line (1-based, line-based files) or record (0-based index), plus the record's unread fields
under "extra". `syntax="cli"` words the fixes in messages as command-line options (--roles
USER=user) instead of read()'s keywords (roles={'USER': 'user'}).

Nothing is lost or miscounted: every record read is either yielded (valid) or rejected (invalid),
so total = valid + invalid, per file and overall; a file that cannot be read on counts as one
rejection after the records read before the failure.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sftune.data import files, llamafactory
from sftune.data import images as image_refs
from sftune.data.errors import DataError, location
from sftune.data.formats import DETECTORS, FORMATS, KNOWN_FIELDS, detect, format_name, remap, unread_alternatives
from sftune.data.pairs import convert as convert_pair, validate_pair
from sftune.data.schema import Conversation, Pair
from sftune.data.validate import DEFAULT_MAX_CHARS, validate

logger = logging.getLogger("sftune.data")

# Fields that make a record video or audio: refused by name (images are read: data/images.py).
MEDIA_FIELDS = ("videos", "video", "audios", "audio")


@dataclass
class Report:
    """Counts of one read: how many records, how many valid, and why the others were rejected.

    `files` holds the same counts per file, with the file's format (None when no record matched
    one); `notes` says how a file was read when that is not what its name says.
    """

    total: int = 0
    valid: int = 0
    invalid: int = 0
    reasons: Counter = field(default_factory=Counter)  # reason -> count
    examples: dict[str, str] = field(default_factory=dict)  # reason -> the first such error message
    files: dict[str, dict[str, Any]] = field(default_factory=dict)  # file -> format, total, valid, invalid
    notes: list[str] = field(default_factory=list)
    quarantine: str | None = None
    images: int = 0  # images in the valid records
    # "field (why)" -> how many valid records had a field that is not kept or not read as given: a per-message
    # field the schema has no place for, the fields of a second format, a duplicate CSV column, a NaN written as null
    dropped: Counter = field(default_factory=Counter)

    @property
    def validation_rate(self) -> float:
        return self.valid / self.total if self.total else 1.0

    @property
    def formats(self) -> dict[str, str | None]:
        """file -> detected (or forced) format."""
        return {source: counts["format"] for source, counts in self.files.items()}

    def file(self, source: str, fmt: str | None = None) -> dict[str, Any]:
        """The counts of one file, made when first asked for."""
        counts = self.files.setdefault(source, {"format": None, "total": 0, "valid": 0, "invalid": 0})
        if fmt:
            counts["format"] = fmt
        return counts

    def add_valid(self, source: str, images: int = 0) -> None:
        self.total += 1
        self.valid += 1
        self.images += images
        counts = self.file(source)
        counts["total"] += 1
        counts["valid"] += 1

    def add_error(self, error: DataError) -> None:
        self.total += 1
        self.invalid += 1
        self.reasons[error.reason] += 1
        self.examples.setdefault(error.reason, str(error))
        counts = self.file(error.source or "")
        counts["total"] += 1
        counts["invalid"] += 1

    def merge(self, part: "Report") -> None:
        """Add another read's counts (a worker's part of the files), in order."""
        self.total += part.total
        self.valid += part.valid
        self.invalid += part.invalid
        self.images += part.images
        self.reasons.update(part.reasons)
        self.dropped.update(part.dropped)
        for reason, example in part.examples.items():
            self.examples.setdefault(reason, example)
        for source, counts in part.files.items():
            mine = self.file(source, counts["format"])
            for key in ("total", "valid", "invalid"):
                mine[key] += counts[key]
        self.notes.extend(note for note in part.notes if note not in self.notes)

    def to_dict(self) -> dict[str, Any]:
        return {
            "total": self.total,
            "valid": self.valid,
            "invalid": self.invalid,
            "validation_rate": round(self.validation_rate, 6),
            "images": self.images,
            "reasons": dict(self.reasons.most_common()),
            "dropped": dict(sorted(self.dropped.items(), key=lambda item: (-item[1], item[0]))),
            "examples": self.examples,
            "formats": self.formats,
            "files": self.files,
            "notes": self.notes,
            "quarantine": self.quarantine,
        }


def _plan(paths, format, columns, options, dataset_name) -> list[dict[str, Any]]:
    """Every file to read, with the format, columns and options to read it by."""
    plan = []
    if options.get("preference"):
        format = "preference"  # preference data: every record must be a pair
    for path in files.expand(paths):
        kind = files.kind_of(path)
        if kind == "llamafactory":
            for entry in llamafactory.sources(path, dataset_name, preference=bool(options.get("preference"))):
                for entry_path in llamafactory.entry_files(entry, path):
                    entry_kind = files.kind_of(entry_path)
                    plan.append({**entry, "path": entry_path, "kind": entry_kind,
                                 "note": files.misnamed(entry_path, entry_kind),
                                 "options": {**options, **entry["options"]}})
            continue
        fmt = format_name(format) if format else ("text" if kind == "text" else None)
        plan.append({
            "path": path,
            "kind": kind,
            "format": fmt,
            "columns": columns,
            "options": options,
            "dataset": dataset_name or (path if kind == "hub" else path.name if path.is_dir() else path.stem),
            "note": files.misnamed(path, kind),
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
    syntax: str = "python",
    preference: bool = False,
    instruction_position: str = "before",
) -> list[dict[str, Any]]:
    """The reading plan: every file with its kind, format, columns and options (paths checked now)."""
    if syntax not in ("python", "cli"):
        raise ValueError(f"syntax is {syntax!r}; use 'python' or 'cli'")
    if instruction_position not in ("before", "after"):
        raise ValueError(f"instruction_position is {instruction_position!r}; use 'before' or 'after'")
    options = {"roles": roles, "cot_layout": cot_layout, "task_templates": task_templates,
               "instruction_position": instruction_position if instruction_position == "after" else None,
               "preference": preference}
    options = {key: value for key, value in options.items() if value}
    options["syntax"] = syntax
    return _plan(paths, format, columns, options, dataset_name)


def read_paths(paths: Any, plan: list[dict[str, Any]]) -> list[Path]:
    """Every path a read takes data from: the paths as named (files, folders) and each file of its plan."""
    named = [paths] if isinstance(paths, (str, Path)) else list(paths)
    return [*map(Path, named), *(Path(item["path"]) for item in plan)]


def check_max_chars(max_chars: int | None) -> None:
    if max_chars is not None and (isinstance(max_chars, bool) or not isinstance(max_chars, int) or max_chars < 1):
        raise ValueError(f"max_chars is {max_chars!r}; use a whole number of characters >= 1, or None for no limit")


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
    syntax: str = "python",
    preference: bool = False,
    instruction_position: str = "before",
    outputs: dict[str, str | Path | None] | None = None,
) -> Iterator[Conversation]:
    """Stream validated Conversations from files (see the module docstring for every option).

    Paths, format and options are checked now; records are read as the iterator is consumed.
    Pass a Report to get the counts once the iterator is exhausted. `preference=True` reads preference
    data instead: every record is a chosen / rejected pair (sftune.data.pairs) and comes out as a Pair.
    `outputs` (name -> path) are files the caller will write: one that would write over an input is refused now.
    """
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error is {on_error!r}; use 'raise' or 'skip'")
    check_max_chars(max_chars)
    plan = prepare(paths, format, columns, dataset_name, roles, cot_layout, task_templates, syntax, preference,
                   instruction_position)
    files.refuse_overwrite(read_paths(paths, plan), quarantine=quarantine, **(outputs or {}))
    report = report if report is not None else Report()
    return read_plan(plan, on_error, Path(quarantine) if quarantine else None, max_chars, report)


def first_format(item: dict[str, Any]) -> tuple[str | None, int | None]:
    """(format, number) of the first record in a file that gives its format away, or (None, None).

    Detection is per file: workers reading a file in ranges all use the format of its first records.
    """
    if item["format"]:
        return item["format"], None
    columns = item["columns"]
    try:
        for number, record in files.iter_records(item["path"], item["kind"]):
            if type(record) is dict:
                fmt = _detect(record, columns)
                if fmt is not None:
                    return fmt, number
    except DataError:
        pass  # the reader reports it
    return None, None


def _detect(record: dict, columns: dict | None) -> str | None:
    # with a column mapping, the mapping's names say the format, present or not
    if columns:
        return detect({k: "" if v is None else v for k, v in remap(record, columns).items()})
    return detect(record)


def read_plan(plan, on_error, quarantine, max_chars, report, shape=None, log: bool = True) -> Iterator[Any]:
    """Read a plan (see prepare) into `report`; yields Conversations, or shape(conversation) if given.

    A DataError from `shape` (a conversation an output style cannot hold) rejects the record like
    any other check, so counting happens here only.
    """
    sink = None
    if quarantine is not None:
        sink = files.Replacing(quarantine)
        report.quarantine = str(quarantine)

    def reject(error: DataError) -> None:
        report.add_error(error)
        if sink is not None:
            entry = error.to_dict()
            nulls_for_non_finite("", entry)  # the record as read may hold NaN (refused for it): JSON has none
            sink.write(json.dumps(entry, ensure_ascii=False, default=str, allow_nan=False) + "\n")
        if on_error == "raise":
            raise error

    try:
        for item in plan:
            yield from _read_file(item, reject, max_chars, report, shape)
    finally:
        if sink is not None:
            sink.close()
    if log:
        log_rejections(report)


def converter(fmt: str, options: dict) -> Callable[[dict, dict], Conversation | Pair]:
    """What turns a record of format `fmt` into a Conversation; preference records become a Pair when reading
    preference data (options["preference"]) and are refused in SFT data (formats.preference)."""
    if fmt == "preference" and options.get("preference"):
        return convert_pair
    return FORMATS[fmt]


def _read_file(item, reject, max_chars, report, shape) -> Iterator[Any]:
    source = str(item["path"])
    unit = "line" if item["kind"] in files.LINE_KINDS else "record"
    columns, options = item["columns"], item["options"]
    fmt = item["format"]
    detected_at = item.get("detected_at")  # set by workers: the file's format, found before its range
    convert = converter(fmt, options) if fmt else None
    known = KNOWN_FIELDS[fmt] if fmt else None
    report.file(source, fmt)
    if item.get("note") and item["note"] not in report.notes:
        report.notes.append(item["note"])
    cli = options.get("syntax") == "cli"
    dropped: Counter = Counter()  # one record's fields not kept, counted in the report when the record is valid
    options = {**options, "dropped": dropped}
    images_to = item.get("images_to")
    base = {"dataset": item["dataset"], "source": source, "format": fmt}
    try:
        for number, record in files.iter_records(item["path"], item["kind"], item.get("range")):
            fields = record
            try:
                if type(record) is not dict:
                    if isinstance(record, DataError):
                        raise record
                    raise DataError(
                        "not_an_object", "", f"is a {type(record).__name__}, not an object",
                        'each record is one JSON object, e.g. {"instruction": ..., "output": ...}',
                    )
                media = [key for key in MEDIA_FIELDS if record.get(key)]
                if media:
                    raise DataError(
                        "unsupported", media[0], "makes this a video or audio record",
                        f"sftune trains on text and images: drop the record, or remove {media[0]!r} and its "
                        "<video>/<audio>-style tags from the text",
                    )
                fields = remap(record, columns) if columns else record
                dropped.clear()
                if convert is None or (detected_at is not None and number < detected_at):
                    found = _detect(record, columns)
                    if found is None or (detected_at is not None and number < detected_at):
                        raise DataError(
                            "unknown_format",
                            "",
                            f"has fields {sorted(map(str, fields))[:12]}, which match no known format",
                            (f"pass --format (one of {', '.join(FORMATS)}), or --columns mapping its fields, "
                             "e.g. --columns instruction=query,output=answer") if cli else
                            (f"pass format= one of {', '.join(FORMATS)}, or columns= mapping its "
                             "fields, e.g. {'instruction': 'query', 'output': 'answer'}"),
                        )
                    fmt = found
                    convert, known = converter(fmt, options), KNOWN_FIELDS[fmt]
                    report.file(source, fmt)
                    base["format"] = fmt
                conversation = convert(fields, options)
                if isinstance(conversation, Pair):
                    validate_pair(conversation, max_chars)
                else:
                    validate(conversation, max_chars)
                    if conversation.images:
                        image_refs.check(conversation, Path(source).parent, images_to)
                meta = conversation.meta
                meta.update(base)
                meta[unit] = number
                if not columns:
                    instead = unread_alternatives(record, fmt)
                    extra = [key for key in record if key not in known or key in instead]
                    if extra:
                        meta["extra"] = {key: record[key] for key in extra}
                        dropped.update(_unread(record, extra, fmt, item["kind"], item.get("style"), instead))
                _nulls_for_non_finite(conversation, dropped)
                shaped = conversation if shape is None else shape(conversation)
            except DataError as error:
                reject(_located(error, source, location(unit, number), record, fields, fmt, columns, cli))
                continue
            report.add_valid(source, 0 if isinstance(conversation, Pair) else len(conversation.images))
            report.dropped.update(dropped)
            yield shaped
    except DataError as error:  # the file as a whole (cut off, corrupt, a broken JSON document)
        if error.location:  # a record's error, already counted, on its way out (on_error="raise")
            raise
        reject(error.located(source=error.source or source))


def _unread(record: dict, extra: list[str], fmt: str, kind: str, style: str | None,
            instead: dict[str, str]) -> list[str]:
    """The unread fields worth a count, as "field (why)": those of a second format the record also has
    (not trained), a field given beside the one its format reads instead (`instead`: a second conversation
    list), the later copies of a CSV column named twice (files.DUPLICATE_COLUMN), and, when converting to a
    `style` that writes no meta (so meta.extra is lost), every one."""
    second = {name: other for other, fields in reversed(DETECTORS) if other != fmt
              and all(record.get(name) is not None for name in fields) for name in fields}
    kept = "kept in meta.extra" if style in (None, "messages") else f"--to {style} writes no meta"
    out = []
    for key in extra:
        copy = files.DUPLICATE_COLUMN.fullmatch(key) if kind in ("csv", "tsv") else None
        if copy:
            out.append(f"{copy[1]} (duplicate CSV column {copy[2]}, {kept})")
        elif key in instead:
            out.append(f"{key} (given beside {instead[key]}, which is read: not trained; {kept})")
        elif key in second:
            out.append(f"{key} (second format {second[key]}, not trained; {kept})")
        elif style not in (None, "messages"):
            out.append(f"{key} (unread field; {kept})")
    return out


def _nulls_for_non_finite(conversation: Any, dropped: Counter) -> None:
    """NaN / Infinity in what a record carries unread (meta, tools) become null, counted per field: JSON has
    no such numbers, and Parquet / Arrow write NaN for a missing float. (A JSON file holding them is
    refused by its reader; text fields and weights refuse them in formats.py.)"""
    if conversation.tools:
        nulls_for_non_finite("tools", conversation.tools, dropped)
    nulls_for_non_finite("meta", conversation.meta, dropped)


def nulls_for_non_finite(name: str, value: Any, dropped: Counter | None = None) -> None:
    """Every NaN / Infinity inside a dict or list made null, in place (iteratively: any depth), each
    counted in `dropped` by its path when given."""
    stack: list[tuple[str, Any]] = [(name, value)]
    while stack:
        path, container = stack.pop()
        items = container.items() if isinstance(container, dict) else enumerate(container)
        for key, item in items:
            inner = f"{path}.{key}" if isinstance(container, dict) else f"{path}[{key}]"
            if isinstance(item, float) and not math.isfinite(item):
                container[key] = None
                if dropped is not None:
                    dropped[f"{inner} (NaN / Infinity written as null)"] += 1
            elif isinstance(item, (dict, list)):
                stack.append((inner, item))


def _located(error: DataError, source, where, record, fields, fmt, columns, cli) -> DataError:
    """The error a format or check raised, with where it is and hints that need the whole file."""
    changes: dict[str, Any] = {"source": error.source or source, "location": error.location or where}
    if error.record is None:
        changes["record"] = record
    if error.reason == "missing_field" and type(fields) is dict:
        other = detect(fields)
        if other and other != fmt:
            changes["fix"] = error.fix + (
                f" (this file reads as {fmt}, from its first record, but this record looks like {other}: "
                f"keep one format per file, or pass {'--format' if cli else 'format='})"
            )
    if columns and error.field:
        root = error.field.split("[", 1)[0].split(".", 1)[0]
        if root in columns:
            changes["problem"] = f"{error.problem} (read from {columns[root]!r} by the column mapping)"
    return error.located(**changes)


def log_rejections(report: Report) -> None:
    """Nothing is dropped silently: a skipped record is at least counted in the log, with the first
    example of each reason (file, line, field and fix)."""
    for note in report.notes:
        logger.warning("%s", note)
    if report.invalid:
        logger.warning(
            "%d of %d records rejected (%s)%s",
            report.invalid,
            report.total,
            "; ".join(f"{reason}: {count}, e.g. {report.examples[reason]}" for reason, count in report.reasons.most_common()),
            f"; see {report.quarantine}" if report.quarantine else "",
        )
    elif not report.total:
        logger.warning("no records read from %s", ", ".join(report.files) or "the given paths")
