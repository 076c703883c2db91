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
