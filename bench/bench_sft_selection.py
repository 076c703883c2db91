"""UDS batch selection, instruction position and replay, each measured against its control in the same run.

    python bench/bench_sft_selection.py --part selection --seeds 0 1 2 --steps 20
    python bench/bench_sft_selection.py --part position --seeds 0 1
    python bench/bench_sft_selection.py --part replay

selection: the demo task (JSON extraction, 40 held-out examples, exact match), LoRA on SmolLM2-135M, batch
  2 with ratio 0.5: uds vs random (equal training compute) plus no selection; packing off (--no-packing: 2
  sequences trained from 4 candidates) or on (the default: 4 packed rows read, the better half of their
  sequences repacked and trained); UDS's overhead as selection seconds over the rest of the step.
position: a translation-like task built here (English -> French sentences from aligned word lists, in the
  multitask format), BLEU (sacrebleu) zero-shot and after a short LoRA run, instruction before vs after.
replay: general ability = answer perplexity on --general real ShareGPT conversations (bench/data, cut at 256
  tokens), for the base
  model, after plain SFT on the demo task, after the same SFT with data.replay; the task's exact match too.
Prints every figure and writes --out (JSON). Machine: say which, and that it was shared.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

import torch

BENCH_DATA = Path(__file__).parent / "data" / "sharegpt_bench.jsonl"


def lora_config(train_path: Path, eval_path: Path, out: Path, steps: int, seed: int, **extra) -> dict:
    cfg = {
        "model": {"name": "smollm2-135m-instruct"},
        "data": {"train": str(train_path), "eval": str(eval_path), "max_len": 256},
        "method": {"name": "lora", "r": 16, "alpha": 32, "dropout": 0.0},
        "train": {"max_steps": steps, "batch_size": 2, "lr": 1e-3, "warmup": 0.05, "logging_steps": 5,
                  "save_total_limit": 1, "seed": seed},
        "eval": {"keep_best": False},
        "output": {"dir": str(out), "overwrite": True},
    }
    for section, values in extra.items():
        cfg[section] = {**cfg.get(section, {}), **values}
    return cfg


def answers(model, tokenizer, template, conversations, max_new_tokens: int) -> list[str]:
    from sftune.generation import GenerationOptions, generate, render_prompts

    prompts = render_prompts(template, [[m for m in c.messages if m.role != "assistant"] for c in conversations])
    done = generate(model, tokenizer, prompts, GenerationOptions(max_new_tokens=max_new_tokens),
                    stop_token_ids=template.stop_token_ids(tokenizer), batch_size=40)
    return [c.text.strip() for c in done]


def exact_match(model, tokenizer, template, eval_path: Path) -> float:
    from sftune import data

    conversations = list(data.read(eval_path))
    truths = [json.loads(c.messages[-1].content) for c in conversations]  # the demo's answer is the truth
    hits = 0
    for answer, truth in zip(answers(model, tokenizer, template, conversations, 48), truths):
        try:
            hits += json.loads(answer) == truth
        except ValueError:
            pass
    return hits / len(conversations)


def trained(cfg: dict):
    from rich.console import Console

    from sftune import templates, train

    started = time.perf_counter()
    result = train(cfg, console=Console(quiet=True))
    wall = time.perf_counter() - started
    template = templates.default_for(result.tokenizer)
    return result, template, wall


# --------------------------------------------------------------------------------------------- selection


def mean_sd(values: list[float]) -> dict:
    import statistics

    return {"mean": statistics.fmean(values), "sd": statistics.stdev(values) if len(values) > 1 else None,
            "n": len(values)}


def part_selection(seeds: list[int], steps: int, work: Path, packing: bool = True) -> dict:
    from sftune.demo import write_dataset

    train_path, eval_path = write_dataset(work / "demo-data")
    rows = []
    for seed in seeds:
        for method in ("none", "random", "uds"):
            extra = {"data": {"packing": packing, "eval": [], "val_ratio": 0}}  # exact match is the metric
            if method != "none":
                extra["train"] = {"batch_selection": {"method": method, "ratio": 0.5}}
            cfg = lora_config(train_path, eval_path, work / f"sel-{method}-{seed}", steps, seed, **extra)
            result, template, _ = trained(cfg)
            s = result.summary
            em = exact_match(result.model, result.tokenizer, template, eval_path)
            selected = s.get("batch_selection", {})
            row = {"method": method, "seed": seed, "exact_match": em, "eval_loss": s.get("eval_loss"),
                   "s_per_step": s["train_seconds_excluding_eval"] / s["steps"],
                   "selection_s_per_step": selected.get("seconds", 0.0) / s["steps"],
                   "trained_tokens": s["trained_tokens"], "packing": s["packing"],
                   "candidates": selected.get("candidates"), "selected": selected.get("selected")}
            # the selection's own cost against the rest of the step (forward + backward of what is kept)
            row["overhead_x_rest"] = row["selection_s_per_step"] / (row["s_per_step"] - row["selection_s_per_step"])
            rows.append(row)
            print(json.dumps(row), flush=True)
    summary = {}
    for method in ("none", "random", "uds"):
        mine = [r for r in rows if r["method"] == method]
        summary[method] = {key: mean_sd([r[key] for r in mine])
                           for key in ("exact_match", "s_per_step", "selection_s_per_step", "overhead_x_rest",
                                       "trained_tokens")}
    print("selection means:", json.dumps(summary, indent=1), flush=True)
    return {"rows": rows, "means": summary}


# --------------------------------------------------------------------------------------------- position

ANIMALS = {"cat": "chat", "dog": "chien", "horse": "cheval", "bird": "oiseau", "rabbit": "lapin", "wolf": "loup",
           "bear": "ours", "fish": "poisson"}
COLOURS = {"black": "noir", "white": "blanc", "red": "rouge", "green": "vert", "blue": "bleu", "grey": "gris",
           "yellow": "jaune"}
FOODS = {"bread": "pain", "cheese": "fromage", "cake": "gâteau", "rice": "riz", "apple": "fruit"}
CITIES = ["Paris", "London", "Berlin", "Madrid", "Rome", "Lisbon", "Vienna", "Dublin"]
SENTENCES = [
    ("The {a} is {c}.", "Le {a} est {c}."),
    ("The {c} {a} eats the {f}.", "Le {a} {c} mange le {f}."),
    ("My friend lives in {city} with a {a}.", "Mon ami habite à {city} avec un {a}."),
    ("I see a {c} {a} in {city}.", "Je vois un {a} {c} à {city}."),
    ("The {a} does not like the {f}.", "Le {a} n'aime pas le {f}."),
    ("Tomorrow we will buy {f} in {city}.", "Demain nous achèterons du {f} à {city}."),
]


def translation_records(n: int, rng: random.Random) -> list[dict]:
    records, seen = [], set()
    while len(records) < n:
        en, fr = rng.choice(SENTENCES)
        a, c, f, city = rng.choice(list(ANIMALS)), rng.choice(list(COLOURS)), rng.choice(list(FOODS)), rng.choice(CITIES)
        source = en.format(a=a, c=c, f=f, city=city)
        if source in seen:
            continue
        seen.add(source)
        records.append({"task_type": "translation", "source_lang": "en", "target_lang": "fr", "source_text": source,
                        "target_text": fr.format(a=ANIMALS[a], c=COLOURS[c], f=FOODS[f], city=city)})
    return records


def bleu(model, tokenizer, template, eval_path: Path, position: str) -> float:
    import sacrebleu

    from sftune import data

    conversations = list(data.read(eval_path, instruction_position=position))
    hyps = answers(model, tokenizer, template, conversations, 40)
    return sacrebleu.corpus_bleu(hyps, [[c.messages[-1].content for c in conversations]]).score


def part_position(seeds: list[int], steps: int, work: Path) -> dict:
    from sftune import models, templates

    rng = random.Random(0)
    records = translation_records(240, rng)
    folder = work / "translation"
    folder.mkdir(parents=True, exist_ok=True)
    train_path, eval_path = folder / "train.jsonl", folder / "eval.jsonl"
    for path, part in ((train_path, records[:200]), (eval_path, records[200:])):
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in part), encoding="utf-8")
    model, tokenizer = models.load("smollm2-135m-instruct")
    template = templates.default_for(tokenizer)
    out = {"zero_shot": {p: bleu(model, tokenizer, template, eval_path, p) for p in ("before", "after")}, "rows": []}
    print("zero-shot BLEU:", out["zero_shot"], flush=True)
    del model
    for seed in seeds:
        for position in ("before", "after"):
            cfg = lora_config(train_path, eval_path, work / f"pos-{position}-{seed}", steps, seed,
                              data={"instruction_position": position})
            result, template, _ = trained(cfg)
            row = {"position": position, "seed": seed,
                   "bleu": bleu(result.model, result.tokenizer, template, eval_path, position),
                   "eval_loss": result.summary.get("eval_loss")}
            out["rows"].append(row)
            print(json.dumps(row), flush=True)
    out["means"] = {p: sum(r["bleu"] for r in out["rows"] if r["position"] == p) / len(seeds) for p in ("before", "after")}
    print("position BLEU means:", out["means"], flush=True)
    return out


# --------------------------------------------------------------------------------------------- replay


def general_perplexity(model_or_run: str, path: Path) -> float:
    from sftune import runs
    from sftune.evaluate import metrics

    loaded = runs.load(model_or_run)
    return metrics.perplexity(loaded, str(path), max_len=256)["perplexity"]


def part_replay(seeds: list[int], steps: int, work: Path, count: int, max_new_tokens: int, general_n: int) -> dict:
    from sftune.demo import write_dataset

    train_path, eval_path = write_dataset(work / "demo-data")
    general = work / "general.jsonl"
    general.write_text("".join(BENCH_DATA.read_text(encoding="utf-8").splitlines(keepends=True)[:general_n]), encoding="utf-8")
    out = {"base_general_ppl": general_perplexity("smollm2-135m-instruct", general), "rows": []}
    print("base general perplexity:", out["base_general_ppl"], flush=True)
    for seed in seeds:
        for replay in (0.0, 0.25):
            extra = {"data": {"replay": {"ratio": replay, "count": count, "max_new_tokens": max_new_tokens},
                              "eval": [], "val_ratio": 0}}
            run_dir = work / f"replay-{replay}-{seed}"
            made = sorted(work.glob(f"replay-{replay}-*/replay.json"))
            if replay and made and not (run_dir / "replay.json").exists():  # same data.replay.seed: same pairs
                run_dir.mkdir(parents=True, exist_ok=True)
                (run_dir / "replay.json").write_text(made[0].read_text(encoding="utf-8"), encoding="utf-8")
            cfg = lora_config(train_path, eval_path, run_dir, steps, seed, **extra)
            result, template, wall = trained(cfg)
            em = exact_match(result.model, result.tokenizer, template, eval_path)
            cache = result.run_dir / "replay.json"
            pairs = len(json.loads(cache.read_text())["pairs"]) if cache.is_file() else 0
            row = {"replay_ratio": replay, "seed": seed, "exact_match": em, "pairs": pairs,
                   "general_ppl": general_perplexity(str(result.run_dir), general),
                   "wall_s": wall, "train_s": result.summary["train_seconds"]}
            out["rows"].append(row)
            print(json.dumps(row), flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=["selection", "position", "replay"], required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-packing", action="store_true", help="selection: padded batches (K sequences)")
    parser.add_argument("--count", type=int, default=24, help="replay pairs generated")
    parser.add_argument("--max-new-tokens", type=int, default=128, help="longest replay answer")
    parser.add_argument("--general", type=int, default=48, help="ShareGPT conversations for general perplexity")
    parser.add_argument("--work", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-sft-selection-"))
    started = time.perf_counter()
    if args.part == "selection":
        result = part_selection(args.seeds, args.steps, work, packing=not args.no_packing)
    elif args.part == "position":
        result = part_position(args.seeds, args.steps, work)
    else:
        result = part_replay(args.seeds, args.steps, work, args.count, args.max_new_tokens, args.general)
    result.update(part=args.part, seeds=args.seeds, steps=args.steps, threads=args.threads,
                  seconds=round(time.perf_counter() - started, 1), python=sys.version.split()[0],
                  torch=torch.__version__)
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    print(json.dumps({k: v for k, v in result.items() if k != "rows"}, indent=1))


if __name__ == "__main__":
    main()
