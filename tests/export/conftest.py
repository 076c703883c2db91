"""Tiny run folders (a random few-layer model with the real SmolLM2 tokenizer), trained for a few steps."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import tiny_model


def train_tiny_run(folder: Path, tokenizer, arch: str = "llama", method: dict | None = None, steps: int = 4) -> Path:
    """Train `arch` (tiny, random) on the demo data for a few steps; return the run folder."""
    from sftune import train
    from sftune.demo import write_dataset

    checkpoint = folder / f"tiny-{arch}"
    tiny_model(arch, vocab_size=len(tokenizer)).save_pretrained(checkpoint)
    tokenizer.save_pretrained(checkpoint)
    train_path, eval_path = write_dataset(folder / "data", n_train=16, n_eval=6)
    cfg = {
        "model": {"name": str(checkpoint)},
        "data": {"train": str(train_path), "eval": str(eval_path), "max_len": 128},
        "method": method or {"name": "lora", "r": 4, "alpha": 16},
        "train": {"max_steps": steps, "batch_size": 2, "lr": 2e-2, "save_steps": 1000},
        "eval": {"steps": 1000},
        "output": {"dir": str(folder / "run")},
    }
    return train(cfg).run_dir


@pytest.fixture(scope="session")
def lora_run(tmp_path_factory, smollm2_tokenizer) -> Path:
    """A tiny llama LoRA run (shared by the export, chat and generate tests; never modified by them)."""
    return train_tiny_run(tmp_path_factory.mktemp("lora-run"), smollm2_tokenizer)


@pytest.fixture(scope="session")
def exported(lora_run, tmp_path_factory) -> Path:
    """`lora_run` exported with a f16 GGUF and a Modelfile (read only by the tests)."""
    from sftune.export import export

    out = tmp_path_factory.mktemp("exported")
    export(lora_run, out, gguf="f16", ollama=True)
    return out


@pytest.fixture(scope="session")
def small_tokenizer():
    """A byte-level BPE tokenizer of 400 tokens (ChatML specials), trained here: GGUF files with a small vocabulary
    load back in a second, where SmolLM2's 49k tokens and merges take transformers' GGUF reader half a minute."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    backend.train_from_iterator(["Hello world, this is a small tokenizer.", "住在重庆的张伟，年龄是37岁。"] * 20, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                   pad_token="<|im_end|>", unk_token=None)
