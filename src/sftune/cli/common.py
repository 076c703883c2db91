"""The `sftune` command's shared parts: the typer app, its command groups, the console, and how errors end."""

from __future__ import annotations

from typing import Optional

import typer
from rich.console import Console

from sftune import __version__, models, quiet

app = typer.Typer(
    help="sftune: supervised fine-tuning of causal language models.",
    no_args_is_help=True,
    add_completion=True,  # typer's --install-completion / --show-completion (bash, zsh, fish, PowerShell)
    pretty_exceptions_enable=False,
)
console = Console()
# Errors go to stderr (a command's output on stdout stays clean to pipe), escaped: a message quoting the
# user's `report_to=[tensorboard]` must not lose its brackets to rich's markup.
errors = Console(stderr=True, highlight=False)


def print_error(message: object) -> None:
    from rich.markup import escape

    errors.print(f"[red]error:[/red] {escape(str(message))}")

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
    verbose: bool = typer.Option(
        False, "--verbose", "-v", help="Show the libraries' own warnings and logs, and a traceback on errors."
    ),
) -> None:
    """sftune: supervised fine-tuning of causal language models."""
    quiet.configure(verbose=verbose or quiet.verbose_from_env())


def _user_error(err: Exception) -> None:
    """One `error:` line and exit code 2 (a traceback only with --verbose)."""
    if quiet.is_verbose():
        raise err
    print_error(err)
    raise typer.Exit(2) from None


def json_repr(text: str) -> str:
    import json

    return json.dumps(text, ensure_ascii=False)


def _caused_by_user(err: Exception) -> bool:
    """Errors that a user causes and fixes (bad data, config, path, model name), as opposed to bugs."""
    from sftune.config import ConfigError
    from sftune.data import DataError

    user_errors = (ConfigError, DataError, models.ModelNotAvailableError, OSError)
    if isinstance(err, user_errors):
        return True
    module = type(err).__module__ or ""
    return module.startswith("sftune") and isinstance(err, (ValueError, RuntimeError))


def main() -> None:
    """The `sftune` command and `python -m sftune`: errors a user can cause end in one message and
    exit code 2; anything else is a bug, said so; a traceback only with --verbose."""
    try:
        app()
    except Exception as err:  # noqa: BLE001 - the last line between a user and a traceback
        if quiet.is_verbose():
            raise
        if _caused_by_user(err):
            print_error(err)
            raise SystemExit(2) from None
        print_error(f"{type(err).__name__}: {err}\nThis looks like a bug in sftune. Run the command again "
                    "with --verbose for the traceback, and report it.")
        raise SystemExit(1) from None

