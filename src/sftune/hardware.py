"""What the machine accelerates, and the precision `train.precision: auto` picks from it.

On a GPU: bf16 where it has bf16, else fp16. On a CPU the flags alone do not say it, so:
- AMX tiles: bf16 (a bf16 matmul runs several times faster than fp32 there);
- no bf16 units (an AMD EPYC before Zen 4): fp32 (bf16 is emulated, slower still);
- AVX512-BF16 without AMX: measured once per machine. The same flag meant opposite things on the two
  such machines this project ran on: an Intel Xeon ran bf16 matmuls at about 0.6x fp32 (47-65 against
  82-108 GFLOP/s at SmolLM2's shapes), an AMD EPYC (Zen 4) at about 2.2x (about 210 against 95 GFLOP/s
  per core). sftune times both at a small model's shape (under a second) and keeps the answer in
  SFTUNE_HOME/hardware.json, keyed by CPU model, flags and torch version.
"""

from __future__ import annotations

import json
import time
from functools import lru_cache
from pathlib import Path

# bf16 must beat fp32 by this much on the measured matmul to be chosen (margin for noise on a busy machine).
BF16_MIN_SPEEDUP = 1.3


@lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags from /proc/cpuinfo (empty where there is none)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def cpu_bf16_units(flags: frozenset[str] | None = None) -> str | None:
    """'amx' (AMX tiles, with bf16), 'avx512_bf16' (bf16 dot products in AVX-512 only) or None."""
    flags = cpu_flags() if flags is None else flags
    if "amx_bf16" in flags:
        return "amx"
    if "avx512_bf16" in flags:
        return "avx512_bf16"
    return None


def auto_precision(cuda: bool | None = None, flags: frozenset[str] | None = None) -> str:
    """'bf16' | 'fp16' | 'fp32': what `precision: auto` trains in on this machine."""
    import torch

    cuda = torch.cuda.is_available() if cuda is None else cuda
    if cuda:
        return "bf16" if cuda_bf16() else "fp16"
    units = cpu_bf16_units(flags)
    if units == "avx512_bf16":
        return "bf16" if bf16_speedup() >= BF16_MIN_SPEEDUP else "fp32"
    return "bf16" if units == "amx" else "fp32"


def cuda_bf16() -> bool:
    """Whether this machine's GPU computes in bf16 natively (compute capability 8.0 and later: A100, H100).
    torch.cuda.is_bf16_supported() alone also says yes where bf16 is only emulated (T4 7.5, V100 7.0)."""
    import torch

    return torch.cuda.is_bf16_supported(including_emulation=False)  # False without a GPU


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            return next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "cpu")
    except OSError:
        return "cpu"


def _cache_file() -> Path:
    from sftune.models import sftune_home

    return sftune_home() / "hardware.json"


def _machine_key() -> str:
    import hashlib

    import torch

    flags = ",".join(sorted(cpu_flags()))
    return f"{cpu_model()} | torch {torch.__version__} | {hashlib.sha256(flags.encode()).hexdigest()[:12]}"


@lru_cache(maxsize=1)
def bf16_speedup() -> float:
    """How many times faster a bf16 matmul runs than an fp32 one on this CPU, at a small model's shape
    (512 tokens x 576 x 1536, SmolLM2's MLP): measured once, then read from SFTUNE_HOME/hardware.json."""
    path, key = _cache_file(), _machine_key()
    try:
        known = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        known = {}
    if isinstance(known.get(key), dict) and "bf16_speedup" in known[key]:
        return float(known[key]["bf16_speedup"])
    rates = matmul_rates()
    speedup = rates["bfloat16"] / rates["float32"]
    known[key] = {"bf16_speedup": round(speedup, 3), "gflops": {k: round(v / 1e9, 1) for k, v in rates.items()}}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{time.time_ns()}.tmp")
        tmp.write_text(json.dumps(known, indent=1), encoding="utf-8")
        tmp.replace(path)
    except OSError:
        pass  # a read-only home: measured again next time, nothing else changes
    return speedup


def matmul_rates(shape: tuple[int, int, int] = (512, 576, 1536), seconds: float = 0.25) -> dict[str, float]:
    """Best FLOP/s of fp32 and bf16 (m x k) @ (k x n) products, timed alternately so that a busy machine
    slows both alike."""
    import torch

    m, k, n = shape
    flop = 2 * m * k * n
    operands = {d: (torch.randn(m, k, dtype=getattr(torch, d)), torch.randn(k, n, dtype=getattr(torch, d)))
                for d in ("float32", "bfloat16")}
    best = dict.fromkeys(operands, 0.0)
    for a, b in operands.values():  # warm up (first calls pick kernels and allocate)
        a @ b
    end = time.perf_counter() + 2 * seconds
    while time.perf_counter() < end:
        for dtype, (a, b) in operands.items():
            start = time.perf_counter()
            a @ b
            best[dtype] = max(best[dtype], flop / (time.perf_counter() - start))
    return best


def resolve_precision(name: str) -> str:
    """A configured precision, with 'auto' decided for this machine."""
    return auto_precision() if name == "auto" else name
