"""sftune against its peers on the same work, in one run, on this machine.

    .venv/bin/python -m bench.run                 # full table: 64 examples, 3 repeats (tens of minutes on a CPU)
    .venv/bin/python -m bench.run --quick         # smoke run: 8 examples, 1 repeat
    .venv/bin/python -m bench.run --systems sftune,trl_best --repeats 5

Every system trains SmolLM2-135M-Instruct with LoRA r=16 on all linear layers on the same real
instruction examples (bench/data/sharegpt_bench.jsonl), the same token ids and response-only labels,
the same number of examples per optimizer step, one epoch. Each (system, repeat) runs in its own
process, repeats interleaved across systems so machine noise spreads evenly; the first optimizer
step(s) are warm-up and left out of the timings. Prints the tables and writes them to
bench/results/DATE-MACHINE.md (raw figures in DATE-MACHINE.json beside it).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
CPU_SYSTEMS = ["sftune", "trl_defaults", "trl_packed", "trl_best", "trl_best_fp32", "trl_best_unpacked", "tutorial"]
MODEL = "smollm2-135m-instruct"
COMPONENTS = ["bench/bench_data.py", "bench/bench_encode.py"]


def probe(quick: bool) -> dict[str, Any]:
    """Machine facts and the matmul rate, measured in a child process (see bench/machine.py)."""
    command = [sys.executable, "-m", "bench.machine"] + (["--quick"] if quick else [])
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=True)
    return json.loads(done.stdout)


def available_systems(requested: list[str] | None, gpu: bool, bf16_units: bool = True
                      ) -> tuple[list[str], dict[str, str]]:
    """The systems to run, and those left out with the reason."""
    import importlib.util

    wanted = requested or CPU_SYSTEMS + (["trl_liger", "unsloth"] if gpu else [])
    skipped: dict[str, str] = {}
    run: list[str] = []
    for name in wanted:
        if name in ("trl_liger", "unsloth") and not gpu:
            skipped[name] = "needs a CUDA GPU"
        elif name == "trl_liger" and importlib.util.find_spec("liger_kernel") is None:
            skipped[name] = "liger-kernel is not installed"
        elif name == "unsloth":
            skipped[name] = ("no runner yet: Unsloth loads and patches the model itself, so it needs its own "
                             "runner, to be written and checked on a GPU")
        elif name == "trl_best_fp32" and not bf16_units:
            skipped[name] = "no bf16 units: trl_best already runs in fp32"
        elif name.startswith("trl") and importlib.util.find_spec("trl") is None:
            skipped[name] = "trl is not installed (pip install -e '.[bench]')"
        else:
            run.append(name)
    return run, skipped


def run_one(name: str, args: argparse.Namespace, log: Path) -> dict[str, Any]:
    """One system, one repeat, in a fresh process; its peak RSS comes from the kernel (wait4)."""
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        out = Path(f.name)
    command = [sys.executable, "-m", "bench.worker", name, "--examples", str(args.examples),
               "--batch", str(args.batch), "--warmup-steps", str(args.warmup_steps), "--model", args.model,
               "--json", str(out)]
    started = time.perf_counter()
    with open(log, "a", encoding="utf-8") as err:
        err.write(f"\n=== {' '.join(command)}\n")
        err.flush()
        process = subprocess.Popen(command, cwd=ROOT, stdout=err, stderr=err)
        _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - started
    if process.returncode != 0 or out.stat().st_size == 0:
        out.unlink(missing_ok=True)
        return {"system": name, "error": f"exit {process.returncode}; see {log}", "wall_s": wall}
    result = json.loads(out.read_text())
    out.unlink()
    result["peak_rss"] = usage.ru_maxrss * 1024
    result["wall_s"] = wall
    return result


def run_component(script: str, quick: bool, log: Path) -> dict[str, Any]:
    """A component benchmark (data layer, encoder): its printed figures, wall time and peak RSS."""
    path = ROOT / script
    if not path.exists():
        return {"script": script, "error": "not written yet"}
    command = [sys.executable, str(path)] + (["--quick"] if quick else [])
    started = time.perf_counter()
    with tempfile.TemporaryFile("w+", encoding="utf-8") as out, open(log, "a", encoding="utf-8") as err:
        err.write(f"\n=== {' '.join(command)}\n")
        err.flush()
        process = subprocess.Popen(command, cwd=ROOT, stdout=out, stderr=err)
        _, status, usage = os.wait4(process.pid, 0)
        out.seek(0)
        printed = out.read().strip()
    code = os.waitstatus_to_exitcode(status)
    return {
        "script": script + (" --quick" if quick else ""),
        "output": printed,
        "error": None if code == 0 else f"exit {code}; see {log}",
        "wall_s": time.perf_counter() - started,
        "peak_rss": usage.ru_maxrss * 1024,
    }


DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "bfloat16"}  # fp16 units run at the bf16 rate


def best_rates(measured: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """The best matmul FLOP/s seen per dtype, for large squares and at the model's shape, over all probes.
    Older results (one fp32 rate per probe) read as float32 'large'."""
    rates: dict[str, dict[str, float]] = {}
    for probe_rates in measured:
        if "flops" in probe_rates:  # the format before per-dtype rates
            probe_rates = {probe_rates["dtype"]: {"large": probe_rates}}
        for dtype, kinds in probe_rates.items():
            for kind, rate in kinds.items():
                slot = rates.setdefault(dtype, {})
                slot[kind] = max(slot.get(kind, 0.0), rate["flops"])
    return rates


def aggregate(runs: list[dict[str, Any]], rates: dict[str, dict[str, float]]) -> dict[str, Any]:
    """Median and spread (min, max) of each figure over the repeats of one system. MFU divides by the
    large-matmul rate of the dtype the system really computed in (its precision read back from the trainer)."""
    good = [r for r in runs if "error" not in r]
    if not good:
        return {"error": runs[0]["error"] if runs else "not run"}

    def rate(run: dict[str, Any], kind: str) -> float:
        dtype = DTYPES[run["settings"]["precision"]]
        return (rates.get(dtype) or rates["float32"]).get(kind) or rates["float32"]["large"]

    figures = {
        "trained_per_s": [r["trained_per_s"] for r in good],
        "fed_per_s": [r["fed_per_s"] for r in good],
        "real_per_s": [r["real_per_s"] for r in good],
        "s_per_step": [r["s_per_step"] for r in good],
        "peak_rss": [r["peak_rss"] for r in good],
        "mfu": [r["flops_per_s"] / rate(r, "large") for r in good],
        "mfu_model_shape": [r["flops_per_s"] / rate(r, "model") for r in good],
    }
    if good[0].get("peak_gpu") is not None:
        figures["peak_gpu"] = [r["peak_gpu"] for r in good]
    out: dict[str, Any] = {k: {"median": statistics.median(v), "min": min(v), "max": max(v)}
                           for k, v in figures.items()}
    first = good[0]
    out["settings"] = {**first["settings"], "layout": ", ".join(first["layout"])}
    out["work"] = {k: first[k] for k in ("examples_total", "trained_total", "expected_trained", "real_total",
                                         "fed_total", "steps", "timed_steps", "timed_trained", "lora_params")}
    out["same_work_every_repeat"] = len({(r["trained_total"], r["examples_total"]) for r in good}) == 1
    out["repeats"] = len(good)
    out["failed"] = len(runs) - len(good)
    return out


def _spread(figure: dict[str, float], scale: float = 1.0, digits: int = 1) -> str:
    m, lo, hi = figure["median"] / scale, figure["min"] / scale, figure["max"] / scale
    return f"{m:.{digits}f} ({lo:.{digits}f}-{hi:.{digits}f})"


def report(info: dict[str, Any], args: argparse.Namespace, table: dict[str, dict[str, Any]], labels: dict[str, str],
           skipped: dict[str, str], matmul: dict[str, dict[str, float]], components: list[dict[str, Any]], when: str) -> str:
    """The results page in Markdown: main table, ratio table, same-work check, MFU, components."""
    from bench.workload import lora_settings

    lora = lora_settings()
    gpu = info["gpu"] is not None
    memory = "peak GPU memory GB" if gpu else "peak RSS GB"
    lines = [
        f"# sftune benchmark, {when}, {info['name']}",
        "",
        f"Machine: {info['gpu'] or info['cpu']}, {info['cores']} cores, {info['memory_gb']} GB RAM, "
        f"bf16 units: {'yes' if info['bf16_units'] or gpu else 'no'}; torch {info['torch']}, transformers "
        f"{info['transformers']}, peft {info['peft']}, trl {info['trl']}, python {info['python']}.",
        f"Work: {args.examples} examples from bench/data/sharegpt_bench.jsonl, {args.batch} examples per optimizer "
        f"step, one epoch, {args.model}, LoRA r={lora['r']} on {lora['target_modules']} layers (alpha "
        f"{lora['lora_alpha']}, dropout {lora['lora_dropout']}), "
        f"max length 512, response-only loss. Each run in its own process ('runs' column: how many); "
        f"first {args.warmup_steps} step(s) of each run are warm-up and not timed. Figures: median (min-max).",
        "",
        f"| system | trained tokens/s | all tokens fed/s | s / optimizer step | {memory} | MFU | runs |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, row in table.items():
        if "error" in row:
            lines.append(f"| {labels[name]} | failed: {row['error']} | | | | |")
            continue
        mem = row["peak_gpu"] if gpu else row["peak_rss"]
        lines.append(
            f"| {labels[name]} | {_spread(row['trained_per_s'])} | {_spread(row['fed_per_s'])} | "
            f"{_spread(row['s_per_step'], digits=2)} | {_spread(mem, 2**30, 2)} | "
            f"{_spread(row['mfu'], 0.01)} % ({row['mfu_model_shape']['median'] * 100:.1f} %) | {row['repeats']} |"
        )
    for name, why in skipped.items():
        lines.append(f"| {labels.get(name, name)} | skipped: {why} | | | | |")

    ours = table.get("sftune")
    if ours and "error" not in ours:
        lines += ["", f"sftune / peer (ratio of medians; speed: higher is better, time and memory: lower is better)",
                  "", f"| peer | trained tokens/s | s / step | {memory} |", "|---|---|---|---|"]
        mem_key = "peak_gpu" if gpu else "peak_rss"
        trl = {n: r for n, r in table.items() if n.startswith("trl") and "error" not in r}
        if trl:
            best = max(trl, key=lambda n: trl[n]["trained_per_s"]["median"])
            lines.append(f"| **fastest TRL in this run** ({labels[best]}) | "
                         f"**{ours['trained_per_s']['median'] / trl[best]['trained_per_s']['median']:.2f}x** | "
                         f"{ours['s_per_step']['median'] / trl[best]['s_per_step']['median']:.2f}x | "
                         f"{ours[mem_key]['median'] / trl[best][mem_key]['median']:.2f}x |")
        for name, row in table.items():
            if name == "sftune" or "error" in row:
                continue
            lines.append(
                f"| {labels[name]} | {ours['trained_per_s']['median'] / row['trained_per_s']['median']:.2f}x | "
                f"{ours['s_per_step']['median'] / row['s_per_step']['median']:.2f}x | "
                f"{ours[mem_key]['median'] / row[mem_key]['median']:.2f}x |"
            )

    lines += ["", "Configuration as run (read back from each trainer and its batches):", "",
              "| system | precision | weights | activation checkpointing | packing | batches | micro-batch x accumulation |",
              "|---|---|---|---|---|---|---|"]
    for name, row in table.items():
        if "error" in row:
            continue
        c = row["settings"]
        lines.append(f"| {labels[name]} | {c['precision']} | {c['weights']} | "
                     f"{'on' if c['activation_checkpointing'] else 'off'} | {'on' if c['packing'] else 'off'} | "
                     f"{c['layout']} | {c['micro_batch']} x {c['accumulation']} |")
    lines += ["", "Same work (one run of each system; every repeat of a system trained the same tokens: "
              "'same' column):", "",
              "| system | examples | optimizer steps | trained tokens | expected | real tokens | tokens fed | same | "
              "trained in timed steps |",
              "|---|---|---|---|---|---|---|---|---|"]
    for name, row in table.items():
        if "error" in row:
            continue
        w = row["work"]
        lines.append(f"| {labels[name]} | {w['examples_total']} | {w['steps']} | {w['trained_total']} | "
                     f"{w['expected_trained']} | {w['real_total']} | {w['fed_total']} | "
                     f"{'yes' if row['same_work_every_repeat'] else 'NO'} | {w.get('timed_trained', '')} |")
    lines += ["", "Which examples fall in the timed steps depends on each system's batching (packed rows or "
              "single examples, shuffled): with few steps, compare rates, not seconds per step, across systems "
              "whose timed steps trained different token counts."]
    rates = "; ".join(
        f"{dtype} {kinds.get('large', 0) / 1e9:.0f} GFLOP/s large, {kinds.get('model', 0) / 1e9:.0f} at the model's "
        "shape" for dtype, kinds in matmul.items())
    lines += [
        "",
        f"Matmul rates measured on this machine ({rates}; large = 2048-square products, the model's shape = "
        "512 x 576 x 1536, SmolLM2's MLP over one packed row; best of the probes before and after the systems ran).",
        "MFU: useful training FLOP/s divided by the large-matmul rate of the dtype the system computed in "
        "(bf16 autocast: the bf16 rate); the MFU column in brackets divides by the rate at the model's shape "
        "instead. Useful FLOPs of a LoRA step, per bench/flops.py: 4 N_blocks T + 4 N_head T_trained + 3 A + "
        "6 N_lora T (T real tokens, T_trained trained positions, A the causal attention products; padding, "
        "recomputation and logits at untrained positions are not counted as useful work).",
    ]
    if components:
        lines += ["", "## Components", ""]
        for c in components:
            rss = f", peak RSS {c['peak_rss'] / 2**20:,.0f} MB measured by the driver" if "peak_rss" in c else ""
            lines.append(f"`{c['script']}` ({c.get('wall_s', 0):.0f} s{rss}):")
            if c.get("error"):
                lines.append(f"  failed or missing: {c['error']}")
            if c.get("output"):
                lines += ["", "```", c["output"], "```", ""]
    return "\n".join(lines) + "\n"


def rewrite(saved: Path) -> int:
    """Render DATE-MACHINE.md again from DATE-MACHINE.json."""
    from bench.systems import SYSTEMS

    raw = json.loads(saved.read_text())
    a = raw["args"]
    args = argparse.Namespace(examples=int(a["examples"]), batch=int(a["batch"]),
                              warmup_steps=int(a["warmup_steps"]), model=a["model"])
    labels = {"sftune": "sftune defaults", **{k: v[0] for k, v in SYSTEMS.items()}, "unsloth": "Unsloth"}
    matmul = best_rates(raw["matmul"])
    table = {name: aggregate(r, matmul) for name, r in raw["runs"].items() if r}
    when = saved.name[:10]
    page = report(raw["machine"], args, table, labels, raw.get("skipped", {}), matmul, raw["components"], when)
    saved.with_suffix(".md").write_text(page, encoding="utf-8")
    print(page)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smoke run: 8 examples, 4 per step, 1 repeat")
    parser.add_argument("--repeats", type=int, default=None, help="runs per system (default 3; 1 with --quick)")
    parser.add_argument("--examples", type=int, default=None, help="examples trained (default 64; 8 with --quick)")
    parser.add_argument("--batch", type=int, default=None, help="examples per optimizer step (default 8; 4 quick)")
    parser.add_argument("--warmup-steps", type=int, default=1)
    parser.add_argument("--systems", default=None, help="comma-separated subset of: " + ", ".join(
        CPU_SYSTEMS + ["trl_liger", "unsloth"]) + "; NAME:N runs that one N times instead of --repeats")
    parser.add_argument("--model", default=MODEL, help="model name or checkpoint folder (default: %(default)s)")
    parser.add_argument("--no-components", action="store_true", help="skip the data and encoding benchmarks")
    parser.add_argument("--results", type=Path, default=RESULTS, help="folder for DATE-MACHINE.md and .json")
    parser.add_argument("--from-json", type=Path, default=None,
                        help="rewrite the page from a run's saved .json (no training), e.g. after a report change")
    args = parser.parse_args(argv)
    if args.from_json:
        return rewrite(args.from_json)
    args.repeats = args.repeats or (1 if args.quick else 3)
    args.examples = args.examples or (8 if args.quick else 64)
    args.batch = args.batch or (4 if args.quick else 8)

    # The driver stays small (no torch here): on Linux a child's peak RSS starts from its parent's.
    from rich.console import Console
    from rich.progress import Progress

    from bench.systems import SYSTEMS

    console = Console(stderr=True)
    console.print("[bold]machine and matmul rate[/] ...")
    first = probe(args.quick)
    info = first["machine"]
    gpu = info["gpu"] is not None
    # "name:N" runs that system N times instead of --repeats (for peers too slow to repeat in the time at hand).
    requested = [part.split(":")[0] for part in args.systems.split(",")] if args.systems else None
    repeats = {part.split(":")[0]: int(part.split(":")[1]) for part in (args.systems or "").split(",") if ":" in part}
    systems, skipped = available_systems(requested, gpu, info["bf16_units"] or gpu)
    labels = {"sftune": "sftune defaults", **{k: v[0] for k, v in SYSTEMS.items()}, "unsloth": "Unsloth"}
    unknown = [s for s in systems if s not in labels]
    if unknown:
        parser.error(f"unknown system(s) {', '.join(unknown)}; known: {', '.join(labels)}")
    args.results.mkdir(parents=True, exist_ok=True)
    when = datetime.date.today().isoformat()
    stem = f"{when}-{info['name']}" + ("-quick" if args.quick else "")
    log = args.results / f"{stem}.log"
    log.write_text("")

    matmul_runs = [first["matmul"]]
    runs: dict[str, list[dict[str, Any]]] = {s: [] for s in systems}

    def write(final: bool) -> str:
        """The results page and raw figures; rewritten after every round so a cut-off run leaves a table."""
        measured = matmul_runs + ([probe(args.quick)["matmul"]] if final else [])
        matmul = best_rates(measured)
        table = {name: aggregate(r, matmul) for name, r in runs.items() if r}
        components = [] if args.no_components or not final else [
            run_component(c, args.quick, log) for c in COMPONENTS]
        page = report(info, args, table, labels, skipped, matmul, components, when)
        (args.results / f"{stem}.md").write_text(page, encoding="utf-8")
        (args.results / f"{stem}.json").write_text(json.dumps(
            {"machine": info, "args": {k: str(v) for k, v in vars(args).items()}, "matmul": measured, "skipped": skipped,
             "runs": runs, "table": table, "components": components}, indent=1), encoding="utf-8")
        return page

    rounds = max([args.repeats, *repeats.values()])
    with Progress(console=console) as progress:
        task = progress.add_task("systems", total=sum(repeats.get(s, args.repeats) for s in systems))
        for repeat in range(rounds):
            for name in systems:
                if repeat >= repeats.get(name, args.repeats):
                    continue
                progress.update(task, description=f"{name} (repeat {repeat + 1}/{repeats.get(name, args.repeats)})")
                result = run_one(name, args, log)
                runs[name].append(result)
                if "error" in result:
                    console.print(f"[red]{name} failed[/]: {result['error']}")
                else:
                    console.print(f"{name}: {result['trained_per_s']:.1f} trained tokens/s, "
                                  f"{result['s_per_step']:.2f} s/step, peak RSS {result['peak_rss'] / 2**30:.2f} GB")
                progress.advance(task)
            write(final=False)
    page = write(final=True)
    print(page)
    console.print(f"written: {args.results / (stem + '.md')}")
    table = json.loads((args.results / f"{stem}.json").read_text())["table"]
    failed = [n for n, row in table.items() if "error" in row]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
