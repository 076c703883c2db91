"""Files in, raw records out: paths, globs and folders expanded; each file read by its kind.

Large inputs never load whole into memory: JSONL, CSV and text are read line by line, Parquet in
row batches (pyarrow), Arrow files and `datasets.save_to_disk` folders memory-mapped (datasets).
A JSON array file is the exception: JSON cannot be streamed, so it is parsed whole.

Each reader yields `(number, record)`: the 1-based line for line-based files, else the 0-based
record index (as in `dataset[i]`). A record that cannot be parsed comes as a DataError in place of
the record, so that the caller decides to raise or to quarantine it.
"""

from __future__ import annotations

import bz2
import csv
import glob
import gzip
import io
import json
import lzma
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sftune.data.errors import DataError

# File suffix -> file kind.
SUFFIXES = {
    ".jsonl": "jsonl",
    ".json": "json",
    ".csv": "csv",
    ".tsv": "tsv",
    ".parquet": "parquet",
    ".arrow": "arrow",
    ".txt": "text",  # each also as .gz, .bz2 or .xz
}
# Kinds whose location is a line number; the others count records.
LINE_KINDS = ("jsonl", "csv", "tsv", "text")
# Metadata files that live beside data files and are never data themselves.
METADATA_FILES = ("dataset_info.json", "state.json", "dataset_dict.json")
LLAMAFACTORY_INFO = "dataset_info.json"
COMPRESSED = (".gz", ".bz2", ".xz")
BATCH_ROWS = 4096


def suffix(path: Path) -> str:
    """The data suffix, looking through a compression suffix: data.jsonl.gz -> .jsonl."""
    name = path.name.lower()
    for packed in COMPRESSED:
        if name.endswith(packed):
            name = name[: -len(packed)]
    return Path(name).suffix


def is_compressed(path: Path) -> bool:
    return path.name.lower().endswith(COMPRESSED)


def _open(path: Path):
    """Binary reading, decompressing .gz / .bz2 / .xz on the fly."""
    name = path.name.lower()
    if name.endswith(".gz"):
        return gzip.open(path, "rb")
    if name.endswith(".bz2"):
        return bz2.open(path, "rb")
    if name.endswith(".xz"):
        return lzma.open(path, "rb")
    return open(path, "rb")


def is_datasets_folder(path: Path) -> bool:
    """A folder written by `datasets.Dataset(Dict).save_to_disk`."""
    return path.is_dir() and ((path / "state.json").exists() or (path / "dataset_dict.json").exists())


def kind_of(path: Path) -> str:
    if is_datasets_folder(path):
        return "datasets"
    if path.name == LLAMAFACTORY_INFO:
        return "llamafactory"
    kind = SUFFIXES.get(suffix(path))
    if kind == "json" and _is_json_lines(path):
        return "jsonl"  # JSON lines under a .json name, as `datasets` also accepts
    if kind is None:
        raise DataError(
            "unsupported",
            "",
            f"has an unknown file type {path.suffix or '(no suffix)'!r}",
            f"use one of {', '.join(SUFFIXES)} or a datasets.save_to_disk folder",
            source=str(path),
        )
    return kind


def expand(paths: str | Path | list[str | Path]) -> list[Path]:
    """Files, globs and folders -> the data files (or datasets folders) they name, in sorted order.

    A folder holding LLaMA-Factory's dataset_info.json stands for that file; a datasets
    save_to_disk folder stands for itself; any other folder is searched recursively for data files.
    """
    if isinstance(paths, (str, Path)):
        paths = [paths]
    found: list[Path] = []
    for item in paths:
        path = Path(item)
        if path.exists():
            matches = [path]
        else:
            matches = [Path(p) for p in sorted(glob.glob(str(item), recursive=True))]
            if not matches:
                raise FileNotFoundError(f"{item}: no such file, folder or glob match; check the path")
        for match in matches:
            if (match / "dataset_dict.json").exists():  # a DatasetDict: every split, as saved
                splits = json.loads((match / "dataset_dict.json").read_text())["splits"]
                found.extend(match / split for split in splits)
                continue
            if match.is_dir() and not is_datasets_folder(match):
                if (match / LLAMAFACTORY_INFO).exists():
                    found.append(match / LLAMAFACTORY_INFO)
                    continue
                files = sorted(
                    p
                    for p in match.rglob("*")
                    if p.is_file() and suffix(p) in SUFFIXES and p.name not in METADATA_FILES
                )
                if not files:
                    raise FileNotFoundError(
                        f"{match}: folder holds no data files ({', '.join(SUFFIXES)}); check the path"
                    )
                found.extend(files)
            else:
                found.append(match)
    return found


def iter_records(path: Path, kind: str, byte_range: tuple[int, int, int] | None = None) -> Iterator[tuple[int, Any]]:
    """The raw records of one file (see the module docstring for numbering and errors).

    byte_range (start, end, first line number) reads part of a JSONL or text file, for workers.
    """
    if byte_range is not None:
        return _jsonl(path, *byte_range) if kind == "jsonl" else _text(path, *byte_range)
    readers = {
        "jsonl": _jsonl,
        "json": _json,
        "csv": _csv,
        "tsv": _csv,
        "text": _text,
        "parquet": _parquet,
        "arrow": _arrow,
        "datasets": _datasets_folder,
    }
    return readers[kind](path)


def _lines(path: Path, start: int = 0, end: int | None = None, first: int = 1) -> Iterator[tuple[int, bytes]]:
    """(line number, raw line) of the lines that start in [start, end); start is a line start."""
    with _open(path) as handle:
        if start == 0 and end is None:
            yield from enumerate(handle, first)
            return
        handle.seek(start)
        position = start
        for number, raw in enumerate(handle, first):
            if end is not None and position >= end:
                return
            position += len(raw)
            yield number, raw


def _jsonl(path: Path, start: int = 0, end: int | None = None, first: int = 1) -> Iterator[tuple[int, Any]]:
    source = str(path)
    decode = json.JSONDecoder().decode
    for number, raw in _lines(path, start, end, first):
        try:
            if number == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]  # a UTF-8 byte-order mark
            yield number, decode(raw.decode("utf-8"))
        except UnicodeDecodeError as err:
            yield number, DataError(
                "invalid_utf8",
                "",
                f"is not valid UTF-8 (byte {err.start} of the line)",
                "re-save the file as UTF-8 (e.g. iconv -f <encoding> -t utf-8)",
                source=source,
                location=f"line {number}",
                record=raw.decode("utf-8", errors="replace"),
            )
        except json.JSONDecodeError as err:
            if not raw.strip():
                continue  # blank lines separate nothing in JSONL; they are not records
            yield number, DataError(
                "broken_json",
                "",
                f"is not valid JSON ({err.msg} at column {err.colno})",
                "each line must hold one complete JSON object; fix or remove this line",
                source=source,
                location=f"line {number}",
                record=raw.decode("utf-8", errors="replace").rstrip("\n"),
            )


def _is_json_lines(path: Path) -> bool:
    """A .json file whose first line is a whole JSON object and which has more lines after it."""
    with _open(path) as handle:
        first = handle.readline().lstrip(b"\xef\xbb\xbf").strip()
        rest = handle.read(4096).strip()
    if not first.startswith(b"{") or not rest:
        return False
    try:
        json.loads(first)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return False
    return True


def _json(path: Path) -> Iterator[tuple[int, Any]]:
    """A .json file: a JSON array of records, or one object (a record, or one holding the array)."""
    source = str(path)
    try:
        with _open(path) as handle:
            data = json.loads(handle.read())
    except UnicodeDecodeError as err:
        raise DataError(
            "invalid_utf8",
            "",
            f"is not valid UTF-8 (byte {err.start})",
            "re-save the file as UTF-8 (e.g. iconv -f <encoding> -t utf-8)",
            source=source,
        ) from None
    except json.JSONDecodeError as err:
        raise DataError(
            "broken_json",
            "",
            f"is not valid JSON ({err.msg} at line {err.lineno} column {err.colno})",
            "fix the JSON, or write one object per line as JSONL",
            source=source,
        ) from None
    if isinstance(data, dict):
        from sftune.data.formats import detect

        lists = [key for key, value in data.items() if isinstance(value, list)]
        if detect(data) is None and len(lists) == 1:
            data = data[lists[0]]  # e.g. {"data": [...]}, the layout `datasets` reads with field="data"
        else:
            data = [data]  # one record
    if not isinstance(data, list):
        raise DataError(
            "not_an_object", "", f"holds a JSON {type(data).__name__}, not an array of records",
            "write the records as a JSON array or as JSONL", source=source,
        )
    yield from enumerate(data)


def _csv(path: Path) -> Iterator[tuple[int, Any]]:
    """CSV/TSV with a header row; every value is text, and an empty cell means the field is absent."""
    csv.field_size_limit(sys.maxsize)
    delimiter = "\t" if suffix(path) == ".tsv" else ","
    source = str(path)
    try:
        with io.TextIOWrapper(_open(path), newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle, delimiter=delimiter)
            for row in reader:
                yield reader.line_num, {key: value for key, value in row.items() if value not in (None, "")}
    except UnicodeDecodeError as err:
        raise DataError(
            "invalid_utf8", "", f"is not valid UTF-8 (byte {err.start} of the file)",
            "re-save the file as UTF-8 (e.g. iconv -f <encoding> -t utf-8)", source=source,
        ) from None


def _text(path: Path, start: int = 0, end: int | None = None, first: int = 1) -> Iterator[tuple[int, Any]]:
    """Plain text for continued pre-training: one document per non-blank line."""
    for number, raw in _lines(path, start, end, first):
        try:
            line = raw.decode("utf-8").rstrip("\r\n")
        except UnicodeDecodeError as err:
            yield number, DataError(
                "invalid_utf8", "", f"is not valid UTF-8 (byte {err.start} of the line)",
                "re-save the file as UTF-8 (e.g. iconv -f <encoding> -t utf-8)",
                source=str(path), location=f"line {number}",
                record=raw.decode("utf-8", errors="replace"),
            )
            continue
        if line.strip():
            yield number, {"text": line}


def _parquet(path: Path) -> Iterator[tuple[int, Any]]:
    import pyarrow.parquet as pq

    index = 0
    for batch in pq.ParquetFile(path).iter_batches(batch_size=BATCH_ROWS):
        for row in batch.to_pylist():
            yield index, row
            index += 1


def _arrow_rows(dataset) -> Iterator[tuple[int, Any]]:
    index = 0
    for table in dataset.with_format("arrow").iter(batch_size=BATCH_ROWS):
        for row in table.to_pylist():
            yield index, row
            index += 1


def _arrow(path: Path) -> Iterator[tuple[int, Any]]:
    """An Arrow file as written by `datasets` (memory-mapped, not loaded)."""
    from datasets import Dataset

    yield from _arrow_rows(Dataset.from_file(str(path)))


def _datasets_folder(path: Path) -> Iterator[tuple[int, Any]]:
    """A Dataset save_to_disk folder (a DatasetDict folder is expanded into its splits first)."""
    from datasets import load_from_disk

    yield from _arrow_rows(load_from_disk(str(path)))
