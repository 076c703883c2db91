"""The training engine: loss against references, accumulation and process invariance, resume."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from transformers import TrainerCallback, TrainingArguments

from sftune.train import (
    CheckpointCompleteCallback,
    NonFiniteLossError,
    SFTTrainer,
    last_checkpoint,
    linear_cross_entropy,
    token_stats,
    trained_hidden_states,
)
from sftune import methods
from sftune.methods import MethodConfig
from tests.conftest import tiny_model
from tests.test_methods import ALL_METHODS

VOCAB = 512


def encoded_examples(n: int = 16, seed: int = 0, vocab: int = VOCAB) -> list[dict]:
    """Hand-made encoded records: a prompt (masked) then a response (trained), varied lengths."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(n):
        prompt = int(torch.randint(3, 12, (1,), generator=g))
        answer = int(torch.randint(2, 10, (1,), generator=g))
        start = int(torch.randint(0, vocab - 64, (1,), generator=g))
        ids = [(start + 3 * i) % vocab for i in range(prompt + answer)]  # learnable: arithmetic
        rows.append({"input_ids": ids, "labels": [-100] * prompt + ids[prompt:]})
    return rows


def padding_free_collate(rows: list[dict]) -> dict[str, torch.Tensor]:
    """Concatenate records into one [1, T] row; position_ids restart per record; no attention mask."""
    ids, labels, pos, weights = [], [], [], []
    for r in rows:
        ids += r["input_ids"]
        labels += r["labels"]
        pos += list(range(len(r["input_ids"])))
        weights += r.get("loss_weights", [1.0] * len(r["input_ids"]))
    batch = {
        "input_ids": torch.tensor([ids]),
        "labels": torch.tensor([labels]),
        "position_ids": torch.tensor([pos]),
    }
    if any("loss_weights" in r for r in rows):
        batch["loss_weights"] = torch.tensor([weights])
    return batch


def make_args(tmp_path: Path, **overrides) -> TrainingArguments:
    settings = dict(
        output_dir=str(tmp_path),
        per_device_train_batch_size=4,
        gradient_accumulation_steps=1,
        learning_rate=1e-3,
        max_steps=4,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        disable_tqdm=True,
        remove_unused_columns=False,
        train_sampling_strategy="sequential",
        dataloader_num_workers=0,
        seed=0,
        max_grad_norm=0.0,
        optim="adamw_torch",
    )
    settings.update(overrides)
    return TrainingArguments(**settings)


class GradientRecorder(TrainerCallback):
    """Keeps the gradients just before each optimizer step."""

    def __init__(self):
        self.steps: list[dict[str, torch.Tensor]] = []

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        self.steps.append({n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None})


def losses(trainer) -> list[float]:
    return [r["loss"] for r in trainer.state.log_history if "loss" in r]


# ------------------------------------------------------------------------------------------- loss


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gemma"])
def test_loss_and_gradients_equal_transformers_reference(arch):
    """Gathered, chunked loss == the model's own mean cross-entropy (with shifted labels)."""
    extra = {"final_logit_softcapping": 30.0} if arch == "gemma" else {}
    model = tiny_model(arch, vocab_size=VOCAB, **extra).train()
    ids = torch.randint(0, VOCAB, (3, 20), generator=torch.Generator().manual_seed(1))
    labels = ids.clone()
    labels[:, :7] = -100
    labels[1, 12:] = -100
    reference = model(input_ids=ids, labels=labels, use_cache=False).loss
    reference.backward()
    want = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()

    hidden, targets, weights, head, softcap = trained_hidden_states(model, {"input_ids": ids, "labels": labels})
    loss = linear_cross_entropy(hidden, head, targets, weights, softcap=softcap, chunk_size=7) / targets.numel()
    loss.backward()
    assert loss.item() == pytest.approx(reference.item(), abs=1e-5)
    for name, param in model.named_parameters():
        torch.testing.assert_close(param.grad, want[name], atol=1e-5, rtol=1e-4, msg=name)


def test_loss_weights_scale_each_token():
    torch.manual_seed(0)
    head = torch.nn.Linear(8, 50, bias=True)
    hidden = torch.randn(9, 8, requires_grad=True)
    targets = torch.randint(0, 50, (9,))
    weights = torch.rand(9)
    got = linear_cross_entropy(hidden, head, targets, weights, chunk_size=4)
    got.backward()
    grads = (hidden.grad.clone(), head.weight.grad.clone(), head.bias.grad.clone())
    hidden.grad = head.weight.grad = head.bias.grad = None
    want = (torch.nn.functional.cross_entropy(head(hidden), targets, reduction="none") * weights).sum()
    want.backward()
    assert got.item() == pytest.approx(want.item(), rel=1e-6)
    for g, w in zip(grads, (hidden.grad, head.weight.grad, head.bias.grad)):
        torch.testing.assert_close(g, w, atol=1e-6, rtol=1e-5)


def test_token_stats_match_full_logits():
    torch.manual_seed(0)
    head = torch.nn.Linear(8, 40, bias=False)
    hidden, targets = torch.randn(11, 8), torch.randint(0, 40, (11,))
    loss, correct = token_stats(hidden, head, targets, chunk_size=3)
    logits = head(hidden)
    assert loss == pytest.approx(torch.nn.functional.cross_entropy(logits, targets, reduction="sum").item(), rel=1e-6)
    assert correct == int((logits.argmax(-1) == targets).sum())


def test_pack_boundary_is_never_a_target():
    """The last token of one packed sequence must not be trained to predict the next sequence's first."""
    rows = [{"input_ids": [5, 6, 7], "labels": [5, 6, 7]}, {"input_ids": [8, 9], "labels": [8, 9]}]
    model = tiny_model("llama", vocab_size=VOCAB)
    _, targets, _, _, _ = trained_hidden_states(model, padding_free_collate(rows))
    assert targets.tolist() == [6, 7, 9]


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


# ------------------------------------------------------------------------------ resume and stop


class StopAt(TrainerCallback):
    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            control.should_save = True
            control.should_training_stop = True


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


class SlowEvaluationAndSaving(TrainerCallback):
    """Makes each evaluation and each checkpoint save take `seconds` longer."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.pauses = 0

    def on_evaluate(self, args, state, control, **kwargs):
        time.sleep(self.seconds)
        self.pauses += 1

    def on_save(self, args, state, control, **kwargs):
        time.sleep(self.seconds)
        self.pauses += 1


def test_tokens_per_second_leave_out_evaluation_and_saving(tmp_path):
    data = encoded_examples(12)
    slow = SlowEvaluationAndSaving(0.2)
    trainer = SFTTrainer(
        model=tiny_model("llama", vocab_size=VOCAB),
        args=make_args(tmp_path, per_device_train_batch_size=2, max_steps=3, eval_strategy="steps", eval_steps=1,
                       save_strategy="steps", save_steps=1),
        train_dataset=data,
        eval_dataset=data[:2],
        data_collator=padding_free_collate,
        callbacks=[slow],
    )
    started = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - started
    assert slow.pauses == 6
    assert 0 < trainer.train_seconds <= wall - slow.pauses * slow.seconds
    # each logged rate is the tokens so far over the training time so far
    logged = [r for r in trainer.state.log_history if "trained_tokens_per_second" in r]
    assert [r["step"] for r in logged] == [1, 2, 3]
    assert logged[-1]["trained_tokens"] == trainer.trained_tokens
    for record in logged:
        seconds = record["trained_tokens"] / record["trained_tokens_per_second"]
        assert seconds <= trainer.train_seconds * (1 + 1e-3)


class PoisonAt(TrainerCallback):
    """Turns a trained parameter into NaN after `step` (on one process only, if `process` is given)."""

    def __init__(self, step: int, process: int | None = None):
        self.step = step
        self.process = process

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step == self.step and self.process in (None, args.process_index):
            with torch.no_grad():
                next(p for p in model.parameters() if p.requires_grad).fill_(float("nan"))


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


def test_incomplete_checkpoint_is_not_resumed(tmp_path):
    (tmp_path / "checkpoint-2").mkdir()
    (tmp_path / "checkpoint-2" / ".sftune-complete").write_text("")
    (tmp_path / "checkpoint-4").mkdir()  # interrupted while writing
    assert last_checkpoint(tmp_path) == str(tmp_path / "checkpoint-2")


# ---------------------------------------------------------------------------------- two processes

DDP_SCRIPT = r"""
import json, os, sys, torch
sys.path.insert(0, {root!r})
from tests.test_train import encoded_examples, make_args, padding_free_collate, losses, VOCAB
from tests.conftest import tiny_model
from sftune.train import SFTTrainer
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
    root = str(Path(__file__).resolve().parents[1])
    script = tmp_path / "ddp_run.py"
    script.write_text(DDP_SCRIPT.format(root=root))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": root}
    runs = {}
    for procs, batch in ((1, 4), (2, 2)):
        out = tmp_path / f"p{procs}"
        out.mkdir()
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={procs}",
               str(script), str(batch), str(out)]
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        runs[procs] = json.loads((out / "result.json").read_text())
    assert runs[2]["losses"] == pytest.approx(runs[1]["losses"], abs=1e-5)
    for name, values in runs[1]["params"].items():
        assert runs[2]["params"][name] == pytest.approx(values, abs=1e-5), name


NON_FINITE_SCRIPT = r"""
import os, sys
sys.path.insert(0, {root!r})
from tests.test_train import encoded_examples, make_args, padding_free_collate, PoisonAt, VOCAB
from tests.conftest import tiny_model
from sftune.train import NonFiniteLossError, SFTTrainer
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
    root = str(Path(__file__).resolve().parents[1])
    script = tmp_path / "non_finite.py"
    script.write_text(NON_FINITE_SCRIPT.format(root=root))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": root}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script),
           str(tmp_path)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    errors = [tmp_path / f"error-{rank}.txt" for rank in (0, 1)]
    assert all(e.exists() for e in errors), done.stderr[-3000:]
    messages = [e.read_text() for e in errors]
    assert messages[0] == messages[1]
    assert messages[0].startswith("The loss became nan at step 2 on process 1 of 2.")


# ------------------------------------------------------------------------ train(): the run folder


@pytest.fixture
def tiny_checkpoint(tmp_path, smollm2_tokenizer):
    """A tiny random llama with the real SmolLM2 tokenizer, saved as a checkpoint folder."""
    folder = tmp_path / "tiny-model"
    tiny_model("llama", vocab_size=len(smollm2_tokenizer)).save_pretrained(folder)
    smollm2_tokenizer.save_pretrained(folder)
    return folder


def demo_data(tmp_path: Path) -> tuple[Path, Path]:
    from sftune.demo import write_dataset

    return write_dataset(tmp_path / "data", n_train=48, n_eval=8)


def run_config(tmp_path, model_dir, **sections) -> dict:
    train_path, eval_path = demo_data(tmp_path)
    cfg = {
        "model": {"name": str(model_dir)},
        "data": {"train": str(train_path), "eval": str(eval_path), "max_len": 128},
        "method": {"name": "lora", "r": 4},
        "train": {"max_steps": 6, "batch_size": 2, "logging_steps": 1, "lr": 5e-3, "save_steps": 2,
                  "save_total_limit": 1},
        "eval": {"steps": 2},
        "output": {"dir": str(tmp_path / "run")},
    }
    for section, values in sections.items():
        cfg[section] = {**cfg.get(section, {}), **values}
    return cfg


def test_train_writes_the_run_folder(tmp_path, tiny_checkpoint):
    from sftune import templates
    from sftune.train import train

    result = train(run_config(tmp_path, tiny_checkpoint))
    run = result.run_dir
    for name in ("adapter_model.safetensors", "adapter_config.json", "tokenizer.json", "config.yaml",
                 "metrics.jsonl", "curves.png", "summary.json"):
        assert (run / name).exists(), name
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 6 and summary["trained_tokens"] > 0 and summary["peak_memory_mb"] > 0
    assert summary["trained_tokens_per_second"] > 0 and summary["packing"] is True
    assert 0 < summary["train_seconds_excluding_eval"] < summary["train_seconds"]
    assert summary["trained_tokens_per_second"] == pytest.approx(
        summary["trained_tokens"] / summary["train_seconds_excluding_eval"], rel=1e-2)
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r] == [1, 2, 3, 4, 5, 6]
    assert [r["step"] for r in records if "eval_loss" in r][:3] == [2, 4, 6]
    # the best checkpoint is kept besides the newest, older ones are rotated away
    kept = sorted(p.name for p in (run / "checkpoints").glob("checkpoint-*"))
    assert len(kept) <= 2 and "checkpoint-6" in kept
    # the template used in training is the saved tokenizer's chat template (token ids compared)
    from transformers import AutoTokenizer

    saved = AutoTokenizer.from_pretrained(run)
    template = templates.default_for(AutoTokenizer.from_pretrained(tiny_checkpoint))
    messages = [{"role": "user", "content": "你好, hello"}]
    assert saved.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False) == \
        saved(template.render(messages, add_generation_prompt=True), add_special_tokens=False)["input_ids"]
    # an existing run is not overwritten by accident
    from sftune.config import ConfigError

    with pytest.raises(ConfigError, match="resume_from=last"):
        train(run_config(tmp_path, tiny_checkpoint))


class StepRecorder(TrainerCallback):
    """Records each step's end, and at each log whether metrics.jsonl already holds that record."""

    def __init__(self, metrics_file: Path):
        self.metrics_file = metrics_file
        self.steps: list[int] = []
        self.logged_before_me: list[bool] = []

    def on_step_end(self, args, state, control, **kwargs):
        self.steps.append(state.global_step)

    def on_log(self, args, state, control, logs=None, **kwargs):
        last = json.loads(self.metrics_file.read_text().splitlines()[-1])
        self.logged_before_me.append(all(last.get(k) == v for k, v in logs.items()))


def test_train_runs_the_callers_callbacks_after_its_own(tmp_path, tiny_checkpoint):
    from sftune.train import train

    recorder = StepRecorder(tmp_path / "run" / "metrics.jsonl")
    result = train(run_config(tmp_path, tiny_checkpoint, train={"max_steps": 4}), callbacks=[recorder])
    assert recorder.steps == [1, 2, 3, 4] and result.summary["steps"] == 4
    assert len(recorder.logged_before_me) >= 6 and all(recorder.logged_before_me)  # 4 train + 2 eval logs


def test_train_resume_last_continues_to_the_same_loss(tmp_path, tiny_checkpoint):
    from sftune.train import train

    straight = train(run_config(tmp_path / "a", tiny_checkpoint, train={"save_total_limit": 3}))
    cfg = run_config(tmp_path / "b", tiny_checkpoint, train={"save_total_limit": 3})
    first = train(cfg)
    # as if the run had been stopped after step 4: drop what came later
    import shutil

    shutil.rmtree(first.run_dir / "checkpoints" / "checkpoint-6")
    (first.run_dir / "summary.json").unlink()
    resumed = train(cfg, ["train.resume_from=last"])
    assert resumed.summary["resumed_from"].endswith("checkpoint-4")
    assert resumed.summary["steps"] == 6
    assert resumed.summary["trained_tokens"] == straight.summary["trained_tokens"]
    loss = lambda r: [json.loads(l) for l in (r.run_dir / "metrics.jsonl").read_text().splitlines() if '"loss"' in l][-1]["loss"]
    assert loss(resumed) == pytest.approx(loss(straight), abs=1e-6)


def test_early_stopping_stops_when_eval_loss_stops_improving(tmp_path, tiny_checkpoint):
    from sftune.train import train

    # lr ~0 with constant schedule: the held-out loss moves only by rounding (up to ~1e-7 on CPUs with
    # AVX-512), which the threshold does not count as a gain
    result = train(run_config(tmp_path, tiny_checkpoint, train={"max_steps": 20, "lr": 1e-12, "scheduler": "constant",
                                                                "warmup": 0},
                              eval={"early_stopping_patience": 2, "early_stopping_threshold": 1e-4}))
    assert result.summary["steps"] == 6  # evaluations at 2 (best), 4, 6 without gain -> stop


@pytest.mark.slow
def test_demo_learns_the_task(tmp_path, monkeypatch):
    """The README's main job on the real model: held-out exact match and loss improve clearly."""
    from sftune import demo

    monkeypatch.chdir(tmp_path)
    result = demo.run()
    assert result["loss_after"] < result["loss_before"]
    assert result["exact_match_after"] >= result["exact_match_before"] + 0.3


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


def test_micro_batch_size_splits_the_step_without_changing_it():
    """On a CPU with packing one packed row goes through the model at a time and the rest of
    batch_size is accumulated; a micro-batch that does not divide batch_size is a clear error."""
    from sftune.config import Config, ConfigError
    from sftune.train import micro_batch_size

    t = Config.model_validate({"train": {"batch_size": 6}}).train
    assert micro_batch_size(t, packing=True, cuda=False) == 1
    assert micro_batch_size(t, packing=True, cuda=True) == 6
    assert micro_batch_size(t, packing=False, cuda=False) == 6
    t = Config.model_validate({"train": {"batch_size": 6, "micro_batch_size": 3}}).train
    assert micro_batch_size(t, packing=True, cuda=False) == 3
    t = Config.model_validate({"train": {"batch_size": 6, "micro_batch_size": 4}}).train
    with pytest.raises(ConfigError, match="must divide train.batch_size=6"):
        micro_batch_size(t, packing=True, cuda=False)
