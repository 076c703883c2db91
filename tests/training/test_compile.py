"""train.compile: each decoder layer compiled, the inductor cache under SFTUNE_HOME, same results."""

from __future__ import annotations

import os

import pytest
import torch

from sftune.methods import MethodConfig, apply_method, decoder_layers
from sftune.training.compile import compile_layers
from tests.conftest import tiny_model


def test_each_decoder_layer_is_compiled_with_the_cache_under_sftune_home(tmp_path, monkeypatch):
    monkeypatch.setenv("SFTUNE_HOME", str(tmp_path))
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    model = apply_method(tiny_model("llama"), MethodConfig(name="lora", r=4), verbose=False)
    assert compile_layers(model) == model.config.num_hidden_layers
    assert all(layer._compiled_call_impl is not None for layer in decoder_layers(model))
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "inductor")


def test_a_cache_folder_the_user_set_is_kept(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "mine"))
    compile_layers(tiny_model("llama"))
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "mine")


@pytest.mark.slow
def test_compiled_layers_give_the_eager_loss_and_gradients(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    from sftune.training.loss import linear_token_loss, trained_hidden_states
    from tests.training.helpers import encoded_examples, padding_free_collate

    batch = padding_free_collate(encoded_examples(4, vocab=tiny_model("llama").config.vocab_size))
    results = []
    for compiled in (False, True):
        torch.manual_seed(0)
        model = apply_method(tiny_model("llama"), MethodConfig(name="lora", r=4), verbose=False)
        if compiled:
            compile_layers(model)
        hidden, targets, _, head, rule, _ = trained_hidden_states(model, batch)
        loss = linear_token_loss(hidden, head, targets, logit_rule=rule)
        loss.backward()
        results.append((loss.detach(), {n: p.grad for n, p in model.named_parameters() if p.grad is not None}))
    (eager, eager_grads), (compiled, compiled_grads) = results
    torch.testing.assert_close(compiled, eager, atol=1e-4, rtol=1e-5)  # fp32: kernel fusion reorders sums
    for name in eager_grads:
        torch.testing.assert_close(compiled_grads[name], eager_grads[name], atol=1e-5, rtol=1e-3, msg=name)
