"""The configuration mapped onto TrainingArguments: micro-batches."""

from __future__ import annotations

import pytest


def test_micro_batch_size_splits_the_step_without_changing_it():
    """On a CPU with packing one packed row goes through the model at a time and the rest of
    batch_size is accumulated; a micro-batch that does not divide batch_size is a clear error."""
    from sftune.config import Config, ConfigError
    from sftune.training.arguments import micro_batch_size

    t = Config.model_validate({"train": {"batch_size": 6}}).train
    assert micro_batch_size(t, packing=True, cuda=False) == 1
    assert micro_batch_size(t, packing=True, cuda=True) == 6
    assert micro_batch_size(t, packing=False, cuda=False) == 6
    t = Config.model_validate({"train": {"batch_size": 6, "micro_batch_size": 3}}).train
    assert micro_batch_size(t, packing=True, cuda=False) == 3
    t = Config.model_validate({"train": {"batch_size": 6, "micro_batch_size": 4}}).train
    with pytest.raises(ConfigError, match="must divide train.batch_size=6"):
        micro_batch_size(t, packing=True, cuda=False)


@pytest.mark.parametrize("keep_best, metric, greater", [(True, "eval_loss", False), ("loss", "eval_loss", False),
                                                        ("rougeL", "eval_rougeL", True), ("bleu", "eval_bleu", True)])
def test_keep_best_chooses_by_loss_or_by_a_generation_metric(tmp_path, keep_best, metric, greater):
    """Trainer keeps the checkpoint with the lowest eval loss, or the highest score of generated answers."""
    from sftune import config
    from sftune.training.arguments import training_arguments

    cfg = config.load(None, [f"eval.keep_best={keep_best}", "eval.generate_metrics=[rouge, bleu]", "eval.steps=2",
                             "train.save_steps=2"])
    args = training_arguments(cfg, tmp_path, precision="fp32", has_eval=True, packing=True)
    assert (args.metric_for_best_model, args.greater_is_better, args.load_best_model_at_end) == (metric, greater, True)


@pytest.mark.parametrize("logger, package", [("tensorboard", "tensorboard"), ("wandb", "wandb"), ("flyte", "flytekit")])
def test_a_logger_without_its_package_is_a_user_error_naming_it(tmp_path, monkeypatch, logger, package):
    """train.report_to=[tensorboard] without the package: exit 2 and the pip command, before anything loads
    (not transformers' RuntimeError when the Trainer starts, which sftune reports as a bug)."""
    from transformers.integrations import integration_utils
    from typer.testing import CliRunner

    from sftune.cli import app
    from sftune.config import ConfigError
    from sftune.training.arguments import check_report_to

    check = {"flyte": "is_flytekit_available"}.get(logger, f"is_{logger}_available")
    monkeypatch.setattr(integration_utils, check, lambda: False)
    message = f"train.report_to: {logger} needs the {package} package.*pip install {package}"
    with pytest.raises(ConfigError, match=message):
        check_report_to(["none", logger])
    path = tmp_path / "run.yaml"
    path.write_text(f"model:\n  name: {tmp_path / 'no-model'}\ndata:\n  train: a.jsonl\n")
    result = CliRunner().invoke(app, ["train", str(path), f"train.report_to=[{logger}]",
                                      f"output.dir={tmp_path / 'run'}"], env={"COLUMNS": "200"})
    assert result.exit_code == 2, result.output
    assert f"pip install {package}" in result.output and "bug" not in result.output
    with pytest.raises(ConfigError, match="'tensorbord' is not a logger transformers knows"):
        check_report_to(["tensorbord"])


def test_installed_loggers_pass(monkeypatch):
    from transformers.integrations import integration_utils

    from sftune.training.arguments import check_report_to

    monkeypatch.setattr(integration_utils, "is_tensorboard_available", lambda: True)
    check_report_to(["tensorboard"])
    check_report_to(["none"])


def test_fast_defaults_on_cuda_and_the_cpus_own():
    """On a CUDA GPU: transformers' fused AdamW, TF32 from Ampere (8.0) on, dataloader workers; on the CPU the
    plain AdamW loop, torch's TF32 setting and no workers. A configured value always wins."""
    from sftune.training.arguments import dataloader_workers, optimizer, tf32

    assert optimizer("auto", cuda=True) == "adamw_torch_fused" and optimizer("auto", cuda=False) == "adamw_torch"
    assert optimizer("adamw_8bit", cuda=True) == "adamw_8bit"
    assert [tf32(True, c) for c in ((7, 0), (7, 5), (8, 0), (9, 0))] == [None, None, True, True]
    assert tf32(False, None) is None
    assert dataloader_workers(None, cuda=True, cpus=16, local_processes=1) == 4
    assert dataloader_workers(None, cuda=True, cpus=16, local_processes=8) == 1
    assert dataloader_workers(None, cuda=True, cpus=2, local_processes=2) == 0
    assert dataloader_workers(None, cuda=False, cpus=64, local_processes=1) == 0
    assert dataloader_workers(3, cuda=False, cpus=2, local_processes=1) == 3


def test_cpu_arguments_keep_the_cpu_defaults(tmp_path):
    from sftune import config
    from sftune.training.arguments import training_arguments

    args = training_arguments(config.load(None), tmp_path, precision="fp32", has_eval=False, packing=True)
    assert (args.optim, args.tf32, args.dataloader_num_workers, args.dataloader_pin_memory) == \
        ("adamw_torch", None, 0, False)
    assert not args.accelerator_config.non_blocking
