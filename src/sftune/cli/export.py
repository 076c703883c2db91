"""sftune export: merged model, GGUF, Ollama, with a parity check."""

from __future__ import annotations

from typing import Optional

import typer

from sftune.cli.common import app, console


@app.command("export")
def export_command(
    run: str = typer.Argument(..., help="The run folder to export (sftune train's output.dir)."),
    out: str = typer.Option(..., "--output", "-o", help="Folder to write (merged model, gguf/, export.json)."),
    gguf: Optional[str] = typer.Option(None, "--gguf", help="Also write gguf/model.gguf: f16, q8_0 or f32."),
    ollama: bool = typer.Option(False, "--ollama", help="Also write gguf/Modelfile for Ollama (implies --gguf f16)."),
    check: bool = typer.Option(False, "--check", help="Compare each artefact's prompts and greedy answers with the "
                               "run's (writes check.md)."),
    check_data: Optional[str] = typer.Option(None, "--check-data", help="Prompts for --check (default: the run's "
                                             "eval data)."),
    check_count: int = typer.Option(8, "--check-count", help="How many prompts --check uses."),
    check_max_new_tokens: int = typer.Option(32, "--check-max-new-tokens", help="Answer length --check compares."),
    dtype: str = typer.Option("float32", help="Weights of the merged folder: float32, bfloat16 or float16."),
) -> None:
    """Merge a run into a standalone model (safetensors + tokenizer + generation_config), optionally GGUF and
    an Ollama Modelfile, and check that each answers as the run does."""
    from sftune.export import export

    with console.status(f"exporting {run}"):
        summary = export(run, out, gguf=gguf, ollama=ollama, dtype=dtype, check=check, check_data=check_data,
                         check_count=check_count, check_max_new_tokens=check_max_new_tokens, console=console)
    merged = "LoRA merged into the base" if summary["merged"] else "weights saved as trained"
    console.print(f"{out}: {merged} ({summary['dtype']}), template {summary['template']}, stops at "
                  f"{', '.join(summary['stop_tokens'])}", highlight=False)
    if summary.get("note"):
        console.print(f"[yellow]note:[/yellow] {summary['note']}", highlight=False)
    if summary.get("gguf"):
        g = summary["gguf"]
        console.print(f"{g['file']}: {g['architecture']} {g['outtype']}, {g['bytes'] / 2**20:.1f} MiB", highlight=False)
    if summary.get("ollama"):
        console.print(f"{summary['ollama']}: ollama create NAME -f Modelfile (in that folder)", highlight=False)
    if summary.get("check") and not summary["check"]["ok"]:
        console.print(f"[red]the parity check found differences[/red]: {summary['check']['report']}")
        raise typer.Exit(1)
