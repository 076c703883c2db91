"""HumanEval pass@1 on all 164 problems with a model (default: the embedded SmolLM2-135M-Instruct), greedy.

    PYTHONPATH=src python bench/humaneval_full.py [MODEL] [--batch-size 16]

Prints pass@1, the time, the generation speed (tokens/s) and the sandbox statuses; writes the TaskResult JSON.
"""

from __future__ import annotations

import argparse
import json
import platform
import time

from rich.console import Console

from sftune import runs
from sftune.evaluate.benchmarks import humaneval


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model", nargs="?", default="smollm2-135m-instruct")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=512)
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--out", default="humaneval-result.json")
    args = parser.parse_args()
    started = time.perf_counter()
    loaded = runs.load(args.model)
    result = humaneval.run(loaded, limit=args.limit, console=Console(stderr=True),
                           options={"batch_size": args.batch_size, "max_new_tokens": args.max_new_tokens})
    d = result.details
    print(f"model {args.model} on {platform.processor() or platform.machine()}: HumanEval pass@1 = {result.score:.4f} "
          f"({sum(s == 1.0 for s in result.item_scores)}/{d['problems']}), mode {d['mode']}")
    print(f"time {time.perf_counter() - started:.0f} s in all; generation {d['generation_seconds']:.0f} s, "
          f"{d['generated_tokens']} tokens, {d['tokens_per_s']:.1f} tokens/s; statuses {d['statuses']}")
    with open(args.out, "w") as f:
        json.dump(result.to_dict(), f, indent=1)


if __name__ == "__main__":
    main()
