"""The benchmark's own instruments: the FLOP formula, the token meter, and a quick end-to-end run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import tiny_model

ROOT = Path(__file__).resolve().parent.parent
pytest.importorskip("bench.flops", reason="bench/ is not importable from this checkout")


def test_training_flops_match_torch_flop_counter_for_a_lora_step():
    """bench/flops.py's formula equals what torch counts for one LoRA forward + backward."""
    from peft import LoraConfig, get_peft_model
    from torch.utils.flop_counter import FlopCounterMode

    from bench import flops

    model = tiny_model("llama")
    shape = flops.shape_of(model)
    model.config._attn_implementation = "eager"  # torch counts full (non-causal) score matrices
    lora = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", lora_dropout=0.0))
    lora.enable_input_require_grads()  # the first layer's input gradient is then computed too
    lora.train()
    lengths = [12, 7]
    ids = torch.randint(0, 1000, (len(lengths), max(lengths)))
    mask = torch.tensor([[1] * n + [0] * (max(lengths) - n) for n in lengths])
    counter = FlopCounterMode(display=False)
    with counter:
        logits = lora(input_ids=ids, attention_mask=mask, use_cache=False).logits
        logits.float().sum().backward()
    # The model computes every padded position and every logit: count the padded shape.
    fed = ids.numel()
    expected = flops.training_flops(shape, flops.lora_params(lora), real=fed, trained=fed,
                                    lengths=[ids.shape[1]] * len(lengths), causal=False)
    assert counter.get_total_flops() == pytest.approx(expected, rel=1e-9)


def test_meter_counts_trained_positions_and_groups_micro_batches_into_steps():
    from bench.workload import Meter, summarize

    meter = Meter(accumulation=2)

    def collate(features):
        ids = torch.tensor([f["input_ids"] for f in features])
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": torch.tensor(
            [f["labels"] for f in features])}

    counted = meter.wrap(collate)
    example = {"input_ids": [1, 2, 3, 4], "labels": [-100, -100, 3, 4]}
    for _ in range(4):
        counted([example, example])
    meter.start, meter.step_ends = 0.0, [1.0, 3.0]
    steps = meter.steps()
    assert [s["trained"] for s in steps] == [8, 8]  # 2 micro-batches x 2 examples x 2 trained positions
    assert [s["examples"] for s in steps] == [4, 4]
    summary = summarize(steps, warmup=1)
    assert summary["trained_per_s"] == 8 / 2.0
    assert summary["trained_total"] == 16


def test_every_system_trains_the_expected_tokens_in_one_short_run(tmp_path, smollm2_tokenizer, monkeypatch):
    """A seconds-long smoke run of each system in this process (`bench.worker.run`, what every benchmark
    process runs): a tiny random model with the real tokenizer, 4 examples, 2 per step; each system trains
    exactly the tokens the workload expects."""
    import importlib.util

    from bench.worker import run
    from bench.workload import Workload
    from sftune.training import recipe

    monkeypatch.setattr(recipe, "SFTTrainer", recipe.SFTTrainer)  # the sftune runner puts its own in place
    monkeypatch.setattr(torch, "set_num_threads", lambda n: None)  # leave the test process's threads alone
    model_dir = tmp_path / "tiny"
    tiny_model("llama", max_position_embeddings=1024).save_pretrained(model_dir)
    smollm2_tokenizer.save_pretrained(model_dir)
    work = Workload(examples=4, batch=2, warmup_steps=1, model=str(model_dir))
    systems = ["sftune", "tutorial"] + (["trl_best"] if importlib.util.find_spec("trl") else [])
    for name in systems:
        result = run(name, work)
        assert result["trained_total"] == result["expected_trained"] > 0, name
        assert result["examples_total"] == 4, name


def test_matmul_probe_times_bf16_only_where_the_chip_has_bf16_units(monkeypatch):
    """A CPU without bf16 units emulates bf16 at about 1 GFLOP/s: one probe there took 6-10 minutes and
    measured a rate no system uses (precision auto trains in fp32 there)."""
    from bench import machine
    from sftune import hardware

    for units, expected in ((None, ("float32",)), ("avx512_bf16", ("float32", "bfloat16")),
                            ("amx", ("float32", "bfloat16"))):
        monkeypatch.setattr(hardware, "cpu_bf16_units", lambda flags=None, units=units: units)
        assert machine.timed_dtypes(gpu=False) == expected
    for supported, expected in ((True, ("float32", "bfloat16")), (False, ("float32",))):
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True, s=supported: s)
        assert machine.timed_dtypes(gpu=True) == expected


@pytest.mark.slow
def test_quick_benchmark_run_trains_the_same_tokens_in_every_system(tmp_path, smollm2_tokenizer):
    """`python -m bench.run --quick` end to end (a tiny random model with the real tokenizer, so it is
    fast): a results page with the ratio table, and every system trained exactly the expected tokens."""
    import importlib.util

    # TRL comes with the bench extra (pip install -e '.[bench]'); the tutorial recipe needs only transformers.
    systems = ["sftune", "tutorial"] + (["trl_best"] if importlib.util.find_spec("trl") else [])
    model_dir = tmp_path / "tiny"
    tiny_model("llama", max_position_embeddings=1024).save_pretrained(model_dir)
    smollm2_tokenizer.save_pretrained(model_dir)
    results = tmp_path / "results"
    command = [sys.executable, "-m", "bench.run", "--quick", "--examples", "4", "--batch", "2", "--model",
               str(model_dir), "--systems", ",".join(systems), "--no-components", "--results", str(results)]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    page = next(results.glob("*-quick.md")).read_text()
    assert "sftune / peer" in page and "Configuration as run" in page
    table = json.loads(next(results.glob("*-quick.json")).read_text())["table"]
    assert set(table) == set(systems)
    trained = {name: row["work"]["trained_total"] for name, row in table.items()}
    expected = {row["work"]["expected_trained"] for row in table.values()}
    assert len(expected) == 1 and set(trained.values()) == expected, trained
    assert all(row["work"]["examples_total"] == 4 for row in table.values())
    assert table["tutorial"]["settings"]["layout"] == "padded to 512"
    assert all(table[s]["settings"]["layout"] == "padding-free" for s in systems if s != "tutorial")


def test_gpu_oneshot_dry_run_runs_every_section_on_the_cpu(tmp_path):
    """bench/gpu_oneshot.py --dry-run (no CUDA): every section runs its CPU fallback, says so, and the report is
    written to $OUT/gpu_oneshot.md."""
    import os

    env = {**os.environ, "OUT": str(tmp_path), "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)])}
    done = subprocess.run([sys.executable, "-m", "bench.gpu_oneshot", "--dry-run", "--shape", "tiny"], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=170)
    report = (tmp_path / "gpu_oneshot.md").read_text()
    assert done.returncode == 0, report[-3000:] + done.stderr[-2000:]
    sections = ["environment", "correctness", "sync audit", "throughput", "generation"]
    assert all(f"## {name} (budget" in report for name in sections)
    assert report.count("CPU fallback (--dry-run, no CUDA)") == len(sections)
    assert all(f"| {name} | ok" in report for name in sections)
    assert "| sftune (defaults) |" in report and "DRY RUN" in report


def test_gpu_oneshot_carry_check_adds_up_the_needed_wheels_only(capsys):
    """--carry-check sums the needed distributions as wheels against the limit (exit 0 where they fit, 1 where
    not); the optional ones (datasets' pyarrow, bitsandbytes) are listed apart and left out of the sum."""
    from bench.gpu_oneshot import carry_check

    mib = 2**20
    rows = [("sftune (src/sftune, bench)", "tree", 2 * mib, 1 * mib, True),
            ("transformers", "5.24.0", 50 * mib, 12 * mib, True),
            ("pyarrow", "26.0.1", 160 * mib, 52 * mib, False)]
    assert carry_check(64.0, rows) == 0
    out = capsys.readouterr().out
    assert "13.0 MiB as wheels" in out and "fits" in out
    assert "pyarrow" in out and "optional (imported when present)" in out.split("pyarrow")[1].splitlines()[0]
    assert carry_check(12.5, rows) == 1
    assert "does NOT fit" in capsys.readouterr().out


def test_gpu_oneshot_packs_without_datasets():
    """The one-shot's packed rows (a plain list: no datasets / pyarrow on the GPU machine) are
    packing.packed_rows' rows."""
    import datasets

    from bench.gpu_oneshot import packed_list, random_examples
    from sftune.packing import packed_rows

    examples = random_examples(12, 100, 5, 40)
    assert packed_list(examples, 64) == packed_rows(datasets.Dataset.from_list(examples), 64).to_list()
