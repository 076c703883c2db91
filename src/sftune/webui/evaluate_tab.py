"""The Evaluate tab: choose tasks, run the before/after comparison of `sftune eval` (evaluate.compare) on a
run and its base model, and show the report it writes (scores, deltas with intervals, forgetting)."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

from sftune.evaluate import compare
from sftune.webui import paths as ui_paths
from sftune.webui.paths import Roots


def evaluate(run: str, tasks: list[str], *, roots: Roots, data_path: str | None = None, limit: int | None = None,
             with_base: bool = True, max_new_tokens: int | None = None) -> tuple[dict[str, Any], dict[str, Path]]:
    """compare.compare on the chosen tasks (plus data:PATH when a data file is given); the report and its files.
    The run must be inside the runs folder (the report is written there), the data file inside the roots."""
    run = str(ui_paths.run_folder(run, roots))
    names = list(tasks or [])
    if data_path and data_path.strip():
        ui_paths.data_paths([data_path.strip()], roots)
        names.append(f"data:{data_path.strip()}")
    options = {"max_new_tokens": int(max_new_tokens)} if max_new_tokens else {}
    return compare.compare(run, base=None if with_base else "none", tasks=names, limit=int(limit) if limit else None,
                           options=options)


def score_rows(report: dict[str, Any]) -> list[list[Any]]:
    """One row per task and metric: base, fine-tuned, delta, 95% interval, verdict (what the HTML report shows)."""
    rows = []
    for task in report["tasks"]:
        for row in task["rows"]:
            interval = row.get("delta_interval")
            rows.append([task["task"], row["metric"], _round(row.get("base")), _round(row["model"]),
                         _round(row.get("delta")),
                         f"[{interval[0]:+.4f}, {interval[1]:+.4f}]" if interval else "", row.get("verdict", "")])
    return rows


def _round(value: Any) -> Any:
    return round(value, 4) if isinstance(value, float) else value


def report_frame(html_path: Path) -> str:
    """The report page inside an iframe (its own styles stay inside it)."""
    page = Path(html_path).read_text(encoding="utf-8")
    return (f"<iframe srcdoc=\"{html.escape(page, quote=True)}\" style=\"width:100%;height:720px;border:0\" "
            "title=\"evaluation report\"></iframe>")


def tab(context: dict[str, Any]) -> None:
    """The Evaluate tab's components and events (inside a gr.Tab)."""
    import gradio as gr

    from sftune import runs
    from sftune.webui import jobs

    with gr.Row():
        run = gr.Dropdown(label="Run", choices=[], allow_custom_value=True, scale=4, elem_id="eval-run")
        refresh = gr.Button("↻ Runs", scale=1)
    with gr.Row():
        tasks = gr.CheckboxGroup(sorted(compare.benchmark_tasks()) + ["heldout"], value=["heldout"],
                                 label="Tasks (benchmarks read their files from --data-dir; heldout = the run's "
                                 "held-out data)")
    with gr.Row():
        data_path = gr.Textbox(label="Also a data file (task data:PATH)", scale=3)
        limit = gr.Number(20, precision=0, minimum=1, label="Items per task (empty: all)")
        max_new_tokens = gr.Number(None, precision=0, label="Max new tokens (empty: each task's own)",
                                   elem_id="eval-max-new-tokens")
        with_base = gr.Checkbox(True, label="Compare with the base model")
    go = gr.Button("Evaluate", variant="primary", elem_id="eval-start")
    scores = gr.Dataframe(headers=["task", "metric", "base", "fine-tuned", "delta", "95% interval", "verdict"],
                          label="Scores", interactive=False, elem_id="eval-scores")
    files = gr.Markdown()
    page = gr.HTML()

    def choices(selected):
        found = [str(p) for p in jobs.find_runs(context["runs_root"]) if runs.is_run(p)]
        return gr.Dropdown(choices=found, value=selected if selected else (found[0] if found else None))

    def on_evaluate(name, chosen, path, count, tokens, base_on):
        if not name:
            raise gr.Error("choose a run first")
        try:
            report, paths = evaluate(name, chosen, roots=context["roots"], data_path=path, limit=count,
                                     with_base=base_on, max_new_tokens=tokens)
        except (compare.EvalError, ValueError, OSError, RuntimeError) as err:
            raise gr.Error(str(err)) from None
        written = ", ".join(f"`{p}`" for p in paths.values())
        return score_rows(report), f"Written: {written}", report_frame(paths["html"])

    go.click(on_evaluate, [run, tasks, data_path, limit, max_new_tokens, with_base], [scores, files, page])
    refresh.click(choices, run, run)
    context["app_load"].append((choices, run, run))
