"""Preference data: every layout read into the same Pair, bad pairs located, answers encoded with labels on
their tokens only (the end-of-turn included), tool calls kept."""

from __future__ import annotations

import json

import pytest

from sftune import data, templates
from sftune.data import DataError
from sftune.data.schema import Pair
from sftune.encode import IGNORE, encode
from sftune.preference.encode import encode_pair

PROMPT = [{"role": "user", "content": "Name a colour."}]
EXPECTED = {"prompt": [{"role": "user", "content": "Name a colour."}],
            "chosen": [{"role": "assistant", "content": "Blue."}],
            "rejected": [{"role": "assistant", "content": "Seven."}]}


def _write(tmp_path, name, records):
    path = tmp_path / name
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def _pairs(path, **options):
    return [p.to_dict() for p in data.read(path, preference=True, **options)]


@pytest.mark.parametrize("record", [
    {"prompt": "Name a colour.", "chosen": "Blue.", "rejected": "Seven."},  # TRL standard
    {"prompt": PROMPT, "chosen": [{"role": "assistant", "content": "Blue."}],  # TRL conversational
     "rejected": [{"role": "assistant", "content": "Seven."}]},
    {"chosen": PROMPT + [{"role": "assistant", "content": "Blue."}],  # TRL implicit prompt
     "rejected": PROMPT + [{"role": "assistant", "content": "Seven."}]},
    {"instruction": "Name a colour.", "chosen": "Blue.", "rejected": "Seven."},  # alpaca ranking
    {"conversations": [{"from": "human", "value": "Name a colour."}],  # sharegpt ranking
     "chosen": {"from": "gpt", "value": "Blue."}, "rejected": {"from": "gpt", "value": "Seven."}},
])
def test_every_layout_reads_as_the_same_pair(tmp_path, record):
    pairs = _pairs(_write(tmp_path, "p.jsonl", [record]))
    assert [{k: v for k, v in p.items() if k != "meta"} for p in pairs] == [EXPECTED]


def test_multi_turn_history_and_system_stay_in_the_prompt(tmp_path):
    record = {"instruction": "And now?", "system": "Be brief.", "history": [["Hi", "Hello"]],
              "chosen": "Now.", "rejected": "Later."}
    (pair,) = _pairs(_write(tmp_path, "p.jsonl", [record]))
    assert [m["role"] for m in pair["prompt"]] == ["system", "user", "assistant", "user"]
    assert pair["chosen"] == [{"role": "assistant", "content": "Now."}]


def test_llamafactory_ranking_entries_are_read_and_sft_entries_left_out(tmp_path):
    _write(tmp_path, "rank.jsonl", [{"q": "Name a colour.", "good": "Blue.", "bad": "Seven."}])
    _write(tmp_path, "sft.jsonl", [{"instruction": "x", "output": "y"}])
    info = {"rank": {"file_name": "rank.jsonl", "ranking": True,
                     "columns": {"prompt": "q", "chosen": "good", "rejected": "bad"}},
            "sft": {"file_name": "sft.jsonl"}}
    (tmp_path / "dataset_info.json").write_text(json.dumps(info))
    pairs = _pairs(tmp_path / "dataset_info.json")
    assert [{k: v for k, v in p.items() if k != "meta"} for p in pairs] == [EXPECTED]
    with pytest.raises(DataError, match="preference data"):  # and SFT reading refuses the ranking entry
        list(data.read(tmp_path / "dataset_info.json", dataset_name="rank"))


@pytest.mark.parametrize("record, reason, field", [
    ({"prompt": "q", "chosen": "same", "rejected": "same"}, "identical_answers", "rejected"),
    ({"prompt": "q", "chosen": "a"}, "missing_field", "rejected"),
    ({"prompt": "q", "chosen": "", "rejected": "b"}, "missing_field", "chosen"),
    ({"chosen": [{"role": "user", "content": "q1"}, {"role": "assistant", "content": "a"}],
      "rejected": [{"role": "user", "content": "q2"}, {"role": "assistant", "content": "b"}]},
     "prompt_mismatch", "chosen[0] / rejected[0]"),
    ({"prompt": "q", "chosen": [{"role": "user", "content": "a"}], "rejected": "b"}, "roles_not_alternating",
     "chosen[0]"),
    ({"prompt": "q", "chosen": [{"role": "assistant", "content": " "}], "rejected": "b"}, "empty_assistant",
     "chosen[0].content"),
    ({"instruction": "x", "output": "y"}, "not_a_pair", "chosen"),
])
def test_bad_pairs_are_counted_and_located(tmp_path, record, reason, field):
    good = {"prompt": "Name a colour.", "chosen": "Blue.", "rejected": "Seven."}
    path = _write(tmp_path, "p.jsonl", [good, record])
    report = data.Report()
    pairs = list(data.read(path, preference=True, on_error="skip", report=report))
    assert len(pairs) == 1 and report.invalid == 1 and report.reasons == {reason: 1}
    with pytest.raises(DataError) as caught:
        list(data.read(path, preference=True))
    error = caught.value
    assert (error.reason, error.field, error.location) == (reason, field, "line 2")
    assert str(path) in str(error) and error.fix


def test_sft_reading_still_refuses_pairs(tmp_path):
    path = _write(tmp_path, "p.jsonl", [{"prompt": "q", "chosen": "a", "rejected": "b"}])
    with pytest.raises(DataError, match="preference data"):
        list(data.read(path))


def test_answers_are_labelled_like_sft_replies(smollm2_tokenizer):
    """Each answer's labels equal SFT's labels of the same conversation under policy=last: the reply and
    its end-of-turn token, nothing of the prompt; both sequences start with the same prompt tokens."""
    template = templates.default_for(smollm2_tokenizer)
    pair = Pair(
        prompt=[data.Message("system", "Be brief."), data.Message("user", "Hi"), data.Message("assistant", "Hello"),
                data.Message("user", "Name a colour.")],
        chosen=[data.Message("assistant", "Blue.")], rejected=[data.Message("assistant", "Seven, of course.")])
    encoded = encode_pair(pair, smollm2_tokenizer, template)
    for answer in ("chosen", "rejected"):
        sft = encode(pair.conversation(answer), smollm2_tokenizer, template, policy="last")
        assert encoded[f"{answer}_input_ids"] == sft["input_ids"]
        assert encoded[f"{answer}_labels"] == sft["labels"]
        trained = [t for t, label in zip(sft["input_ids"], sft["labels"]) if label != IGNORE]
        assert trained[-1] == smollm2_tokenizer.convert_tokens_to_ids("<|im_end|>")  # end of turn trained
    first = next(i for i, label in enumerate(encoded["chosen_labels"]) if label != IGNORE)
    assert encoded["chosen_input_ids"][:first] == encoded["rejected_input_ids"][:first]


def test_pairs_keep_their_tool_calls(tmp_path, smollm2_tokenizer):
    """An answer that calls a tool, gets the result and replies: the call is rendered through the template
    and trained like SFT data, the tool result is context."""
    tools = [{"type": "function", "function": {"name": "weather", "parameters": {"type": "object", "properties": {
        "city": {"type": "string"}}}}}]
    call = {"role": "assistant", "content": "", "tool_calls": [
        {"type": "function", "function": {"name": "weather", "arguments": "{\"city\": \"Oslo\"}"}}]}
    record = {"prompt": [{"role": "user", "content": "Weather in Oslo?"}], "tools": tools,
              "chosen": [call, {"role": "tool", "content": "rain"}, {"role": "assistant", "content": "Rain."}],
              "rejected": [{"role": "assistant", "content": "I cannot know."}]}
    (pair,) = list(data.read(_write(tmp_path, "t.jsonl", [record]), preference=True))
    assert [m.role for m in pair.chosen] == ["tool_call", "tool", "assistant"]
    assert pair.tools == tools
    template = templates.get("qwen2.5", smollm2_tokenizer)
    encoded = encode_pair(pair, smollm2_tokenizer, template)
    ids, labels = encoded["chosen_input_ids"], encoded["chosen_labels"]
    trained = smollm2_tokenizer.decode([t for t, label in zip(ids, labels) if label != IGNORE])
    assert "<tool_call>" in trained and '"Oslo"' in trained and "Rain." in trained
    assert "rain" not in trained.replace("Rain", "")  # the tool's result is not trained
    text = smollm2_tokenizer.decode(ids)
    assert '"name": "weather"' in text and "Weather in Oslo?" in text
