"""Quality: duplicates, statistics, noise flags, language mix and annotator agreement."""

from __future__ import annotations

import pytest

from sftune.data import Conversation, Message
from sftune.data.quality import cohen_kappa, dedup, stats

BASE = (
    "Photosynthesis turns light, water and carbon dioxide into sugar and oxygen. It happens in the "
    "chloroplasts of plant cells, where chlorophyll absorbs mostly red and blue light."
)


def conv(user: str, reply: str, line: int, **extra) -> Conversation:
    meta = {"source": "d.jsonl", "line": line}
    if extra:
        meta["extra"] = extra
    return Conversation([Message("user", user), Message("assistant", reply)], meta=meta)


def test_dedup_finds_exact_and_near_duplicates_and_keeps_the_first():
    items = [
        conv("Explain photosynthesis.", BASE, 1),
        conv("explain   PHOTOSYNTHESIS.", BASE.upper(), 2),  # same after case and space folding
        conv("Explain photosynthesis.", BASE.replace("mostly", "mainly"), 3),  # one word changed
        conv("What is the capital of France?", "Paris is the capital of France.", 4),
    ]
    found = [duplicate for _, duplicate in dedup(items)]
    assert found == [None, {"kind": "exact", "of": "d.jsonl line 1"}, {"kind": "near", "of": "d.jsonl line 1"}, None]
    assert [d for _, d in dedup(items, near=False)][2] is None


def test_cohen_kappa_matches_the_textbook_example():
    # Wikipedia's worked example: 20 yes/yes, 5 yes/no, 10 no/yes, 15 no/no -> kappa = 0.4
    a = ["yes"] * 25 + ["no"] * 25
    b = ["yes"] * 20 + ["no"] * 5 + ["yes"] * 10 + ["no"] * 15
    assert cohen_kappa(a, b) == pytest.approx(0.4)
    assert cohen_kappa(a, a) == pytest.approx(1.0)


def test_stats_counts_lengths_languages_flags_and_agreement(smollm2_tokenizer):
    items = [
        conv("Hi", "Hello there, how can I help you today with your question?", 1, annotations={"ann1": "good", "ann2": "good"}),
        conv("你好", "你好！今天我能帮你做什么？请告诉我你的问题。", 2, annotations={"ann1": "bad", "ann2": "good"}),
        conv("Think", "<think>\n</think>\n\nThe answer is four, since two plus two is four.", 3,
             annotations=[{"annotator": "ann1", "label": "good"}, {"annotator": "ann2", "label": "good"}]),
        conv("Repeat", "buy now " * 20, 4),
        conv("Noise", "a" * 60, 5),
    ]
    result = stats(items, tokenizer=smollm2_tokenizer)
    assert result["conversations"] == 5
    assert result["languages"] == {"en": 4, "zh": 1}
    assert result["flags"]["empty_think"] == {"count": 1, "examples": ["d.jsonl line 3"]}
    assert result["flags"]["repeated_ngrams"]["examples"] == ["d.jsonl line 4", "d.jsonl line 5"]
    assert result["flags"]["low_entropy"]["examples"] == ["d.jsonl line 5"]
    assert result["characters"]["max"] == max(len(c.messages[0].content) + 1 + len(c.messages[1].content) for c in items)
    assert sum(result["characters"]["histogram"]["counts"]) == 5
    expected_tokens = [sum(len(smollm2_tokenizer(m.content, add_special_tokens=False)["input_ids"]) for m in c.messages) for c in items]
    assert result["tokens"]["max"] == max(expected_tokens) and result["tokens"]["min"] == min(expected_tokens)
    pair = result["agreement"]["cohen_kappa"]["ann1 vs ann2"]
    assert pair == {"items": 3, "kappa": 0.0}  # observed agreement 2/3 equals chance agreement 2/3
