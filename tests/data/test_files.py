"""Every file kind reads to the same conversations: JSON array, JSONL, CSV/TSV, Parquet, Arrow,
datasets save_to_disk folders, globs and folders."""

from __future__ import annotations

import json

import pytest

from sftune.data import read

RECORDS = [
    {"instruction": "Name a colour.", "input": "", "output": "Blue."},
    {"instruction": "Add.", "input": "1 and 2", "output": "3"},
    {"instruction": "Greet.", "input": "", "output": "Hello!"},
]


def messages_of(conversations):
    return [[(m.role, m.content) for m in c.messages] for c in conversations]


@pytest.fixture
def expected(tmp_path_factory):
    """The reference: what the same records give through JSONL."""
    path = tmp_path_factory.mktemp("reference") / "reference.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    return messages_of(read(path))


def write(kind: str, folder):
    """Write RECORDS as one file kind; returns the path to read and the location key meta should carry."""
    import pyarrow as pa

    table = pa.Table.from_pylist(RECORDS)
    if kind == "json-array":
        path = folder / "data.json"
        path.write_text(json.dumps(RECORDS, indent=2))
        return path, "record"
    if kind == "json-object":
        path = folder / "data.json"
        path.write_text(json.dumps({"version": 1, "data": RECORDS}))
        return path, "record"
    if kind == "json-lines-named-json":
        path = folder / "data.json"
        path.write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
        return path, "line"
    if kind in ("csv", "tsv"):
        import csv

        path = folder / f"data.{kind}"
        with open(path, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(RECORDS[0]), delimiter="\t" if kind == "tsv" else ",")
            writer.writeheader()
            writer.writerows(RECORDS)
        return path, "line"
    if kind == "parquet":
        import pyarrow.parquet as pq

        path = folder / "data.parquet"
        pq.write_table(table, path)
        return path, "record"
    if kind == "arrow":
        from datasets import Dataset

        dataset = Dataset.from_list(RECORDS)
        dataset.save_to_disk(str(folder / "saved"))
        (path,) = (folder / "saved").glob("*.arrow")
        return path, "record"
    if kind == "save-to-disk":
        from datasets import Dataset

        Dataset.from_list(RECORDS).save_to_disk(str(folder / "saved"))
        return folder / "saved", "record"
    raise AssertionError(kind)


KINDS = ["json-array", "json-object", "json-lines-named-json", "csv", "tsv", "parquet", "arrow", "save-to-disk"]


@pytest.mark.parametrize("kind", KINDS)
def test_every_file_kind_reads_like_jsonl(tmp_path, kind, expected):
    path, unit = write(kind, tmp_path)
    conversations = list(read(path))
    assert messages_of(conversations) == expected
    first = {"record": 0, "line": 2 if kind in ("csv", "tsv") else 1}[unit]  # CSV line 1 is the header
    assert [c.meta[unit] for c in conversations] == [first, first + 1, first + 2]
    assert {c.meta["format"] for c in conversations} == {"alpaca"}


def test_csv_line_numbers_are_file_lines(tmp_path):
    path, _ = write("csv", tmp_path)
    assert [c.meta["line"] for c in read(path)] == [2, 3, 4]  # line 1 is the header


def test_dataset_dict_folder_reads_every_split(tmp_path, expected):
    from datasets import Dataset, DatasetDict

    DatasetDict({"train": Dataset.from_list(RECORDS[:2]), "test": Dataset.from_list(RECORDS[2:])}).save_to_disk(
        str(tmp_path / "dd")
    )
    conversations = list(read(tmp_path / "dd"))
    assert messages_of(conversations) == expected
    assert [c.meta["source"].rsplit("/", 1)[1] for c in conversations] == ["train", "train", "test"]


def test_parquet_streams_in_batches(tmp_path, monkeypatch):
    """More rows than one batch: the record index runs on across batches."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from sftune.data import files

    monkeypatch.setattr(files, "BATCH_ROWS", 2)
    rows = [{"prompt": f"q{i}", "completion": f"a{i}"} for i in range(5)]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "data.parquet", row_group_size=2)
    conversations = list(read(tmp_path / "data.parquet"))
    assert [c.meta["record"] for c in conversations] == [0, 1, 2, 3, 4]
    assert [c.messages[1].content for c in conversations] == [f"a{i}" for i in range(5)]


def test_parquet_struct_messages_with_null_fields(tmp_path):
    """Arrow unifies message structs: absent keys come back as null and must read as absent."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"messages": [{"role": "user", "content": "q", "weight": None},
                          {"role": "assistant", "content": "a", "weight": 1.0}]}]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "m.parquet")
    (conversation,) = read(tmp_path / "m.parquet")
    assert [(m.role, m.content, m.weight) for m in conversation.messages] == [("user", "q", None), ("assistant", "a", 1.0)]


def test_folder_and_glob_read_every_file_in_sorted_order_each_with_its_format(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.jsonl").write_text(json.dumps({"question": "q", "answer": "a"}) + "\n")
    (tmp_path / "sub" / "b.jsonl").write_text(json.dumps({"prompt": "p", "completion": "c"}) + "\n")
    (tmp_path / "notes.md").write_text("not data")
    by_folder = [(c.meta["dataset"], c.meta["format"]) for c in read(tmp_path)]
    assert by_folder == [("a", "qa"), ("b", "prompt_completion")]
    by_glob = [(c.meta["dataset"], c.meta["format"]) for c in read(str(tmp_path / "**" / "*.jsonl"))]
    assert by_glob == by_folder


def test_utf8_bom_and_blank_lines_are_not_records(tmp_path):
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(RECORDS[0]).encode() + b"\n\n" + json.dumps(RECORDS[1]).encode() + b"\n")
    assert [c.meta["line"] for c in read(path)] == [1, 3]


def test_chinese_text_survives_every_step(tmp_path):
    path = tmp_path / "zh.jsonl"
    path.write_text(json.dumps({"instruction": "你好", "output": "你好！有什么可以帮你？"}, ensure_ascii=False) + "\n", encoding="utf-8")
    assert next(read(path)).messages[1].content == "你好！有什么可以帮你？"


@pytest.mark.parametrize("name, opener", [("data.jsonl.gz", "gzip"), ("data.json.bz2", "bz2"), ("data.csv.xz", "lzma")])
def test_compressed_files_read_like_plain_ones(tmp_path, name, opener, expected):
    import importlib

    plain = {"data.jsonl.gz": "json-lines-named-json", "data.json.bz2": "json-array", "data.csv.xz": "csv"}[name]
    source, _ = write(plain, tmp_path)
    with importlib.import_module(opener).open(tmp_path / name, "wb") as packed:
        packed.write(source.read_bytes())
    assert messages_of(read(tmp_path / name)) == expected
