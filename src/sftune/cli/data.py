"""sftune data check | convert | stats | dedup | inspect | encode, and sftune template list | render."""

from __future__ import annotations

from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from sftune import models
from sftune.cli.common import FORMAT as _FORMAT, console, data_app, json_repr, print_error, template_kwargs
from sftune.cli.template import template_for


def _mapping(text: Optional[str], option: str) -> Optional[dict]:
    """A mapping option: JSON ('{"instruction": "query"}') or pairs ('instruction=query,output=answer')."""
    if not text:
        return None
    import json

    if text.lstrip().startswith("{"):
        try:
            return json.loads(text)
        except json.JSONDecodeError as err:
            raise typer.BadParameter(f"{option}: not valid JSON ({err.msg})") from None
    pairs = [pair.split("=", 1) for pair in text.split(",") if pair.strip()]
    if any(len(pair) != 2 for pair in pairs):
        raise typer.BadParameter(f"{option}: write key=value pairs separated by commas, or a JSON object")
    return {key.strip(): value.strip() for key, value in pairs}


def _read_options(format, columns, roles, cot_layout, max_chars, dataset) -> dict:
    return {
        "format": format,
        "columns": _mapping(columns, "--columns"),
        "roles": _mapping(roles, "--roles"),
        "cot_layout": cot_layout,
        "max_chars": max_chars,
        "dataset_name": dataset,
        "syntax": "cli",
    }


_PATHS = typer.Argument(..., help="Files, folders, globs, dataset_info.json, hub:ORG/NAME[:SPLIT] datasets.")
_COLUMNS = typer.Option(None, help="Column mapping, e.g. 'instruction=query,output=meta.answer' or JSON.")
_ROLES = typer.Option(None, help="Role / speaker map, e.g. 'agent=assistant,customer=user' or JSON.")
_COT = typer.Option(None, help="Chain-of-thought layout: steps, think, or a format string.")
_MAX_CHARS = typer.Option(1_000_000, min=1, help="Reject records longer than this many characters.")
_DATASET = typer.Option(None, help="Dataset name for meta; for a dataset_info.json, the entries to read.")
_WORKERS = typer.Option(None, min=1, help="Processes for large JSONL / text files (default: up to 2).")
_MAX_RECORD_MB = typer.Option(None, "--max-record-mb", help="Reject a record (a line) over this many MiB (default 64).")
_MAX_UNPACKED_GB = typer.Option(None, "--max-unpacked-gb", help="Stop a compressed file once it has unpacked this "
                                "many GiB (default 100).")
_MAX_RATIO = typer.Option(None, "--max-ratio", help="Stop a compressed file once it has unpacked this many times its "
                          "size (default 1000; a decompression bomb).")
_PREFERENCE = typer.Option(
    None, "--preference/--sft", help="Read as preference data (chosen / rejected pairs, as stage: preference "
    "reads them) or as SFT data; default: preference when every file's records are pairs.")
_MODEL = typer.Option(models.DEFAULT_MODEL, help="Model name or folder (its tokenizer).")
_TEMPLATE = typer.Option(None, "--template", "-t", help="Default: the model's own template.")
_TEMPLATE_KWARGS = typer.Option(None, "--template-kwargs", help="Switches the template reads, as JSON, e.g. "
                                "'{\"thinking\": true}' (train's data.template_kwargs).")
_POLICY = typer.Option("assistant", help="Masking policy: assistant, last or all.")
_REASONING = typer.Option("think_and_answer", "--reasoning", help="With a reasoning template (qwen3, qwen3.5, "
                          "qwen3.6, qwen3.8, deepseek_r1, deepseek_v3.1, glm4.5, gpt-oss, nemotron3, gemma4, "
                          "magistral, or a model's own that writes think blocks): think_and_answer, answer_only or "
                          "think_last_turn.")


def _reading(conversations, description: str):
    """Iterate with a live count (rich progress: the total is unknown while streaming)."""
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    columns = (SpinnerColumn(), TextColumn("{task.description} {task.completed:,} records"), TimeElapsedColumn())
    with Progress(*columns, console=Console(stderr=True), transient=True) as progress:
        task = progress.add_task(description, total=None)
        for count, conversation in enumerate(conversations, 1):
            if count % 1000 == 0:
                progress.update(task, completed=count)
            yield conversation


def _data_errors(function):
    """Bad paths and bad records end the command with the message (exit 2), not a traceback; with
    --json, the message is also printed as a JSON object {"error": ...} on stdout. The command reads within
    its --max-record-mb / --max-unpacked-gb / --max-ratio limits (files.reading_limits)."""
    import functools
    import json

    from sftune.data import DataError, files

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        try:
            with files.reading_limits(kwargs.get("max_record_mb"), kwargs.get("max_unpacked_gb"), kwargs.get("max_ratio")):
                return function(*args, **kwargs)
        except (DataError, OSError, ValueError) as err:
            if kwargs.get("json_output"):
                print(json.dumps({"error": str(err)}, ensure_ascii=False))
            print_error(err)
            raise typer.Exit(2) from None

    return wrapper


def _counted(count: int, noun: str) -> str:
    """'1 conversation', '2 conversations'."""
    return f"{count:,} {noun}{'' if count == 1 else 's'}"


def _print_report(report, unit: str = "records") -> None:
    from rich.markup import escape

    from sftune.data import REASONS

    formats = Table(title="Files")
    for column in ("file", "format", unit, "valid", "invalid"):
        formats.add_column(column, overflow="fold")
    for source, counts in report.files.items():
        formats.add_row(escape(source), counts["format"] or "(none detected)",
                        *(f"{counts[key]:,}" for key in ("total", "valid", "invalid")))
    console.print(formats)
    for note in report.notes:
        console.print(f"[yellow]note:[/yellow] {escape(note)}", highlight=False)
    console.print(
        f"{unit}: {report.total:,}   valid: {report.valid:,}   invalid: {report.invalid:,}   "
        f"validation rate: {report.validation_rate:.2%}" + (f"   images: {report.images:,}" if report.images else "")
    )
    if report.dropped:
        shown = ", ".join(f"{name} x{count:,} ({why}" for name, why, count in
                          ((*key.split(" (", 1), count) for key, count in report.to_dict()["dropped"].items()))
        console.print(f"[yellow]not kept as given:[/yellow] {escape(shown)}", highlight=False)
    if not report.total:
        console.print("[yellow]warning:[/yellow] no records were read: the files are empty "
                      "(or hold only blank lines)", highlight=False)
    if report.invalid:
        table = Table(title="Rejected, by reason")
        for column in ("reason", "count", "meaning", "first example"):
            table.add_column(column, overflow="fold")
        for reason, count in report.reasons.most_common():
            table.add_row(reason, f"{count:,}", REASONS.get(reason, ""), escape(report.examples[reason]))
        console.print(table)
        if report.quarantine:
            console.print(f"Rejected records with their reasons: {escape(report.quarantine)}", highlight=False)


@data_app.command("check")
@_data_errors
def data_check_command(
    paths: list[str] = _PATHS,
    format: Optional[str] = _FORMAT,
    columns: Optional[str] = _COLUMNS,
    roles: Optional[str] = _ROLES,
    cot_layout: Optional[str] = _COT,
    max_chars: int = _MAX_CHARS,
    dataset: Optional[str] = _DATASET,
    quarantine: Optional[str] = typer.Option(None, help="Write each rejected record, with its reason, here (JSONL)."),
    json_output: bool = typer.Option(False, "--json", help="Print one JSON object (total, valid, invalid, reasons...)."),
    strict: bool = typer.Option(False, help="Exit 1 when any record is invalid, or when there is no record."),
    workers: Optional[int] = _WORKERS,
    max_record_mb: Optional[float] = _MAX_RECORD_MB,
    max_unpacked_gb: Optional[float] = _MAX_UNPACKED_GB,
    max_ratio: Optional[float] = _MAX_RATIO,
    reasoning: bool = typer.Option(False, "--reasoning", help="Also check <think> blocks (empty, unclosed, dropped "
                                   "by the template, answers repeating the reasoning...)."),
    template: Optional[str] = typer.Option(None, "--template", "-t", help="With --reasoning: the template trained "
                                           "with (default: a Qwen3-style reasoning template)."),
    model: Optional[str] = typer.Option(None, "--model", help="With --reasoning: the model whose template is "
                                        "checked (its own unless -t names one)."),
    kwargs: Optional[str] = _TEMPLATE_KWARGS,
    tools: bool = typer.Option(False, "--tools", help="Also check tool calls: each names a declared tool, its "
                               "arguments match the tool's JSON schema, each result follows a call."),
    preference: Optional[bool] = _PREFERENCE,
) -> None:
    """Validate every record; report counts per reason and the validation rate."""
    import json

    from sftune.data import check

    options = _read_options(format, columns, roles, cot_layout, max_chars, dataset)
    if preference is None:
        preference = _all_pairs(paths, options)
        if preference and not json_output:
            console.print("[dim]every file holds chosen / rejected pairs: checking them as preference data "
                          "(--sft to check them as SFT data)[/dim]")
    if preference:
        if reasoning or tools:
            raise ValueError("--reasoning and --tools check SFT conversations, not preference pairs: leave them out, "
                             "or check the pairs as SFT data with --sft")
        options["preference"] = True
    with Console(stderr=True).status("checking (large JSONL files on worker processes)"):
        report = check(paths, quarantine=quarantine, workers=workers, **options)
    found = _reasoning_check(paths, options, template, model, template_kwargs(kwargs)) if reasoning else None
    calls = _tools_check(paths, options) if tools else None
    if json_output:
        extra = {**({"reasoning": found} if found else {}), **({"tools": calls} if calls else {})}
        print(json.dumps({**report.to_dict(), "preference": preference, **extra}, ensure_ascii=False))
    else:
        _print_report(report, "pairs" if preference else "records")
        if found:
            _print_reasoning(found)
        if calls:
            _print_kinds(f"Tool calls: {calls['calls']:,} in {calls['with_tool_calls']:,} of "
                         f"{calls['conversations']:,} conversations", calls["kinds"])
    if strict and (report.invalid or not report.total):
        if json_output:  # the JSON says it; a person reads why on stderr
            Console(stderr=True).print(
                f"strict: {report.invalid:,} invalid of {report.total:,} records" if report.total
                else "strict: no records were read", highlight=False)
        elif not report.total:
            console.print("[red]strict:[/red] no records were read, which --strict counts as a failure")
        raise typer.Exit(1)


def _all_pairs(paths: list[str], options: dict) -> bool:
    """Whether every file, by its first records, holds preference pairs (chosen / rejected)."""
    from sftune.data.load import first_format, prepare

    if options.get("format"):
        return options["format"] == "preference"
    reading = {key: options[key] for key in ("columns", "dataset_name", "roles", "cot_layout", "syntax")}
    plan = prepare(paths, **reading)
    return bool(plan) and all(first_format(item)[0] == "preference" for item in plan)


def _reasoning_check(paths: list[str], options: dict, template: Optional[str], model: Optional[str] = None,
                     kwargs: Optional[dict] = None) -> dict:
    """The reasoning checker over the valid records, for the template's reasoning style ("dropped" for a template
    that drops every reply's reasoning, as DeepSeek-V3's does)."""
    from sftune import templates
    from sftune.data import read
    from sftune.data.reasoning import check_reasoning

    style = "qwen3"
    if template or model or kwargs:
        try:
            tokenizer = models.load(model, tokenizer_only=True)[1] if model else None
            chosen = templates.get(template, tokenizer, kwargs)
        except templates.TemplateError as err:
            raise ValueError(str(err)) from None
        style = "dropped" if chosen.drops_reasoning else chosen.reasoning
    return check_reasoning(_reading(read(paths, on_error="skip", **options), "checking reasoning"),
                           template_reasoning=style)


def _tools_check(paths: list[str], options: dict) -> dict:
    from sftune.data import read
    from sftune.data.toolcalls import check_tools

    return check_tools(_reading(read(paths, on_error="skip", **options), "checking tool calls"))


def _print_kinds(title: str, kinds: dict) -> None:
    from rich.markup import escape

    table = Table(title=title)
    for column in ("kind", "count", "meaning", "examples"):
        table.add_column(column, overflow="fold")
    for kind, info in kinds.items():
        if info["count"]:
            table.add_row(kind, f"{info['count']:,}", info["meaning"], escape("\n".join(info["examples"])))
    console.print(table)


def _print_reasoning(found: dict) -> None:
    console.print(f"reasoning: {found['replies_with_think']:,} of {found['replies']:,} replies have a think block "
                  f"(template reasoning: {found['template_reasoning'] or 'none'})", highlight=False)
    _print_kinds("Reasoning checks", found["kinds"])
    for name in ("reasoning_chars", "answer_chars", "reasoning_to_answer"):
        summary = found[name]
        if summary.get("count"):
            console.print(f"{name}: mean {summary['mean']:,}  p50 {summary['p50']:,}  p90 {summary['p90']:,}  "
                          f"max {summary['max']:,}", highlight=False)


@data_app.command("convert")
@_data_errors
def data_convert_command(
    paths: list[str] = _PATHS,
    output: str = typer.Option(..., "--output", "-o", help="Output JSONL file."),
    to: str = typer.Option("messages", help="Output shape: messages, alpaca, sharegpt (function_call / "
                           "observation turns), openai (tool_calls) or hermes (<tool_call> tags)."),
    format: Optional[str] = _FORMAT,
    columns: Optional[str] = _COLUMNS,
    roles: Optional[str] = _ROLES,
    cot_layout: Optional[str] = _COT,
    max_chars: int = _MAX_CHARS,
    dataset: Optional[str] = _DATASET,
    on_error: str = typer.Option("skip", help="skip: quarantine bad records and go on; raise: stop at the first."),
    quarantine: Optional[str] = typer.Option(None, help="Rejected records go here (default: OUTPUT.rejected.jsonl)."),
    workers: Optional[int] = _WORKERS,
    max_record_mb: Optional[float] = _MAX_RECORD_MB,
    max_unpacked_gb: Optional[float] = _MAX_UNPACKED_GB,
    max_ratio: Optional[float] = _MAX_RATIO,
    preference: Optional[bool] = _PREFERENCE,
) -> None:
    """Convert any known format into messages, alpaca, sharegpt, openai or hermes JSONL; preference pairs into
    prompt / chosen / rejected messages (the pairs counted as `data check` counts them)."""
    from sftune.data import convert

    quarantine = quarantine or f"{output}.rejected.jsonl"
    options = _read_options(format, columns, roles, cot_layout, max_chars, dataset)
    if preference is None:
        preference = _all_pairs(paths, options)
    if preference:
        options["preference"] = True
    with Console(stderr=True).status(f"converting to {to}"):
        report = convert(paths, output, to, on_error=on_error, quarantine=quarantine, workers=workers, **options)
    _print_report(report, "pairs" if preference else "records")
    console.print(f"Wrote {_counted(report.valid, 'preference pair' if preference else 'conversation')} ({to}) "
                  f"to {output}")


@data_app.command("stats")
@_data_errors
def data_stats_command(
    paths: list[str] = _PATHS,
    format: Optional[str] = _FORMAT,
    columns: Optional[str] = _COLUMNS,
    roles: Optional[str] = _ROLES,
    dataset: Optional[str] = _DATASET,
    tokenizer: Optional[str] = typer.Option(None, help="Count tokens with this model's tokenizer (name or folder)."),
    plot: Optional[str] = typer.Option(None, help="Save length histograms to this image file (PNG)."),
    json_output: bool = typer.Option(False, "--json", help="Print one JSON object."),
    max_record_mb: Optional[float] = _MAX_RECORD_MB,
    max_unpacked_gb: Optional[float] = _MAX_UNPACKED_GB,
    max_ratio: Optional[float] = _MAX_RATIO,
) -> None:
    """Length, turn and token statistics with histograms; language mix; noise flags; kappa."""
    import json

    from sftune.data import Report, read
    from sftune.data.quality import plot_histograms, stats

    loaded_tokenizer = models.load(tokenizer, tokenizer_only=True)[1] if tokenizer else None
    report = Report()
    options = _read_options(format, columns, roles, None, None, dataset)
    reading = read(paths, on_error="skip", report=report, outputs={"plot": plot}, **options)
    result = stats(_reading(reading, "reading"), tokenizer=loaded_tokenizer)
    result["validation"] = report.to_dict()
    result["reasoning"] = _reasoning_check(paths, options, None)
    if plot:
        plot_histograms(result, plot)
    if json_output:
        print(json.dumps(result, ensure_ascii=False))
        return
    _print_report(report)
    for name in ("characters", "user_turns", "tokens"):
        summary = result.get(name)
        if not summary or not summary.get("count"):
            continue
        console.print(
            f"[bold]{name}[/bold] per conversation: min {summary['min']:,}  mean {summary['mean']:,}  "
            f"p50 {summary['p50']:,.0f}  p90 {summary['p90']:,.0f}  p99 {summary['p99']:,.0f}  max {summary['max']:,}"
        )
        counts, edges = summary["histogram"]["counts"], summary["histogram"]["edges"]
        widest = max(counts) or 1
        for i, count in enumerate(counts):
            console.print(f"  {edges[i]:>10,.0f} - {edges[i + 1]:>10,.0f} {count:>9,} {'█' * round(40 * count / widest)}")
    console.print(f"languages: {result['languages']}")
    for flag, found in result["flags"].items():
        console.print(f"{flag}: {found['count']:,}" + (f"  e.g. {', '.join(found['examples'])}" if found["count"] else ""))
    if "agreement" in result:
        console.print(f"annotator agreement (Cohen's kappa): {result['agreement']}")
    if result["reasoning"]["replies_with_think"]:
        _print_reasoning(result["reasoning"])
    if plot:
        console.print(f"Histograms saved to {plot}")


@data_app.command("dedup")
@_data_errors
def data_dedup_command(
    paths: list[str] = _PATHS,
    output: str = typer.Option(..., "--output", "-o", help="Output JSONL (messages) with duplicates removed."),
    threshold: float = typer.Option(0.85, help="Near-duplicate Jaccard similarity threshold (MinHash LSH)."),
    exact_only: bool = typer.Option(False, help="Remove exact duplicates only."),
    removed: Optional[str] = typer.Option(None, help="Removed records go here (default: OUTPUT.duplicates.jsonl)."),
    format: Optional[str] = _FORMAT,
    columns: Optional[str] = _COLUMNS,
    roles: Optional[str] = _ROLES,
    dataset: Optional[str] = _DATASET,
    max_record_mb: Optional[float] = _MAX_RECORD_MB,
    max_unpacked_gb: Optional[float] = _MAX_UNPACKED_GB,
    max_ratio: Optional[float] = _MAX_RATIO,
    preference: Optional[bool] = _PREFERENCE,
) -> None:
    """Remove exact and near duplicates (MinHash/LSH); every removal is written down with what it repeats.
    Preference pairs are read as pairs (as `data check` reads them) and compared by prompt, chosen and rejected."""
    from sftune.data import Report, read
    from sftune.data.quality import write_dedup

    report = Report()
    removed = removed or f"{output}.duplicates.jsonl"
    options = _read_options(format, columns, roles, None, None, dataset)
    if preference is None:
        preference = _all_pairs(paths, options)
    if preference:
        options["preference"] = True
    reading = read(paths, on_error="skip", report=report, outputs={"output": output, "removed": removed}, **options)
    conversations = _reading(reading, "deduplicating")
    counts = write_dedup(conversations, output, removed, threshold=threshold, near=not exact_only)
    unit = "preference pair" if preference else "conversation"
    _print_report(report, "pairs" if preference else "records")
    console.print(
        f"kept {_counted(counts['kept'], unit)}; removed {counts['exact']:,} exact and {counts['near']:,} near "
        f"duplicates (listed in {removed}); wrote {output}"
    )


# --- sftune template list | render, sftune data inspect ---------------------------------------------


TRAINED_MARKS = ("⟦", "⟧")  # around trained text where colours cannot show (piped output, NO_COLOR)
STYLES = {"trained": "bold green", "masked": "grey50", "image": "grey50"}


@data_app.command("inspect")
@_data_errors
def data_inspect_command(
    path: list[str] = typer.Argument(..., help="Data files (any format the data layer reads)."),
    model: str = _MODEL,
    template: Optional[str] = _TEMPLATE,
    kwargs: Optional[str] = _TEMPLATE_KWARGS,
    policy: str = _POLICY,
    reasoning: str = _REASONING,
    max_len: Optional[int] = typer.Option(None, help="Truncate as training would."),
    limit: int = typer.Option(3, help="How many records to show."),
    plain: bool = typer.Option(False, help="One token per line: TRAIN or mask, a tab, then the token as JSON "
                               "(a character split over several tokens shows whole, on the line of its first)."),
    format: Optional[str] = _FORMAT,
) -> None:
    """Show each record as training sees it, so the mask is checked before training: trained text green, masked
    grey in a terminal; piped (`| less`, a file) or with NO_COLOR, trained text is wrapped in ⟦ ⟧ instead.
    Images show as one masked "[image k: n tokens]" run each."""
    from rich.text import Text

    from sftune.encode import EncodeOptions, explain
    from sftune.inspection import inspect

    options = EncodeOptions(policy=policy, reasoning=reasoning, max_len=max_len)
    shown = inspect(path, model, template=template, template_kwargs=template_kwargs(kwargs), options=options,
                    limit=limit, format=format)
    tokenizer, image_ids = shown.modality.tokenizer, shown.modality.image_token_ids  # images: one masked run each
    colours = console.color_system is not None and not console.no_color
    opening, closing = TRAINED_MARKS
    if not plain:
        appended = shown.checked.appended is not None or shown.checked.appended_after_call is not None
        stop_line = f"\n{shown.checked.summary()}" if appended else f"   {shown.checked.summary()}"
        switched = f" {json_repr(shown.template.kwargs)}" if shown.template.kwargs else ""
        console.print(f"template: {shown.template.name}{switched}   policy: {policy}{stop_line}", highlight=False)
    seen = []
    for record in shown.records:
        seen.append(record.conversation)
        if record.encoded is None:
            print(f"# {record.where}: no trained token (skipped in training)")
            continue
        header = f"# {record.where}: {len(record.encoded['input_ids'])} tokens, {record.trained} trained"
        if plain:
            print(header)
            for text, kind in explain(record.encoded, tokenizer, image_ids=image_ids, per_token=True):
                print(("TRAIN" if kind == "trained" else "mask ") + "\t" + json_repr(text))
            continue
        pieces = explain(record.encoded, tokenizer, image_ids=image_ids)
        if colours:
            console.print(header, style="bold", highlight=False)
            console.print(Text.assemble(*((text, STYLES[kind]) for text, kind in pieces)), highlight=False)
            console.print()
        else:
            print(header)
            print("".join(opening + text + closing if kind == "trained" else text for text, kind in pieces) + "\n")
    from rich.markup import escape

    from sftune.templates import dropped_reasoning

    if (dropped := dropped_reasoning(shown.template, seen)) is not None:  # of the records shown
        Console(stderr=True).print(f"[yellow]{escape(dropped)}[/yellow]", highlight=False)
    if plain:
        return
    if colours:
        console.print(Text("trained", style=STYLES["trained"]) + Text("  masked", style=STYLES["masked"]))
    else:
        print(f"{opening}trained{closing}  masked")


@data_app.command("encode")
@_data_errors
def data_encode_command(
    path: list[str] = typer.Argument(..., help="Data files (any format the data layer reads)."),
    model: str = _MODEL,
    template: Optional[str] = _TEMPLATE,
    kwargs: Optional[str] = _TEMPLATE_KWARGS,
    policy: str = _POLICY,
    reasoning: str = _REASONING,
    max_len: int = typer.Option(1024, help="Truncate as training would (train's data.max_len)."),
    workers: Optional[int] = typer.Option(None, help="Processes (default: one per core, up to 4, for 10,000+ records)."),
    format: Optional[str] = _FORMAT,
    max_turns: int = typer.Option(10_000, min=1, help="Skip a conversation of more messages (too_many_turns)."),
    max_record_mb: Optional[float] = _MAX_RECORD_MB,
    max_unpacked_gb: Optional[float] = _MAX_UNPACKED_GB,
    max_ratio: Optional[float] = _MAX_RATIO,
) -> None:
    """Encode the data as training would and report it: tokens, trained tokens, truncated and skipped
    records (why, where), speed. The result is cached, so encoding the same records again is instant."""
    import time

    from sftune.data import Report, read
    from sftune.encode import EncodeOptions, encode_dataset

    options = EncodeOptions(policy=policy, reasoning=reasoning, max_len=max_len, max_turns=max_turns)
    tokenizer = models.load(model, tokenizer_only=True)[1]
    chosen = template_for(template, tokenizer, template_kwargs(kwargs))
    read_report = Report()
    records = list(_reading(read(path, format=format, on_error="skip", report=read_report, syntax="cli"), "reading"))
    start = time.perf_counter()
    dataset, report = encode_dataset(records, tokenizer, chosen, options, workers=workers)
    seconds = time.perf_counter() - start
    console.print(f"template: {chosen.name}   policy: {policy}   max_len: {max_len}", highlight=False)
    if read_report.invalid or not read_report.total:
        _print_report(read_report)
    console.print(f"records: {read_report.total:,}   encoded: {report.encoded:,}   truncated: {report.truncated:,}   "
                  f"skipped: {report.skipped:,}" + (f"   rejected at reading: {read_report.invalid:,}"
                                                   if read_report.invalid else ""), highlight=False)
    if report.truncated_records:
        console.print(f"truncated to max_len={max_len}: {', '.join(report.truncated_records[:10])}"
                      + (" ..." if report.truncated > 10 else ""), highlight=False)
    if report.encoded:
        console.print(f"tokens: {report.tokens:,} ({report.tokens / report.encoded:,.0f} per record)   "
                      f"trained: {report.trained_tokens:,} ({report.trained_tokens / report.tokens:.1%})",
                      highlight=False)
    if report.skipped:
        table = Table(title="Skipped, by reason (first places)")
        for column in ("reason", "count", "where", "detail"):
            table.add_column(column, overflow="fold")
        for reason, count in report.skipped_by_reason.items():
            first = next(r for r in report.skipped_records if r.reason == reason)
            table.add_row(reason, f"{count:,}", first.where, first.detail)
        console.print(table)
    how = "from the cache" if report.cache == "hit" else f"tokenized by {report.tokenizer}"
    console.print(f"{seconds:.2f} s ({report.total / max(seconds, 1e-9):,.0f} records/s), {how}", highlight=False)
