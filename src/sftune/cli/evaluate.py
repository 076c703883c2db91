"""sftune eval: a run against its base model."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from sftune.cli.common import app, console


def _tasks_help() -> str:
    """The --tasks help, with the metrics each task reports, from the tasks' own tables."""
    from sftune.evaluate.benchmarks import METRICS
    from sftune.evaluate.data_task import METRICS as DATA_METRICS

    benchmarks = ", ".join(f"{name} ({metric})" for name, metric in METRICS.items())
    return (f"Comma-separated tasks. Benchmarks, with the score each reports: {benchmarks}. heldout (the run's own "
            f"held-out data) and data:PATH (any data file) report {', '.join(DATA_METRICS)} (exact_match is the "
            "score; json_match where every reference is a JSON object).")


@app.command("eval")
def eval_command(
    model: str = typer.Argument(..., help="A run folder (evaluated with its training template) or a model."),
    tasks: str = typer.Option(..., "--tasks", "-t", help=_tasks_help()),
    base: Optional[str] = typer.Option(None, "--base", help="The model to compare with (default: the run's base "
                                       "model; 'none' evaluates the model alone)."),
    limit: Optional[int] = typer.Option(None, "--limit", min=1, help="Evaluate the first N items of each task."),
    out: Optional[Path] = typer.Option(None, "--output", "-o", help="Folder for results.json, report.html, "
                                       "chart.png (default: RUN/eval)."),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", help="Folder with the benchmark files (MMLU, "
                                            "C-Eval, CMMLU, GSM8K, TruthfulQA) in their public layouts."),
    judge_url: Optional[str] = typer.Option(None, "--judge-url", help="OpenAI-compatible endpoint judging MT-Bench."),
    judge_model: Optional[str] = typer.Option(None, "--judge-model", help="The judge's model name."),
    harness: Optional[str] = typer.Option(None, "--harness", help="'lm-eval': run the benchmarks through "
                                          "lm-evaluation-harness instead."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", min=1, help="Prompts per generation batch."),
    max_new_tokens: Optional[int] = typer.Option(None, "--max-new-tokens", min=1, help="Longest answer generated."),
    unsafe_exec: bool = typer.Option(False, "--unsafe-exec", help="Run generated code (HumanEval) even where "
                                     "bubblewrap cannot isolate it: it can then read your files and other processes' "
                                     "environment."),
) -> None:
    """Evaluate a fine-tuned run against its base model: scores, deltas with confidence intervals, what it forgot."""
    from sftune.evaluate import compare, report

    options = {"data_dir": str(data_dir) if data_dir else None, "judge_url": judge_url, "judge_model": judge_model,
               "harness": harness, "batch_size": batch_size, "max_new_tokens": max_new_tokens,
               "unsafe_exec": unsafe_exec or None}
    names = [t.strip() for t in tasks.split(",") if t.strip()]
    result, paths = compare.compare(model, base=base, tasks=names, limit=limit, out_dir=out,
                                    options={k: v for k, v in options.items() if v is not None}, console=console)
    console.print(report.console_table(result))
    forgot = [f"{f['task']} {f['metric']}" for f in result["forgetting"] if f["forgot"]]
    if forgot:
        console.print(f"[red]forgetting:[/red] worse beyond noise on {', '.join(forgot)}")
    console.print(f"Report: {paths['html']} (also {paths['json'].name}, {paths['chart'].name})")
# --- sftune chat | generate | export ------------------------------------------------------------
