"""DPO's per-answer log-probabilities through the SFT loss's chunked output layer, against plain autograd: the
model's own logits, log_softmax, summed over each answer's trained tokens; gradients of a weighted sum too."""

from __future__ import annotations

import contextlib

import pytest
import torch
import torch.nn.functional as F

from sftune.encode import IGNORE
from sftune.preference.batches import collate_pairs
from sftune.preference.logps import sequence_logps, token_logps
from sftune.training import loss as loss_module
from tests.conftest import tiny_model
from tests.training.test_loss import _Ops

VOCAB = 96


def _pairs(seed: int = 0) -> list[dict]:
    """Three pairs of random tokens: a prompt (untrained) then each answer."""
    g = torch.Generator().manual_seed(seed)
    pairs = []
    for prompt, chosen, rejected in ((4, 5, 3), (6, 2, 7), (3, 4, 4)):
        p = torch.randint(0, VOCAB, (prompt,), generator=g).tolist()
        row = {}
        for answer, n in (("chosen", chosen), ("rejected", rejected)):
            a = torch.randint(0, VOCAB, (n,), generator=g).tolist()
            row[f"{answer}_input_ids"], row[f"{answer}_labels"] = p + a, [IGNORE] * prompt + a
        pairs.append(row)
    return pairs


def _reference(model, pairs: list[dict]) -> torch.Tensor:
    """[2B] summed log-prob of each answer, chosen ones then rejected ones, from the model's full logits."""
    sums = []
    for answer in ("chosen", "rejected"):
        for f in pairs:
            labels = torch.tensor(f[f"{answer}_labels"][1:])
            logits = model(input_ids=torch.tensor([f[f"{answer}_input_ids"]]), use_cache=False).logits[0, :-1]
            trained = labels != IGNORE
            sums.append(F.log_softmax(logits.float(), -1)[trained].gather(1, labels[trained, None]).sum())
    return torch.stack(sums)


@pytest.mark.parametrize("arch", ["llama", "gemma"])  # gemma: the final soft-cap in the chain rule
@pytest.mark.parametrize("head_trained", [True, False], ids=["trained-head", "frozen-head"])
@pytest.mark.parametrize("packing", [True, False], ids=["packed", "padded"])
def test_sequence_logps_and_gradients_equal_autograd_through_full_logits(arch, head_trained, packing):
    """Both gradient paths: a trained head (backward recomputes each chunk) and a frozen one, as under LoRA (each
    row's gradient on its hidden state worked out in the forward, scaled in backward)."""
    extra = {"final_logit_softcapping": 5.0} if arch == "gemma" else {}
    model = tiny_model(arch, vocab_size=VOCAB, **extra).train()
    model.get_output_embeddings().requires_grad_(head_trained)
    pairs = _pairs()
    upstream = torch.randn(2 * len(pairs), generator=torch.Generator().manual_seed(5))  # a loss's d/d logp

    want = _reference(model, pairs)
    (want * upstream).sum().backward()
    want_grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    model.zero_grad()

    batch = collate_pairs(pairs, packing=packing, pad_token_id=0)
    sums, tokens = sequence_logps(model, batch)
    (sums * upstream).sum().backward()
    torch.testing.assert_close(sums, want.detach(), atol=1e-5, rtol=1e-5)
    assert tokens.tolist() == [5, 2, 4, 3, 7, 4]
    assert len(want_grads) > 5
    for name, grad in want_grads.items():
        param = dict(model.named_parameters())[name]
        torch.testing.assert_close(param.grad, grad, atol=1e-5, rtol=1e-4, msg=name)


@pytest.mark.parametrize("head_trained", [True, False], ids=["trained-head", "frozen-head"])
def test_zero3_head_is_gathered_and_logps_stay_chunked(monkeypatch, head_trained):
    """DPO under ZeRO-3 takes the SFT head's handling: the split output layer is gathered for the call (and again
    in backward where its own gradient needs the upstream one), and its forward never runs over all rows (all
    fp32 logits at once). The ZeRO-3 weight is a stand-in (a `ds_id` and a recording gather)."""
    torch.manual_seed(0)
    head = torch.nn.Linear(16, 40, bias=True).requires_grad_(head_trained)
    head.weight.ds_id = 7
    gathers = []
    monkeypatch.setattr(loss_module, "gathered", lambda layer: gathers.append(layer) or contextlib.nullcontext())
    head.register_forward_hook(lambda *_: pytest.fail("the ZeRO-3 head's forward built all logits"))
    hidden = torch.randn(12, 16, requires_grad=True)
    targets = torch.randint(0, 40, (12,))
    upstream = torch.randn(12)
    with _Ops() as ops:
        logps = token_logps(hidden, head, targets, chunk_size=4)
        (logps * upstream).sum().backward()
    assert gathers == ([head, head] if head_trained else [head])
    assert max(shape[0] for op, shape in ops.calls if len(shape) == 2 and shape[1] == 40) <= 4
    got = [hidden.grad.clone()] + ([head.weight.grad.clone(), head.bias.grad.clone()] if head_trained else [])
    hidden.grad = head.weight.grad = head.bias.grad = None
    want = F.linear(hidden, head.weight, head.bias).log_softmax(-1).gather(1, targets[:, None]).squeeze(1)
    (want * upstream).sum().backward()
    torch.testing.assert_close(logps, want.detach(), atol=1e-5, rtol=1e-5)
    for g, w in zip(got, [hidden.grad] + ([head.weight.grad, head.bias.grad] if head_trained else [])):
        torch.testing.assert_close(g, w, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("layout", ["shared", "packed", "padded"])
def test_the_default_preference_path_reads_nothing_back_from_the_device(layout):
    """A batch from collate_pairs carries its trained positions, their sequences and each sequence's token count,
    computed on the CPU: the log-probs, the pair losses, the logged metrics' sums and the step's pair and token
    counts then make no host sync (the stand-in for torch.cuda.set_sync_debug_mode of the SFT loss test), and
    equal what a batch without them gives (boolean masks, bincount)."""
    from sftune import attention
    from sftune.preference.batches import SEQUENCE_TOKENS, TRAINED_SEQUENCE
    from sftune.preference.losses import Settings, pair_losses
    from sftune.preference.trainer import PreferenceTrainer, pair_count
    from sftune.training.loss import TRAINED_INDEX, count_trained_tokens
    from tests.training.test_loss import _Syncs, _disable_current_modes

    model = tiny_model("llama", vocab_size=VOCAB)
    model.set_attn_implementation(attention.register())
    pairs = _pairs(1)
    for i, f in enumerate(pairs):
        f["ref_chosen"], f["ref_rejected"] = -3.0 - i, -4.0 + i
    batch = collate_pairs(pairs, packing=layout != "padded", pad_token_id=0, shared_prompt=layout == "shared")

    def model_unwatched(**inputs):  # the attention's own work is not the loss's business
        with _disable_current_modes():
            return model(**inputs)

    model_unwatched.config = model.config
    model_unwatched.get_output_embeddings = model.get_output_embeddings
    with _Syncs() as syncs:
        sums, tokens = sequence_logps(model_unwatched, batch)
        losses, chosen_r, rejected_r = pair_losses(Settings("dpo"), sums[:3], sums[3:], tokens[:3], tokens[3:],
                                                   batch["ref_chosen"], batch["ref_rejected"])
        recorded = PreferenceTrainer._record(None, chosen_r, rejected_r, sums[:3], sums[3:])
        recorded = PreferenceTrainer._record(recorded, chosen_r, rejected_r, sums[:3], sums[3:])
        counted = pair_count(batch), count_trained_tokens([batch])
    assert syncs.seen == []
    plain = {k: v for k, v in batch.items() if k not in (TRAINED_INDEX, TRAINED_SEQUENCE, SEQUENCE_TOKENS)}
    want_sums, want_tokens = sequence_logps(model, plain)
    torch.testing.assert_close(sums, want_sums)
    assert torch.equal(tokens, want_tokens) and counted == (3, int(want_tokens.sum()))
    assert recorded[-1].item() == 6 and recorded[0].item() == pytest.approx(2 * chosen_r.sum().item())
