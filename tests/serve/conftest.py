"""A tiny model folder with the real SmolLM2 tokenizer, LoRA run folders on it, a live server on loopback, and
(from tests/export) the tiny trained LoRA run of the chat and generate tests."""

from __future__ import annotations

import contextlib
import socket
import threading
import time

import pytest

from tests.conftest import tiny_model
from tests.export.conftest import lora_run  # noqa: F401  (the tiny trained LoRA run of the chat and generate tests)


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


@contextlib.contextmanager
def running(app):
    """The app served by uvicorn on a free loopback port, in a background thread; yields its base URL."""
    import uvicorn

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the test server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
