"""What each speed lever of a bf16 LoRA training step is worth, measured in whole optimizer steps.

    .venv/bin/python -m bench.bench_levers                      # A/B of every lever, 5 repeats
    .venv/bin/python -m bench.bench_levers --rows 2 --repeats 8  # shorter steps on a loaded machine
    .venv/bin/python -m bench.bench_levers --profile            # torch.profiler breakdown of a step

SmolLM2-135M-Instruct in bf16, sftune's default LoRA (r=16, all linear layers, fp32 adapter), the
benchmark's real examples (bench/data) packed padding-free into 512-token rows, one row per forward
pass, 8 examples per optimizer step (AdamW), forward under bf16 autocast as Trainer runs it. The step
is sftune's own (trained_hidden_states, the chunked loss); each lever is switched off by running the
step the way sftune ran it before the lever:

    logits   the model computes the logits of one position (logits_to_keep=1) instead of none
    cast     peft copies each LoRA layer's bf16 input to fp32 (autocast copies it back)
    ce       cross-entropy as logsumexp, gather, then subtract-and-exp over the chunk

--attention times the packed-attention loop alone, bf16 against fp32 for sequences below 300 tokens
(a candidate lever: is the bf16 sdpa kernel slower than fp32 at short lengths on a CPU?).

Variants run interleaved on the same rows, one step each per repeat (machine noise spreads evenly over them), after one
warm-up step each; prints per variant the mean and spread of the step time and its change against "all on".
"""

from __future__ import annotations

import argparse
import statistics
import time
from contextlib import nullcontext
from typing import Callable

import torch

from bench.workload import DATA, MAX_LENGTH, MODEL, encode_reference, read_conversations, set_threads


def old_ce(z: torch.Tensor, y: torch.Tensor, want_grad: bool):
    """Cross-entropy and its hand-written gradient as sftune computed them before the one-log_softmax lever
    (in place of sftune.training.objectives.ce.loss_and_grad): logsumexp, gather, then subtract-and-exp."""
    lse = torch.logsumexp(z, dim=-1)
    loss = lse - z.gather(1, y[:, None]).squeeze(1)
    if not want_grad:
        return loss, None
    g = z.sub_(lse[:, None]).exp_()  # p - onehot(y), written over z
    g[torch.arange(len(y), device=y.device), y] -= 1.0
    return loss, g


def rows_of(encoded: list[dict[str, list[int]]]) -> list[dict[str, torch.Tensor]]:
    """Padding-free packed rows (sftune's packer, best-fit decreasing into MAX_LENGTH)."""
    from sftune.packing import pack

    rows = []
    for bin_ in pack([len(e["input_ids"]) for e in encoded], MAX_LENGTH):
        ids, labels, pos = [], [], []
        for i in bin_:
            ids += encoded[i]["input_ids"]
            labels += encoded[i]["labels"]
            pos += list(range(len(encoded[i]["input_ids"])))
        rows.append({"input_ids": torch.tensor([ids]), "labels": torch.tensor([labels]),
                     "position_ids": torch.tensor([pos])})
    return rows


def setup(examples: int):
    from sftune import attention, methods, models
    from sftune.config import MethodConfig

    model, tokenizer = models.load(MODEL, dtype=torch.bfloat16,
                                   attn_implementation=attention.resolve("auto", packing=True))
    model = methods.apply_method(model, MethodConfig(name="lora"), verbose=False)
    model.train()
    encoded = encode_reference(read_conversations(str(DATA), examples), tokenizer)
    rows = rows_of(encoded)
    per_step = max(1, round(8 * len(rows) / len(encoded)))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    return model, rows, per_step, optimizer


def make_step(model, optimizer, *, logits: bool, cast: bool, ce: bool) -> Callable[[list[dict]], float]:
    """One optimizer step over these rows (one row per forward), the levers on or off; returns seconds."""
    from unittest import mock

    from peft.helpers import disable_input_dtype_casting

    from sftune.training import loss as sft_loss
    from sftune.training.objectives import ce as ce_module

    def hidden_states(batch) -> sft_loss.TrainedStates:
        if logits:
            return sft_loss.trained_hidden_states(model, batch)
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        out = model(**inputs, use_cache=False, output_hidden_states=True, logits_to_keep=1)
        targets = sft_loss.shifted_targets(batch)
        mask = targets != -100
        return sft_loss.TrainedStates(out.hidden_states[-1][:, :-1][mask], targets[mask], None,
                                      model.get_output_embeddings(), sft_loss.logit_rule(model), None)

    def step(rows: list[dict]) -> float:
        started = time.perf_counter()
        count = int(sft_loss.count_trained_tokens(rows))
        old = mock.patch.object(ce_module, "loss_and_grad", old_ce) if not ce else nullcontext()
        with disable_input_dtype_casting(model, active=cast), old:
            for batch in rows:
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    states = hidden_states(batch)
                loss = sft_loss.linear_token_loss(states.hidden, states.head, states.targets, states.weights,
                                                  logit_rule=states.logit_rule) / count
                loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return time.perf_counter() - started

    return step


VARIANTS = {
    "all on": dict(logits=True, cast=True, ce=True),
    "logits off": dict(logits=False, cast=True, ce=True),
    "cast off": dict(logits=True, cast=False, ce=True),
    "ce off": dict(logits=True, cast=True, ce=False),
    "all off": dict(logits=False, cast=False, ce=False),
}


def ab(model, rows, per_step, optimizer, repeats: int, steps: int, variants: dict[str, dict]) -> dict[str, list[float]]:
    """Seconds per optimizer step of each variant, over repeats (interleaved) x steps."""
    times: dict[str, list[float]] = {name: [] for name in variants}
    batches = [rows[i:i + per_step] for i in range(0, len(rows) - per_step + 1, per_step)]
    for name, levers in variants.items():  # warm-up: each variant's first step, left out
        make_step(model, optimizer, **levers)(batches[0])
    for repeat in range(repeats):
        for name, levers in variants.items():  # the same rows for every variant within a repeat
            step = make_step(model, optimizer, **levers)
            for i in range(steps):
                times[name].append(step(batches[(1 + repeat * steps + i) % len(batches)]))
            print(f"repeat {repeat + 1} {name:>12}: {statistics.mean(times[name][-steps:]):.2f} s/step", flush=True)
    return times


def report(times: dict[str, list[float]], tokens_per_step: float) -> str:
    """Mean and spread per variant, and the paired ratio to "all on" (same rows, same repeat): median
    and range over the repeats."""
    base = statistics.mean(times["all on"])
    lines = ["| variant | s / step (mean) | spread (stdev) | tokens/s | vs all on (means) | "
             "vs all on, paired: median (min - max) |", "|---|---|---|---|---|---|"]
    for name, values in times.items():
        mean = statistics.mean(values)
        spread = statistics.stdev(values) if len(values) > 1 else 0.0
        paired = [100 * (v / b - 1) for v, b in zip(values, times["all on"])]
        lines.append(f"| {name} | {mean:.2f} | {spread:.2f} | {tokens_per_step / mean:.0f} | "
                     f"{100 * (mean / base - 1):+.1f}% | {statistics.median(paired):+.1f}% "
                     f"({min(paired):+.1f}% - {max(paired):+.1f}%) |")
    return "\n".join(lines)


def profile(model, rows, per_step, optimizer, top: int = 18) -> str:
    """Share of step time per operator (self CPU time) over two all-on steps, and the mm rate."""
    from torch.profiler import ProfilerActivity, profile as torch_profile

    step = make_step(model, optimizer, logits=True, cast=True, ce=True)
    step(rows[:per_step])
    with torch_profile(activities=[ProfilerActivity.CPU], with_flops=True) as prof:
        for i in (1, 2):
            step(rows[i * per_step:(i + 1) * per_step])
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    lines = ["| operator | self CPU share | calls | GFLOP/s |", "|---|---|---|---|"]
    for e in sorted(events, key=lambda e: -e.self_cpu_time_total)[:top]:
        rate = f"{e.flops / e.self_cpu_time_total / 1e3:.0f}" if e.flops and e.self_cpu_time_total else ""
        lines.append(f"| {e.key} | {100 * e.self_cpu_time_total / total:.1f}% | {e.count} | {rate} |")
    return "\n".join(lines)


def attention_ab(rows, repeats: int, below: int = 300) -> str:
    """The packed-attention loop alone (sftune_varlen, one layer's shapes of SmolLM2: 9 query heads,
    3 key/value heads, head dim 64), forward + backward over every packed row: bf16 as trained, against
    sequences shorter than `below` tokens attended in fp32 (cast in, cast back)."""
    from sftune.attention import sequence_bounds

    heads, kv_heads, dim = 9, 3, 64
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def layer(row, fp32_short: bool) -> float:
        length = row["input_ids"].shape[1]
        q = torch.randn(1, heads, length, dim, dtype=torch.bfloat16, requires_grad=True)
        k = torch.randn(1, kv_heads, length, dim, dtype=torch.bfloat16, requires_grad=True)
        v = torch.randn(1, kv_heads, length, dim, dtype=torch.bfloat16, requires_grad=True)
        started = time.perf_counter()
        pieces = []
        for s, e in sequence_bounds(row["position_ids"][0], length):
            args = (q[:, :, s:e], k[:, :, s:e], v[:, :, s:e])
            if fp32_short and e - s < below:
                pieces.append(sdpa(*(a.float() for a in args), is_causal=True, enable_gqa=True).to(q.dtype))
            else:
                pieces.append(sdpa(*args, is_causal=True, enable_gqa=True))
        torch.cat(pieces, dim=2).sum().backward()
        return time.perf_counter() - started

    times = {False: [], True: []}
    for fp32_short in (False, True):
        layer(rows[0], fp32_short)
    for _ in range(repeats):
        for fp32_short in (False, True):
            times[fp32_short].append(sum(layer(row, fp32_short) for row in rows))
    lengths = [e - s for row in rows for s, e in sequence_bounds(row["position_ids"][0], row["input_ids"].shape[1])]
    bf16, fp32 = statistics.mean(times[False]), statistics.mean(times[True])
    return (f"{len(lengths)} sequences in {len(rows)} rows, median length {statistics.median(lengths):.0f}, "
            f"{sum(n < below for n in lengths)} below {below}\n"
            f"| attention, one layer, all rows, fwd + bwd | ms (mean) | spread (stdev) |\n|---|---|---|\n"
            f"| bf16 (as trained) | {1e3 * bf16:.1f} | {1e3 * statistics.stdev(times[False]):.1f} |\n"
            f"| fp32 below {below} tokens | {1e3 * fp32:.1f} | {1e3 * statistics.stdev(times[True]):.1f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=1, help="timed optimizer steps per variant and repeat")
    parser.add_argument("--rows", type=int, default=None,
                        help="packed rows per optimizer step (default: those that hold about 8 examples)")
    parser.add_argument("--examples", type=int, default=64)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: every core); 1 on a machine loaded by other work, where "
                             "threads waiting on each other at every operator make the timings erratic")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--attention", action="store_true", help="the packed-attention loop alone: bf16 vs fp32")
    parser.add_argument("--only", default=None, help="comma-separated variants to run")
    args = parser.parse_args()
    cores = set_threads()
    if args.threads:
        torch.set_num_threads(cores := args.threads)
    if args.attention:
        from sftune import models

        _, tokenizer = models.load(MODEL, tokenizer_only=True)
        print(attention_ab(rows_of(encode_reference(read_conversations(str(DATA), args.examples), tokenizer)),
                           args.repeats))
        return
    model, rows, per_step, optimizer = setup(args.examples)
    per_step = args.rows or per_step
    tokens = sum(r["input_ids"].shape[1] for r in rows) / len(rows) * per_step
    print(f"{cores} threads, {len(rows)} packed rows, {per_step} rows (~{tokens:.0f} tokens) per optimizer step")
    if args.profile:
        print(profile(model, rows, per_step, optimizer))
        return
    variants = {k: v for k, v in VARIANTS.items() if args.only is None or k in args.only.split(",") or k == "all on"}
    print(report(ab(model, rows, per_step, optimizer, args.repeats, args.steps, variants), tokens))


if __name__ == "__main__":
    main()
