"""The task on a user's data file: the prompt is every turn before the last assistant turn, the reference
is that turn; scores are the metrics of what the model answered; perplexity on the same conversations."""

from __future__ import annotations

import json
import re

import pytest

from tests.conftest import tiny_model


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory, smollm2_tokenizer):
    folder = tmp_path_factory.mktemp("tiny-model")
    tiny_model("llama", vocab_size=len(smollm2_tokenizer)).save_pretrained(folder)
    smollm2_tokenizer.save_pretrained(folder)
    return folder


def chats(path):
    records = [
        {"messages": [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "2+2?"},
                      {"role": "assistant", "content": "4"}, {"role": "user", "content": "and 3+3?"},
                      {"role": "assistant", "content": "6"}]},
        {"messages": [{"role": "user", "content": "北京在哪个国家？"}, {"role": "assistant", "content": "中国"}]},
        {"messages": [{"role": "user", "content": "no answer here"}]},
        {"messages": [{"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "Blue"},
                      {"role": "user", "content": "Thanks!"}]},
    ]
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


def test_split_and_json_match():
    from sftune.data import Conversation
    from sftune.evaluate.data_task import json_match_items, split_conversation

    conversation = Conversation.from_dict({"messages": [
        {"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"},
        {"role": "assistant", "content": "d"}, {"role": "user", "content": "e"}]})
    prompt, reference = split_conversation(conversation)
    assert [m.content for m in prompt] == ["a", "b", "c"] and reference == "d"
    assert json_match_items(['{"age": 3, "name": "x"}', "{'name': 'x'}", ""], ['{"name": "x", "age": 3}'] * 3) == \
        [1.0, 0.0, 0.0]
    assert json_match_items(["4"], ["4"]) is None  # plain text references: the check does not apply


def test_scores_are_the_metrics_of_the_models_answers(tmp_path, tiny_folder):
    from sftune import generation, runs
    from sftune.evaluate import data_task, metrics

    path = chats(tmp_path / "chat.jsonl")
    loaded = runs.load(tiny_folder)
    result = data_task.run(loaded, path, options={"max_new_tokens": 8})
    assert result.task == f"data:{path}" and result.details["n"] == 3
    assert result.details["left_out"] == {"rejected": 1, "no assistant turn": 0}  # sftune.data rejects it
    references = ["6", "中国", "Blue"]
    assert [s.reference for s in result.samples] == references
    # reference prompts from the tokenizer's own chat template, answered one at a time
    conversations = [[{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "2+2?"},
                      {"role": "assistant", "content": "4"}, {"role": "user", "content": "and 3+3?"}],
                     [{"role": "user", "content": "北京在哪个国家？"}], [{"role": "user", "content": "Name a colour."}]]
    prompts = [loaded.tokenizer.apply_chat_template(c, add_generation_prompt=True, tokenize=False) for c in conversations]
    answers = [c.text.strip() for c in generation.generate(loaded.model, loaded.tokenizer, prompts,
                                                           generation.GenerationOptions(max_new_tokens=8),
                                                           stop_token_ids=loaded.stop_token_ids, batch_size=1)]
    assert [s.answer for s in result.samples] == answers
    extra = result.details["metrics"]
    assert result.item_scores == metrics.exact_match_items(answers, references)
    assert extra["bleu"]["score"] == pytest.approx(metrics.bleu(answers, references))
    assert extra["rougeL"]["item_scores"] == [r["rougeL"] for r in metrics.rouge_items(answers, references)]
    assert extra["token_f1"]["item_scores"] == metrics.token_f1_items(answers, references)
    assert extra["perplexity"]["score"] == pytest.approx(metrics.perplexity(loaded, str(path))["perplexity"], rel=1e-5)
    assert "json_match" not in extra
    assert {result.metric, *extra} == set(data_task.METRICS) - {"json_match"}  # what `sftune eval --help` lists
    limited = data_task.run(loaded, path, limit=1, options={"max_new_tokens": 8})
    assert limited.details["n"] == 1 and limited.samples[0].answer == answers[0]


def test_a_file_without_any_reference_is_a_clear_error(tmp_path, tiny_folder):
    from sftune import runs
    from sftune.evaluate import data_task

    path = tmp_path / "prompts.jsonl"
    path.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"}]}) + "\n")
    with pytest.raises(ValueError, match="no conversation with an assistant turn.*sftune data check"):
        data_task.run(runs.load(tiny_folder), path)


def test_the_results_record_the_generation_settings_and_the_time_is_said_before(tmp_path, tiny_folder):
    """results.json says how answers were generated; before the answers, the console says how long it takes
    at most, from the first token steps of the first batch."""
    import io

    from rich.console import Console

    from sftune import runs
    from sftune.evaluate import data_task

    loaded = runs.load(tiny_folder)
    out = io.StringIO()
    result = data_task.run(loaded, chats(tmp_path / "chat.jsonl"), name="heldout",
                           options={"max_new_tokens": 12, "batch_size": 2}, console=Console(file=out, width=300))
    assert result.details["generation"] == {
        "max_new_tokens": 12, "greedy": True, "stop_token_ids": loaded.stop_token_ids,
        "stop_tokens": loaded.tokenizer.convert_ids_to_tokens(loaded.stop_token_ids), "stop_strings": [],
        "batch_size": 2}
    said = out.getvalue()
    assert "heldout: generating: 3 prompts in 2 batches of up to 12 new tokens" in said
    assert re.search(r"(at most about|: about) \d+:\d\d:\d\d", said), said
    assert said.index("about") < said.index("3/3")  # said before the last batch was done
