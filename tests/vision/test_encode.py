"""Encoding image-text conversations: labels against an independent reference, per family."""

from __future__ import annotations

import pytest
import torch

from sftune import templates
from sftune.data import Conversation, Message
from sftune.encode import IGNORE, EncodeOptions
from sftune.vision import encode as vision_encode
from sftune.vision import models as vision_models
from sftune.vision.dataset import collate, encode_dataset

from .conftest import FAMILIES


def _conversation(images):
    return Conversation([Message("system", "Look closely."), Message("user", "<image>\nWhat colour is it?"),
                         Message("assistant", "red")], images=[images["red"]])


@pytest.mark.parametrize("family", FAMILIES)
def test_labels_mask_images_and_prompt_reference(family, vlm_folder, images):
    """Reference: the prompt alone rendered with the generation prompt and run through the processor
    gives the masked prefix; image tokens are found by id; the reply and its end-of-turn are trained."""
    _, processor = vision_models.load(vlm_folder(family))
    template = templates.default_for(processor.tokenizer)
    conversation = _conversation(images)
    row = vision_encode.encode(conversation, processor, template)
    ids, labels = row["input_ids"], row["labels"]

    marker = vision_encode.image_text(processor)
    prompt_messages = [{"role": m.role, "content": m.content.replace("<image>", marker)}
                       for m in conversation.messages[:-1]]
    prompt = template.render(prompt_messages, add_generation_prompt=True)
    from PIL import Image

    prompt_ids = processor(text=[prompt], images=[[Image.open(images["red"]).convert("RGB")]]
                           if family == "idefics3" else [Image.open(images["red"]).convert("RGB")],
                           add_special_tokens=False)["input_ids"][0]
    prompt_ids = list(prompt_ids)
    assert ids[:len(prompt_ids)] == prompt_ids
    reply = processor.tokenizer("red", add_special_tokens=False)["input_ids"] + template.stop_token_ids(processor.tokenizer)
    n = len(prompt_ids)
    expected = [IGNORE] * n + reply + [IGNORE] * (len(ids) - n - len(reply))
    assert ids[n:n + len(reply)] == reply
    assert labels == expected
    image_positions = [k for k, t in enumerate(ids) if t == processor.image_token_id or
                       t == processor.tokenizer.convert_tokens_to_ids(getattr(processor.tokenizer, "image_token", "<image>"))]
    assert image_positions and all(labels[k] == IGNORE for k in image_positions)


@pytest.mark.parametrize("policy", ["assistant", "last", "all"])
def test_masking_policies_match_text_encoding(policy, vlm_folder, images, smollm2_tokenizer):
    """Outside the image, the trained tokens of each policy are those the text-only encoder trains."""
    from sftune.encode import encode as encode_text

    _, processor = vision_models.load(vlm_folder("llava"))
    template = templates.default_for(processor.tokenizer)
    conversation = Conversation([Message("user", "<image>\nColour?"), Message("assistant", "red"),
                                 Message("user", "Sure?"), Message("assistant", "yes, red")], images=[images["red"]])
    row = vision_encode.encode(conversation, processor, template, policy=policy)
    text_only = Conversation([Message(m.role, m.content.replace("<image>", "")) for m in conversation.messages])
    ref = encode_text(text_only, processor.tokenizer, template, policy=policy)
    image_ids = vision_encode.image_token_ids(processor)
    trained = [t for t, label in zip(row["input_ids"], row["labels"]) if label != IGNORE and t not in image_ids]
    expected = [t for t, label in zip(ref["input_ids"], ref["labels"]) if label != IGNORE]
    assert trained == expected


def test_too_long_and_nothing_to_train_are_reported(vlm_folder, images):
    _, processor = vision_models.load(vlm_folder("llava"))
    template = templates.default_for(processor.tokenizer)
    conversation = _conversation(images)
    conversation.meta.update(source="data.jsonl", line=3)
    _, report = encode_dataset([conversation], processor, template, EncodeOptions(max_len=20))
    assert report.skipped == 1 and report.skipped_by_reason == {"too_long": 1}
    assert report.skipped_records[0].where == "data.jsonl:3" and "max_len=20" in report.skipped_records[0].detail


@pytest.mark.parametrize("family", ["llava", "idefics3", "gemma3"])
def test_padded_batch_equals_each_row_alone(family, vlm_folder, images):
    """A padded batch of two conversations (other images, other lengths) gives each row's logits alone."""
    model, processor = vision_models.load(vlm_folder(family), dtype=torch.float32)
    template = templates.default_for(processor.tokenizer)
    convs = [_conversation(images),
             Conversation([Message("user", "Tell me the colour of this one, please: <image>"),
                           Message("assistant", "it is blue")], images=[images["blue"]])]
    rows, report = encode_dataset(convs, processor, template)
    assert report.encoded == 2
    pad = processor.tokenizer.pad_token_id
    batch = collate([rows[0], rows[1]], processor=processor, pad_token_id=pad)
    batch.pop("labels")
    with torch.no_grad():
        together = model(**batch, use_cache=False).logits
        for k in range(2):
            alone = collate([rows[k]], processor=processor, pad_token_id=pad)
            alone.pop("labels")
            logits = model(**alone, use_cache=False).logits[0]
            torch.testing.assert_close(together[k, :len(logits)], logits, atol=1e-4, rtol=1e-4)
