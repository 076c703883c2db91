"""Helpers for data tests: write small fixture files of every kind into tmp_path."""

from __future__ import annotations

import json
from pathlib import Path

import pytest


def write_jsonl(path: Path, records: list) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


@pytest.fixture
def jsonl(tmp_path):
    """jsonl(records, name="data.jsonl") -> path of a JSONL file holding the records."""

    def make(records: list, name: str = "data.jsonl") -> Path:
        return write_jsonl(tmp_path / name, records)

    return make
