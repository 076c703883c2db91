"""The configuration's JSON schema for editors: generated from the pydantic models, committed as
docs/sftune-config.schema.json, and in agreement with what config.load accepts and refuses."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
import yaml
from typer.testing import CliRunner

from sftune import config
from sftune.cli import app

ROOT = Path(__file__).resolve().parents[1]
COMMITTED = ROOT / "docs" / "sftune-config.schema.json"


def test_the_committed_schema_is_the_generated_one():
    assert json.loads(COMMITTED.read_text(encoding="utf-8")) == config.json_schema(), (
        "docs/sftune-config.schema.json is out of date: run `sftune config-schema -o docs/sftune-config.schema.json`")


def test_sftune_config_schema_prints_it():
    result = CliRunner().invoke(app, ["config-schema"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == config.json_schema()


@pytest.mark.parametrize("path", sorted((ROOT / "examples").glob("*.yaml")), ids=lambda p: p.stem)
def test_every_example_config_is_valid_under_the_schema(path):
    jsonschema.Draft202012Validator(config.json_schema()).validate(yaml.safe_load(path.read_text(encoding="utf-8")))


@pytest.mark.parametrize("raw", [
    {"data": {"train": "one.jsonl", "eval": {"path": "hub:me/data:test", "weight": 2}}},
    {"data": {"train": ["a.jsonl", {"path": ["b.jsonl", "c.jsonl"], "ratio": 0.5}]}},
    {"train": {"report_to": ["tensorboard"]}, "output": {"push_to_hub": "me/run", "hub_private": False}},
], ids=["one path and one entry", "lists", "report and push"])
def test_what_load_accepts_the_schema_accepts(raw):
    config.load(raw)
    jsonschema.Draft202012Validator(config.json_schema()).validate(raw)


@pytest.mark.parametrize("raw", [{"train": {"lrr": 1e-4}}, {"train": {"epochs": "many"}},
                                 {"method": {"name": "lora2"}}, {"data": {"policy": "everything"}}])
def test_what_load_refuses_the_schema_refuses(raw):
    with pytest.raises(config.ConfigError):
        config.load(raw)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft202012Validator(config.json_schema()).validate(raw)


def test_the_config_snippets_of_the_docs_load_and_match_the_schema():
    """docs/ecosystem.md's YAML (hub data, push_to_hub, report_to, the schema line) is configuration that works."""
    text = (ROOT / "docs" / "ecosystem.md").read_text(encoding="utf-8")
    snippets = [yaml.safe_load(block.split("```", 1)[0]) for block in text.split("```yaml\n")[1:]]
    assert len(snippets) >= 3  # hub data, push_to_hub, the schema line (and report_to)
    for raw in snippets:
        config.load(raw)
        jsonschema.Draft202012Validator(config.json_schema()).validate(raw)
