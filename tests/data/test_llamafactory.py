"""LLaMA-Factory's dataset_info.json read as it is: alpaca, sharegpt with tags, pre-training text."""

from __future__ import annotations

import json

import pytest

from sftune.data import DataError, read


@pytest.fixture
def factory_dir(tmp_path):
    """A data folder laid out like LLaMA-Factory's data/ (entries copied from its documentation)."""
    (tmp_path / "alpaca_demo.json").write_text(json.dumps([
        {"instruction": "Hi", "input": "", "output": "Hello"},
    ]))
    (tmp_path / "my_alpaca.json").write_text(json.dumps([
        {"q": "Capital of Italy?", "ctx": "Europe.", "a": "Rome", "sys": "Be exact.", "hist": [["Hi", "Hello"]]},
    ]))
    (tmp_path / "glaive_demo.json").write_text(json.dumps([{
        "conversations": [
            {"from": "human", "value": "Weather?"},
            {"from": "function_call", "value": '{"name": "w", "arguments": {}}'},
            {"from": "observation", "value": "sunny"},
            {"from": "gpt", "value": "Sunny."},
        ],
        "tools": '[{"name": "w"}]',
    }]))
    (tmp_path / "openai_style.json").write_text(json.dumps([{
        "messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}, {"role": "assistant", "content": "A"}],
    }]))
    (tmp_path / "custom_tags.jsonl").write_text(json.dumps({
        "dialog": [{"who": "client", "said": "hi"}, {"who": "bot", "said": "hello"}],
    }) + "\n")
    (tmp_path / "c4_demo.jsonl").write_text(json.dumps({"text": "Some web text."}) + "\n")
    info = {
        "alpaca_demo": {"file_name": "alpaca_demo.json"},
        "my_alpaca": {"file_name": "my_alpaca.json", "columns": {
            "prompt": "q", "query": "ctx", "response": "a", "system": "sys", "history": "hist"}},
        "glaive_demo": {"file_name": "glaive_demo.json", "formatting": "sharegpt",
                        "columns": {"messages": "conversations", "tools": "tools"}},
        "openai_style": {"file_name": "openai_style.json", "formatting": "sharegpt", "columns": {"messages": "messages"},
                         "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user",
                                  "assistant_tag": "assistant", "system_tag": "system"}},
        "custom_tags": {"file_name": "custom_tags.jsonl", "formatting": "sharegpt", "columns": {"messages": "dialog"},
                        "tags": {"role_tag": "who", "content_tag": "said", "user_tag": "client", "assistant_tag": "bot"}},
        "c4_demo": {"file_name": "c4_demo.jsonl", "columns": {"prompt": "text"}},
        "alpaca_en": {"hf_hub_url": "llamafactory/alpaca_en"},
        "dpo_demo": {"file_name": "alpaca_demo.json", "ranking": True},
        "video_demo": {"file_name": "alpaca_demo.json", "formatting": "sharegpt", "columns": {"messages": "messages", "videos": "videos"}},
    }
    (tmp_path / "dataset_info.json").write_text(json.dumps(info))
    return tmp_path


def by_dataset(conversations):
    return {c.meta["dataset"]: [(m.role, m.content) for m in c.messages] for c in conversations}


def test_every_file_entry_reads_with_its_columns_and_tags(factory_dir, caplog):
    result = by_dataset(read(factory_dir / "dataset_info.json"))
    assert result == {
        "alpaca_demo": [("user", "Hi"), ("assistant", "Hello")],
        "my_alpaca": [("system", "Be exact."), ("user", "Hi"), ("assistant", "Hello"),
                      ("user", "Capital of Italy?\n\nEurope."), ("assistant", "Rome")],
        "glaive_demo": [("user", "Weather?"), ("tool_call", '{"name": "w", "arguments": {}}'), ("tool", "sunny"),
                        ("assistant", "Sunny.")],
        "openai_style": [("system", "S"), ("user", "U"), ("assistant", "A")],
        "custom_tags": [("user", "hi"), ("assistant", "hello")],
        "c4_demo": [("assistant", "Some web text.")],
    }
    # the entries sftune cannot train on are named, not skipped silently
    assert "alpaca_en (a Hugging Face Hub dataset" in caplog.text and "dpo_demo (preference" in caplog.text
    assert "video_demo (video or audio" in caplog.text  # images are read (tests/vision/test_data.py)


def test_the_folder_stands_for_its_dataset_info(factory_dir):
    assert len(list(read(factory_dir))) == 6


def test_entries_chosen_by_name(factory_dir):
    chosen = by_dataset(read(factory_dir / "dataset_info.json", dataset_name="glaive_demo,c4_demo"))
    assert sorted(chosen) == ["c4_demo", "glaive_demo"]
    assert next(read(factory_dir / "dataset_info.json", dataset_name="glaive_demo")).tools == [{"name": "w"}]


@pytest.mark.parametrize("name, message", [("dpo_demo", "preference data"), ("nope", "is not an entry")])
def test_unreadable_entry_named_explicitly_raises(factory_dir, name, message):
    with pytest.raises(DataError, match=message):
        read(factory_dir / "dataset_info.json", dataset_name=name)
