"""SFTTrainer: accumulation and process invariance, evaluation against a reference, exact resume,
non-finite losses, trained-token bookkeeping."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import TrainerCallback

from sftune import methods
from sftune.methods import MethodConfig
from sftune.training import NonFiniteLossError, SFTTrainer
from sftune.training.trainer import held_out_share
from sftune.training.checkpoints import CheckpointCompleteCallback, last_checkpoint
from tests.conftest import tiny_model
from tests.test_methods import ALL_METHODS
from tests.training.helpers import (
    VOCAB,
    GradientRecorder,
    PoisonAt,
    StopAt,
    encoded_examples,
    losses,
    make_args,
    padding_free_collate,
)


# -------------------------------------------------------------------------- the optimizer step


def test_batch_8_accumulation_1_equals_batch_1_accumulation_8(tmp_path):
    """The 2024 gradient-accumulation bug: the loss must be normalized once per optimizer step."""
    data = encoded_examples(16)
    results = []
    # SGD: Adam's first step is about lr * sign(grad), which would blow 1e-9 rounding up to lr.
    for batch, accumulation in ((8, 1), (1, 8)):
        recorder = GradientRecorder()
        trainer = SFTTrainer(
            model=tiny_model("llama", vocab_size=VOCAB),
            args=make_args(tmp_path / f"b{batch}", per_device_train_batch_size=batch,
                           gradient_accumulation_steps=accumulation, max_steps=2, optim="sgd"),
            train_dataset=data,
            data_collator=padding_free_collate,
            callbacks=[recorder],
        )
        trainer.train()
        results.append((losses(trainer), recorder.steps))
    (loss_a, grads_a), (loss_b, grads_b) = results
    assert loss_a == pytest.approx(loss_b, abs=1e-5)
    for step_a, step_b in zip(grads_a, grads_b, strict=True):
        for name in step_a:
            torch.testing.assert_close(step_a[name], step_b[name], atol=1e-5, rtol=0, msg=name)
    # and the logged loss is the token-mean cross-entropy of the step, as the model computes it
    reference = tiny_model("llama", vocab_size=VOCAB)
    batch = padding_free_collate(data[:8])
    with torch.no_grad():
        logits = reference(**{k: v for k, v in batch.items() if k != "labels"}, use_cache=False).logits
    targets = batch["labels"][:, 1:].masked_fill(batch["position_ids"][:, 1:] == 0, -100)
    want = torch.nn.functional.cross_entropy(logits[0, :-1], targets[0], ignore_index=-100)
    assert loss_a[0] == pytest.approx(want.item(), abs=1e-5)


def test_eval_metrics_equal_reference(tmp_path):
    data = encoded_examples(6, seed=3)
    model = tiny_model("qwen2", vocab_size=VOCAB)
    trainer = SFTTrainer(
        model=model,
        args=make_args(tmp_path, per_device_eval_batch_size=2),
        eval_dataset=data,
        data_collator=padding_free_collate,
    )
    metrics = trainer.evaluate()
    loss_sum, hits, count = 0.0, 0, 0
    with torch.no_grad():
        for row in data:
            ids = torch.tensor([row["input_ids"]])
            labels = torch.tensor([row["labels"]])[:, 1:]
            logits = model(input_ids=ids, use_cache=False).logits[:, :-1]
            mask = labels != -100
            loss_sum += torch.nn.functional.cross_entropy(logits[mask], labels[mask], reduction="sum").item()
            hits += int((logits[mask].argmax(-1) == labels[mask]).sum())
            count += int(mask.sum())
    assert metrics["eval_tokens"] == count
    assert metrics["eval_loss"] == pytest.approx(loss_sum / count, abs=1e-5)
    assert metrics["eval_perplexity"] == pytest.approx(math.exp(loss_sum / count), rel=1e-5)
    assert metrics["eval_token_accuracy"] == pytest.approx(hits / count)


@pytest.mark.parametrize("items, batch", [(0, 2), (1, 1), (1, 4), (3, 1), (5, 2), (8, 2), (7, 3)])
@pytest.mark.parametrize("processes", [1, 2, 3])
def test_held_out_share_counts_every_item_once(items, batch, processes):
    """Over the processes, the batches that count are one process's batches, each once; every process runs the
    same number of batches (a split model needs every forward on every process)."""
    shares = [held_out_share(items, batch, rank, processes) for rank in range(processes)]
    alone = [indices for indices, _ in held_out_share(items, batch, 0, 1)]
    assert alone == [list(range(i, min(i + batch, items))) for i in range(0, items, batch)]
    assert len({len(share) for share in shares}) == 1
    counted = [indices for share in shares for indices, counts in share if counts]
    assert sorted(counted) == alone
    assert all(indices for share in shares for indices, _ in share)  # a repeat is a whole real batch, never empty


# ------------------------------------------------------------------------------ resume and stop



# lora with dropout: resume must also restore the random state that dropout draws from
RESUME_METHODS = {**ALL_METHODS, "lora": {"name": "lora", "r": 4, "dropout": 0.1}}


def with_method(name: str):
    return methods.apply_method(tiny_model("llama", vocab_size=VOCAB), MethodConfig(**RESUME_METHODS[name]),
                                verbose=False)


@pytest.mark.parametrize("method", list(RESUME_METHODS))
def test_resume_is_exact(tmp_path, method):
    """2N steps straight == N steps, stop, resume N more (random order, dropout), for every method.

    One record per row: the prompt-learning methods cannot train packed rows.
    """
    data = encoded_examples(24, seed=5)
    n = 3

    def run(folder, resume=None, stop=None):
        args = make_args(folder, per_device_train_batch_size=1, gradient_accumulation_steps=4, max_steps=2 * n,
                         train_sampling_strategy="random", save_strategy="steps", save_steps=100,
                         lr_scheduler_type="cosine", warmup_steps=1, max_grad_norm=1.0)
        trainer = SFTTrainer(
            model=with_method(method),
            args=args,
            train_dataset=data,
            data_collator=padding_free_collate,
            callbacks=[CheckpointCompleteCallback()] + ([StopAt(stop)] if stop else []),
        )
        trainer.train(resume_from_checkpoint=resume)
        return trainer

    straight = run(tmp_path / "straight")
    first = run(tmp_path / "parts", stop=n)
    assert first.state.global_step == n
    checkpoint = last_checkpoint(tmp_path / "parts")
    assert checkpoint is not None and checkpoint.endswith(f"checkpoint-{n}")
    resumed = run(tmp_path / "parts", resume=checkpoint)
    assert resumed.state.global_step == 2 * n
    assert losses(resumed)[-n:] == pytest.approx(losses(straight)[-n:], abs=1e-6)
    # the token count goes on from the checkpoint's, and so does the training time
    assert resumed.trained_tokens == straight.trained_tokens
    assert resumed.train_seconds > first.train_seconds
    want = methods.trainable_state(straight.model)
    for name, value in methods.trainable_state(resumed.model).items():
        torch.testing.assert_close(value, want[name], atol=1e-6, rtol=0, msg=name)


def test_best_prefix_tuning_checkpoint_is_loaded_at_the_end(tmp_path):
    """keep-best with prefix_tuning: the model after training is the best checkpoint's, as trained."""
    data = encoded_examples(8, seed=2)
    trainer = SFTTrainer(
        model=with_method("prefix_tuning"),
        args=make_args(tmp_path, per_device_train_batch_size=1, max_steps=3, learning_rate=1e-2,
                       eval_strategy="steps", eval_steps=1, save_strategy="steps", save_steps=1,
                       load_best_model_at_end=True, metric_for_best_model="eval_loss",
                       greater_is_better=True),  # "best" = the highest loss: not the last step's model
        train_dataset=data,
        eval_dataset=data[:2],
        data_collator=padding_free_collate,
    )
    trainer.train()
    evaluations = [r["eval_loss"] for r in trainer.state.log_history if "eval_loss" in r]
    assert trainer.state.best_global_step != 3 and max(evaluations) != evaluations[-1]
    assert trainer.evaluate()["eval_loss"] == pytest.approx(max(evaluations), abs=1e-6)


class FakeClock:
    """The trainer's `time.perf_counter`: a millisecond passes at every reading, and `pause` seconds more
    at each evaluation and each checkpoint save (as a callback), so no real time is measured."""

    def __init__(self, pause: float):
        self.now, self.pause, self.pauses = 0.0, pause, 0

    def perf_counter(self) -> float:
        self.now += 1e-3
        return self.now

    def callback(self) -> TrainerCallback:
        clock = self

        class SlowEvaluationAndSaving(TrainerCallback):
            def on_evaluate(self, args, state, control, **kwargs):
                clock.now += clock.pause
                clock.pauses += 1

            def on_save(self, args, state, control, **kwargs):
                clock.now += clock.pause
                clock.pauses += 1

        return SlowEvaluationAndSaving()


def test_tokens_per_second_leave_out_evaluation_and_saving(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from sftune.training import trainer as trainer_module

    clock = FakeClock(pause=1000.0)
    monkeypatch.setattr(trainer_module, "time", SimpleNamespace(perf_counter=clock.perf_counter))
    data = encoded_examples(12)
    trainer = SFTTrainer(
        model=tiny_model("llama", vocab_size=VOCAB),
        args=make_args(tmp_path, per_device_train_batch_size=2, max_steps=3, eval_strategy="steps", eval_steps=1,
                       save_strategy="steps", save_steps=1),
        train_dataset=data,
        eval_dataset=data[:2],
        data_collator=padding_free_collate,
        callbacks=[clock.callback()],
    )
    started = clock.perf_counter()
    trainer.train()
    wall = clock.perf_counter() - started
    assert clock.pauses == 6
    assert 0 < trainer.train_seconds <= wall - clock.pauses * clock.pause
    # each logged rate is the tokens so far over the training time so far
    logged = [r for r in trainer.state.log_history if "trained_tokens_per_second" in r]
    assert [r["step"] for r in logged] == [1, 2, 3]
    assert logged[-1]["trained_tokens"] == trainer.trained_tokens
    for record in logged:
        seconds = record["trained_tokens"] / record["trained_tokens_per_second"]
        assert seconds <= trainer.train_seconds * (1 + 1e-3)


def test_non_finite_loss_stops_and_names_step_and_checkpoint(tmp_path):
    trainer = SFTTrainer(
        model=tiny_model("llama", vocab_size=VOCAB),
        args=make_args(tmp_path, per_device_train_batch_size=2, max_steps=8, save_strategy="steps", save_steps=2),
        train_dataset=encoded_examples(16),
        data_collator=padding_free_collate,
        callbacks=[CheckpointCompleteCallback(), PoisonAt(3)],
    )
    with pytest.raises(NonFiniteLossError, match=r"step 4\b.*checkpoint-2"):
        trainer.train()


def test_non_finite_check_reads_the_device_at_logging_steps_only(tmp_path, monkeypatch):
    """The non-finite loss check costs no host sync per micro-batch: the losses are read once per log (and
    checkpoint / evaluation), here 2 logs of 8 steps x 2 micro-batches; a NaN at step 3 still names step 3,
    raised at the next logging step (4), before any later checkpoint."""
    from sftune.training import trainer as trainer_module

    reads = []
    real = trainer_module.non_finite_processes

    def counted(record, accelerator):
        reads.append(record)
        return real(record, accelerator)

    monkeypatch.setattr(trainer_module, "non_finite_processes", counted)
    data = encoded_examples(32)
    SFTTrainer(model=tiny_model("llama", vocab_size=VOCAB), train_dataset=data, data_collator=padding_free_collate,
               args=make_args(tmp_path / "fine", gradient_accumulation_steps=2, max_steps=8, logging_steps=4)).train()
    assert len(reads) == 3  # the logs at steps 4 and 8, and the closing log of train()
    poisoned = SFTTrainer(model=tiny_model("llama", vocab_size=VOCAB), train_dataset=data,
                          data_collator=padding_free_collate, callbacks=[CheckpointCompleteCallback(), PoisonAt(2)],
                          args=make_args(tmp_path / "nan", gradient_accumulation_steps=2, max_steps=8, logging_steps=4,
                                         save_strategy="steps", save_steps=6))
    with pytest.raises(NonFiniteLossError, match=r"at step 3\b.*No checkpoint"):
        poisoned.train()
    assert poisoned.state.global_step == 4


# ---------------------------------------------------------------------------------- two processes

ROOT = str(Path(__file__).resolve().parents[2])


def torchrun(script: Path, processes: int, *args: str, timeout: int) -> subprocess.CompletedProcess:
    """`script` on `processes` processes (torch.distributed.run, gloo on CPU), one thread each."""
    path = os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": path}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}", str(script),
           *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)


DDP_SCRIPT = r"""
import json, os, sys, torch
sys.path.insert(0, {root!r})
from tests.training.helpers import encoded_examples, make_args, padding_free_collate, losses, VOCAB
from tests.conftest import tiny_model
from sftune.training import SFTTrainer
from pathlib import Path
batch = int(sys.argv[1]); out = Path(sys.argv[2])
trainer = SFTTrainer(
    model=tiny_model("llama", vocab_size=VOCAB),
    args=make_args(out, per_device_train_batch_size=batch, gradient_accumulation_steps=2, max_steps=3, ddp_backend="gloo"),
    train_dataset=encoded_examples(48, seed=7),
    data_collator=padding_free_collate,
)
trainer.train()
if trainer.is_world_process_zero():
    params = {{n: p.detach().flatten()[:50].tolist() for n, p in trainer.model.named_parameters()}}
    (out / "result.json").write_text(json.dumps({{"losses": losses(trainer), "params": params}}))
"""


def test_two_processes_equal_one_process(tmp_path):
    """DDP over gloo, 2 processes x batch 2 == 1 process x batch 4 (same global batch, same order)."""
    script = tmp_path / "ddp_run.py"
    script.write_text(DDP_SCRIPT.format(root=ROOT))
    runs = {}
    for procs, batch in ((1, 4), (2, 2)):
        out = tmp_path / f"p{procs}"
        out.mkdir()
        done = torchrun(script, procs, str(batch), str(out), timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        runs[procs] = json.loads((out / "result.json").read_text())
    assert runs[2]["losses"] == pytest.approx(runs[1]["losses"], abs=1e-5)
    for name, values in runs[1]["params"].items():
        assert runs[2]["params"][name] == pytest.approx(values, abs=1e-5), name


EVAL_SCRIPT = r"""
import json, sys
sys.path.insert(0, {root!r})
from tests.training.helpers import encoded_examples, make_args, padding_free_collate, VOCAB
from tests.conftest import tiny_model
from sftune.training import SFTTrainer
from pathlib import Path
out = Path(sys.argv[1])
trainer = SFTTrainer(model=tiny_model("llama", vocab_size=VOCAB),
                     args=make_args(out, per_device_eval_batch_size=2, ddp_backend="gloo"),
                     data_collator=padding_free_collate)
held_out = encoded_examples(5, seed=11)
metrics = {{n: trainer.evaluate(held_out[:n]) for n in (5, 1)}}
if trainer.is_world_process_zero():
    (out / "metrics.json").write_text(json.dumps(metrics))
"""


def test_two_processes_evaluate_as_one(tmp_path):
    """A held-out set that the processes cannot share evenly (5 examples, 1 example; batches of 2 on 2 processes):
    the same loss, accuracy and token count as one process, each example counted once (accelerate's even batches
    repeat examples to give every process a batch)."""
    script = tmp_path / "eval_run.py"
    script.write_text(EVAL_SCRIPT.format(root=ROOT))
    metrics = {}
    for procs in (1, 2):
        out = tmp_path / f"p{procs}"
        out.mkdir()
        done = torchrun(script, procs, str(out), timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        metrics[procs] = json.loads((out / "metrics.json").read_text())
    for n in ("5", "1"):
        one, two = metrics[1][n], metrics[2][n]
        assert two["eval_tokens"] == one["eval_tokens"] > 0
        assert two["eval_loss"] == pytest.approx(one["eval_loss"], rel=1e-5)
        assert two["eval_token_accuracy"] == pytest.approx(one["eval_token_accuracy"], rel=1e-5)


NON_FINITE_SCRIPT = r"""
import os, sys
sys.path.insert(0, {root!r})
from tests.training.helpers import encoded_examples, make_args, padding_free_collate, PoisonAt, VOCAB
from tests.conftest import tiny_model
from sftune.training import NonFiniteLossError, SFTTrainer
from pathlib import Path
out = Path(sys.argv[1])
trainer = SFTTrainer(
    model=tiny_model("llama", vocab_size=VOCAB),
    args=make_args(out, per_device_train_batch_size=2, max_steps=4, ddp_backend="gloo", ddp_timeout=60),
    train_dataset=encoded_examples(16),
    data_collator=padding_free_collate,
    callbacks=[PoisonAt(1, process=1)],
)
try:
    trainer.train()
except NonFiniteLossError as err:
    (out / f"error-{{trainer.args.process_index}}.txt").write_text(str(err))
"""


def test_non_finite_loss_on_one_process_stops_every_process(tmp_path):
    """Only process 1's loss is NaN (at step 2): both processes stop there, with the same message."""
    script = tmp_path / "non_finite.py"
    script.write_text(NON_FINITE_SCRIPT.format(root=ROOT))
    done = torchrun(script, 2, str(tmp_path), timeout=300)
    errors = [tmp_path / f"error-{rank}.txt" for rank in (0, 1)]
    assert all(e.exists() for e in errors), done.stderr[-3000:]
    messages = [e.read_text() for e in errors]
    assert messages[0] == messages[1]
    assert messages[0].startswith("The loss became nan at step 2 on process 1 of 2.")


def test_neftune_adds_noise_in_training_only(tmp_path):
    """NEFTune (transformers' own hook): the first-step loss changes, evaluation does not."""
    data = encoded_examples(8)
    results = {}
    for alpha in (None, 5.0):
        trainer = SFTTrainer(
            model=tiny_model("llama", vocab_size=VOCAB),
            args=make_args(tmp_path / str(alpha), max_steps=1, neftune_noise_alpha=alpha),
            train_dataset=data,
            eval_dataset=data,
            data_collator=padding_free_collate,
        )
        before = trainer.evaluate()["eval_loss"]
        trainer.train()
        results[alpha] = (before, losses(trainer)[0])
    assert results[5.0][0] == pytest.approx(results[None][0], abs=1e-7)
    assert abs(results[5.0][1] - results[None][1]) > 1e-4


# -------------------------------------------------------------------------- bf16 with a LoRA adapter


def test_bf16_lora_step_skips_adapter_input_copies_and_keeps_gradients(tmp_path):
    """In a bf16 (autocast) training step peft's LoRA layers take their bf16 input as it is, where
    they would copy it to fp32 for autocast to copy back: the gradients equal those of the same step
    with peft's copies put back on (bf16 -> fp32 -> bf16 loses nothing), and the copies are back on
    after the step (generation in an evaluation runs without autocast and needs them)."""
    data = encoded_examples(8)
    lora = MethodConfig(name="lora", r=4, alpha=8, dropout=0.0, target_modules="all-linear")

    def flags(model):
        return [m.cast_input_dtype_enabled for m in model.modules() if hasattr(m, "cast_input_dtype_enabled")]

    def step(copies: bool):
        seen, recorder = [], GradientRecorder()

        class Watching(SFTTrainer):
            def compute_loss(self, model, inputs, **kwargs):
                seen.extend(flags(model))
                if copies:
                    for m in model.modules():
                        if hasattr(m, "cast_input_dtype_enabled"):
                            m.cast_input_dtype_enabled = True
                return super().compute_loss(model, inputs, **kwargs)

        torch.manual_seed(0)
        model = methods.apply_method(tiny_model("llama", vocab_size=VOCAB).to(torch.bfloat16), lora, verbose=False)
        trainer = Watching(model=model, args=make_args(tmp_path / str(copies), per_device_train_batch_size=8,
                                                       max_steps=2, bf16=True, optim="sgd", learning_rate=1.0),
                           train_dataset=data + encoded_examples(8, seed=1), data_collator=padding_free_collate,
                           callbacks=[recorder])
        trainer.train()
        return seen, flags(model), recorder.steps

    seen, after, got = step(copies=False)
    assert seen and not any(seen) and all(after)
    _, _, want = step(copies=True)
    for step_got, step_want in zip(got, want, strict=True):
        assert set(step_got) == set(step_want)
        for name in step_want:  # the second step's lora_A gradients are non-zero (lora_B moved at lr 1)
            torch.testing.assert_close(step_got[name], step_want[name], atol=0, rtol=0, msg=name)
