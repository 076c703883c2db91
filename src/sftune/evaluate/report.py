"""The before/after report: results.json, one self-contained report.html and chart.png.

    report = build(model_name, base_name, [(base_result, tuned_result), ...])
    paths = write(report, "runs/demo/eval")

Each task shows base and fine-tuned side by side, one row per metric, with the delta and its paired
bootstrap 95% interval (bootstrap.py); a delta whose interval excludes 0 is marked better / worse,
otherwise noise (n/a for a score without per-item values, such as perplexity). The forgetting section lists the general-ability tasks (TaskResult.general) and
flags those where the fine-tuned model is worse beyond noise. The HTML has no external asset: inline
CSS, the chart embedded as a data: URI, every model output escaped.

A task may score more than one metric: besides its own `metric` / `item_scores`, TaskResult.details
["metrics"] = {name: {"score", "item_scores", "higher_is_better"}} adds one row per extra metric.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

from sftune.evaluate import bootstrap
from sftune.evaluate.results import TaskResult

SAMPLES_SHOWN = 5  # sample generations per task in the HTML page (results.json keeps what the task kept)


def metric_rows(result: TaskResult) -> list[dict[str, Any]]:
    """(metric, score, item scores, higher_is_better) of a task: its own metric first, then details['metrics']."""
    rows = [{"metric": result.metric, "score": result.score, "item_scores": list(result.item_scores),
             "higher_is_better": result.higher_is_better}]
    for name, extra in (result.details.get("metrics") or {}).items():
        rows.append({"metric": name, "score": extra["score"], "item_scores": list(extra.get("item_scores") or []),
                     "higher_is_better": extra.get("higher_is_better", True)})
    return rows


def compare_rows(base: TaskResult | None, tuned: TaskResult, *, seed: int = bootstrap.SEED) -> list[dict[str, Any]]:
    """One row per metric: both scores, the delta, its paired bootstrap interval and the verdict."""
    base_rows = {r["metric"]: r for r in metric_rows(base)} if base is not None else {}
    rows = []
    for row in metric_rows(tuned):
        items = row["item_scores"]
        out = {"metric": row["metric"], "higher_is_better": row["higher_is_better"], "model": row["score"],
               "n": len(items), "model_interval": bootstrap.mean_interval(items, seed=seed) if items else None}
        other = base_rows.get(row["metric"])
        if other is not None:
            interval = None
            if items and len(other["item_scores"]) == len(items):
                interval = bootstrap.paired_delta_interval(other["item_scores"], items, seed=seed)
            elif items and other["item_scores"]:
                out["note"] = (f"no interval: the models were scored on different items ({len(other['item_scores'])}"
                               f" and {len(items)})")
            out.update(base=other["score"], delta=row["score"] - other["score"], delta_interval=interval,
                       verdict=bootstrap.verdict(interval, row["higher_is_better"]) if interval else "n/a")
        rows.append(out)
    return rows


def build(model_name: str, base_name: str | None, pairs: Sequence[tuple[TaskResult | None, TaskResult]], *,
          seed: int = bootstrap.SEED) -> dict[str, Any]:
    """The report as plain data (what results.json holds): per task the rows and both results; forgetting."""
    tasks = []
    for base, tuned in pairs:
        tasks.append({"task": tuned.task, "general": tuned.general, "rows": compare_rows(base, tuned, seed=seed),
                      "base": base.to_dict() if base is not None else None, "model": tuned.to_dict()})
    forgetting = [{"task": t["task"], **row, "forgot": row.get("verdict") == "worse"}
                  for t in tasks if t["general"] for row in t["rows"] if "base" in row]
    return {"model": model_name, "base": base_name, "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "bootstrap": {"resamples": bootstrap.RESAMPLES, "confidence": bootstrap.CONFIDENCE, "seed": seed},
            "tasks": tasks, "forgetting": forgetting}


def write(report: dict[str, Any], out_dir: str | Path) -> dict[str, Path]:
    """results.json, chart.png and report.html (the chart inside it) in `out_dir`."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "results.json", "chart": out / "chart.png", "html": out / "report.html"}
    paths["json"].write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    png = chart_png(report)
    paths["chart"].write_bytes(png)
    paths["html"].write_text(render_html(report, png), encoding="utf-8")
    return paths


# --- the chart ----------------------------------------------------------------------------------


def chart_png(report: dict[str, Any]) -> bytes:
    """One panel per task: its first metric for base and fine-tuned, with 95% bootstrap intervals."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = report["tasks"] or [{"task": "(no task)", "rows": []}]
    columns = min(len(tasks), 3)
    lines = math.ceil(len(tasks) / columns)
    fig, axes = plt.subplots(lines, columns, figsize=(3.6 * columns, 2.8 * lines), squeeze=False)
    for ax in axes.flat[len(tasks):]:
        ax.set_visible(False)
    for ax, task in zip(axes.flat, tasks):
        ax.set_title(task["task"], fontsize=10)
        if not task["rows"]:
            continue
        row = task["rows"][0]
        names, scores, errors, colours = [], [], [], []
        if "base" in row:
            names.append("base")
            scores.append(row["base"])
            errors.append(_error_bar(row["base"], _base_interval(task)))
            colours.append("#9aa5b1")
        names.append("fine-tuned" if report.get("base") else "model")
        scores.append(row["model"])
        errors.append(_error_bar(row["model"], row.get("model_interval")))
        colours.append(_VERDICT_COLOUR.get(row.get("verdict", "noise"), "#3b82f6"))
        ax.bar(names, scores, color=colours, yerr=list(zip(*errors)), capsize=4)
        ax.set_ylabel(row["metric"] + ("" if row["higher_is_better"] else " (lower is better)"), fontsize=8)
        for k, score in enumerate(scores):
            ax.annotate(_fmt(score), (k, score), ha="center", va="bottom", fontsize=8, xytext=(0, 2),
                        textcoords="offset points")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    return buffer.getvalue()


_VERDICT_COLOUR = {"better": "#16a34a", "worse": "#dc2626", "noise": "#3b82f6"}


def _base_interval(task: dict[str, Any]) -> tuple[float, float] | None:
    base = task.get("base")
    return bootstrap.mean_interval(base["item_scores"]) if base and len(base["item_scores"]) > 1 else None


def _error_bar(score: float, interval: Sequence[float] | None) -> tuple[float, float]:
    if not interval:
        return 0.0, 0.0
    return max(score - interval[0], 0.0), max(interval[1] - score, 0.0)


# --- the page -----------------------------------------------------------------------------------


def _fmt(value: float | None) -> str:
    if value is None:
        return "–"
    if abs(value) >= 100:
        return f"{value:.1f}"
    return f"{value:.3f}"


def _interval_text(interval: Sequence[float] | None) -> str:
    return "–" if not interval else f"[{_fmt(interval[0])}, {_fmt(interval[1])}]"


def _delta_text(delta: float) -> str:
    return ("+" if delta > 0 else "") + _fmt(delta)


def _task_table(task: dict[str, Any], with_base: bool) -> str:
    head = ("<tr><th>metric</th><th>base</th><th>fine-tuned</th><th>delta</th><th>95% interval of the delta</th>"
            "<th>verdict</th><th>items</th></tr>" if with_base else
            "<tr><th>metric</th><th>score</th><th>95% interval</th><th>items</th></tr>")
    body = []
    for row in task["rows"]:
        metric = html.escape(row["metric"]) + ("" if row["higher_is_better"] else " <small>(lower is better)</small>")
        if with_base and "base" in row:
            verdict = row["verdict"]
            note = f"<br><small>{html.escape(row['note'])}</small>" if row.get("note") else ""
            body.append(f"<tr class='{verdict}'><td>{metric}</td><td>{_fmt(row['base'])}</td><td>{_fmt(row['model'])}"
                        f"</td><td>{_delta_text(row['delta'])}</td><td>{_interval_text(row['delta_interval'])}{note}"
                        f"</td><td class='verdict'>{verdict}</td><td>{row['n'] or '–'}</td></tr>")
        elif with_base:
            body.append(f"<tr><td>{metric}</td><td>–</td><td>{_fmt(row['model'])}</td><td>–</td><td>–</td>"
                        f"<td>–</td><td>{row['n'] or '–'}</td></tr>")
        else:
            body.append(f"<tr><td>{metric}</td><td>{_fmt(row['model'])}</td>"
                        f"<td>{_interval_text(row['model_interval'])}</td><td>{row['n'] or '–'}</td></tr>")
    return f"<table class='scores'>{head}{''.join(body)}</table>"


def _samples_table(task: dict[str, Any]) -> str:
    tuned = task["model"]["samples"][:SAMPLES_SHOWN]
    base = (task["base"] or {}).get("samples", [])[:SAMPLES_SHOWN]
    if not tuned:
        return ""
    with_base = bool(base)
    head = ("<tr><th>prompt</th><th>reference</th><th>base</th><th>fine-tuned</th></tr>" if with_base else
            "<tr><th>prompt</th><th>reference</th><th>answer</th></tr>")
    rows = []
    for k, sample in enumerate(tuned):
        cells = [f"<td><pre>{html.escape(sample['prompt'])}</pre></td>",
                 f"<td><pre>{html.escape(sample['reference'])}</pre></td>"]
        if with_base:
            other = base[k] if k < len(base) else None
            cells.append(f"<td><pre>{html.escape(other['answer'])}</pre><small>score {_fmt(other['score'])}</small></td>"
                         if other else "<td>–</td>")
        cells.append(f"<td><pre>{html.escape(sample['answer'])}</pre><small>score {_fmt(sample['score'])}</small></td>")
        rows.append(f"<tr>{''.join(cells)}</tr>")
    return (f"<details><summary>Sample generations ({len(tuned)})</summary>"
            f"<table class='samples'>{head}{''.join(rows)}</table></details>")


def _forgetting_section(report: dict[str, Any]) -> str:
    if not report.get("base"):
        return ""
    rows = report["forgetting"]
    if not rows:
        return ("<section id='forgetting'><h2>Forgetting</h2><p>No general-ability task was run (e.g. mmlu, gsm8k, "
                "cmmlu); add one with <code>--tasks</code> to see what the fine-tuning cost.</p></section>")
    lines = []
    for row in rows:
        flag = "forgot" if row["forgot"] else "kept"
        lines.append(f"<tr class='{flag}'><td>{html.escape(row['task'])}</td><td>{html.escape(row['metric'])}</td>"
                     f"<td>{_fmt(row['base'])}</td><td>{_fmt(row['model'])}</td><td>{_delta_text(row['delta'])}</td>"
                     f"<td>{_interval_text(row['delta_interval'])}</td><td class='flag'>{'worse beyond noise' if row['forgot'] else 'within noise or better'}</td></tr>")
    forgot = sum(r["forgot"] for r in rows)
    summary = (f"<p class='alert'>{forgot} general-ability score(s) fell beyond noise.</p>" if forgot else
               "<p>No general-ability score fell beyond noise.</p>")
    return ("<section id='forgetting'><h2>Forgetting</h2>" + summary +
            "<table class='forgetting'><tr><th>task</th><th>metric</th><th>base</th><th>fine-tuned</th><th>delta</th>"
            "<th>95% interval</th><th>flag</th></tr>" + "".join(lines) + "</table></section>")


_CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:2rem auto;max-width:72rem;color:#1f2937;padding:0 1rem}
h1{font-size:1.5rem}h2{font-size:1.2rem;margin-top:2rem;border-bottom:1px solid #e5e7eb}
table{border-collapse:collapse;margin:.5rem 0;width:100%}th,td{border:1px solid #e5e7eb;padding:.3rem .5rem;text-align:left;vertical-align:top}
th{background:#f3f4f6}table.scores td:not(:first-child){font-variant-numeric:tabular-nums}
tr.better .verdict{color:#15803d;font-weight:600}tr.worse .verdict,tr.forgot .flag{color:#b91c1c;font-weight:600}
tr.forgot{background:#fef2f2}.alert{color:#b91c1c;font-weight:600}
table.samples{table-layout:fixed}table.samples th:first-child{width:34%}
pre{white-space:pre-wrap;word-break:break-word;margin:0;font-size:.85rem;max-height:14rem;overflow:auto}
img{max-width:100%}small{color:#6b7280}.meta{color:#6b7280}
"""


def render_html(report: dict[str, Any], png: bytes) -> str:
    """The whole page as one string: no script, no external file."""
    with_base = bool(report.get("base"))
    title = (f"{report['model']} against {report['base']}" if with_base else report["model"])
    sections = []
    for task in report["tasks"]:
        general = " <small>(general ability)</small>" if task["general"] else ""
        sections.append(f"<section class='task'><h2>{html.escape(task['task'])}{general}</h2>"
                        f"{_task_table(task, with_base)}{_samples_table(task)}</section>")
    chart = base64.b64encode(png).decode("ascii")
    b = report["bootstrap"]
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>sftune evaluation: {html.escape(title)}</title>
<style>{_CSS}</style></head><body>
<h1>sftune evaluation: {html.escape(title)}</h1>
<p class="meta">{html.escape(report['created'])} · intervals: paired bootstrap over items, {b['resamples']} resamples,
{b['confidence']:.0%}, seed {b['seed']}. A delta is <b>better</b> or <b>worse</b> only when its whole interval is on
one side of 0; otherwise it is <b>noise</b> (<b>n/a</b>: a score without per-item values, e.g. perplexity).</p>
<img alt="scores per task" src="data:image/png;base64,{chart}">
{_forgetting_section(report)}
{''.join(sections)}
</body></html>
"""


def console_table(report: dict[str, Any]):
    """The report's scores as a rich Table for the terminal (one line per task and metric)."""
    from rich.table import Table

    with_base = bool(report.get("base"))
    table = Table(title=f"{report['model']}" + (f" against {report['base']}" if with_base else ""))
    for column in (["task", "metric", "base", "fine-tuned", "delta (95% interval)", ""] if with_base else
                   ["task", "metric", "score", "95% interval"]):
        table.add_column(column)
    colour = {"better": "green", "worse": "red", "noise": "dim", "n/a": "dim"}
    for task in report["tasks"]:
        for k, row in enumerate(task["rows"]):
            name = task["task"] if k == 0 else ""
            if with_base and "base" in row:
                verdict = row["verdict"]
                table.add_row(name, row["metric"], _fmt(row["base"]), _fmt(row["model"]),
                              f"{_delta_text(row['delta'])} {_interval_text(row['delta_interval'])}",
                              f"[{colour[verdict]}]{verdict}[/{colour[verdict]}]")
            elif with_base:
                table.add_row(name, row["metric"], "–", _fmt(row["model"]), "", "")
            else:
                table.add_row(name, row["metric"], _fmt(row["model"]), _interval_text(row["model_interval"]))
    return table
