"""Training: `train(config)` runs one SFT run and writes its run folder.

    recipe.py       the run top to bottom: model, data, method, trainer, run folder
    run.py          what the SFT and preference recipes share: start or resume, weights dtype, the result
    data.py         data.train / data.eval read, mixed, split, encoded, batched
    loss.py         chunked cross-entropy (or another token loss) on trained positions
    objectives/     train.loss: gem, dft, phi, chord (one module each)
    trainer.py      the Trainer subclass: one normalization per optimizer step, evaluation, resume
    arguments.py    the configuration mapped onto transformers.TrainingArguments
    checkpoints.py  the checkpoint-complete marker and the last complete checkpoint
    callbacks.py    metrics.jsonl and the progress bar
    plot.py         curves.png
"""

from sftune.training.recipe import train
from sftune.training.run import TrainResult
from sftune.training.trainer import NonFiniteLossError, SFTTrainer

__all__ = ["train", "TrainResult", "NonFiniteLossError", "SFTTrainer"]
