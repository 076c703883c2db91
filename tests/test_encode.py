"""Encoding: ids equal the whole rendered text's ids, labels follow message spans and policies."""

from __future__ import annotations

import numpy as np
import pytest

from sftune import encode as E
from sftune import templates
from sftune.tokencache import tokenize_whole
from sftune.data.schema import Conversation, Message

CHAT = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Hi there!"},
    {"role": "assistant", "content": "Hello! How can I help?"},
    {"role": "user", "content": "What is 2 + 2?"},
    {"role": "assistant", "content": "It is 4."},
]


def trained_text(tokenizer, result) -> list[str]:
    """The trained tokens decoded, as contiguous runs."""
    runs, current = [], []
    for token, label in zip(result["input_ids"], result["labels"]):
        if label != -100:
            assert label == token
            current.append(token)
        elif current:
            runs.append(tokenizer.decode(current))
            current = []
    if current:
        runs.append(tokenizer.decode(current))
    return runs


@pytest.fixture(scope="module")
def bos_tokenizer():
    """A small fast tokenizer that adds <s> by itself, like Llama's and Mistral's."""
    from tokenizers import Tokenizer, models, pre_tokenizers, decoders, processors, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE(unk_token=None))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    special = ["<s>", "</s>", "[INST]", "[/INST]"]
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=special,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    corpus = [m["content"] for m in CHAT] * 20 + ["The quick brown fox jumps over the lazy dog."] * 20
    backend.train_from_iterator(corpus, trainer)
    backend.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 0)])
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>", pad_token="</s>")


@pytest.mark.parametrize("name", ["tokenizer", "chatml", "qwen2.5", "llama3", "gemma", "phi3", "zephyr", "vicuna",
                                  "alpaca", "zh_qa", "llama2", "mistral"])
def test_ids_equal_the_ids_of_the_whole_rendered_text(smollm2_tokenizer, name):
    template = templates.get(name, smollm2_tokenizer)
    chat = CHAT if name not in ("mistral",) else CHAT[1:]
    result = E.encode(chat, smollm2_tokenizer, template)
    text = template.render(chat)
    assert result["input_ids"] == smollm2_tokenizer(text, add_special_tokens=False)["input_ids"]
    assert len(result["labels"]) == len(result["input_ids"])


def test_assistant_policy_trains_replies_and_their_end_of_turn_even_when_pad_is_eos(smollm2_tokenizer):
    tok = smollm2_tokenizer
    assert tok.pad_token_id == tok.eos_token_id  # SmolLM2: <|im_end|> is both
    result = E.encode(CHAT, tok, templates.get("tokenizer", tok))
    assert trained_text(tok, result) == ["Hello! How can I help?<|im_end|>", "It is 4.<|im_end|>"]
    eos_positions = [k for k, t in enumerate(result["input_ids"]) if t == tok.eos_token_id]
    trained_eos = [k for k in eos_positions if result["labels"][k] == tok.eos_token_id]
    assert len(trained_eos) == 2


def test_builtin_and_jinja_spans_give_the_same_labels(smollm2_tokenizer):
    """Spans from the template dict and from prefix renders of its exported jinja agree."""
    for name in ("chatml", "llama3", "gemma", "zephyr", "vicuna", "phi3"):
        builtin = templates.get(name, smollm2_tokenizer)
        jinja = templates.get({"name": name, "jinja": builtin.to_jinja()}, smollm2_tokenizer)
        assert E.encode(CHAT, smollm2_tokenizer, builtin) == E.encode(CHAT, smollm2_tokenizer, jinja), name


def test_policies_and_per_message_flags(smollm2_tokenizer):
    tok, template = smollm2_tokenizer, templates.get("chatml", smollm2_tokenizer)
    last = E.encode(CHAT, tok, template, policy="last")
    assert trained_text(tok, last) == ["It is 4.<|im_end|>"]
    everything = E.encode(CHAT, tok, template, policy="all")
    assert everything["labels"][0] == -100 and everything["labels"][1:] == everything["input_ids"][1:]
    flagged = [dict(m) for m in CHAT]
    flagged[2]["train"] = False
    flagged[3]["train"] = True
    result = E.encode(flagged, tok, template)
    assert trained_text(tok, result) == ["<|im_start|>user\nWhat is 2 + 2?<|im_end|>\n", "It is 4.<|im_end|>"]
    with pytest.raises(ValueError, match="unknown masking policy"):
        E.encode(CHAT, tok, template, policy="prompt")


def test_tool_calls_are_trained_and_tool_results_are_not(smollm2_tokenizer):
    tok = smollm2_tokenizer
    chat = Conversation([Message("user", "Weather in Paris?"),
                         Message("tool_call", '{"name": "get_weather", "arguments": {"city": "Paris"}}'),
                         Message("tool", '{"temp": 21}'), Message("assistant", "It is 21 degrees.")])
    result = E.encode(chat, tok, templates.get("qwen2.5", tok))
    assert trained_text(tok, result) == [
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call><|im_end|>',
        "It is 21 degrees.<|im_end|>"]


def test_never_two_bos_with_a_tokenizer_that_adds_one(bos_tokenizer):
    tok = bos_tokenizer
    for name in ("llama2", "mistral", "vicuna", "alpaca"):
        template = templates.get(name, tok)
        chat = CHAT[1:] if name == "mistral" else CHAT
        text = template.render(chat)
        assert text.startswith("<s>")
        assert tok(text)["input_ids"][:2] == [0, 0]  # the trap: the tokenizer adds a second one
        result = E.encode(chat, tok, template)
        assert result["input_ids"][0] == 0 and result["input_ids"][1] != 0
        assert result["input_ids"] == tok(text, add_special_tokens=False)["input_ids"]
    doubled = templates.get({"name": "double", "prefix": "{bos}{bos}", "user": "{content}", "assistant": "{content}{eos}",
                             "generation_prompt": "", "end": "{eos}"}, tok)
    with pytest.raises(templates.TemplateError, match="two BOS"):
        E.encode(CHAT, tok, doubled)


def test_truncation_drops_history_first_then_cuts_the_prompt(smollm2_tokenizer):
    tok, template = smollm2_tokenizer, templates.get("chatml", smollm2_tokenizer)
    long_history = [CHAT[0]] + [{"role": "user", "content": "word " * 40}, {"role": "assistant", "content": "ok " * 40}] \
        + CHAT[3:]
    full = E.encode(long_history, tok, template)
    last_only = E.encode(CHAT[:1] + CHAT[3:], tok, template)
    result = E.encode(long_history, tok, template, max_len=len(last_only["input_ids"]) + 5)
    assert result == last_only  # the old exchange went, the system prompt and last exchange stayed
    assert len(full["input_ids"]) > len(result["input_ids"])
    cut = E.encode(CHAT[:1] + CHAT[3:], tok, template, max_len=12)
    assert len(cut["input_ids"]) == 12
    assert trained_text(tok, cut) == ["It is 4.<|im_end|>"]  # every trained token kept
    assert cut["input_ids"][-6:] == last_only["input_ids"][-6:]


def test_a_record_with_nothing_to_train_is_none(smollm2_tokenizer):
    tok, template = smollm2_tokenizer, templates.get("chatml", smollm2_tokenizer)
    assert E.encode(CHAT[:2], tok, template) is None  # no assistant turn
    flagged = [dict(m, train=False) for m in CHAT]
    assert E.encode(flagged, tok, template) is None


def test_encode_dataset_matches_encode_reports_skips_and_hits_its_cache(smollm2_tokenizer, tmp_path):
    tok, template = smollm2_tokenizer, templates.get("tokenizer", smollm2_tokenizer)
    conversations = [Conversation.from_dict({"messages": CHAT}),
                     Conversation.from_dict({"messages": CHAT[:2], "meta": {"source": "a.jsonl", "line": 2}}),
                     Conversation.from_dict({"messages": [{"role": "user", "content": "weighted"},
                                                          {"role": "assistant", "content": "half", "weight": 0.5}]})]
    dataset, report = E.encode_dataset(conversations, tok, template, cache_dir=tmp_path)
    assert report["cache"] == "miss" and report["total"] == 3 and report["encoded"] == 2
    assert report["skipped_by_reason"] == {"no_trained_token": 1}
    assert report["skipped_records"][0]["where"] == "a.jsonl:2"
    assert set(dataset.column_names) == {"input_ids", "labels", "loss_weights"}
    for row, conv in zip(dataset, [conversations[0], conversations[2]]):
        one = E.encode(conv, tok, template)
        assert row["input_ids"] == one["input_ids"] and row["labels"] == one["labels"]
    weights = dataset[1]["loss_weights"]
    assert {w for w, label in zip(weights, dataset[1]["labels"]) if label != -100} == {0.5}
    again, report2 = E.encode_dataset(conversations, tok, template, cache_dir=tmp_path)
    assert report2["cache"] == "hit" and again["labels"] == dataset["labels"]
    _, report3 = E.encode_dataset(conversations, tok, template, policy="all", cache_dir=tmp_path)
    assert report3["cache"] == "miss"  # another policy is another fingerprint


def _reference_labels(ids, offsets, spans, n_chars):
    """A token is trained when one of its characters (an empty token: the next one) lies in a span."""
    trained = set()
    for a, b, _ in spans:
        trained.update(range(a, b))
    labels = []
    for token, (start, end) in zip(ids, offsets):
        start = min(start, n_chars)
        chars = range(start, min(max(end, start + 1), n_chars))
        labels.append(token if any(c in trained for c in chars) else -100)
    return [-100] + labels[1:] if labels else labels


@pytest.fixture(scope="module")
def odd_offset_tokenizers():
    """Backends whose offsets have empty tokens (trimmed byte-level) or skip characters (BERT-style)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers

    corpus = ["hello world  and\n\n  more 🦜 text 你好 é", "the quick brown fox"] * 20
    trimmed = Tokenizer(models.BPE())
    trimmed.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trimmed.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=300,
                                                            initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    trimmed.post_processor = processors.ByteLevel(trim_offsets=True)
    bert = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    bert.normalizer = normalizers.BertNormalizer()
    bert.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    bert.train_from_iterator(corpus, trainers.WordPieceTrainer(vocab_size=200, special_tokens=["[UNK]"]))
    return [trimmed, bert]


def test_batched_labels_mark_exactly_the_tokens_that_overlap_a_trained_span(smollm2_tokenizer, bos_tokenizer,
                                                                             odd_offset_tokenizers):
    """Labels of a whole batch at once equal a token-by-token reference, also with empty or skipping offsets."""
    import random

    rng = random.Random(0)
    pieces = ["a", "b", " ", "  ", "\n", "\n\n", " \n ", "🦜", "你好", "hello", " world", "é", "<|im_end|>", "</s>",
              "<s>", "42", "!?"]
    backends = [smollm2_tokenizer.backend_tokenizer, bos_tokenizer.backend_tokenizer, *odd_offset_tokenizers]
    for b, backend in enumerate(backends):
        texts, spans = [], []
        for _ in range(200):
            segments = ["".join(rng.choice(pieces) for _ in range(rng.randint(1, 4))) for _ in range(rng.randint(1, 7))]
            text, row, pos = "".join(segments), [], 0
            for segment in segments:
                if rng.random() < 0.5:
                    row.append((pos, pos + len(segment), 1.0))
                pos += len(segment)
            texts.append(text)
            spans.append(row)
        ids, starts, ends, counts = tokenize_whole(backend, texts)
        labels, _ = E._flat_labels(ids, starts, ends, counts, np.array([len(t) for t in texts]), spans, False)
        expected = []
        for text, row in zip(texts, spans):
            encoding = backend.encode(text, add_special_tokens=False)
            expected += _reference_labels(encoding.ids, encoding.offsets, row, len(text))
        assert labels.tolist() == expected, b


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
                dataset, _ = E.encode_dataset(conversations, tok, template, policy=policy, use_cache=False,
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
    dataset, report = E.encode_dataset(records, tok, template, max_len=max_len, use_cache=False, progress=False)
    expected = [E.encode(r, tok, template, max_len=max_len) for r in records]
    assert dataset["input_ids"] == [r["input_ids"] for r in expected if r]
    assert dataset["labels"] == [r["labels"] for r in expected if r]
    assert report["truncated"] == 2 and report["skipped_by_reason"] == {"no_trained_token": 1}
    assert report["skipped_records"][0]["where"] == "record 2"
    doubled = templates.get({"name": "double", "prefix": "{bos}{bos}", "user": "{content}", "assistant": "{content}{eos}",
                             "generation_prompt": "", "end": "{eos}"}, bos_tokenizer)
    dataset, report = E.encode_dataset([{"messages": CHAT}], bos_tokenizer, doubled, use_cache=False, progress=False)
    assert len(dataset) == 0 and report["skipped_by_reason"] == {"two_bos": 1}


def _many(n: int) -> list[dict]:
    """Conversations with repeated and unique words, a few that fail to render and a few too long."""
    import random

    rng = random.Random(1)
    words = ["alpha", "beta", "gamma", "δέλτα", "日本", "🦜", "don't", "42", "  ", "\n"]
    say = lambda k: " ".join(rng.choice(words) + str(rng.randint(0, 3)) for _ in range(k))  # noqa: E731
    records = []
    for i in range(n):
        chat = [{"role": "user", "content": say(rng.randint(1, 12))}, {"role": "assistant", "content": say(rng.randint(1, 30))}]
        if i % 97 == 5:
            chat = chat[:1]  # nothing to train
        records.append({"messages": chat})
    return records


def test_worker_processes_give_the_single_process_result(smollm2_tokenizer):
    template = templates.get("chatml", smollm2_tokenizer)
    records = _many(600)
    one, report1 = E.encode_dataset(records, smollm2_tokenizer, template, max_len=48, batch_size=50, workers=1,
                                    use_cache=False, progress=False)
    two, report2 = E.encode_dataset(records, smollm2_tokenizer, template, max_len=48, batch_size=50, workers=2,
                                    use_cache=False, progress=False)
    assert one["input_ids"] == two["input_ids"] and one["labels"] == two["labels"]
    assert {k: v for k, v in report1.items() if k != "tokenizer"} == {k: v for k, v in report2.items() if k != "tokenizer"}
    assert report1["truncated"] > 0 and report1["skipped"] > 0
    expected = [E.encode(r, smollm2_tokenizer, template, max_len=48) for r in records]
    assert one["input_ids"] == [r["input_ids"] for r in expected if r]
    assert one["labels"] == [r["labels"] for r in expected if r]
    assert report1["tokenizer"].startswith("word cache")


def test_tokenizers_the_word_cache_cannot_take_are_tokenized_whole(odd_offset_tokenizers):
    from transformers import PreTrainedTokenizerFast

    wordpiece = PreTrainedTokenizerFast(tokenizer_object=odd_offset_tokenizers[1], unk_token="[UNK]", eos_token="[UNK]")
    template = templates.get("chatml", wordpiece)
    records = _many(50)
    dataset, report = E.encode_dataset(records, wordpiece, template, use_cache=False, progress=False)
    assert report["tokenizer"] == "whole texts (not a BPE model without dropout)"
    expected = [E.encode(r, wordpiece, template) for r in records]
    assert dataset["labels"] == [r["labels"] for r in expected if r]


def test_a_word_cache_that_disagrees_is_dropped_for_whole_texts(smollm2_tokenizer, monkeypatch, caplog):
    """The first batch is checked against the tokenizer; a difference never reaches the dataset."""
    from sftune.tokencache import PieceCache

    real = PieceCache.encode

    def off_by_one(self, texts):
        ids, starts, ends, counts = real(self, texts)
        return ids + 1, starts, ends, counts

    monkeypatch.setattr(PieceCache, "encode", off_by_one)
    template = templates.get("chatml", smollm2_tokenizer)
    records = _many(120)
    dataset, report = E.encode_dataset(records, smollm2_tokenizer, template, batch_size=40, workers=1,
                                       use_cache=False, progress=False)
    assert "disagreed" in report["tokenizer"] and "other ids than the tokenizer" in caplog.text
    expected = [E.encode(r, smollm2_tokenizer, template) for r in records]
    assert dataset["input_ids"] == [r["input_ids"] for r in expected if r]


def test_long_batches_are_tokenized_a_few_characters_at_a_time(smollm2_tokenizer, monkeypatch):
    template = templates.get("chatml", smollm2_tokenizer)
    records = _many(80)
    for record in records[::7]:
        record["messages"][-1]["weight"] = 0.5
    whole, _ = E.encode_dataset(records, smollm2_tokenizer, template, workers=1, use_cache=False, progress=False)
    monkeypatch.setattr(E, "MAX_CHARS_AT_ONCE", 300)  # a few conversations per slice, some alone
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


def test_last_policy_trains_the_whole_last_turn_text_and_its_tool_calls():
    messages = templates.normalize_messages([
        {"role": "user", "content": "Paris?"},
        {"role": "assistant", "content": "Checking.", "tool_calls": [
            {"type": "function", "function": {"name": "weather", "arguments": {"city": "Paris"}}}]},
    ])
    assert [m["role"] for m in messages] == ["user", "assistant", "tool_call"]
    assert E.trained_flags(messages, "last") == [False, True, True]
    two_turns = messages + [{"role": "tool", "content": "21"}, {"role": "assistant", "content": "21°C."}]
    assert E.trained_flags(templates.normalize_messages(two_turns), "last") == [False, False, False, False, True]
