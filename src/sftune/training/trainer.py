"""`transformers.Trainer` with the SFT loss: one normalization per optimizer step, over every
micro-batch of the gradient accumulation and every process; token-level evaluation; a non-finite
loss that stops all processes together; trained-token bookkeeping and exact resume of every method.

Everything else (optimizer, schedules, mixed precision, gradient checkpointing, checkpoints and
resume, DDP / FSDP / DeepSpeed through accelerate, reporting) is `transformers.Trainer`'s own.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from torch.utils.data import DataLoader
from peft.helpers import disable_input_dtype_casting
from transformers import Trainer, TrainerCallback
from transformers.trainer_callback import PrinterCallback
from transformers.trainer_utils import get_last_checkpoint
from transformers.utils import logging

from sftune.distributed import shards_weights
from sftune.errors import UserError
from sftune.training.checkpoints import last_checkpoint
from sftune.training.loss import (
    TRAINED_INDEX,
    count_trained_tokens,
    linear_token_loss,
    token_stats,
    trained_hidden_states,
)
from sftune.training.objectives import Objective, chord

logger = logging.get_logger(__name__)

# Prompt-learning adapters as they are in training (prefix_tuning's projection MLP included), for resume.
TRAINABLE_STATE = "sftune_trainable.safetensors"
PROGRESS = "sftune_progress.json"  # trained tokens, training and wall-clock seconds so far, for resume


class NonFiniteLossError(UserError, RuntimeError):
    """The training loss became NaN or infinite."""


def first_non_finite(record: torch.Tensor | None, loss: torch.Tensor, step: int) -> torch.Tensor:
    """[step, loss] of the first NaN or infinite loss seen ([0, 0] while none), updated with one micro-batch's
    loss on the loss's device: no host sync in the training loop (non_finite_processes reads it)."""
    value = loss.detach().float().reshape(1)
    current = torch.cat([torch.full_like(value, step), value])
    record = torch.zeros_like(current) if record is None else record
    return torch.where(~torch.isfinite(value[0]) & (record[0] == 0), current, record)


def non_finite_processes(record: torch.Tensor | None, accelerator) -> list[tuple[int, int, float]]:
    """(process index, step, loss) of every process whose loss became NaN or infinite (its first_non_finite
    record), the same list on every process: all of them stop together, where one stopping alone would leave
    the others waiting in their next collective operation. One gather and one host sync."""
    records = (torch.zeros(2, device=accelerator.device) if record is None else record).reshape(1, 2)
    if accelerator.num_processes > 1:
        records = accelerator.gather(records)
    return [(rank, int(step), value) for rank, (step, value) in enumerate(records.tolist()) if step]


def held_out_share(items: int, batch_size: int, rank: int, processes: int) -> list[tuple[list[int], bool]]:
    """This process's held-out batches (item indices), each with whether it counts. The set is cut into consecutive
    batches as one process cuts it, dealt to the processes in turn; each process runs as many batches as the busiest
    (a model split over processes needs every forward on every process), a missing one as a repeat of the first
    batch that counts for nothing. accelerate's even batches would instead repeat items that are then counted twice.
    """
    batches = [list(range(start, min(start + batch_size, items))) for start in range(0, items, batch_size)]
    mine = batches[rank::processes]
    rounds = -(-len(batches) // processes)
    return [(b, True) for b in mine] + [(batches[0], False) for _ in range(rounds - len(mine))]


class SFTTrainer(Trainer):
    """`transformers.Trainer` with the SFT loss, token-level evaluation, a non-finite check agreed by
    all processes, trained-token bookkeeping and exact resume of every method.

    Per optimizer step: loss = sum of (weighted) token losses / trained tokens in the step, where
    the count covers all accumulated micro-batches and all processes. Each process's
    contribution is multiplied by the number of processes because DDP averages gradients.
    """

    # compute_loss already divides by the whole step's token count: Trainer must not divide again.
    loss_is_scaled_for_ga = True

    def __init__(self, *args, objective: Objective | None = None,
                 batch_selector: Callable[[Any, dict], dict] | None = None,
                 generation_eval: Callable[[Any], dict[str, float]] | None = None, **kwargs):
        """`objective`: train.loss (default cross-entropy); `batch_selector`: (model, candidate batch) -> the batch to
        train on (train.batch_selection, sftune.training.selection); `generation_eval`: model -> {name: score} of
        generated answers, added to each evaluation (eval.generate_metrics)."""
        # first of sftune's callbacks: a checkpoint's extras are written before it is marked complete
        kwargs["callbacks"] = [CheckpointExtras(self), *(kwargs.get("callbacks") or [])]
        super().__init__(*args, **kwargs)
        self.remove_callback(PrinterCallback)  # the rich progress bar replaces it
        self.objective = objective or Objective()
        self.batch_selector = batch_selector
        self.generation_eval = generation_eval
        self._tokens_done = 0  # trained tokens over all processes, since the start of the run (resumes included)
        self._tokens_pending: torch.Tensor | int = 0  # counted on the device since trained_tokens was last read
        self._seconds_done = 0.0  # training time before the running stretch
        self._stretch_started = None  # perf_counter() when the running stretch began; None while paused
        self._wall_done = 0.0  # wall-clock seconds of the earlier train() calls of this run (resumes)
        self._train_started = None  # perf_counter() when the running train() call began
        self._objective_logs: dict[str, list[float]] = {}
        self._non_finite: torch.Tensor | None = None  # first_non_finite's record, checked at logs, saves, evaluations
        self._held_out: tuple | None = None  # (held-out set, its loader, held_out_share) of held_out_batches

    @property
    def trained_tokens(self) -> int:
        """Trained tokens over all processes since the start of the run (resumes included). A count still on the
        device is read here, at a log or a save, not once per optimizer step."""
        if isinstance(self._tokens_pending, torch.Tensor):
            self._tokens_done += int(self._tokens_pending)
            self._tokens_pending = 0
        return self._tokens_done + self._tokens_pending

    @trained_tokens.setter
    def trained_tokens(self, value: int) -> None:
        self._tokens_done, self._tokens_pending = value, 0

    @property
    def train_seconds(self) -> float:
        """Seconds spent training: from the first batch on, without evaluations and checkpoint saving;
        a resumed run goes on from the seconds its checkpoint recorded."""
        running = 0.0 if self._stretch_started is None else time.perf_counter() - self._stretch_started
        return self._seconds_done + running

    @property
    def wall_seconds(self) -> float:
        """Wall-clock seconds inside train(), evaluations and checkpoints included, resumes added up like
        train_seconds (which is a part of it: both clocks go on from the same checkpoint)."""
        running = 0.0 if self._train_started is None else time.perf_counter() - self._train_started
        return self._wall_done + running

    def _pause_clock(self) -> None:
        """Stop counting training time; the next batch fetched starts the clock again."""
        if self._stretch_started is not None:
            self._seconds_done += time.perf_counter() - self._stretch_started
            self._stretch_started = None

    def train(self, resume_from_checkpoint=None, trial=None, ignore_keys_for_eval=None, **kwargs):
        """Trainer.train, with the trained-token count and training time going on from a resumed checkpoint."""
        self.trained_tokens, self._seconds_done, self._stretch_started = 0, 0.0, None
        self._non_finite = None
        self._wall_done, self._train_started = 0.0, time.perf_counter()
        if resume_from_checkpoint is True:
            resume_from_checkpoint = get_last_checkpoint(self.args.output_dir) or True  # Trainer reports none
        if isinstance(resume_from_checkpoint, (str, os.PathLike)):
            self._restore_progress(Path(resume_from_checkpoint))
        try:
            return super().train(resume_from_checkpoint, trial, ignore_keys_for_eval, **kwargs)
        finally:
            self._pause_clock()
            self._wall_done, self._train_started = self.wall_seconds, None

    def _restore_progress(self, checkpoint: Path) -> None:
        path = checkpoint / PROGRESS
        if not path.is_file():
            logger.warning(f"{checkpoint} has no {PROGRESS} (saved by an older sftune): trained_tokens and "
                           "tokens per second will count this session only")
            return
        progress = json.loads(path.read_text(encoding="utf-8"))
        self.trained_tokens, self._seconds_done = int(progress["trained_tokens"]), float(progress["train_seconds"])
        # a checkpoint saved by an older sftune has no wall clock: its training time is the least the wall was
        self._wall_done = float(progress.get("wall_seconds", progress["train_seconds"]))

    # Which batches make one optimizer step, and how many trained tokens they hold in total.
    def get_batch_samples(self, epoch_iterator: Iterator, num_batches: int, device: torch.device):
        if self._stretch_started is None:
            self._stretch_started = time.perf_counter()
        batches = []
        for _ in range(num_batches):
            try:
                batches.append(next(epoch_iterator))
            except StopIteration:
                break
        if not batches:
            return batches, None
        if self.batch_selector is not None:  # the model is the same for all micro-batches of a step
            for batch in batches:  # positions of the candidate batch: the selected one counts its own
                batch.pop(TRAINED_INDEX, None)
            batches = [self.batch_selector(self.model_wrapped, batch) for batch in batches]
        count = count_trained_tokens(batches)  # an int from the collator's index: no host sync
        if self.accelerator.num_processes > 1:
            if not isinstance(count, torch.Tensor):  # pinned: the copy to the GPU does not wait for it
                count = torch.tensor(count)
                count = count.pin_memory() if device.type == "cuda" else count
            count = self.accelerator.reduce(count.to(device, non_blocking=True), reduction="sum")
        self._tokens_pending = self._tokens_pending + (count.detach() if isinstance(count, torch.Tensor) else count)
        if self.objective.chord is not None:
            self._attach_rollouts(batches, device)
        return batches, count

    def _attach_rollouts(self, batches: list[dict], device: torch.device) -> None:
        """CHORD: sample the step's on-policy answers, score them, and give each micro-batch its rollout row
        (advantage-weighted) and the step's sampled-token count (the GRPO term's denominator)."""
        o = self.objective
        c = o.chord
        model = self.accelerator.unwrap_model(self.model)
        synced = chord.synced_sampling(self.accelerator.num_processes, shards_weights())
        rows, sampled, rewards = chord.sample_rollouts(model, self.processing_class, batches, c, o.chord_reward,
                                                       list(o.stop_token_ids), synced_gpus=synced)
        sampled = torch.tensor(sampled, device=device)
        if self.accelerator.num_processes > 1:
            sampled = self.accelerator.reduce(sampled, reduction="sum")
        for batch, row in zip(batches, rows):
            if row is not None:
                batch["rollout"] = row
                batch["rollout_tokens"] = sampled.clone()
        mu = chord.mu_at(self.state.global_step, c.mu_peak, c.mu_valley, c.mu_warmup_steps, c.mu_decay_steps)
        self._objective_logs.setdefault("chord_mu", []).append(mu)
        if rewards:
            self._objective_logs.setdefault("chord_reward", []).append(sum(rewards) / len(rewards))

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        inputs = dict(inputs)
        rollout, rollout_tokens = inputs.pop("rollout", None), inputs.pop("rollout_tokens", None)
        states = trained_hidden_states(model, inputs)
        loss_sum = linear_token_loss(states.hidden, states.head, states.targets, states.weights,
                                     token_loss=self.objective.token_loss, logit_rule=states.logit_rule)
        in_training = num_items_in_batch is not None
        if not in_training:  # called outside the training loop: this batch alone
            num_items_in_batch = max(int(states.targets.numel()), 1)
            scale = 1
        else:
            scale = self.accelerator.num_processes  # DDP averages gradients over processes
        loss = loss_sum * scale / num_items_in_batch
        if self.objective.chord is not None and in_training:
            c = self.objective.chord
            mu = chord.mu_at(self.state.global_step, c.mu_peak, c.mu_valley, c.mu_warmup_steps, c.mu_decay_steps)
            loss = mu * loss
            if rollout is not None:  # advantage-weighted cross-entropy: the GRPO gradient at ratio 1
                h, t, w, head, rule, _ = trained_hidden_states(model, rollout)
                grpo_sum = linear_token_loss(h, head, t, w, logit_rule=rule)
                loss = loss + (1.0 - mu) * grpo_sum * scale / rollout_tokens.clamp(min=1)
        if states.aux_loss is not None:
            loss = loss + self._step_share(states.aux_loss, in_training)
        return (loss, None) if return_outputs else loss

    def _step_share(self, aux_loss: torch.Tensor, in_training: bool) -> torch.Tensor:
        """The router loss (coefficient included) of one micro-batch, as its share of the optimizer step.

        The model's router loss is a mean over its micro-batch, so the step's loss takes the mean over the
        step's micro-batches: each adds 1 / (its step's micro-batch count). It is not multiplied by the
        number of processes like the token loss (whose denominator counts every process's tokens): DDP's
        gradient average is already the mean over processes. Logged apart as `aux_loss`, the mean
        per micro-batch over the logging interval.
        """
        if not in_training:
            return aux_loss
        self._objective_logs.setdefault("aux_loss", []).append(aux_loss.detach())
        return aux_loss / self.current_gradient_accumulation_steps

    def training_step(self, model, inputs, num_items_in_batch=None):
        # peft's LoRA layers copy their input to the adapter's dtype (fp32) before the adapter's matmuls;
        # under autocast those matmuls cast it back to bf16, so in a training step the copy is wasted
        # (measured: aten::copy_ from 7.0% to 3.7% of a step). Outside it (generation in an evaluation,
        # without autocast) a bf16 input into fp32 adapter weights needs the copy: it stays on there.
        with disable_input_dtype_casting(model, active=self.accelerator.mixed_precision in ("bf16", "fp16")):
            loss = super().training_step(model, inputs, num_items_in_batch)
        self._non_finite = first_non_finite(self._non_finite, loss, self.state.global_step + 1)
        return loss

    def _stop_if_non_finite(self) -> None:
        """Raise NonFiniteLossError, on every process, if a loss became NaN or infinite on any since the training
        began. Checked where the Trainer syncs anyway (each log, checkpoint and evaluation), not per micro-batch:
        a checkpoint is never saved after a non-finite loss, and the run stops at the next logging step."""
        bad = non_finite_processes(self._non_finite, self.accelerator)
        if bad:
            last = last_checkpoint(self.args.output_dir)
            where = "" if self.accelerator.num_processes == 1 else (
                f" on process {', '.join(str(rank) for rank, _, _ in bad)} of {self.accelerator.num_processes}"
            )
            raise NonFiniteLossError(
                f"The loss became {bad[0][2]} at step {min(step for _, step, _ in bad)}{where}. "
                + (
                    f"Last good checkpoint: {last}; resume from it with a lower learning rate "
                    "(train.lr=...) or check the data."
                    if last
                    else "No checkpoint was saved before it; lower the learning rate (train.lr=...), "
                    "use fp32 (train.precision=fp32) or check the data."
                )
            )

    def held_out_batches(self, eval_dataset=None) -> Iterator[tuple[dict[str, Any], bool]]:
        """This process's held-out batches on its device, each with whether it counts (held_out_share): over all
        processes every held-out example counts once, in the batches one process would make."""
        dataset = self.eval_dataset if eval_dataset is None else eval_dataset
        if isinstance(dataset, str):
            dataset = self.eval_dataset[dataset]
        if self._held_out is None or self._held_out[0] is not dataset:  # kept: persistent workers start once
            a = self.args
            share = held_out_share(len(dataset), a.eval_batch_size, self.accelerator.process_index,
                                   self.accelerator.num_processes)
            workers = {} if not a.dataloader_num_workers else {
                "num_workers": a.dataloader_num_workers, "prefetch_factor": a.dataloader_prefetch_factor,
                "persistent_workers": a.dataloader_persistent_workers,
                "multiprocessing_context": a.dataloader_multiprocessing_context}
            loader = DataLoader(dataset, batch_sampler=[indices for indices, _ in share],
                                collate_fn=self.data_collator, pin_memory=a.dataloader_pin_memory, **workers)
            self._held_out = dataset, loader, share
        _, loader, share = self._held_out
        for batch, (_, counts) in zip(loader, share):
            yield self._prepare_inputs(batch), counts

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval") -> dict[str, float]:
        """Held-out loss (per trained token), perplexity and token accuracy, each held-out example counted once
        over all processes; and the generation metrics of eval.generate_metrics (every process generates the same
        examples)."""
        self._pause_clock()  # evaluation time is not training time
        self._stop_if_non_finite()
        model = self.model
        was_training = model.training
        model.eval()
        totals = torch.zeros(3, dtype=torch.float64)
        with torch.no_grad():
            for batch, counts in self.held_out_batches(eval_dataset):
                with self.compute_loss_context_manager():
                    hidden, targets, _, head, rule, _ = trained_hidden_states(model, batch)
                    loss, correct = token_stats(hidden, head, targets, logit_rule=rule)
                if counts:
                    totals += torch.tensor([loss, correct, targets.numel()], dtype=torch.float64)
        if self.accelerator.num_processes > 1:
            totals = self.accelerator.reduce(totals.to(self.args.device), reduction="sum").cpu()
        model.train(was_training)
        loss, correct, tokens = totals.tolist()
        tokens = max(tokens, 1.0)
        metrics = {
            f"{metric_key_prefix}_loss": loss / tokens,
            f"{metric_key_prefix}_perplexity": math.exp(min(loss / tokens, 50.0)),
            f"{metric_key_prefix}_token_accuracy": correct / tokens,
            f"{metric_key_prefix}_tokens": int(tokens),
        }
        if self.generation_eval is not None:
            metrics.update({f"{metric_key_prefix}_{k}": v for k, v in self.generation_eval(model).items()})
        self.log(dict(metrics))
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics

    def _before_save(self) -> None:
        """Before a checkpoint is written: saving is not training time, and no checkpoint of a diverged model."""
        self._pause_clock()
        self._stop_if_non_finite()

    def _save_extras(self, folder: Path) -> None:
        """Beside a checkpoint Trainer wrote: the progress for resume and, for prompt-learning adapters, the trained
        parameters as they are. peft saves those for inference (prefix_tuning folds its projection MLP into plain
        keys/values), which Trainer then cannot load back into the training model; sftune resumes from these."""
        progress = {"trained_tokens": self.trained_tokens, "train_seconds": self.train_seconds,
                    "wall_seconds": self.wall_seconds}
        (folder / PROGRESS).write_text(json.dumps(progress) + "\n", encoding="utf-8")
        if self._resumes_trainable_state():
            from safetensors.torch import save_file

            from sftune.methods import trainable_state

            save_file(trainable_state(self.model), folder / TRAINABLE_STATE)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        if not self._load_trainable_state(resume_from_checkpoint):
            super()._load_from_checkpoint(resume_from_checkpoint, model)

    def _load_best_model(self) -> None:
        if not self._load_trainable_state(self.state.best_model_checkpoint):
            super()._load_best_model()

    def _resumes_trainable_state(self) -> bool:
        """Prompt-learning adapters, outside FSDP / DeepSpeed (which keep their own model states)."""
        peft_config = getattr(self.model, "active_peft_config", None)
        sharded = self.is_fsdp_enabled or self.is_deepspeed_enabled
        return bool(peft_config is not None and peft_config.is_prompt_learning and not sharded)

    def _load_trainable_state(self, checkpoint: str | os.PathLike) -> bool:
        """Load sftune's saved training state of a prompt-learning adapter from `checkpoint`, if this
        model resumes that way and the file is there; False leaves it to Trainer."""
        path = Path(checkpoint) / TRAINABLE_STATE
        if not (self._resumes_trainable_state() and path.is_file()):
            return False
        from safetensors.torch import load_file

        from sftune.methods import load_trainable_state

        load_trainable_state(self.model, load_file(path))  # copied onto the parameters, wherever they are
        return True

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        self._stop_if_non_finite()
        if "loss" in logs:
            for name, values in self._objective_logs.items():
                logs[name] = round(float(sum(values) / len(values)), 4)  # aux_loss's values are tensors: one sync here
            self._objective_logs = {}
        if "loss" in logs and self.trained_tokens:
            logs["trained_tokens"] = self.trained_tokens
            logs["trained_tokens_per_second"] = round(self.trained_tokens / max(self.train_seconds, 1e-9), 2)
        super().log(logs, start_time)


class CheckpointExtras(TrainerCallback):
    """SFTTrainer's side of each checkpoint. Transformers has no event before a save: a save is due once the
    step's (or epoch's) end sets control.should_save, so the clock pauses and a non-finite loss stops the run
    there; after the save, on_save writes the progress and trainable state into the checkpoint folder (a save
    that an evaluation decides, with save_strategy=best, is preceded by that evaluation's own check)."""

    def __init__(self, trainer: SFTTrainer):
        self.trainer = trainer

    def on_step_end(self, args, state, control, **kwargs):
        if control.should_save:
            self.trainer._before_save()

    def on_epoch_end(self, args, state, control, **kwargs):
        if control.should_save:
            self.trainer._before_save()

    def on_save(self, args, state, control, **kwargs):
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if args.should_save and folder.is_dir():
            self.trainer._save_extras(folder)
