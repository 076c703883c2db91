"""What trains in a vision-language model: each method's forward/backward on each family."""

from __future__ import annotations

import pytest
import torch

from sftune import templates
from sftune.data import Conversation, Message
from sftune.methods import MethodConfig
from sftune.training.loss import linear_cross_entropy, trained_hidden_states
from sftune.vision import methods as vision_methods
from sftune.vision import models as vision_models
from sftune.vision.dataset import collate, encode_dataset

from .conftest import FAMILIES


def _batch(processor, images):
    template = templates.default_for(processor.tokenizer)
    convs = [Conversation([Message("user", "<image>\nColour?"), Message("assistant", "red")], images=[images["red"]]),
             Conversation([Message("user", "And this? <image>"), Message("assistant", "blue")], images=[images["blue"]])]
    rows, _ = encode_dataset(convs, processor, template)
    return collate([rows[0], rows[1]], processor=processor, pad_token_id=processor.tokenizer.pad_token_id)


def _backward(model, batch):
    model.train()
    hidden, targets, _, head, rule, _ = trained_hidden_states(model, batch)
    loss = linear_cross_entropy(hidden, head, targets, logit_rule=rule) / len(targets)
    loss.backward()
    assert torch.isfinite(loss)
    return {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}


def _in(names, prefix):
    return {n for n in names if f".{prefix}." in f".{n}"}


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("method", ["lora", "full"])
def test_vision_tower_frozen_by_default(family, method, vlm_folder, images):
    model, processor = vision_models.load(vlm_folder(family), dtype=torch.float32)
    parts = vision_methods.part_names(model)
    model = vision_methods.apply(model, MethodConfig(name=method))
    moved = _backward(model, _batch(processor, images))
    vision = parts["vision"].split("model.", 1)[-1]
    assert moved and not _in(moved, vision) or parts["vision"].endswith("visual")
    if method == "lora":
        assert all("lora_" in n for n in moved)  # nothing but adapters
        assert all(parts["language"].split(".")[-1] in n for n in moved)  # on the language model only
    else:
        projector = parts["projector"].split(".")[-1]
        assert _in(moved, projector)  # full trains the projector


@pytest.mark.parametrize("family", ["llava", "idefics3", "gemma3"])
def test_projector_and_vision_tower_options(family, vlm_folder, images):
    model, processor = vision_models.load(vlm_folder(family), dtype=torch.float32)
    parts = vision_methods.part_names(model)
    model = vision_methods.apply(model, MethodConfig(name="lora"), train_projector=True, train_vision_tower=True)
    moved = _backward(model, _batch(processor, images))
    assert _in(moved, parts["vision"].split(".")[-1]) and _in(moved, parts["projector"].split(".")[-1])
    saved = model.peft_config["default"].modules_to_save
    assert set(saved) == {parts["vision"], parts["projector"]}  # saved with the adapter


def test_lora_never_targets_vision_or_projector(vlm_folder):
    model, _ = vision_models.load(vlm_folder("llava"), dtype=torch.float32)
    parts = vision_methods.part_names(model)
    targets = vision_methods.lora_targets(model, "all-linear")
    linear = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    assert set(targets) == {n for n in linear if n.startswith(parts["language"] + ".")}
    assert vision_methods.lora_targets(model, ["q_proj"]) == [n for n in targets if n.endswith("q_proj")]


def test_prompt_methods_are_refused(vlm_folder):
    model, _ = vision_models.load(vlm_folder("llava"), dtype=torch.float32)
    with pytest.raises(ValueError, match="lora, qlora or full"):
        vision_methods.apply(model, MethodConfig(name="prompt_tuning"))


def test_qlora_on_the_language_model(vlm_folder, images):
    pytest.importorskip("bitsandbytes")
    from sftune import methods

    method = MethodConfig(name="qlora")
    model, processor = vision_models.load(vlm_folder("llava"), dtype=torch.float32,
                                          **methods.load_kwargs(method, device="cpu"))
    model = vision_methods.apply(model, method)
    moved = _backward(model, _batch(processor, images))
    assert moved and all("lora_" in n and "language_model" in n for n in moved)


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_vl"])
@pytest.mark.parametrize("method,projector,tower", [("lora", True, False), ("lora", True, True), ("full", False, False),
                                                    ("full", False, True)])
def test_qwen_projector_inside_the_vision_tower(family, method, projector, tower, vlm_folder, images):
    """Qwen's projector (visual.merger) is nested in its vision tower: the projector option trains the
    merger with the rest of the tower frozen; training the tower trains all of it, merger included."""
    model, processor = vision_models.load(vlm_folder(family), dtype=torch.float32)
    parts = vision_methods.part_names(model)
    model = vision_methods.apply(model, MethodConfig(name=method), train_projector=projector, train_vision_tower=tower)
    moved = {n.replace(".modules_to_save.default", "") for n in _backward(model, _batch(processor, images))}
    merger = {n for n in moved if ".visual.merger." in n}
    rest_of_tower = {n for n in moved if ".visual." in n and ".visual.merger." not in n}
    assert merger  # the projector trains in every case here
    assert bool(rest_of_tower) == tower
    if method == "lora":
        expected = [parts["vision"]] if tower else [parts["projector"]]
        assert sorted(model.peft_config["default"].modules_to_save) == expected
        assert _in(moved, "language_model") and all("lora_" in n for n in _in(moved, "language_model"))
