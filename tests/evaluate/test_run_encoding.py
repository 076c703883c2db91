"""Evaluation scores a run under the labels it trained on: the run's saved EncodeOptions, read back."""

from __future__ import annotations

import json

import pytest

from sftune import encode, modality
from sftune.encode import EncodeOptions
from tests.templates.test_reasoning import HYBRID_CHAT, REASONING_CHAT

# Reasoning options other than the defaults on every count: the think blocks are context, empty ones trained,
# a conversation whose first reasoning the template drops stays one example.
OPTIONS = {"reasoning": "answer_only", "train_empty_think": True, "split_reasoning_turns": False}


def _chats(n: int) -> list[dict]:
    chats = []
    for i in range(n):
        chats.append({"messages": [*REASONING_CHAT[:4], {"role": "assistant", "content": f"<think>\nsum {i}\n</think>\n\n{i}"}]})
        chats.append({"messages": HYBRID_CHAT[:3] + [{"role": "assistant", "content": f"<think>\n\n</think>\n\nbye {i}"}]})
    return chats


@pytest.fixture(scope="module")
def reasoning_run(tmp_path_factory, smollm2_tokenizer):
    """A 1-step LoRA run of a tiny llama with the qwen3 template and non-default reasoning options, and the
    labels that training gave its held-out file (every encode_dataset call of training, in order)."""
    from rich.console import Console

    from sftune import train
    from tests.conftest import tiny_model

    root = tmp_path_factory.mktemp("reasoning-run")
    base = root / "tiny-model"
    tiny_model("llama", vocab_size=len(smollm2_tokenizer)).save_pretrained(base)
    smollm2_tokenizer.save_pretrained(base)
    train_path, eval_path = root / "train.jsonl", root / "eval.jsonl"
    train_path.write_text("".join(json.dumps(c) + "\n" for c in _chats(4)), encoding="utf-8")
    eval_path.write_text("".join(json.dumps(c) + "\n" for c in _chats(2)), encoding="utf-8")
    calls = []
    real = encode.encode_dataset

    def recorded(*args, **kwargs):
        dataset, report = real(*args, **kwargs)
        calls.append(dataset)
        return dataset, report

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(encode, "encode_dataset", recorded)
        patch.setattr(modality, "encode_dataset", recorded)  # the name training's text modality calls
        train({"model": {"name": str(base)},
               "data": {"train": str(train_path), "eval": str(eval_path), "template": "qwen3", "max_len": 128,
                        **OPTIONS},
               "method": {"name": "lora", "r": 4}, "train": {"max_steps": 1, "batch_size": 2},
               "eval": {"keep_best": False, "on_start": False}, "output": {"dir": str(root / "run")}},
              console=Console(quiet=True))
    train_rows, eval_rows = calls
    return root / "run", eval_path, eval_rows


def _labels_of(dataset) -> list[list[int]]:
    return [list(labels) for labels in dataset["labels"]]


def test_perplexity_labels_a_file_exactly_as_training_labelled_it(reasoning_run, monkeypatch):
    from sftune import runs
    from sftune.evaluate import metrics

    run_dir, eval_path, trained = reasoning_run
    seen = []
    real = encode.encode_dataset

    def recorded(*args, **kwargs):
        dataset, report = real(*args, **kwargs)
        seen.append(dataset)
        return dataset, report

    monkeypatch.setattr(encode, "encode_dataset", recorded)
    loaded = runs.load(run_dir)
    result = metrics.perplexity(loaded, str(eval_path))

    assert _labels_of(seen[0]) == _labels_of(trained)
    assert seen[0]["input_ids"] == trained["input_ids"]
    assert result["tokens"] == sum(label != encode.IGNORE for row in _labels_of(trained) for label in row)
    # the options changed the labels: with the defaults the think blocks are trained and the first exchange split off
    defaults, _ = real(list(map(json.loads, eval_path.read_text().splitlines())), loaded.tokenizer, loaded.template,
                       EncodeOptions(max_len=128), use_cache=False, progress=False)
    assert len(defaults) > len(trained) and _labels_of(defaults)[: len(trained)] != _labels_of(trained)


def test_the_run_folder_keeps_its_encode_options_and_an_older_run_reads_them_from_its_config(reasoning_run, tmp_path):
    import shutil

    from sftune import runs

    run_dir, _, _ = reasoning_run
    saved = json.loads((run_dir / "encode_options.json").read_text())
    expected = EncodeOptions(policy="assistant", max_len=128, **OPTIONS)
    assert saved == {**expected.__dict__}
    older = tmp_path / "older-run"
    shutil.copytree(run_dir, older)
    (older / "encode_options.json").unlink()  # a run folder written before the file existed
    loaded = runs.load(older)
    assert loaded.encode_options == expected


def test_a_data_task_scores_perplexity_under_the_run_options_without_a_file(reasoning_run, monkeypatch):
    from sftune import runs
    from sftune.evaluate import data_task, metrics

    run_dir, eval_path, trained = reasoning_run
    loaded = runs.load(run_dir)
    monkeypatch.setattr(metrics, "perplexity", None)  # the conversations held in memory are scored as they are
    result = data_task.run(loaded, eval_path, options={"max_new_tokens": 2})
    assert result.details["perplexity_tokens"] == sum(label != encode.IGNORE for row in _labels_of(trained)
                                                      for label in row)
