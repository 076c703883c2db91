"""Shared pieces of the web UI tests: a tiny model checkpoint, demo data with a few bad records, a finished
tiny run, the UI served on loopback, and a poll that waits generously on a loaded machine."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from tests.conftest import tiny_model

pytest.importorskip("gradio", reason="the web UI needs the `webui` extra (gradio)")


def wait_for(predicate, timeout: float = 180.0, every: float = 0.25, what: str = "the condition"):
    """Poll until predicate() is truthy (returns its value); fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory, smollm2_tokenizer) -> Path:
    """A tiny random llama with the real SmolLM2 tokenizer, saved as a model folder."""
    folder = tmp_path_factory.mktemp("webui") / "tiny-model"
    tiny_model("llama", vocab_size=len(smollm2_tokenizer)).save_pretrained(folder)
    smollm2_tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def demo_files(tmp_path_factory) -> tuple[Path, Path]:
    from sftune.demo import write_dataset

    return write_dataset(tmp_path_factory.mktemp("webui-data"), n_train=24, n_eval=4)


@pytest.fixture
def mixed_file(tmp_path) -> Path:
    """Three good records and two bad ones (no assistant reply; a line that is not JSON)."""
    good = [{"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}]}
            for i in range(3)]
    lines = [json.dumps(good[0]), json.dumps({"messages": [{"role": "user", "content": "alone"}]}),
             json.dumps(good[1]), "{not json", json.dumps(good[2])]
    path = tmp_path / "mixed.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def run_config(tiny_checkpoint: Path, train_file: Path, run_dir: Path, eval_steps: int | None = None,
               **train) -> dict:
    return {"model": {"name": str(tiny_checkpoint)}, "data": {"train": str(train_file), "max_len": 96},
            "method": {"name": "lora", "r": 4},
            "train": {"max_steps": 3, "batch_size": 2, "logging_steps": 1, "lr": 5e-3, **train},
            "eval": {"steps": eval_steps}, "output": {"dir": str(run_dir)}}


def running_or_fail(run_dir: Path, found):
    """`found` while the run is alive; fails with the run's log once it ended without `found`."""
    from sftune.webui import jobs

    value = found()
    if not value and jobs.status(run_dir)["state"] != "running":
        value = found()
        assert value, "the run ended early:\n" + jobs.status(run_dir)["log"]
    return value


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, tiny_checkpoint, demo_files) -> Path:
    """A finished 3-step LoRA run of the tiny model (trained in this process)."""
    from sftune import train

    run_dir = tmp_path_factory.mktemp("webui-runs") / "tiny-run"
    train(run_config(tiny_checkpoint, demo_files[0], run_dir))
    return run_dir


@pytest.fixture(scope="session")
def roots(tmp_path_factory):
    """The folders of a UI whose runs folder and data root hold every folder these tests make (the tests of
    the roots themselves, test_paths.py, make narrower ones)."""
    from sftune.webui.paths import Roots

    base = tmp_path_factory.getbasetemp()
    return Roots.of(base, [base])


@pytest.fixture
def served(tmp_path, tmp_path_factory):
    """The real app on loopback (a free port), its runs folder under tmp_path, the tests' folders its data root;
    closed after the test."""
    from sftune.webui import launch

    app, url = launch(tmp_path / "runs", data_roots=[tmp_path_factory.getbasetemp()], host="127.0.0.1",
                      block=False)
    try:
        yield url, tmp_path / "runs"
    finally:
        app.close()
