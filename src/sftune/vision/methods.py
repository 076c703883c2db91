"""What trains in a vision-language model: the language model through the usual method, the vision
tower frozen unless vision.train_vision_tower, the projector (the layers that map image features
into the language model) trained fully when vision.train_projector (and always under `full`).

A model's parts are found by the names transformers gives them (PARTS); a projector may sit inside
the vision tower (Qwen2-VL's visual.merger), and "the vision tower" then means the rest of it unless
the whole tower trains. LoRA targets only linear layers of the language part; the projector and the
vision tower, when trained under an adapter, are peft `modules_to_save` (saved with the adapter).
"""

from __future__ import annotations

from typing import Any

import torch

from sftune.config import MethodConfig

# The module names of each part, after the model's own `model.` prefix, across the families.
PARTS = {
    "language": ("language_model", "text_model"),
    "vision": ("vision_tower", "vision_model", "visual"),
    "projector": ("multi_modal_projector", "connector", "visual.merger"),
}


def part_names(model: Any) -> dict[str, str]:
    """Each part's module path in this model, e.g. {"language": "model.language_model", ...}."""
    names = dict(model.named_modules())
    found = {}
    for part, candidates in PARTS.items():
        for prefix in ("model.", "", "base_model.model.model."):
            hit = next((prefix + c for c in candidates if prefix + c in names), None)
            if hit:
                found[part] = hit
                break
    missing = [p for p in ("language", "vision") if p not in found]
    if missing:
        raise ValueError(f"{type(model).__name__}: cannot find its {' and '.join(missing)} part "
                         f"(looked for {', '.join(c for p in missing for c in PARTS[p])})")
    return found


def _inside(name: str, prefix: str | None) -> bool:
    return prefix is not None and (name == prefix or name.startswith(prefix + "."))


def lora_targets(model: Any, target_modules: str | list[str]) -> list[str]:
    """Full names of the linear layers LoRA adapts: inside the language part (never the vision tower or
    the projector), all of them for 'all-linear', else those whose last name is in target_modules."""
    parts = part_names(model)
    wanted = None if target_modules == "all-linear" else set([target_modules] if isinstance(target_modules, str)
                                                              else target_modules)
    out = [name for name, module in model.named_modules()
           if isinstance(module, torch.nn.Linear) or type(module).__name__ == "Linear4bit"
           if _inside(name, parts["language"]) and (wanted is None or name.rsplit(".", 1)[-1] in wanted)]
    if not out:
        raise ValueError(f"method.target_modules={target_modules!r} matches no linear layer of the language model")
    return out


def saved_modules(parts: dict[str, str], *, train_projector: bool, train_vision_tower: bool) -> list[str]:
    """The parts an adapter run trains fully (peft modules_to_save). Qwen2-VL's projector
    (visual.merger) sits inside its vision tower: with the tower trained it is part of it (peft
    cannot wrap a module inside another wrapped one), else it is trained alone."""
    projector = parts.get("projector") if train_projector else None
    if train_vision_tower:
        return [parts["vision"]] + ([projector] if projector and not _inside(projector, parts["vision"]) else [])
    return [projector] if projector else []


def apply(model: Any, method: MethodConfig, *, train_projector: bool = False, train_vision_tower: bool = False,
          tokenizer: Any = None) -> Any:
    """The model ready to train: lora / qlora adapters on the language model, or full fine-tuning
    (language model and projector); the projector and vision tower as asked."""
    from sftune import methods

    parts = part_names(model)
    if method.name == "full":
        for name, param in model.named_parameters():
            in_vision = _inside(name, parts["vision"]) and not _inside(name, parts.get("projector"))
            param.requires_grad_(train_vision_tower or not in_vision)
        return model
    if method.name not in ("lora", "qlora"):
        raise ValueError(f"method {method.name!r} is not available for vision-language models; "
                         "use lora, qlora or full (method.name=...)")
    from peft import get_peft_model

    if method.name == "qlora":
        model = methods._prepare_4bit(model)
    targets = lora_targets(model, method.target_modules)
    config = methods.peft_config(model, method.model_copy(update={"target_modules": targets}), tokenizer)
    saved = saved_modules(parts, train_projector=train_projector, train_vision_tower=train_vision_tower)
    if saved:
        config.modules_to_save = saved
    return get_peft_model(model, config)
