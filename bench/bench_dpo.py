"""DPO with LoRA on SmolLM2-135M-Instruct: sftune against TRL's DPOTrainer, same pairs, same effective batch,
in the same run. Each side runs in its own process (its peak RSS is its own); the figures are pairs per
second over the whole job after the imports (model load, tokenizing, reference log-probs, training) and
over training alone, and the peak RSS, with the ratios sftune / TRL.

    python bench/bench_dpo.py [--pairs 32] [--batch 4] [--threads 1] [--rounds 3]

TRL at its best for the machine: bf16 (and its base model loaded in bf16) where the machine has bf16 units,
fp32 where not; reference log-probs precomputed once (precompute_ref_log_probs, as sftune does); its fused
LM head (its default); no padding-free (it needs flash attention); micro-batch = the batch. sftune: its
defaults (precision auto, the frozen base held in bf16 when it trains in bf16, padding-free packing with the
prompt computed once per pair, one pair per forward on a CPU, accumulated). With --rounds N the two sides run
N times each, the order alternating (sftune first in odd rounds, TRL first in even ones), so that a change in
the machine's load hits both; the figures are each side's best round and the median.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LORA = {"r": 16, "alpha": 32, "dropout": 0.0}


def sftune_worker(args, data: Path, out: Path) -> dict:
    from sftune.training import train

    started = time.perf_counter()
    cfg = {"stage": "preference", "preference": {"loss": "dpo", "beta": 0.1},
           "model": {"name": "smollm2-135m-instruct"}, "data": {"train": str(data), "val_ratio": 0, "max_len": 256},
           "method": {"name": "lora", **LORA}, "train": {"max_steps": args.pairs // args.batch, "batch_size": args.batch,
                                                          "lr": 5e-4, "logging_steps": 1},
           "output": {"dir": str(out), "overwrite": True}}
    result = train(cfg)
    total = time.perf_counter() - started
    return {"job_seconds": total, "train_seconds": result.summary["train_seconds"],
            "final_loss": result.summary["train_loss"], "precision": result.summary["precision"],
            "shared_prompt": result.summary["shared_prompt"]}


def trl_worker(args, data: Path, out: Path) -> dict:
    import datasets
    from peft import LoraConfig
    from trl import DPOConfig, DPOTrainer

    from bench.systems import machine_has_bf16
    from sftune import models

    bf16 = machine_has_bf16()
    started = time.perf_counter()
    model, tokenizer = models.load("smollm2-135m-instruct", dtype="bfloat16" if bf16 else "float32")
    rows = [json.loads(line) for line in data.read_text(encoding="utf-8").splitlines()]
    dataset = datasets.Dataset.from_list(rows)
    config = DPOConfig(output_dir=str(out), beta=0.1, per_device_train_batch_size=args.batch, max_steps=args.pairs // args.batch,
                       learning_rate=5e-4, logging_steps=1, report_to=[], use_cpu=True, bf16=bf16, max_length=256,
                       precompute_ref_log_probs=True, save_strategy="no", disable_tqdm=True)
    peft = LoraConfig(r=LORA["r"], lora_alpha=LORA["alpha"], lora_dropout=0.0, target_modules="all-linear",
                      task_type="CAUSAL_LM")
    trainer = DPOTrainer(model=model, args=config, processing_class=tokenizer, train_dataset=dataset, peft_config=peft)
    train_started = time.perf_counter()
    output = trainer.train()
    now = time.perf_counter()
    return {"job_seconds": now - started, "train_seconds": now - train_started, "final_loss": output.training_loss,
            "precision": "bf16" if bf16 else "fp32"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=32)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per side (1 on a shared machine)")
    parser.add_argument("--rounds", type=int, default=1, help="runs per side, the order alternating")
    parser.add_argument("--worker", choices=("sftune", "trl"))
    parser.add_argument("--data")
    args = parser.parse_args()
    if args.worker:
        import torch

        torch.set_num_threads(args.threads)
        with tempfile.TemporaryDirectory() as out:
            figures = (sftune_worker if args.worker == "sftune" else trl_worker)(args, Path(args.data), Path(out))
        figures["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print("RESULT " + json.dumps(figures))
        return

    from sftune.preference.demo import write_pairs

    folder = Path(tempfile.mkdtemp(prefix="bench-dpo-"))
    data, _ = write_pairs(folder, n_train=args.pairs, n_eval=1)
    rounds = {"sftune": [], "trl": []}
    for number in range(args.rounds):
        for side in ("sftune", "trl") if number % 2 == 0 else ("trl", "sftune"):
            rounds[side].append(run_side(side, args, data))
            r = rounds[side][-1]
            print(f"round {number + 1} {side}: {r['pairs_per_second_train']:.3f} pairs/s training, "
                  f"{r['pairs_per_second_job']:.3f} whole job, {r['peak_rss_mb']:.0f} MB", flush=True)
    results = {side: summarize(runs) for side, runs in rounds.items()}
    s, t = results["sftune"], results["trl"]
    print(f"DPO + LoRA r=16, SmolLM2-135M-Instruct, {args.pairs} pairs, batch {args.batch}, {args.threads} thread(s), "
          f"{args.rounds} round(s); sftune {s['precision']}, TRL {t['precision']}")
    print(f"{'':34}{'sftune':>12}{'TRL':>12}{'ratio':>10}")
    for key, label in (("pairs_per_second_train", "pairs/s (training), best"),
                       ("pairs_per_second_train_median", "pairs/s (training), median"),
                       ("pairs_per_second_job", "pairs/s (whole job), best"),
                       ("pairs_per_second_job_median", "pairs/s (whole job), median"),
                       ("peak_rss_mb", "peak RSS (MB), highest"), ("final_loss", "mean train loss")):
        print(f"{label:34}{s[key]:12.3f}{t[key]:12.3f}{s[key] / t[key]:10.2f}")
    print(json.dumps({"rounds": rounds, "summary": results}))


def run_side(side: str, args, data: Path) -> dict:
    """One side's run in its own process (its peak RSS is its own)."""
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "PYTHONPATH": f"{ROOT / 'src'}:{ROOT}"}
    done = subprocess.run([sys.executable, __file__, "--worker", side, "--data", str(data), "--pairs", str(args.pairs),
                           "--batch", str(args.batch), "--threads", str(args.threads)],
                          capture_output=True, text=True, env=env, cwd=ROOT)
    line = next((x for x in done.stdout.splitlines() if x.startswith("RESULT ")), None)
    if line is None:
        sys.exit(f"{side} failed:\n{done.stderr[-3000:]}")
    r = json.loads(line[len("RESULT "):])
    r["pairs_per_second_job"] = args.pairs / r["job_seconds"]
    r["pairs_per_second_train"] = args.pairs / r["train_seconds"]
    return r


def summarize(runs: list[dict]) -> dict:
    """The best round's speeds, the median ones, the highest peak RSS, the mean loss of the rounds."""
    import statistics

    out = {key: max(r[key] for r in runs) for key in ("pairs_per_second_train", "pairs_per_second_job", "peak_rss_mb")}
    for key in ("pairs_per_second_train", "pairs_per_second_job"):
        out[f"{key}_median"] = statistics.median(r[key] for r in runs)
    out["final_loss"] = statistics.mean(r["final_loss"] for r in runs)
    out["precision"] = runs[0]["precision"]
    return out

if __name__ == "__main__":
    main()
