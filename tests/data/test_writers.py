"""convert: the output of each shape reads back to the same conversations (the reference is the input)."""

from __future__ import annotations

import json

import pytest

from sftune.data import DataError, read
from sftune.data.writers import convert, to_alpaca

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
