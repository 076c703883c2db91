"""A tiny model folder with the real SmolLM2 tokenizer, LoRA run folders on it, a live server on loopback, and
(from tests/export) the tiny trained LoRA run of the chat and generate tests."""

from __future__ import annotations

import pytest

from tests.conftest import tiny_model
from tests.export.conftest import lora_run  # noqa: F401  (the tiny trained LoRA run of the chat and generate tests)


def openai_error(response, status: int) -> dict:
    """The error of a refused request, checked to be in the OpenAI API's shape and to carry no traceback."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    assert "Traceback" not in response.text
    return body["error"]


@pytest.fixture(scope="session")
def mistral_tokenizer(tmp_path_factory, smollm2_tokenizer):
    """SmolLM2's tokenizer with Mistral's control tokens added as special tokens, as Magistral's tokenizer has
    them: a plain decode (skip_special_tokens) drops [THINK], [/THINK], [TOOL_CALLS] and [ARGS]."""
    from transformers import AutoTokenizer

    folder = tmp_path_factory.mktemp("mistral-tokenizer")
    smollm2_tokenizer.save_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.add_special_tokens({"additional_special_tokens": ["[THINK]", "[/THINK]", "[TOOL_CALLS]", "[ARGS]"]})
    return tokenizer


@pytest.fixture(scope="session")
def gemma4_tokenizer(tmp_path_factory, smollm2_tokenizer):
    """SmolLM2's tokenizer with Gemma 4's turn, channel, call and quote tokens added as special tokens, as Gemma
    4's tokenizer has them: a plain decode (skip_special_tokens) drops the thought channel's markers."""
    from transformers import AutoTokenizer

    folder = tmp_path_factory.mktemp("gemma4-tokenizer")
    smollm2_tokenizer.save_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.add_special_tokens({"additional_special_tokens": [
        "<|turn>", "<turn|>", "<|channel>", "<channel|>", "<|tool_call>", "<tool_call|>", "<|tool_response>",
        "<tool_response|>", '<|"|>']})
    return tokenizer


@pytest.fixture(scope="session")
def base_dir(tmp_path_factory, smollm2_tokenizer):
    folder = tmp_path_factory.mktemp("serve") / "tiny-base"
    tiny_model("llama", vocab_size=len(smollm2_tokenizer), initializer_range=0.2).save_pretrained(folder)
    smollm2_tokenizer.save_pretrained(folder)
    return folder


def adapter_run(folder, base_dir, tokenizer, seed: int):
    """A LoRA run folder as `sftune train` writes it (random, non-zero adapter weights: answers differ)."""
    import torch
    from peft import LoraConfig, get_peft_model

    from sftune import config, templates
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(base_dir)
    torch.manual_seed(seed)
    peft_model = get_peft_model(base, LoraConfig(r=4, lora_alpha=32, target_modules=["q_proj", "v_proj"],
                                                 init_lora_weights=False))
    peft_model.save_pretrained(folder)
    templates.save_to_tokenizer(templates.default_for(tokenizer), tokenizer)
    tokenizer.save_pretrained(folder)
    cfg = config.load({"model": {"name": str(base_dir)}, "data": {"train": "train.jsonl"},
                       "method": {"name": "lora", "r": 4}, "output": {"dir": str(folder)}})
    (folder / "config.yaml").write_text(config.to_yaml(cfg), encoding="utf-8")
    return folder


@pytest.fixture(scope="session")
def lora_runs(tmp_path_factory, base_dir):
    from transformers import AutoTokenizer

    root = tmp_path_factory.mktemp("runs")
    return [adapter_run(root / name, base_dir, AutoTokenizer.from_pretrained(base_dir), seed)
            for seed, name in enumerate(("alpha", "beta"), start=1)]
