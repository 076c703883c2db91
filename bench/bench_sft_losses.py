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
                                      stop_token_ids=loaded.stop_token_ids, batch_size=20)
    answers = [c.text.strip() for c in completions]
    groups = [answers[k:k + samples] for k in range(0, len(answers), samples)]
    refs = [r for _, r in splits for _ in range(samples)]
    return {"distinct_1": distinct_n(answers, 1), "distinct_2": distinct_n(answers, 2),
            "self_bleu": self_bleu(groups), "sampled_exact_match": statistics.fmean(json_match_items(answers, refs))}


def one_run(loss: str, seed: int, steps: int, data_dir: Path, out: Path) -> dict:
    from rich.console import Console

    from sftune import runs
    from sftune.config import load
    from sftune.demo import DEFAULT_CONFIG
    from sftune.evaluate import data_task
    from sftune.training import train

    overrides = [f"data.train={data_dir / 'train.jsonl'}", f"data.eval={data_dir / 'eval.jsonl'}",
                 f"train.loss={loss}", f"train.seed={seed}", f"train.max_steps={steps}", f"eval.steps={steps}",
                 "eval.on_start=false", f"output.dir={out}", "train.save_total_limit=1"]
    cfg = load(DEFAULT_CONFIG, overrides + (CHORD if loss == "chord" else []))
    result = train(cfg, console=Console(quiet=True))
    s = result.summary
    loaded = runs.load(str(result.run_dir))
    task = data_task.run(loaded, data_dir / "eval.jsonl", options={"max_new_tokens": 48, "batch_size": 20})
    row = {"loss": loss, "seed": seed, "steps": s["steps"], "exact_match": task.details["metrics"]["json_match"]["score"],
           "eval_loss": s.get("eval_loss"), "s_per_step": s["train_seconds_excluding_eval"] / max(s["steps"], 1)}
    if loss in ("ce", "gem"):
        row.update(diversity(loaded, data_dir / "eval.jsonl"))
    return row


def main() -> None:
    from bench.machine import machine
    from sftune.demo import write_dataset

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--losses", default=",".join(LOSSES))
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
        data_dir = Path(tmp) / "data"
        write_dataset(data_dir)
        for seed in map(int, args.seeds.split(",")):
            for loss in args.losses.split(","):
                started = time.perf_counter()
                row = one_run(loss, seed, args.steps, data_dir, Path(tmp) / f"run-{loss}-{seed}")
                row["wall_s"] = round(time.perf_counter() - started, 1)
                print(json.dumps(row), flush=True)
                rows.append(row)
                out_path.write_text(json.dumps(rows, indent=1) + "\n", encoding="utf-8")
    summarize(rows)


def summarize(rows: list[dict]) -> None:
    ce_cost = statistics.fmean(r["s_per_step"] for r in rows if r["loss"] == "ce")
    print(f"{'loss':6} {'seeds':>5} {'exact match':>18} {'s/step':>7} {'x ce':>5} {'distinct-2':>10} {'self-BLEU':>9}")
    for loss in LOSSES:
        mine = [r for r in rows if r["loss"] == loss]
        if not mine:
            continue
        em = [r["exact_match"] for r in mine]
        cost = statistics.fmean(r["s_per_step"] for r in mine)
        d2 = [r["distinct_2"] for r in mine if "distinct_2" in r]
        sb = [r["self_bleu"] for r in mine if "self_bleu" in r]
        print(f"{loss:6} {len(mine):>5} {statistics.fmean(em):>8.1%} ({', '.join(f'{v:.0%}' for v in em)}) "
              f"{cost:>7.2f} {cost / ce_cost:>5.2f} {statistics.fmean(d2) if d2 else float('nan'):>10.3f} "
              f"{statistics.fmean(sb) if sb else float('nan'):>9.1f}")


if __name__ == "__main__":
    main()
