"""The Data tab: pick or upload files; the detected format and the validation report with every rejected
record and its reason (`sftune data check`), statistics with the length histograms (`data stats`), and
records rendered in a template with trained tokens coloured (`data inspect`). Image-text data shows its
image count and a gallery of its first images; inspected with a vision-language model, each record shows
its images and each image's tokens as one masked run."""

from __future__ import annotations

import html
import io
import json
import shutil
from pathlib import Path
from typing import Any

from sftune import scratch
from sftune.webui import paths as ui_paths
from sftune.webui.paths import Roots

REJECTED_SHOWN = 200  # rows of the rejected-records table; the quarantine file keeps them all
GALLERY_SHOWN = 24  # images in the check's gallery (the first ones of the valid records)
THUMBNAIL = 160  # pixels of a thumbnail's longer side
GALLERY_COLUMNS = 8


def split_paths(text: str | None) -> list[str]:
    """Paths typed one per line or separated by commas."""
    return [p.strip() for line in (text or "").splitlines() for p in line.split(",") if p.strip()]


def keep_uploads(files: list[Any] | None, uploads_dir: str | Path, *, roots: Roots) -> list[str]:
    """Copy uploaded files into the UI's uploads folder (a browser upload lives in a temporary folder; a run
    that trains on it must find it later) and return their paths. An upload is a file of gradio's upload
    folder or of the roots."""
    kept = []
    folder = Path(uploads_dir)
    folder.mkdir(parents=True, exist_ok=True)
    for item in files or []:
        source = ui_paths.allowed(item if isinstance(item, (str, Path)) else item.name, roots)
        target = folder / source.name
        if source.resolve() != target.resolve():
            shutil.copyfile(source, target)
        kept.append(str(target))
    return kept


def check_files(paths: list[str], format: str | None = None, *, roots: Roots) -> dict[str, Any]:
    """Validate every record (`sftune data check`): the report's counts, each file's detected format, and
    the rejected records with their reasons (read back from the quarantine file)."""
    from sftune.data import REASONS, check

    if not paths:
        raise ValueError("no data file given: upload a file or type its path")
    ui_paths.data_paths(paths, roots)
    with scratch.folder(prefix="sftune-webui-") as folder:  # a killed UI's: swept at the next check
        quarantine = Path(folder) / "rejected.jsonl"
        report = check(paths, format=format or None, quarantine=quarantine, syntax="cli")
        rejected = []
        if quarantine.is_file():
            with quarantine.open(encoding="utf-8") as f:
                for line in f:
                    if len(rejected) >= REJECTED_SHOWN:
                        break
                    item = json.loads(line)
                    rejected.append([" ".join(p for p in (item.get("source"), item.get("location")) if p),
                                     item["reason"], item["error"]])
    return {
        "total": report.total, "valid": report.valid, "invalid": report.invalid,
        "validation_rate": report.validation_rate,
        "files": [[source, counts["format"] or "(none detected)", counts["total"], counts["valid"], counts["invalid"]]
                  for source, counts in report.files.items()],
        "reasons": [[reason, count, REASONS.get(reason, "")] for reason, count in report.reasons.most_common()],
        "rejected": rejected,
        "notes": list(report.notes),
        "images": report.images,
        "gallery": gallery(paths, format, roots=roots) if report.images else [],
    }


def gallery(paths: list[str], format: str | None = None, limit: int = GALLERY_SHOWN, *,
            roots: Roots) -> list[tuple[Any, str]]:
    """(thumbnail, caption "train.jsonl line N, image k") of the first `limit` images of the valid records
    (the caption names the file without its folder: a thumbnail is small); each image inside the roots."""
    from sftune.data import read
    from sftune.data.errors import where as where_from

    shown: list[tuple[Any, str]] = []
    for k, conversation in enumerate(read(ui_paths.data_paths(paths, roots), format=format or None, on_error="skip",
                                          syntax="cli")):
        for i, ref in enumerate(conversation.images):
            if len(shown) >= limit:
                return shown
            meta = {**conversation.meta, "source": Path(conversation.meta.get("source") or "").name}
            picture = thumbnail(ui_paths.image_ref(ref, roots))
            shown.append((picture, f"{where_from(meta, f'record {k}')}, image {i + 1}"))
    return shown


def thumbnail(ref: str, size: int = THUMBNAIL) -> Any:
    """An image (path or data URL) as a PIL image no larger than size x size."""
    from sftune.data import images as image_refs

    image = image_refs.load(ref)
    image.thumbnail((size, size))
    return image


def data_url(image: Any) -> str:
    """A PIL image as a PNG data URL (an <img> the inspect HTML carries with it)."""
    import base64
    import io

    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def check_summary(result: dict[str, Any]) -> str:
    """The report's counts as a line of markdown."""
    text = (f"**{result['total']:,} records**: {result['valid']:,} valid, {result['invalid']:,} rejected "
            f"(validation rate {result['validation_rate']:.1%})")
    if not result["total"]:
        text += "  \n**No records were read**: the files are empty or hold only blank lines."
    if result.get("images"):
        text += f"  \n**{result['images']:,} images** in the valid records"
        if result["images"] > len(result["gallery"]):
            text += f" (the gallery shows the first {len(result['gallery'])})"
    if result["invalid"] > len(result["rejected"]):
        text += f"  \nThe table shows the first {len(result['rejected'])} rejected records."
    return text + "".join(f"  \nnote: {note}" for note in result["notes"])


def statistics(paths: list[str], format: str | None = None, tokenizer: str | None = None, *,
               roots: Roots) -> tuple[dict, Any]:
    """`sftune data stats`: lengths, turns, languages and noise flags, and the histograms as a PNG image (None
    when no record is valid)."""
    import PIL.Image

    from sftune import models
    from sftune.data import read
    from sftune.data.quality import plot_histograms, stats

    ui_paths.data_paths(paths, roots)
    loaded = models.load(ui_paths.model_name(tokenizer, roots), tokenizer_only=True)[1] if tokenizer else None
    result = stats(read(paths, format=format or None, on_error="skip", syntax="cli"), tokenizer=loaded)
    if not result["conversations"]:
        return result, None
    buffer = io.BytesIO()  # in memory: gradio keeps the copy it serves, and no file of ours is left behind
    plot_histograms(result, buffer)
    buffer.seek(0)
    return result, PIL.Image.open(buffer)


def stats_markdown(result: dict[str, Any]) -> str:
    lines = [f"**{result['conversations']:,} valid conversations**", "",
             "| per conversation | min | mean | p50 | p90 | p99 | max |", "|---|---|---|---|---|---|---|"]
    for name in ("characters", "tokens", "user_turns"):
        s = result.get(name)
        if s and s.get("count"):
            lines.append(f"| {name} | {s['min']:,} | {s['mean']:,} | {s['p50']:,.0f} | {s['p90']:,.0f} | "
                         f"{s['p99']:,.0f} | {s['max']:,} |")
    lines += ["", "languages: " + ", ".join(f"{k} {v:,}" for k, v in result["languages"].items())]
    lines += [f"{flag}: {found['count']:,}" + (f" (e.g. {', '.join(found['examples'])})" if found["count"] else "")
              for flag, found in result["flags"].items()]
    return "  \n".join(lines)


def inspect_html(paths: list[str], model: str, template: str | None = None, policy: str = "assistant",
                 limit: int = 3, format: str | None = None, max_len: int | None = None, *, roots: Roots) -> str:
    """`sftune data inspect` as HTML: the stop-token audit's line, then each token of the first records, green when
    trained, grey when masked (a stop sftune appends shows trained, as training renders it); with a
    vision-language model, each record's images and each image's tokens as one masked run. The files, the model
    folder and the records' images must be inside the roots."""
    from rich.text import Text

    from sftune.encode import EncodeOptions, explain
    from sftune.inspection import inspect

    def images_inside_roots(conversation: Any) -> None:  # before any image is read
        for ref in conversation.images:
            ui_paths.image_ref(ref, roots)

    ui_paths.data_paths(paths, roots)
    shown = inspect(paths, ui_paths.model_name(model, roots), template=template,
                    options=EncodeOptions(policy=policy, max_len=max_len), limit=limit, format=format or None,
                    check=images_inside_roots)
    images = shown.modality.reads_images
    checked = shown.checked
    warned = checked.appended is not None or checked.appended_after_call is not None
    audit_line = (f"<br><span class='sftune-stops{'-appended' if warned else ''}'>"
                  f"{html.escape(Text.from_markup(checked.summary()).plain)}</span>")
    parts = [f"<p>template: <b>{html.escape(shown.template.name)}</b> &nbsp; policy: <b>{html.escape(policy)}</b> "
             "&nbsp; <span class='sftune-trained'>trained</span> <span class='sftune-masked'>masked</span>"
             + (" <span class='sftune-image'>image tokens</span>" if images else "") + audit_line + "</p>"]
    for record in shown.records:
        where = html.escape(record.where)
        if record.encoded is None:
            parts.append(f"<h4>{where}: no trained token (skipped in training)</h4>")
            continue
        spans = "".join(_span(text, kind) for text, kind in explain(
            record.encoded, shown.modality.tokenizer, image_ids=shown.modality.image_token_ids))
        header = f"<h4>{where}: {len(record.encoded['input_ids'])} tokens, {record.trained} trained"
        if not images:
            parts.append(f"{header}</h4><pre class='sftune-tokens'>{spans}</pre>")
            continue
        refs = record.conversation.images
        pictures = "".join(f"<img class='sftune-thumb' src='{data_url(thumbnail(ref))}' alt='image {i + 1}' "
                           f"title='image {i + 1}'>" for i, ref in enumerate(refs))
        parts.append(f"{header}, {len(refs)} images</h4>"
                     + (f"<div class='sftune-images'>{pictures}</div>" if pictures else "")
                     + f"<pre class='sftune-tokens'>{spans}</pre>")
    return "\n".join(parts)


def _span(text: str, kind: str) -> str:
    return f"<span class='sftune-{kind}'>{html.escape(text)}</span>"


CSS = """
.sftune-trained { color: #15803d; font-weight: 600; background: #dcfce7; }
.sftune-masked { color: #6b7280; }
.sftune-stops-appended { color: #a16207; background: #fef9c3; }
.sftune-image { color: #6b7280; background: #e0e7ff; border-radius: 3px; padding: 0 2px; }
.sftune-images img.sftune-thumb { max-height: 96px; margin: 0 6px 6px 0; border: 1px solid #d1d5db; }
pre.sftune-tokens { white-space: pre-wrap; word-break: break-word; font-size: 0.85em; }
"""


def tab(context: dict[str, Any]) -> None:
    """The Data tab's components and events (inside a gr.Tab)."""
    import gradio as gr

    from sftune import models, templates
    from sftune.data import FORMATS

    with gr.Row():
        files = gr.File(label="Upload data files", file_count="multiple", scale=1)
        with gr.Column(scale=1):
            paths = gr.Textbox(label="Data files (paths, folders or globs; one per line)", lines=3,
                               elem_id="data-paths")
            fmt = gr.Dropdown(["(detect)", *FORMATS], value="(detect)", label="Format")
    with gr.Row():
        check_button = gr.Button("Validate", variant="primary", elem_id="data-validate")
        stats_button = gr.Button("Statistics")
        use_button = gr.Button("Use for training →")
    summary = gr.Markdown(elem_id="data-summary")
    images = gr.Gallery(label=f"Images (the first {GALLERY_SHOWN} of the valid records)", columns=GALLERY_COLUMNS,
                        object_fit="contain", visible=False, elem_id="data-gallery")
    file_table = gr.Dataframe(headers=["file", "format", "records", "valid", "rejected"], label="Files",
                              interactive=False)
    reasons_table = gr.Dataframe(headers=["reason", "count", "meaning"], label="Rejected, by reason",
                                 interactive=False)
    rejected_table = gr.Dataframe(headers=["where", "reason", "error"], label="Rejected records",
                                  interactive=False, wrap=True, elem_id="data-rejected")
    with gr.Row():
        stats_text = gr.Markdown()
        histograms = gr.Image(label="Length histograms", type="filepath", interactive=False)
    with gr.Accordion("Inspect: records in a template, trained tokens coloured", open=False):
        with gr.Row():
            model = gr.Dropdown(list(models.EMBEDDED), value=models.DEFAULT_MODEL, allow_custom_value=True,
                                label="Model (its tokenizer; a vision-language folder for images)")
            template = gr.Dropdown(["(model's own)", *templates.BUILTINS], value="(model's own)", label="Template")
            policy = gr.Dropdown(["assistant", "last", "all"], value="assistant", label="Trained turns")
            limit = gr.Number(3, precision=0, minimum=1, label="Records")
        inspect_button = gr.Button("Inspect")
        tokens = gr.HTML()

    def fmt_value(value: str) -> str | None:
        return None if value in (None, "", "(detect)") else value

    def uploaded(new_files, typed):
        kept = keep_uploads(new_files, context["uploads"], roots=context["roots"])
        return "\n".join(dict.fromkeys([*split_paths(typed), *kept]))

    def on_check(typed, format_name):
        try:
            result = check_files(split_paths(typed), fmt_value(format_name), roots=context["roots"])
        except (ValueError, OSError) as err:
            raise gr.Error(str(err)) from None
        rows = -(-len(result["gallery"]) // GALLERY_COLUMNS)  # the gallery as tall as its rows of thumbnails
        shown = gr.Gallery(value=result["gallery"] or None, visible=bool(result["gallery"]), height=60 + 170 * rows)
        return check_summary(result), result["files"], result["reasons"], result["rejected"], shown

    def on_stats(typed, format_name, model_name):
        try:
            result, image = statistics(split_paths(typed), fmt_value(format_name), model_name or None,
                                       roots=context["roots"])
        except (ValueError, OSError) as err:
            raise gr.Error(str(err)) from None
        return stats_markdown(result), image

    def on_inspect(typed, format_name, model_name, template_name, policy_name, count):
        try:
            return inspect_html(split_paths(typed), model_name, None if template_name.startswith("(") else template_name,
                                policy_name, int(count or 3), fmt_value(format_name), roots=context["roots"])
        except (ValueError, OSError, RuntimeError) as err:
            raise gr.Error(str(err)) from None

    files.upload(uploaded, [files, paths], paths)
    check_button.click(on_check, [paths, fmt], [summary, file_table, reasons_table, rejected_table, images],
                       api_name="check")
    stats_button.click(on_stats, [paths, fmt, model], [stats_text, histograms], api_name="stats")
    inspect_button.click(on_inspect, [paths, fmt, model, template, policy, limit], tokens, api_name="inspect")
    context["data_paths"] = paths
    context["use_for_training"] = use_button
