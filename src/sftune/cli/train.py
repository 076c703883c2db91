"""sftune models | demo | train."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from sftune import models
from sftune.cli.common import app, console


@app.command("models")
def models_command() -> None:
    """List the embedded models (real pretrained models that ship as PyPI packages)."""
    from rich.markup import escape

    table = Table(title="Embedded models (use the name wherever a model is asked for)")
    # The name is what the user types: it is never cut; the description under it wraps instead.
    table.add_column("name", min_width=max(len(name) for name in models.EMBEDDED) + 2, ratio=1)
    for column in ("size", "licence", "installed", "cached"):
        table.add_column(column)
    for spec in models.EMBEDDED.values():
        cached = models.is_materialized(spec.name)
        default = " (default)" if spec.name == models.DEFAULT_MODEL else ""
        table.add_row(
            f"[bold]{spec.name}[/bold]{default}\n[dim]{escape(spec.description)}[/dim]",
            spec.size,
            spec.license,
            "yes" if spec.installed() else f"no: {spec.install}",
            "yes" if cached else "no",
        )
    console.print(table)
    console.print(f"Cache: {models.sftune_home() / 'models'} (set SFTUNE_HOME to move it)")


@app.command("demo")
def demo_command(
    config: Optional[str] = typer.Argument(None, help="A demo config (default: the embedded SmolLM2 + LoRA one)."),
    overrides: Optional[list[str]] = typer.Argument(None, help="key=value overrides, e.g. train.epochs=1"),
    method: Optional[str] = typer.Option(
        None, "--method", help="train with another method: full, freeze, lora, qlora, prompt_tuning, prefix_tuning, "
        "p_tuning_v2 (run folder runs/demo-METHOD)"),
    preference: bool = typer.Option(False, "--preference", help="the preference demo (DPO after the SFT demo; "
                                    "run folder runs/demo-dpo)"),
    vision: bool = typer.Option(False, "--vision", help="the image demo instead: a tiny vision-language model "
                                "learns the colour and shape of drawn figures (runs/demo-vision, a few CPU minutes)"),
) -> None:
    """The main job: SFT on a generated Chinese + English task, held-out metric before and after."""
    from sftune import demo

    if vision:
        from sftune.vision import demo as vision_demo

        vision_demo.run(Path("runs/demo-vision"), console=console)
        return

    if config and "=" in config and not Path(config).exists():  # `sftune demo train.max_steps=10`
        overrides, config = [config, *(overrides or [])], None
    if preference:
        from sftune.preference import demo as preference_demo

        preference_demo.run(([config] if config else []) + list(overrides or []), console=console)
        return
    demo.run(config, overrides or [], method=method, console=console)


@app.command("train")
def train_command(
    config: str = typer.Argument(..., help="The YAML configuration (see examples/)."),
    overrides: Optional[list[str]] = typer.Argument(None, help="key=value overrides, e.g. train.lr=1e-4 method.r=8"),
    print_config: bool = typer.Option(False, "--print-config", help="Print the resolved configuration and exit."),
) -> None:
    """Fine-tune a model as the configuration says; writes the run folder (output.dir)."""
    from sftune import config as config_module

    cfg = config_module.load(config, overrides or [])
    if print_config:
        typer.echo(config_module.to_yaml(cfg), nl=False)
        return
    from sftune.recipes import train  # the training stack, imported only to train

    _warn_if_too_big(cfg)
    result = train(cfg, console=console)
    s = result.summary
    if os.environ.get("RANK", "0") != "0":  # several processes (torchrun, accelerate launch): the first one reports
        return
    console.print(f"Done: {s['steps']} steps, {s['trained_tokens']} trained tokens "
                  f"({s['trained_tokens_per_second']:.0f}/s), run folder {result.run_dir}")


@app.command("config-schema")
def config_schema_command(
    out: Optional[Path] = typer.Option(None, "--output", "-o", help="Write the schema to this file (default: print it)."),
) -> None:
    """Print the JSON schema of the training configuration, for editors (docs/training.md: editor support)."""
    import json

    from sftune.config import json_schema

    text = json.dumps(json_schema(), indent=2, ensure_ascii=False) + "\n"
    if out is None:
        typer.echo(text, nl=False)
        return
    out.write_text(text, encoding="utf-8")
    console.print(f"Wrote {out}")


def _warn_if_too_big(cfg) -> None:
    """One yellow line, before anything is loaded, when the run's estimated peak memory exceeds the device's."""
    from sftune import estimate

    try:
        warning = estimate.fit_warning(cfg)
    except Exception as err:  # noqa: BLE001 - the estimate never stops a run; say it was not made
        console.print(f"[dim]memory estimate skipped: {err}[/dim]", highlight=False)
        return
    if warning:
        console.print(f"[yellow]warning: {warning}[/yellow]", highlight=False)
