"""Files in, raw records out: paths, globs and folders expanded; each file read by its kind.

Large inputs never load whole into memory: JSONL, CSV and text are read line by line, Parquet in
row batches (pyarrow), Arrow files, `datasets.save_to_disk` folders and `hub:` datasets (hub.py)
memory-mapped (datasets).
A JSON array file is the exception: JSON cannot be streamed, so it is parsed whole.

Each reader yields `(number, record)`: the 1-based line for line-based files, else the 0-based
record index (as in `dataset[i]`). A record that cannot be parsed comes as a DataError in place of
the record, so that the caller decides to raise or to quarantine it. A file that cannot be read
on (corrupt, cut off, wrong compression, no permission) raises one DataError without a location
after the records read before the failure: they are kept.

Bounds (Limits, set from data.max_record_mb / max_unpacked_gb / max_ratio or the same command-line options):
only regular files and folders are read (a FIFO, a device, a socket, a symbolic link loop or a dangling
link is refused by name before anything is opened); a line longer than the record limit is rejected by its
line and read past in pieces, never held whole; a compressed file stops with an error once it has unpacked
more than the size limit, or more than the ratio limit times its size on disk (counted once past 16 MiB).

Text is UTF-8 (a byte-order mark is skipped); UTF-16 and UTF-32 files, with a byte-order mark or
recognised by their zero bytes, are decoded too. Values JSON cannot hold in a training file
(NaN, Infinity, a lone surrogate from a `\\ud800` escape) reject their record, naming the field.
"""

from __future__ import annotations

import bz2
import contextlib
import csv
import datetime
import decimal
import errno
import glob
import gzip
import io
import json
import lzma
import math
import os
import re
import stat
import sys
import tempfile
import uuid
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from sftune.data import hub
from sftune.data.errors import DataError, location
from sftune.errors import UserError

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
# Python's own limit on digits in an int read from text (sys.get_int_max_str_digits).
INT_DIGITS = 4300
# A JSON escape of a UTF-16 surrogate (\\ud800-\\udfff): paired ones make one character, lone ones none.
SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
NOT_UTF8 = re.compile("[\udc80-\udcff]")  # bytes kept by errors="surrogateescape"
REENCODE = "re-save the file as UTF-8 (e.g. iconv -f <encoding> -t utf-8)"
MIB, GIB = 1 << 20, 1 << 30
CHUNK = 1 << 20  # how much of an over-long line is held at a time while reading past it
RATIO_AFTER = 16 * MIB  # the ratio limit counts once a file has unpacked this much (small files never trip it)


@dataclass(frozen=True)
class Limits:
    """How much one input may take: a record (one line of a line-based file) and one compressed file.

    The defaults are far above real data: the longest SFT records are a few MiB (a 1M-token context is
    about 4 MiB of text); gzip cannot pass 1032:1, and real text compresses 3-20:1 (50:1 for highly
    repetitive synthetic data), while bz2 and xz bombs unpack millions to one.
    """

    record_mb: float = 64
    unpacked_gb: float = 100
    ratio: float = 1000

    @property
    def record_bytes(self) -> int:
        return int(self.record_mb * MIB)

    @property
    def unpacked_bytes(self) -> int:
        return int(self.unpacked_gb * GIB)


LIMITS = Limits()


@contextlib.contextmanager
def reading_limits(record_mb: float | None = None, unpacked_gb: float | None = None,
                   ratio: float | None = None) -> Iterator[Limits]:
    """Read within these limits (None keeps a limit as it is), in this process and the workers it starts."""
    global LIMITS
    given = {"record_mb": record_mb, "unpacked_gb": unpacked_gb, "ratio": ratio}
    for name, value in given.items():
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0):
            raise ValueError(f"max_{name} is {value!r}; use a number > 0")
    before = LIMITS
    LIMITS = replace(LIMITS, **{name: value for name, value in given.items() if value is not None})
    try:
        yield LIMITS
    finally:
        LIMITS = before


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
    """Binary reading, decompressing .gz / .bz2 / .xz on the fly, within the unpacked size and ratio limits."""
    name = path.name.lower()
    if name.endswith(".gz"):
        packed = gzip.open(path, "rb")
    elif name.endswith(".bz2"):
        packed = bz2.open(path, "rb")
    elif name.endswith(".xz"):
        packed = lzma.open(path, "rb")
    else:
        return open(path, "rb")
    return io.BufferedReader(_Unpacked(packed, path), CHUNK)


class _Unpacked(io.RawIOBase):
    """A decompressing stream that counts the bytes it gives and stops at the size or ratio limit."""

    def __init__(self, packed: Any, path: Path) -> None:
        self.packed, self.path, self.out = packed, path, 0
        self.limit = LIMITS.unpacked_bytes
        self.ratio_limit = max(RATIO_AFTER, int(LIMITS.ratio * max(os.path.getsize(path), 1)))

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        count = self.packed.readinto(buffer)
        self.out += count
        if self.out > self.limit:
            self._refuse(f"unpacks to over {LIMITS.unpacked_gb:g} GiB", f"raise data.max_unpacked_gb "
                         f"(--max-unpacked-gb, now {LIMITS.unpacked_gb:g})")
        if self.out > self.ratio_limit:
            self._refuse(f"unpacks to over {LIMITS.ratio:g} times its size on disk (a decompression bomb?)",
                         f"raise data.max_ratio (--max-ratio, now {LIMITS.ratio:g}) if the file is trusted")
        return count

    def _refuse(self, problem: str, fix: str) -> None:
        raise DataError("too_large", "", f"{problem}; stopped after {self.out:,} bytes, the records before are kept",
                        f"split the file, or {fix}", source=str(self.path))

    def close(self) -> None:
        self.packed.close()
        super().close()


def bounded_lines(handle: Any, limit: int) -> Iterator[tuple[Any, int]]:
    """(line, its size) for each line of a binary or text handle; (None, size) for a line over `limit`,
    which is read past in pieces and never held whole."""
    while True:
        line = handle.readline(limit + 1)
        if not line:
            return
        newline = "\n" if isinstance(line, str) else b"\n"
        if len(line) <= limit or line.endswith(newline):
            yield line, len(line)
            continue
        size = len(line)
        while line and not line.endswith(newline):
            line = handle.readline(CHUNK)
            size += len(line)
        yield None, size


def _too_long(source: str, number: int) -> DataError:
    return DataError("too_large", "", f"is one record of over {LIMITS.record_mb:g} MiB (a line that never ends?)",
                     f"split or drop the record; the limit is data.max_record_mb (--max-record-mb, now "
                     f"{LIMITS.record_mb:g})", source=source, location=location("line", number))


SPECIAL_FILES = ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
                 (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def refuse_special(path: Path) -> None:
    """Refuse by name what is neither a regular file nor a folder, before anything opens it: reading a
    FIFO or a device can block forever or never end; a link loop or a dangling link has nothing to read."""
    try:
        info = os.stat(path)
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise DataError("unreadable_file", "", "is a symbolic link loop (its links point back to themselves), "
                            "not a data file", "point the link at a real file, or name the file itself",
                            source=str(path)) from None
        if err.errno == errno.ENOENT and os.path.islink(path):
            raise DataError("unreadable_file", "", f"is a symbolic link to {os.readlink(path)!r}, which does not "
                            "exist", "point the link at an existing file, or remove it", source=str(path)) from None
        return  # e.g. no permission: the reader names it
    if stat.S_ISREG(info.st_mode) or stat.S_ISDIR(info.st_mode):
        return
    kind = next((name for test, name in SPECIAL_FILES if test(info.st_mode)), "not a regular file")
    raise DataError("unreadable_file", "", f"is {kind}, not a data file; sftune reads regular files and folders",
                    "save the data into a file first (e.g. cat SOURCE > data.jsonl) and name that file",
                    source=str(path))


def encoding(path: Path) -> str:
    """The text encoding, from the first bytes: UTF-8 unless a byte-order mark or zero bytes say UTF-16/32."""
    try:
        with _open(path) as handle:
            start = handle.read(4)
    except (OSError, EOFError, lzma.LZMAError, zlib.error):
        return "utf-8"  # the reader says what is wrong with the file
    if start.startswith((b"\xff\xfe\x00\x00", b"\x00\x00\xfe\xff")):
        return "utf-32"
    if start.startswith((b"\xff\xfe", b"\xfe\xff")):
        return "utf-16"
    if len(start) >= 2 and start[0] and not start[1]:
        return "utf-16-le"
    if len(start) >= 2 and not start[0] and start[1]:
        return "utf-16-be"
    return "utf-8"


def splittable(path: Path) -> bool:
    """A file workers can read in byte ranges: plain (not compressed) UTF-8."""
    return not is_compressed(path) and encoding(path) == "utf-8"


def is_datasets_folder(path: Path) -> bool:
    """A folder written by `datasets.Dataset(Dict).save_to_disk`."""
    return path.is_dir() and ((path / "state.json").exists() or (path / "dataset_dict.json").exists())


def kind_of(path: Path | str) -> str:
    if hub.is_hub(path):
        return "hub"
    if is_datasets_folder(path):
        return "datasets"
    if path.name == LLAMAFACTORY_INFO:
        return "llamafactory"
    kind = SUFFIXES.get(suffix(path))
    if kind == "json" and is_json_lines(path):
        return "jsonl"  # JSON lines under a .json name, as `datasets` also accepts
    if kind == "jsonl" and is_json_document(path):
        return "json"  # one (pretty-printed) JSON document under a .jsonl name; see misnamed()
    if kind is None:
        raise DataError(
            "unsupported",
            "",
            f"has an unknown file type {path.suffix or '(no suffix)'!r}",
            f"use one of {', '.join(SUFFIXES)} or a datasets.save_to_disk folder",
            source=str(path),
        )
    return kind


def misnamed(path: Path, kind: str) -> str | None:
    """A note for a file whose name says another kind than its content (read by its content)."""
    if kind == "json" and suffix(path) == ".jsonl":
        return (f"{path} holds one JSON document over several lines, not one record per line: "
                "read as JSON; rename it to .json")
    return None


class Replacing:
    """A text file written beside its final name and moved into place on close: a reader never sees
    half a file, and a failed run leaves the old file as it was."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle, self.partial = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".partial")
        self.handle = os.fdopen(handle, "w", encoding="utf-8")

    def write(self, text: str) -> None:
        self.handle.write(text)

    def close(self) -> None:
        if not self.handle.closed:
            self.handle.close()
            os.replace(self.partial, self.path)

    def discard(self) -> None:
        if not self.handle.closed:
            self.handle.close()
        if os.path.exists(self.partial):
            os.remove(self.partial)


class OverwriteError(UserError, ValueError):
    """An output that would write over what a command reads (or over another output); refused before writing."""


def _identity(path: Path) -> tuple[Path, tuple[int, int] | None]:
    """(the path with every symlink resolved, (device, inode) when the file exists): two names of one file
    share the first when one is a symlink to the other, the second when one is a hard link to the other."""
    try:
        info = os.stat(path)
    except OSError:
        return path.resolve(), None
    return path.resolve(), (info.st_dev, info.st_ino)


def _how(path: Path, other: Path, real: Path) -> str:
    if Path(os.path.abspath(path)) == Path(os.path.abspath(other)):
        return ""
    return " (through a symbolic link)" if path.resolve() == real else " (a hard link to it: one file, two names)"


def refuse_overwrite(inputs: Iterable[str | Path], *, folders: bool = False, holding: bool = True,
                     **outputs: str | Path | None) -> None:
    """The one output guard of every command that writes, called before anything is opened for writing.

    `inputs` are the files and folders a command reads (as the user named them, and as expanded).
    Refused: an output that is an input under any name (a symlink or a hard link too), an output inside
    an input folder, an output folder holding an input, and two outputs that are one file; and an existing
    folder where a file is written (folders=False, the data commands: export writes a folder). With
    holding=False an output folder may hold inputs in its subfolders (a run folder keeping its held-out data in
    data/: training writes its own files at the top, where an input is still refused).
    """
    named = {name: Path(path).expanduser() for name, path in outputs.items() if path is not None}
    sources = [(source, *_identity(source)) for source in map(Path, inputs) if os.path.lexists(source)]
    identities = {name: _identity(path) for name, path in named.items()}
    for name, path in named.items():
        real, inode = identities[name]
        if real.is_dir() and not folders:
            raise OverwriteError(f"{name} {path} is a folder; name a file to write (e.g. {Path(path) / 'out.jsonl'})")
        for source, source_real, source_inode in sources:
            if real == source_real or (inode is not None and inode == source_inode):
                raise OverwriteError(
                    f"{name} {path} is the input {source}{_how(path, source, source_real)}: writing it would destroy "
                    "that input; choose an output path that is not an input"
                )
            if source_real in real.parents and source_real.is_dir():
                raise OverwriteError(
                    f"{name} {path} is inside the input folder {source}: writing there would change the data being "
                    f"read (and the output would be read as data next time); choose an output path outside {source}"
                )
            if real in source_real.parents and (holding or source_real.parent == real):
                raise OverwriteError(
                    f"{name} {path} is a folder that holds the input {source}: writing it could destroy that input; "
                    f"choose an output path outside {source}"
                )
        for other in list(named)[: list(named).index(name)]:
            other_real, other_inode = identities[other]
            if real == other_real or (inode is not None and inode == other_inode):
                raise OverwriteError(
                    f"{other} {named[other]} and {name} {path} are the same file: one would write over the other; "
                    "give them different paths"
                )


def expand(paths: str | Path | list[str | Path]) -> list[Path | str]:
    """Files, globs and folders -> the data files (or datasets folders) they name, in sorted order.

    A folder holding LLaMA-Factory's dataset_info.json stands for that file; a datasets
    save_to_disk folder stands for itself; any other folder is searched recursively for data files.
    A `hub:` name stays as it is, once `datasets` has loaded it (an unknown or unreachable one raises now).
    """
    if isinstance(paths, (str, Path)):
        paths = [paths]
    found: list[Path | str] = []
    for item in paths:
        if hub.is_hub(item):
            hub.load(item)
            found.append(item)
            continue
        path = Path(item)
        if path.exists():
            matches = [path]
        else:
            matches = [Path(p) for p in sorted(glob.glob(str(item), recursive=True))]
            if not matches:
                raise FileNotFoundError(f"{item}: no such file, folder or glob match; check the path")
        for match in matches:
            refuse_special(match)
            if (match / "dataset_dict.json").exists():  # a DatasetDict: every split, as saved
                found.extend(dataset_splits(match))
                continue
            if match.is_dir() and not is_datasets_folder(match):
                if (match / LLAMAFACTORY_INFO).exists():
                    found.append(match / LLAMAFACTORY_INFO)
                    continue
                named = [p for p in match.rglob("*") if suffix(p) in SUFFIXES and p.name not in METADATA_FILES]
                for p in named:
                    refuse_special(p)  # a data file's name on a FIFO, a device or a broken link is no file to skip
                files = sorted(p for p in named if p.is_file())
                if not files:
                    raise FileNotFoundError(
                        f"{match}: folder holds no data files ({', '.join(SUFFIXES)}); check the path"
                    )
                found.extend(files)
            else:
                found.append(match)
    return found


def dataset_splits(folder: Path) -> list[Path]:
    """The split folders of a DatasetDict save_to_disk folder, as its dataset_dict.json lists them."""
    index = folder / "dataset_dict.json"
    present = sorted(p.name for p in folder.iterdir() if is_datasets_folder(p))
    name = f"e.g. {folder / present[0]}" if present else "a split folder (one holding state.json)"
    try:
        splits = json.loads(index.read_text(encoding="utf-8")).get("splits")
    except (ValueError, UnicodeDecodeError, AttributeError):
        splits = None
    if not isinstance(splits, list) or not splits or not all(isinstance(s, str) and s for s in splits):
        raise DataError("unreadable_file", "splits", "is missing or not a list of split names (as "
                        'DatasetDict.save_to_disk writes it: {"splits": ["train", "test"]})',
                        f"save the dataset again, or name one split's folder ({name}); split folders here: "
                        f"{', '.join(present) or 'none'}", source=str(index))
    missing = [split for split in splits if not is_datasets_folder(folder / split)]
    if missing:
        raise DataError("unreadable_file", "splits", f"lists {', '.join(map(repr, missing))}, but "
                        f"{folder / missing[0]} is not a saved split (no such folder, or no state.json in it)",
                        f"save the dataset again, or name the splits that are there ({', '.join(present) or 'none'})",
                        source=str(index))
    return [folder / split for split in splits]


def iter_records(path: Path, kind: str, byte_range: tuple[int, int, int] | None = None) -> Iterator[tuple[int, Any]]:
    """The raw records of one file (see the module docstring for numbering and errors).

    byte_range (start, end, first line number) reads part of a JSONL or text file, for workers.
    """
    readers = {
        "jsonl": _jsonl,
        "json": _json,
        "csv": _csv,
        "tsv": _csv,
        "text": _text,
        "parquet": _parquet,
        "arrow": _arrow,
        "datasets": _datasets_folder,
        "hub": _hub,
    }
    records = readers[kind](path, *byte_range) if byte_range is not None else readers[kind](path)
    return _guarded(records, path, kind)


KIND_NAMES = {"jsonl": "JSON lines", "json": "JSON", "csv": "CSV", "tsv": "TSV", "text": "text",
              "parquet": "Parquet", "arrow": "an Arrow file", "datasets": "a datasets folder",
              "hub": "a hub dataset"}


def _guarded(records: Iterator[tuple[int, Any]], path: Path, kind: str) -> Iterator[tuple[int, Any]]:
    """The records, then one DataError naming the file if it cannot be read on (the records before stay)."""
    last = None
    try:
        for last, record in records:
            yield last, record
    except DataError:
        raise
    except PermissionError:
        raise DataError("unreadable_file", "", "cannot be read: permission denied",
                        "check the file's permissions (e.g. chmod a+r)", source=str(path)) from None
    except EOFError:
        after = f" after {location('line' if kind in LINE_KINDS else 'record', last)}" if last is not None else ""
        raise DataError("truncated_file", "", f"is cut off: the compressed data ends early{after}",
                        "the records before the cut are kept and counted; re-create or re-download the file",
                        source=str(path)) from None
    except (OSError, ValueError, lzma.LZMAError, zlib.error, RecursionError, csv.Error) as err:
        packed = f"{path.suffix} " if is_compressed(path) else ""
        raise DataError("unreadable_file", "", f"cannot be read as {packed}{KIND_NAMES[kind]} "
                        f"({type(err).__name__}: {str(err)[:200]})",
                        "check that the file is complete and that its name says its type (e.g. .jsonl.gz for "
                        "gzipped JSON lines); re-create it if it is corrupt", source=str(path)) from None


def _lines(path: Path, start: int = 0, end: int | None = None, first: int = 1) -> Iterator[tuple[int, bytes]]:
    """(line number, raw UTF-8 line) of the lines that start in [start, end); start is a line start.
    A line over the record limit comes as a DataError in its place."""
    limit, source = LIMITS.record_bytes, str(path)
    with _open(path) as handle:
        if start == 0 and end is None:
            text = encoding(path)
            if text != "utf-8":  # decoded, then given on as UTF-8 like every other file
                with io.TextIOWrapper(handle, encoding=text, newline="") as lines:
                    for number, (line, _) in enumerate(bounded_lines(lines, limit), first):
                        yield number, (_too_long(source, number) if line is None
                                       else line.lstrip("\ufeff").encode("utf-8", "surrogatepass"))
                return
        else:
            handle.seek(start)
        position = start
        for number, (raw, size) in enumerate(bounded_lines(handle, limit), first):
            if end is not None and position >= end:
                return
            position += size
            yield number, _too_long(source, number) if raw is None else raw


def _decoder() -> tuple[Any, list]:
    """A JSON decoder that notes NaN / Infinity (JSON has neither) in the list it returns."""
    seen: list[str] = []

    def constant(name: str) -> float:
        seen.append(name)
        return float(name)

    return json.JSONDecoder(parse_constant=constant).decode, seen


def bad_value(record: Any, *, finite: bool = True) -> tuple[str, str, str] | None:
    """(field, problem, fix) for the first value a training file cannot hold, or None.

    NaN / Infinity (not JSON; a writer would put them in its output; with finite=False they pass, for
    columnar files, where NaN is how a missing float is stored: the record's conversion decides) and lone
    surrogates (not characters; no UTF-8 file can hold them). Walks without recursion, so any depth is safe.
    """
    stack: list[tuple[str, Any]] = [("", record)]
    while stack:
        field, value = stack.pop()
        if finite and isinstance(value, float) and not math.isfinite(value):
            return (field, f"is {value!r}, which JSON does not allow",
                    "write a number, or null for a missing value (NaN often marks an empty spreadsheet cell)")
        if isinstance(value, str):
            if not value.isascii():
                try:
                    value.encode("utf-8")
                except UnicodeEncodeError as err:
                    return (field, f"holds a lone surrogate {value[err.start]!r} at character {err.start}, "
                            "which is not a character", "fix the text where it was cut (a \\ud800-\\udfff escape "
                            "needs its pair), or remove that escape")
        elif isinstance(value, dict):
            stack.extend((f"{field}.{key}" if field else str(key), item) for key, item in reversed(value.items()))
        elif isinstance(value, list):
            stack.extend((f"{field}[{i}]", item) for i, item in reversed(list(enumerate(value))))
    return None


def _bad_value_error(record: Any, source: str, where: str, raw: Any, *, finite: bool = True) -> DataError | None:
    found = bad_value(record, finite=finite)
    if found is None:
        return None
    field, problem, fix = found
    return DataError("bad_value", field or "the record", problem, fix, source=source, location=where, record=raw)


def _json_problem(err: Exception, text: str) -> str:
    """Why a JSON text does not parse, said for a person: a cut-off end, the column, a number too long."""
    if isinstance(err, RecursionError):
        return "nests lists or objects too deeply to read (thousands of levels)"
    if not isinstance(err, json.JSONDecodeError):
        return f"holds an integer with more than {INT_DIGITS:,} digits, which cannot be read"
    body = text.rstrip()
    if err.pos >= len(body):
        return f"is not valid JSON: it ends before the JSON is complete (cut off after column {len(body)})"
    at = "" if err.msg.endswith(" at") else " at"
    if "\n" in body:
        return f"is not valid JSON ({err.msg}{at} line {err.lineno} column {err.colno})"
    return f"is not valid JSON ({err.msg}{at} column {err.colno})"


def _jsonl(path: Path, start: int = 0, end: int | None = None, first: int = 1) -> Iterator[tuple[int, Any]]:
    source = str(path)
    decode, constants = _decoder()
    for number, raw in _lines(path, start, end, first):
        if isinstance(raw, DataError):
            yield number, raw
            continue
        where = location("line", number)
        if number == 1 and raw.startswith(b"\xef\xbb\xbf"):
            raw = raw[3:]  # a UTF-8 byte-order mark
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as err:
            yield number, DataError(
                "invalid_utf8", "", f"is not valid UTF-8 (byte {err.start} of the line)", REENCODE,
                source=source, location=where, record=raw.decode("utf-8", errors="replace"),
            )
            continue
        if not text.strip():
            continue  # blank lines separate nothing in JSONL; they are not records
        try:
            record = decode(text)
        except (ValueError, RecursionError) as err:
            yield number, DataError(
                "broken_json", "", _json_problem(err, text),
                "each line must hold one complete JSON object; fix or remove this line",
                source=source, location=where, record=text.rstrip("\r\n")[:10_000],
            )
            continue
        if constants or SURROGATE_ESCAPE.search(raw):
            constants.clear()
            error = _bad_value_error(record, source, where, text.rstrip("\r\n"))
            if error is not None:
                yield number, error
                continue
        yield number, record


def is_json_lines(path: Path) -> bool:
    """A .json file whose first line is a whole JSON object and which has more lines after it."""
    try:
        with _open(path) as handle:
            first = handle.readline(LIMITS.record_bytes).lstrip(b"\xef\xbb\xbf").strip()
            rest = handle.read(4096).strip()
    except (OSError, EOFError, lzma.LZMAError, zlib.error, DataError):
        return False  # the reader names the file and says what is wrong with it
    if not first.startswith(b"{") or not rest:
        return False
    try:
        json.loads(first)
    except (ValueError, RecursionError):
        return False
    return True


def is_json_document(path: Path) -> bool:
    """A .jsonl file that is one JSON array or object over several lines (pretty-printed)."""
    if encoding(path) != "utf-8":
        return False
    first = b""
    try:
        with _open(path) as handle:
            for line, _ in bounded_lines(handle, LIMITS.record_bytes):
                first = (line or b"").lstrip(b"\xef\xbb\xbf").strip()
                if first:
                    break
    except (OSError, EOFError, lzma.LZMAError, zlib.error, DataError):
        return False
    if first in (b"[", b"{"):
        return True
    if not first.startswith(b"["):
        return False
    try:
        json.loads(first)
    except (ValueError, RecursionError):
        return True  # an array that goes on past its first line
    return False


def _json(path: Path) -> Iterator[tuple[int, Any]]:
    """A .json file: a JSON array of records, or one object (a record, or one holding the array).

    A cut-off or broken array gives the whole records before the break, then one error there.
    """
    source = str(path)
    with _open(path) as handle:
        raw = handle.read()
    try:
        text = raw.decode(encoding(path)).lstrip("\ufeff")
    except UnicodeDecodeError as err:
        raise DataError("invalid_utf8", "", f"is not valid UTF-8 (byte {err.start})", REENCODE, source=source) from None
    decode, constants = _decoder()
    try:
        data = decode(text)
    except (ValueError, RecursionError) as err:
        if not text.lstrip().startswith("["):
            raise DataError(
                "broken_json", "", _json_problem(err, text), "fix the JSON, or write one object per line as JSONL",
                source=source,
            ) from None
        yield from _json_array_prefix(text, source)
        return
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
    check = bool(constants) or bool(SURROGATE_ESCAPE.search(raw))
    for index, record in enumerate(data):
        error = _bad_value_error(record, source, location("record", index), record) if check else None
        yield index, error or record


def _json_array_prefix(text: str, source: str) -> Iterator[tuple[int, Any]]:
    """The whole records of a JSON array that breaks (or is cut off) part way, then the error there."""
    decode = json.JSONDecoder().raw_decode
    position, index = text.index("[") + 1, 0
    while True:
        while position < len(text) and text[position] in " \t\r\n,":
            position += 1
        if position < len(text) and text[position] == "]":
            return
        try:
            record, end = decode(text, position)
        except (ValueError, RecursionError) as err:
            line = text.count("\n", 0, position) + 1
            cut = not text.rstrip().endswith("]")  # the array never closes: the file was cut
            problem = (f"is cut off in record {index} (line {line}): the file ends inside it"
                       if cut else f"{_json_problem(err, text)}, in record {index}")
            raise DataError(
                "truncated_file" if cut else "broken_json", "",
                f"{problem}; the {index:,} whole record{'' if index == 1 else 's'} before it are read, the rest of the "
                "file cannot be",
                "fix the JSON there (or re-create the file) to read the rest", source=source,
            ) from None
        error = _bad_value_error(record, source, location("record", index), record)
        yield index, error or record
        position, index = end, index + 1


def _csv(path: Path) -> Iterator[tuple[int, Any]]:
    """CSV/TSV with a header row; every value is text, and an empty cell means the field is absent.

    A row that cannot be parsed (a quote that never closes, cells beyond the header, bytes that
    are not UTF-8) is rejected by its line; the rows after it are read on.
    """
    csv.field_size_limit(sys.maxsize)
    delimiter = "\t" if suffix(path) == ".tsv" else ","
    source = str(path)
    text = encoding(path)
    with io.TextIOWrapper(_open(path), newline="", encoding="utf-8-sig" if text == "utf-8" else text,
                          errors="surrogateescape") as handle:
        yield from _csv_rows(_csv_lines(handle, source), delimiter, source)


def _csv_lines(handle: Any, source: str) -> Iterator[tuple[int, str]]:
    """The numbered lines of a CSV file; a line over the record limit stops the file there (the rows before stay)."""
    for number, (line, _) in enumerate(bounded_lines(handle, LIMITS.record_bytes), 1):
        if line is None:  # raised for the file as a whole: the rows before are kept, the file is not read on
            error = _too_long(source, number)
            raise error.located(location=None, problem=f"line {number} {error.problem}; the rows before it are read, "
                                "the rest of the file cannot be")
        yield number, line


# A later copy of a column name the header already has: "output (column 3)", read as an extra field, counted.
DUPLICATE_COLUMN = re.compile(r"(.+) \(column (\d+)\)")


def _csv_rows(lines: Iterator[tuple[int, str]], delimiter: str, source: str) -> Iterator[tuple[int, Any]]:
    header: list[str] | None = None
    queue: Any = lines
    while queue:
        pending: list[tuple[int, str]] = []

        def feed(rows=queue, pending=pending):
            for item in rows:
                pending.append(item)
                yield item[1]

        reader = csv.reader(feed(), delimiter=delimiter, strict=True)
        queue = []
        while True:
            pending.clear()
            try:
                cells = next(reader)
            except StopIteration:
                break
            except csv.Error as err:
                number = pending[0][0] if pending else 0
                at_end = "end of data" in str(err)
                yield number, DataError(
                    "broken_csv", "", f"cannot be parsed as a CSV row ({err})"
                    + (f": a quoted cell opens here and never closes, so the {len(pending) - 1:,} lines after it "
                       "would become one cell" if at_end else ""),
                    "close the quote, or double a quote inside a quoted cell (\"\"); the rows after it are read on",
                    source=source, location=location("line", number),
                    record="".join(line for _, line in pending[:1]).rstrip("\r\n"),
                )
                if at_end:
                    queue = pending[1:]  # read the lines after the opening one again
                    break
                continue
            number = pending[0][0]
            if header is None:
                header = [name if name not in cells[:k] else f"{name} (column {k + 1})" for k, name in enumerate(cells)]
                continue
            if not any(cells):
                continue  # a blank line is no row
            if len(cells) > len(header):
                yield number, DataError(
                    "broken_csv", "", f"has {len(cells)} cells but the header has {len(header)}",
                    f"quote cells that hold a {'tab' if delimiter == chr(9) else 'comma'}, or add the missing "
                    "column names to the header", source=source, location=location("line", number),
                    record=dict(zip(header, cells)),
                )
                continue
            record = {key: value for key, value in zip(header, cells) if value != ""}
            broken = next((key for key, value in record.items() if NOT_UTF8.search(value)), None)
            if broken is not None:
                yield number, DataError(
                    "invalid_utf8", broken, "holds bytes that are not UTF-8 (e.g. Latin-1 or Windows-1252 text)",
                    REENCODE, source=source, location=location("line", number),
                    record={k: v.encode("utf-8", "surrogateescape").decode("utf-8", "replace") for k, v in record.items()},
                )
                continue
            yield number, record


def _text(path: Path, start: int = 0, end: int | None = None, first: int = 1) -> Iterator[tuple[int, Any]]:
    """Plain text for continued pre-training: one document per non-blank line."""
    for number, raw in _lines(path, start, end, first):
        if isinstance(raw, DataError):
            yield number, raw
            continue
        try:
            line = raw.decode("utf-8").rstrip("\r\n")
        except UnicodeDecodeError as err:
            yield number, DataError(
                "invalid_utf8", "", f"is not valid UTF-8 (byte {err.start} of the line)", REENCODE,
                source=str(path), location=location("line", number),
                record=raw.decode("utf-8", errors="replace"),
            )
            continue
        if number == 1:
            line = line.lstrip("\ufeff")
        if line.strip():
            yield number, {"text": line}


def _parquet(path: Path) -> Iterator[tuple[int, Any]]:
    import pyarrow.parquet as pq

    yield from _table_rows(pq.ParquetFile(path).iter_batches(batch_size=BATCH_ROWS), str(path))


def _arrow_rows(dataset, source: str) -> Iterator[tuple[int, Any]]:
    yield from _table_rows(dataset.with_format("arrow").iter(batch_size=BATCH_ROWS), source)


class _NotText(ValueError):
    """A column value that JSON (and so a training file) cannot hold: its field, the problem and the fix."""

    def __init__(self, field: str, problem: str, fix: str) -> None:
        super().__init__(field, problem, fix)
        self.field, self.problem, self.fix = field, problem, fix


def _plain(value: Any, field: str) -> Any:
    """A column value as JSON can hold it: dates and times in ISO 8601, decimals and UUIDs as exact text,
    UTF-8 bytes as text, intervals and map entries as lists; what has no text form raises _NotText."""
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    if isinstance(value, dict):
        return {key: _plain(item, f"{field}.{key}" if field else str(key)) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item, f"{field}[{i}]") for i, item in enumerate(value)]
    if isinstance(value, (datetime.datetime, datetime.date, datetime.time)):
        return value.isoformat()
    if isinstance(value, datetime.timedelta):
        return value.total_seconds()
    if isinstance(value, (decimal.Decimal, uuid.UUID)):
        return str(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        try:
            return bytes(value).decode("utf-8")
        except UnicodeDecodeError:
            size = f"{len(value):,} byte{'s' if len(value) != 1 else ''}"
            raise _NotText(field, f"holds {size} of binary data that are not UTF-8 text",
                           "store text in a string column (or UTF-8 bytes), or leave this column out of the "
                           "file; sftune trains on text") from None
    if hasattr(value, "item"):  # a numpy scalar (e.g. float16)
        return _plain(value.item(), field)
    raise _NotText(field, f"holds a {type(value).__name__} value, which has no text form",
                   "store the value as a string or a number, or leave this column out of the file")


def _table_rows(batches: Iterable[Any], source: str) -> Iterator[tuple[int, Any]]:
    """The rows of Arrow record batches as JSON-ready records: a value that cannot be one rejects its row,
    naming the field. NaN (a missing float) is kept: a text field refuses it, a carried-along one
    becomes a counted null (formats.py)."""
    index = 0
    for batch in batches:
        if all(_json_type(kind) for kind in batch.schema.types):  # text, whole numbers and truth values only
            for row in batch.to_pylist():
                yield index, row
                index += 1
            continue
        for row in _batch_rows(batch):
            where = location("record", index)
            if isinstance(row, _NotText):
                row = DataError("bad_value", row.field, row.problem, row.fix, source=source, location=where)
            else:
                try:
                    row = _plain(row, "")
                except _NotText as err:
                    row = DataError("bad_value", err.field, err.problem, err.fix, source=source, location=where)
                else:
                    row = _bad_value_error(row, source, where, row, finite=False) or row
            yield index, row
            index += 1


def _json_type(kind: Any) -> bool:
    """An Arrow type whose values are JSON values as they are (no conversion, no NaN to look for)."""
    import pyarrow as pa

    if pa.types.is_list(kind) or pa.types.is_large_list(kind):
        return _json_type(kind.value_type)
    if pa.types.is_struct(kind):
        return all(_json_type(kind.field(i).type) for i in range(kind.num_fields))
    return (pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_integer(kind)
            or pa.types.is_boolean(kind) or pa.types.is_null(kind))


def _batch_rows(batch: Any) -> list[Any]:
    """A batch's rows as Python dicts; where a column's values have no Python form (a timestamp past the
    year 9999), that column is converted value by value and a value that fails stands for its row."""
    import pyarrow as pa

    try:
        return batch.to_pylist()
    except (pa.ArrowException, OverflowError, ValueError):
        pass
    rows: list[Any] = [{} for _ in range(batch.num_rows)]
    for name, column in zip(batch.schema.names, batch.columns):
        for i in range(batch.num_rows):
            if isinstance(rows[i], _NotText):
                continue
            try:
                rows[i][name] = column[i].as_py()
            except (pa.ArrowException, OverflowError, ValueError) as err:
                rows[i] = _NotText(name, f"holds a {column.type} value with no Python form ({type(err).__name__}: "
                                   f"{str(err)[:120]})", "store the value as a string, or leave this column out")
    return rows


def _arrow(path: Path) -> Iterator[tuple[int, Any]]:
    """An Arrow file as written by `datasets` (memory-mapped, not loaded)."""
    from datasets import Dataset

    yield from _arrow_rows(Dataset.from_file(str(path)), str(path))


def _datasets_folder(path: Path) -> Iterator[tuple[int, Any]]:
    """A Dataset save_to_disk folder (a DatasetDict folder is expanded into its splits first)."""
    from datasets import load_from_disk

    try:
        dataset = load_from_disk(str(path))
    except (KeyError, TypeError, AttributeError, IndexError) as err:  # a state.json that is not what datasets wrote
        raise DataError("unreadable_file", "", f"cannot be read as a datasets save_to_disk folder: its state.json or "
                        f"dataset_info.json is incomplete ({type(err).__name__}: {str(err)[:200]})",
                        "save the dataset again with save_to_disk, or read its .arrow files by name",
                        source=str(path)) from None
    yield from _arrow_rows(dataset, str(path))


def _hub(name: str) -> Iterator[tuple[int, Any]]:
    """A hub dataset's split (hub.py), loaded by `datasets` into its cache and memory-mapped from there."""
    yield from _arrow_rows(hub.load(str(name)), str(name))
