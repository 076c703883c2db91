"""Random JSON at the readers and formats: never a traceback, and the counts always add up."""

from __future__ import annotations

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sftune.data import Report, read

FIELDS = ["instruction", "input", "output", "messages", "conversations", "role", "content", "from", "value",
          "tool_calls", "weight", "history", "system", "tools", "text", "turns", "speaker", "utterance",
          "question", "answer", "prompt", "completion", "images", "chosen", "rejected", "conversation"]
scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8) | st.sampled_from(
    ["user", "assistant", "gpt", "human", "tool", "system", "function_call", "USER", ""])
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
    st.sampled_from(FIELDS) | st.text(max_size=5), inner, max_size=5), max_leaves=20)
records = st.dictionaries(st.sampled_from(FIELDS), values, max_size=6) | values


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(records, max_size=6))
def test_random_jsonl_never_crashes_and_counts_add_up(tmp_path, batch):
    path = tmp_path / "random.jsonl"
    path.write_text("".join(json.dumps(record) + "\n" for record in batch), encoding="utf-8")
    report = Report()
    kept = list(read(path, on_error="skip", report=report))
    assert len(kept) == report.valid and report.total == report.valid + report.invalid == len(batch)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(records, max_size=6))
def test_random_json_array_never_crashes_and_counts_add_up(tmp_path, batch):
    path = tmp_path / "random.json"
    path.write_text(json.dumps(batch), encoding="utf-8")
    report = Report()
    kept = list(read(path, on_error="skip", report=report))
    assert len(kept) == report.valid and report.total == report.valid + report.invalid


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=200))
def test_random_bytes_never_crash(tmp_path, data):
    for name in ("random.jsonl", "random.csv"):
        path = tmp_path / name
        path.write_bytes(data)
        report = Report()
        kept = list(read(path, on_error="skip", report=report))
        assert len(kept) == report.valid and report.total == report.valid + report.invalid
