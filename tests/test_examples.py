"""Every example config runs as it is from a fresh checkout, from any folder: its data ships in examples/data/,
and a few training steps of each go through (on a tiny model with the real tokenizer, to stay fast)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import sftune
from sftune import config

from .conftest import tiny_model

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))
TRAIN_EXAMPLES = [p for p in EXAMPLES if not p.name.startswith("demo-")]


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory, smollm2_tokenizer):
    folder = tmp_path_factory.mktemp("tiny-model")
    tiny_model("llama", vocab_size=len(smollm2_tokenizer), num_hidden_layers=4).save_pretrained(folder)  # freeze trains 4
    smollm2_tokenizer.save_pretrained(folder)
    return folder


def test_the_examples_are_there():
    assert {p.name for p in TRAIN_EXAMPLES} >= {"lora.yaml", "qlora.yaml", "full.yaml", "freeze.yaml"}


@pytest.mark.parametrize("path", TRAIN_EXAMPLES, ids=lambda p: p.stem)
def test_example_trains_as_it_is(path, tiny_checkpoint, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # from any folder: the examples' paths are relative to examples/
    cfg = config.load(path, [f"model.name={tiny_checkpoint}", "train.max_steps=2", f"output.dir={tmp_path / 'run'}"])
    for data_path in cfg.data.train + cfg.data.eval:
        assert Path(data_path).is_file(), f"{path.name}: {data_path} is not shipped"
    if cfg.method.name == "qlora":
        pytest.importorskip("bitsandbytes")
    result = sftune.train(cfg)
    assert result.summary["steps"] == 2 and result.summary["trained_tokens"] > 0
    assert (result.run_dir / "metrics.jsonl").is_file() and (result.run_dir / "config.yaml").is_file()
    assert json.loads((result.run_dir / "summary.json").read_text())["steps"] == 2


@pytest.mark.parametrize("path", [p for p in EXAMPLES if p.name.startswith("demo-")], ids=lambda p: p.stem)
def test_demo_configs_load_and_name_their_data(path):
    """A demo config is run by `sftune demo CONFIG`, which writes its data first (tested with the demo)."""
    cfg = config.load(path)
    assert cfg.data.train and cfg.data.eval


def test_shipped_data_is_the_demo_task(tmp_path):
    """examples/data/ holds exactly what `sftune demo` writes, so results agree with the demo's."""
    from sftune.demo import write_dataset

    assert ROOT.joinpath("examples/data/train.jsonl").is_file()
    train, held_out = write_dataset(tmp_path)
    assert train.read_text(encoding="utf-8") == ROOT.joinpath("examples/data/train.jsonl").read_text(encoding="utf-8")
    assert held_out.read_text(encoding="utf-8") == ROOT.joinpath("examples/data/eval.jsonl").read_text(encoding="utf-8")
