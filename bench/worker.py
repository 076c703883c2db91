"""Run one system once, in this process, and write its measurements as JSON.

The driver (`bench/run.py`) starts one of these per system and repeat, so that peak memory is
per system and nothing one system loaded or allocated helps or hurts the next.

    python -m bench.worker trl_best --examples 64 --batch 8 --json out.json
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
import warnings

from bench.workload import (Meter, Workload, encode_reference, read_conversations, set_threads, settings_of,
                            summarize)


def run(name: str, work: Workload) -> dict:
    import torch

    from bench import flops
    from bench.systems import SYSTEMS
    from sftune import models

    threads = set_threads()
    torch.manual_seed(work.seed)
    _, tokenizer = models.load(work.model, tokenizer_only=True)
    shape = flops.shape_of(_meta_model(work.model))
    encoded = encode_reference(read_conversations(work.data, work.examples), tokenizer)
    meter = Meter()
    with tempfile.TemporaryDirectory(prefix=f"bench-{name}-") as out:
        if name == "sftune":
            from bench.sftune_runner import train_sftune

            del tokenizer  # sftune loads its own
            steps, lora, settings = train_sftune(work, encoded, meter, out)
        else:
            model, tokenizer = models.load(work.model)
            if torch.cuda.is_available():
                model.to("cuda")
            build = SYSTEMS[name][1]
            trainer = build(work, model, tokenizer, encoded, meter, out)
            meter.accumulation = trainer.args.gradient_accumulation_steps
            lora = flops.lora_params(trainer.model)
            settings = settings_of(trainer)
            trainer.train()
            steps = meter.steps()
    result = summarize(steps, work.warmup_steps)
    result["flops"] = flops.training_flops(
        shape, lora, result.pop("timed_real"), result["timed_trained"], result.pop("timed_lengths")
    )
    result["flops_per_s"] = result["flops"] / result["timed_seconds"]
    result.update(
        system=name,
        expected_trained=sum(sum(1 for x in e["labels"][1:] if x != -100) for e in encoded),
        examples=work.examples,
        batch=work.batch,
        lora_params=lora,
        settings=settings,
        threads=threads,
        peak_rss_self=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        peak_gpu=torch.cuda.max_memory_allocated() if torch.cuda.is_available() else None,
        finished=time.time(),
    )
    return result


def _meta_model(name: str):
    """The model's structure without its weights (for the FLOP count), so no memory is spent on it."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from sftune import models

    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(models.resolve(name)))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("system")
    parser.add_argument("--examples", type=int, default=Workload.examples)
    parser.add_argument("--batch", type=int, default=Workload.batch)
    parser.add_argument("--warmup-steps", type=int, default=Workload.warmup_steps)
    parser.add_argument("--model", default=Workload.model)
    parser.add_argument("--data", default=Workload.data)
    parser.add_argument("--json", required=True, help="where to write the measurements")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    work = Workload(args.examples, args.batch, args.warmup_steps, args.model, args.data)
    result = run(args.system, work)
    with open(args.json, "w", encoding="utf-8") as f:
        json.dump(result, f)
    print(f"{args.system}: {result['trained_per_s']:.1f} trained tokens/s", file=sys.stderr)


if __name__ == "__main__":
    main()
