"""A child process that measures the peak memory (RSS) of a few training steps, for the estimate's tests.

    python -m tests.estimate_peak CONFIG.json train      # set up, train, print {"maxrss": bytes, ...}
    python -m tests.estimate_peak CONFIG.json baseline   # the same imports, tokenizer and encoded data, no model

The difference of the two is what the model, the method and the training steps take: what
`sftune estimate` predicts. Each run is its own process; its peak is VmHWM, which starts afresh at exec (ru_maxrss would carry the
forking parent's peak over exec: a test suite's large pytest process would hide the run's own).
"""

from __future__ import annotations

import json
import resource
import sys


def peak_rss() -> int:
    """This process's peak resident memory in bytes (VmHWM: the high-water mark of this exec's address space)."""
    with open("/proc/self/status", encoding="utf-8") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024  # kB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # no /proc: Linux reports kB


def main(config_path: str, mode: str) -> None:
    from pathlib import Path

    import torch  # noqa: F401  (the baseline holds the same libraries as the training run)
    import transformers  # noqa: F401
    from rich.console import Console

    from sftune import templates
    from sftune.config import load
    from sftune.hardware import resolve_precision
    from sftune.models import load as load_model
    from sftune.training.arguments import training_arguments
    from sftune.training.data import prepare_data
    from sftune.training.recipe import setup_model, setup_trainer

    cfg = load(json.loads(Path(config_path).read_text(encoding="utf-8")))
    console = Console(quiet=True)
    precision = resolve_precision(cfg.train.precision)
    if mode == "baseline":
        _, tokenizer = load_model(cfg.model.name, tokenizer_only=True)
        model = None
    else:
        model, tokenizer, _ = setup_model(cfg, precision, console)
    template = templates.default_for(tokenizer)
    encoded = prepare_data(cfg, tokenizer, template, console=console)
    out: dict = {}
    if model is not None:
        args = training_arguments(cfg, Path(cfg.output.dir), precision=precision, has_eval=False, packing=True)
        args.save_strategy = "no"
        trainer = setup_trainer(cfg, model, tokenizer, template, encoded, args, packing=True, console=console,
                                callbacks=None)
        rows = trainer.train_dataset
        out["longest_row"] = max(len(r) for r in rows["input_ids"])
        out["rows"] = len(rows)
        trained = sorted((sum(1 for y in r[1:] if y != -100) for r in rows["labels"]), reverse=True)
        out["trained_tokens"] = sum(trained[: args.per_device_train_batch_size])  # the most in one micro-batch
        trainer.train()
        out["steps"] = trainer.state.global_step
    out["maxrss"] = peak_rss()
    print("PEAK " + json.dumps(out))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
