"""One GPU check in one process, for the GPU machine this project is sometimes lent (one H100 / H200, no
network, an older system transformers): correctness on CUDA, a host-sync audit, throughput and peak memory
of sftune against TRL padding-free (and TRL + Liger where liger_kernel imports) on the same random-init
model built from a config shape, MFU against the measured bf16 matmul peak, and generation tokens/s at
batch 16. Each section has a time budget; one failing or running out does not stop the others. Writes
$OUT/gpu_oneshot.md (./gpu_oneshot.md when $OUT is unset).

    python -m bench.gpu_oneshot                          # on the GPU machine (under 9 minutes)
    python -m bench.gpu_oneshot --dry-run --shape tiny   # here: every section's CPU fallback, said so
    python -m bench.gpu_oneshot --carry-check            # what the GPU machine needs carried, and its size

Models are built from config shapes in code (no weights, no downloads); the tokenizer is a word-level one
built in code over the shape's vocabulary (the ids are random: no text is read).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import signal
import sys
import tempfile
import time
import traceback
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from bench.workload import synchronize

ROOT = Path(__file__).resolve().parent.parent

# Config shapes (as in the models' config.json), built with random weights.
SHAPES: dict[str, dict[str, Any]] = {
    "qwen2.5-0.5b": dict(model_type="qwen2", hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                         num_attention_heads=14, num_key_value_heads=2, vocab_size=151936, rope_theta=1e6,
                         max_position_embeddings=32768, tie_word_embeddings=True),
    "llama-3.2-1b": dict(model_type="llama", hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                         num_attention_heads=32, num_key_value_heads=8, head_dim=64, vocab_size=128256,
                         rope_theta=5e5, max_position_embeddings=131072, tie_word_embeddings=True),
    "tiny": dict(model_type="qwen2", hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, vocab_size=512, max_position_embeddings=2048),
}
# Seconds per section on the GPU machine (about 8 minutes in all, within the 9 the check may take).
BUDGETS = {"environment": 20, "correctness": 90, "sync audit": 45, "throughput": 240, "generation": 60}
# Distributions the GPU machine has itself (the rest is carried): its system torch and CUDA libraries.
ON_THE_GPU_MACHINE = {"torch", "numpy", "triton", "setuptools", "pip", "filelock", "fsspec", "jinja2", "markupsafe",
                      "mpmath", "networkx", "sympy", "typing_extensions", "packaging", "pyyaml"}


# Imported when installed (peft and transformers try them) but not needed: the QLoRA check is skipped without
# bitsandbytes, the TRL arms without trl and its datasets (pyarrow alone is ~52 MiB as a wheel), and nothing here
# reads images or sentencepiece vocabularies.
OPTIONAL = {"bitsandbytes", "scipy", "pillow", "sentencepiece"}
# Modules the check runs without: the needed set is probed with them absent (as transformers then sees them:
# find_spec gives None); what only they bring (datasets' pyarrow, pandas, ...) is optional.
NOT_NEEDED = ("datasets", "pyarrow", "pandas", "trl", "bitsandbytes")


class OverBudget(Exception):
    """A section ran past its time budget."""


@dataclass
class Report:
    dry_run: bool
    device: str
    lines: list[str] = field(default_factory=list)
    statuses: dict[str, str] = field(default_factory=dict)

    def say(self, text: str = "") -> None:
        print(text, flush=True)
        self.lines.append(text)

    def table(self, rows: list[dict[str, Any]]) -> None:
        if not rows:
            return
        keys = list(dict.fromkeys(k for row in rows for k in row))
        self.say("| " + " | ".join(keys) + " |")
        self.say("|" + "---|" * len(keys))
        for row in rows:
            self.say("| " + " | ".join(_cell(row.get(k, "")) for k in keys) + " |")
        self.say()


def _cell(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


@contextlib.contextmanager
def budget(seconds: float):
    """Raise OverBudget in this (main) thread after `seconds`."""
    def expire(signum, frame):
        raise OverBudget(f"over its budget of {seconds:.0f} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def run_section(report: Report, name: str, seconds: float, body: Callable[[Report], None]) -> None:
    report.say(f"## {name} (budget {seconds:.0f} s)")
    report.say()
    if report.dry_run:
        report.say(f"CPU fallback (--dry-run, no CUDA): this section ran on the CPU at a tiny shape; its figures "
                   "say nothing of a GPU.")
        report.say()
    started = time.perf_counter()
    try:
        with budget(seconds):
            body(report)
        status = "ok"
    except Exception as err:  # one section's failure is a finding; the others still run
        status = f"failed: {type(err).__name__}: {err}"
        report.say("```")
        report.say(traceback.format_exc()[-2500:])
        report.say("```")
    status += f" ({time.perf_counter() - started:.1f} s)"
    report.statuses[name] = status
    report.say(f"**{name}: {status}**")
    report.say()


# ------------------------------------------------------------------------------------------- building blocks

def device_and_dtype() -> tuple[Any, Any]:
    import torch

    from sftune.hardware import cuda_bf16

    if not torch.cuda.is_available():
        return torch.device("cpu"), torch.float32
    return torch.device("cuda"), torch.bfloat16 if cuda_bf16() else torch.float16


def build_model(shape: str, dtype: Any, device: Any, attention: str = "sdpa"):
    """A random-init causal LM of `shape`, on `device` in `dtype` (seeded: the same weights every call)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    options = dict(SHAPES[shape])
    config = AutoConfig.for_model(options.pop("model_type"), **options)
    torch.manual_seed(0)
    with torch.device(device):  # created where it runs (a meta model: its shape only)
        return AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation=attention)


def word_tokenizer(vocab_size: int):
    """A tokenizer over ids 0..vocab_size-1 (token t<i>), built in code: pad t0, eos t1."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import WhitespaceSplit
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(WordLevel({f"t{i}": i for i in range(vocab_size)}, unk_token="t0"))
    core.pre_tokenizer = WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=core, pad_token="t0", eos_token="t1", unk_token="t0")


def random_examples(count: int, vocab: int, shortest: int, longest: int, seed: int = 0) -> list[dict[str, list[int]]]:
    """Examples with random ids and lengths; the first half of each (the prompt) is not trained."""
    import random

    rng = random.Random(seed)
    out = []
    for _ in range(count):
        n = rng.randint(shortest, longest)
        ids = [rng.randrange(2, vocab) for _ in range(n)]
        out.append({"input_ids": ids, "labels": [-100] * (n // 2) + ids[n // 2:]})
    return out


# ----------------------------------------------------------------------------------------------- sections

def environment(report: Report) -> None:
    import importlib.metadata as metadata

    import torch

    rows = [{"what": "python", "value": platform.python_version()}]
    for name in ("torch", "transformers", "peft", "accelerate", "trl", "liger_kernel", "bitsandbytes", "datasets",
                 "flash_attn"):
        try:
            rows.append({"what": name, "value": metadata.version(name.replace("_", "-"))})
        except metadata.PackageNotFoundError:
            rows.append({"what": name, "value": "not installed"})
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        rows += [{"what": "device", "value": props.name},
                 {"what": "compute capability", "value": f"{props.major}.{props.minor}"},
                 {"what": "memory GiB", "value": round(props.total_memory / 2**30, 1)},
                 {"what": "CUDA", "value": torch.version.cuda}]
    else:
        rows.append({"what": "device", "value": f"CPU ({platform.processor() or platform.machine()}), no CUDA"})
    report.table(rows)


def correctness(report: Report) -> None:
    import torch

    from sftune import attention, generation, runs
    from sftune.preference.reference import reference_device
    from sftune.training.loss import linear_token_loss, trained_hidden_states

    device, dtype = device_and_dtype()
    cuda = device.type == "cuda"
    rows = []
    # packed == alone, with the attention sftune picks for packed rows on this machine
    name = attention.resolve("auto", packing=True)
    model = build_model("tiny", dtype, device, attention=name)
    lengths = [37, 80, 5, 120]
    seqs = [torch.randint(2, 512, (n,), device=device) for n in lengths]
    ids = torch.cat(seqs)[None]
    positions = torch.cat([torch.arange(n, device=device) for n in lengths])[None]
    with torch.no_grad():
        packed = model(input_ids=ids, position_ids=positions, use_cache=False).logits[0].float()
        worst, start = 0.0, 0
        for seq in seqs:
            alone = model(input_ids=seq[None], use_cache=False).logits[0].float()
            worst = max(worst, float((packed[start:start + len(seq)] - alone).abs().max()))
            start += len(seq)
    tolerance = 3e-2 if cuda else 1e-4
    rows.append({"check": f"packed == alone ({name}, {str(dtype).removeprefix('torch.')})",
                 "measured": f"max |diff| {worst:.3g}", "pass": worst <= tolerance})
    # sftune's loss (chunked output layer on trained positions) against the model's own, under autocast
    model = build_model("tiny", torch.float32, device)
    example = random_examples(1, 512, 100, 100, seed=1)[0]
    batch = {k: torch.tensor([v], device=device) for k, v in example.items()}
    autocast = torch.autocast(device.type, dtype=dtype) if cuda else contextlib.nullcontext()
    with autocast, torch.no_grad():
        states = trained_hidden_states(model, batch)
        ours = linear_token_loss(states.hidden, states.head, states.targets, states.weights,
                                 logit_rule=states.logit_rule) / states.targets.numel()
        reference = model(**batch, use_cache=False).loss
    gap = abs(float(ours) - float(reference))
    rows.append({"check": "sftune loss == model(labels).loss" + (" under autocast" if cuda else ""),
                 "measured": f"{float(ours):.5f} vs {float(reference):.5f}", "pass": gap <= (2e-2 if cuda else 1e-5)})
    # placement: inference on the GPU in the card's half dtype; the reference pass moves the model
    where, chosen = runs.placement()
    expected = ("cuda", dtype) if cuda else ("cpu", torch.float32)
    rows.append({"check": "runs.placement()", "measured": f"{where}, {chosen}", "pass": (where, chosen) == expected})
    cpu_model = build_model("tiny", torch.float32, "cpu")
    moved = reference_device(cpu_model, device)
    rows.append({"check": "reference pass moves the model", "measured": str(moved), "pass": moved.type == device.type})
    context = generation.half_precision(build_model("tiny", torch.float32, device, attention="sdpa"))
    rows.append({"check": "generation of an fp32 sdpa model: no autocast", "measured": type(context).__name__,
                 "pass": not isinstance(context, torch.autocast)})
    rows.append(qlora_steps(device))
    report.table(rows)
    failed = [r["check"] for r in rows if r["pass"] is False]
    if failed:
        raise AssertionError(f"failed: {', '.join(failed)}")


def qlora_steps(device: Any) -> dict[str, Any]:
    """QLoRA through sftune's loading arguments: 4 optimizer steps on a 4-bit tiny model, losses finite."""
    import torch

    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        return {"check": "QLoRA 4 steps", "measured": "bitsandbytes not installed: not run", "pass": "skipped"}
    from transformers import AutoModelForCausalLM

    from sftune import methods
    from sftune.methods import MethodConfig

    method = MethodConfig(name="qlora", r=4)
    with tempfile.TemporaryDirectory() as folder:
        build_model("tiny", torch.float32, "cpu").save_pretrained(folder)
        model = AutoModelForCausalLM.from_pretrained(folder, **methods.load_kwargs(method, device=device))
    model = methods.apply_method(model, method, verbose=False)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    ids = torch.randint(2, 512, (2, 64), device=device)
    losses = []
    for _ in range(4):
        loss = model(input_ids=ids, labels=ids, use_cache=False).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(float(loss))
    ok = all(map(lambda x: x == x and abs(x) != float("inf"), losses)) and losses[-1] < losses[0]
    return {"check": f"QLoRA 4 steps on {device}", "measured": " -> ".join(f"{x:.3f}" for x in losses), "pass": ok}


def sftune_trainer(shape: str, examples: list[dict], out: str, *, steps: int, rows_per_step: int, max_len: int,
                   callbacks: list | None = None, collate_wrap: Callable | None = None):
    """sftune's SFTTrainer at sftune's own defaults for this machine (TrainingArguments from its config:
    fused AdamW and TF32 on CUDA, workers, micro-batches), LoRA r=16 on every linear layer, packed rows (a plain
    list, packed by sftune's bins and collated by sftune's collator: no `datasets` needed on the GPU machine)."""
    from sftune import attention, config, methods, packing
    from sftune.hardware import resolve_precision
    from sftune.training.arguments import training_arguments
    from sftune.training.loss import with_trained_index
    from sftune.training.recipe import weights_dtype
    from sftune.training.trainer import SFTTrainer

    cfg = config.load({"model": {"name": "smollm2-135m-instruct"}, "data": {"train": "random", "max_len": max_len},
                       "method": {"name": "lora"},
                       "train": {"batch_size": rows_per_step, "max_steps": steps, "logging_steps": steps,
                                 "save_steps": None},
                       "output": {"dir": out}})
    precision = resolve_precision("auto")
    device, _ = device_and_dtype()
    model = build_model(shape, weights_dtype(cfg, precision), device,
                        attention=attention.resolve("auto", packing=True))
    model = methods.apply_method(model, cfg.method, verbose=False)
    args = training_arguments(cfg, Path(out), precision=precision, has_eval=False, packing=True)
    args.save_strategy = "no"
    rows = packed_list(examples, max_len)
    collate = with_trained_index(packing.collate_packed)
    return SFTTrainer(model=model, args=args, train_dataset=rows, callbacks=callbacks or [],
                      data_collator=collate_wrap(collate) if collate_wrap else collate)


def packed_list(examples: list[dict[str, list[int]]], max_len: int) -> list[dict[str, list[int]]]:
    """The examples packed into rows of <= max_len tokens by sftune's bins (packing.pack), as
    packing.packed_rows makes them, in a plain list instead of a datasets.Dataset."""
    from sftune.packing import pack

    rows = []
    for members in pack([len(e["input_ids"]) for e in examples], max_len):
        row = {c: [v for k in members for v in examples[k][c]] for c in ("input_ids", "labels")}
        row["position_ids"] = [p for k in members for p in range(len(examples[k]["input_ids"]))]
        rows.append(row)
    return rows


def sync_audit(report: Report, shape: str, steps: int = 4) -> None:
    """Host syncs inside sftune's training steps, as torch.cuda.set_sync_debug_mode reports them."""
    import torch
    from transformers import TrainerCallback

    examples = random_examples(64, SHAPES[shape]["vocab_size"], 16, 256 if shape != "tiny" else 48)
    seen: list[tuple[str, str]] = []

    def record(message, category, filename, lineno, file=None, line=None):
        if "synchroniz" in str(message):
            stack = [f for f in traceback.extract_stack()[:-1] if "site-packages/torch/" not in f.filename]
            where = next((f"{f.filename.split('/src/')[-1]}:{f.lineno} {f.name}" for f in reversed(stack)
                          if "sftune" in f.filename), f"{stack[-1].filename}:{stack[-1].lineno}" if stack else "?")
            seen.append((where, str(message)[:120]))

    class Audit(TrainerCallback):  # the first step (warm-up, allocations) is not audited
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 1 and torch.cuda.is_available():
                torch.cuda.set_sync_debug_mode("warn")

    with tempfile.TemporaryDirectory() as out:
        trainer = sftune_trainer(shape, examples, out, steps=steps, rows_per_step=2, max_len=512, callbacks=[Audit()])
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.showwarning = record
            try:
                trainer.train()
            finally:
                if torch.cuda.is_available():
                    torch.cuda.set_sync_debug_mode(0)
    if not torch.cuda.is_available():
        report.say(f"set_sync_debug_mode is CUDA-only: the {steps} training steps ran, no sync could be observed.")
        return
    counts: dict[str, int] = {}
    for where, _ in seen:
        counts[where] = counts.get(where, 0) + 1
    report.say(f"{len(seen)} synchronizing CUDA operations in steps 2-{steps} (the log at step {steps} syncs by "
               "design).")
    report.table([{"where (innermost sftune frame)": k, "count": v}
                  for k, v in sorted(counts.items(), key=lambda kv: -kv[1])[:15]])


def throughput(report: Report, shape: str, steps: int) -> None:
    """Trained tokens/s, peak memory and MFU of sftune, TRL padding-free and TRL + Liger, same model shape,
    same examples, same LoRA, a synchronized step clock (bench.workload.Meter)."""
    import importlib.util

    import torch

    from bench import systems
    from bench.flops import lora_params, matmul_rate, shape_of, training_flops
    from bench.workload import Meter, Workload, summarize

    device, dtype = device_and_dtype()
    cuda = device.type == "cuda"
    vocab = SHAPES[shape]["vocab_size"]
    longest = systems.MAX_LENGTH
    examples = random_examples(16 * (steps + 1), vocab, 64 if cuda else 16, longest if cuda else 48)
    rate = matmul_rate(seconds=2.0 if cuda else 0.3, size=8192 if cuda else 512, device=device.type,
                       dtype="bfloat16" if cuda and dtype == torch.bfloat16 else "float32")
    report.say(f"matmul peak measured: {rate['flops'] / 1e12:.4g} TFLOP/s ({rate['dtype']}, {rate['shape']})")
    report.say()
    base_shape = shape_of(build_model(shape, torch.float32, "meta"))
    work = Workload(examples=len(examples), batch=16, warmup_steps=1)
    rows = []

    def measure(label: str, make: Callable[[Meter, str], Any]) -> None:
        meter = Meter()
        with tempfile.TemporaryDirectory() as out:
            try:
                trainer = make(meter, out)
                meter.accumulation = trainer.args.gradient_accumulation_steps
                trainer.args.max_steps = steps
                if cuda:
                    torch.cuda.empty_cache()
                    torch.cuda.reset_peak_memory_stats()
                trainer.train()
                synchronize()
            except Exception as err:
                rows.append({"system": label, "trained tokens/s": f"failed: {type(err).__name__}: {str(err)[:150]}"})
                return
            timed = summarize(meter.steps(), work.warmup_steps)
            flops = training_flops(base_shape, lora_params(trainer.model), timed["timed_real"],
                                   timed["timed_trained"], timed["timed_lengths"])
            row = {"system": label, "trained tokens/s": round(timed["trained_per_s"], 1),
                   "s/step": round(timed["s_per_step"], 4), "timed steps": timed["timed_steps"],
                   "MFU": f"{100 * flops / timed['timed_seconds'] / rate['flops']:.1f}%"}
            if cuda:
                row["peak allocated GiB"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
                row["peak reserved GiB"] = round(torch.cuda.max_memory_reserved() / 2**30, 2)
            rows.append(row)
            del trainer

    def sftune_system(meter, out):
        from bench.sftune_runner import rows_per_step

        return sftune_trainer(shape, examples, out, steps=steps, rows_per_step=rows_per_step(examples, work.batch),
                              max_len=longest, callbacks=[meter.callback()], collate_wrap=meter.wrap)

    tokenizer = word_tokenizer(vocab)

    def trl_system(liger: bool):
        def make(meter, out):
            model = build_model(shape, dtype if cuda else torch.float32, device)
            build = systems.trl_liger if liger else systems.trl_best
            return build(work, model, tokenizer, examples, meter, out)
        return make

    measure("sftune (defaults)", sftune_system)
    if importlib.util.find_spec("trl") is None or importlib.util.find_spec("datasets") is None:
        rows.append({"system": "TRL padding-free", "trained tokens/s": "trl or datasets not installed: not run"})
    else:
        measure("TRL padding-free + packing", trl_system(False))
        if importlib.util.find_spec("liger_kernel") is not None and cuda:
            measure("TRL + Liger", trl_system(True))
        else:
            rows.append({"system": "TRL + Liger", "trained tokens/s": "liger_kernel not importable or no CUDA: not run"})
    report.say(f"model: {shape} (random init), LoRA r=16 on all linear layers, {len(examples)} random examples "
               f"of up to {max(len(e['input_ids']) for e in examples)} tokens, 16 per optimizer step, {steps} steps, "
               "the first not timed")
    report.say()
    report.table(rows)


def generation_speed(report: Report, shape: str) -> None:
    """Generated tokens/s of sftune.generation.generate at batch 16 (greedy, KV cache), synchronized clock."""
    import torch

    from sftune import generation

    device, dtype = device_and_dtype()
    cuda = device.type == "cuda"
    vocab = SHAPES[shape]["vocab_size"]
    model = build_model(shape, dtype, device)
    tokenizer = word_tokenizer(vocab)
    prompts = [example["input_ids"] for example in random_examples(16, vocab, 64, 64, seed=3)]
    options = generation.GenerationOptions(max_new_tokens=128 if cuda else 8)
    generation.generate(model, tokenizer, prompts[:2], generation.GenerationOptions(max_new_tokens=2),
                        stop_token_ids=[vocab + 1], batch_size=16)  # warm-up
    synchronize()
    started = time.perf_counter()
    done = generation.generate(model, tokenizer, prompts, options, stop_token_ids=[vocab + 1], batch_size=16)
    synchronize()
    seconds = time.perf_counter() - started
    tokens = sum(c.completion_tokens for c in done)
    report.table([{"batch": 16, "prompt tokens": 64, "new tokens each": options.max_new_tokens,
                   "dtype": str(dtype).removeprefix("torch."), "generated tokens/s": round(tokens / seconds, 1)}])


# ------------------------------------------------------------------------------------------------- carrying

def carried() -> list[tuple[str, str, int, int, bool]]:
    """(distribution, version, bytes of its installed files, bytes compressed as in a wheel, needed) of every
    distribution the check imports that the GPU machine does not have itself (ON_THE_GPU_MACHINE), sftune's own
    source (src/sftune + bench) first; needed is False for what only NOT_NEEDED brings and for OPTIONAL."""
    import zlib

    import importlib.metadata as metadata
    import subprocess

    needed = ("sftune.training.trainer, sftune.training.recipe, sftune.runs, sftune.generation, bench.systems, "
              "bench.flops, bench.gpu_oneshot, peft")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)])}

    def imported(modules: str, absent: tuple[str, ...]) -> list[str]:
        probe = (f"import sys; sys.modules.update(dict.fromkeys({list(absent)!r})); import {modules}; "
                 "print('\\n'.join(sorted({m.split('.')[0] for m, v in sys.modules.items() if v is not None})))")
        return subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env,
                              check=True, cwd=ROOT).stdout.split()

    owners = metadata.packages_distributions()
    required = {d for name in imported(needed, NOT_NEEDED) for d in owners.get(name, [])}
    dists = sorted(required | {d for name in imported(f"{needed}, trl, datasets, bitsandbytes", ())
                               for d in owners.get(name, [])})
    def sizes(paths) -> tuple[int, int]:
        data = [Path(p).read_bytes() for p in paths]
        return sum(map(len, data)), sum(len(zlib.compress(d, 6)) for d in data)

    sources = [p for folder in ("src/sftune", "bench") for p in (ROOT / folder).rglob("*.py")]
    out = [("sftune (src/sftune, bench)", "tree", *sizes(sources), True)]
    for dist_name in dists:
        if dist_name.lower().replace("-", "_") in ON_THE_GPU_MACHINE or dist_name.lower().startswith("nvidia") \
                or dist_name.lower() == "sftune":
            continue
        dist = metadata.distribution(dist_name)
        files = [dist.locate_file(f) for f in dist.files or [] if "__pycache__" not in str(f)]
        out.append((dist_name, dist.version, *sizes(f for f in files if Path(f).is_file()),
                    dist_name in required and dist_name.lower() not in OPTIONAL))
    return out


def carry_check(limit_mib: float = 64.0, rows: list[tuple[str, str, int, int, bool]] | None = None) -> int:
    """Print what the GPU machine needs carried (`rows` as carried() gives them) and whether the needed ones fit
    `limit_mib` as wheels; exit status 1 where they do not."""
    rows = carried() if rows is None else rows
    print(f"what the GPU machine needs carried (its own: {', '.join(sorted(ON_THE_GPU_MACHINE))}), "
          "installed and compressed (about a wheel's size):")
    for name, version, installed, packed, needed in sorted(rows, key=lambda r: -r[3]):
        flag = "" if needed else "  optional (imported when present)"
        print(f"  {name:32} {version:12} {installed / 2**20:8.2f} MiB {packed / 2**20:8.2f} MiB{flag}")
    needed = [r for r in rows if r[4]]
    installed, packed = sum(r[2] for r in needed), sum(r[3] for r in needed)
    fits = packed <= limit_mib * 2**20
    print(f"needed (optional ones left out): {installed / 2**20:.1f} MiB installed, {packed / 2**20:.1f} MiB as "
          f"wheels, against the {limit_mib:.0f} MiB that can be carried: " + ("fits" if fits else "does NOT fit"))
    return 0 if fits else 1


# ----------------------------------------------------------------------------------------------------- main

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="run every section's CPU fallback (no CUDA needed)")
    parser.add_argument("--shape", choices=sorted(SHAPES), default=None,
                        help="model shape of the throughput and generation sections (default: qwen2.5-0.5b, "
                             "tiny under --dry-run)")
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps per system (default 12; 2 dry)")
    parser.add_argument("--carry-check", action="store_true", help="list what the GPU machine needs carried")
    parser.add_argument("--out", type=Path, default=None, help="report folder (default $OUT, else .)")
    args = parser.parse_args(argv)
    if args.carry_check:
        return carry_check()
    if args.dry_run:  # the CPU fallbacks, also on a machine with a GPU
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    import torch

    cuda = torch.cuda.is_available()
    if not cuda and not args.dry_run:
        print("gpu_oneshot: no CUDA GPU here; run with --dry-run for the CPU fallbacks", file=sys.stderr)
        return 2
    dry = args.dry_run or not cuda
    shape = args.shape or ("tiny" if dry else "qwen2.5-0.5b")
    steps = args.steps or (2 if dry else 12)
    out = args.out or Path(os.environ.get("OUT") or ".")
    out.mkdir(parents=True, exist_ok=True)
    sys.path[:0] = [str(ROOT / "src"), str(ROOT)]
    report = Report(dry_run=dry, device="cpu" if dry else torch.cuda.get_device_name(0))
    report.say(f"# sftune GPU one-shot check: {report.device}" + (" (DRY RUN: CPU fallbacks)" if dry else ""))
    report.say()
    report.say(f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; `python -m bench.gpu_oneshot "
               f"{' '.join(argv if argv is not None else sys.argv[1:])}`; shape {shape}, {steps} steps per system")
    report.say()
    scale = 0.5 if dry else 1.0
    run_section(report, "environment", BUDGETS["environment"], environment)
    run_section(report, "correctness", BUDGETS["correctness"] * scale, correctness)
    run_section(report, "sync audit", BUDGETS["sync audit"] * scale, lambda r: sync_audit(r, shape, 3 if dry else 4))
    run_section(report, "throughput", BUDGETS["throughput"] * scale, lambda r: throughput(r, shape, steps))
    run_section(report, "generation", BUDGETS["generation"] * scale, lambda r: generation_speed(r, shape))
    report.say("## summary")
    report.say()
    report.table([{"section": k, "status": v} for k, v in report.statuses.items()])
    path = out / "gpu_oneshot.md"
    path.write_text("\n".join(report.lines) + "\n", encoding="utf-8")
    print(f"wrote {path}")
    return 0 if all(v.startswith("ok") for v in report.statuses.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
