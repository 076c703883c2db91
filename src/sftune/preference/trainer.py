"""SFTTrainer with a preference loss: the same optimizer, checkpoints, resume, non-finite stop and progress
bar; per optimizer step the loss is the mean over the step's pairs (all micro-batches, all processes).

Logged with each loss: rewards/chosen, rewards/rejected, rewards/margins, rewards/accuracies (the share
of pairs whose chosen reward is higher), logps/chosen, logps/rejected; held-out the same, prefixed eval_.
"""

from __future__ import annotations

from typing import Iterator

import torch

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
        self._sums = torch.zeros(len(METRICS) + 1, dtype=torch.float64)  # metric sums and the pair count

    def get_batch_samples(self, epoch_iterator: Iterator, num_batches: int, device: torch.device):
        batches, _ = super().get_batch_samples(epoch_iterator, num_batches, device)  # counts trained tokens
        if not batches:
            return batches, None
        pairs = torch.tensor(sum(len(b["ref_chosen"]) if "ref_chosen" in b else int(b["sequence_ids"].max() + 1) // 2
                                 for b in batches), device=device)
        if self.accelerator.num_processes > 1:
            pairs = self.accelerator.reduce(pairs, reduction="sum")
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
            self._record(self._sums, chosen_r, rejected_r, chosen_lp, rejected_lp)
        if num_items_in_batch is None:
            loss = losses.mean()
        else:
            loss = losses.sum() * self.accelerator.num_processes / num_items_in_batch
        return (loss, None) if return_outputs else loss

    @staticmethod
    def _record(sums, chosen_r, rejected_r, chosen_lp, rejected_lp) -> None:
        values = (chosen_r, rejected_r, chosen_r - rejected_r, (chosen_r > rejected_r).double(), chosen_lp,
                  rejected_lp)
        sums[:-1] += torch.stack([v.double().sum().cpu() for v in values])
        sums[-1] += len(chosen_r)

    def _averages(self, sums: torch.Tensor, prefix: str = "") -> dict[str, float]:
        if self.accelerator.num_processes > 1:
            sums = self.accelerator.reduce(sums.to(self.args.device), reduction="sum").cpu()
        count = max(float(sums[-1]), 1.0)
        return {f"{prefix}{name}": round(float(value) / count, 6) for name, value in zip(METRICS, sums[:-1])}

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval") -> dict[str, float]:
        """Held-out preference loss and the reward metrics over every held-out pair."""
        self._pause_clock()
        dataloader = self.get_eval_dataloader(eval_dataset)
        model = self.model
        was_training = model.training
        model.eval()
        sums = torch.zeros(len(METRICS) + 1, dtype=torch.float64)  # metric sums and the pair count
        loss_sum = torch.zeros(1, dtype=torch.float64)
        with torch.no_grad():
            for batch in dataloader:
                batch = self._prepare_inputs(batch)
                with self.compute_loss_context_manager():
                    losses, chosen_r, rejected_r, chosen_lp, rejected_lp = self.pair_losses(model, batch)
                self._record(sums, chosen_r, rejected_r, chosen_lp, rejected_lp)
                loss_sum += losses.double().sum().cpu()
        sums = torch.cat([sums, loss_sum])
        if self.accelerator.num_processes > 1:
            sums = self.accelerator.reduce(sums.to(self.args.device), reduction="sum").cpu()
        model.train(was_training)
        count = max(float(sums[-2]), 1.0)
        metrics = {f"{metric_key_prefix}_{name}": round(float(v) / count, 6) for name, v in zip(METRICS, sums)}
        metrics[f"{metric_key_prefix}_loss"] = float(sums[-1]) / count
        metrics[f"{metric_key_prefix}_pairs"] = int(sums[-2])
        self.log(dict(metrics))
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs and self._sums[-1] > 0:
            logs.update(self._averages(self._sums))
            self._sums.zero_()
        super().log(logs, start_time)
