"""Encoding speed: 100,000 synthetic conversations through the SmolLM2 tokenizer, then a cached re-run.

    .venv/bin/python bench/bench_encode.py            # 100,000 conversations (target >= 10,000/s on 2 cores)
    .venv/bin/python bench/bench_encode.py --quick    # 5,000, a smoke run

Prints conversations/s and tokens/s for the first (uncached) run of each template, with the CPU
seconds it used (all threads; the machine may be shared, so conversations per CPU-second is the
steadier figure), next to the floor: the fast tokenizer's own `encode_batch` on the same rendered
texts. Then the time of a re-run, which must load the cached result instead of encoding again, and
the process's peak RSS.
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
    print(f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())} (the cores may be shared)")
    with tempfile.TemporaryDirectory() as cache:
        for name in args.templates.split(","):
            template = templates.get(name, tokenizer)
            wall, cpu = time.perf_counter(), time.process_time()
            dataset, report = encode.encode_dataset(conversations, tokenizer, template, cache_dir=cache, max_len=2048)
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            print(f"{name:>10}: {n / wall:>9,.0f} conversations/s  {report['tokens'] / wall:>11,.0f} tokens/s  "
                  f"({wall:.2f} s, {cpu:.2f} CPU s = {n / cpu:,.0f} conversations per CPU s; "
                  f"{report['encoded']:,} encoded, {report['trained_tokens']:,} trained tokens)")
            floor_wall, floor_cpu = tokenizer_alone(conversations, tokenizer, template)
            print(f"{'':>10}  tokenizer alone (encode_batch on the rendered texts): {n / floor_wall:,.0f} "
                  f"conversations/s ({floor_wall:.2f} s, {floor_cpu:.2f} CPU s)")
            start = time.perf_counter()
            _, again = encode.encode_dataset(conversations, tokenizer, template, cache_dir=cache, max_len=2048)
            second = time.perf_counter() - start
            print(f"{'':>10}  re-run: cache {again['cache']}, {second:.2f} s "
                  f"({n / second:,.0f} conversations/s, fingerprinting the data included)")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    print(f"peak RSS {peak:,.0f} MiB; load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


def tokenizer_alone(conversations, tokenizer, template, batch_size: int = 1000) -> tuple[float, float]:
    """Wall and CPU seconds of the fast tokenizer's batched encoding alone: the floor for encode_dataset."""
    texts = [template.render(c.messages, c.tools) for c in conversations]
    backend = tokenizer.backend_tokenizer
    wall, cpu = time.perf_counter(), time.process_time()
    for lo in range(0, len(texts), batch_size):
        backend.encode_batch(texts[lo:lo + batch_size], add_special_tokens=False)
    return time.perf_counter() - wall, time.process_time() - cpu


if __name__ == "__main__":
    main()
