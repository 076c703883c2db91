"""`precision: auto` on each machine kind this project runs on, whatever machine runs the test."""

from __future__ import annotations

import pytest

from sftune import hardware

AMD_EPYC = frozenset({"avx2", "fma", "avx512f"})  # no bf16 units
XEON_AVX512_BF16 = frozenset({"avx2", "avx512f", "avx512_bf16", "avx512_vnni"})
XEON_AMX = XEON_AVX512_BF16 | {"amx_bf16", "amx_tile", "amx_int8"}


@pytest.mark.parametrize(
    "flags, units, speedup, precision",
    [(AMD_EPYC, None, None, "fp32"),
     # AVX512-BF16 without AMX: the measured matmul speed decides (Intel Xeon 0.6x, AMD EPYC Zen 4 2.2x).
     (XEON_AVX512_BF16, "avx512_bf16", 0.6, "fp32"), (XEON_AVX512_BF16, "avx512_bf16", 2.2, "bf16"),
     (XEON_AMX, "amx", None, "bf16")],
    ids=["amd-epyc", "xeon-avx512-bf16", "epyc-zen4-avx512-bf16", "xeon-amx"],
)
def test_auto_precision_on_each_cpu_kind(monkeypatch, flags, units, speedup, precision):
    def measured():
        assert speedup is not None, "only AVX512-BF16 without AMX needs a measurement"
        return speedup

    monkeypatch.setattr(hardware, "bf16_speedup", measured)
    assert hardware.cpu_bf16_units(flags) == units
    assert hardware.auto_precision(cuda=False, flags=flags) == precision


def test_bf16_speedup_is_measured_once_and_kept_per_machine(monkeypatch, tmp_path):
    import json

    monkeypatch.setenv("SFTUNE_HOME", str(tmp_path))
    calls = []

    def rates():
        calls.append(1)
        return {"float32": 100e9, "bfloat16": 210e9}

    monkeypatch.setattr(hardware, "matmul_rates", rates)
    hardware.bf16_speedup.cache_clear()
    try:
        assert hardware.bf16_speedup() == pytest.approx(2.1)
        hardware.bf16_speedup.cache_clear()
        assert hardware.bf16_speedup() == pytest.approx(2.1)  # read back from the file, not measured again
        assert len(calls) == 1
        saved = json.loads((tmp_path / "hardware.json").read_text())
        (entry,) = saved.values()
        assert entry["bf16_speedup"] == pytest.approx(2.1) and entry["gflops"] == {"float32": 100.0, "bfloat16": 210.0}
        assert hardware.cpu_model() in next(iter(saved))
    finally:
        hardware.bf16_speedup.cache_clear()


def test_matmul_rates_time_both_dtypes_against_the_flop_count():
    rates = hardware.matmul_rates(shape=(64, 64, 64), seconds=0.02)
    assert set(rates) == {"float32", "bfloat16"}
    # Between a slow emulation and the fastest CPU core's peak (a few hundred GFLOP/s).
    assert all(1e6 < r < 1e13 for r in rates.values())


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


def fake_gpu(monkeypatch, capability: tuple[int, int]) -> None:
    """This process sees one CUDA GPU of `capability`: torch's own is_bf16_supported runs on these facts, and
    emulated bf16 works (as it does on a T4 or a V100)."""
    import types

    import torch

    monkeypatch.setattr(torch.version, "hip", None)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_properties",
                        lambda device=None: types.SimpleNamespace(major=capability[0], minor=capability[1]))
    monkeypatch.setattr(torch.cuda, "_check_bf16_tensor_supported", lambda device: True)


@pytest.mark.parametrize("capability, precision", [((7, 0), "fp16"), ((7, 5), "fp16"), ((8, 0), "bf16"),
                                                   ((9, 0), "bf16")], ids=["v100", "t4", "a100", "h100"])
def test_gpu_takes_bf16_only_where_it_computes_it_natively(monkeypatch, capability, precision):
    """A T4 or V100 runs bf16 only by emulation (slow): precision auto and QLoRA's auto compute dtype take fp16."""
    import torch

    from sftune import methods

    fake_gpu(monkeypatch, capability)
    assert hardware.auto_precision() == precision
    assert methods._compute_dtype("auto", torch.device("cuda")) == getattr(torch, {"bf16": "bfloat16",
                                                                                   "fp16": "float16"}[precision])
