"""sftune estimate: the peak memory per device a training configuration needs, before any run."""

from __future__ import annotations

from typing import Optional

import typer
from rich.table import Table

from sftune.cli.common import app, console


@app.command("estimate")
def estimate_command(
    config: str = typer.Argument(..., help="The training YAML configuration (see examples/)."),
    overrides: Optional[list[str]] = typer.Argument(None, help="key=value overrides, e.g. train.micro_batch_size=8"),
    gpus: Optional[int] = typer.Option(None, "--gpus", min=1, help="devices the run is spread over (GPUs); "
                                       "default: one GPU if this machine has one, else the CPU"),
    sharding: str = typer.Option("none", "--sharding", help="none | ddp | zero2 | zero3 | fsdp"),
    offload: bool = typer.Option(False, "--offload", help="optimizer states (zero3/fsdp: also weights) on the CPU"),
    memory: Optional[float] = typer.Option(None, "--memory", min=0.01, help="GiB per device to fit "
                                           "(default: this GPU's memory, else the RAM available now)"),
) -> None:
    """Predict the peak memory per device of a run (weights, gradients, optimizer states, activations,
    logits) without loading the model, and the largest micro-batch that fits."""
    from sftune import config as config_module
    from sftune import estimate

    cfg = config_module.load(config, overrides or [])
    device = estimate.resolve_device(gpus)
    options = {"gpus": gpus or 1, "sharding": sharding, "offload": offload, "device": device}
    shape = estimate.model_shape(estimate.model_config(cfg.model.name, cfg.model.trust_remote_code))
    est = estimate.estimate(cfg, shape, **options)
    if memory is not None:
        available, what = int(memory * estimate.GiB), "given with --memory"
    elif device == "cuda" and not estimate.gpu_present():
        available, what = None, ""
    else:
        available, what = estimate.device_memory(device)
    fits = None if available is None else estimate.largest_micro_batch(cfg, shape, available, **options)
    console.print(_table(est, cfg, gpus or 1, sharding, offload))
    if available is None:
        console.print(f"Peak per device: [bold]{est.total / estimate.GiB:.2f} GiB[/bold]. There is no GPU here to "
                      "compare with: give its memory, e.g. --memory 80, to see whether it fits and the largest "
                      "micro-batch that does.")
        return
    verdict = "[green]fits[/green]" if est.total <= available else "[red]does not fit[/red]"
    console.print(f"Peak per device: [bold]{est.total / estimate.GiB:.2f} GiB[/bold], {verdict} in "
                  f"{available / estimate.GiB:.1f} GiB ({what}).")
    unit = "packed rows" if cfg.data.packing else "sequences"
    if fits:
        console.print(f"Largest micro-batch that fits: {fits} {unit} of {cfg.data.max_len} tokens "
                      f"(train.micro_batch_size={fits}).")
    else:
        console.print("Not even a micro-batch of 1 fits: turn on train.gradient_checkpointing, shorten data.max_len, "
                      "use method lora or qlora, or shard over more devices (--gpus, --sharding zero3).")
    for note in est.notes:
        console.print(f"[dim]note: {note}[/dim]")


def _table(est, cfg, gpus: int, sharding: str, offload: bool) -> Table:
    from sftune.estimate import GiB

    title = (f"{cfg.method.name} on {cfg.model.name}: {est.micro_batch} x {cfg.data.max_len} tokens per micro-batch, "
             f"{est.precision} (weights {est.weights_dtype}), "
             f"{'checkpointing' if cfg.train.gradient_checkpointing else 'no checkpointing'}, "
             f"{gpus} {'GPU' if est.device == 'cuda' else 'CPU process'}{'s' if gpus > 1 else ''}, "
             f"sharding {sharding}{' + offload' if offload else ''}")
    table = Table(title=title)
    table.add_column("part")
    table.add_column("per device (GiB)", justify="right")
    table.add_column("held")
    for part, size in est.parts.items():
        table.add_row(part, f"{size / GiB:.3f}", _held(part, est.accumulating))
    for phase, size in est.phases.items():
        table.add_row(f"[dim]at the {phase}[/dim]", f"[dim]{size / GiB:.3f}[/dim]", "")
    table.add_row("[bold]peak (the larger)[/bold]", f"[bold]{est.total / GiB:.3f}[/bold]", "")
    for part, size in est.host.items():
        table.add_row(f"[dim]{part} (on the CPU)[/dim]", f"[dim]{size / GiB:.3f}[/dim]", "")
    table.caption = f"trainable parameters {est.trainable:,} of {est.total_params:,}"
    return table


def _held(part: str, accumulating: bool) -> str:
    if part in ("activations", "logits and loss"):
        return "forward and backward"
    if part == "optimizer step" or (part in ("gradients", "DDP gradient buckets") and not accumulating):
        return "optimizer step"
    return "throughout"
