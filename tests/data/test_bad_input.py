"""The bad-input matrix through the command line: every kind in every mode names the file, the
record or line, the field and a fix, never crashes, and total = valid + invalid."""

from __future__ import annotations

import bz2
import gzip
import json
import lzma
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sftune.cli import app
from sftune.data import read

runner = CliRunner()
GOOD = {"instruction": "Say hi.", "output": "Hi!"}
G = json.dumps(GOOD).encode() + b"\n"
M = json.dumps({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}).encode() + b"\n"


def j(record) -> bytes:
    return json.dumps(record).encode() + b"\n"


def msgs(*pairs, **extra) -> dict:
    return {"messages": [{"role": r, "content": c} for r, c in pairs], **extra}


def gz_cut(data: bytes) -> bytes:
    packed = gzip.compress(data)
    return packed[: len(packed) - 30]


TOOLS = [{"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}}}]


def tool_turn(*results) -> dict:
    """Two parallel calls (ids c1: city A, c2: city B) and the tool results given, as (tool_call_id, text)."""
    calls = [{"id": f"c{k}", "type": "function", "function": {"name": "weather", "arguments": json.dumps({"city": c})}}
             for k, c in ((1, "A"), (2, "B"))]
    return {"messages": [{"role": "user", "content": "Weather in A and B?"},
                         {"role": "assistant", "content": None, "tool_calls": calls},
                         *({"role": "tool", "tool_call_id": i, "content": text} for i, text in results),
                         {"role": "assistant", "content": "A is sunny, B is rainy."}], "tools": TOOLS}


LONG = b"".join(j({"instruction": f"q{i}", "output": f"a{i}"}) for i in range(200))

# (kind, file name, bytes, valid, invalid, texts the report must hold: the field / problem and the fix)
MATRIX = [
    ("broken-json-line", "d.jsonl", G + b'{"instruction": "x", "output": "y" "z"}\n', 1, 1, ["line 2", "not valid JSON", "fix or remove"]),
    ("cut-off-line", "d.jsonl", G + b'{"instruction": "x", "output": ', 1, 1, ["line 2", "cut off", "fix or remove"]),
    ("invalid-utf8-line", "d.jsonl", G + b'{"instruction": "caf\xe9", "output": "ok"}\n', 1, 1, ["line 2", "UTF-8", "iconv"]),
    ("not-an-object", "d.jsonl", G + j([1, 2]), 1, 1, ["line 2", "is a list", "one JSON object"]),
    ("unknown-format", "d.jsonl", j({"foo": "bar"}), 0, 1, ["line 1", "foo", "--format"]),
    ("missing-output", "d.jsonl", G + j({"instruction": "x"}), 1, 1, ["line 2", "output is missing", "add a 'output'"]),
    ("number-reply", "d.jsonl", G + j({"instruction": "2+2?", "output": 4}), 1, 1, ["line 2", "output is an int", "in quotes"]),
    ("nan-reply", "d.jsonl", G + b'{"instruction": "x", "output": NaN}\n', 1, 1, ["line 2", "output", "NaN"]),
    ("infinity-extra-field", "d.jsonl", G + b'{"instruction": "x", "output": "y", "score": Infinity}\n', 1, 1, ["line 2", "score", "null"]),
    ("negative-weight", "d.jsonl", G + j({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a", "weight": -1}]}), 1, 1, ["line 2", "messages[1].weight", ">= 0"]),
    ("nan-weight", "d.jsonl", G + b'{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a", "weight": NaN}]}\n', 1, 1, ["line 2", "messages[1].weight", "null"]),
    ("lone-surrogate", "d.jsonl", G + b'{"instruction": "x\\ud800", "output": "y"}\n', 1, 1, ["line 2", "instruction", "surrogate"]),
    ("deep-nesting", "d.jsonl", G + b"[" * 10_000 + b"]" * 10_000 + b"\n", 1, 1, ["line 2", "too deeply", "fix or remove"]),
    ("huge-integer", "d.jsonl", G + b'{"instruction": "x", "output": ' + b"9" * 5000 + b"}\n", 1, 1, ["line 2", "4,300 digits", "fix or remove"]),
    ("tool-calls-string", "d.jsonl", G + j(msgs(("user", "q")) | {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "tool_calls": "call f"}]}), 1, 1, ["line 2", "messages[1].tool_calls", "as a list"]),
    ("tool-result-unknown-id", "d.jsonl", G + j(tool_turn(("c2", "B: rain"), ("c9", "A: sun"))), 1, 1, ["line 2", "messages[3].tool_call_id", "'c9'", "tool_call_id of the call"]),
    ("tool-call-without-result", "d.jsonl", G + j(tool_turn(("c2", "B: rain"))), 1, 1, ["line 2", "messages[1].tool_calls[0]", "has no result", "add its result"]),
    ("tool-calls-number", "d.jsonl", G + j({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "tool_calls": 5}]}), 1, 1, ["line 2", "messages[1].tool_calls", "as a list"]),
    ("role-upper-case", "d.jsonl", G + j({"messages": [{"role": "USER", "content": "q"}, {"role": "assistant", "content": "a"}]}), 1, 1, ["line 2", "messages[0].role", "--roles USER=user"]),
    ("role-human-capital", "d.jsonl", G + j({"conversations": [{"from": "Human", "value": "q"}, {"from": "gpt", "value": "a"}]}), 1, 1, ["line 2", "conversations[0].role", "--roles Human=user"]),
    ("role-typo", "d.jsonl", G + j({"messages": [{"role": "humna", "content": "q"}, {"role": "assistant", "content": "a"}]}), 1, 1, ["line 2", "'humna'", "--roles humna=user"]),
    ("role-unknown", "d.jsonl", G + j({"messages": [{"role": "user", "content": "q"}, {"role": "bot", "content": "a"}]}), 1, 1, ["line 2", "'bot'", "--roles bot=assistant"]),
    ("empty-reply", "d.jsonl", G + j({"instruction": "x", "output": "  "}), 1, 1, ["line 2", "empty assistant reply", "write the reply"]),
    ("not-alternating", "d.jsonl", G + j(msgs(("user", "a"), ("user", "b"), ("assistant", "c"))), 1, 1, ["line 2", "messages[1]", "merge the two"]),
    ("no-assistant", "d.jsonl", G + j(msgs(("user", "a"))), 1, 1, ["line 2", "no assistant turn", "add the assistant"]),
    ("multimodal-images", "d.jsonl", G + j({"messages": [{"role": "user", "content": "<image>What is it?"}, {"role": "assistant", "content": "A cat."}], "images": ["cat.png"]}), 1, 1, ["line 2", "images[0]", "does not exist"]),
    ("preference-pair", "d.jsonl", j({"prompt": "q", "chosen": "a", "rejected": "b"}), 0, 1, ["line 1", "preference", "DPO"]),
    ("history-not-pairs", "d.jsonl", G + j({**GOOD, "history": [["q"]]}), 1, 1, ["line 2", "history[0]", "[question, answer] pair"]),
    ("image-content-part", "d.jsonl", G + j({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}, {"role": "assistant", "content": "a"}]}), 1, 1, ["line 2", "images[0]", "does not exist"]),
    ("pretty-json-as-jsonl", "d.jsonl", json.dumps([GOOD, GOOD], indent=2).encode(), 2, 0, ["d.jsonl", "rename it to .json"]),
    ("truncated-json-array", "d.json", json.dumps([GOOD] * 5, indent=1).encode()[:-40], 4, 1, ["record 4", "cut off", "re-create"]),
    ("broken-json-array", "d.json", b'[\n' + G + b',\n{"instruction": "c" "output": "d"}\n]', 1, 1, ["record 1", "Expecting", "fix the JSON"]),
    ("json-scalar-file", "d.json", b"42", 0, 1, ["d.json", "holds a JSON int", "JSON array"]),
    ("utf16-jsonl", "d.jsonl", (G * 3).decode().encode("utf-16"), 3, 0, ["d.jsonl", "alpaca"]),
    ("utf16-csv-no-bom", "d.csv", "instruction,output\nq,a\nq2,a2\n".encode("utf-16-le"), 2, 0, ["d.csv", "alpaca"]),
    ("csv-unclosed-quote", "d.csv", b'instruction,output\nq1,a1\nq2,"a2\nq3,a3\nq4,a4\n', 3, 1, ["line 3", "never closes", "close the quote"]),
    ("csv-stray-quote", "d.csv", b'instruction,output\nq1,"a1"x\nq2,a2\n', 1, 1, ["line 2", "cannot be parsed", "double a quote"]),
    ("csv-latin1-byte", "d.csv", b'instruction,output\nq1,a1\ncaf\xe9,a2\nq3,a3\n', 2, 1, ["line 3", "instruction", "iconv"]),
    ("csv-too-many-cells", "d.csv", b'instruction,output\nq1,a1\nq2,a,2\n', 1, 1, ["line 3", "3 cells", "quote cells"]),
    ("csv-missing-column", "d.csv", b'instruction,output\nq1,a1\nq2\n', 1, 1, ["line 3", "output is missing", "add a 'output'"]),
    ("gzip-plain-text", "d.json.gz", json.dumps([GOOD]).encode(), 0, 1, ["d.json.gz", "cannot be read", "re-create"]),
    ("bz2-plain-text", "d.jsonl.bz2", G, 0, 1, ["d.jsonl.bz2", "cannot be read", "re-create"]),
    ("gzip-cut-off", "d.jsonl.gz", LONG, None, 1, ["d.jsonl.gz", "cut off", "re-download"]),
    ("xz-cut-off", "d.jsonl.xz", LONG, None, 1, ["d.jsonl.xz", "cut off", "re-download"]),
    ("corrupt-parquet", "d.parquet", b"PAR1 this is not parquet at all PAR1", 0, 1, ["d.parquet", "Parquet", "corrupt"]),
    ("corrupt-arrow", "d.arrow", b"not an arrow file", 0, 1, ["d.arrow", "Arrow", "corrupt"]),
    ("empty-file", "d.jsonl", b"", 0, 0, ["no records"]),
    ("blank-lines-only", "d.jsonl", b"\n\n  \n", 0, 0, ["no records"]),
    ("too-long", "d.jsonl", G + j({"instruction": "x" * 600, "output": "y"}), 1, 1, ["line 2", "over the limit of 500", "--max-chars"]),
]
MAX_CHARS = {"too-long": ["--max-chars", "500"]}
# `data check` and `data convert` read a file of pairs alone as preference data; --sft reads it as SFT data (refused,
# with the hint).
CHECK_AS = {"preference-pair": ["--sft"]}


def write(tmp_path, name, data, kind):
    path = tmp_path / name
    if data.startswith(G) and data[len(G):].startswith((b'{"messages"', b'{"conversations"')):
        data = M + data[len(G):]  # one format per file: the good record in the bad one's format
    if kind in ("gzip-cut-off",):
        data = gz_cut(data)
    elif kind == "xz-cut-off":
        data = lzma.compress(data)[:-60]
    elif name.endswith(".gz") and kind != "gzip-plain-text":
        data = gzip.compress(data)
    elif name.endswith(".bz2") and kind != "bz2-plain-text":
        data = bz2.compress(data)
    path.write_bytes(data)
    return path


def invoke(*args):
    return runner.invoke(app, ["data", *map(str, args)], env={"COLUMNS": "400"})


def counts_add_up(report, valid, invalid):
    assert report["total"] == report["valid"] + report["invalid"]
    assert report["invalid"] == invalid
    if valid is not None:
        assert report["valid"] == valid
    for counts in report["files"].values():
        assert counts["total"] == counts["valid"] + counts["invalid"]


IDS = [m[0] for m in MATRIX]


def test_the_matrix_has_40_kinds_or_more():
    assert len(set(IDS)) == len(IDS) >= 40


@pytest.mark.parametrize("kind, name, data, valid, invalid, texts", MATRIX, ids=IDS)
def test_check_json_strict_and_quarantine(tmp_path, kind, name, data, valid, invalid, texts):
    path = write(tmp_path, name, data, kind)
    extra = MAX_CHARS.get(kind, []) + CHECK_AS.get(kind, [])
    result = invoke("check", path, "--json", *extra)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    counts_add_up(report, valid, invalid)
    shown = json.dumps(report["examples"]) + json.dumps(report["notes"])
    if invalid:
        assert str(path) in shown
        for text in texts:
            assert text in shown, (text, shown)
    human = invoke("check", path, *extra)
    assert human.exit_code == 0 and "Traceback" not in human.output
    for text in texts:
        assert text in human.output.replace("\n", ""), (text, human.output)
    strict = invoke("check", path, "--strict", "--json", *extra)
    assert strict.exit_code == (1 if invalid or not report["total"] else 0)
    quarantine = tmp_path / "rejected" / "q.jsonl"
    assert invoke("check", path, "--quarantine", quarantine, *extra).exit_code == 0
    rejected = strict_lines(quarantine)
    assert len(rejected) == invalid
    assert all(r["source"] == str(path) and r["reason"] and r["error"] for r in rejected)


@pytest.mark.parametrize("kind, name, data, valid, invalid, texts", MATRIX, ids=IDS)
def test_convert_and_train_reading_keep_every_valid_record(tmp_path, kind, name, data, valid, invalid, texts):
    from sftune.data import Report

    path = write(tmp_path, name, data, kind)
    out = tmp_path / "out.jsonl"
    result = invoke("convert", path, "-o", out, *MAX_CHARS.get(kind, []), *CHECK_AS.get(kind, []))
    assert result.exit_code == 0, result.output
    written = out.read_text().splitlines()
    for line in written:
        json.loads(line, parse_constant=lambda name: pytest.fail(f"non-standard JSON {name} written"))
    rejected = (tmp_path / "out.jsonl.rejected.jsonl").read_text().splitlines()
    assert len(rejected) == invalid
    if valid is not None:
        assert len(written) == valid
    report = Report()  # what `sftune train` with data.on_error: skip reads
    kept = list(read(path, on_error="skip", report=report, max_chars=500 if kind in MAX_CHARS else 1_000_000))
    assert len(kept) == len(written) == report.valid and report.total == report.valid + report.invalid


def test_output_that_is_an_input_is_refused_before_anything_is_written(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_bytes(G + b"{broken\n")
    before = path.read_bytes()
    for args in (["check", path, "--quarantine", path], ["convert", path, "-o", path],
                 ["convert", path, "-o", tmp_path / "o.jsonl", "--quarantine", path]):
        result = invoke(*args)
        assert result.exit_code == 2 and "destroy" in result.output
        assert path.read_bytes() == before


def test_same_report_for_any_worker_count_on_a_mixed_file(tmp_path, monkeypatch):
    from sftune.data import check, parallel

    path = tmp_path / "mixed.jsonl"
    openai = j(msgs(("user", "q"), ("assistant", "a")))
    path.write_bytes(G + openai * 1500)
    monkeypatch.setattr(parallel, "MIN_BYTES_PER_JOB", 2000)
    reports = [check(path, workers=n).to_dict() for n in (1, 2, 4)]
    assert reports[0] == reports[1] == reports[2]
    assert (reports[0]["valid"], reports[0]["invalid"]) == (1, 1500)  # the file reads as alpaca, from its first record
    assert len(parallel._jobs(parallel.prepare(path), 2)) > 2


def test_json_error_object_on_a_fatal_error(tmp_path):
    result = invoke("check", tmp_path / "missing.jsonl", "--json")
    assert result.exit_code == 2 and "missing.jsonl" in json.loads(result.stdout)["error"]


def test_max_chars_must_be_positive(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_bytes(G)
    assert invoke("check", path, "--max-chars", "-5").exit_code == 2


def test_library_fix_uses_library_syntax(tmp_path):
    from sftune.data import check

    path = tmp_path / "d.jsonl"
    path.write_bytes(j({"messages": [{"role": "USER", "content": "q"}, {"role": "assistant", "content": "a"}]}))
    assert "roles={'USER': 'user'}" in check(path).examples["unknown_role"]


def sftune(*args, cwd=None, timeout=120):
    return subprocess.run([sys.executable, "-m", "sftune", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=timeout)


@pytest.mark.parametrize("command", [["data", "check"], ["data", "convert", "-o", "OUT"], ["data", "stats"]])
def test_missing_and_unreadable_files_give_one_message(tmp_path, command):
    out = str(tmp_path / "out.jsonl")
    args = [out if a == "OUT" else a for a in command]
    missing = sftune(*args, tmp_path / "nope.jsonl")
    assert missing.returncode == 2 and "nope.jsonl" in missing.stderr and "Traceback" not in missing.stderr
    broken = tmp_path / "x.json.gz"
    broken.write_bytes(b"not gzip")
    unreadable = sftune(*args, broken)
    assert "Traceback" not in unreadable.stderr + unreadable.stdout and "x.json.gz" in unreadable.stdout + unreadable.stderr


def test_train_with_a_missing_data_file_or_a_bad_config_gives_one_message(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("data:\n  train: [nope.jsonl]\n  on_error: skip\n")
    missing = sftune("train", config, cwd=tmp_path)
    assert missing.returncode == 2 and "nope.jsonl" in missing.stderr and "Traceback" not in missing.stderr
    config.write_text("data: {train: [x.jsonl], on_eror: skip}\n")
    bad = sftune("train", config, cwd=tmp_path)
    said = bad.stdout + bad.stderr
    assert bad.returncode == 2 and "on_eror" in said and "Traceback" not in said


def test_encode_skips_counts_and_names_bad_records_of_every_kind(tmp_path):
    kinds = ["lone-surrogate", "broken-json-line", "number-reply", "nan-reply", "deep-nesting", "role-upper-case",
             "tool-calls-string", "multimodal-images"]
    rows = {m[0]: m for m in MATRIX}
    unique = {"instruction": f"Run {tmp_path.name}.", "output": "ok"}  # a fresh cache fingerprint each run
    bad = [rows[kind][2][len(G):] if rows[kind][2].startswith(G) else rows[kind][2] for kind in kinds]
    alpaca = [line for line in bad if not line.startswith((b'{"messages"', b'{"conversations"'))]
    path = tmp_path / "mixed.jsonl"
    path.write_bytes(j(unique) + b"".join(alpaca) + G)
    result = runner.invoke(app, ["data", "encode", str(path), "--template", "chatml"], env={"COLUMNS": "400"})
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output
    assert f"records: {len(alpaca) + 2}   encoded: 2" in result.output
    assert f"rejected at reading: {len(alpaca)}" in result.output and str(path) in result.output


# --- bounds: special files refused by name, one record and one unpacked file within limits -----------------


def special_file(tmp_path, kind):
    """A path that is no regular file: a FIFO, a device, a symbolic link loop or a dangling link."""
    import os

    if kind.startswith("/dev/"):
        return kind
    path = tmp_path / "d.jsonl"
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "symlink-loop":
        os.symlink(path.name, path)
    else:
        os.symlink("nowhere.jsonl", path)
    return path


SPECIAL = {"fifo": "FIFO (named pipe)", "/dev/zero": "character device", "/dev/urandom": "character device",
           "symlink-loop": "symbolic link loop", "dangling-symlink": "does not exist"}


@pytest.mark.parametrize("kind", list(SPECIAL))
def test_special_files_are_refused_by_name_before_reading(tmp_path, kind):
    path = special_file(tmp_path, kind)
    out = tmp_path / "out.jsonl"
    runs = [["data", "check", path, "--json"], ["data", "convert", path, "-o", out]]
    if kind in ("fifo", "symlink-loop"):
        runs += [["data", "check", path, "--strict", "--workers", "2"], ["data", "stats", path]]
    for args in runs:
        result = sftune(*args, timeout=60)  # a FIFO or a device read on would never end
        said = result.stdout + result.stderr
        assert result.returncode == 2, (args, said)
        assert str(path) in said and SPECIAL[kind] in said and "Traceback" not in said, said
    assert not out.exists()


def test_a_fifo_among_data_files_in_a_folder_is_refused_and_train_does_not_hang(tmp_path):
    import os

    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "a.jsonl").write_bytes(G)
    os.mkfifo(folder / "b.jsonl")
    result = sftune("data", "check", folder, timeout=60)
    assert result.returncode == 2 and "b.jsonl" in result.stderr and "FIFO" in result.stderr
    config = tmp_path / "c.yaml"
    config.write_text(f"data:\n  train: [{folder / 'b.jsonl'}]\ntrain:\n  max_steps: 1\n")
    train = sftune("train", config, timeout=120)
    said = (train.stdout + train.stderr).replace("\n", "")
    assert train.returncode == 2 and "b.jsonl" in said and "FIFO" in said, said


def test_an_output_that_is_a_folder_is_refused_before_reading(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_bytes(G)
    (tmp_path / "out").mkdir()
    result = invoke("convert", path, "-o", tmp_path / "out")
    assert result.exit_code == 2 and "is a folder" in result.output
    assert list((tmp_path / "out").iterdir()) == []


def bounded_reports(path, *args):
    """check --json with 1 and 2 workers (the same report), --strict, and convert's rejections."""
    reports = []
    for workers in ("1", "2"):
        result = invoke("check", path, "--json", "--workers", workers, *args)
        assert result.exit_code == 0, result.output
        reports.append(json.loads(result.stdout))
    assert reports[0] == reports[1]
    counts_add_up(reports[0], None, reports[0]["invalid"])
    assert invoke("check", path, "--strict", *args).exit_code == 1
    return reports[0]


def test_a_gzip_bomb_stops_at_the_unpacked_limit_keeping_the_records_before(tmp_path):
    path = tmp_path / "bomb.jsonl.gz"
    path.write_bytes(gzip.compress(G * 1000 + b"\0" * (8 << 20)))  # 8 MiB of zeros: one line that never ends
    report = bounded_reports(path, "--max-unpacked-gb", "0.002")
    assert (report["valid"], report["invalid"], list(report["reasons"])) == (1000, 1, ["too_large"])
    said = report["examples"]["too_large"]
    assert str(path) in said and "0.002 GiB" in said and "--max-unpacked-gb" in said


def test_a_bz2_bomb_stops_at_the_ratio_limit(tmp_path):
    path = tmp_path / "bomb.jsonl.bz2"
    path.write_bytes(bz2.compress(G + b"\n" * (24 << 20)))  # millions to one, blank lines only
    report = bounded_reports(path, "--max-ratio", "100")
    assert (report["valid"], report["invalid"]) == (1, 1)
    assert str(path) in report["examples"]["too_large"] and "--max-ratio" in report["examples"]["too_large"]


@pytest.mark.parametrize("name", ["d.jsonl", "d.jsonl.gz", "d.txt", "d.csv"])
def test_one_over_long_line_is_rejected_by_its_line_and_read_past(tmp_path, name):
    path = tmp_path / name
    line = b'{"instruction": "' + b"x" * 40_000 + b'", "output": "y"}\n'
    data = G + line + G
    if name == "d.csv":
        data = b"instruction,output\nq,a\n" + b"x" * 40_000 + b",y\nq2,a2\n"
    path.write_bytes(gzip.compress(data) if name.endswith(".gz") else data)
    report = bounded_reports(path, "--max-record-mb", "0.01")
    said = report["examples"]["too_large"]
    assert f"line {3 if name == 'd.csv' else 2}" in said and "--max-record-mb" in said and str(path) in said
    valid = 1 if name == "d.csv" else 2  # a CSV row may span lines: the file is not read on past it
    assert (report["valid"], report["invalid"]) == (valid, 1)
    out = tmp_path / "out.jsonl"
    assert invoke("convert", path, "-o", out, "--max-record-mb", "0.01").exit_code == 0
    assert len(out.read_text().splitlines()) == valid


def test_an_over_long_line_gives_the_same_counts_for_any_worker_count(tmp_path, monkeypatch):
    from sftune.data import check, files, parallel

    path = tmp_path / "long.jsonl"
    path.write_bytes(G * 300 + b"[" * 50_000 + b"\n" + G * 300)
    monkeypatch.setattr(parallel, "MIN_BYTES_PER_JOB", 2000)
    with files.reading_limits(record_mb=0.01):
        reports = [check(path, workers=n).to_dict() for n in (1, 2, 4)]
    assert reports[0] == reports[1] == reports[2]
    assert (reports[0]["valid"], reports[0]["invalid"], list(reports[0]["reasons"])) == (600, 1, ["too_large"])


def test_encode_skips_a_conversation_of_too_many_turns_with_a_counted_reason(tmp_path):
    path = tmp_path / "turns.jsonl"
    many = msgs(*[("user" if i % 2 == 0 else "assistant", f"t{i} {tmp_path.name}") for i in range(400)])
    path.write_bytes(j(many) + j(msgs(("user", f"q {tmp_path.name}"), ("assistant", "a"))))
    result = runner.invoke(app, ["data", "encode", str(path), "--template", "chatml", "--max-turns", "100"],
                           env={"COLUMNS": "400"})
    assert result.exit_code == 0, result.output
    assert "records: 2   encoded: 1" in result.output and "skipped: 1" in result.output
    assert "too_many_turns" in result.output and f"{path}:1" in result.output and "400 messages" in result.output


def test_a_config_nested_20000_levels_is_a_config_error_naming_the_file(tmp_path):
    config = tmp_path / "deep.yaml"
    config.write_text("data:\n  train: " + "[" * 20_000 + "]" * 20_000 + "\n")
    result = sftune("train", config)
    said = (result.stdout + result.stderr).replace("\n", "")
    assert result.returncode == 2 and str(config) in said and "too deeply" in said and "Traceback" not in said, said


# --- nothing dropped or re-paired silently: parallel tool results by id, fields not kept counted, image paths ----


def nan_parquet() -> bytes:
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    buffer = io.BytesIO()  # pandas writes a missing float as NaN
    pq.write_table(pa.table({"instruction": ["q", "q2"], "output": ["a", "a2"], "score": [float("nan"), 0.5]}), buffer)
    return buffer.getvalue()


NAN_TOOLS = '[{"name": "weather", "parameters": {"type": "object", "default": NaN}}]'  # JSON text: NaN unseen by the reader
# (kind, file name, bytes, copies of the record, what the report counts per copy)
NOT_KEPT = [
    ("per-message-name", "d.jsonl", j({"messages": [{"role": "user", "content": "q", "name": "ann"},
                                                   {"role": "assistant", "content": "a", "name": "bot"}]}), 300,
     {"name (per-message field)": 2}),
    ("second-format", "d.jsonl", j({**msgs(("user", "q"), ("assistant", "a")), "instruction": "q2", "output": "a2"}), 300,
     {"instruction (second format alpaca, not trained; kept in meta.extra)": 1,
      "output (second format alpaca, not trained; kept in meta.extra)": 1}),
    ("two-conversation-lists", "d.jsonl", j({**msgs(("user", "q"), ("assistant", "a")),
                                              "conversations": [{"from": "human", "value": "q2"},
                                                                {"from": "gpt", "value": "a2"}]}), 300,
     {"conversations (given beside messages, which is read: not trained; kept in meta.extra)": 1}),
    ("pair-with-two-prompts", "d.jsonl", j({"prompt": "q", "instruction": "q2", "input": "i2", "chosen": "a",
                                            "rejected": "b"}), 300,
     {"instruction (given beside prompt, which is read: not trained; kept in meta.extra)": 1,
      "input (given beside prompt, which is read: not trained; kept in meta.extra)": 1}),
    ("duplicate-csv-column", "d.csv", b"instruction,output,output\nq,a,b\n", 1,
     {"output (duplicate CSV column 3, kept in meta.extra)": 1}),
    ("nan-parquet-column", "d.parquet", nan_parquet(), 1, {"meta.extra.score (NaN / Infinity written as null)": 1}),
    ("nan-in-tools-text", "d.jsonl", j({**msgs(("user", "q"), ("assistant", "a")), "tools": NAN_TOOLS}), 300,
     {"tools[0].parameters.default (NaN / Infinity written as null)": 1}),
]


def repeated(tmp_path, name, data, copies):
    path = tmp_path / name
    path.write_bytes(data if copies == 1 else data * copies)
    return path


def strict_lines(path) -> list:
    """Every line of a written file, parsed by a strict JSON parser (no NaN / Infinity)."""
    return [json.loads(line, parse_constant=lambda name: pytest.fail(f"non-standard JSON {name} written"))
            for line in path.read_text().splitlines()]


def same_for_1_and_2_workers(path, monkeypatch) -> dict:
    from sftune.data import parallel

    monkeypatch.setattr(parallel, "MIN_BYTES_PER_JOB", 2000)  # JSONL of over 4 kB is read in ranges
    reports = [json.loads(invoke("check", path, "--json", "--workers", n).stdout) for n in ("1", "2")]
    assert reports[0] == reports[1]
    counts_add_up(reports[0], None, reports[0]["invalid"])
    return reports[0]


@pytest.mark.parametrize("kind, name, data, copies, dropped", NOT_KEPT, ids=[c[0] for c in NOT_KEPT])
def test_fields_not_kept_are_counted_per_name_and_the_output_is_strict_json(tmp_path, monkeypatch, kind, name, data,
                                                                             copies, dropped):
    path = repeated(tmp_path, name, data, copies)
    report = same_for_1_and_2_workers(path, monkeypatch)
    assert report["invalid"] == 0
    assert report["dropped"] == {key: count * copies for key, count in dropped.items()}
    human = invoke("check", path)
    said = human.output.replace("\n", "")
    assert human.exit_code == 0 and "not kept as given:" in said
    for key in dropped:
        assert f"{key.split(' (')[0]} x{dropped[key] * copies:,}" in said, said
    out = tmp_path / "out" / "o.jsonl"
    converted = invoke("convert", path, "-o", out)
    assert converted.exit_code == 0 and "not kept as given:" in converted.output.replace("\n", "")
    assert len(strict_lines(out)) == report["valid"]


def test_parallel_tool_results_out_of_order_are_matched_by_id(tmp_path, monkeypatch):
    from sftune import templates
    from sftune.data import read

    path = repeated(tmp_path, "d.jsonl", j(tool_turn(("c2", "B: rain"), ("c1", "A: sun"))), 40)
    report = same_for_1_and_2_workers(path, monkeypatch)
    assert (report["valid"], report["invalid"]) == (40, 0)
    tools = json.loads(invoke("check", path, "--tools", "--json").stdout)["tools"]
    assert not any(kind["count"] for kind in tools["kinds"].values())
    out = tmp_path / "o.jsonl"
    assert invoke("convert", path, "-o", out, "--to", "openai").exit_code == 0
    messages = strict_lines(out)[0]["messages"]
    assert [c["id"] for c in messages[1]["tool_calls"]] == ["c1", "c2"]
    assert [(m["tool_call_id"], m["content"]) for m in messages[2:4]] == [("c1", "A: sun"), ("c2", "B: rain")]
    conversation = next(iter(read(path)))  # templates pair results by position: the calls' order
    text = templates.get("qwen").render(conversation, tools=TOOLS)
    assert text.index("A: sun") < text.index("B: rain")


def test_converted_image_paths_name_the_same_images_from_the_output_folder(tmp_path, monkeypatch):
    from PIL import Image

    (tmp_path / "data" / "images").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(tmp_path / "data" / "images" / "cat.png")
    absolute = tmp_path / "dog.png"
    Image.new("RGB", (8, 8)).save(absolute)
    record = {"messages": [{"role": "user", "content": "<image><image>What are they?"},
                           {"role": "assistant", "content": "A cat and a dog."}], "images": ["images/cat.png", str(absolute)]}
    (tmp_path / "data" / "d.jsonl").write_bytes(j(record))
    monkeypatch.chdir(tmp_path)  # the data file named by a relative path, as users do
    for style in ("messages", "sharegpt"):
        out = Path("out") / style / "o.jsonl"
        assert invoke("convert", "data/d.jsonl", "-o", out, "--to", style).exit_code == 0
        assert strict_lines(out)[0]["images"] == [str(Path("..", "..", "data", "images", "cat.png")), str(absolute)]
        again = json.loads(invoke("check", out, "--json").stdout)
        assert (again["valid"], again["images"]) == (1, 2), again["examples"]


def test_a_rejected_parquet_record_with_nan_is_quarantined_as_strict_json(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "d.parquet"
    pq.write_table(pa.table({"instruction": ["q", "q2"], "output": ["a", None], "score": [0.5, float("nan")]}), path)
    out = tmp_path / "o.jsonl"
    assert invoke("convert", path, "-o", out).exit_code == 0
    (rejected,) = strict_lines(tmp_path / "o.jsonl.rejected.jsonl")
    assert rejected["field"] == "output" and rejected["record"]["score"] is None
    assert len(strict_lines(out)) == 1


# --- readers: Parquet / Arrow values of any type, datasets folders, dataset_info.json, images, pairs ---------


def test_parquet_timestamp_decimal_and_binary_columns_become_text_or_reject_their_row(tmp_path):
    import datetime
    import decimal

    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "typed.parquet"
    pq.write_table(pa.table({
        "instruction": ["q0", "q1", "q2"], "output": ["a0", "a1", "a2"],
        "at": pa.array([datetime.datetime(2024, 1, 2, 3, 4, 5)] * 3, pa.timestamp("us")),
        "price": pa.array([decimal.Decimal("1.50")] * 3, pa.decimal128(5, 2)),
        "blob": pa.array([b"text", b"\xff", None], pa.binary()),
    }), path)
    report = bounded_reports(path)
    assert (report["valid"], report["invalid"], list(report["reasons"])) == (2, 1, ["bad_value"])
    said = report["examples"]["bad_value"]
    assert f"{path} record 1" in said and "blob" in said and "not UTF-8 text" in said and "string column" in said
    assert "holds 1 byte of binary data" in said, said
    out = tmp_path / "out.jsonl"
    for command in (["convert", path, "-o", out], ["dedup", path, "-o", out]):
        result = invoke(*command)
        assert result.exit_code == 0, result.output
    kept = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["meta"]["extra"] for r in kept] == [
        {"at": "2024-01-02T03:04:05", "price": "1.50", "blob": "text"}, {"at": "2024-01-02T03:04:05", "price": "1.50",
                                                                       "blob": None}]
    encoded = runner.invoke(app, ["data", "encode", str(path), "--template", "chatml"], env={"COLUMNS": "400"})
    assert encoded.exit_code == 0 and "encoded: 2" in encoded.output, encoded.output


def test_a_timestamp_past_year_9999_rejects_its_row_naming_the_field(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "far.parquet"
    at = pa.array([0, 2**60], pa.int64()).cast(pa.timestamp("ms"))
    pq.write_table(pa.table({"instruction": ["q", "q"], "output": ["a", "b"], "at": at}), path)
    report = bounded_reports(path)
    assert (report["valid"], report["invalid"]) == (1, 1)
    assert f"{path} record 1: at holds a timestamp" in report["examples"]["bad_value"]


def saved_dataset_dict(tmp_path):
    from datasets import Dataset, DatasetDict

    folder = tmp_path / "saved"
    DatasetDict({"train": Dataset.from_dict({"instruction": ["q"], "output": ["a"]})}).save_to_disk(str(folder))
    return folder


@pytest.mark.parametrize("broken", ["no-splits", "split-folder-gone", "state-json-empty"])
def test_a_datasets_folder_without_its_splits_gets_a_clear_error(tmp_path, broken):
    import shutil

    folder = saved_dataset_dict(tmp_path)
    assert invoke("check", folder, "--json").exit_code == 0  # as saved, it reads
    if broken == "no-splits":
        (folder / "dataset_dict.json").write_text("{}")
        texts = [str(folder / "dataset_dict.json"), "splits is missing", str(folder / "train")]
    elif broken == "split-folder-gone":
        shutil.rmtree(folder / "train")
        texts = [str(folder / "dataset_dict.json"), "lists 'train'", "save the dataset again"]
    else:
        (folder / "train" / "state.json").write_text("{}")
        texts = [str(folder / "train"), "save_to_disk folder", "save the dataset again"]
    out = tmp_path / "out.jsonl"
    for command in (["check", folder, "--json"], ["check", folder, "--strict"], ["convert", folder, "-o", out],
                    ["dedup", folder, "-o", out], ["stats", folder]):
        result = invoke(*command)
        said = result.output.replace("\n", "")
        assert result.exit_code in ((0, 1) if broken == "state-json-empty" else (2,)), (command, said)
        assert all(text in said for text in texts) and "looks like a bug" not in said, (command, said)


@pytest.mark.parametrize("info, texts", [
    ([{"file_name": "x.json"}], ["holds a JSON list", "file_name"]),
    ({"a": "x.json"}, ["a is str", "an object"]),
    ({"a": {"file_name": 5}}, ["a.file_name is int", "file_name is a path"]),
    ({"a": {"file_name": "x.json", "columns": ["prompt"]}}, ["a.columns is list", "columns and tags objects"]),
    ({"a": {"file_name": "x.json", "formatting": "chatml"}}, ["a.formatting is str 'chatml'", "alpaca / sharegpt"]),
    ({"a": {"file_name": "dataset_info.json"}}, ["a.file_name is 'dataset_info.json'", "itself"]),
    ({"a": {"file_name": "*_info.json"}}, ["a.file_name matches only", "point file_name"]),
], ids=["list", "entry-string", "file-name-int", "columns-list", "formatting", "names-itself", "glob-only-itself"])
def test_a_broken_dataset_info_json_is_a_located_error(tmp_path, info, texts):
    (tmp_path / "x.json").write_text(json.dumps([GOOD]))
    (tmp_path / "dataset_info.json").write_text(json.dumps(info))
    out = tmp_path / "out.jsonl"
    for command in (["check", tmp_path, "--json"], ["check", tmp_path, "--strict", "--workers", "2"],
                    ["convert", tmp_path / "dataset_info.json", "-o", out], ["stats", tmp_path]):
        result = invoke(*command)
        said = result.output.replace("\n", "")
        assert result.exit_code == 2 and str(tmp_path / "dataset_info.json") in said, (command, said)
        assert all(text in said for text in texts), (command, said)


def test_a_dataset_info_glob_that_matches_itself_reads_the_data_files_only(tmp_path):
    (tmp_path / "x.json").write_text(json.dumps([GOOD, GOOD]))
    (tmp_path / "dataset_info.json").write_text(json.dumps({"a": {"file_name": "*.json"}}))
    result = invoke("check", tmp_path, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["files"] == {str(tmp_path / "x.json"): {"format": "alpaca", "total": 2,
                                                                             "valid": 2, "invalid": 0}}


def test_images_that_are_system_files_give_the_same_report_for_any_worker_count(tmp_path, monkeypatch):
    import os

    from sftune.data import check, parallel

    os.symlink("loop.png", tmp_path / "loop.png")
    refs = ["/etc/hostname", "/dev/zero", "/proc/self/status", str(tmp_path), str(tmp_path / "loop.png")]
    rows = [j({"messages": [{"role": "user", "content": "<image>x"}, {"role": "assistant", "content": "y"}],
               "images": [ref]}) for ref in refs]
    path = tmp_path / "img.jsonl"
    path.write_bytes(b"".join(rows) * 40)
    monkeypatch.setattr(parallel, "MIN_BYTES_PER_JOB", 2000)
    reports = [check(path, workers=n).to_dict() for n in (1, 2)]
    assert reports[0] == reports[1]
    assert (reports[0]["valid"], reports[0]["invalid"]) == (0, 200)
    assert "not an image format" in reports[0]["examples"]["bad_image"]
    assert "is not a regular file" in reports[0]["examples"]["missing_image"]


def test_convert_counts_a_preference_file_as_check_does_and_writes_pairs(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_bytes(j({"prompt": "q", "chosen": "a", "rejected": "b"}) + j({"prompt": "q", "chosen": "a", "rejected": "a"}))
    checked = json.loads(invoke("check", path, "--json").stdout)
    out = tmp_path / "out.jsonl"
    result = invoke("convert", path, "-o", out)
    assert result.exit_code == 0, result.output
    assert "pairs: 2   valid: 1   invalid: 1" in result.output and (checked["valid"], checked["invalid"]) == (1, 1)
    written = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["prompt"][-1]["content"], r["chosen"][0]["content"], r["rejected"][0]["content"]) for r in written] == \
        [("q", "a", "b")]
    again = json.loads(invoke("check", out, "--json").stdout)
    assert (again["preference"], again["valid"]) == (True, 1)
    refused = invoke("convert", path, "-o", tmp_path / "o2.jsonl", "--to", "alpaca")
    assert refused.exit_code == 2 and "--to messages" in refused.output
