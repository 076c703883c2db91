"""sftune's varlen attention: the same numbers as transformers' sdpa, with packed sequences apart."""

from __future__ import annotations

import json

import pytest
import torch

from sftune import attention, packing
from tests.conftest import tiny_model

VOCAB = 512


def _pair(arch: str, **overrides):
    """(sdpa model, the same weights with sftune's varlen attention)."""
    reference = tiny_model(arch, vocab_size=VOCAB, **overrides)
    varlen = tiny_model(arch, vocab_size=VOCAB, **overrides)
    varlen.set_attn_implementation(attention.register())
    return reference, varlen


def _sequences(*lengths: int, seed: int = 1) -> list[list[int]]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(0, VOCAB, (n,), generator=gen).tolist() for n in lengths]


def test_sequence_bounds_cut_where_positions_restart():
    positions = torch.tensor([0, 1, 2, 0, 1, 0, 1, 2, 3])
    assert attention.sequence_bounds(positions, 9) == [(0, 3), (3, 5), (5, 9)]
    assert attention.sequence_bounds(None, 4) == [(0, 4)]
    # a row that does not start at position 0 (a continued sequence) is one piece up to the first restart
    assert attention.sequence_bounds(torch.tensor([5, 6, 0, 1]), 4) == [(0, 2), (2, 4)]


def test_pieces_find_branches_where_positions_step_back_inside_a_sequence():
    positions = torch.tensor([0, 1, 2, 3, 4, 5, 2, 3, 4, 0, 1, 2, 3, 1, 2, 2, 3])
    assert attention.pieces(positions, 17) == [(0, 6, -1), (6, 9, 0), (9, 13, -1), (13, 15, 9), (15, 17, 9)]
    assert attention.pieces(torch.tensor([0, 1, 2, 0, 1]), 5) == [(0, 3, -1), (3, 5, -1)]
    # no branch in a row that starts mid-sequence, nor one reaching past its trunk
    assert attention.pieces(torch.tensor([5, 6, 3, 0, 1]), 5) == [(0, 3, -1), (3, 5, -1)]
    assert attention.pieces(torch.tensor([0, 1, 1, 2, 3, 3]), 6) == [(0, 2, -1), (2, 6, 0)]


@pytest.mark.parametrize("arch", ["llama", "gemma"])
def test_a_branch_equals_its_sequence_alone(arch):
    """[prompt + answer a, then the prompt's last token + answer b at positions stepping back]: the tokens of
    the branch have the logits of prompt + b alone (<= 1e-5 fp32), and the gradients of a loss on both
    answers equal those of the two sequences packed whole."""
    reference, varlen = _pair(arch)
    prompt, a, b = _sequences(80, 30, 45)
    branch = [prompt[-1]] + b
    ids = prompt + a + branch
    positions = list(range(len(prompt) + len(a))) + list(range(len(prompt) - 1, len(prompt) + len(b)))
    inputs = {"input_ids": torch.tensor([ids]), "position_ids": torch.tensor([positions]), "use_cache": False}
    shared = varlen(**inputs).logits[0]
    with torch.no_grad():
        first = reference(input_ids=torch.tensor([prompt + a]), use_cache=False).logits[0]
        second = reference(input_ids=torch.tensor([prompt + b]), use_cache=False).logits[0]
    torch.testing.assert_close(shared[: len(prompt) + len(a)], first, atol=1e-5, rtol=0)
    torch.testing.assert_close(shared[len(prompt) + len(a):], second[len(prompt) - 1:], atol=1e-5, rtol=0)

    shared[len(prompt) + len(a):].logsumexp(-1).sum().add(shared[len(prompt):len(prompt) + len(a)].sum()).backward()
    batch = packing.collate_packed([{"input_ids": prompt + a}, {"input_ids": prompt + b}])
    whole = reference(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits[0]
    n = len(prompt) + len(a)
    whole[n + len(prompt) - 1:].logsumexp(-1).sum().add(whole[len(prompt):n].sum()).backward()
    for (name, x), (_, y) in zip(reference.named_parameters(), varlen.named_parameters()):
        torch.testing.assert_close(y.grad, x.grad, atol=1e-4, rtol=1e-4, msg=f"gradient of {name}")


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gemma"])
def test_packed_logits_and_gradients_equal_sdpa_and_each_sequence_alone(arch):
    """Per-sequence logits in a pack == the sequence alone (<= 1e-5 fp32), and the packed loss's
    gradients == those of transformers' sdpa with its block-diagonal mask."""
    reference, varlen = _pair(arch)
    seqs = _sequences(11, 7, 20, 1)
    batch = packing.collate_packed([{"input_ids": s, "labels": [-100] + s[1:]} for s in seqs])
    inputs = {"input_ids": batch["input_ids"], "position_ids": batch["position_ids"], "use_cache": False}
    packed = varlen(**inputs).logits[0]
    with torch.no_grad():
        start = 0
        for s in seqs:
            alone = reference(input_ids=torch.tensor([s]), use_cache=False).logits[0]
            torch.testing.assert_close(packed[start : start + len(s)], alone, atol=1e-5, rtol=0)
            start += len(s)

    def loss(model):
        logits = model(**inputs).logits[0]
        return torch.nn.functional.cross_entropy(logits[:-1], batch["labels"][0][1:], ignore_index=-100)

    loss(reference).backward()
    loss(varlen).backward()
    for (name, a), (_, b) in zip(reference.named_parameters(), varlen.named_parameters()):
        torch.testing.assert_close(b.grad, a.grad, atol=1e-5, rtol=1e-4, msg=f"gradient of {name}")


def test_sliding_window_longer_than_the_sequence_is_applied():
    """Gemma 3's local layers (window 64 in the tiny model) on a 150-token sequence: same as sdpa."""
    reference, varlen = _pair("gemma")
    seqs = _sequences(150, 90)
    batch = packing.collate_packed([{"input_ids": s} for s in seqs])
    with torch.no_grad():
        packed = varlen(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits[0]
        for start, s in ((0, seqs[0]), (150, seqs[1])):
            alone = reference(input_ids=torch.tensor([s]), use_cache=False).logits[0]
            torch.testing.assert_close(packed[start : start + len(s)], alone, atol=1e-5, rtol=0)


@pytest.mark.parametrize("arch", ["llama", "gemma"])
def test_padded_batches_and_generation_fall_back_to_sdpa(arch):
    """Padding masks and a KV cache are sdpa's job: identical logits and identical greedy tokens."""
    reference, varlen = _pair(arch)
    seqs = _sequences(9, 5)
    batch = packing.collate_padded([{"input_ids": s} for s in seqs], pad_token_id=0, padding_side="left")
    with torch.no_grad():
        a = reference(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        b = varlen(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        real = batch["attention_mask"].bool()
        torch.testing.assert_close(b[real], a[real], atol=1e-5, rtol=0)
        prompt = torch.tensor([seqs[0]])
        options = {"max_new_tokens": 6, "do_sample": False, "pad_token_id": 0}
        assert varlen.generate(prompt, **options).tolist() == reference.generate(prompt, **options).tolist()


def test_saved_config_does_not_name_the_training_attention(tmp_path):
    """A model trained with varlen attention loads anywhere: the name is not written to config.json."""
    _, varlen = _pair("llama")
    varlen.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert attention.NAME not in json.dumps(saved)


def test_resolve_picks_varlen_for_packed_batches_only():
    assert attention.resolve("auto", packing=True) == attention.NAME
    assert attention.resolve("auto", packing=False) is None  # transformers' default: sdpa, or eager where refused
    assert attention.resolve("eager", packing=True) == "eager"


@pytest.mark.parametrize("model_type", ["gemma2", "gpt_oss"])
def test_models_that_refuse_sdpa_load_and_train_on_padded_batches(tmp_path, smollm2_tokenizer, model_type):
    """Gemma 2 (soft-capped scores) and gpt-oss (attention sinks) refuse sdpa at load; with packing off, 'auto'
    lets transformers pick what they accept (eager) and a training step runs."""
    import transformers

    from sftune import train
    from tests.test_packing_families import tiny
    from tests.training.test_recipe import run_config

    config = tiny(model_type).config
    config.vocab_size = len(smollm2_tokenizer)
    torch.manual_seed(0)
    folder = tmp_path / model_type
    transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32).save_pretrained(folder)
    smollm2_tokenizer.save_pretrained(folder)
    loaded = transformers.AutoModelForCausalLM.from_pretrained(
        folder, attn_implementation=attention.resolve("auto", packing=False))
    assert loaded.config._attn_implementation == "eager"
    cfg = run_config(tmp_path, folder, data={"packing": False}, train={"max_steps": 1, "save_steps": None},
                     eval={"steps": None})
    summary = train(cfg).summary
    assert summary["packing"] is False and summary["steps"] == 1 and summary["trained_tokens"] > 0
