"""Shared by the encoding tests: a chat, small tokenizers with awkward properties, many records."""

from __future__ import annotations

import pytest

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


@pytest.fixture(scope="session")
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



@pytest.fixture(scope="session")
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



def many(n: int) -> list[dict]:
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

