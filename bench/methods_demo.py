"""Every training method on the demo task: held-out loss and exact match before and after.

    .venv/bin/python -m bench.methods_demo                      # all methods (about half an hour on a 2-core CPU)
    .venv/bin/python -m bench.methods_demo --methods lora,qlora

Each method runs `sftune demo --method NAME` in its own process (SmolLM2-135M-Instruct, 320 generated
Chinese + English extraction examples, 30 optimizer steps, 40 held-out examples) and its results are
read back from runs/demo-NAME/demo.json. Prints a table and writes it to
bench/results/DATE-MACHINE-methods.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import subprocess
import sys
import time
from pathlib import Path

from bench.machine import machine
from sftune.demo import DEMO_LEARNING_RATE

ROOT = Path(__file__).resolve().parent.parent
METHODS = list(DEMO_LEARNING_RATE)  # every method the demo trains


def run_method(method: str, extra: list[str]) -> dict:
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "sftune", "demo", "--method", method, *extra], cwd=ROOT,
                          capture_output=True, text=True)
    if done.returncode != 0:
        return {"method": method, "error": (done.stderr or done.stdout)[-2000:]}
    outcome = json.loads((ROOT / "runs" / f"demo-{method}" / "demo.json").read_text())
    outcome["wall_seconds"] = round(time.perf_counter() - started, 1)
    return outcome


def table(results: list[dict]) -> str:
    lines = ["| method | held-out loss before | after | exact match before | after | trainable parameters | "
             "train s | peak memory MB |", "|---|---|---|---|---|---|---|---|"]
    for r in results:
        if "error" in r:
            lines.append(f"| {r['method']} | failed: {r['error'].splitlines()[-1][:120]} |||||||")
            continue
        s = r["summary"]
        lines.append(f"| {r['method']} | {r['loss_before']:.3f} | {r['loss_after']:.3f} | "
                     f"{r['exact_match_before']:.1%} | {r['exact_match_after']:.1%} | "
                     f"{s['trainable_parameters']:,} | {s['train_seconds']:.0f} | {s['peak_memory_mb']:.0f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("overrides", nargs="*", help="key=value overrides passed to every demo run")
    parser.add_argument("--fresh", action="store_true", help="drop today's earlier results instead of updating them")
    args = parser.parse_args()
    out = ROOT / "bench" / "results" / f"{datetime.date.today()}-{machine()['name']}-methods.md"
    earlier = [] if args.fresh or not out.with_suffix(".json").exists() else json.loads(out.with_suffix(".json").read_text())
    fresh = []
    for method in args.methods.split(","):
        print(f"{method} ...", file=sys.stderr, flush=True)
        fresh.append(run_method(method, args.overrides))
        print(table(fresh[-1:]).splitlines()[-1], file=sys.stderr, flush=True)
    # a method run again replaces its earlier row; the others keep theirs, in METHODS order
    by_method = {r["method"]: r for r in earlier} | {r["method"]: r for r in fresh}
    results = [by_method[m] for m in METHODS if m in by_method] + [r for m, r in by_method.items() if m not in METHODS]
    text = (f"# Every method on the demo task, {datetime.date.today()}, {machine()['name']}\n\n"
            "SmolLM2-135M-Instruct, 320 generated Chinese + English extraction examples, 30 optimizer steps "
            "(`sftune demo --method NAME`), 40 held-out examples. Held-out loss: per answer token, at step 0 "
            "(the method already applied: quantized weights for qlora, the initial virtual tokens for the "
            "prompt methods) and after training; exact match: the answer parses as JSON equal to the truth, "
            "before (the base model) and after. Train seconds include the evaluations.\n\n" + table(results) + "\n")
    print(text)
    out.write_text(text, encoding="utf-8")
    (out.with_suffix(".json")).write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
