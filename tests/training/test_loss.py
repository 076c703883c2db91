"""The SFT loss against references: the model's own cross-entropy, weighted tokens, pack boundaries."""

from __future__ import annotations

import pytest
import torch

from sftune.training.loss import linear_cross_entropy, token_stats, trained_hidden_states
from tests.conftest import tiny_model
from tests.training.helpers import VOCAB, padding_free_collate


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

    hidden, targets, weights, head, rule, _ = trained_hidden_states(model, {"input_ids": ids, "labels": labels})
    loss = linear_cross_entropy(hidden, head, targets, weights, logit_rule=rule, chunk_size=7) / targets.numel()
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
    targets = trained_hidden_states(model, padding_free_collate(rows)).targets
    assert targets.tolist() == [6, 7, 9]
