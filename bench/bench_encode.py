"""Encoding speed: 100,000 synthetic conversations through the SmolLM2 tokenizer, then a cached re-run.

    .venv/bin/python bench/bench_encode.py            # 100,000 conversations (target >= 10,000/s on 2 cores)
    .venv/bin/python bench/bench_encode.py --quick    # 5,000, a smoke run

Prints conversations/s and tokens/s for the first (uncached) run of each template, and the time of a
re-run, which must load the cached result instead of encoding again.
"""

from __future__ import annotations

import argparse
import os
import random
import tempfile
import time

WORDS = ("the model learns to answer questions about data training loss tokens with care and precision "
         "while every reply ends with the end of turn token so generation stops where it should").split()


def synthetic(n: int, seed: int = 0):
    from sftune.data.schema import Conversation, Message

    rng = random.Random(seed)
    say = lambda k: " ".join(rng.choice(WORDS) for _ in range(k))  # noqa: E731
    out = []
    for i in range(n):
        messages = [Message("system", "You are a helpful assistant.")] if i % 2 else []
        for _ in range(rng.choice((1, 1, 2, 3))):
            messages += [Message("user", say(rng.randint(5, 40)) + "?"), Message("assistant", say(rng.randint(10, 80)) + ".")]
        out.append(Conversation(messages))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="5,000 conversations")
    parser.add_argument("-n", type=int, default=None, help="number of conversations")
    parser.add_argument("--templates", default="chatml,tokenizer", help="comma-separated template names")
    args = parser.parse_args()
    n = args.n or (5_000 if args.quick else 100_000)

    from sftune import encode, models, templates

    _, tokenizer = models.load(models.DEFAULT_MODEL, tokenizer_only=True)
    conversations = synthetic(n)
    print(f"{n:,} conversations, SmolLM2 tokenizer, {os.cpu_count()} CPU cores visible")
    with tempfile.TemporaryDirectory() as cache:
        for name in args.templates.split(","):
            template = templates.get(name, tokenizer)
            start = time.perf_counter()
            dataset, report = encode.encode_dataset(conversations, tokenizer, template, cache_dir=cache, max_len=2048)
            first = time.perf_counter() - start
            start = time.perf_counter()
            _, again = encode.encode_dataset(conversations, tokenizer, template, cache_dir=cache, max_len=2048)
            second = time.perf_counter() - start
            print(f"{name:>10}: {n / first:>9,.0f} conversations/s  {report['tokens'] / first:>11,.0f} tokens/s  "
                  f"({first:.2f} s, {report['encoded']:,} encoded, {report['trained_tokens']:,} trained tokens)")
            print(f"{'':>10}  re-run: cache {again['cache']}, {second:.2f} s "
                  f"({n / second:,.0f} conversations/s, fingerprinting the data included)")


if __name__ == "__main__":
    main()
