"""Training: the SFT recipe and the helpers it shares with the preference recipe (sftune.preference).

    recipe.py       one SFT run top to bottom: model, data, method, trainer, run folder (stage: sft)
    run.py          what the SFT and preference recipes share: start or resume, weights dtype, packing, the result
    data.py         data.train / data.eval read, mixed, split, encoded, batched
    loss.py         chunked cross-entropy (or another token loss) on trained positions
    objectives/     train.loss: gem, dft, phi, chord (one module each)
    trainer.py      the Trainer subclass: one normalization per optimizer step, evaluation, resume
    arguments.py    the configuration mapped onto transformers.TrainingArguments
    checkpoints.py  the checkpoint-complete marker and the last complete checkpoint
    callbacks.py    metrics.jsonl and the progress bar
    plot.py         curves.png

`train(config)` (sftune.train, defined in sftune.recipes) runs whichever stage the configuration names.
"""

from sftune.training.run import TrainResult
from sftune.training.trainer import NonFiniteLossError, SFTTrainer

__all__ = ["train", "TrainResult", "NonFiniteLossError", "SFTTrainer"]


def __getattr__(name: str):
    # `from sftune.training import train`: the stage dispatch above both recipes, imported when first asked for
    if name == "train":
        from sftune.recipes import train

        return train
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
