"""convert: the output of each shape reads back to the same conversations (the reference is the input)."""

from __future__ import annotations

import json

import pytest

from sftune.data import DataError, read
from sftune.data.load import prepare
from sftune.data import convert
from sftune.data.writers import to_alpaca

MULTI_TURN = {
    "conversations": [
        {"from": "human", "value": "Hi"},
        {"from": "gpt", "value": "Hello"},
        {"from": "human", "value": "2+2?"},
        {"from": "gpt", "value": "4"},
    ],
    "system": "Be brief.",
}
TOOLS = {
    "conversations": [
        {"from": "human", "value": "Weather?"},
        {"from": "function_call", "value": '{"name": "w", "arguments": {}}'},
        {"from": "observation", "value": "sunny"},
        {"from": "gpt", "value": "Sunny."},
    ],
    "tools": '[{"name": "w"}]',
}


def turns(conversations):
    return [([(m.role, m.content) for m in c.messages], c.tools) for c in conversations]


@pytest.mark.parametrize("style", ["messages", "alpaca", "sharegpt"])
def test_round_trip_keeps_every_turn(jsonl, tmp_path, style):
    source = jsonl([MULTI_TURN])
    report = convert(source, tmp_path / "out.jsonl", style)
    assert (report.valid, report.invalid) == (1, 0)
    assert turns(read(tmp_path / "out.jsonl")) == turns(read(source))


@pytest.mark.parametrize("style", ["messages", "sharegpt"])
def test_round_trip_keeps_tool_turns(jsonl, tmp_path, style):
    source = jsonl([TOOLS])
    convert(source, tmp_path / "out.jsonl", style)
    assert turns(read(tmp_path / "out.jsonl")) == turns(read(source))


def test_alpaca_cannot_hold_tool_turns_and_says_so(jsonl, tmp_path):
    source = jsonl([MULTI_TURN, TOOLS])
    quarantine = tmp_path / "rejected.jsonl"
    report = convert(source, tmp_path / "out.jsonl", "alpaca", quarantine=quarantine)
    assert (report.valid, report.invalid, dict(report.reasons)) == (1, 1, {"unsupported": 1})
    (rejected,) = [json.loads(line) for line in quarantine.read_text().splitlines()]
    assert rejected["location"] == "line 2" and "alpaca holds only user/assistant pairs" in rejected["error"]
    assert "--to messages" in rejected["error"]


def test_messages_output_keeps_train_flags_weights_and_meta(jsonl, tmp_path):
    record = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a", "weight": 0}]}
    convert(jsonl([record]), tmp_path / "out.jsonl", "messages")
    written = json.loads((tmp_path / "out.jsonl").read_text())
    assert written["messages"][1] == {"role": "assistant", "content": "a", "train": False, "weight": 0.0}
    assert written["meta"]["line"] == 1 and written["meta"]["format"] == "openai"
    with pytest.raises(DataError, match="train flag or loss weight"):
        to_alpaca(next(read(tmp_path / "out.jsonl")))


def test_parallel_workers_give_the_same_output_report_and_quarantine(tmp_path, monkeypatch):
    from sftune.data import parallel

    lines = []
    for i in range(400):
        record = {"instruction": f"q{i}", "output": f"a{i}"} if i % 37 else {"instruction": f"q{i}", "output": ""}
        lines.append(json.dumps(record) if i % 101 != 5 else "{broken")
    source = tmp_path / "big.jsonl"
    source.write_text("\n".join(lines) + "\n")
    monkeypatch.setattr(parallel, "MIN_BYTES_PER_JOB", 1000)  # many small ranges
    results = {}
    for workers in (1, 2):
        out, rejected = tmp_path / f"out{workers}.jsonl", tmp_path / f"rejected{workers}.jsonl"
        report = convert(source, out, "messages", quarantine=rejected, workers=workers)
        results[workers] = (out.read_text(), rejected.read_text().replace(str(rejected), ""), report.to_dict())
    one, two = results[1], results[2]
    assert one[0] == two[0] and one[1] == two[1]
    for key in ("total", "valid", "invalid", "reasons"):
        assert one[2][key] == two[2][key]
    assert one[2]["reasons"] == {"empty_assistant": 11, "broken_json": 4}
    assert len(parallel._jobs(prepare(source), 2)) > 2  # the file really was cut into ranges


def test_ranges_cut_at_line_starts_with_line_numbers(tmp_path):
    from sftune.data.parallel import ranges

    path = tmp_path / "lines.txt"
    path.write_bytes(b"".join(f"line {i}\n".encode() for i in range(1, 101)))
    pieces = ranges(path, 4)
    assert pieces[0][0] == 0 and pieces[-1][1] == path.stat().st_size
    data = path.read_bytes()
    for start, end, first in pieces:
        assert data[start:].startswith(f"line {first}\n".encode())


def test_reading_sftune_output_keeps_the_original_provenance(jsonl, tmp_path):
    convert(jsonl([MULTI_TURN]), tmp_path / "out.jsonl", "messages")
    conversation = next(read(tmp_path / "out.jsonl"))
    assert conversation.meta["origin"]["source"].endswith("data.jsonl") and conversation.meta["origin"]["line"] == 1
    assert conversation.meta["source"].endswith("out.jsonl") and "extra" not in conversation.meta


def test_fast_messages_line_equals_json_dumps_of_to_dict(jsonl):
    from sftune.data.writers import messages_line

    records = [MULTI_TURN, TOOLS, {"messages": [{"role": "user", "content": "q \"quoted\" \\ 你好\n"},
                                               {"role": "assistant", "content": "a", "weight": 0}]}]
    for conversation in read(jsonl(records)):
        assert messages_line(conversation) == json.dumps(conversation.to_dict(), ensure_ascii=False)


def test_default_train_flags_fit_every_style_and_pretraining_text_round_trips(jsonl, tmp_path):
    record = {"messages": [{"role": "user", "content": "q", "loss_weight": 0.0},
                           {"role": "assistant", "content": "a", "loss_weight": 1.0}]}
    assert convert(jsonl([record]), tmp_path / "out.jsonl", "sharegpt").valid == 1  # the default policy: nothing lost
    convert(jsonl([{"text": "Plain prose."}], "pt.jsonl"), tmp_path / "pt_out.jsonl", "messages")
    (again,) = read(tmp_path / "pt_out.jsonl")
    assert again.meta["pretrain"] is True and again.messages[0].train is True
