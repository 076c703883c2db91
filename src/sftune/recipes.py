"""The one way into training: `train(config)` loads and checks the configuration, then runs its stage's recipe,
two peers on the floor below: `stage: sft` (sftune.training.recipe) and `stage: preference` (DPO, IPO, SimPO,
ORPO: sftune.preference.recipe). `sftune train` and `sftune.train` both call it."""

from __future__ import annotations

import os

import torch
from transformers import TrainerCallback

from sftune.config import Config, load
from sftune.preference.recipe import train_preference
from sftune.training.arguments import check_report_to
from sftune.training.data import check_data_paths
from sftune.training.kernels import check_kernels
from sftune.training.recipe import train_sft
from sftune.training.run import TrainResult

RECIPES = {"sft": train_sft, "preference": train_preference}


def train(
    config: Config | str | os.PathLike | dict,
    overrides: list[str] | None = None,
    *,
    console=None,
    callbacks: list[TrainerCallback] | None = None,
) -> TrainResult:
    """Run one training from a Config, a YAML path or a dict; write the run folder; return it.

    `callbacks`: extra `transformers.TrainerCallback`s (instances or classes), run after sftune's own
    (checkpoint marker, metrics file, progress bar, early stopping) at every event of the Trainer.
    """
    from rich.console import Console

    cfg = config if isinstance(config, Config) else load(config, overrides)
    check_report_to(cfg.train.report_to)  # a missing logger package, before anything is loaded
    check_kernels(cfg.train.kernels, cuda=torch.cuda.is_available())  # liger: installed, on CUDA
    check_data_paths(cfg)  # and a missing data file
    return RECIPES[cfg.stage](cfg, console=console or Console(), callbacks=callbacks)
