"""sftune chat | generate: talk to a run, or answer a whole data file."""

from __future__ import annotations

from typing import Optional

import typer

from sftune.cli.common import FORMAT, TEMPLATE_KWARGS_HELP, app, console, template_kwargs


def _load_for_inference(run_or_model: str, template: Optional[str], kwargs: Optional[str] = None):
    from sftune import runs

    with console.status(f"loading {run_or_model}"):
        return runs.load(run_or_model, template=template, template_kwargs=template_kwargs(kwargs))


_RUN_OR_MODEL = typer.Argument(..., help="A run folder (sftune train's output.dir), an embedded model name or a model "
                               "folder.")
_INFER_TEMPLATE = typer.Option(None, "--template", help="Template for a plain model (a run always uses the one it was "
                               "trained with).")
_INFER_KWARGS = typer.Option(None, "--template-kwargs", help=TEMPLATE_KWARGS_HELP)


@app.command("chat")
def chat_command(
    run_or_model: str = _RUN_OR_MODEL,
    system: Optional[str] = typer.Option(None, "--system", help="System prompt (change it later with /system TEXT)."),
    temperature: float = typer.Option(0.7, help="Sampling temperature; 0 is greedy."),
    top_p: float = typer.Option(0.9, "--top-p", help="Nucleus sampling: keep the likeliest tokens up to this mass."),
    max_tokens: int = typer.Option(512, "--max-tokens", help="Longest answer, in tokens."),
    seed: Optional[int] = typer.Option(None, help="Seed for sampling (repeatable answers)."),
    template: Optional[str] = _INFER_TEMPLATE,
    kwargs: Optional[str] = _INFER_KWARGS,
) -> None:
    """Chat with a run in the terminal: streamed answers, multi-turn history, the run's training template.
    Commands: /system TEXT, /reset, /exit (or Ctrl-D); /image PATH with a vision-language run."""
    from sftune.generation import GenerationOptions
    from sftune.serve.chat import COMMANDS, IMAGE_COMMAND, chat_loop, terminal_lines

    loaded = _load_for_inference(run_or_model, template, kwargs)
    options = GenerationOptions(max_new_tokens=max_tokens, temperature=temperature, top_p=top_p, seed=seed)
    commands = f"{COMMANDS}, {IMAGE_COMMAND}" if loaded.modality.reads_images else COMMANDS
    console.print(f"[dim]{loaded.name} · template {loaded.template.name} · {commands}[/dim]")
    chat_loop(loaded, terminal_lines(console), console, options, system=system)


@app.command("generate")
def generate_command(
    run_or_model: str = _RUN_OR_MODEL,
    input: str = typer.Option(..., "--input", "-i", help="Data file (any format sftune reads); the prompt is each "
                              "conversation up to its last user turn."),
    out: str = typer.Option(..., "--output", "-o", help="JSONL output; records already in it are skipped (resume)."),
    batch_size: int = typer.Option(16, "--batch-size", help="Prompts per batch."),
    max_new_tokens: int = typer.Option(256, "--max-new-tokens", help="Longest answer, in tokens."),
    temperature: float = typer.Option(0.0, help="Sampling temperature; 0 (the default) is greedy."),
    top_p: float = typer.Option(1.0, "--top-p", help="Nucleus sampling mass."),
    seed: Optional[int] = typer.Option(None, help="Seed for sampling."),
    stop: Optional[list[str]] = typer.Option(None, "--stop", help="Stop string (repeatable)."),
    format: Optional[str] = FORMAT,
    template: Optional[str] = _INFER_TEMPLATE,
    kwargs: Optional[str] = _INFER_KWARGS,
) -> None:
    """Answer every conversation of a data file, batched, into a JSONL file (resumable)."""
    from sftune.data import files, load
    from sftune.generation import GenerationOptions
    from sftune.serve.batch import generate_file

    options = GenerationOptions(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, seed=seed,
                                stop=tuple(stop or ()))
    files.refuse_overwrite(load.read_paths(input, load.prepare(input, format=format, syntax="cli")), output=out)
    loaded = _load_for_inference(run_or_model, template, kwargs)  # refused above in seconds, not after loading
    summary = generate_file(loaded, input, out, options, batch_size=batch_size, console=console,
                            read_options={"format": format, "syntax": "cli"})
    console.print(f"{summary['written']} answered, {summary['skipped']} already in {summary['out']} (of "
                  f"{summary['total']}); {summary['completion_tokens']} tokens generated", highlight=False)
