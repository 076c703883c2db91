"""sftune generate: answers equal generation's, resume gives the same file as one run, bad input is located."""

from __future__ import annotations

import json

import pytest

from sftune import data, generation, runs
from sftune.serve.batch import GenerateError, generate_file, read_output

OPTIONS = generation.GenerationOptions(max_new_tokens=8)


def eval_file(run) -> str:
    source = runs.run_config(run).data.eval
    return source[0] if isinstance(source, list) else source


def test_answers_equal_generation_and_keep_index_reference(lora_run, tmp_path):
    loaded = runs.load(lora_run)
    out = tmp_path / "out.jsonl"
    summary = generate_file(loaded, eval_file(lora_run), out, OPTIONS, batch_size=4, progress=False)
    records = read_output(out)
    conversations = list(data.read(eval_file(lora_run)))
    assert summary["total"] == summary["written"] == len(records) == len(conversations) and summary["skipped"] == 0
    # the reference: the whole file at once through sftune.generation (its own batching and order)
    prompts = [[m.to_dict() for m in c.messages[:-1]] for c in conversations]
    expected = generation.generate(loaded.model, loaded.tokenizer,
                                   generation.render_prompts(loaded.template, prompts), OPTIONS,
                                   stop_token_ids=loaded.stop_token_ids, batch_size=len(prompts))
    assert [r["answer"] for r in records] == [e.text for e in expected]
    assert [r["index"] for r in records] == list(range(len(conversations)))
    assert [r["reference"] for r in records] == [c.messages[-1].content for c in conversations]
    assert [r["messages"] for r in records] == prompts
    assert records[0]["source"].endswith("eval.jsonl line 1")


def test_resume_after_an_interrupted_run_gives_the_same_file(lora_run, tmp_path):
    loaded = runs.load(lora_run)
    whole = tmp_path / "whole.jsonl"
    generate_file(loaded, eval_file(lora_run), whole, OPTIONS, batch_size=2, progress=False)
    lines = whole.read_text(encoding="utf-8").splitlines(keepends=True)
    partial = tmp_path / "partial.jsonl"
    partial.write_text("".join(lines[:2]) + lines[2][:25], encoding="utf-8")  # one batch, then cut mid-record
    summary = generate_file(loaded, eval_file(lora_run), partial, OPTIONS, batch_size=2, progress=False)
    assert summary["skipped"] == 2 and summary["written"] == len(lines) - 2
    assert partial.read_bytes() == whole.read_bytes()
    again = generate_file(loaded, eval_file(lora_run), partial, OPTIONS, batch_size=2, progress=False)
    assert again["written"] == 0 and partial.read_bytes() == whole.read_bytes()


def test_output_of_other_input_is_refused(lora_run, tmp_path):
    loaded = runs.load(lora_run)
    out = tmp_path / "out.jsonl"
    record = {"index": 0, "messages": [{"role": "user", "content": "something else"}], "answer": "x"}
    out.write_text(json.dumps(record) + "\n", encoding="utf-8")
    with pytest.raises(GenerateError, match="out.jsonl line 1: record 0 does not match the input"):
        generate_file(loaded, eval_file(lora_run), out, OPTIONS, progress=False)


def test_bad_input_is_reported_with_file_and_line(lora_run, tmp_path):
    from typer.testing import CliRunner

    from sftune.cli import app

    bad = tmp_path / "bad.jsonl"
    good = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}
    bad.write_text(json.dumps(good) + "\n" + '{"messages": [{"role": "user", "content": "Hi"}\n', encoding="utf-8")
    with pytest.raises(data.DataError, match="bad.jsonl line 2"):
        generate_file(runs.load(lora_run), bad, tmp_path / "out.jsonl", OPTIONS, progress=False)
    result = CliRunner().invoke(app, ["generate", str(lora_run), "--input", str(bad), "-o", str(tmp_path / "o.jsonl"),
                                      "--max-new-tokens", "4"])
    assert result.exit_code == 2 and "error:" in result.output and "line 2" in result.output


def test_output_that_is_the_input_is_refused_and_the_input_kept(lora_run, tmp_path):
    import os

    from typer.testing import CliRunner

    from sftune.cli import app
    from sftune.data.files import OverwriteError

    one = tmp_path / "one.jsonl"  # one record: a resumed run once cut this file to 0 bytes, then wrote into it
    one.write_text(json.dumps({"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]})
                   + "\n", encoding="utf-8")
    before = one.read_bytes()
    os.link(one, tmp_path / "hard.jsonl")
    for out in (one, tmp_path / "hard.jsonl"):
        result = CliRunner().invoke(app, ["generate", str(lora_run), "-i", str(one), "-o", str(out),
                                          "--max-new-tokens", "4"], env={"COLUMNS": "1000"})
        message = result.output.replace("\n", "")
        assert result.exit_code == 2 and f"output {out} is the input {one}" in message and "destroy" in message
        assert one.read_bytes() == before
    with pytest.raises(OverwriteError, match="is the input"):
        generate_file(runs.load(lora_run), one, tmp_path / "hard.jsonl", OPTIONS, progress=False)
    assert one.read_bytes() == before
