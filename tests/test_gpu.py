"""The GPU path (skipped without CUDA): flash-attention varlen (flash_attn's, and torch's varlen_attn under
sftune_varlen) keeps packed sequences apart, bf16 training, QLoRA through bitsandbytes on CUDA.
Run them on a CUDA machine with a full install (`pytest -m gpu`); a lent GPU machine without one gets
bench/gpu_oneshot.py instead."""

from __future__ import annotations

import pytest
import torch

from sftune import attention
from tests.conftest import tiny_model

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def test_auto_attention_is_flash_varlen_for_packed_rows():
    if not attention.flash_varlen_available():
        pytest.skip("flash_attn is not installed (pip install flash-attn --no-build-isolation)")
    assert attention.resolve("auto", packing=True) == "flash_attention_2"
    assert attention.resolve("auto", packing=False) is None  # transformers picks sdpa (eager where refused)


def test_flash_varlen_packed_equals_alone():
    """A sequence's logits inside a packed row equal its logits alone (bf16: within bf16 rounding)."""
    if not attention.flash_varlen_available():
        pytest.skip("flash_attn is not installed")
    model = tiny_model("llama", vocab_size=512).to("cuda", torch.bfloat16)
    model.set_attn_implementation("flash_attention_2")
    lengths = [37, 80, 5, 120]
    seqs = [torch.randint(0, 512, (n,), device="cuda") for n in lengths]
    ids = torch.cat(seqs)[None]
    positions = torch.cat([torch.arange(n, device="cuda") for n in lengths])[None]
    with torch.no_grad():
        packed = model(input_ids=ids, position_ids=positions, use_cache=False).logits[0].float()
        start = 0
        for seq in seqs:
            alone = model(input_ids=seq[None], use_cache=False).logits[0].float()
            torch.testing.assert_close(packed[start:start + len(seq)], alone, atol=3e-2, rtol=3e-2)
            start += len(seq)


def test_bf16_training_runs_in_bf16(tmp_path, smollm2_tokenizer):
    from tests.training.test_recipe import run_config

    from sftune import train

    folder = tmp_path / "tiny-model"
    tiny_model("llama", vocab_size=len(smollm2_tokenizer)).save_pretrained(folder)
    smollm2_tokenizer.save_pretrained(folder)
    result = train(run_config(tmp_path, folder, train={"precision": "bf16", "max_steps": 4}, eval={"steps": 4}))
    assert result.summary["precision"] == "bf16" and result.summary["device"] == "cuda"
    losses = [r["loss"] for r in result.summary.get("log", [])] or [result.summary["train_loss"]]
    assert all(torch.isfinite(torch.tensor(losses)))


def test_qlora_forward_backward_on_cuda():
    """bitsandbytes 4-bit weights on the GPU: loss and adapter gradients are finite and nonzero."""
    from sftune import methods
    from sftune.methods import MethodConfig

    kwargs = methods.load_kwargs(MethodConfig(name="qlora"), device="cuda")
    assert kwargs["quantization_config"].load_in_4bit
    from transformers import AutoModelForCausalLM

    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        tiny_model("llama", vocab_size=512, hidden_size=128, intermediate_size=256).save_pretrained(folder)
        model = AutoModelForCausalLM.from_pretrained(folder, **kwargs)
    model = methods.apply_method(model, MethodConfig(name="qlora"), verbose=False)
    ids = torch.randint(0, 512, (2, 64), device="cuda")
    loss = model(input_ids=ids, labels=ids, use_cache=False).loss
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert torch.isfinite(loss) and grads and all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize("window", [None, 24])
def test_varlen_attn_packed_equals_alone_and_sdpa_gradients(window, monkeypatch):
    """sftune_varlen on CUDA in bf16: torch's varlen_attn does each layer in one call from the collator's
    cu_seq_lens (no boundary search in a layer: `pieces` is never called), each sequence's logits equal its
    logits alone, and the packed loss's gradients equal transformers' sdpa with its block-diagonal mask."""
    from sftune import packing

    if not torch.cuda.is_bf16_supported(including_emulation=False) or torch.cuda.get_device_capability() < (8, 0):
        pytest.skip("flash attention needs compute capability 8.0+")
    extra = {} if window is None else {"sliding_window": window, "use_sliding_window": True, "max_window_layers": 0}
    reference = tiny_model("qwen2", vocab_size=512, hidden_size=256, num_attention_heads=4, **extra)
    reference = reference.to("cuda", torch.bfloat16)
    varlen = tiny_model("qwen2", vocab_size=512, hidden_size=256, num_attention_heads=4, **extra)
    varlen = varlen.to("cuda", torch.bfloat16)
    varlen.set_attn_implementation(attention.register())
    calls = []
    kernel = attention.varlen_attn
    monkeypatch.setattr(attention, "varlen_attn", lambda *a, **k: calls.append(k) or kernel(*a, **k))
    lengths = [37, 80, 5, 120]
    seqs = [torch.randint(0, 512, (n,)).tolist() for n in lengths]
    batch = packing.collate_packed([{"input_ids": s} for s in seqs])
    inputs = {k: v.to("cuda") if torch.is_tensor(v) else v for k, v in batch.items() if k != "labels"}

    def no_search(*args):
        raise AssertionError("the boundaries were searched in a layer")

    with monkeypatch.context() as patch:
        patch.setattr(attention, "pieces", no_search)
        packed = varlen(**inputs, use_cache=False).logits[0].float()
    assert len(calls) == varlen.config.num_hidden_layers
    with torch.no_grad():
        for inside, s in zip(packed.split(lengths), seqs):
            alone = reference(input_ids=torch.tensor([s], device="cuda"), use_cache=False).logits[0].float()
            torch.testing.assert_close(inside, alone, atol=3e-2, rtol=3e-2)
    labels = batch["labels"][0, 1:].to("cuda")
    torch.nn.functional.cross_entropy(packed[:-1], labels, ignore_index=-100).backward()
    positions = {"input_ids": inputs["input_ids"], "position_ids": inputs["position_ids"]}
    logits = reference(**positions, use_cache=False).logits[0].float()
    torch.nn.functional.cross_entropy(logits[:-1], labels, ignore_index=-100).backward()
    for (name, a), (_, b) in zip(reference.named_parameters(), varlen.named_parameters()):
        torch.testing.assert_close(b.grad.float(), a.grad.float(), atol=2e-2, rtol=5e-2, msg=f"gradient of {name}")
