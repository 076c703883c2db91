"""sftune webui: the browser UI."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from sftune.cli.common import app, console
from sftune.errors import UserError


@app.command("webui")
def webui_command(
    runs: Path = typer.Option(Path("runs"), "--runs", help="Folder where runs are started and found."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind (only this machine by default)."),
    share_host: bool = typer.Option(False, "--share-host", help="Bind 0.0.0.0: other machines of the network can "
                                    "open the UI (use --auth with it)."),
    port: Optional[int] = typer.Option(None, "--port", help="Port (default: 7860, or the next free one)."),
    auth: Optional[str] = typer.Option(None, "--auth", help="USER:PASS asked by the page before it opens."),
    data_roots: Optional[list[Path]] = typer.Option(
        None, "--data-root", help="A folder whose files the UI may read (data, models) and export into; "
        "repeat for several. Default: the working directory. The runs folder is always allowed, nothing else."),
) -> None:
    """Data, training, evaluation, chat and export in the browser (needs the `webui` extra)."""
    try:
        import gradio  # noqa: F401
    except ImportError:
        raise UserError("the web UI needs gradio: pip install 'sftune[webui]'") from None
    credentials = None
    if auth is not None:
        user, _, password = auth.partition(":")
        if not user or not password:
            raise UserError(f"--auth {auth!r}: write USER:PASS, e.g. --auth admin:s3cret")
        credentials = (user, password)
    for folder in data_roots or []:
        if not folder.expanduser().is_dir():
            raise UserError(f"--data-root {folder}: no such folder; give a folder that exists")
    bind = "0.0.0.0" if share_host else host
    if bind not in ("127.0.0.1", "localhost", "::1") and credentials is None:
        console.print(f"[yellow]warning:[/yellow] the UI is open to the network on {bind} without a password; "
                      "add --auth USER:PASS", highlight=False)
    from sftune.webui import launch

    ui, url = launch(runs, data_roots=data_roots or (), host=bind, port=port, auth=credentials, block=False)
    console.print(f"sftune web UI: {url}  (runs folder {runs.resolve()}; Ctrl-C to quit; runs keep training)",
                  highlight=False)
    ui.block_thread()
