"""DPO with LoRA on SmolLM2-135M-Instruct: sftune against TRL's DPOTrainer, same pairs, same effective batch,
in the same run. Each side runs in its own process (its peak RSS is its own); the figures are pairs per
second over the whole job after the imports (model load, tokenizing, reference log-probs, training) and
over training alone, and the peak RSS, with the ratios sftune / TRL.

    python bench/bench_dpo.py [--pairs 32] [--batch 4] [--threads 1]

TRL's settings for a CPU without AMX: fp32, reference log-probs precomputed once (precompute_ref_log_probs,
the same as sftune does), its fused LM head (its default), no padding-free (it needs flash attention),
micro-batch = the batch. sftune: its defaults (padding-free packing, one pair per forward, accumulated).
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
                                                          "lr": 5e-4, "logging_steps": 1, "precision": "fp32"},
           "output": {"dir": str(out), "overwrite": True}}
    result = train(cfg)
    total = time.perf_counter() - started
    return {"job_seconds": total, "train_seconds": result.summary["train_seconds"],
            "final_loss": result.summary["train_loss"]}


def trl_worker(args, data: Path, out: Path) -> dict:
    import datasets
    from peft import LoraConfig
    from trl import DPOConfig, DPOTrainer

    from sftune import models

    started = time.perf_counter()
    model, tokenizer = models.load("smollm2-135m-instruct", dtype="float32")
    rows = [json.loads(line) for line in data.read_text(encoding="utf-8").splitlines()]
    dataset = datasets.Dataset.from_list(rows)
    config = DPOConfig(output_dir=str(out), beta=0.1, per_device_train_batch_size=args.batch, max_steps=args.pairs // args.batch,
                       learning_rate=5e-4, logging_steps=1, report_to=[], use_cpu=True, bf16=False, max_length=256,
                       precompute_ref_log_probs=True, save_strategy="no", disable_tqdm=True)
    peft = LoraConfig(r=LORA["r"], lora_alpha=LORA["alpha"], lora_dropout=0.0, target_modules="all-linear",
                      task_type="CAUSAL_LM")
    trainer = DPOTrainer(model=model, args=config, processing_class=tokenizer, train_dataset=dataset, peft_config=peft)
    train_started = time.perf_counter()
    output = trainer.train()
    now = time.perf_counter()
    return {"job_seconds": now - started, "train_seconds": now - train_started, "final_loss": output.training_loss}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=32)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per side (1 on a shared machine)")
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
    results = {}
    for side in ("sftune", "trl"):
        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "PYTHONPATH": f"{ROOT / 'src'}:{ROOT}"}
        done = subprocess.run([sys.executable, __file__, "--worker", side, "--data", str(data), "--pairs", str(args.pairs),
                               "--batch", str(args.batch), "--threads", str(args.threads)],
                              capture_output=True, text=True, env=env, cwd=ROOT)
        line = next((x for x in done.stdout.splitlines() if x.startswith("RESULT ")), None)
        if line is None:
            sys.exit(f"{side} failed:\n{done.stderr[-3000:]}")
        results[side] = json.loads(line[len("RESULT "):])
        r = results[side]
        r["pairs_per_second_job"] = args.pairs / r["job_seconds"]
        r["pairs_per_second_train"] = args.pairs / r["train_seconds"]
    s, t = results["sftune"], results["trl"]
    print(f"DPO + LoRA r=16, SmolLM2-135M-Instruct, {args.pairs} pairs, batch {args.batch}, {args.threads} thread(s)")
    print(f"{'':28}{'sftune':>12}{'TRL':>12}{'ratio':>10}")
    for key, label in (("pairs_per_second_train", "pairs/s (training)"), ("pairs_per_second_job", "pairs/s (whole job)"),
                       ("peak_rss_mb", "peak RSS (MB)"), ("final_loss", "mean train loss")):
        print(f"{label:28}{s[key]:12.3f}{t[key]:12.3f}{s[key] / t[key]:10.2f}")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
