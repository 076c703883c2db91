"""Fuzzers at the data commands: random bytes, random JSON lines and random Parquet schemas as data files go
through `data check` (1 and 2 workers), `data convert` and encoding as `data encode` does it. Each ends in a
report whose counts add up (or one clean error, exit 2), never "looks like a bug" or a traceback; what convert
writes is standard JSON, one line per valid record."""

from __future__ import annotations

import datetime
import decimal
import gzip
import json
import tempfile
from pathlib import Path
from unittest import mock

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from sftune.cli import app
from sftune.data import Report, parallel, read
from tests.data.test_properties import records

runner = CliRunner()
FUZZ = settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def data(*args) -> tuple[int, str]:
    result = runner.invoke(app, ["data", *map(str, args)], env={"COLUMNS": "300"})
    said = result.output
    assert result.exit_code in (0, 2), (args, said, result.exception)
    assert "looks like a bug" not in said and "Traceback" not in said, (args, said)
    return result.exit_code, result.stdout


def adds_up(report: dict) -> None:
    assert report["total"] == report["valid"] + report["invalid"]
    for counts in report["files"].values():
        assert counts["total"] == counts["valid"] + counts["invalid"]


def through_the_commands(path: Path) -> None:
    """check --json with 1 and 2 workers (one report), convert (standard JSON, one line per valid record)."""
    with mock.patch.object(parallel, "MIN_BYTES_PER_JOB", 64):  # small files split over workers too
        checks = [data("check", path, "--json", "--sft", "--workers", n) for n in ("1", "2")]
    assert checks[0] == checks[1]
    code, stdout = checks[0]
    if code == 2:
        assert str(path) in json.loads(stdout)["error"]
        return
    report = json.loads(stdout)
    adds_up(report)
    out = path.parent / "out.jsonl"
    code, _ = data("convert", path, "-o", out, "--sft")
    assert code == 0
    # JSON Lines ends lines at "\n" only: a text may hold U+2028 or \x85 unescaped, which splitlines() cuts at
    lines = out.read_text(encoding="utf-8").split("\n")[:-1]
    for line in lines:
        json.loads(line, parse_constant=lambda name: pytest.fail(f"{name} written"))
    assert len(lines) == report["valid"]


def encodes(path: Path, tokenizer) -> None:
    """What `data encode` and training do with the valid records: every one encoded or skipped with a reason."""
    from sftune import templates
    from sftune.encode import EncodeOptions, encode_dataset

    report = Report()
    conversations = list(read(path, on_error="skip", report=report))
    assert report.total == report.valid + report.invalid and len(conversations) == report.valid
    with tempfile.TemporaryDirectory() as cache:
        _, encoded = encode_dataset(conversations, tokenizer, templates.get("chatml"), EncodeOptions(max_len=256),
                                    cache_dir=cache,
                                    progress=False, workers=1)
    assert encoded.encoded + encoded.skipped >= len(conversations) or not conversations


NAMES = ["d.jsonl", "d.json", "d.csv", "d.txt", "d.parquet", "d.arrow", "d.jsonl.gz", "dataset_info.json"]


@FUZZ
@given(name=st.sampled_from(NAMES), raw=st.binary(max_size=300) | st.sampled_from(
    [b"PAR1", b"PAR1\x00\x00PAR1", b"\xff\xfe{", b'{"a": 1}\n[', b"\x1f\x8b\x08", b'[{"instruction": "q", "output"']))
def test_random_bytes_under_any_name(name, raw):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / name
        path.write_bytes(gzip.compress(raw) if name.endswith(".gz") and raw[:1] == b"{" else raw)
        through_the_commands(path)


@FUZZ
@given(batch=st.lists(records, max_size=8), as_array=st.booleans())
def test_random_json_records_through_check_convert_and_encode(batch, as_array, smollm2_tokenizer):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / ("d.json" if as_array else "d.jsonl")
        text = json.dumps(batch) if as_array else "".join(json.dumps(record) + "\n" for record in batch)
        path.write_text(text, encoding="utf-8")
        through_the_commands(path)
        encodes(path, smollm2_tokenizer)


# Arrow types and Python values of each (None anywhere: a null).
EPOCH = datetime.datetime(1970, 1, 1)
PRIMITIVES = {
    "string": (pa.string(), st.text(max_size=12)),
    "large_string": (pa.large_string(), st.text(max_size=12)),
    "int64": (pa.int64(), st.integers(-(2**63), 2**63 - 1)),
    "int8": (pa.int8(), st.integers(-128, 127)),
    "float64": (pa.float64(), st.floats()),
    "float32": (pa.float32(), st.floats(width=32)),
    "bool": (pa.bool_(), st.booleans()),
    "binary": (pa.binary(), st.binary(max_size=12)),
    "timestamp": (pa.timestamp("us"), st.datetimes(min_value=datetime.datetime(1, 1, 1))),
    "timestamp_tz": (pa.timestamp("ms", tz="UTC"), st.datetimes(timezones=st.just(datetime.timezone.utc))),
    "date": (pa.date32(), st.dates()),
    "time": (pa.time64("us"), st.times()),
    "duration": (pa.duration("s"), st.timedeltas(min_value=datetime.timedelta(days=-999), max_value=datetime.timedelta(days=999)).map(lambda d: datetime.timedelta(seconds=int(d.total_seconds())))),
    "decimal": (pa.decimal128(12, 3), st.decimals(min_value=-(10**8), max_value=10**8, places=3, allow_nan=False)),
    "null": (pa.null(), st.none()),
}


def arrow_types(depth: int = 2):
    primitive = st.sampled_from(sorted(PRIMITIVES)).map(lambda name: PRIMITIVES[name])
    if not depth:
        return primitive
    inner = arrow_types(depth - 1)
    listed = inner.map(lambda t: (pa.list_(t[0]), st.lists(t[1], max_size=3)))
    structs = st.dictionaries(st.sampled_from(["role", "content", "value", "x"]), inner, min_size=1, max_size=3).map(
        lambda fields: (pa.struct([(k, t) for k, (t, _) in fields.items()]),
                        st.fixed_dictionaries({k: st.none() | v for k, (_, v) in fields.items()})))
    return primitive | listed | structs


COLUMNS = ["instruction", "output", "input", "messages", "text", "chosen", "rejected", "images", "meta", "x"]


@st.composite
def tables(draw):
    rows = draw(st.integers(0, 5))
    schema = draw(st.dictionaries(st.sampled_from(COLUMNS), arrow_types(), min_size=1, max_size=5))
    if draw(st.booleans()):  # often a readable alpaca record beside the random columns
        schema.update(instruction=PRIMITIVES["string"], output=PRIMITIVES["string"])
    columns = {name: pa.array([draw(st.none() | values) for _ in range(rows)], kind)
               for name, (kind, values) in schema.items()}
    return pa.table(columns)


@FUZZ
@given(table=tables(), arrow=st.booleans())
def test_random_parquet_and_arrow_schemas_through_check_convert_and_encode(table, arrow, smollm2_tokenizer):
    with tempfile.TemporaryDirectory() as folder:
        if arrow:
            path = Path(folder) / "d.arrow"
            with pa.ipc.new_stream(path, table.schema) as writer:  # the stream format datasets writes
                writer.write_table(table)
        else:
            path = Path(folder) / "d.parquet"
            pq.write_table(table, path)
        through_the_commands(path)
        encodes(path, smollm2_tokenizer)
