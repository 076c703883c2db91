"""Every GPU check in one run, for a session with a lent GPU (~10 minutes on one H100/H200):
GPU tests (bf16 training, QLoRA with bitsandbytes on CUDA, flash-attention varlen packed == alone),
DDP and FSDP2 on the chips present, and the benchmark table (tokens/s, MFU against the chip's bf16 peak,
peak GPU memory) for sftune, TRL, and Liger / Unsloth where they import. Writes $OUT/gpu_check.md.

    bash bench/gpu_check.sh            # or: python -m bench.gpu_check --budget 540
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Dense bf16 tensor-core peak, TFLOP/s (vendor data sheets, SXM parts): the MFU denominator.
BF16_PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "L4": 121.0, "A10": 125.0}


def chip_peak(name: str) -> float | None:
    return next((v for k, v in BF16_PEAK_TFLOPS.items() if k in name), None)


def step(title: str, command: list[str], seconds: int, env: dict | None = None) -> dict:
    """One check in its own process, bounded by `seconds`; its tail kept for the report."""
    started = time.perf_counter()
    try:
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=seconds,
                              env={**os.environ, **(env or {})})
        status, tail = ("ok" if done.returncode == 0 else f"failed ({done.returncode})"), (done.stdout + done.stderr)
    except subprocess.TimeoutExpired as err:
        status, tail = f"timed out after {seconds}s", str(err.stdout or "") + str(err.stderr or "")
    result = {"check": title, "status": status, "seconds": round(time.perf_counter() - started, 1),
              "tail": tail[-2500:]}
    print(f"{title}: {status} in {result['seconds']} s", flush=True)
    return result


def main() -> None:
    import torch

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", ROOT / "bench" / "results")))
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("gpu_check: no CUDA GPU here; nothing to check")
    gpus = torch.cuda.device_count()
    name = torch.cuda.get_device_name(0)
    python = sys.executable
    checks = [step("GPU tests (bf16, QLoRA/bitsandbytes, flash varlen)",
                   [python, "-m", "pytest", "-q", "-rs", "tests/test_gpu.py"], 240)]
    n = str(min(gpus, 8))
    for config in ("ddp.yaml", "fsdp2_lora.yaml", "fsdp2_full.yaml"):
        checks.append(step(f"{config} on {n} GPU(s)", [
            python, "-m", "accelerate.commands.launch", "--config_file", f"examples/accelerate/{config}",
            "--num_processes", n, "-m", "sftune", "train", "examples/lora.yaml" if "lora" in config or
            config == "ddp.yaml" else "examples/full.yaml", f"output.dir={args.out}/run-{config[:-5]}",
            "train.max_steps=5", "output.overwrite=true"], 120))
    bench = step("benchmark: sftune vs TRL (+ Liger, Unsloth where installed)", [
        python, "-m", "bench.run", "--examples", "256", "--batch", "16", "--repeats", "1", "--no-components",
        "--results", str(args.out)], 300)
    checks.append(bench)
    peak = chip_peak(name)
    lines = [f"# GPU check: {gpus} x {name}, torch {torch.__version__}", "",
             "| check | status | seconds |", "|---|---|---|"]
    lines += [f"| {c['check']} | {c['status']} | {c['seconds']} |" for c in checks]
    for path in sorted(args.out.glob("*.json"), key=lambda p: p.stat().st_mtime)[-1:]:  # bench.run's raw figures
        runs = json.loads(path.read_text()).get("runs", {})
        lines += ["", f"From {path.name}; MFU against the {name} dense bf16 peak ({peak} TFLOP/s):", "",
                  "| system | trained tokens/s | useful TFLOP/s | MFU | peak GPU GB |", "|---|---|---|---|---|"]
        for system, repeats in runs.items():
            good = [r for r in repeats if "flops_per_s" in r]
            if not good:
                lines.append(f"| {system} | failed or skipped | | | |")
                continue
            flops = sum(r["flops_per_s"] for r in good) / len(good)
            tps = sum(r["trained_per_s"] for r in good) / len(good)
            mem = max((r.get("peak_gpu") or 0) for r in good) / 2**30
            mfu = f"{100 * flops / (peak * 1e12):.1f} %" if peak else "chip peak unknown"
            lines.append(f"| {system} | {tps:,.0f} | {flops / 1e12:.1f} | {mfu} | {mem:.2f} |")
    lines += ["", "## Output of each check", ""] + [f"### {c['check']}\n```\n{c['tail']}\n```" for c in checks]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu_check.md").write_text("\n".join(lines) + "\n")
    print("\n".join(line for line in lines if line.startswith(("|", "#", "From"))))


if __name__ == "__main__":
    main()
