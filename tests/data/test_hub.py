"""`hub:ORG/NAME[/SUBSET][:SPLIT]` data paths, read through datasets.load_dataset from its own cache.

Offline throughout: HF_HUB_OFFLINE on, the endpoint a closed local port, and a datasets cache in
tmp_path laid out as `datasets` leaves it after loading a hub repository once (prepared Arrow files
under ORG___NAME/CONFIG/VERSION/HASH)."""

from __future__ import annotations

import json
import logging
import shutil

import pytest

from sftune.config import load
from sftune.data import DataError, hub, read
from sftune.data.entries import read_entries

from .conftest import write_jsonl

ALPACA = [{"instruction": f"Say {i}.", "output": f"{i}"} for i in range(5)]
CHATS = [{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": f"hello {i}"}]}
         for i in range(2)]


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """cache(repo, {split: records}, subset="default"): `repo` as the datasets cache holds it after a download."""
    import datasets
    from datasets.packaged_modules.json.json import Json

    cache = tmp_path / "hf-datasets"
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", cache)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    hub._load.cache_clear()

    def make(repo: str, splits: dict[str, list], subset: str = "default") -> None:
        org, name = repo.split("/")
        files = {split: str(write_jsonl(tmp_path / f"{name}-{subset}-{split}.jsonl", records))
                 for split, records in splits.items()}
        builder = Json(dataset_name=name, config_name=subset, config_id=subset, data_files=files, hash="0123abcd",
                       cache_dir=str(tmp_path / "build"))
        builder.download_and_prepare()
        target = cache / f"{org}___{name}" / subset
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(tmp_path / "build" / name / subset, target)

    yield make
    hub._load.cache_clear()


def test_a_hub_dataset_is_read_offline_from_the_datasets_cache(hub_cache):
    hub_cache("me/alpaca", {"train": ALPACA, "test": ALPACA[:2]})
    conversations = list(read("hub:me/alpaca"))
    assert [c.messages[-1].content for c in conversations] == ["0", "1", "2", "3", "4"]
    first = conversations[0].meta
    assert (first["format"], first["source"], first["dataset"], first["record"]) == (
        "alpaca", "hub:me/alpaca", "hub:me/alpaca", 0)
    assert len(list(read("hub:me/alpaca:test"))) == 2
    assert [c.messages[-1].content for c in read("hub:me/alpaca:train[1:3]")] == ["1", "2"]


def test_a_subset_is_a_configuration_of_the_repository(hub_cache):
    hub_cache("me/chats", {"train": CHATS}, subset="short")
    assert [c.messages[-1].content for c in read("hub:me/chats/short")] == ["hello 0", "hello 1"]


def test_the_training_config_mixes_hub_datasets_with_files(hub_cache, tmp_path):
    hub_cache("me/alpaca", {"train": ALPACA})
    local = write_jsonl(tmp_path / "local.jsonl", CHATS)
    cfg = load(None, [f"data.train=[{local}, {{path: 'hub:me/alpaca', weight: 2}}]"])
    conversations = read_entries(cfg, "train", {"on_error": "raise"})
    assert sorted(c.meta["dataset"] for c in conversations) == ["hub:me/alpaca"] * 10 + ["local"] * 2


def test_offline_and_not_cached_says_so_before_reading(hub_cache):
    with pytest.raises(DataError, match=r"hub:me/missing: cannot be reached and is not in the datasets cache .*"
                                        r"load it once on a machine that is online"):
        read("hub:me/missing")  # raised when the paths are checked, not at the first record


def test_an_unknown_split_names_the_ones_there_are(hub_cache):
    hub_cache("me/alpaca", {"train": ALPACA})
    with pytest.raises(DataError, match=r"hub:me/alpaca:validation: cannot be loaded: Unknown split \"validation\""):
        read("hub:me/alpaca:validation")


def test_a_malformed_hub_name_shows_the_form(hub_cache):
    with pytest.raises(DataError, match="hub:alpaca: is not a hub dataset name; write hub:ORG/NAME"):
        read("hub:alpaca")


def test_llamafactory_hub_entries_are_read_when_named_and_left_out_otherwise(hub_cache, tmp_path, caplog):
    hub_cache("me/alpaca", {"train": ALPACA, "test": ALPACA[:2]})
    write_jsonl(tmp_path / "local.jsonl", CHATS)
    info = {"local": {"file_name": "local.jsonl", "formatting": "openai"},
            "alpaca_test": {"hf_hub_url": "me/alpaca", "split": "test"},
            "not_cached": {"hf_hub_url": "me/missing"}}
    (tmp_path / "dataset_info.json").write_text(json.dumps(info))
    named = list(read(tmp_path / "dataset_info.json", dataset_name="alpaca_test"))
    assert [(c.meta["dataset"], c.meta["source"]) for c in named] == [("alpaca_test", "hub:me/alpaca:test")] * 2
    with caplog.at_level(logging.WARNING, logger="sftune.data"):
        every = list(read(tmp_path / "dataset_info.json"))  # nothing is loaded from the hub
    assert [c.meta["dataset"] for c in every] == ["local", "local"]
    assert "alpaca_test (a Hugging Face Hub dataset; name it" in caplog.text
