"""What the benchmark runs on, and its measured matmul rate, printed as JSON.

Run in its own process by bench/run.py (which keeps torch out of its own process so that the peak
RSS of every child it starts is the child's own).

    python -m bench.machine [--quick]
"""

from __future__ import annotations

import json
import os
import platform
import re
import sys
from typing import Any


def machine() -> dict[str, Any]:
    """What the figures were measured on, and a short name for the results file."""
    import torch

    cpu = platform.processor() or "cpu"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            flags = next(line for line in f if line.startswith("flags")).split()
    except (OSError, StopIteration):
        flags = []
    cores = os.cpu_count() or 1
    info = {
        "cpu": cpu,
        "cores": cores,
        "bf16_units": any(f in flags for f in ("avx512_bf16", "amx_bf16")),
        "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    for package in ("transformers", "peft", "trl", "accelerate"):
        try:
            info[package] = __import__(package).__version__
        except ImportError:
            info[package] = None
    # The CPU kinds share model names (an AMD EPYC with and without bf16 units): the name says which.
    units = "amx" if "amx_bf16" in flags else "avx512bf16" if "avx512_bf16" in flags else ""
    base = info["gpu"] or f"{cpu}-{units}-{cores}core"
    info["name"] = re.sub(r"[^a-z0-9]+", "-", base.lower()).strip("-")
    return info


# SmolLM2-135M's MLP product for one packed row of 512 tokens: the shape the training matmuls really have.
MODEL_SHAPE = (512, 576, 1536)


def timed_dtypes(gpu: bool) -> tuple[str, ...]:
    """fp32 always; bf16 only where the chip has bf16 units. A CPU without them emulates bf16 at about 1 GFLOP/s
    (fp32: 70-80), so one probe at 2048-square would take minutes and measure nothing a system uses: the
    benchmark's `precision: auto` trains in fp32 there."""
    import torch

    from sftune.hardware import cpu_bf16_units

    has_bf16 = torch.cuda.is_bf16_supported(including_emulation=False) if gpu else cpu_bf16_units() is not None
    return ("float32", "bfloat16") if has_bf16 else ("float32",)


def main() -> None:
    import torch

    from bench.flops import matmul_rate
    from bench.workload import set_threads

    set_threads()
    gpu = torch.cuda.is_available()
    quick = "--quick" in sys.argv[1:]
    seconds = 0.5 if quick else 1.5
    device = "cuda" if gpu else "cpu"
    rates = {}
    for dtype in timed_dtypes(gpu):
        rates[dtype] = {
            "large": matmul_rate(seconds=seconds, device=device, dtype=dtype),
            "model": matmul_rate(seconds=seconds, device=device, dtype=dtype, shape=MODEL_SHAPE),
        }
    print(json.dumps({"machine": machine(), "matmul": rates}))


if __name__ == "__main__":
    main()
