"""The word cache gives exactly the ids and offsets of tokenizing each text whole."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
from tokenizers import Tokenizer

from sftune.encode import tokencache
from sftune.encode.tokencache import LLAMA3_PATTERN, QWEN2_PATTERN, PieceCache, why_not

# Everything the cut rule has to get right: runs and kinds of whitespace next to spaces, text that
# starts or ends with a space, contractions (Llama 3 matches them in any case), digit runs (cut in
# threes by Llama 3, one by one by Qwen 2), combining marks (NFC composes them), CJK, emoji, special
# tokens inside text, and characters Python and the regex engine may class differently.
PIECES = [" ", "  ", "   ", "\n", "\n\n", " \n", "\n ", "\t", " \t ", "\r\n", "\u00a0", "\u3000", "\x1c", "\u200b",
          "\u2028", "\u180e", "\ufeff", "hello", "world", "Hello", "a", "I", "'s", "'S", "'ll", "don't", "12345", "7", "3.14", "e\u0301",
          "é", "你好", "世界", "🦜", "👩‍💻", "<|im_start|>", "<|im_end|>", "<|endoftext|>", "!?", "...", "(x)", "#",
          "_", "-", "—", "ß", "İ", "ﬁ", "Ⅻ", "½", "٣"]


def texts(seed: int, n: int) -> list[str]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        words = [rng.choice(PIECES) for _ in range(rng.randint(0, 25))]
        out.append("".join(w if rng.random() < 0.3 else " " + w for w in words))
    return out


def variant(backend: Tokenizer, pattern: str | None = None, normalizer: dict | None = None) -> Tokenizer:
    """The same vocabulary behind another pre-tokenizer regex (Llama 3's, Qwen 2's) and normalizer."""
    spec = json.loads(backend.to_str())
    if pattern is not None:
        spec["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": pattern}, "behavior": "Isolated", "invert": False},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}]}
    spec["normalizer"] = normalizer
    return Tokenizer.from_str(json.dumps(spec))


@pytest.fixture(scope="module")
def backends(smollm2_tokenizer):
    gpt2 = smollm2_tokenizer.backend_tokenizer
    return {"gpt2": gpt2, "llama3": variant(gpt2, LLAMA3_PATTERN),
            "qwen2+nfc": variant(gpt2, QWEN2_PATTERN, {"type": "NFC"})}


def whole(backend: Tokenizer, batch: list[str]):
    encodings = backend.encode_batch(batch, add_special_tokens=False)
    ids = [i for e in encodings for i in e.ids]
    offsets = np.array([o for e in encodings for o in e.offsets], dtype=np.int64).reshape(-1, 2)
    return ids, offsets, [len(e.ids) for e in encodings]


def assert_same(cache: PieceCache, backend: Tokenizer, batch: list[str]) -> None:
    ids, starts, ends, counts = cache.encode(batch)
    ref_ids, ref_offsets, ref_counts = whole(backend, batch)
    assert counts.tolist() == ref_counts
    if ids.tolist() != ref_ids:  # name the first text that differs
        for k, text in enumerate(batch):
            assert cache.encode([text])[0].tolist() == backend.encode(text, add_special_tokens=False).ids, repr(text)
    assert starts.tolist() == ref_offsets[:, 0].tolist() and ends.tolist() == ref_offsets[:, 1].tolist()


@pytest.mark.parametrize("name", ["gpt2", "llama3", "qwen2+nfc"])
def test_ids_and_offsets_equal_the_whole_texts(backends, name):
    backend = backends[name]
    assert why_not(backend) is None
    cache = PieceCache(backend)
    for seed in range(3):
        assert_same(cache, backend, texts(seed, 400))
    misses = cache.misses
    assert_same(cache, backend, texts(1, 400))  # seen before: every piece from the cache
    assert cache.misses == misses


def test_real_templates_and_empty_texts(smollm2_tokenizer, backends):
    from sftune import templates

    chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi  there,\nfriend "},
            {"role": "assistant", "content": " Hello! 42 apples, don't worry.\n\n"}]
    rendered = [templates.get(name, smollm2_tokenizer).render(chat) for name in ("chatml", "llama3", "zephyr")]
    for backend in backends.values():
        assert_same(PieceCache(backend), backend, ["", *rendered, "", " ", "x"])


def test_hash_collisions_cost_time_not_correctness(backends, monkeypatch):
    """With every piece hashing alike, each is still found by its characters."""
    monkeypatch.setattr(PieceCache, "_hash", lambda self, cp, start, end: (end - start).astype(np.uint64))
    backend = backends["gpt2"]
    cache = PieceCache(backend)
    for seed in range(2):
        assert_same(cache, backend, texts(seed, 100))


def test_a_full_cache_starts_over(backends, monkeypatch):
    monkeypatch.setattr(tokencache, "_MAX_ENTRIES", 50)
    backend = backends["llama3"]
    cache = PieceCache(backend)
    starts, clear = [], cache.clear
    cache.clear = lambda: (starts.append(cache.size), clear())
    for seed in range(3):
        assert_same(cache, backend, texts(seed, 50))
    assert len(starts) == 2 and min(starts) > 50  # it started over before each later batch


def test_tokenizers_it_cannot_prove_exact_are_refused(backends):
    gpt2 = backends["gpt2"]
    spec = json.loads(gpt2.to_str())
    spec["added_tokens"][0]["lstrip"] = True
    assert "strips" in why_not(Tokenizer.from_str(json.dumps(spec)))
    assert "pre-tokenizer" in why_not(variant(gpt2, r"\s+|\S+"))  # a regex nobody checked the cut rule for
    assert "normalizer" in why_not(variant(gpt2, None, {"type": "Lowercase"}))
    spm = json.loads(gpt2.to_str())
    spm["pre_tokenizer"] = {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "always", "split": True}
    assert why_not(Tokenizer.from_str(json.dumps(spm))) is not None
