"""data.instruction_position: the user turn of records with an instruction and an input (alpaca,
multitask) puts the instruction before the input, or behind it (Post-Ins)."""

from __future__ import annotations

import json

import pytest

from sftune import data, templates

ALPACA = {"instruction": "Translate to French.", "input": "Good morning.", "output": "Bonjour."}
MULTITASK = {"task_type": "translation", "source_lang": "en", "target_lang": "fr", "source_text": "Good morning.",
             "target_text": "Bonjour."}


@pytest.fixture
def files(tmp_path):
    paths = {}
    for name, record in (("alpaca", ALPACA), ("multitask", MULTITASK)):
        paths[name] = tmp_path / f"{name}.jsonl"
        paths[name].write_text(json.dumps(record) + "\n", encoding="utf-8")
    return paths


@pytest.mark.parametrize("position, expected", [
    ("before", "<|im_start|>user\nTranslate to French.\n\nGood morning.<|im_end|>\n"),
    ("after", "<|im_start|>user\nGood morning.\n\nTranslate to French.<|im_end|>\n"),
])
def test_alpaca_user_turn_for_both_positions(files, position, expected):
    conversation = next(data.read(files["alpaca"], instruction_position=position))
    rendered = templates.get("chatml").render(conversation.messages)
    assert rendered == expected + "<|im_start|>assistant\nBonjour.<|im_end|>\n"


@pytest.mark.parametrize("position, expected", [
    ("before", "Translate the following text from English to French.\n\nGood morning."),
    ("after", "Good morning.\n\nTranslate the following text from English to French."),
])
def test_multitask_user_turn_for_both_positions(files, position, expected):
    conversation = next(data.read(files["multitask"], instruction_position=position))
    assert [m.role for m in conversation.messages] == ["user", "assistant"]
    assert conversation.messages[0].content == expected


def test_records_without_input_are_the_same_either_way(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_text(json.dumps({"instruction": "Say hi.", "input": "", "output": "Hi."}) + "\n", encoding="utf-8")
    users = {p: next(data.read(path, instruction_position=p)).messages[0].content for p in ("before", "after")}
    assert users == {"before": "Say hi.", "after": "Say hi."}


def test_unknown_position_is_refused(files):
    with pytest.raises(ValueError, match="'before' or 'after'"):
        data.read(files["alpaca"], instruction_position="middle")


def test_config_refuses_after_with_a_template_that_heads_instruction_and_input(files, smollm2_tokenizer):
    from sftune.config import ConfigError, load
    from sftune.training.data import prepare_data

    cfg = load({"data": {"train": [str(files["alpaca"])], "instruction_position": "after", "template": "alpaca",
                         "val_ratio": 0}})
    with pytest.raises(ConfigError, match="instruction_position=after: template 'alpaca'"):
        prepare_data(cfg, smollm2_tokenizer, templates.get("alpaca", smollm2_tokenizer))
    cfg = load({"data": {"train": [str(files["alpaca"])], "instruction_position": "after", "val_ratio": 0}})
    encoded = prepare_data(cfg, smollm2_tokenizer, templates.get("chatml", smollm2_tokenizer))
    text = smollm2_tokenizer.decode(encoded.train[0]["input_ids"])
    assert "Good morning.\n\nTranslate to French." in text
