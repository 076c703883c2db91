"""What the machine accelerates, and the precision `train.precision: auto` picks from it.

On a GPU: bf16 where it has bf16, else fp16. On a CPU: bf16 only where it has AMX tiles. Measured
on both CPU kinds this project runs on (bench/results/): with AMX, a bf16 matmul runs several times
faster than fp32; an Intel Xeon with AVX512-BF16 but no AMX ran bf16 matmuls at about 0.6x fp32
(47-65 against 82-108 GFLOP/s at SmolLM2's shapes), and an AMD EPYC without bf16 units slower still.
"""

from __future__ import annotations

from functools import lru_cache


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
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if cpu_bf16_units(flags) == "amx" else "fp32"


def resolve_precision(name: str) -> str:
    """A configured precision, with 'auto' decided for this machine."""
    return auto_precision() if name == "auto" else name
