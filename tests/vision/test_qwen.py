"""Qwen2-VL / Qwen2.5-VL without their processor class (it needs torchvision, absent here): the tiny
model and its image processor, the image expanded by the processor's documented rule (one token per
merge_size x merge_size patches), then each method's forward/backward through sftune's loss."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from sftune.encode import IGNORE
from sftune.methods import MethodConfig
from sftune.training.loss import linear_cross_entropy, trained_hidden_states
from sftune.vision import methods as vision_methods
from sftune.vision import tiny


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_vl"])
@pytest.mark.parametrize("method", ["lora", "full"])
def test_qwen_trains_language_model_with_vision_frozen(family, method, smollm2_tokenizer):
    model, _, image_processor = tiny.build_model(family, smollm2_tokenizer)
    tokenizer = tiny._tokenizer(smollm2_tokenizer, family)
    pixels = image_processor(images=[Image.new("RGB", (40, 30), "red")], return_tensors="pt")
    n = int(pixels["image_grid_thw"][0].prod()) // 4
    prompt = "<|im_start|>user\n<|vision_start|>" + "<|image_pad|>" * n + "<|vision_end|>Colour?<|im_end|>\n" \
             "<|im_start|>assistant\n"
    ids = tokenizer(prompt + "red<|im_end|>\n", add_special_tokens=False, return_tensors="pt")["input_ids"]
    prompt_len = len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
    labels = ids.clone()
    labels[:, :prompt_len] = IGNORE
    image_id = tokenizer.convert_tokens_to_ids("<|image_pad|>")
    batch = {"input_ids": ids, "labels": labels, "mm_token_type_ids": (ids == image_id).int(),
             "pixel_values": pixels["pixel_values"], "image_grid_thw": pixels["image_grid_thw"]}
    parts = vision_methods.part_names(model)
    assert parts == {"language": "model.language_model", "vision": "model.visual", "projector": "model.visual.merger"}
    model = vision_methods.apply(model, MethodConfig(name=method))
    model.train()
    hidden, targets, _, head, rule, _ = trained_hidden_states(model, batch)
    loss = linear_cross_entropy(hidden, head, targets, logit_rule=rule) / len(targets)
    loss.backward()
    moved = {name for name, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert torch.isfinite(loss) and moved
    vision_moved = {name for name in moved if ".visual." in name and ".merger." not in name}
    assert not vision_moved  # the vision tower stays frozen
    if method == "lora":
        assert all("lora_" in name and "language_model" in name for name in moved)
    else:
        assert any(".merger." in name for name in moved)  # full trains the projector


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_vl"])
def test_processor_without_torchvision(family, vlm_folder, images, tmp_path):
    """load_processor builds the images-only processor: each image expands to grid / merge_size**2 image
    tokens (the image processor's own grid), it pickles (data loader workers) and saves as the ordinary class."""
    import json
    import pickle

    import numpy as np

    from sftune.vision import models as vision_models

    processor = vision_models.load_processor(vlm_folder(family))
    assert type(processor).__name__ == {"qwen2_vl": "Qwen2VLProcessor", "qwen2_5_vl": "Qwen2_5_VLProcessor"}[family]
    assert not hasattr(processor, "video_processor")
    image = Image.open(images["red"])
    text = ["<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>Colour?<|im_end|>\n"]
    out = processor(text=text, images=[image], return_tensors="np")
    grid = processor.image_processor(images=[image], return_tensors="np")["image_grid_thw"]
    image_id = processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert int((out["input_ids"] == image_id).sum()) == int(grid.prod()) // processor.image_processor.merge_size ** 2
    again = pickle.loads(pickle.dumps(processor))(text=text, images=[image], return_tensors="np")
    assert all(np.array_equal(out[k], again[k]) for k in out)
    processor.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "processor_config.json").read_text())["processor_class"] == type(processor).__name__
    assert type(vision_models.load_processor(tmp_path)).__name__ == type(processor).__name__
