"""`sftune eval`: the same tasks on the base model and on the fine-tuned one, then the report.

    report, paths = compare("runs/demo", tasks=["heldout", "mmlu"], limit=100)

A run folder is loaded with the template it was trained with (runs.load); the base defaults to the
run's base model, so before/after is one call, and answers in the run's template when the run names
one; base="none" evaluates the model alone. One model is in memory at a time. Task names: the benchmarks (sftune.evaluate.benchmarks.TASKS), `heldout` (the
run's own held-out data) and `data:PATH` (any data file sftune reads). Results written to RUN/eval also go
into the run's model card (RUN/README.md, sftune.model_card) as its before/after table.
"""

from __future__ import annotations

import functools
import gc
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Callable

from sftune import model_card, runs
from sftune.errors import UserError
from sftune.evaluate import data_task, report as report_module
from sftune.evaluate.results import TaskResult

Task = Callable[..., TaskResult]  # task(loaded, *, limit=None, console=None, options=None) -> TaskResult


class EvalError(UserError, ValueError):
    """A task name, a model or a task's input is wrong; the message says which and what to do."""


def benchmark_tasks() -> dict[str, Task]:
    """The benchmark tasks by name ({} while sftune.evaluate.benchmarks is not installed)."""
    try:
        from sftune.evaluate.benchmarks import TASKS
    except ImportError:
        return {}
    return dict(TASKS)


def with_harness(name: str, task: Task, harness: str | None) -> Task:
    """Task `name` as `harness` runs it: sftune's own path (None or 'sftune'), or, for the multiple-choice
    benchmarks, lm-evaluation-harness ('lm-eval') on the same local questions. Other tasks have one path."""
    from sftune.evaluate.benchmarks import lm_eval_bridge, multiple_choice

    if name not in multiple_choice.READERS or harness in (None, "sftune"):
        return task
    if harness != "lm-eval":
        raise EvalError(f"unknown harness {harness!r}: use 'sftune' (the default) or 'lm-eval'.")
    return functools.partial(lm_eval_bridge.run, name)


def known_task_names() -> list[str]:
    return sorted(benchmark_tasks()) + ["heldout", "data:PATH"]


def resolve_tasks(names: list[str], model: str, out_dir: Path) -> dict[str, Task]:
    """Task name -> task function. `heldout` is written to OUT/heldout.jsonl from the run's config first."""
    benchmarks = benchmark_tasks()
    tasks: dict[str, Task] = {}
    for name in names:
        if name in benchmarks:
            tasks[name] = benchmarks[name]
        elif name == "heldout":
            if not runs.is_run(model):
                raise EvalError(f"task 'heldout' is the held-out data of a run, and {model} is not a run folder; "
                                "use --tasks data:PATH with a data file instead")
            tasks[name] = _data_task(data_task.heldout_file(model, out_dir), "heldout")
        elif name.startswith("data:"):
            path = Path(name[len("data:"):]).expanduser()
            if not path.exists():
                raise EvalError(f"task {name}: no such file or folder {path}")
            tasks[name] = _data_task(path, name)
        else:
            raise EvalError(f"unknown task {name!r}; known tasks: {', '.join(known_task_names())}")
    if not tasks:
        raise EvalError(f"no task given; pick some of: {', '.join(known_task_names())}")
    return tasks


def _data_task(path: Path, name: str) -> Task:
    def task(loaded, *, limit=None, console=None, options=None) -> TaskResult:
        return data_task.run(loaded, path, name=name, limit=limit, console=console, options=options)
    return task


def evaluate_model(model: str, tasks: dict[str, Task], *, limit: int | None, options: dict[str, Any],
                   console: Any, role: str, template: str | dict | None = None,
                   template_kwargs: dict | None = None) -> list[TaskResult]:
    """Load `model` (a run folder or a model; a plain model with `template` and its switches if given), run every
    task on it,
    free it. `options["harness"]` picks the harness of the multiple-choice benchmarks (with_harness)."""
    tasks = {name: with_harness(name, task, options.get("harness")) for name, task in tasks.items()}
    with console.status(f"Loading the {role} model {model}") if console is not None else nullcontext():
        loaded = runs.load(model, template=template, template_kwargs=template_kwargs)
    results = []
    try:
        for name, task in tasks.items():
            if console is not None:
                console.print(f"[bold]{role}[/bold] · {name}")
            started = time.perf_counter()
            result = task(loaded, limit=limit, console=console, options=options)
            result.details.setdefault("seconds", round(time.perf_counter() - started, 2))
            results.append(result)
    finally:
        del loaded
        _free_memory()
    return results


def compare(model: str, *, base: str | None = None, tasks: list[str], limit: int | None = None,
            out_dir: str | Path | None = None, options: dict[str, Any] | None = None, console: Any = None,
            ) -> tuple[dict[str, Any], dict[str, Path]]:
    """Evaluate `model` (and its base) on `tasks`; write results.json, report.html, chart.png to `out_dir`
    (default RUN/eval, or ./eval for a plain model). base: None = the run's base, "none" = no base."""
    model = str(model)
    if not runs.is_run(model) and Path(model).expanduser().is_dir() and (Path(model) / "config.yaml").is_file():
        raise EvalError(f"{model} has a config.yaml but no model: was its training finished? `sftune train` writes "
                        "the adapter or weights at the end of the run")
    if base is None:
        base = runs.base_model_of(model)
    elif base.lower() == "none":
        base = None
    out = Path(out_dir) if out_dir else (Path(model) / "eval" if runs.is_run(model) else Path("eval"))
    options = dict(options or {})
    refuse_overwrite(model, base, tasks, options.get("data_dir"), out)
    template, kwargs = None, None
    if runs.is_run(model):
        d = runs.run_config(model).data  # both models score perplexity with the run's encoding
        options.setdefault("policy", d.policy)
        options.setdefault("max_len", d.max_len)
        template = d.template  # a run that names a template: its base answers in the same format
        kwargs = d.template_kwargs  # and in the same mode (data.template_kwargs)
    resolved = resolve_tasks(tasks, model, out)
    base_results: list[TaskResult | None] = [None] * len(resolved)
    if base is not None:
        base_results = list(evaluate_model(base, resolved, limit=limit, options=options, console=console, role="base",
                                           template=template if not runs.is_run(base) else None,
                                           template_kwargs=kwargs if not runs.is_run(base) else None))
    tuned = evaluate_model(model, resolved, limit=limit, options=options, console=console,
                           role="fine-tuned" if base else "model")
    report = report_module.build(model, base, list(zip(base_results, tuned)))
    report["limit"], report["options"] = limit, {k: v for k, v in options.items() if v is not None}
    paths = report_module.write(report, out)
    if runs.is_run(model) and out.resolve() == (Path(model) / "eval").resolve():
        model_card.write(model)  # the run's README.md gets the before/after table
    return report, paths


def refuse_overwrite(model: str, base: str | None, tasks: list[str], data_dir: str | None, out: Path) -> None:
    """Before anything is loaded or written: `out` may not be, hold or lie inside what eval reads (the models, the
    data:PATH files, --data-dir). A run's own files count one by one, so its eval/ folder (the default) is fine."""
    from sftune.data import files

    inputs: list[Path] = []
    for name in (model, base):
        folder = Path(name).expanduser() if name else None
        if folder is not None and runs.is_run(folder):
            inputs += [entry for entry in folder.iterdir() if entry.name != "eval"]
        elif folder is not None:
            inputs.append(folder)
    inputs += [Path(task[len("data:"):]).expanduser() for task in tasks if task.startswith("data:")]
    inputs += [Path(data_dir).expanduser()] if data_dir else []
    try:
        files.refuse_overwrite(inputs, folders=True, output=out)
    except files.OverwriteError as err:
        raise EvalError(f"--output: {err}") from None


def _free_memory() -> None:
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:
        pass

