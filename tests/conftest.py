"""Shared fixtures: tiny random models built from configs, and the real embedded tokenizer."""

from __future__ import annotations

import pytest
import torch

TINY_ARCHITECTURES = ("llama", "qwen2", "gemma")


def tiny_config(arch: str, vocab_size: int = 49152, **overrides):
    """A few-layer random model of the given family; small enough to run in milliseconds."""
    from transformers import Gemma3TextConfig, LlamaConfig, Qwen2Config

    common = dict(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
    )
    common.update(overrides)
    if arch == "llama":
        return LlamaConfig(**common)
    if arch == "qwen2":
        return Qwen2Config(**common)
    if arch == "gemma":
        return Gemma3TextConfig(head_dim=16, sliding_window=64, **common)
    raise ValueError(f"unknown tiny architecture {arch!r}; pick one of {TINY_ARCHITECTURES}")


def tiny_model(arch: str, vocab_size: int = 49152, seed: int = 0, **overrides):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    config = tiny_config(arch, vocab_size, **overrides)
    return AutoModelForCausalLM.from_config(config, dtype=torch.float32, attn_implementation="sdpa").eval()


@pytest.fixture(scope="session")
def smollm2_tokenizer():
    """The real SmolLM2 tokenizer (ChatML, pad == eos), from the embedded model's cache folder."""
    from sftune import models

    _, tokenizer = models.load(models.DEFAULT_MODEL, tokenizer_only=True)
    return tokenizer


@pytest.fixture(params=TINY_ARCHITECTURES)
def tiny_arch(request) -> str:
    return request.param


@pytest.fixture
def tiny_checkpoint(tmp_path, smollm2_tokenizer):
    """A tiny random llama with the real SmolLM2 tokenizer, saved as a checkpoint folder (a run's model.name)."""
    folder = tmp_path / "tiny-model"
    tiny_model("llama", vocab_size=len(smollm2_tokenizer)).save_pretrained(folder)
    smollm2_tokenizer.save_pretrained(folder)
    return folder
