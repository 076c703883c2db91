"""A vision-language run through the ordinary recipe and CLI: trains, saves a folder that loads back."""

from __future__ import annotations

import torch

from sftune.training.recipe import train
from sftune.vision import models as vision_models
from sftune.vision import shapes


def test_recipe_trains_a_tiny_vlm_and_saves_processor(tmp_path, vlm_folder):
    data = shapes.write(tmp_path / "data", 12, seed=0)
    result = train({
        "model": {"name": str(vlm_folder("llava"))},
        "data": {"train": [str(data)], "val_ratio": 0.25, "max_len": 128},
        "method": {"name": "lora"},
        "train": {"max_steps": 2, "batch_size": 4, "lr": 1e-3},
        "vision": {"train_projector": True},
        "output": {"dir": str(tmp_path / "run")},
    })
    summary = result.summary
    assert summary["steps"] == 2 and summary["packing"] is False and summary["train_examples"] == 9
    assert summary["trained_tokens"] > 0 and torch.isfinite(torch.tensor(summary["train_loss"]))
    processor = vision_models.load_processor(tmp_path / "run")  # the run folder holds the processor
    assert processor.tokenizer.chat_template  # with the training template
    assert (tmp_path / "run" / "adapter_config.json").is_file()
    from sftune import runs

    assert runs.load(tmp_path / "run").is_vision  # chat / serve / generate read it back (test_generate.py)


def test_demo_task_images_differ_by_label(tmp_path):
    """The synthetic task is learnable: the figure's colour is the dominant non-background colour."""
    from PIL import Image

    data = shapes.write(tmp_path, 9, seed=3)
    import json

    for line in data.read_text().splitlines():
        record = json.loads(line)
        colour = record["messages"][1]["content"].split()[0]
        image = Image.open(tmp_path / record["messages"][0]["content"][0]["image_url"]["url"]).convert("RGB")
        pixels = [p for p in image.getdata() if min(p) < 200]  # the figure, not the light background
        mean = [sum(c[i] for c in pixels) / len(pixels) for i in range(3)]
        assert max(range(3), key=lambda i: mean[i]) == ["red", "green", "blue"].index(colour)


def test_recipe_trains_qwen2_vl_packed(tmp_path, vlm_folder):
    """data.packing on a Qwen2-VL checkpoint packs its rows: the model sees padding-free rows with 4-row
    position_ids (text positions restarting per sequence, then the 3-D rope positions) and trains."""
    from transformers import TrainerCallback

    seen = []

    class Record(TrainerCallback):
        def on_train_begin(self, args, state, control, model=None, **kwargs):
            model.register_forward_pre_hook(lambda module, a, kw: seen.append(kw), with_kwargs=True)

    data = shapes.write(tmp_path / "data", 12, seed=0)
    result = train({
        "model": {"name": str(vlm_folder("qwen2_vl"))},
        "data": {"train": [str(data)], "val_ratio": 0.25, "max_len": 256, "packing": True},
        "method": {"name": "lora"},
        "train": {"max_steps": 2, "batch_size": 2, "lr": 1e-3},
        "vision": {"train_projector": True},
        "output": {"dir": str(tmp_path / "run")},
    }, callbacks=[Record()])
    summary = result.summary
    assert summary["steps"] == 2 and summary["packing"] is True and summary["train_examples"] == 9
    assert summary["trained_tokens"] > 0 and torch.isfinite(torch.tensor(summary["train_loss"]))
    assert seen and all("attention_mask" not in kw for kw in seen)
    sequences = []
    for kw in seen:
        positions, ids = kw["position_ids"], kw["input_ids"]
        assert ids.shape[0] == 1 and positions.shape == (4, 1, ids.shape[1])
        sequences.append(int((positions[0, 0] == 0).sum()))
        assert kw["image_grid_thw"].shape[0] == sequences[-1]  # one image per example
    assert max(sequences) > 1  # sequences packed together (bins of 256 tokens hold four of these)
    from sftune import runs

    assert runs.load(tmp_path / "run").is_vision


def test_recipe_keeps_llava_padded_and_says_why(tmp_path, vlm_folder):
    from io import StringIO

    from rich.console import Console

    data = shapes.write(tmp_path / "data", 4, seed=0)
    out = StringIO()
    result = train({
        "model": {"name": str(vlm_folder("llava"))},
        "data": {"train": [str(data)], "max_len": 128, "packing": True},
        "method": {"name": "lora"},
        "train": {"max_steps": 1, "batch_size": 4},
        "output": {"dir": str(tmp_path / "run")},
    }, console=Console(file=out, width=200))
    assert result.summary["packing"] is False
    assert "packing off: LLaVA rows are not tested packed" in out.getvalue()
