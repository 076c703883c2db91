"""`sftune template`: list the chat templates, render data with one."""

from __future__ import annotations

from typing import Optional

import typer
from rich.table import Table

from sftune import models
from sftune.cli.common import FORMAT, app, console

template_app = typer.Typer(help="Chat templates: list them, render data with them.", no_args_is_help=True)
app.add_typer(template_app, name="template")


def template_for(name: Optional[str], tokenizer, kwargs: Optional[dict] = None):
    """Template `name` for `tokenizer` with its switches `kwargs`; without a name, the tokenizer's own (chatml
    without a tokenizer)."""
    from sftune import templates

    return templates.get(name, tokenizer, kwargs)


@template_app.command("list")
def template_list_command() -> None:
    """List the chat templates (`tokenizer` is the model's own jinja chat_template)."""
    from sftune import templates

    table = Table(title="Chat templates (--template NAME)")
    table.add_column("name")
    table.add_column("layout")
    from rich.markup import escape

    for name, spec in templates.BUILTINS.items():
        table.add_row(name, escape(spec["description"]))
    table.add_row(templates.TOKENIZER, "the model's own jinja chat_template (default when it has one)")
    console.print(table)


@template_app.command("render")
def template_render_command(
    path: list[str] = typer.Argument(..., help="Data files (any format the data layer reads)."),
    template: str = typer.Option(..., "--template", "-t", help="Template name (sftune template list)."),
    generation_prompt: bool = typer.Option(
        False, "--generation-prompt", help="Leave out the final reply and end with the generation prompt."
    ),
    model: Optional[str] = typer.Option(None, help="Model whose tokenizer gives BOS/EOS (needed for 'tokenizer')."),
    format: Optional[str] = FORMAT,
) -> None:
    """Print one JSON line {"text": ...} per record, rendered with the template."""
    import json

    from sftune.data import MODEL_ROLES, read
    from sftune.data.errors import where
    from sftune.templates import TemplateError

    tokenizer = models.load(model, tokenizer_only=True)[1] if model else None
    chosen = template_for(template, tokenizer)
    for conversation in read(path, format=format, syntax="cli"):
        messages = conversation.messages
        if generation_prompt:
            while messages and messages[-1].role in MODEL_ROLES:
                messages = messages[:-1]
        try:
            text = chosen.render(messages, tools=conversation.tools, add_generation_prompt=generation_prompt)
        except TemplateError as err:
            raise TemplateError(f"{where(conversation.meta)}: {err}") from None
        print(json.dumps({"text": text}, ensure_ascii=False))
