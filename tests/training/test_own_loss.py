"""sftune's loss is the model's own: `model(labels=...).loss` on a tiny model of each family that scales or
soft-caps its logits or adds a router loss, through the trainer's compute_loss (the token-mean cross-entropy
plus the router term outside training), gradients included."""

from __future__ import annotations

import pytest
import torch
import transformers

from sftune.preference.logps import token_logps
from sftune.training import SFTTrainer
from sftune.training.loss import LogitRule, logit_rule, trained_hidden_states
from tests.training.helpers import encoded_examples, losses, make_args, padding_free_collate

VOCAB = 256
COMMON = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=128, pad_token_id=0, bos_token_id=1, eos_token_id=2)
MOE = dict(num_experts_per_tok=2, output_router_logits=True, router_aux_loss_coef=0.3)

# name -> (config class, its settings): every family whose forward post-processes the output layer's values
# (scale, final soft-cap), MoE families with the router loss on, and plain families as controls.
FAMILIES = {
    "llama": ("LlamaConfig", {}),
    "qwen2": ("Qwen2Config", {}),
    "gemma2": ("Gemma2Config", dict(head_dim=16, final_logit_softcapping=3.0)),
    "gemma3": ("Gemma3TextConfig", dict(head_dim=16, sliding_window=64, final_logit_softcapping=3.0)),
    "recurrent_gemma": ("RecurrentGemmaConfig", dict(logits_soft_cap=3.0)),
    "cohere": ("CohereConfig", dict(logit_scale=0.25)),
    "cohere2": ("Cohere2Config", dict(logit_scale=0.25)),
    "cohere2_moe": ("Cohere2MoeConfig", dict(logit_scale=0.25, **MOE)),
    "granite": ("GraniteConfig", dict(logits_scaling=4.0)),
    "granitemoe": ("GraniteMoeConfig", dict(logits_scaling=4.0, num_local_experts=4, **MOE)),
    "granitemoeshared": ("GraniteMoeSharedConfig", dict(logits_scaling=4.0, num_local_experts=4)),
    "minicpm3": ("MiniCPM3Config", dict(dim_model_base=16, num_key_value_heads=4, q_lora_rank=32, kv_lora_rank=16)),  # hidden states divided by 64 / 16
    "hyperclovax": ("HyperCLOVAXConfig", dict(logits_scaling=0.25)),
    "falcon_h1": ("FalconH1Config", dict(lm_head_multiplier=0.25, mamba_d_ssm=32, mamba_n_heads=4, mamba_d_head=8,
                                         mamba_chunk_size=16)),
    "mixtral": ("MixtralConfig", dict(num_local_experts=4, **MOE)),
    "qwen2_moe": ("Qwen2MoeConfig", dict(num_experts=4, moe_intermediate_size=32, shared_expert_intermediate_size=32,
                                         **MOE)),
    "qwen3_moe": ("Qwen3MoeConfig", dict(num_experts=4, moe_intermediate_size=32, **MOE)),
    "olmoe": ("OlmoeConfig", dict(num_experts=4, **MOE)),
    "gpt_oss": ("GptOssConfig", dict(num_local_experts=4, head_dim=16, **MOE)),
    "jetmoe": ("JetMoeConfig", dict(num_local_experts=4, num_experts_per_tok=2, output_router_logits=True,
                                    aux_loss_coef=0.3)),
}
SCALED = {"cohere": 0.25, "cohere2": 0.25, "cohere2_moe": 0.25, "granite": 0.25, "granitemoe": 0.25,
          "granitemoeshared": 0.25, "minicpm3": 0.25, "hyperclovax": 0.25, "falcon_h1": 0.25}


def family_model(name: str):
    cls, settings = FAMILIES[name]
    torch.manual_seed(0)
    config = getattr(transformers, cls)(**{**COMMON, **settings})
    return transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32).train()


def batch() -> dict[str, torch.Tensor]:
    ids = torch.randint(3, VOCAB, (2, 24), generator=torch.Generator().manual_seed(1))
    labels = ids.clone()
    labels[:, :6] = -100
    labels[1, 15:19] = -100
    return {"input_ids": ids, "labels": labels}


def gradients(model) -> dict[str, torch.Tensor]:
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    return grads


@pytest.mark.parametrize("name", list(FAMILIES))
def test_loss_is_the_models_own(name, tmp_path):
    model = family_model(name)
    inputs = batch()
    own = model(**inputs, use_cache=False).loss
    own.backward()
    want = gradients(model)

    trainer = SFTTrainer(model=model, args=make_args(tmp_path))
    got = trainer.compute_loss(model, inputs)  # outside a training step: this batch alone
    got.backward()
    assert got.item() == pytest.approx(own.item(), rel=1e-5)
    for param, grad in gradients(model).items():
        torch.testing.assert_close(grad, want[param], atol=1e-5, rtol=1e-4, msg=param)


@pytest.mark.parametrize("name", list(SCALED))
def test_logit_rule_names_the_scale(name):
    assert logit_rule(family_model(name)) == LogitRule(scale=SCALED[name])


def test_router_loss_only_where_the_config_turns_it_on():
    model = family_model("mixtral")
    with_router = trained_hidden_states(model, batch()).aux_loss
    model.config.output_router_logits = False
    assert trained_hidden_states(model, batch()).aux_loss is None
    assert with_router is not None and with_router.item() > 0


def test_preference_log_probs_use_the_models_logits():
    """DPO's per-token log-probabilities are the model's own log-softmax, scale included, and so are their gradients."""
    model = family_model("cohere")
    inputs = batch()
    logits = model(input_ids=inputs["input_ids"], use_cache=False).logits[:, :-1]
    mask = inputs["labels"][:, 1:] != -100
    want = torch.log_softmax(logits, -1).gather(-1, inputs["labels"][:, 1:].clamp(min=0)[..., None])[..., 0][mask]
    want.sum().backward()
    reference = gradients(model)
    hidden, targets, _, head, rule, _ = trained_hidden_states(model, inputs)
    got = token_logps(hidden, head, targets, logit_rule=rule, chunk_size=7)
    got.sum().backward()
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    for param, grad in gradients(model).items():
        torch.testing.assert_close(grad, reference[param], atol=1e-5, rtol=1e-4, msg=param)


def test_router_loss_is_averaged_over_accumulated_micro_batches_and_logged_apart(tmp_path):
    """Per optimizer step: token-mean cross-entropy over the whole step + the mean of each micro-batch's
    router term (as the model weighs it); `aux_loss` in the logs is that mean."""
    data = encoded_examples(4, vocab=VOCAB)
    model = family_model("mixtral")
    micro = [padding_free_collate(data[:2]), padding_free_collate(data[2:])]
    with torch.no_grad():
        states = [trained_hidden_states(model, b) for b in micro]
        outputs = [model(**b, use_cache=False) for b in micro]
    tokens = sum(s.targets.numel() for s in states)
    cross_entropy = sum((o.loss - s.aux_loss).item() * s.targets.numel() for o, s in zip(outputs, states)) / tokens
    router = sum(s.aux_loss.item() for s in states) / 2

    trainer = SFTTrainer(model=model, args=make_args(tmp_path, per_device_train_batch_size=2,
                                                     gradient_accumulation_steps=2, max_steps=1, optim="sgd"),
                         train_dataset=data, data_collator=padding_free_collate)
    trainer.train()
    logged = next(entry for entry in trainer.state.log_history if "loss" in entry)
    assert logged["aux_loss"] == pytest.approx(router, abs=1e-4)
    assert losses(trainer)[0] == pytest.approx(cross_entropy + router, abs=1e-4)
