"""Packing on every decoder architecture sftune declares (packing.ARCHITECTURES): each sequence of a packed row
has its logits alone (fp32, 1e-4) under sftune's varlen attention, or the architecture trains padded with its
reason; and the start-up probe finds a model that leaks, which then trains on padded batches."""

from __future__ import annotations

import pytest
import torch
import transformers
from transformers import CONFIG_MAPPING, AutoModelForCausalLM

from sftune import attention, packing

VOCAB = 128
COMMON = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, head_dim=16, max_position_embeddings=256, pad_token_id=0, bos_token_id=1,
              eos_token_id=2, tie_word_embeddings=False,
              # MoE families: few small experts (keys a family does not read are ignored)
              num_experts=4, num_local_experts=4, n_routed_experts=4, num_experts_per_tok=2, moe_intermediate_size=32,
              shared_expert_intermediate_size=32, n_shared_experts=1, n_group=1, topk_group=1, first_k_dense_replace=1)
MLA = dict(head_dim=None, num_key_value_heads=4, qk_rope_head_dim=8, qk_nope_head_dim=16, v_head_dim=16,
           kv_lora_rank=16, q_lora_rank=32)
# Windows and chunks shorter than the test's sequences, so that a wrong window shows.
OVERRIDES = {
    "llama4_text": dict(attention_chunk_size=8, sliding_window=None),
    "deepseek_v2": MLA, "deepseek_v3": MLA, "glm4_moe_lite": MLA, "minicpm3": MLA,
    "gemma2": dict(sliding_window=8, attn_logit_softcapping=5.0, final_logit_softcapping=3.0),
}
SLIDING = dict(sliding_window=8)
LENGTHS = (13, 9, 21)


def tiny(model_type: str, attn: str = attention.register()):
    settings = {**COMMON, **SLIDING, **OVERRIDES.get(model_type, {})}
    settings = {k: v for k, v in settings.items() if v is not None}
    torch.manual_seed(0)
    config = CONFIG_MAPPING[model_type](**settings)
    return AutoModelForCausalLM.from_config(config, dtype=torch.float32, attn_implementation=attn).eval()


def packed_and_alone(model, *, boundaries: bool = True) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(logits inside the packed row, logits alone) per sequence; the row as training feeds it (position_ids and
    the collator's cu_seq_lens / max_length), or with position_ids only."""
    generator = torch.Generator().manual_seed(1)
    sequences = [torch.randint(3, VOCAB, (n,), generator=generator).tolist() for n in LENGTHS]
    batch = packing.collate_packed([{"input_ids": s} for s in sequences])
    batch = {k: v for k, v in batch.items() if k in ("input_ids", "position_ids") or (boundaries and k != "labels")}
    with torch.no_grad():
        packed = model(**batch, use_cache=False).logits[0]
        alone = [model(input_ids=torch.tensor([s]), use_cache=False).logits[0] for s in sequences]
    return list(zip(packed.split(LENGTHS), alone))


ISOLATED = [name for name, why in packing.ARCHITECTURES.items() if why is None]
PADDED = [name for name, why in packing.ARCHITECTURES.items() if why is not None]
# The padded families whose tiny model runs in a second on a CPU: the probe must find their leak, or their
# refusal of the collator's boundaries (transformers' Gated DeltaNet reads cu_seq_lens only through
# flash-linear-attention, and raises without it).
PROBED_LEAKS = {"minimax": "not the same sequence alone", "mamba": "not the same sequence alone",
                "olmo_hybrid": "can't keep packed sequences apart without `flash-linear-attention`",
                "recurrent_gemma": "not the same sequence alone", "xlstm": "not the same sequence alone"}


def test_every_declared_architecture_is_in_the_installed_transformers():
    assert set(packing.ARCHITECTURES) <= set(CONFIG_MAPPING.keys())


@pytest.mark.parametrize("model_type", ISOLATED)
def test_packed_sequences_are_the_sequences_alone(model_type):
    model = tiny(model_type)
    for inside, alone in packed_and_alone(model):
        torch.testing.assert_close(inside, alone, atol=1e-4, rtol=0)
    assert packing.packing_refused(model) is None


@pytest.mark.parametrize("model_type", PADDED)
def test_an_architecture_that_leaks_trains_padded_with_its_reason(model_type):
    why = packing.packing_refused(tiny(model_type))
    assert why.startswith(f"{model_type}: ") and "packed sequence starts from the state" in why


@pytest.mark.parametrize("model_type", PROBED_LEAKS)
def test_the_probe_finds_the_leak_the_table_names(model_type):
    model = tiny(model_type)
    leak = packed_and_alone(model, boundaries=False)
    assert max(float((inside - alone).abs().max()) for inside, alone in leak) > 1e-3
    assert PROBED_LEAKS[model_type] in packing.probe(model)


def test_softcapped_attention_runs_packed_where_sdpa_refuses_it():
    """Gemma 2's attention soft-cap: sdpa raises on it; sftune's varlen attention computes it, and a padded batch
    (a mask) goes the same way instead of crashing."""
    model = tiny("gemma2")
    assert model.model.layers[0].self_attn.config.attn_logit_softcapping == 5.0
    eager = tiny("gemma2", attn="eager")
    ids = torch.randint(3, VOCAB, (2, 12), generator=torch.Generator().manual_seed(2))
    mask = torch.ones_like(ids)
    mask[1, 9:] = 0
    with torch.no_grad():
        want = eager(input_ids=ids, attention_mask=mask, use_cache=False).logits
        got = model(input_ids=ids, attention_mask=mask, use_cache=False).logits
    torch.testing.assert_close(got[0], want[0], atol=1e-4, rtol=0)
    torch.testing.assert_close(got[1, :9], want[1, :9], atol=1e-4, rtol=0)


def test_the_probe_checks_shared_prompt_branches():
    assert packing.probe(tiny("llama"), branches=True) is None
    assert "a branch of a shared prompt" in packing.probe(tiny("llama", attn="sdpa"), branches=True)


def test_a_packed_forward_that_raises_turns_packing_off_with_the_error(monkeypatch):
    model = tiny("llama")
    forward = model.forward

    def fails_packed(*args, position_ids=None, **kwargs):
        if position_ids is not None:
            raise RuntimeError("shapes do not match")
        return forward(*args, **kwargs)

    monkeypatch.setattr(model, "forward", fails_packed)
    assert "packed forward pass fails on this model (RuntimeError: shapes do not match)" in packing.probe(model)


def test_a_listed_architecture_under_sftunes_attention_is_not_probed_and_under_another_it_is(monkeypatch):
    calls = []
    monkeypatch.setattr(packing, "probe", lambda model, branches=False: calls.append(model) or "probed")
    assert packing.packing_refused(tiny("llama")) is None and calls == []
    assert packing.packing_refused(tiny("llama", attn="sdpa")) == "probed" and len(calls) == 1


def test_split_weights_trust_the_table_and_refuse_an_unlisted_architecture(monkeypatch):
    """Under ZeRO-3 (weights partitioned at load, ds_id on each) no forward can run before the engine: a listed
    architecture packs on the table's word, an unlisted one trains padded with the reason, and the probe never runs."""
    def no_probe(*args, **kwargs):
        raise AssertionError("the probe ran a forward on split weights")

    monkeypatch.setattr(packing, "probe", no_probe)
    model = tiny("llama")
    for parameter in model.parameters():
        parameter.ds_id = 0
    assert packing.packing_refused(model) is None
    monkeypatch.delitem(packing.ARCHITECTURES, "llama")
    assert "split across processes (DeepSpeed ZeRO-3)" in packing.packing_refused(model)


def test_training_goes_on_padded_when_the_probe_finds_a_leak(tmp_path, smollm2_tokenizer, monkeypatch):
    """An architecture the table does not list: the probe on the model decides, says why in a yellow line, and
    the run trains on padded batches."""
    from rich.console import Console

    from sftune import train
    from tests.training.test_recipe import run_config

    monkeypatch.delitem(packing.ARCHITECTURES, "minimax")
    folder = tmp_path / "tiny-minimax"
    config = tiny("minimax").config
    config.vocab_size = len(smollm2_tokenizer)
    torch.manual_seed(0)
    transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32).save_pretrained(folder)
    smollm2_tokenizer.save_pretrained(folder)
    console = Console(record=True, width=400, force_terminal=True)
    result = train(run_config(tmp_path, folder, train={"max_steps": 1, "save_steps": None}, eval={"steps": None}),
                   console=console)
    assert result.summary["packing"] is False
    out = console.export_text(styles=True)
    line = next(line for line in out.splitlines() if "packing off" in line)
    assert "not the same sequence alone on this model" in line and "\x1b[33m" in line
