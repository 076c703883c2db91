"""The `sftune` command. Thin: parses arguments and calls the modules that do the work."""

from __future__ import annotations

from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from sftune import __version__, models

app = typer.Typer(
    help="sftune: supervised fine-tuning of causal language models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()

# Command groups. Each command stays thin and calls the module that does the work.
data_app = typer.Typer(help="Read, check, convert, inspect and measure SFT data.", no_args_is_help=True)
template_app = typer.Typer(help="Chat templates: list them, render data with them.", no_args_is_help=True)
app.add_typer(data_app, name="data")
app.add_typer(template_app, name="template")


def _version(value: bool) -> None:
    if value:
        console.print(f"sftune {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Optional[bool] = typer.Option(
        None, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """sftune: supervised fine-tuning of causal language models."""


@app.command("models")
def models_command() -> None:
    """List the embedded models (real pretrained models that ship as PyPI packages)."""
    table = Table(title="Embedded models (use the name wherever a model is asked for)")
    for column in ("name", "size", "licence", "installed", "cached", "description"):
        table.add_column(column)
    for spec in models.EMBEDDED.values():
        cached = (models.materialized_path(spec.name) / ".sftune-complete").exists()
        table.add_row(
            spec.name + (" (default)" if spec.name == models.DEFAULT_MODEL else ""),
            spec.size,
            spec.license,
            "yes" if spec.installed() else f"no: {spec.install}",
            "yes" if cached else "no",
            spec.description,
        )
    console.print(table)
    console.print(f"Cache: {models.sftune_home() / 'models'} (set SFTUNE_HOME to move it)")


@app.command("demo")
def demo_command(
    model: str = typer.Option(models.DEFAULT_MODEL, help="Model name or folder."),
    question: str = typer.Option("What is the capital of France?", help="Question to ask."),
) -> None:
    """Load the embedded default model and answer one question with its chat template."""
    from sftune.generate import answer

    with console.status(f"Loading {model} (the first time converts it, about a minute)"):
        loaded_model, tokenizer = models.load(model)
    console.print(f"[bold]Q:[/bold] {question}")
    console.print(f"[bold]A:[/bold] {answer(loaded_model, tokenizer, question)}")


def main() -> None:
    try:
        app()
    except models.ModelNotAvailableError as err:
        console.print(f"[red]error:[/red] {err}")
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
