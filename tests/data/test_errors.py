"""The bad-input matrix: every check, with the message a user reads (file, line/record, field, fix)."""

from __future__ import annotations

import json

import pytest

from sftune.data import DataError, check, read

GOOD = {"instruction": "Say hi.", "output": "Hi!"}


def line(record) -> bytes:
    return (record if isinstance(record, bytes) else json.dumps(record).encode()) + b"\n"


# (case id, lines of data.jsonl, read options, reason, line number, texts the message must contain)
MATRIX = [
    ("broken-json", [line(GOOD), b'{"instruction": "x", "output": '], {}, "broken_json", 2,
     ["is not valid JSON", "one complete JSON object"]),
    ("invalid-utf8", [b'{"instruction": "caf\xe9", "output": "ok"}'], {}, "invalid_utf8", 1,
     ["not valid UTF-8", "re-save the file as UTF-8"]),
    ("not-an-object", [line(GOOD), line([1, 2])], {}, "not_an_object", 2, ["is a list", "one JSON object"]),
    ("unknown-format", [line({"foo": "bar"})], {}, "unknown_format", 1,
     ["['foo']", "match no known format", "columns="]),
    ("missing-field", [line(GOOD), line({"instruction": "x"})], {}, "missing_field", 2,
     ["output is missing", "add a 'output' field"]),
    ("messages-are-strings", [line({"messages": ["hi", "hello!"]})], {}, "wrong_type", 1,
     ['messages[0] is a string; each message needs a role and content, e.g. {"role": "user", "content": "hi"}']),
    ("wrong-type", [line({"instruction": "x", "output": ["a", "b"]})], {}, "wrong_type", 1,
     ["output is a list, expected a string", "make output a string"]),
    ("history-not-pairs", [line({**GOOD, "history": [["q"]]})], {}, "wrong_type", 1,
     ["history[0] is", "[question, answer] pair"]),
    ("missing-role", [line({"messages": [{"content": "hi"}]})], {}, "missing_field", 1,
     ["messages[0].role is missing", "needs a role and content"]),
    ("unknown-role", [line({"messages": [{"role": "user", "content": "hi"}, {"role": "bot", "content": "yo"}]})], {},
     "unknown_role", 1, ["messages[1].role is 'bot'", "roles={'bot': 'assistant'}"]),
    ("unknown-speaker", [line({"turns": [{"speaker": "customer", "utterance": "hi"}]})], {}, "unknown_role", 1,
     ["turns[0].speaker is 'customer'", "roles={'customer': 'assistant'}"]),
    ("empty-assistant", [line({"instruction": "x", "output": "  "})], {}, "empty_assistant", 1,
     ["messages[1].content is an empty assistant reply", "write the reply"]),
    ("empty-user", [line({"messages": [{"role": "user", "content": ""}, {"role": "assistant", "content": "a"}]})], {},
     "empty_user", 1, ["messages[0].content is an empty user message"]),
    ("empty-text", [line({"text": "   "})], {}, "empty_text", 1, ["text is empty"]),
    ("not-alternating", [line({"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"},
                                            {"role": "assistant", "content": "c"}]})], {}, "roles_not_alternating", 1,
     ["messages[1] is user 'b' right after user", "roles must alternate", "merge the two or add the missing turn"]),
    ("opens-with-assistant", [line({"messages": [{"role": "assistant", "content": "Hello!"},
                                                 {"role": "user", "content": "hi"}]})], {}, "roles_not_alternating", 1,
     ["messages[0] is assistant 'Hello!', but a conversation opens with a user message"]),
    ("late-system", [line({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
                                        {"role": "system", "content": "c"}]})], {}, "roles_not_alternating", 1,
     ["messages[2] is a system message after the conversation began", "put the system prompt first"]),
    ("no-assistant", [line({"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}]})], {},
     "no_assistant_turn", 1, ["messages has no assistant turn", "add the assistant's reply"]),
    ("too-long", [line({"instruction": "x" * 30, "output": "y" * 30})], {"max_chars": 50}, "too_long", 1,
     ["record has 60 characters, over the limit of 50", "--max-chars"]),
    ("audio-part", [line({"messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": "x"}}]},
                                       {"role": "assistant", "content": "a cat"}]})], {}, "unsupported", 1,
     ["messages[0].content[0] is a 'input_audio' part", "text and images"]),
    ("bad-tool-arguments", [line({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "tool_calls": [
        {"type": "function", "function": {"name": "f", "arguments": "{not json"}}]}]})], {}, "wrong_type", 1,
     ["messages[1].tool_calls[0].function.arguments is not valid JSON"]),
    ("mapped-column-missing", [line({"q": "x"})], {"columns": {"instruction": "q", "output": "a"}}, "missing_field", 1,
     ["output is missing (read from 'a' by the column mapping)"]),
]


@pytest.mark.parametrize("case, lines, options, reason, number, texts", MATRIX, ids=[m[0] for m in MATRIX])
def test_bad_record_raises_with_file_line_field_and_fix(tmp_path, case, lines, options, reason, number, texts):
    path = tmp_path / "data.jsonl"
    path.write_bytes(b"".join(lines))
    with pytest.raises(DataError) as caught:
        list(read(path, **options))
    error = caught.value
    assert isinstance(error, ValueError)
    assert error.reason == reason
    assert str(error).startswith(f"{path} line {number}: ")
    for text in texts:
        assert text in str(error)


def test_classic_mistake_message_is_exactly_as_documented(tmp_path):
    path = tmp_path / "data.jsonl"
    good = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello!"}]}
    path.write_text("\n".join([json.dumps(good)] * 6 + ['{"messages": ["hi", "hello!"]}']) + "\n")
    with pytest.raises(DataError) as caught:
        list(read(path))
    assert str(caught.value) == (
        f'{path} line 7: messages[0] is a string; each message needs a role and content, '
        'e.g. {"role": "user", "content": "hi"}'
    )


def test_skip_quarantines_every_bad_record_with_its_reason(tmp_path):
    """The whole matrix in one folder: nothing raises, nothing is dropped without a trace."""
    expected = {}
    for i, (case, lines, options, reason, number, _) in enumerate(MATRIX):
        if options:
            continue
        (tmp_path / "in").mkdir(exist_ok=True)
        (tmp_path / "in" / f"{i:02d}-{case}.jsonl").write_bytes(b"".join(lines))
        expected[(f"{i:02d}-{case}.jsonl", f"line {number}")] = reason
    quarantine = tmp_path / "rejected.jsonl"
    report = check(tmp_path / "in", quarantine=quarantine)
    rejected = [json.loads(text) for text in quarantine.read_text().splitlines()]
    assert {(r["source"].rsplit("/", 1)[1], r["location"]): r["reason"] for r in rejected} == expected
    assert report.invalid == len(expected) and report.total == report.valid + report.invalid
    assert sum(report.reasons.values()) == report.invalid
    assert all(r["record"] is not None and r["error"] for r in rejected)
    assert 0 < report.validation_rate < 1


@pytest.mark.parametrize("suffix, location", [(".csv", "line 3"), (".tsv", "line 3")])
def test_csv_errors_name_the_file_line(tmp_path, suffix, location):
    sep = "\t" if suffix == ".tsv" else ","
    path = tmp_path / f"data{suffix}"
    path.write_text(f"instruction{sep}output\nSay hi{sep}Hi!\nSay bye{sep}\n", encoding="utf-8")
    with pytest.raises(DataError, match=f"data{suffix} {location}: output is missing"):
        list(read(path))


def test_parquet_errors_name_the_record_index(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "data.parquet"
    pq.write_table(pa.table({"instruction": ["a", "b", "c"], "output": ["x", "", "z"]}), path)
    with pytest.raises(DataError, match=r"data.parquet record 1: messages\[1\].content is an empty assistant reply"):
        list(read(path))


def test_broken_json_array_names_line_and_column(tmp_path):
    path = tmp_path / "data.json"
    path.write_text('[\n  {"instruction": "a", "output": "b"},\n  {"instruction": "c" "output": "d"}\n]')
    with pytest.raises(DataError, match=r"data.json: is not valid JSON \(Expecting ',' delimiter at line 3 column 23\)"):
        list(read(path))
    report = check(path)
    assert (report.total, report.valid, report.invalid, dict(report.reasons)) == (2, 1, 1, {"broken_json": 1})


def test_on_error_must_be_raise_or_skip(tmp_path):
    with pytest.raises(ValueError, match="use 'raise' or 'skip'"):
        read(tmp_path, on_error="ignore")


def test_missing_path_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing-here.jsonl: no such file"):
        read(tmp_path / "nothing-here.jsonl")


def test_record_of_another_format_gets_a_hint(tmp_path):
    path = tmp_path / "mixed.jsonl"
    path.write_text(json.dumps(GOOD) + "\n" + json.dumps({"messages": [{"role": "user", "content": "q"}]}) + "\n")
    with pytest.raises(DataError, match="this file reads as alpaca.*this record looks like openai"):
        list(read(path))


def test_raise_counts_the_bad_record_once(tmp_path):
    from sftune.data import Report

    path = tmp_path / "data.jsonl"
    path.write_text(json.dumps(GOOD) + "\n" + json.dumps({"instruction": "x", "output": ""}) + "\n")
    report = Report()
    with pytest.raises(DataError):
        list(read(path, report=report))
    assert (report.total, report.valid, report.invalid) == (2, 1, 1)


def test_unknown_format_name_lists_the_known_ones(tmp_path):
    (tmp_path / "d.jsonl").write_text(json.dumps(GOOD) + "\n")
    with pytest.raises(ValueError, match="unknown format 'alpacca'; use one of alpaca, sharegpt"):
        read(tmp_path / "d.jsonl", format="alpacca")
