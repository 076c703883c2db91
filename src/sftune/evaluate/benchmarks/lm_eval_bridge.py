"""MMLU-style multiple choice through lm-evaluation-harness (`--harness lm-eval`), for users who trust its numbers.

The same local questions sftune reads are written as JSON files in a temporary folder, with one task YAML per
subject that points at them (`dataset_path: json`, `data_files`) and lm-eval's own multiple-choice settings;
lm-eval's HF model loads the model folder (a run's adapter through `peft=`) and scores them offline.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from sftune import scratch
from sftune.evaluate.benchmarks import multiple_choice as mc
from sftune.evaluate.results import TaskResult


def model_args(loaded: Any, dtype: str = "float32") -> dict[str, Any]:
    """lm-eval's HF model arguments for a run folder or a plain model: the folder, the adapter as `peft`."""
    from sftune import models

    if loaded.run_dir is None:
        return {"pretrained": models.resolve(loaded.name), "dtype": dtype}
    if loaded.is_adapter:
        if loaded.method == "qlora":
            raise ValueError(f"{loaded.run_dir}: a QLoRA run loads its base in 4-bit; the lm-eval bridge does not "
                             "do that. Evaluate it with the sftune harness (leave out --harness).")
        return {"pretrained": models.resolve(loaded.base), "peft": str(loaded.run_dir),
                "tokenizer": str(loaded.run_dir), "dtype": dtype}
    return {"pretrained": str(loaded.run_dir), "dtype": dtype}


def write_tasks(benchmark: str, items: list[mc.Item], folder: Path) -> list[str]:
    """One JSON test file, one JSON dev file and one task YAML per subject; the task names, in subject order."""
    import yaml

    names = []
    subjects: dict[str, list[mc.Item]] = {}
    for item in items:
        subjects.setdefault(item.subject, []).append(item)
    for subject, group in subjects.items():
        name = f"sftune_{benchmark}_{subject}"
        test, dev = folder / f"{name}.test.jsonl", folder / f"{name}.dev.jsonl"
        _write_jsonl(test, [_record(item.question, item.cue) for item in group])
        _write_jsonl(dev, [_record(q, group[0].cue) for q in group[0].shots])
        task = {
            "task": name,
            "dataset_path": "json",
            "dataset_kwargs": {"data_files": {"test": str(test), "dev": str(dev)}},
            "test_split": "test",
            "fewshot_split": "dev",
            "fewshot_config": {"sampler": "first_n"},
            "num_fewshot": len(group[0].shots),
            "output_type": "multiple_choice",
            "description": group[0].header,
            "doc_to_text": "{{text}}",
            "doc_to_choice": list(mc.LETTERS),
            "doc_to_target": "answer",
            "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}],
            "metadata": {"version": 1.0},
        }
        (folder / f"{name}.yaml").write_text(yaml.safe_dump(task, allow_unicode=True), encoding="utf-8")
        names.append(name)
    return names


def _record(q: mc.Question, cue: str) -> dict[str, Any]:
    return {"text": mc.question_block(q, cue), "answer": q.answer}


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def evaluate_items(benchmark: str, items: list[mc.Item], args: dict[str, Any], *, batch_size: int = 16,
                   device: str = "cpu") -> list[dict[str, Any]]:
    """lm-eval's per-item records for `items`, in item order: its context, letter log-likelihoods and choice."""
    try:
        import lm_eval
        from lm_eval.tasks import TaskManager
    except ImportError as err:
        raise ImportError("--harness lm-eval needs lm-evaluation-harness: pip install 'sftune[eval]' "
                          "(or pip install lm-eval==0.4.13).") from err
    with scratch.folder(prefix="sftune-lm-eval-") as tmp:
        names = write_tasks(benchmark, items, tmp)
        out = lm_eval.simple_evaluate(model="hf", model_args=args, tasks=names, batch_size=batch_size, device=device,
                                      task_manager=TaskManager(include_path=str(tmp), include_defaults=False),
                                      log_samples=True, bootstrap_iters=0, verbosity="ERROR")
    records = []
    for name in names:
        for sample in sorted(out["samples"][name], key=lambda s: s["doc_id"]):
            lls = [float(r[0]) for r in sample["filtered_resps"]]
            records.append({"context": sample["arguments"][0][0], "loglikelihoods": lls, "prediction": max(range(len(lls)), key=lls.__getitem__)})
    return records


def run(benchmark: str, loaded: Any, *, limit: int | None = None, console: Any = None,
        options: dict[str, Any] | None = None) -> TaskResult:
    """Accuracy on `benchmark` as lm-eval scores it, on the same local items as sftune's own path."""
    options = options or {}
    started = time.perf_counter()
    items = mc.load_items(benchmark, options, limit)
    if console is not None:
        console.print(f"lm-eval: {len(items)} {benchmark} questions on {loaded.name}")
    records = evaluate_items(benchmark, items, model_args(loaded), batch_size=int(options.get("batch_size", 16)),
                             device=str(loaded.model.device))
    return mc.mc_result(benchmark, items, [r["prediction"] for r in records], started, harness="lm-eval 0.4.13")
