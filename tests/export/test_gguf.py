"""GGUF export round-trips through transformers' GGUF loader: weights, config, tokenizer, chat template."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from sftune import templates
from sftune.export.gguf import write_gguf
from tests.conftest import tiny_model

TEXTS = ["住在重庆的张伟，年龄是37岁。", "Hello  world!\n\n\tIndented 12345 and 3.14", "<|im_start|>user\nHi<|im_end|>",
         " leading space, trailing ", "emoji 🙂 and ünïcödé"]
# Tolerances: the file holds f16 weights, so the reference is the model with its weights rounded to f16, which
# must give the same logits up to float32 summation order; q8_0 keeps ~8 bits per weight, compared with the model.
F16_TOLERANCE = 1e-4
Q8_TOLERANCE = 5e-2


def write(model, tokenizer, folder, outtype):
    template = templates.default_for(tokenizer)
    write_gguf(model, tokenizer, template, template.stop_token_ids(tokenizer), folder / "model.gguf", outtype=outtype)


def write_and_load(model, tokenizer, folder, outtype):
    write(model, tokenizer, folder, outtype)
    return AutoModelForCausalLM.from_pretrained(folder, gguf_file="model.gguf", dtype=torch.float32).eval(), None


def rounded_to_f16(model):
    """The model with every 2-D weight rounded to float16, as the GGUF stores it (1-D ones stay f32)."""
    copy = type(model)(model.config).eval()
    copy.load_state_dict({k: (v.half().float() if v.dim() >= 2 else v) for k, v in model.state_dict().items()})
    return copy


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gemma"])
def test_f16_logits_round_trip(arch, tmp_path, small_tokenizer):
    model = tiny_model(arch, vocab_size=len(small_tokenizer))
    if arch == "qwen2":  # qwen2's q/k/v biases are random too, so a lost bias shows
        with torch.no_grad():
            for layer in model.model.layers:
                for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                    proj.bias.normal_()
    loaded, _ = write_and_load(model, small_tokenizer, tmp_path, "f16")
    assert type(loaded).__name__ == type(model).__name__
    ids = torch.tensor([small_tokenizer(TEXTS[0] + TEXTS[1])["input_ids"]])
    with torch.no_grad():
        want, got, exact = rounded_to_f16(model)(ids).logits, loaded(ids).logits, model(ids).logits
    assert (want - got).abs().max() <= F16_TOLERANCE
    assert (exact - got).abs().max() < 1e-2


def test_q8_0_logits_are_close(tmp_path, small_tokenizer):
    model = tiny_model("llama", vocab_size=len(small_tokenizer))
    loaded, _ = write_and_load(model, small_tokenizer, tmp_path, "q8_0")
    ids = torch.tensor([small_tokenizer(TEXTS[1])["input_ids"]])
    with torch.no_grad():
        want, got = model(ids).logits, loaded(ids).logits
    assert 0 < (want - got).abs().max() <= Q8_TOLERANCE
    assert torch.equal(want.argmax(-1), got.argmax(-1))


def test_tokenizer_and_chat_template_round_trip(tmp_path, smollm2_tokenizer):
    """SmolLM2's real tokenizer (49k tokens and merges, ChatML specials, digits split one by one)."""
    write(tiny_model("llama", vocab_size=len(smollm2_tokenizer)), smollm2_tokenizer, tmp_path, "f16")
    tokenizer = AutoTokenizer.from_pretrained(tmp_path, gguf_file="model.gguf")
    for text in TEXTS:
        assert tokenizer(text, add_special_tokens=False)["input_ids"] == \
            smollm2_tokenizer(text, add_special_tokens=False)["input_ids"], text
    assert tokenizer.chat_template == templates.default_for(smollm2_tokenizer).to_jinja()
    assert (tokenizer.eos_token, tokenizer.bos_token) == (smollm2_tokenizer.eos_token, smollm2_tokenizer.bos_token)
    messages = [{"role": "user", "content": TEXTS[0]}]
    assert tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False) == \
        smollm2_tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False)
