"""The web UI assembled: one tab per stage of the path (Data, Train, Evaluate, Chat, Export), each calling
the library's functions; launched on 127.0.0.1 unless the user asks to expose it. Runs offline: no analytics,
no web fonts, no share tunnel."""

from __future__ import annotations

import atexit
import contextlib
import os
from pathlib import Path
from typing import Any, Iterable

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # before gradio is imported anywhere


def build(runs_root: str | Path = "runs", data_roots: Iterable[str | Path] = ()):
    """The gr.Blocks app; `runs_root` is the folder where runs are started and found, `data_roots` the folders
    whose files it may read besides (none: the working directory; see paths.py)."""
    import gradio as gr

    from sftune.webui import chat_tab, data_tab, evaluate_tab, export_tab, train_tab
    from sftune.webui.paths import Roots

    roots = Roots.of(runs_root, data_roots)
    root = roots.runs
    context: dict[str, Any] = {"runs_root": root, "roots": roots, "uploads": root / "_uploads", "app_load": [],
                               "scratch": scratch_folder(root)}
    with gr.Blocks(title="sftune", analytics_enabled=False) as app:
        data_text = ", ".join(f"`{d}`" for d in roots.data)
        gr.Markdown(f"## sftune &nbsp; <small>runs folder: `{root}`; data read from: {data_text}</small>")
        with gr.Tabs() as tabs:
            with gr.Tab("Data", id="data", elem_id="tab-data"):
                data_tab.tab(context)
            with gr.Tab("Train", id="train", elem_id="tab-train"):
                train_tab.tab(context)
            with gr.Tab("Evaluate", id="evaluate", elem_id="tab-evaluate"):
                evaluate_tab.tab(context)
            with gr.Tab("Chat", id="chat", elem_id="tab-chat"):
                chat_tab.tab(context)
            with gr.Tab("Export", id="export", elem_id="tab-export"):
                export_tab.tab(context)
        context["use_for_training"].click(lambda text: (text, gr.Tabs(selected="train")), context["data_paths"],
                                          [context["train_paths"], tabs])
        for function, inputs, outputs, *options in context["app_load"]:  # options: the event's keywords
            app.load(function, inputs, outputs, **(options[0] if options else {}))
    return app


def scratch_folder(runs: Path) -> Path:
    """The UI's folder for the files it hands the browser (the configuration to download), in the runs folder:
    removed when the process ends, and a killed UI's at the next start (sftune.scratch)."""
    from sftune import scratch

    folders = contextlib.ExitStack()
    path = folders.enter_context(scratch.folder(runs, prefix=".webui-"))
    atexit.register(folders.close)
    return path


def theme():
    """Gradio's default look with the system's fonts (the default theme fetches web fonts: offline here)."""
    import gradio as gr

    system = ["ui-sans-serif", "system-ui", "-apple-system", "Segoe UI", "Roboto", "sans-serif"]
    return gr.themes.Default(font=system, font_mono=["ui-monospace", "SFMono-Regular", "Menlo", "monospace"])


def launch(runs_root: str | Path = "runs", *, data_roots: Iterable[str | Path] = (), host: str = "127.0.0.1",
           port: int | None = None, auth: tuple[str, str] | None = None, block: bool = True):
    """Serve the UI; returns (app, local url) when block=False (tests, scripts)."""
    from sftune.webui.data_tab import CSS

    root = Path(runs_root).expanduser().resolve()
    root.mkdir(parents=True, exist_ok=True)
    app = build(root, data_roots)
    app.queue(default_concurrency_limit=4)
    _, url, _ = app.launch(server_name=host, server_port=port, auth=auth, share=False, prevent_thread_lock=True,
                           inbrowser=False, quiet=True, show_error=True, theme=theme(), css=CSS,
                           allowed_paths=[str(root)], footer_links=["api", "settings"], ssr_mode=False)
    if block:
        app.block_thread()
    return app, url
