"""`precision: auto` on each machine kind this project runs on, whatever machine runs the test."""

from __future__ import annotations

import pytest

from sftune import hardware

AMD_EPYC = frozenset({"avx2", "fma", "avx512f"})  # no bf16 units
XEON_AVX512_BF16 = frozenset({"avx2", "avx512f", "avx512_bf16", "avx512_vnni"})
XEON_AMX = XEON_AVX512_BF16 | {"amx_bf16", "amx_tile", "amx_int8"}


@pytest.mark.parametrize(
    "flags, units, precision",
    [(AMD_EPYC, None, "fp32"), (XEON_AVX512_BF16, "avx512_bf16", "fp32"), (XEON_AMX, "amx", "bf16")],
    ids=["amd-epyc", "xeon-avx512-bf16", "xeon-amx"],
)
def test_auto_precision_on_each_cpu_kind(flags, units, precision):
    assert hardware.cpu_bf16_units(flags) == units
    assert hardware.auto_precision(cuda=False, flags=flags) == precision


def test_this_machine_is_read_from_cpuinfo():
    flags = hardware.cpu_flags()
    with open("/proc/cpuinfo", encoding="utf-8") as f:
        text = f.read()
    assert ("amx_bf16" in flags) == (" amx_bf16" in text)
    assert ("avx512_bf16" in flags) == (" avx512_bf16" in text)


def test_gpu_takes_bf16_where_it_has_it(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert hardware.auto_precision(cuda=True) == "bf16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert hardware.auto_precision(cuda=True) == "fp16"


def test_explicit_precision_is_kept():
    assert hardware.resolve_precision("fp16") == "fp16"
    assert hardware.resolve_precision("auto") in ("fp32", "bf16", "fp16")
