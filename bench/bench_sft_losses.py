"""train.loss on the demo task: held-out exact match of ce / gem / dft / phi / chord, output diversity of gem
against ce, and the cost of each (seconds per optimizer step), several seeds, all in one run.

    PYTHONPATH=src .venv/bin/python -m bench.bench_sft_losses --seeds 0,1 --steps 30
    # or one process per loss at once (what the results page did on the loaded machine), then the table:
    for l in ce gem dft phi chord; do ... --losses $l --out /tmp/l-$l.json & done; wait
    PYTHONPATH=src .venv/bin/python -m bench.bench_sft_losses --summarize /tmp/l-*.json

Each run is the demo's configuration (SmolLM2-135M-Instruct, LoRA r=16, 320 generated Chinese + English
extraction examples, batch 2 packed rows) with only train.loss and train.seed changed. Exact match: the
demo's JSON check on the 40 held-out examples, greedy. Diversity: 4 answers sampled at temperature 1 for
each of the first 20 held-out prompts; distinct-1/2 over all answers pooled, self-BLEU (sacrebleu) of each
answer against the other answers to the same prompt. Results go to bench/results/<DATE>-<MACHINE>-sft-losses.json.
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LOSSES = ["ce", "gem", "dft", "phi", "chord"]
CHORD = ["train.chord.prompts_per_step=2", "train.chord.samples_per_prompt=4", "train.chord.max_new_tokens=40",
         "train.chord.mu_peak=0.9", "train.chord.mu_valley=0.3", "train.chord.mu_decay_steps=10"]


def distinct_n(answers: list[str], n: int) -> float:
    from sftune.evaluate.metrics import rouge_tokens

    grams = [tuple(t[i:i + n]) for a in answers for t in [rouge_tokens(a)] for i in range(len(t) - n + 1)]
    return len(set(grams)) / max(len(grams), 1)


def self_bleu(groups: list[list[str]]) -> float:
    import sacrebleu

    scores = []
    for group in groups:
        for k, answer in enumerate(group):
            others = group[:k] + group[k + 1:]
            scores.append(sacrebleu.sentence_bleu(answer, others, tokenize="zh").score)
    return statistics.fmean(scores)


def diversity(loaded, eval_path: Path, n_prompts: int = 20, samples: int = 4) -> dict:
    from sftune import generation
    from sftune.evaluate.data_task import json_match_items, read_items, split_conversation

    conversations, _ = read_items(eval_path, n_prompts)
    splits = [split_conversation(c) for c in conversations]
    prompts = [loaded.template.render(m, add_generation_prompt=True) for m, _ in splits]
    completions = generation.generate(loaded.model, loaded.tokenizer, [p for p in prompts for _ in range(samples)],
                                      generation.GenerationOptions(max_new_tokens=48, temperature=1.0, seed=0),
                                      stop_token_ids=loaded.stop_token_ids, batch_size=40)
    answers = [c.text.strip() for c in completions]
    groups = [answers[k:k + samples] for k in range(0, len(answers), samples)]
    refs = [r for _, r in splits for _ in range(samples)]
    return {"distinct_1": distinct_n(answers, 1), "distinct_2": distinct_n(answers, 2),
            "self_bleu": self_bleu(groups), "sampled_exact_match": statistics.fmean(json_match_items(answers, refs))}


GENERAL = ROOT / "bench" / "data" / "sharegpt_bench.jsonl"  # real ChatGPT conversations (bench data)
_base_general: dict[str, float] = {}


def general_perplexity(model_or_run: str, n: int, work: Path) -> float:
    """The general-ability score of --general: answer perplexity (lower = better) on the first n ShareGPT
    conversations of bench/data, cut at 256 tokens, in the model's own template; a rise after training
    is forgetting."""
    from sftune import runs
    from sftune.evaluate import metrics

    path = work / f"general-{n}.jsonl"
    if not path.exists():
        path.write_text("".join(GENERAL.read_text(encoding="utf-8").splitlines(keepends=True)[:n]), encoding="utf-8")
    return metrics.perplexity(runs.load(model_or_run), str(path), max_len=256)["perplexity"]


def config_overrides(loss: str, seed: int, steps: int, data_dir: Path, out: Path, eval_loss: bool) -> list[str]:
    eval_part = ([f"data.eval={data_dir / 'eval.jsonl'}", f"eval.steps={steps}"] if eval_loss
                 else ["data.eval=[]", "data.val_ratio=0"])
    return ([f"data.train={data_dir / 'train.jsonl'}", f"train.loss={loss}", f"train.seed={seed}",
             f"train.max_steps={steps}", "eval.on_start=false", f"output.dir={out}", "train.save_total_limit=1",
             "eval.keep_best=false"] + eval_part
            + (CHORD + [f"train.chord.mu_decay_steps={steps}"] if loss == "chord" else []))


def trained_run(overrides: list[str]) -> dict:
    from rich.console import Console

    from sftune.config import load
    from sftune.demo import DEFAULT_CONFIG
    from sftune.training import train

    return train(load(DEFAULT_CONFIG, overrides), console=Console(quiet=True))


def measure(row: dict, run_dir: Path, data_dir: Path, args, work: Path) -> dict:
    """Held-out exact match (greedy), diversity for ce / gem, general perplexity when asked."""
    from sftune import runs
    from sftune.evaluate import data_task

    loaded = runs.load(str(run_dir))
    task = data_task.run(loaded, data_dir / "eval.jsonl", limit=args.eval_n,
                         options={"max_new_tokens": 48, "batch_size": args.eval_n})
    row["exact_match"] = task.details["metrics"]["json_match"]["score"]
    row["eval_n"] = task.details["n"]
    if row["loss"] in ("ce", "gem") and args.diversity_prompts:
        row.update(diversity(loaded, data_dir / "eval.jsonl", n_prompts=args.diversity_prompts))
    if args.general:
        row["general_ppl"] = general_perplexity(str(run_dir), args.general, work)
    return row


def one_run(loss: str, seed: int, args, data_dir: Path, work: Path) -> dict:
    out = work / f"run-{loss}-{seed}"
    steps = args.chord_steps if loss == "chord" and args.chord_steps else args.steps
    result = trained_run(config_overrides(loss, seed, steps, data_dir, out, not args.no_eval_loss))
    s = result.summary
    row = {"loss": loss, "seed": seed, "steps": s["steps"], "eval_loss": s.get("eval_loss"),
           "s_per_step": s["train_seconds_excluding_eval"] / max(s["steps"], 1),
           "train_s": s["train_seconds_excluding_eval"]}
    return measure(row, result.run_dir, data_dir, args, work)


def sft_then_rl(seed: int, args, data_dir: Path, work: Path) -> dict:
    """The control of CHORD: plain SFT (ce) for --sft-steps, the adapter merged into the base, then pure
    on-policy RL (train.loss=chord with mu = 0 throughout: the GRPO term only, same sampling settings) for
    --rl-steps on a new adapter. Its cost is the two phases' training seconds together."""
    from sftune.export.merge import merge_run

    sft = trained_run(config_overrides("ce", seed, args.sft_steps, data_dir, work / f"sft-{seed}", False))
    merged = work / f"sft-merged-{seed}"
    merge_run(sft.run_dir, merged)
    rl_overrides = config_overrides("chord", seed, args.rl_steps, data_dir, work / f"rl-{seed}", False)
    rl_overrides += [f"model.name={merged}", "train.chord.mu_peak=0", "train.chord.mu_valley=0"]
    rl = trained_run(rl_overrides)
    train_s = sft.summary["train_seconds_excluding_eval"] + rl.summary["train_seconds_excluding_eval"]
    row = {"loss": "sft-then-rl", "seed": seed, "steps": f"{sft.summary['steps']} ce + {rl.summary['steps']} rl",
           "eval_loss": None, "train_s": train_s, "s_per_step": train_s / (args.sft_steps + args.rl_steps)}
    return measure(row, rl.run_dir, data_dir, args, work)


def main() -> None:
    from bench.machine import machine
    from sftune.demo import write_dataset

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--losses", default=",".join(LOSSES))
    parser.add_argument("--no-eval-loss", action="store_true", help="no held-out loss pass during training "
                        "(the exact-match pass after training is the metric)")
    parser.add_argument("--eval-n", type=int, default=40, help="held-out examples generated for exact match")
    parser.add_argument("--diversity-prompts", type=int, default=20, help="prompts sampled 4 times each for "
                        "distinct-n / self-BLEU (ce and gem); 0 = off")
    parser.add_argument("--general", type=int, default=0, help="ShareGPT conversations of the general-ability "
                        "score (answer perplexity, base vs after); 0 = off")
    parser.add_argument("--rl-compare", action="store_true", help="add the SFT-then-RL control of CHORD")
    parser.add_argument("--chord-steps", type=int, default=0, help="CHORD's steps (0 = --steps): fewer, "
                        "for equal compute with the SFT-then-RL control")
    parser.add_argument("--sft-steps", type=int, default=4, help="--rl-compare: ce steps before RL")
    parser.add_argument("--rl-steps", type=int, default=2, help="--rl-compare: pure RL steps after SFT")
    parser.add_argument("--summarize", nargs="*", help="only print the table of these result files")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / f"{datetime.date.today().isoformat()}-"
                                             "amd-epyc-avx512bf16-2core-sft-losses.json"))
    args = parser.parse_args()
    if args.summarize:
        summarize([row for path in args.summarize for row in json.loads(Path(path).read_text())])
        return
    print(json.dumps(machine()))
    out_path = Path(args.out)
    rows = json.loads(out_path.read_text()) if out_path.exists() else []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        data_dir = work / "data"
        write_dataset(data_dir)
        if args.general and not any(r["loss"] == "base" for r in rows):
            rows.append({"loss": "base", "seed": None, "general_ppl": general_perplexity(
                "smollm2-135m-instruct", args.general, work)})
            print(json.dumps(rows[-1]), flush=True)
        for seed in map(int, args.seeds.split(",")):
            arms = [a for a in args.losses.split(",") if a] + (["sft-then-rl"] if args.rl_compare else [])
            for loss in arms:
                started = time.perf_counter()
                row = (sft_then_rl(seed, args, data_dir, work) if loss == "sft-then-rl"
                       else one_run(loss, seed, args, data_dir, work))
                row["wall_s"] = round(time.perf_counter() - started, 1)
                print(json.dumps(row), flush=True)
                rows.append(row)
                out_path.write_text(json.dumps(rows, indent=1) + "\n", encoding="utf-8")
    summarize(rows)


def mean_sd(values: list[float]) -> str:
    if not values:
        return "-"
    sd = statistics.stdev(values) if len(values) > 1 else float("nan")
    return f"{statistics.fmean(values):.3f}±{sd:.3f}"


def summarize(rows: list[dict]) -> None:
    trained = [r for r in rows if r["loss"] != "base"]
    ce = [r["s_per_step"] for r in trained if r["loss"] == "ce"]
    ce_cost = statistics.fmean(ce) if ce else float("nan")
    base = [r["general_ppl"] for r in rows if r["loss"] == "base"]
    if base:
        print(f"base general perplexity {base[0]:.3f}")
    print(f"{'loss':12} {'n':>2} {'exact match':>13} {'s/step':>7} {'x ce':>5} {'distinct-2':>12} {'self-BLEU':>12} "
          f"{'general ppl':>12}")
    for loss in LOSSES + ["sft-then-rl"]:
        mine = [r for r in trained if r["loss"] == loss]
        if not mine:
            continue
        cost = statistics.fmean(r["s_per_step"] for r in mine)
        print(f"{loss:12} {len(mine):>2} {mean_sd([r['exact_match'] for r in mine]):>13} {cost:>7.2f} "
              f"{cost / ce_cost:>5.2f} {mean_sd([r['distinct_2'] for r in mine if 'distinct_2' in r]):>12} "
              f"{mean_sd([r['self_bleu'] for r in mine if 'self_bleu' in r]):>12} "
              f"{mean_sd([r['general_ppl'] for r in mine if 'general_ppl' in r]):>12}")


if __name__ == "__main__":
    main()
