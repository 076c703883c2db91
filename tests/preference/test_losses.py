"""Parity: sftune's DPO / IPO loss, rewards and gradients equal TRL's DPOTrainer on the same tiny model and
pairs (to 1e-5); label smoothing, SimPO and ORPO equal their papers' formulas, written here on plain
per-token log-probabilities of the full logits."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from sftune import attention, templates
from sftune.data.schema import Message, Pair
from sftune.encode import IGNORE
from sftune.preference.batches import collate_pairs
from sftune.preference.encode import encode_pair
from sftune.preference.logps import sequence_logps, token_logps
from sftune.preference.losses import Settings, pair_losses
from sftune.preference.reference import add_reference_logps
from tests.conftest import tiny_model

QUESTIONS = [("Name a colour.", "Blue.", "Seven hundred."), ("What is 2+2?", "4.", "Five, I think."),
             ("Say hi.", "Hi!", "No."), ("Capital of France?", "Paris.", "Berlin, the capital of France.")]


@pytest.fixture(scope="module")
def encoded(smollm2_tokenizer):
    import datasets

    template = templates.default_for(smollm2_tokenizer)
    rows = [encode_pair(Pair([Message("user", q)], [Message("assistant", c)], [Message("assistant", r)]),
                        smollm2_tokenizer, template) for q, c, r in QUESTIONS]
    return datasets.Dataset.from_list(rows)


def _policy_and_reference(seed=0, layout="shared"):
    reference = tiny_model("llama", seed=seed)
    if layout == "shared":  # the prompt computed once per pair needs sftune's varlen attention
        reference.set_attn_implementation(attention.register())
    policy = copy.deepcopy(reference)
    with torch.no_grad():  # the policy has moved away from the reference, as after some steps
        for p in policy.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return policy.train(), reference


def _sftune(settings, policy, reference, encoded, layout="shared"):
    collate = lambda f: collate_pairs(f, packing=layout != "padded", pad_token_id=0,  # noqa: E731
                                      shared_prompt=layout == "shared")
    data = add_reference_logps(reference, encoded, collate, batch_size=2, adapter_off=False, progress=False)
    batch = collate([data[i] for i in range(len(data))])
    sums, tokens = sequence_logps(policy, batch)
    half = len(data)
    losses, chosen_r, rejected_r = pair_losses(settings, sums[:half], sums[half:], tokens[:half], tokens[half:],
                                               batch["ref_chosen"], batch["ref_rejected"])
    loss = losses.mean()
    policy.zero_grad()
    loss.backward()
    grads = {n: p.grad.clone() for n, p in policy.named_parameters()}
    return loss.detach(), chosen_r, rejected_r, grads


def _trl_rows(encoded):
    """The same pairs as TRL takes them tokenized: the shared prompt ids, then each answer's trained ids."""
    rows = []
    for row in encoded:
        out = {}
        for answer in ("chosen", "rejected"):
            ids, labels = row[f"{answer}_input_ids"], row[f"{answer}_labels"]
            trained = [i for i, label in enumerate(labels) if label != IGNORE]
            out["prompt_ids"], out[f"{answer}_ids"] = ids[:trained[0]], ids[trained[0]:trained[-1] + 1]
            assert all(label != IGNORE for label in labels[trained[0]:trained[-1] + 1])
        rows.append(out)
    assert all(r["prompt_ids"] for r in rows)
    return rows


def _trl(loss_type, beta, policy, reference, encoded, smollm2_tokenizer, tmp_path):
    import datasets
    from trl import DPOConfig, DPOTrainer

    rows = _trl_rows(encoded)
    args = DPOConfig(output_dir=str(tmp_path), beta=beta, loss_type=[loss_type], per_device_train_batch_size=len(rows),
                     report_to=[], use_cpu=True, max_length=None, bf16=False)
    placeholder = datasets.Dataset.from_list([{"prompt": "a", "chosen": "b", "rejected": "c"}])  # batches are ours
    trainer = DPOTrainer(model=policy, ref_model=reference, args=args, processing_class=smollm2_tokenizer,
                         train_dataset=placeholder)
    batch = trainer._prepare_inputs(trainer.data_collator(rows))
    policy.zero_grad()
    loss = trainer.compute_loss(policy, batch)
    loss.backward()
    metrics = {k: v[-1] for k, v in trainer._metrics["train"].items()}
    return loss.detach(), metrics, {n: p.grad.clone() for n, p in policy.named_parameters()}


@pytest.mark.parametrize("loss_type, layout", [("dpo", "shared"), ("dpo", "packed"), ("dpo", "padded"),
                                               ("ipo", "shared")])
def test_dpo_and_ipo_equal_trl(encoded, smollm2_tokenizer, tmp_path, loss_type, layout):
    beta = 0.1 if loss_type == "dpo" else 0.5
    policy, reference = _policy_and_reference(layout=layout)
    loss, chosen_r, rejected_r, grads = _sftune(Settings(loss_type, beta), policy, reference, encoded, layout)
    trl_loss, metrics, trl_grads = _trl("sigmoid" if loss_type == "dpo" else "ipo", beta, policy, reference,
                                        encoded, smollm2_tokenizer, tmp_path)
    assert abs(float(loss) - float(trl_loss)) < 1e-5
    assert abs(chosen_r.mean().item() - metrics["rewards/chosen"]) < 1e-5
    assert abs(rejected_r.mean().item() - metrics["rewards/rejected"]) < 1e-5
    assert abs((chosen_r - rejected_r).mean().item() - metrics["rewards/margins"]) < 1e-5
    assert abs((chosen_r > rejected_r).float().mean().item() - metrics["rewards/accuracies"]) < 1e-6
    assert float(loss) != pytest.approx(0.6931, abs=1e-4)  # the policy differs from the reference
    for name, grad in grads.items():
        assert torch.allclose(grad, trl_grads[name], atol=1e-5, rtol=1e-4), name


def _full_logps(model, encoded):
    """Per answer: (summed, averaged) log-prob of its trained tokens, from full logits, one sequence at a time."""
    out = {"chosen": [], "rejected": []}
    for row in encoded:
        for answer in out:
            ids = torch.tensor([row[f"{answer}_input_ids"]])
            labels = torch.tensor(row[f"{answer}_labels"][1:])
            logits = model(input_ids=ids).logits[0, :-1]
            logp = F.log_softmax(logits.float(), -1)[labels != IGNORE].gather(1, labels[labels != IGNORE, None])
            out[answer].append((logp.sum(), logp.mean()))
    return out


@pytest.mark.parametrize("loss", ["simpo", "orpo", "dpo_smoothed", "dpo_rpo"])
def test_reference_free_losses_and_label_smoothing_equal_their_formulas(encoded, loss):
    policy, reference = _policy_and_reference(seed=1)
    settings = Settings("simpo" if loss == "simpo" else "orpo" if loss == "orpo" else "dpo",
                        beta=2.0 if loss == "simpo" else 0.1, label_smoothing=0.2 if loss == "dpo_smoothed" else 0.0,
                        simpo_gamma=0.5, orpo_lambda=0.3, rpo_alpha=0.7 if loss == "dpo_rpo" else 0.0)
    sft_loss, _, _, grads = _sftune(settings, policy, reference, encoded)

    policy.zero_grad()
    lp = _full_logps(policy, encoded)
    terms = []
    for (c_sum, c_avg), (r_sum, r_avg), i in zip(lp["chosen"], lp["rejected"], range(len(encoded))):
        if loss == "simpo":  # Meng et al. 2024, eq. 6
            terms.append(-F.logsigmoid(2.0 * c_avg - 2.0 * r_avg - 0.5))
        elif loss == "orpo":  # Hong et al. 2024, eq. 6-7: L_SFT + lambda * L_OR
            odds = lambda p: p.exp() / (1 - p.exp())  # noqa: E731
            terms.append(-c_avg - 0.3 * F.logsigmoid(torch.log(odds(c_avg) / odds(r_avg))))
        else:  # conservative DPO (Mitchell 2023): the label is flipped with probability 0.2
            with torch.no_grad():
                ref = _full_logps(reference, encoded.select([i]))
            m = (c_sum - ref["chosen"][0][0]) - (r_sum - ref["rejected"][0][0])
            smoothed = -0.8 * F.logsigmoid(0.1 * m) - 0.2 * F.logsigmoid(-0.1 * m)
            plain = -F.logsigmoid(0.1 * m)
            # RPO (Pang et al. 2024, eq. 2): DPO plus alpha times the chosen answer's mean token NLL
            terms.append(smoothed if loss == "dpo_smoothed" else plain + 0.7 * -c_avg)
    formula = torch.stack(terms).mean()
    formula.backward()
    assert abs(float(sft_loss) - float(formula)) < 1e-5
    for name, p in policy.named_parameters():
        assert torch.allclose(grads[name], p.grad, atol=1e-5, rtol=1e-4), name


def test_shared_prompt_batches_hold_each_prompt_once_and_need_varlen_attention(encoded):
    features = [encoded[i] for i in range(len(encoded))]
    shared = collate_pairs(features, packing=True, pad_token_id=0, shared_prompt=True)
    packed = collate_pairs(features, packing=True, pad_token_id=0)
    prompts = sum(next(i for i, x in enumerate(f["chosen_labels"]) if x != IGNORE) for f in features)
    assert packed["input_ids"].shape[1] - shared["input_ids"].shape[1] == prompts - len(features)
    assert torch.equal((shared["labels"] != IGNORE).sum(), (packed["labels"] != IGNORE).sum())
    # whole sequences carry their boundaries for the attention; branches are not sequences, so none there
    lengths = [len(f[f"{answer}_input_ids"]) for answer in ("chosen", "rejected") for f in features]
    assert packed["cu_seq_lens_q"].tolist() == [sum(lengths[:i]) for i in range(len(lengths) + 1)]
    assert packed["max_length_q"] == max(lengths) and "cu_seq_lens_q" not in shared
    with pytest.raises(ValueError, match="sftune_varlen"):
        sequence_logps(tiny_model("llama"), shared)


def test_token_logps_backward_recomputes_the_forwards_logits_under_autocast():
    """The DPO backward recomputes each chunk's logits outside the forward's autocast: it must recompute them in
    the forward's dtype (bf16 products of an fp32 head), or its softmax no longer matches the forward's
    log-sum-exp. Gradients equal autograd through the same bf16 logits."""
    torch.manual_seed(0)
    head = torch.nn.Linear(32, 64, bias=False)
    torch.nn.init.normal_(head.weight)  # logits of std ~17: their bf16 rounding (~0.07) shows
    hidden = (3 * torch.randn(10, 32)).requires_grad_()
    targets = torch.randint(0, 64, (10,))
    upstream = torch.randn(10)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logps = token_logps(hidden, head, targets, chunk_size=4)
    (logps * upstream).sum().backward()
    got_h, got_w = hidden.grad.clone(), head.weight.grad.clone()
    hidden.grad = head.weight.grad = None
    z = (hidden.bfloat16() @ head.weight.bfloat16().T).float()
    want = z.log_softmax(-1).gather(1, targets[:, None]).squeeze(1)
    (want * upstream).sum().backward()
    torch.testing.assert_close(logps, want.detach(), atol=1e-4, rtol=0)
    torch.testing.assert_close(got_h, hidden.grad, atol=2e-2 * hidden.grad.abs().max().item(), rtol=0)
    torch.testing.assert_close(got_w, head.weight.grad, atol=2e-2 * head.weight.grad.abs().max().item(), rtol=0)
