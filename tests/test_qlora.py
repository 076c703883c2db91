"""QLoRA on a 4-bit NF4 base through bitsandbytes: it trains, and nothing (an evaluation pass, a save,
a reload) changes the base or the gradients, on CPUs with and without AVX512-BF16.

bitsandbytes takes another path on CPUs with AVX512-BF16 (it repacks 4-bit weights for inference in
eval mode; see `sftune.methods.keep_4bit_layout`). Each layer reads the CPU kind once, when it is
built, from `bitsandbytes.nn.modules.has_avx512bf16`; the `cpu_kind` fixture sets that answer, so
both paths run on any machine.
"""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F

from sftune import methods
from sftune.methods import MethodConfig, apply_method, count_parameters

from .conftest import tiny_model

bnb = pytest.importorskip("bitsandbytes")

VOCAB = 512
LEARNABLE = {"initializer_range": 0.1}
LR = 1e-2


@pytest.fixture(params=["avx512-bf16", "no-bf16"])
def cpu_kind(request, monkeypatch):
    """Build 4-bit layers as on a CPU with AVX512-BF16 units, or without them."""
    import bitsandbytes.nn.modules as bnb_modules

    monkeypatch.setattr(bnb_modules, "has_avx512bf16", lambda: request.param == "avx512-bf16")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny layers run fastest on one thread
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield request.param
    torch.set_num_threads(threads)


@pytest.fixture
def base_dir(tmp_path):
    folder = tmp_path / "base"
    tiny_model("llama", VOCAB, **LEARNABLE).save_pretrained(folder)
    return folder


def load_4bit(folder, config: MethodConfig):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, **methods.load_kwargs(config))
    return methods.keep_4bit_layout(model)  # as sftune.models.load does for every 4-bit model


def batch(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    input_ids = torch.stack([s + (row + 1) * torch.arange(14) for row, s in enumerate(torch.randint(10, 200, (4,), generator=g))])
    return input_ids, torch.ones_like(input_ids)


def loss_of(model, input_ids, attention_mask):
    logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
    return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), input_ids[:, 1:].flatten())


def gradients(model) -> torch.Tensor:
    model.train()
    model.zero_grad()
    loss_of(model, *batch()).backward()
    return torch.cat([p.grad.flatten() for p in model.parameters() if p.requires_grad])


def evaluation_pass(model) -> None:
    """What Trainer.evaluate() does to a model: eval mode, no gradients, a forward pass."""
    model.eval()
    with torch.no_grad():
        loss_of(model, *batch(1))


def base_state(model) -> dict[str, torch.Tensor]:
    """The 4-bit base as bitsandbytes saves it: packed weights and every quantization statistic."""
    state = {}
    for name, module in model.named_modules():
        if isinstance(module, bnb.nn.Linear4bit):
            for key, value in module.state_dict().items():
                state[f"{name}.{key}"] = value.detach().clone()
            state[f"{name}.absmax"] = module.weight.quant_state.absmax.clone()
    return state


def assert_same_state(before: dict, after: dict) -> None:
    assert before.keys() == after.keys()
    changed = [k for k in before if before[k].shape != after[k].shape or not torch.equal(before[k], after[k])]
    assert not changed, f"the 4-bit base changed: {changed[:4]} ... ({len(changed)} tensors)"


def test_qlora_quantizes_trains_and_round_trips(cpu_kind, base_dir, tmp_path):
    """Linear layers become Linear4bit, LoRA on top reduces the loss, and the saved adapter gives the
    same logits on a fresh 4-bit base as the model in memory."""
    from peft import PeftModel

    config = MethodConfig(name="qlora")
    quant = methods.load_kwargs(config)["quantization_config"]
    assert (quant.bnb_4bit_quant_type, quant.bnb_4bit_use_double_quant) == ("nf4", True)
    base = load_4bit(base_dir, config)
    linear4 = [n for n, m in base.named_modules() if type(m).__name__ == "Linear4bit"]
    assert len(linear4) == 2 * 7  # every projection of both layers; the output layer stays full precision
    base_total = count_parameters(base)[1]
    assert base_total == sum(p.numel() for p in tiny_model("llama", VOCAB, **LEARNABLE).parameters())

    model = apply_method(base, config, verbose=False)
    trainable, total = count_parameters(model)
    assert (trainable, total) == model.get_nb_trainable_parameters()
    assert total == base_total + trainable
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=LR, weight_decay=0.0)
    losses = []
    for _ in range(30):
        model.train()
        loss = loss_of(model, *batch())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
        if len(losses) % 10 == 0:
            evaluation_pass(model)  # as evaluation during training does
    assert losses[-1] < 0.95 * losses[0], f"qlora: loss {losses[0]:.3f} -> {losses[-1]:.3f}"

    model.save_pretrained(tmp_path / "adapter")
    loaded = PeftModel.from_pretrained(load_4bit(base_dir, config), tmp_path / "adapter").eval()
    model.eval()
    with torch.no_grad():
        expected = model(input_ids=batch()[0], use_cache=False).logits
        got = loaded(input_ids=batch()[0], use_cache=False).logits
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_gradients_after_an_evaluation_pass_equal_gradients_without_one(cpu_kind, base_dir):
    config = MethodConfig(name="qlora")
    model = apply_method(load_4bit(base_dir, config), config, verbose=False)
    reference = gradients(model)
    evaluation_pass(model)
    torch.testing.assert_close(gradients(model), reference, atol=0, rtol=0)


def test_base_is_byte_equal_after_evaluation_and_save_pretrained(cpu_kind, base_dir, tmp_path):
    config = MethodConfig(name="qlora")
    model = apply_method(load_4bit(base_dir, config), config, verbose=False)
    before = base_state(model)
    evaluation_pass(model)
    model.save_pretrained(tmp_path / "adapter")
    model.get_base_model().save_pretrained(tmp_path / "base-again")
    assert_same_state(before, base_state(model))


def test_a_model_loaded_through_sftune_keeps_its_layout(cpu_kind, base_dir, smollm2_tokenizer):
    """`sftune.models.load` with a 4-bit quantization config turns the repacking off by itself."""
    from sftune import models

    smollm2_tokenizer.save_pretrained(base_dir)
    config = MethodConfig(name="qlora")
    model, _ = models.load(base_dir, dtype=torch.float32, **methods.load_kwargs(config))
    before = base_state(model)
    evaluation_pass(model)
    model.state_dict()
    assert_same_state(before, base_state(model))


@pytest.mark.skipif(
    not bnb.functional.has_avx512bf16(), reason="bitsandbytes repacks only on CPUs with AVX512-BF16 (this one has none)"
)
def test_bitsandbytes_still_repacks_4bit_weights_in_eval():
    """The behaviour `methods.keep_4bit_layout` works around, on a bare bitsandbytes layer. When this
    fails, bitsandbytes no longer changes the weights: remove keep_4bit_layout and this test."""
    torch.manual_seed(0)
    layer = bnb.nn.Linear4bit(256, 256, bias=False, compute_dtype=torch.float32, quant_type="nf4").to("cpu")
    before = {k: v.clone() for k, v in layer.state_dict().items()}
    layer.eval()
    with torch.no_grad():
        layer(torch.randn(3, 256))
    after = layer.state_dict()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert changed, "bitsandbytes no longer changes 4-bit weights in eval mode: remove methods.keep_4bit_layout"
