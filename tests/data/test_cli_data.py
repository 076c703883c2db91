"""sftune data check | convert | stats | dedup, through the real command line parser."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from sftune.cli import app

runner = CliRunner()
GOOD = {"instruction": "Say hi.", "output": "Hi!"}


def invoke(*args):
    return runner.invoke(app, ["data", *map(str, args)], env={"COLUMNS": "200"})


def test_check_json_reports_counts_by_reason(jsonl, tmp_path):
    path = jsonl([GOOD, {"instruction": "x", "output": ""}, GOOD])
    (tmp_path / "data.jsonl").open("a").write("{broken\n")
    result = invoke("check", path, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert (report["total"], report["valid"], report["invalid"]) == (4, 2, 2)
    assert report["reasons"] == {"empty_assistant": 1, "broken_json": 1}
    assert report["validation_rate"] == 0.5


def test_check_strict_exits_1_on_any_invalid_record(jsonl):
    assert invoke("check", jsonl([GOOD]), "--strict").exit_code == 0
    assert invoke("check", jsonl([GOOD, {"instruction": "x"}], "bad.jsonl"), "--strict").exit_code == 1


def test_check_human_report_names_reason_and_location(jsonl, tmp_path):
    path = jsonl([{"messages": ["hi", "hello!"]}])
    result = invoke("check", path, "--quarantine", tmp_path / "q.jsonl")
    assert result.exit_code == 0, result.output
    assert "wrong_type" in result.output and "messages[0] is a string" in result.output
    assert json.loads((tmp_path / "q.jsonl").read_text())["reason"] == "wrong_type"


def test_check_with_columns_and_roles_options(jsonl):
    path = jsonl([{"turns": [{"speaker": "c", "utterance": "hi"}, {"speaker": "a", "utterance": "yo"}]}])
    assert json.loads(invoke("check", path, "--json").stdout)["reasons"] == {"unknown_role": 1}
    assert json.loads(invoke("check", path, "--json", "--roles", "c=user,a=assistant").stdout)["valid"] == 1
    mapped = jsonl([{"q": "x", "a": "y"}], "other.jsonl")
    assert json.loads(invoke("check", mapped, "--json", "--columns", '{"question": "q", "answer": "a"}').stdout)["valid"] == 1


def test_convert_writes_the_requested_shape_and_quarantines(jsonl, tmp_path):
    path = jsonl([{"question": "q?", "answer": "a."}, {"question": "q2?"}])
    out = tmp_path / "out.jsonl"
    result = invoke("convert", path, "--to", "sharegpt", "-o", out)
    assert result.exit_code == 0, result.output
    assert "records: 2" in result.output and "Wrote 1 conversation (sharegpt)" in result.output
    assert [json.loads(line) for line in out.read_text().splitlines()] == [
        {"conversations": [{"from": "human", "value": "q?"}, {"from": "gpt", "value": "a."}]}
    ]
    rejected = json.loads((tmp_path / "out.jsonl.rejected.jsonl").read_text())
    assert rejected["reason"] == "missing_field" and rejected["location"] == "line 2"


def test_stats_json(jsonl):
    result = invoke("stats", jsonl([GOOD, {"instruction": "你好", "output": "你好！"}]), "--json")
    assert result.exit_code == 0, result.output
    stats = json.loads(result.stdout)
    assert stats["conversations"] == 2 and stats["languages"] == {"en": 1, "zh": 1}


def test_stats_human_output_and_plot(jsonl, tmp_path):
    result = invoke("stats", jsonl([GOOD] * 3), "--plot", tmp_path / "hist.png")
    assert result.exit_code == 0, result.output
    assert "characters per conversation" in result.output
    assert (tmp_path / "hist.png").stat().st_size > 0


def test_dedup_writes_kept_and_removed(jsonl, tmp_path):
    path = jsonl([GOOD, {"instruction": "say HI.", "output": "hi!"}, {"instruction": "Other.", "output": "Yes."}])
    out = tmp_path / "dedup.jsonl"
    result = invoke("dedup", path, "-o", out)
    assert result.exit_code == 0, result.output
    assert len(out.read_text().splitlines()) == 2
    removed = json.loads((tmp_path / "dedup.jsonl.duplicates.jsonl").read_text())
    assert removed["duplicate"] == "exact" and removed["of"].endswith("data.jsonl line 1")


def test_missing_file_is_a_clean_error(tmp_path):
    result = invoke("check", tmp_path / "missing.jsonl")
    assert result.exit_code == 2
    assert "missing.jsonl: no such file" in result.output
    assert "Traceback" not in result.output
