"""A tiny random model with the real SmolLM2 tokenizer, loaded as `runs.load` gives it, and the fixture data."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import tiny_model

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "benchmarks"


@pytest.fixture(scope="session")
def tiny_folder(tmp_path_factory, smollm2_tokenizer) -> Path:
    """A saved tiny llama (varied logits) with the SmolLM2 tokenizer: a model folder like any checkpoint."""
    folder = tmp_path_factory.mktemp("tiny-model")
    tiny_model("llama", vocab_size=len(smollm2_tokenizer), initializer_range=0.2).save_pretrained(folder)
    smollm2_tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def loaded(tiny_folder):
    from sftune import runs

    return runs.load(tiny_folder)


def data(benchmark: str) -> dict:
    return {"data_dir": str(FIXTURES / benchmark)}
