"""The Train tab: a form for the configuration with the resolved YAML beside it (downloadable); start, stop
and resume `sftune train` as a process of its own; live progress, loss and learning-rate curves, tokens/s
and time left, read from the run folder (see jobs.py)."""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

from sftune import config as config_module
from sftune.webui import jobs
from sftune.webui import paths as ui_paths
from sftune.webui.data_tab import split_paths
from sftune.webui.paths import Roots

REFRESH_SECONDS = 2.0
FIELDS_PER_ROW = 4  # the form's columns hold 4 fields of gradio's 160-pixel min_width
AXIS_FORMAT = "~g"  # d3 format of the charts' axis numbers: 10, 9.5, 0.0001 (a one-point axis read "10.000000")


def build_config(roots: Roots, form: dict[str, Any]) -> config_module.Config:
    """The training Config from the form's values (validated by sftune.config, as a YAML file would be), its
    paths inside the roots (see check_paths).

    form: name, model, train (paths text), eval (paths text), template, method, r, alpha, lr, epochs,
    max_steps, batch_size, grad_accum, max_len, packing, precision, logging_steps, save_steps, on_error.
    """
    runs_root = roots.runs
    name = (form.get("name") or "").strip()
    if not re.fullmatch(r"[\w.-]+", name):
        raise config_module.ConfigError(f"run name {name!r}: use letters, digits, '.', '-' or '_' (it names the "
                                        f"folder {Path(runs_root) / 'NAME'})")
    train_paths = split_paths(form.get("train"))
    if not train_paths:
        raise config_module.ConfigError("data: give at least one training file (Data tab: 'Use for training')")
    method: dict[str, Any] = {"name": form.get("method") or "lora"}
    if method["name"] in ("lora", "qlora"):
        method.update(r=int(_given(form, "r", 16)), alpha=float(_given(form, "alpha", 32)))
    raw = {
        "model": {"name": form.get("model") or "smollm2-135m-instruct"},
        "data": {"train": train_paths, "eval": split_paths(form.get("eval")),
                 "max_len": int(_given(form, "max_len", 1024)), "packing": bool(form.get("packing", True)),
                 "on_error": form.get("on_error") or "raise"},
        "method": method,
        "train": {"epochs": float(_given(form, "epochs", 1)), "batch_size": int(_given(form, "batch_size", 4)),
                  "grad_accum": int(_given(form, "grad_accum", 1)), "precision": form.get("precision") or "auto",
                  "logging_steps": int(_given(form, "logging_steps", 5))},
        "output": {"dir": str(Path(runs_root).expanduser().resolve() / name)},
    }
    if form.get("template") and not str(form["template"]).startswith("("):
        raw["data"]["template"] = form["template"]
    for key in ("lr", "max_steps", "save_steps"):
        value = _optional_number(form.get(key), key, float if key == "lr" else int)
        if value is not None:
            raw["train"][key] = value
    if raw["train"].get("save_steps") is not None:  # the best checkpoint is chosen on the evaluations' schedule
        raw["eval"] = {"steps": raw["train"]["save_steps"]}
    return check_paths(config_module.load(raw), roots)


def check_paths(cfg: config_module.Config, roots: Roots) -> config_module.Config:
    """cfg once its model folder and data files are inside the roots and its output.dir inside the runs
    folder (a form, or a run's config.yaml at resume); raises paths.OutsideError otherwise."""
    ui_paths.model_name(cfg.model.name, roots)
    for entry in (*cfg.data.train, *cfg.data.eval):
        found = entry if isinstance(entry, str) else entry.path
        ui_paths.data_paths([found] if isinstance(found, str) else list(found), roots)
    ui_paths.run_folder(cfg.output.dir, roots)
    return cfg


def start_run(form: dict[str, Any], roots: Roots) -> config_module.Config:
    """Start: the form's config trained in a process of its own."""
    cfg = build_config(roots, form)
    jobs.start(cfg)
    return cfg


def resume_run(run: str, roots: Roots) -> int:
    """Resume: a run of the runs folder, its config.yaml checked as a form is (it may have been copied there)."""
    cfg = check_paths(jobs.resume_config(ui_paths.run_folder(run, roots)), roots)
    return jobs.start(cfg, resume=True)


def stop_run(run: str, roots: Roots) -> bool:
    """Stop: a run of the runs folder (its process file names the process group signalled)."""
    return bool(run) and jobs.stop(ui_paths.run_folder(run, roots))


def refresh(run: str | None, roots: Roots) -> tuple:
    """(progress line, the three curves, the end of train.log) of a run of the runs folder; a run outside it
    shows why it is refused instead."""
    if not run:
        return "No run selected: start one, or pick one of the runs folder.", None, None, None, ""
    try:
        folder = ui_paths.run_folder(run, roots)
    except ui_paths.OutsideError as err:
        return f"**refused**: {err}", None, None, None, ""
    return progress_markdown(folder), *curves(folder), jobs.status(folder)["log"]


def _optional_number(value: Any, key: str, kind: type) -> Any:
    """An optional number typed in a text field: empty is None; anything else must read as a number."""
    if value is None or str(value).strip() == "":
        return None
    try:
        return kind(float(value)) if kind is int and float(value).is_integer() else kind(value)
    except ValueError:
        raise config_module.ConfigError(f"train.{key}: {value!r} is not a number") from None


def _given(form: dict[str, Any], key: str, default: Any) -> Any:
    """The form's value, or the default when the field is empty (0 is a value: the config says if it is wrong)."""
    value = form.get(key)
    return default if value is None or value == "" else value


def progress_markdown(run_dir: str | Path) -> str:
    """One block: the run's state, step of steps, loss, learning rate, tokens/s and time left."""
    state = jobs.status(run_dir)
    p = jobs.progress(run_dir)
    parts = [f"**{Path(run_dir).name}**: {state['state']}"]
    if p["max_steps"]:
        parts.append(f"step {p['step']} / {p['max_steps']} ({p['step'] / p['max_steps']:.0%})")
    elif p["step"]:
        parts.append(f"step {p['step']}")
    if p["loss"] is not None:
        parts.append(f"loss {p['loss']:.4f}")
    if p["learning_rate"] is not None:
        parts.append(f"lr {p['learning_rate']:.2e}")
    if p["tokens_per_second"] is not None:
        tps = p["tokens_per_second"]
        parts.append(f"{tps:,.0f} trained tokens/s" if tps >= 10 else f"{tps:.2g} trained tokens/s")
    if p["seconds_left"] is not None and state["state"] == "running":
        parts.append(f"{_duration(p['seconds_left'])} left")
    if state["state"] == "failed":
        parts.append("the process ended without finishing: see the log below")
    return " · ".join(parts)


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


def curves(run_dir: str | Path):
    """(training loss, held-out loss, learning rate) frames of step and value, for gr.LinePlot."""
    import pandas as pd

    p = jobs.progress(run_dir)

    def frame(records: list[dict[str, Any]], key: str, name: str):
        rows = [(r["step"], r.get(key, 0.0)) for r in records]
        # explicit dtypes: the plot reads numbers as a quantitative axis (an empty frame would say 'object')
        return pd.DataFrame(rows, columns=["step", name]).astype({"step": "int64", name: "float64"})

    return (frame(p["train"], "loss", "loss"), frame(p["eval"], "eval_loss", "held-out loss"),
            frame(p["train"], "learning_rate", "learning rate"))


def config_file(text: str, name: str, scratch: Path) -> Path:
    """The form's configuration as the file the browser downloads, `NAME.yaml` in the UI's scratch folder; the one
    written before goes (the form's renderings run one at a time, and gradio copies a file it serves before the
    next one starts), so the folder holds one configuration however long the UI runs."""
    folder = scratch / "config"
    if folder.is_dir():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    path = folder / f"{name}.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def tab(context: dict[str, Any]) -> None:
    """The Train tab's components and events (inside a gr.Tab)."""
    import gradio as gr

    from sftune import models, templates
    from sftune.config import OPTIONS

    root = context["runs_root"]
    roots = context["roots"]
    with gr.Row():
        with gr.Column(scale=3):
            with gr.Row():
                name = gr.Textbox("run-1", label="Run name (folder under the runs folder)", elem_id="train-name")
                model = gr.Dropdown(list(models.EMBEDDED), value=models.DEFAULT_MODEL, allow_custom_value=True,
                                    label="Model (embedded name or folder)", elem_id="train-model")
            with gr.Row():
                train_paths = gr.Textbox(label="Training data (one path per line)", lines=2, elem_id="train-data")
                eval_paths = gr.Textbox(label="Held-out data (empty: 10% of training)", lines=2)
                on_error = gr.Dropdown([("stop the run", "raise"), ("skip them (counted in the log)", "skip")],
                                       value="raise", label="Rejected records", elem_id="train-on-error")
            with gr.Row():
                method = gr.Dropdown(list(OPTIONS), value="lora", label="Method")
                r = gr.Number(16, precision=0, minimum=1, label="LoRA rank")
                alpha = gr.Number(32, minimum=0, label="LoRA alpha")
                template = gr.Dropdown(["(model's own)", *templates.BUILTINS], value="(model's own)", label="Template")
            # At most FIELDS_PER_ROW fields a row: five left the checkbox 80 pixels ("Packir"; gradio gives a
            # Checkbox no min_width) and wrapped "Grad accumulation" onto a line of its own.
            with gr.Row():
                lr = gr.Textbox(label="Learning rate", placeholder="the method's usual", elem_id="train-lr")
                epochs = gr.Number(1, minimum=0, label="Epochs")
                max_steps = gr.Textbox(label="Max steps (overrides epochs)", placeholder="from the epochs",
                                       elem_id="train-max-steps")
                batch_size = gr.Number(4, precision=0, minimum=1, label="Batch size", elem_id="train-batch-size")
            with gr.Row():
                grad_accum = gr.Number(1, precision=0, minimum=1, label="Grad accumulation")
                max_len = gr.Number(1024, precision=0, minimum=8, label="Max length (tokens)", elem_id="train-max-len")
                precision = gr.Dropdown(["auto", "fp32", "bf16", "fp16"], value="auto", label="Precision")
                packing = gr.Checkbox(True, label="Packing", elem_id="train-packing")
            with gr.Row():
                logging_steps = gr.Number(1, precision=0, minimum=1, label="Log every N steps")
                save_steps = gr.Textbox(label="Checkpoint and evaluate every N steps", placeholder="each epoch",
                                        elem_id="train-save-steps")
        with gr.Column(scale=2):
            yaml_view = gr.Code(language="yaml", label="Resolved configuration", elem_id="train-yaml")
            yaml_file = gr.File(label="Download the configuration", interactive=False)
    with gr.Row():
        start_button = gr.Button("Start", variant="primary", elem_id="train-start")
        stop_button = gr.Button("Stop", variant="stop", elem_id="train-stop")
        resume_button = gr.Button("Resume", elem_id="train-resume")
    with gr.Row():
        run_choice = gr.Dropdown(label="Run", choices=[], allow_custom_value=True, scale=4, elem_id="train-run")
        refresh_button = gr.Button("↻ Runs", scale=1)
    status_text = gr.Markdown(elem_id="train-status")
    with gr.Row():
        # one series per plot: gradio 6.31 draws no line in a colour-split plot whose data began empty. Held-out
        # losses are points (a line of one evaluation draws nothing); axis numbers as short as they can be (a
        # one-point axis otherwise reads "10.000000").
        axes = {"x_axis_format": AXIS_FORMAT, "y_axis_format": AXIS_FORMAT, "height": 260}
        loss_plot = gr.LinePlot(x="step", y="loss", label="Training loss per trained token",
                                elem_id="train-loss-plot", **axes)
        eval_plot = gr.ScatterPlot(x="step", y="held-out loss", label="Held-out loss", elem_id="train-eval-plot",
                                   **axes)
        lr_plot = gr.LinePlot(x="step", y="learning rate", label="Learning rate", elem_id="train-lr-plot", **axes)
    with gr.Accordion("Process log (train.log)", open=False):
        log_text = gr.Code(label="train.log", elem_id="train-log")
    timer = gr.Timer(REFRESH_SECONDS)

    fields = [name, model, train_paths, eval_paths, template, method, r, alpha, lr, epochs, max_steps, batch_size,
              grad_accum, max_len, packing, precision, logging_steps, save_steps, on_error]
    keys = ["name", "model", "train", "eval", "template", "method", "r", "alpha", "lr", "epochs", "max_steps",
            "batch_size", "grad_accum", "max_len", "packing", "precision", "logging_steps", "save_steps", "on_error"]

    def form_of(values) -> dict[str, Any]:
        return dict(zip(keys, values))

    def on_change(*values):
        try:
            cfg = build_config(roots, form_of(values))
        except (config_module.ConfigError, ui_paths.OutsideError) as err:
            return f"# not valid yet:\n# " + str(err).replace("\n", "\n# "), None
        text = config_module.to_yaml(cfg)
        return text, str(config_file(text, Path(cfg.output.dir).name, context["scratch"]))

    def choices(selected: str | None = None):
        found = [str(p) for p in jobs.find_runs(root)]
        value = selected if selected in found else (found[0] if found else None)
        return gr.Dropdown(choices=found, value=value)

    def on_start(*values):
        try:
            cfg = start_run(form_of(values), roots)
        except (config_module.ConfigError, RuntimeError, OSError) as err:
            raise gr.Error(str(err)) from None
        gr.Info(f"training started: {cfg.output.dir}")
        return choices(str(Path(cfg.output.dir)))

    def on_stop(run):
        try:
            stopped = stop_run(run, roots)
        except ui_paths.OutsideError as err:
            raise gr.Error(str(err)) from None
        if not stopped:
            raise gr.Error("no run of this UI is training in that folder")
        gr.Info("stopping: complete checkpoints stay; Resume continues from the last one")

    def on_resume(run):
        try:
            resume_run(run, roots)
        except (config_module.ConfigError, RuntimeError, OSError) as err:
            raise gr.Error(str(err)) from None
        gr.Info(f"resuming {run} from its last checkpoint")

    def on_refresh(run):
        return refresh(run, roots)

    # One at a time, in order: two renderings running together could finish out of order and leave the view
    # on an older form (seen under load: a model change's YAML arriving after the max_steps change's).
    form_queue = {"concurrency_limit": 1, "concurrency_id": "train-form"}
    for field in fields:
        field.change(on_change, fields, [yaml_view, yaml_file], show_progress="hidden", **form_queue)
    start_button.click(on_start, fields, run_choice, api_name="start")
    stop_button.click(on_stop, run_choice, None, api_name="stop")
    resume_button.click(on_resume, run_choice, None, api_name="resume")
    refresh_button.click(choices, run_choice, run_choice)
    outputs = [status_text, loss_plot, eval_plot, lr_plot, log_text]
    timer.tick(on_refresh, run_choice, outputs, show_progress="hidden")
    run_choice.change(on_refresh, run_choice, outputs, show_progress="hidden", api_name="progress")
    context["app_load"].append((choices, None, run_choice))
    context["app_load"].append((on_change, fields, [yaml_view, yaml_file], form_queue))
    context["train_paths"] = train_paths
