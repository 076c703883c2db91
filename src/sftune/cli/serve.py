"""sftune serve: an OpenAI-compatible API over a run."""

from __future__ import annotations

from typing import Optional

import typer

from sftune.cli.common import TEMPLATE_KWARGS_HELP, app, console, template_kwargs
from sftune.errors import UserError


@app.command("serve")
def serve_command(
    run_or_model: str = typer.Argument(..., help="A run folder (sftune train's output.dir) or a model."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind; 0.0.0.0 opens it to the network."),
    port: int = typer.Option(8000, "--port"),
    api_key: Optional[str] = typer.Option(None, "--api-key", envvar="SFTUNE_API_KEY",
                                          help="Require 'Authorization: Bearer KEY' (default: env SFTUNE_API_KEY)."),
    adapter: Optional[list[str]] = typer.Option(None, "--adapter", help="NAME=RUN_DIR: another LoRA run on the same "
                                                "base, answered when a request's model is NAME (repeatable)."),
    max_batch_size: int = typer.Option(16, "--max-batch-size", min=1, help="Most requests decoded together."),
    template: Optional[str] = typer.Option(None, "--template", help="Chat template for a plain model (a run "
                                           "always uses the template it was trained with)."),
    kwargs: Optional[str] = typer.Option(None, "--template-kwargs", help=TEMPLATE_KWARGS_HELP),
    max_body_mb: float = typer.Option(8.0, "--max-body-mb", min=0.001, help="Largest request body in MiB; a larger "
                                      "one is refused with 413 before it is read (raise it for large images)."),
    body_timeout: float = typer.Option(60.0, "--body-timeout", min=0.1, help="Seconds a request body may take to "
                                       "arrive; a slower one is refused with 408."),
    header_timeout: float = typer.Option(20.0, "--header-timeout", min=0.1, help="Seconds a request's line and "
                                         "headers may take to arrive; a slower client gets 408 and is disconnected."),
) -> None:
    """Serve a run through an OpenAI-compatible API (/v1/chat/completions, /v1/completions, /v1/models)."""
    named: dict[str, str] = {}
    for item in adapter or []:
        name, sep, folder = item.partition("=")
        if not sep or not name or not folder:
            raise UserError(f"--adapter {item!r}: write it as NAME=RUN_DIR, e.g. --adapter support=runs/support-lora")
        named[name] = folder
    try:
        from sftune.serve.server import serve
    except ImportError as err:
        raise UserError(f"serving needs the 'serve' extra ({err.name} is missing): pip install 'sftune[serve]'") from None
    serve(run_or_model, host=host, port=port, api_key=api_key, adapters=named, max_batch_size=max_batch_size,
          template=template, template_kwargs=template_kwargs(kwargs),
          max_body_mb=max_body_mb, body_timeout_s=body_timeout,
          header_timeout_s=header_timeout, console=console)
