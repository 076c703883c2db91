"""The `sftune` command's shared parts: the typer app, its command groups, the console, and how errors end:
a UserError (sftune.errors) or an OSError from any command is one `error:` line and exit code 2, here and
nowhere else; anything else is a bug (exit 1). --verbose shows the traceback."""

from __future__ import annotations

from typing import Optional

import typer
from rich.console import Console
from typer.core import TyperGroup

from sftune import __version__, quiet
from sftune.errors import UserError

# A user's mistake: sftune's own errors, and a path that is missing, unreadable or refused.
USER_ERRORS = (UserError, OSError)


class _Commands(TyperGroup):
    """The root command group: every command runs inside its `invoke`, so this is where a user's error ends."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except USER_ERRORS as err:
            if quiet.is_verbose():
                raise
            print_error(err)
            raise typer.Exit(2) from None


app = typer.Typer(
    cls=_Commands,
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
app.add_typer(data_app, name="data")
FORMAT = typer.Option(None, "--format", "-f", help="Force a format (default: detected per file).")


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


TEMPLATE_KWARGS_HELP = ("Switches the chat template reads, as JSON, e.g. '{\"thinking\": true}' "
                        "(data.template_kwargs); a run always uses its own.")


def template_kwargs(text: str | None) -> dict:
    """The --template-kwargs option: a JSON object of template switches (data.template_kwargs)."""
    import json

    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise UserError(f"--template-kwargs {text!r} is not JSON ({err.msg}); write an object, e.g. "
                        "'{\"enable_thinking\": false}'") from None
    if not isinstance(value, dict):
        raise UserError(f"--template-kwargs {text!r}: write a JSON object, e.g. '{{\"thinking\": true}}'")
    return value


def json_repr(text: object) -> str:
    import json

    return json.dumps(text, ensure_ascii=False)


def main() -> None:
    """The `sftune` command and `python -m sftune`. A user's error has ended in `_Commands` (exit code 2);
    what reaches here is a bug, said so; a traceback only with --verbose."""
    try:
        app()
    except Exception as err:  # noqa: BLE001 - the last line between a user and a traceback
        if quiet.is_verbose():
            raise
        print_error(f"{type(err).__name__}: {err}\nThis looks like a bug in sftune. Run the command again "
                    "with --verbose for the traceback, and report it.")
        raise SystemExit(1) from None

