"""SFTTrainer with a preference loss: the same optimizer, checkpoints, resume, non-finite stop and progress
bar; per optimizer step the loss is the mean over the step's pairs (all micro-batches, all processes).

Logged with each loss: rewards/chosen, rewards/rejected, rewards/margins, rewards/accuracies (the share
of pairs whose chosen reward is higher), logps/chosen, logps/rejected; held-out the same, prefixed eval_.
The metrics are summed on the device and read at logging time: no host sync per micro-batch.
"""

from __future__ import annotations

from typing import Iterator

import torch

from sftune.preference.batches import SEQUENCE_TOKENS
from sftune.preference.losses import Settings, pair_losses
from sftune.preference.logps import sequence_logps
from sftune.training.trainer import SFTTrainer

METRICS = ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies", "logps/chosen",
           "logps/rejected")


class PreferenceTrainer(SFTTrainer):
    """See the module docstring; `settings` is the loss and its parameters."""

    def __init__(self, *args, settings: Settings, **kwargs):
        super().__init__(*args, **kwargs)
        self.settings = settings
        self._sums: torch.Tensor | None = None  # metric sums and the pair count, on the device, since the last log

    def get_batch_samples(self, epoch_iterator: Iterator, num_batches: int, device: torch.device):
        batches, _ = super().get_batch_samples(epoch_iterator, num_batches, device)  # counts trained tokens
        if not batches:
            return batches, None
        pairs = sum(pair_count(b) for b in batches)  # an int the host knows: shapes only
        if self.accelerator.num_processes > 1:
            pairs = self.accelerator.reduce(torch.tensor(pairs, device=device), reduction="sum")
        return batches, pairs

    def pair_losses(self, model, batch):
        """(loss per pair, chosen rewards, rejected rewards, chosen log-probs, rejected log-probs)."""
        sums, tokens = sequence_logps(model, batch)
        half = sums.shape[0] // 2
        losses, chosen_rewards, rejected_rewards = pair_losses(
            self.settings, sums[:half], sums[half:], tokens[:half], tokens[half:],
            batch.get("ref_chosen"), batch.get("ref_rejected"))
        return losses, chosen_rewards, rejected_rewards, sums[:half].detach(), sums[half:].detach()

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        losses, chosen_r, rejected_r, chosen_lp, rejected_lp = self.pair_losses(model, inputs)
        if model.training:
            self._sums = self._record(self._sums, chosen_r, rejected_r, chosen_lp, rejected_lp)
        if num_items_in_batch is None:
            loss = losses.mean()
        else:
            loss = losses.sum() * self.accelerator.num_processes / num_items_in_batch
        return (loss, None) if return_outputs else loss

    @staticmethod
    def _record(sums: torch.Tensor | None, chosen_r, rejected_r, chosen_lp, rejected_lp) -> torch.Tensor:
        """`sums` plus one batch's metric sums and pair count, added on the metrics' device (read when logged)."""
        values = (chosen_r, rejected_r, chosen_r - rejected_r, (chosen_r > rejected_r), chosen_lp, rejected_lp)
        batch = torch.stack([v.detach().double().sum() for v in values]
                            + [torch.full((), len(chosen_r), dtype=torch.float64, device=chosen_r.device)])
        return batch if sums is None else sums + batch

    def _averages(self, sums: torch.Tensor, prefix: str = "") -> dict[str, float]:
        if self.accelerator.num_processes > 1:
            sums = self.accelerator.reduce(sums.to(self.args.device), reduction="sum")
        sums = sums.cpu()
        count = max(float(sums[-1]), 1.0)
        return {f"{prefix}{name}": round(float(value) / count, 6) for name, value in zip(METRICS, sums[:-1])}

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval") -> dict[str, float]:
        """Held-out preference loss and the reward metrics, each held-out pair counted once over all processes
        (SFTTrainer.held_out_batches)."""
        self._pause_clock()
        model = self.model
        was_training = model.training
        model.eval()
        sums, loss_sum = None, 0.0  # metric sums and the pair count, and the summed loss, on the device
        with torch.no_grad():
            for batch, counts in self.held_out_batches(eval_dataset):
                with self.compute_loss_context_manager():
                    losses, chosen_r, rejected_r, chosen_lp, rejected_lp = self.pair_losses(model, batch)
                if counts:
                    sums = self._record(sums, chosen_r, rejected_r, chosen_lp, rejected_lp)
                    loss_sum = loss_sum + losses.double().sum()
        sums = torch.zeros(len(METRICS) + 2, dtype=torch.float64) if sums is None else \
            torch.cat([sums, torch.as_tensor(loss_sum, dtype=torch.float64, device=sums.device).reshape(1)])
        if self.accelerator.num_processes > 1:
            sums = self.accelerator.reduce(sums.to(self.args.device), reduction="sum")
        sums = sums.cpu()
        model.train(was_training)
        count = max(float(sums[-2]), 1.0)
        metrics = {f"{metric_key_prefix}_{name}": round(float(v) / count, 6) for name, v in zip(METRICS, sums)}
        metrics[f"{metric_key_prefix}_loss"] = float(sums[-1]) / count
        metrics[f"{metric_key_prefix}_pairs"] = int(sums[-2])
        self.log(dict(metrics))
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs and self._sums is not None:
            logs.update(self._averages(self._sums))
            self._sums = None
        super().log(logs, start_time)


def pair_count(batch: dict[str, torch.Tensor]) -> int:
    """How many pairs a batch holds, from tensor shapes (known to the host without waiting for the device)."""
    if "ref_chosen" in batch:
        return len(batch["ref_chosen"])
    if SEQUENCE_TOKENS in batch:
        return len(batch[SEQUENCE_TOKENS]) // 2
    return int(batch["sequence_ids"].max() + 1) // 2  # a batch from elsewhere: one read of the device
