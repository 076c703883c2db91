"""The Export tab: a run merged into a standalone model, optionally GGUF and an Ollama Modelfile, with the
parity check (sftune.export); the output folder and what was written are shown."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sftune.webui import paths as ui_paths
from sftune.webui.paths import Roots


def export_run(run: str, out_dir: str | None, *, roots: Roots, gguf: str | None = None, ollama: bool = False,
               check: bool = False, dtype: str = "float32") -> tuple[Path, dict[str, Any]]:
    """sftune.export.export into `out_dir` (default: RUN/export); the folder and the export summary. The run
    must be inside the runs folder, the output folder inside the runs folder or a data root."""
    from sftune.export import export

    run = str(ui_paths.run_folder(run, roots))
    out = Path(out_dir).expanduser() if out_dir and out_dir.strip() else Path(run) / "export"
    ui_paths.allowed(out, roots, uploads=False)
    summary = export(run, out, gguf=gguf or None, ollama=ollama, check=check, dtype=dtype)
    return out, summary


def summary_markdown(out: Path, summary: dict[str, Any]) -> str:
    merged = "LoRA merged into the base" if summary.get("merged") else "weights saved as trained"
    lines = [f"**Output folder:** `{out.resolve()}`", f"{merged} ({summary.get('dtype')}), template "
             f"{summary.get('template')}, stops at {', '.join(summary.get('stop_tokens', []))}"]
    if summary.get("note"):
        lines.append(f"note: {summary['note']}")
    if summary.get("gguf"):
        g = summary["gguf"]
        lines.append(f"GGUF: `{g['file']}` ({g['architecture']} {g['outtype']}, {g['bytes'] / 2**20:.1f} MiB)")
    if summary.get("ollama"):
        lines.append(f"Ollama: `{summary['ollama']}`: run `ollama create NAME -f Modelfile` in that folder")
    if summary.get("check"):
        verdict = "answers as the run does" if summary["check"]["ok"] else "**differences found**"
        lines.append(f"Parity check: {verdict} (`{summary['check']['report']}`)")
    lines.append("Files: " + ", ".join(f"`{p.name}`" for p in sorted(out.iterdir())))
    return "  \n".join(lines)


def tab(context: dict[str, Any]) -> None:
    """The Export tab's components and events (inside a gr.Tab)."""
    import gradio as gr

    from sftune import runs
    from sftune.webui import jobs

    with gr.Row():
        run = gr.Dropdown(label="Run", choices=[], allow_custom_value=True, scale=4, elem_id="export-run")
        refresh = gr.Button("↻ Runs", scale=1)
    with gr.Row():
        out = gr.Textbox(label="Output folder (empty: RUN/export)", scale=3, elem_id="export-out")
        dtype = gr.Dropdown(["float32", "bfloat16", "float16"], value="float32", label="Merged weights")
        gguf = gr.Dropdown(["(none)", "f16", "q8_0", "f32"], value="(none)", label="GGUF")
        ollama = gr.Checkbox(False, label="Ollama Modelfile")
        check = gr.Checkbox(False, label="Parity check")
    go = gr.Button("Export", variant="primary", elem_id="export-start")
    result = gr.Markdown(elem_id="export-result")

    def choices(selected):
        found = [str(p) for p in jobs.find_runs(context["runs_root"]) if runs.is_run(p)]
        return gr.Dropdown(choices=found, value=selected if selected else (found[0] if found else None))

    def on_export(name, folder, weights, gguf_type, with_ollama, with_check):
        if not name:
            raise gr.Error("choose a run first")
        try:
            path, summary = export_run(name, folder, roots=context["roots"],
                                       gguf=None if gguf_type.startswith("(") else gguf_type,
                                       ollama=with_ollama, check=with_check, dtype=weights)
        except (ValueError, OSError, RuntimeError) as err:
            raise gr.Error(str(err)) from None
        return summary_markdown(path, summary)

    go.click(on_export, [run, out, dtype, gguf, ollama, check], result)
    refresh.click(choices, run, run)
    context["app_load"].append((choices, run, run))
