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


def test_kernel_is_varlen_attn_only_where_flash_attention_computes_the_layer():
    """The dispatch with a GPU's facts passed in: torch's varlen_attn on CUDA 8.0+ in bf16 / fp16 with a head dim
    flash attention takes (MLA's smaller value head dim is padded); the per-sequence path for a CPU, older cards,
    fp32, and soft-cap, sinks or dropout, which flash attention does not compute."""
    h100 = dict(capability=(9, 0), dtype=torch.bfloat16, head_dim=128, value_head_dim=128, available=True)
    assert attention.kernel(**h100) == attention.VARLEN
    assert attention.kernel(**{**h100, "capability": (8, 0), "dtype": torch.float16}) == attention.VARLEN  # A100
    assert attention.kernel(**{**h100, "head_dim": 192}) == attention.VARLEN  # DeepSeek V3's MLA: v 128, qk 192
    for change in ({"capability": None}, {"capability": (7, 5)}, {"capability": (7, 0)}, {"dtype": torch.float32},
                   {"head_dim": 36, "value_head_dim": 36}, {"head_dim": 512, "value_head_dim": 512},
                   {"value_head_dim": 256}, {"dropout": 0.1}, {"softcap": 50.0}, {"sinks": True},
                   {"available": False}):
        assert attention.kernel(**{**h100, **change}) == attention.PER_SEQUENCE, change
    assert attention._capability(torch.device("cpu")) is None


def test_varlen_bounds_from_positions_for_a_caller_without_the_collators():
    positions = torch.tensor([[0, 1, 2, 0, 1, 0, 1, 2, 3]])
    cu, longest = attention.varlen_bounds(positions, 1, 9)
    assert cu.tolist() == [0, 3, 5, 9] and cu.dtype == torch.int32 and longest == 4
    cu, longest = attention.varlen_bounds(torch.tensor([[0, 1, 2], [0, 1, 0]]), 2, 3)
    assert cu.tolist() == [0, 3, 5, 6] and longest == 3
    assert attention.varlen_bounds(None, 2, 4)[0].tolist() == [0, 4, 8]
    assert attention.varlen_bounds(torch.tensor([[0, 1, 2, 3, 2, 3]]), 1, 6) is None  # a shared-prompt branch


def _varlen_attn_on_cpu(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, *, scale=None, window_size=(-1, -1),
                        enable_gqa=False):
    """torch's documented varlen_attn contract ([T, H, D] in and out; key j seen by query i of a sequence when
    i - left <= j <= i + right, -1 unbounded), with sdpa one sequence at a time: the CPU stand-in for flash."""
    assert cu_seq_q.dtype == torch.int32 and torch.equal(cu_seq_q, cu_seq_k) and max_q == max_k
    assert max_q == int(cu_seq_q.diff().max()) and window_size[1] == 0
    out = []
    for start, end in zip(cu_seq_q.tolist(), cu_seq_q[1:].tolist()):
        i = torch.arange(end - start)
        distance = i[:, None] - i[None, :]
        mask = (distance >= 0) & ((distance <= window_size[0]) if window_size[0] >= 0 else True)
        q, k, v = (x[start:end].transpose(0, 1)[None] for x in (query, key, value))
        out.append(torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale,
                                                                    enable_gqa=enable_gqa)[0].transpose(0, 1))
    return torch.cat(out)


@pytest.mark.parametrize("model_type", ["llama", "mistral", "deepseek_v3"])  # GQA; a window of 8; MLA
def test_on_a_gpu_packed_rows_take_one_varlen_call_per_layer_from_the_collators_boundaries(model_type, monkeypatch):
    """With a GPU's facts, every layer attends the whole packed row in one varlen_attn call, cut where the
    collator's cu_seq_lens say: no boundary search per layer (`pieces`, a device-to-host sync on a GPU), and each
    sequence's logits are its logits alone under sdpa."""
    from tests.test_packing_families import LENGTHS, VOCAB, tiny

    calls, facts = [], []
    monkeypatch.setattr(attention, "_capability", lambda device: (9, 0))
    monkeypatch.setattr(attention, "kernel", lambda **given: facts.append(given) or attention.VARLEN)
    monkeypatch.setattr(attention, "varlen_attn", lambda *a, **k: calls.append(k) or _varlen_attn_on_cpu(*a, **k))
    model, reference = tiny(model_type), tiny(model_type, attn="sdpa")
    sequences = [torch.randint(3, VOCAB, (n,), generator=torch.Generator().manual_seed(n)).tolist() for n in LENGTHS]
    batch = packing.collate_packed([{"input_ids": s} for s in sequences])
    del batch["labels"]

    def no_search(*args):
        raise AssertionError("the boundaries were searched in a layer")

    with monkeypatch.context() as patch, torch.no_grad():
        patch.setattr(attention, "pieces", no_search)
        packed = model(**batch, use_cache=False).logits[0]
    assert len(calls) == model.config.num_hidden_layers
    assert {f["capability"] for f in facts} == {(9, 0)}
    if model_type == "mistral":
        assert {c["window_size"] for c in calls} == {(7, 0)}  # 8 tokens, the current one included
    if model_type == "deepseek_v3":
        assert {(f["head_dim"], f["value_head_dim"]) for f in facts} == {(24, 16)}
    with torch.no_grad():
        for inside, s in zip(packed.split(LENGTHS), sequences):
            torch.testing.assert_close(inside, reference(input_ids=torch.tensor([s]), use_cache=False).logits[0],
                                       atol=1e-5, rtol=0)


def test_on_a_gpu_shared_prompt_branches_keep_the_per_sequence_path(monkeypatch):
    """A row with a branch (no collator boundaries: preference.batches.collate_shared gives none) cannot be cut
    into sequences: it goes through the per-sequence path, never varlen_attn, and the branch is prompt + answer."""
    calls = []
    monkeypatch.setattr(attention, "_capability", lambda device: (9, 0))
    monkeypatch.setattr(attention, "kernel", lambda **given: attention.VARLEN)
    monkeypatch.setattr(attention, "varlen_attn", lambda *a, **k: calls.append(k) or _varlen_attn_on_cpu(*a, **k))
    reference, varlen = _pair("llama")
    prompt, a, b = _sequences(20, 10, 12)
    ids = prompt + a + prompt[-1:] + b
    positions = list(range(len(prompt) + len(a))) + list(range(len(prompt) - 1, len(prompt) + len(b)))
    with torch.no_grad():
        shared = varlen(input_ids=torch.tensor([ids]), position_ids=torch.tensor([positions]), use_cache=False)
        alone = reference(input_ids=torch.tensor([prompt + b]), use_cache=False).logits[0]
    assert calls == []
    torch.testing.assert_close(shared.logits[0, len(prompt) + len(a):], alone[len(prompt) - 1:], atol=1e-5, rtol=0)
