"""The run folder's README.md: a model card for a reader and for the Hugging Face Hub.

Front matter through huggingface_hub's ModelCardData (base_model, library_name, license, datasets,
tags), then the data, the method and its hyperparameters, the results, the before/after table of
`sftune eval` (RUN/eval/results.json) when there is one, and the library versions. Everything is
read from the run folder, so the card is written at the end of training (over peft's empty
template) and again by `sftune eval` when it writes the run's results.
"""

from __future__ import annotations

import importlib.metadata
import json
from pathlib import Path
from typing import Any

from sftune import models
from sftune.data import hub

LIBRARIES = ("sftune", "torch", "transformers", "peft", "datasets", "accelerate", "huggingface_hub")
# The embedded models' licences as the Hub's license metadata names them.
HUB_LICENSES = {"Apache-2.0": "apache-2.0", "Gemma terms of use": "gemma"}
HYPERPARAMETERS = ("lr", "epochs", "max_steps", "batch_size", "grad_accum", "scheduler", "warmup", "weight_decay",
                   "max_grad_norm", "optim", "loss", "seed")


def write(run_dir: str | Path) -> Path:
    """Write RUN/README.md from the run folder's config.yaml, summary.json and eval/results.json."""
    from huggingface_hub import ModelCard, ModelCardData

    from sftune import config as config_module
    from sftune.config import OPTIONS
    from sftune.methods import DEFAULT_LEARNING_RATE

    run = Path(run_dir)
    cfg = config_module.load(run / "config.yaml")
    summary = _json(run / "summary.json") or {}
    results = _json(run / "eval" / "results.json")
    adapter = (run / "adapter_config.json").is_file()
    base_model, license = _base_model(cfg.model.name)
    datasets = sorted({hub.parse(path)[0] for path in _paths(cfg.data.train + cfg.data.eval) if hub.is_hub(path)})
    data = ModelCardData(
        base_model=base_model, library_name="peft" if adapter else "transformers", license=license,
        datasets=datasets or None, pipeline_tag="text-generation",
        tags=["sftune", "sft", cfg.method.name, *(["preference", cfg.preference.loss] if cfg.stage == "preference" else [])],
    )
    method = cfg.method.model_dump()
    options = {key: method[key] for key in OPTIONS[cfg.method.name]}
    train = cfg.train.model_dump()
    if train["lr"] is None:
        train["lr"] = f"{DEFAULT_LEARNING_RATE[cfg.method.name]:g} (the method's default)"
    sections = [
        f"# {run.resolve().name}\n\n{cfg.method.name} fine-tuning of `{cfg.model.name}` with sftune"
        f"{' (preference stage: ' + cfg.preference.loss + ')' if cfg.stage == 'preference' else ''}.",
        _data_section(cfg, summary),
        "## Method and hyperparameters\n\n" + _table(
            ["setting", "value"],
            [["method", cfg.method.name], *([f"method.{k}", v] for k, v in options.items()),
             *([f"train.{k}", train[k]] for k in HYPERPARAMETERS),
             *([k, summary[k]] for k in ("precision", "packing", "trainable_parameters", "total_parameters")
               if k in summary),
             ["data.max_len", cfg.data.max_len], ["data.template", cfg.data.template or "the model's own"]]),
        _results_section(summary, _last_loss(run / "metrics.jsonl")),
    ]
    if results is not None:
        sections.append(_before_after_section(results))
    sections.append(_usage_section(run, cfg.output.push_to_hub, adapter))
    versions = _recorded_versions(run) or _installed_versions()
    sections.append("## Libraries\n\n" + _table(["library", "version"], [[k, v] for k, v in versions.items()]))
    card = ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n\n".join(sections) + "\n")
    path = run / "README.md"
    card.save(path)
    return path


def _base_model(name: str) -> tuple[str | None, str | None]:
    """(hub id, hub licence id) of the base model, where they are known: an embedded model's source, a hub id."""
    spec = models.EMBEDDED.get(name)
    if spec is not None:
        return spec.hub_id, HUB_LICENSES.get(spec.license)
    if Path(name).expanduser().exists() or name.count("/") != 1:
        return None, None  # a local folder: no hub id to name
    return name, None


def _paths(entries: list[Any]) -> list[str]:
    paths: list[str] = []
    for entry in entries:
        path = entry if isinstance(entry, str) else entry.path
        paths.extend([path] if isinstance(path, str) else path)
    return paths


def _data_section(cfg: Any, summary: dict[str, Any]) -> str:
    d = cfg.data
    held_out = ", ".join(f"`{p}`" for p in _paths(d.eval)) if d.eval else f"{d.val_ratio:.0%} of the training data"
    rows = [["train", ", ".join(f"`{p}`" for p in _paths(d.train)), summary.get("train_examples", "")],
            ["held out", held_out, summary.get("eval_examples", "")]]
    skipped = summary.get("skipped") or {}
    note = ""
    if any(skipped.values()):
        note = (f"\n\nSkipped after encoding (no trained token left, or too long): {skipped.get('train', 0)} training "
                f"and {skipped.get('eval', 0)} held-out records.")
    return "## Data\n\n" + _table(["", "source", "examples"], rows) + note


def _results_section(summary: dict[str, Any], last_loss: float | None) -> str:
    rows = [["last logged training loss", _number(last_loss)]] if last_loss is not None else []
    rows += [[label, _number(summary[key])] for key, label in (
        ("train_loss", "training loss, mean over the run"), ("eval_loss", "held-out loss of the saved model"),
        ("steps", "optimizer steps"), ("epochs", "epochs"), ("trained_tokens", "trained tokens"),
        ("train_seconds", "training time (s)"), ("device", "device")) if summary.get(key) is not None]
    rows += [[key, _number(value)] for key, value in summary.items()
             if key.startswith("eval_") and key != "eval_loss" and key != "eval_examples" and isinstance(value, float)]
    return "## Results\n\n" + (_table(["", "value"], rows) if rows else "No training summary was written.")


def _before_after_section(results: dict[str, Any]) -> str:
    with_base = bool(results.get("base"))
    rows = []
    for task in results.get("tasks", []):
        for row in task["rows"]:
            interval = row.get("delta_interval")
            rows.append([task["task"], row["metric"], _number(row.get("base")) if with_base else "",
                         _number(row["model"]), "" if row.get("delta") is None else f"{row['delta']:+.4g}",
                         "" if not interval else f"[{interval[0]:+.4g}, {interval[1]:+.4g}]", row.get("verdict", "")])
    title = f"against `{results['base']}`" if with_base else "(no base model)"
    return (f"## Before and after\n\n`sftune eval` {title}, {results.get('created', '')}; deltas with paired "
            "bootstrap 95% intervals.\n\n" + _table(["task", "metric", "base", "fine-tuned", "delta", "95% interval",
                                                     "verdict"], rows))


def _usage_section(run: Path, repo: str | None, adapter: bool) -> str:
    name = repr(repo or str(run))
    loader = (f"from peft import AutoPeftModelForCausalLM\nmodel = AutoPeftModelForCausalLM.from_pretrained({name})"
              if adapter else "from transformers import AutoModelForCausalLM\n"
              f"model = AutoModelForCausalLM.from_pretrained({name})")
    return (f"## Use\n\n```\nsftune chat {run}\nsftune serve {run}\nsftune export {run}\n```\n\n"
            "The tokenizer holds the chat template the model was trained with:\n\n```python\n"
            f"from transformers import AutoTokenizer\n{loader}\ntokenizer = AutoTokenizer.from_pretrained({name})\n```")


def _recorded_versions(run: Path) -> dict[str, str] | None:
    """The versions the run trained with, from its environment.json (`sftune eval` may rewrite the card later,
    under other versions); None for a run folder written before sftune recorded them."""
    try:
        recorded = json.loads((run / "environment.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    packages = recorded.get("packages", {})
    return {"sftune": recorded.get("sftune"), **{k: packages[k] for k in LIBRARIES if k in packages}}


def _installed_versions() -> dict[str, str]:
    versions = {}
    for name in LIBRARIES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def _table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell).replace("|", "\\|").replace("\n", " ") for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def _number(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)


def _last_loss(metrics: Path) -> float | None:
    if not metrics.is_file():
        return None
    records = [json.loads(line) for line in metrics.read_text(encoding="utf-8").splitlines() if line.strip()]
    return next((r["loss"] for r in reversed(records) if "loss" in r), None)


def _json(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
