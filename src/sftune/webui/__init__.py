"""The browser UI (gradio, the `webui` extra): data, training, evaluation, chat and export, calling the same
functions as the CLI. `sftune webui` starts it.

    app.py          the tabs assembled, launched on 127.0.0.1
    jobs.py         training runs as separate processes; progress read from the run folder
    data_tab.py     check / stats / inspect        train_tab.py    config form, start / stop / resume, curves
    evaluate_tab.py before/after report            chat_tab.py     streaming chat beside the base model
    export_tab.py   merge / GGUF / Ollama
"""

from sftune.webui.app import build, launch

__all__ = ["build", "launch"]
