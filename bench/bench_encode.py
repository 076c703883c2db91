"""Encoding speed: 100,000 synthetic conversations through the SmolLM2 tokenizer, then a cached re-run.

    .venv/bin/python bench/bench_encode.py            # 100,000 conversations (target >= 10,000/s on 2 cores)
    .venv/bin/python bench/bench_encode.py --quick    # 5,000, a smoke run
    .venv/bin/python bench/bench_encode.py --vocab 200000   # words drawn from 200,000 kinds (Zipf), like real text

Prints conversations/s and tokens/s for the first (uncached) run of each template, with the CPU
seconds it used (all threads and worker processes; the machine may be shared, so conversations per
CPU-second is the steadier figure), next to the fast tokenizer's own `encode_batch` on the same
rendered texts (what encoding cost before sftune's word cache). Then the time of a re-run, which
must load the cached result instead of encoding again, and the process's peak RSS.

The default text repeats a 30-word vocabulary, which flatters a word cache; `--vocab N` draws each
word from N kinds with Zipf frequencies (s = 1.1, like natural language): the tokenizer's own whole
words, commonest first, then two-word compounds, some with punctuation attached, so the cache meets
new words throughout the run as it would on a real corpus.
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import tempfile
import time

WORDS = ("the model learns to answer questions about data training loss tokens with care and precision "
         "while every reply ends with the end of turn token so generation stops where it should").split()


def synthetic(n: int, seed: int = 0, vocab: int = 0):
    from sftune.data.schema import Conversation, Message

    rng = random.Random(seed)
    if vocab:
        import numpy as np

        kinds = word_kinds(vocab, rng)
        weights = 1.0 / np.arange(1, vocab + 1) ** 1.1
        draws = iter(np.random.default_rng(seed).choice(vocab, size=n * 200, p=weights / weights.sum()).tolist())
        say = lambda k: " ".join(kinds[next(draws)] for _ in range(k))  # noqa: E731
    else:
        say = lambda k: " ".join(rng.choice(WORDS) for _ in range(k))  # noqa: E731
    out = []
    for i in range(n):
        messages = [Message("system", "You are a helpful assistant.")] if i % 2 else []
        for _ in range(rng.choice((1, 1, 2, 3))):
            messages += [Message("user", say(rng.randint(5, 40)) + "?"), Message("assistant", say(rng.randint(10, 80)) + ".")]
        out.append(Conversation(messages))
    return out


def word_kinds(n: int, rng: random.Random) -> list[str]:
    """n distinct words, commonest first: the tokenizer's own whole words (in merge order, which follows
    frequency), then two-word compounds of them (rarer words cost several tokens), some with a comma or
    a full stop attached as in running text."""
    from sftune import models

    _, tokenizer = models.load(models.DEFAULT_MODEL, tokenizer_only=True)
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda item: item[1])
    words = [token[1:] for token, _ in vocab if token.startswith("Ġ") and token[1:].isalpha() and token[1:].isascii()]
    kinds, seen = [], set()
    while len(kinds) < n:
        k = len(kinds)
        word = words[k] if k < len(words) else rng.choice(words) + rng.choice(words)
        word += rng.choice(("", "", "", "", "", ",", "."))
        if word not in seen:
            seen.add(word)
            kinds.append(word)
    return kinds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="5,000 conversations")
    parser.add_argument("-n", type=int, default=None, help="number of conversations")
    parser.add_argument("--templates", default="chatml,tokenizer", help="comma-separated template names")
    parser.add_argument("--vocab", type=int, default=0, help="draw words from this many kinds (Zipf); 0: 30 words")
    args = parser.parse_args()
    n = args.n or (5_000 if args.quick else 100_000)

    from sftune import encode, models, templates

    _, tokenizer = models.load(models.DEFAULT_MODEL, tokenizer_only=True)
    conversations = synthetic(n, vocab=args.vocab)
    print(f"{n:,} conversations ({f'{args.vocab:,} kinds of words' if args.vocab else '30 kinds of words'}), "
          f"SmolLM2 tokenizer, {os.cpu_count()} CPU cores visible")
    import datasets  # noqa: F401  (imported once here, as in a training run, not inside the timing)
    print(f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())} (the cores may be shared)")
    with tempfile.TemporaryDirectory() as cache:
        options = encode.EncodeOptions(max_len=2048)
        for name in args.templates.split(","):
            template = templates.get(name, tokenizer)
            wall, cpu = time.perf_counter(), cpu_seconds()
            dataset, report = encode.encode_dataset(conversations, tokenizer, template, options, cache_dir=cache)
            wall, cpu = time.perf_counter() - wall, cpu_seconds() - cpu
            print(f"{name:>10}: {n / wall:>9,.0f} conversations/s  {report.tokens / wall:>11,.0f} tokens/s  "
                  f"({wall:.2f} s, {cpu:.2f} CPU s = {n / cpu:,.0f} conversations per CPU s; "
                  f"{report.encoded:,} encoded, {report.trained_tokens:,} trained tokens)")
            print(f"{'':>10}  tokenized by: {report.tokenizer}")
            floor_wall, floor_cpu = tokenizer_alone(conversations, tokenizer, template)
            print(f"{'':>10}  tokenizer alone (encode_batch on the rendered texts): {n / floor_wall:,.0f} "
                  f"conversations/s ({floor_wall:.2f} s, {floor_cpu:.2f} CPU s)")
            start = time.perf_counter()
            _, again = encode.encode_dataset(conversations, tokenizer, template, options, cache_dir=cache)
            second = time.perf_counter() - start
            print(f"{'':>10}  re-run: cache {again.cache}, {second:.2f} s "
                  f"({n / second:,.0f} conversations/s, fingerprinting the data included)")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    print(f"peak RSS {peak:,.0f} MiB; load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


def cpu_seconds() -> float:
    """CPU time of this process and of its finished children (encode_dataset's worker processes)."""
    times = os.times()
    return times.user + times.system + times.children_user + times.children_system


def tokenizer_alone(conversations, tokenizer, template, batch_size: int = 1000) -> tuple[float, float]:
    """Wall and CPU seconds of the fast tokenizer's batched encoding alone: the floor for encode_dataset."""
    texts = [template.render(c.messages, c.tools) for c in conversations]
    backend = tokenizer.backend_tokenizer
    wall, cpu = time.perf_counter(), cpu_seconds()
    for lo in range(0, len(texts), batch_size):
        backend.encode_batch(texts[lo:lo + batch_size], add_special_tokens=False)
    return time.perf_counter() - wall, cpu_seconds() - cpu


if __name__ == "__main__":
    main()
