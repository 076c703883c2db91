"""Tiny random vision-language models built from configs, with processors made locally (no download).

Tests and the synthetic demo need a model of each family that transformers loads with
`AutoModelForImageTextToText` / `AutoProcessor`. `build(family, folder, tokenizer)` writes one: a
few-layer random model whose config matches the image processor it is saved with, and the given
text tokenizer (e.g. the embedded SmolLM2's) with the family's image tokens added.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

FAMILIES = ("qwen2_vl", "qwen2_5_vl", "llava", "idefics3", "gemma3")
IMAGE_SIZE = 32  # pixels per side of the images the tiny processors produce

# The tokens each family's processor and model look for, added to the text tokenizer.
IMAGE_TOKENS = {
    "qwen2_vl": ["<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"],
    "qwen2_5_vl": ["<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"],
    "llava": ["<image>"],
    "idefics3": ["<fake_token_around_image>", "<image>", "<global-img>", "<end_of_utterance>"],
    "gemma3": ["<start_of_image>", "<image_soft_token>", "<end_of_image>"],
}

TEXT = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=1024, tie_word_embeddings=True)


def _tokenizer(tokenizer: Any, family: str) -> Any:
    """The text tokenizer with the family's image tokens (Gemma 3's processor reads them by name)."""
    import json
    import tempfile

    from transformers import AutoTokenizer

    with tempfile.TemporaryDirectory() as scratch:
        tokenizer.save_pretrained(scratch)
        path = Path(scratch) / "tokenizer_config.json"
        config = json.loads(path.read_text())
        tokens = IMAGE_TOKENS[family]
        if family == "gemma3":
            config["extra_special_tokens"] = dict(zip(("boi_token", "image_token", "eoi_token"), tokens))
        else:
            config["extra_special_tokens"] = tokens
        path.write_text(json.dumps(config))
        return AutoTokenizer.from_pretrained(scratch)


def _ids(tokenizer: Any, *tokens: str) -> list[int]:
    return [tokenizer.convert_tokens_to_ids(t) for t in tokens]


def build_parts(family: str, tokenizer: Any, seed: int = 0) -> tuple[Any, Any]:
    """(random model, processor) of `family`, small enough for a CPU test."""
    model, make_processor, _ = build_model(family, tokenizer, seed)
    return model, make_processor()


def build_model(family: str, tokenizer: Any, seed: int = 0) -> tuple[Any, Any, Any]:
    """(random model, a function that makes its processor, its image processor)."""
    import torch
    import transformers as tf

    from sftune.vision import qwen

    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; pick one of {', '.join(FAMILIES)}")
    tok = _tokenizer(tokenizer, family)
    vocab = len(tok)
    text = dict(TEXT, vocab_size=vocab)
    if family in ("qwen2_vl", "qwen2_5_vl"):
        start, end, image, video = _ids(tok, *IMAGE_TOKENS[family])
        vision = dict(depth=2, embed_dim=32, hidden_size=64, num_heads=2, patch_size=8, spatial_merge_size=2,
                      temporal_patch_size=2, in_channels=3)
        if family == "qwen2_vl":
            config_cls, model_cls = tf.Qwen2VLConfig, tf.Qwen2VLForConditionalGeneration
            vision.update(mlp_ratio=2)
        else:
            config_cls, model_cls = tf.Qwen2_5_VLConfig, tf.Qwen2_5_VLForConditionalGeneration
            vision.update(intermediate_size=64, out_hidden_size=64, window_size=16, fullatt_block_indexes=[1])
            vision.pop("embed_dim")
        config = config_cls(text_config=dict(text, rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                                                     "mrope_section": [2, 2, 4]}),
                            vision_config=vision, image_token_id=image, video_token_id=video,
                            vision_start_token_id=start, vision_end_token_id=end)
        pixels = IMAGE_SIZE * IMAGE_SIZE
        image_processor = tf.Qwen2VLImageProcessor(patch_size=8, merge_size=2, temporal_patch_size=2,
                                                   size={"shortest_edge": pixels, "longest_edge": pixels})
        processor = lambda: qwen.processor(family, image_processor, tok)  # noqa: E731
    elif family == "llava":
        vision = tf.CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                     image_size=IMAGE_SIZE, patch_size=8, projection_dim=32)
        config = tf.LlavaConfig(vision_config=vision, text_config=tf.LlamaConfig(**text),
                                image_token_id=_ids(tok, "<image>")[0], vision_feature_layer=-1,
                                vision_feature_select_strategy="default")
        model_cls = tf.LlavaForConditionalGeneration
        image_processor = tf.CLIPImageProcessor(size={"shortest_edge": IMAGE_SIZE},
                                                crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
        processor = lambda: tf.LlavaProcessor(  # noqa: E731
            image_processor=image_processor, tokenizer=tok, patch_size=8, vision_feature_select_strategy="default",
            num_additional_image_tokens=1)
    elif family == "idefics3":
        vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                      image_size=IMAGE_SIZE, patch_size=8)
        config = tf.Idefics3Config(vision_config=vision, text_config=dict(text, model_type="llama"),
                                   image_token_id=_ids(tok, "<image>")[0], scale_factor=2)
        model_cls = tf.Idefics3ForConditionalGeneration
        image_processor = tf.Idefics3ImageProcessor(do_image_splitting=False, size={"longest_edge": IMAGE_SIZE},
                                                    max_image_size={"longest_edge": IMAGE_SIZE})
        seq_len = (IMAGE_SIZE // 8) ** 2 // 4
        processor = lambda: tf.Idefics3Processor(image_processor=image_processor, tokenizer=tok,  # noqa: E731
                                                 image_seq_len=seq_len)
    else:
        boi, soft, eoi = _ids(tok, *IMAGE_TOKENS["gemma3"])
        vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                      image_size=IMAGE_SIZE, patch_size=8)
        config = tf.Gemma3Config(text_config=dict(text, head_dim=16, sliding_window=64), vision_config=vision,
                                 mm_tokens_per_image=4, boi_token_index=boi, eoi_token_index=eoi,
                                 image_token_index=soft)
        model_cls = tf.Gemma3ForConditionalGeneration
        image_processor = tf.Gemma3ImageProcessor(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
                                                  do_pan_and_scan=False)
        processor = lambda: tf.Gemma3Processor(image_processor=image_processor, tokenizer=tok,  # noqa: E731
                                               image_seq_length=4)
    torch.manual_seed(seed)
    model = model_cls(config).to(torch.float32).eval()
    if family == "gemma3":  # initialized to zeros, which a trained checkpoint's projector never is
        torch.nn.init.normal_(model.model.multi_modal_projector.mm_input_projection_weight, std=0.5)
    return model, processor, image_processor


def build(family: str, folder: str | os.PathLike, tokenizer: Any, seed: int = 0) -> Path:
    """Write a tiny random `family` model and its processor to `folder` (a checkpoint like a real one)."""
    model, processor = build_parts(family, tokenizer, seed)
    folder = Path(folder)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder
