"""Many conversations: encode_dataset equals encode row by row, reports skips, caches, runs on workers."""

from __future__ import annotations

from dataclasses import replace

from sftune import encode as E
from sftune import templates
from sftune.data.schema import Conversation
from sftune.encode import workers
from tests.encode.conftest import CHAT, many


def test_encode_dataset_matches_encode_reports_skips_and_hits_its_cache(smollm2_tokenizer, tmp_path):
    tok, template = smollm2_tokenizer, templates.get("tokenizer", smollm2_tokenizer)
    conversations = [Conversation.from_dict({"messages": CHAT}),
                     Conversation.from_dict({"messages": CHAT[:2], "meta": {"source": "a.jsonl", "line": 2}}),
                     Conversation.from_dict({"messages": [{"role": "user", "content": "weighted"},
                                                          {"role": "assistant", "content": "half", "weight": 0.5}]})]
    dataset, report = E.encode_dataset(conversations, tok, template, cache_dir=tmp_path)
    assert report.cache == "miss" and report.total == 3 and report.encoded == 2
    assert report.skipped_by_reason == {"no_trained_token": 1}
    assert report.skipped_records[0].where == "a.jsonl:2"
    assert set(dataset.column_names) == {"input_ids", "labels", "loss_weights"}
    for row, conv in zip(dataset, [conversations[0], conversations[2]]):
        one = E.encode(conv, tok, template)
        assert row["input_ids"] == one["input_ids"] and row["labels"] == one["labels"]
    weights = dataset[1]["loss_weights"]
    assert {w for w, label in zip(weights, dataset[1]["labels"]) if label != -100} == {0.5}
    again, report2 = E.encode_dataset(conversations, tok, template, cache_dir=tmp_path)
    assert report2.cache == "hit" and again["labels"] == dataset["labels"]
    _, report3 = E.encode_dataset(conversations, tok, template, E.EncodeOptions(policy="all"), cache_dir=tmp_path)
    assert report3.cache == "miss"  # another policy is another fingerprint



def test_encode_dataset_equals_encode_on_awkward_text(smollm2_tokenizer, bos_tokenizer, tmp_path):
    """Emoji, CJK, leading and trailing whitespace, empty replies: the batched path equals the reference."""
    awkward = [
        [{"role": "user", "content": " 🦜🦜 你好"}, {"role": "assistant", "content": "  spaced  \n\n"}],
        [{"role": "system", "content": "\n"}, {"role": "user", "content": "é"}, {"role": "assistant", "content": ""},
         {"role": "user", "content": "again"}, {"role": "assistant", "content": "🦜"}],
        [{"role": "user", "content": "x"}, {"role": "assistant", "content": "42!?", "train": False},
         {"role": "user", "content": "y"}, {"role": "assistant", "content": " z"}],
    ]
    conversations = [Conversation.from_dict({"messages": m}) for m in awkward]
    for tok, names in ((smollm2_tokenizer, ("chatml", "tokenizer", "llama3")), (bos_tokenizer, ("llama2", "vicuna"))):
        for name in names:
            template = templates.get(name, tok)
            for policy in E.POLICIES:
                dataset, _ = E.encode_dataset(conversations, tok, template, E.EncodeOptions(policy=policy), use_cache=False,
                                              progress=False)
                expected = [r for r in (E.encode(c, tok, template, policy=policy) for c in conversations) if r]
                assert dataset["input_ids"] == [r["input_ids"] for r in expected], (name, policy)
                assert dataset["labels"] == [r["labels"] for r in expected], (name, policy)


def test_encode_dataset_truncates_and_skips_like_encode_in_order(smollm2_tokenizer, bos_tokenizer):
    tok, template = smollm2_tokenizer, templates.get("chatml", smollm2_tokenizer)
    long_history = [CHAT[0]] + [{"role": "user", "content": "word " * 40}, {"role": "assistant", "content": "ok " * 40}] \
        + CHAT[3:]
    records = [{"messages": CHAT}, {"messages": long_history}, {"messages": CHAT[:2]}, {"messages": CHAT[:1] + CHAT[3:]}]
    max_len = len(E.encode(CHAT[:1] + CHAT[3:], tok, template)["input_ids"]) + 5
    dataset, report = E.encode_dataset(records, tok, template, E.EncodeOptions(max_len=max_len), use_cache=False,
                                       progress=False)
    expected = [E.encode(r, tok, template, max_len=max_len) for r in records]
    assert dataset["input_ids"] == [r["input_ids"] for r in expected if r]
    assert dataset["labels"] == [r["labels"] for r in expected if r]
    assert report.truncated == 2 and report.skipped_by_reason == {"no_trained_token": 1}
    assert report.skipped_records[0].where == "record 2"
    doubled = templates.get({"name": "double", "prefix": "{bos}{bos}", "user": "{content}", "assistant": "{content}{eos}",
                             "generation_prompt": "", "end": "{eos}"}, bos_tokenizer)
    dataset, report = E.encode_dataset([{"messages": CHAT}], bos_tokenizer, doubled, use_cache=False, progress=False)
    assert len(dataset) == 0 and report.skipped_by_reason == {"two_bos": 1}



def test_worker_processes_give_the_single_process_result(smollm2_tokenizer):
    template = templates.get("chatml", smollm2_tokenizer)
    records = many(600)
    one, report1 = E.encode_dataset(records, smollm2_tokenizer, template, E.EncodeOptions(max_len=48),
                                    batch_size=50, workers=1, use_cache=False, progress=False)
    two, report2 = E.encode_dataset(records, smollm2_tokenizer, template, E.EncodeOptions(max_len=48),
                                    batch_size=50, workers=2, use_cache=False, progress=False)
    assert one["input_ids"] == two["input_ids"] and one["labels"] == two["labels"]
    assert replace(report1, tokenizer="") == replace(report2, tokenizer="")
    assert report1.truncated > 0 and report1.skipped > 0
    expected = [E.encode(r, smollm2_tokenizer, template, max_len=48) for r in records]
    assert one["input_ids"] == [r["input_ids"] for r in expected if r]
    assert one["labels"] == [r["labels"] for r in expected if r]
    assert report1.tokenizer.startswith("word cache")


def test_tokenizers_the_word_cache_cannot_take_are_tokenized_whole(odd_offset_tokenizers):
    from transformers import PreTrainedTokenizerFast

    wordpiece = PreTrainedTokenizerFast(tokenizer_object=odd_offset_tokenizers[1], unk_token="[UNK]", eos_token="[UNK]")
    template = templates.get("chatml", wordpiece)
    records = many(50)
    dataset, report = E.encode_dataset(records, wordpiece, template, use_cache=False, progress=False)
    assert report.tokenizer == "whole texts (not a BPE model without dropout)"
    expected = [E.encode(r, wordpiece, template) for r in records]
    assert dataset["labels"] == [r["labels"] for r in expected if r]


def test_a_word_cache_that_disagrees_is_dropped_for_whole_texts(smollm2_tokenizer, monkeypatch, caplog):
    """The first batch is checked against the tokenizer; a difference never reaches the dataset."""
    from sftune.encode.tokencache import PieceCache

    real = PieceCache.encode

    def off_by_one(self, texts):
        ids, starts, ends, counts = real(self, texts)
        return ids + 1, starts, ends, counts

    monkeypatch.setattr(PieceCache, "encode", off_by_one)
    template = templates.get("chatml", smollm2_tokenizer)
    records = many(120)
    dataset, report = E.encode_dataset(records, smollm2_tokenizer, template, batch_size=40, workers=1,
                                       use_cache=False, progress=False)
    assert "disagreed" in report.tokenizer and "other ids than the tokenizer" in caplog.text
    expected = [E.encode(r, smollm2_tokenizer, template) for r in records]
    assert dataset["input_ids"] == [r["input_ids"] for r in expected if r]


def test_long_batches_are_tokenized_a_few_characters_at_a_time(smollm2_tokenizer, monkeypatch):
    template = templates.get("chatml", smollm2_tokenizer)
    records = many(80)
    for record in records[::7]:
        record["messages"][-1]["weight"] = 0.5
    whole, _ = E.encode_dataset(records, smollm2_tokenizer, template, workers=1, use_cache=False, progress=False)
    monkeypatch.setattr(workers, "MAX_CHARS_AT_ONCE", 300)  # a few conversations per slice, some alone
    sliced, _ = E.encode_dataset(records, smollm2_tokenizer, template, workers=1, use_cache=False, progress=False)
    assert sliced["input_ids"] == whole["input_ids"] and sliced["labels"] == whole["labels"]
    assert sliced["loss_weights"] == whole["loss_weights"] and {0.5, 1.0} <= {w for row in whole["loss_weights"] for w in row}


def test_cli_data_encode_reports_what_training_would_get(tmp_path):
    import json

    from typer.testing import CliRunner

    from sftune.cli import app

    data = tmp_path / "chat.jsonl"
    unique = {"role": "system", "content": f"Run {tmp_path.name}."}  # a fresh fingerprint each run
    rows = [[unique, *CHAT[1:3]], [unique, *CHAT[1:]],
            [unique, CHAT[1], {"role": "assistant", "content": "not trained", "train": False}]]
    data.write_text("".join(json.dumps({"messages": m}) + "\n" for m in rows))
    runner = CliRunner()
    out = runner.invoke(app, ["data", "encode", str(data), "--template", "chatml"], env={"COLUMNS": "200"})
    assert out.exit_code == 0, out.output
    assert "records: 3   encoded: 2   truncated: 0   skipped: 1" in out.output
    assert "no_trained_token" in out.output and "chat.jsonl:3" in out.output
    assert "tokenized by word cache" in out.output
    again = runner.invoke(app, ["data", "encode", str(data), "--template", "chatml"], env={"COLUMNS": "200"})
    assert "from the cache" in again.output
