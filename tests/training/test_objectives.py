"""train.loss: GEM, DFT, phi and CHORD compute what their papers say on small cases, and keep the trainer's
exactness (accumulation invariance, a sequence packed == alone)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from sftune.training import SFTTrainer, objectives
from sftune.training.loss import linear_token_loss, trained_hidden_states
from sftune.training.objectives import chord
from tests.conftest import tiny_model
from tests.training.helpers import VOCAB, GradientRecorder, encoded_examples, losses, make_args, padding_free_collate


def reference_token_losses(logits: torch.Tensor, y: torch.Tensor, name: str, beta: float = 0.7) -> torch.Tensor:
    """Each objective written from its paper with full logits, differentiated by autograd."""
    logp = torch.log_softmax(logits, dim=-1)
    picked = logp.gather(1, y[:, None]).squeeze(1)
    if name == "ce":
        return -picked
    if name == "dft":  # TRL: -log p * exp(log p).detach()
        return -picked * picked.exp().detach()
    if name == "phi":
        p = picked.exp().detach()
        return -picked * p * (1 - p)
    if name == "gem":  # -log p(y*) + sum_v q_beta(v) log p(v), q_beta = stopgrad(softmax(z / beta))
        q = torch.softmax(logits / beta, dim=-1).detach()
        return -picked + (q * logp).sum(-1)
    raise ValueError(name)


@pytest.mark.parametrize("name", ["gem", "dft", "phi"])
def test_token_loss_and_gradient_equal_the_papers_formula_on_a_tiny_vocabulary(name):
    torch.manual_seed(0)
    head = torch.nn.Linear(6, 11, bias=True)
    hidden = torch.randn(9, 6, requires_grad=True)
    targets = torch.randint(0, 11, (9,))
    got = linear_token_loss(hidden, head, targets, token_loss=objectives.token_loss_for(name), chunk_size=4)
    got.backward()
    grads = (hidden.grad.clone(), head.weight.grad.clone(), head.bias.grad.clone())
    hidden.grad = head.weight.grad = head.bias.grad = None
    want = reference_token_losses(head(hidden), targets, name).sum()
    want.backward()
    assert got.item() == pytest.approx(want.item(), rel=1e-5, abs=1e-6)
    for g, w in zip(grads, (hidden.grad, head.weight.grad, head.bias.grad)):
        torch.testing.assert_close(g, w, atol=1e-6, rtol=1e-5)


def logits_grad(name: str, z: list[float], y: int, **kw) -> tuple[float, list[float]]:
    """(loss, d loss / d logits) through the chunked path, the logits fed in as `hidden` of an identity head."""
    head = torch.nn.Linear(len(z), len(z), bias=False)
    with torch.no_grad():
        head.weight.copy_(torch.eye(len(z)))
    hidden = torch.tensor([z], requires_grad=True)
    loss = linear_token_loss(hidden, head, torch.tensor([y]), token_loss=objectives.token_loss_for(name, **kw))
    loss.backward()
    return loss.item(), hidden.grad[0].tolist()


def test_gem_gradient_is_q_beta_minus_onehot():
    """The analytic gradient of the linear-h GEM loss on the logits: softmax(z / beta) - onehot(y)."""
    z, beta = [1.0, 2.0, 0.5, -1.0], 0.7
    loss, grad = logits_grad("gem", z, 1, gem_beta=beta)
    q = [math.exp(v / beta) for v in z]
    q = [v / sum(q) for v in q]
    assert grad == pytest.approx([q[0], q[1] - 1, q[2], q[3]], abs=1e-6)
    assert loss == pytest.approx(sum(qv * zv for qv, zv in zip(q, z)) - z[1], abs=1e-6)


@pytest.mark.parametrize("name, weight", [("dft", 0.5), ("phi", 0.25)])
def test_dft_and_phi_by_hand(name, weight):
    """p = (1/4, 1/2, 1/4), target 1: CE = ln 2; DFT weighs it by p = 1/2, phi by p(1-p) = 1/4;
    the gradient is the weight times (p - onehot)."""
    loss, grad = logits_grad(name, [0.0, math.log(2.0), 0.0], 1)
    assert loss == pytest.approx(weight * math.log(2.0), abs=1e-6)
    assert grad == pytest.approx([weight * 0.25, weight * -0.5, weight * 0.25], abs=1e-6)


@pytest.mark.parametrize("name", ["gem", "dft", "phi"])
@pytest.mark.parametrize("arch", ["llama", "gemma"])
def test_through_the_model_with_packing_equals_each_sequence_alone(name, arch):
    """A packed row's summed objective and gradients == the sum over its sequences run alone, from full logits
    (gemma: through the logit soft-cap)."""
    extra = {"final_logit_softcapping": 30.0} if arch == "gemma" else {}
    model = tiny_model(arch, vocab_size=VOCAB, **extra).train()
    rows = encoded_examples(3, seed=2)
    loss_fn = objectives.token_loss_for(name)
    hidden, targets, weights, head, rule, _ = trained_hidden_states(model, padding_free_collate(rows))
    linear_token_loss(hidden, head, targets, weights, token_loss=loss_fn, logit_rule=rule, chunk_size=5).backward()
    packed = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    for row in rows:
        ids, labels = torch.tensor([row["input_ids"]]), torch.tensor([row["labels"]])
        logits = model(input_ids=ids, use_cache=False).logits[0, :-1].float()
        mask = labels[0, 1:] != -100
        loss = reference_token_losses(logits[mask], labels[0, 1:][mask], name).sum()
        loss.backward()
    for n, p in model.named_parameters():
        torch.testing.assert_close(packed[n], p.grad, atol=1e-5, rtol=1e-4, msg=n)


@pytest.mark.parametrize("name", ["gem", "dft", "phi"])
def test_accumulation_invariance(tmp_path, name):
    """Batch 8 x accumulation 1 == batch 1 x accumulation 8: one normalization per optimizer step."""
    data = encoded_examples(16)
    results = []
    for batch, accumulation in ((8, 1), (1, 8)):
        recorder = GradientRecorder()
        trainer = SFTTrainer(model=tiny_model("llama", vocab_size=VOCAB),
                             args=make_args(tmp_path / f"b{batch}", per_device_train_batch_size=batch,
                                            gradient_accumulation_steps=accumulation, max_steps=2, optim="sgd"),
                             train_dataset=data, data_collator=padding_free_collate, callbacks=[recorder],
                             objective=objectives.Objective(token_loss=objectives.token_loss_for(name)))
        trainer.train()
        results.append((losses(trainer), recorder.steps))
    (loss_a, grads_a), (loss_b, grads_b) = results
    assert loss_a == pytest.approx(loss_b, abs=1e-5)
    for step_a, step_b in zip(grads_a, grads_b, strict=True):
        for n in step_a:
            torch.testing.assert_close(step_a[n], step_b[n], atol=1e-5, rtol=0, msg=n)


# ---------------------------------------------------------------------------------------------- CHORD


def test_mu_rises_to_the_peak_then_decays_on_a_cosine_to_the_floor():
    mu = [chord.mu_at(s, peak=0.8, valley=0.1, warmup_steps=4, decay_steps=10) for s in range(20)]
    assert mu[0] == 0.0 and mu[2] == pytest.approx(0.4) and mu[4] == pytest.approx(0.8)
    assert mu[9] == pytest.approx(0.1 + 0.7 * 0.5)  # half-way down the cosine
    assert mu[6] == pytest.approx(0.1 + 0.7 * 0.5 * (1 + math.cos(math.pi * 0.2)))
    assert all(m == pytest.approx(0.1) for m in mu[14:])
    assert all(a >= b for a, b in zip(mu[4:], mu[5:]))


def test_group_advantages_by_hand():
    """Rewards (1, 0, 0, 1): mean 1/2, sample std sqrt(1/3), so A = +-sqrt(3)/2; a group all equal gives 0."""
    a = chord.group_advantages(torch.tensor([[1.0, 0.0, 0.0, 1.0], [1.0, 1.0, 1.0, 1.0]]))
    h = math.sqrt(3) / 2
    assert a[0].tolist() == pytest.approx([h, -h, -h, h], abs=1e-5)
    assert a[1].tolist() == [0.0, 0.0, 0.0, 0.0]


def test_expert_answers_are_the_last_trained_span_of_each_packed_sequence():
    rows = [{"input_ids": [1, 2, 3, 4, 5, 6, 7], "labels": [-100, 2, -100, -100, 5, 6, 7]},
            {"input_ids": [8, 9, 10], "labels": [-100, -100, 10]}]
    assert chord.expert_answers(padding_free_collate(rows)) == [([1, 2, 3, 4], [5, 6, 7]), ([8, 9], [10])]


def test_exact_match_reward_is_the_demos_json_check():
    truth = json.dumps({"name": "Bob", "age": 30, "city": "Oslo"})
    got = chord.exact_match_reward(prompts=["q"] * 3, references=[truth] * 3,
                                   completions=['{"age": 30, "name": "Bob", "city": "Oslo"}', truth[:-1], "Bob"])
    assert got == [1.0, 0.0, 0.0]


def test_chord_loss_on_a_small_case(tmp_path):
    """compute_loss == mu * phi-weighted SFT mean + (1 - mu) * GRPO mean (-A log p over sampled tokens), value and
    gradients, against full logits and autograd."""
    model = tiny_model("llama", vocab_size=VOCAB).train()
    expert = encoded_examples(2, seed=4)
    prompts, answers, adv = [[5, 8, 11], [5, 8, 11], [20, 23]], [[14, 17], [99, 3, 7], [26]], [0.9, -0.9, 0.5]
    rollout = chord.packed_rollouts(prompts, answers, adv)
    assert rollout["cu_seq_lens_q"].tolist() == [0, 5, 11, 14] and rollout["max_length_q"] == 6  # for the attention
    batch = {**padding_free_collate(expert), "rollout": rollout, "rollout_tokens": torch.tensor(9)}
    settings = type("C", (), dict(mu_peak=0.6, mu_valley=0.1, mu_warmup_steps=0, mu_decay_steps=4))()
    trainer = SFTTrainer(model=model, args=make_args(tmp_path), data_collator=padding_free_collate,
                         objective=objectives.Objective(token_loss=objectives.token_loss_for("phi"), chord=settings))
    trainer.state.global_step = 2
    mu = 0.1 + 0.5 * 0.5  # half-way down the cosine
    n_expert = sum(sum(1 for v in r["labels"][1:] if v != -100) for r in expert)
    loss = trainer.compute_loss(model, batch, num_items_in_batch=torch.tensor(n_expert))
    loss.backward()
    got = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    sft = 0.0
    for row in expert:
        ids, labels = torch.tensor([row["input_ids"]]), torch.tensor([row["labels"]])[0, 1:]
        logits = model(input_ids=ids, use_cache=False).logits[0, :-1]
        sft = sft + reference_token_losses(logits[labels != -100], labels[labels != -100], "phi").sum()
    grpo = 0.0
    for prompt, answer, a in zip(prompts, answers, adv):
        logits = model(input_ids=torch.tensor([prompt + answer]), use_cache=False).logits[0, len(prompt) - 1:-1]
        grpo = grpo - a * torch.log_softmax(logits, -1).gather(1, torch.tensor(answer)[:, None]).sum()
    want = mu * sft / n_expert + (1 - mu) * grpo / 9
    want.backward()
    assert loss.item() == pytest.approx(want.item(), rel=1e-5, abs=1e-6)
    for n, p in model.named_parameters():
        torch.testing.assert_close(got[n], p.grad, atol=1e-6, rtol=1e-4, msg=n)


def always_half(prompts, completions, references):
    """A user's reward for the config test: alternating 1 and 0."""
    return [float(k % 2) for k in range(len(completions))]


def test_chord_runs_from_the_config(tmp_path, smollm2_tokenizer):
    """train.loss=chord: samples G answers per prompt with the user's reward, logs mu and the mean reward."""
    from sftune import train
    from tests.training.test_recipe import run_config

    folder = tmp_path / "tiny-model"
    tiny_model("llama", vocab_size=len(smollm2_tokenizer)).save_pretrained(folder)
    smollm2_tokenizer.save_pretrained(folder)
    cfg = run_config(tmp_path, folder, train={"max_steps": 2, "loss": "chord", "save_steps": None,
                                              "chord": {"reward": "tests.training.test_objectives:always_half",
                                                        "samples_per_prompt": 2, "prompts_per_step": 3,
                                                        "max_new_tokens": 4, "mu_decay_steps": 2}},
                     eval={"steps": None})
    result = train(cfg)
    records = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    logged = [r for r in records if "chord_mu" in r]
    assert [r["chord_mu"] for r in logged] == pytest.approx([0.5, chord.mu_at(1, 0.5, 0.05, 0, 2)])
    assert all(r["chord_reward"] == 0.5 for r in logged)
    assert all(math.isfinite(r["loss"]) for r in logged)


def test_unknown_reward_is_a_config_error(tmp_path, smollm2_tokenizer):
    from sftune import train
    from sftune.config import ConfigError
    from tests.training.test_recipe import run_config

    folder = tmp_path / "tiny-model"
    tiny_model("llama", vocab_size=len(smollm2_tokenizer)).save_pretrained(folder)
    smollm2_tokenizer.save_pretrained(folder)
    cfg = run_config(tmp_path, folder, train={"loss": "chord", "chord": {"reward": "no_such_module_x:f"}})
    with pytest.raises(ConfigError, match="cannot import module 'no_such_module_x'"):
        train(cfg)


@pytest.mark.parametrize("processes, sharded, expected", [(1, True, False), (2, False, False), (2, True, True)])
def test_synced_sampling_only_with_sharded_weights_over_processes(processes, sharded, expected):
    assert chord.synced_sampling(processes, sharded) is expected


def test_chord_rollouts_are_synced_under_fsdp_over_two_processes(monkeypatch):
    """Under FSDP (2 processes) the trainer samples CHORD's rollouts with synced_gpus: a process whose answers end
    first keeps joining the others' forward passes (each gathers the sharded weights), else they wait forever."""
    import types

    asked = []

    def sample(model, tokenizer, batches, settings, reward, stops, synced_gpus=False):
        asked.append(synced_gpus)
        return [None] * len(batches), 0, []

    monkeypatch.setattr(chord, "sample_rollouts", sample)
    settings = types.SimpleNamespace(mu_peak=0.5, mu_valley=0.1, mu_warmup_steps=0, mu_decay_steps=2)
    accelerator = types.SimpleNamespace(num_processes=2, unwrap_model=lambda m: m, reduce=lambda t, reduction: t)
    objective = objectives.Objective(chord=settings, stop_token_ids=(0,))
    trainer = types.SimpleNamespace(objective=objective, accelerator=accelerator, model=None, processing_class=None,
                                    state=types.SimpleNamespace(global_step=0), _objective_logs={})
    for env in ({}, {"ACCELERATE_USE_FSDP": "true"}):
        monkeypatch.delenv("ACCELERATE_USE_FSDP", raising=False)
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        SFTTrainer._attach_rollouts(trainer, [{}], torch.device("cpu"))
    assert asked == [False, True]
