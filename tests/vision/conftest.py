"""Tiny random vision-language checkpoints, one per family transformers supports here, built once."""

from __future__ import annotations

import pytest
from PIL import Image

from sftune.vision import tiny

# Qwen2-VL / Qwen2.5-VL processors are built without torchvision (sftune.vision.qwen.images_only).
FAMILIES = list(tiny.FAMILIES)


@pytest.fixture(scope="session")
def vlm_folder(tmp_path_factory, smollm2_tokenizer):
    """family -> folder of a tiny random checkpoint of that family (built on first use)."""
    built = {}

    def get(family: str):
        if family not in built:
            built[family] = tiny.build(family, tmp_path_factory.mktemp(family), smollm2_tokenizer)
        return built[family]

    return get


@pytest.fixture(scope="session")
def images(tmp_path_factory):
    """Two small PNGs of other sizes and colours: {"red": path, "blue": path}."""
    folder = tmp_path_factory.mktemp("images")
    Image.new("RGB", (40, 30), "red").save(folder / "red.png")
    Image.new("RGB", (20, 50), "blue").save(folder / "blue.png")
    return {"red": str(folder / "red.png"), "blue": str(folder / "blue.png")}


@pytest.fixture(scope="session")
def vision_run(tmp_path_factory, vlm_folder):
    """A tiny LLaVA LoRA run (projector trained too) written by the ordinary recipe, and its data folder."""
    from sftune.training.recipe import train
    from sftune.vision import shapes

    root = tmp_path_factory.mktemp("vision-run")
    data = shapes.write(root / "data", 8, seed=0)
    train({"model": {"name": str(vlm_folder("llava"))},
           "data": {"train": [str(data)], "max_len": 128},
           "method": {"name": "lora"},
           "train": {"max_steps": 2, "batch_size": 4, "lr": 1e-2},
           "vision": {"train_projector": True},
           "output": {"dir": str(root / "run")}})
    return root / "run"


@pytest.fixture(scope="session")
def qwen_run(tmp_path_factory, vlm_folder):
    """A tiny Qwen2-VL LoRA run (projector trained, rows packed) written by the ordinary recipe."""
    from sftune.training.recipe import train
    from sftune.vision import shapes

    root = tmp_path_factory.mktemp("qwen-run")
    data = shapes.write(root / "data", 8, seed=0)
    train({"model": {"name": str(vlm_folder("qwen2_vl"))},
           "data": {"train": [str(data)], "max_len": 256, "packing": True},
           "method": {"name": "lora"},
           "train": {"max_steps": 2, "batch_size": 4, "lr": 5e-2},
           "vision": {"train_projector": True},
           "output": {"dir": str(root / "run")}})
    return root / "run"
