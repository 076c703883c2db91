"""Packed Qwen2-VL / Qwen2.5-VL rows: each sequence inside a pack gives the logits and loss it gives alone
(text positions restart per sequence, 3-D rope positions are each sequence's own); other families refuse."""

from __future__ import annotations

import pytest
import torch

from sftune import attention, templates
from sftune.data import Conversation, Message
from sftune.training.loss import linear_cross_entropy, shifted_targets, trained_hidden_states
from sftune.vision import models as vision_models
from sftune.vision import qwen
from sftune.vision.dataset import collate, collate_packed, encode_dataset, packed_rows, packing_refused

QWEN = ["qwen2_vl", "qwen2_5_vl"]


def _conversations(images):
    return [
        Conversation([Message("user", "<image>\nColour?"), Message("assistant", "red")], images=[images["red"]]),
        Conversation([Message("user", "Hello, how are you today?"), Message("assistant", "Fine, thanks.")]),
        Conversation([Message("user", "And these? <image> <image>"), Message("assistant", "blue, then red")],
                     images=[images["blue"], images["red"]]),
    ]


def _per_sequence(logits, batch):
    """Summed token cross-entropy of each sequence, and its logits, cut at the text positions' restarts."""
    bounds = attention.sequence_bounds(batch["position_ids"][0, 0] if batch["position_ids"].dim() == 3
                                       else batch["position_ids"][0], logits.shape[1])
    targets = shifted_targets(batch)[0]
    out = []
    for s, e in bounds:
        z, y = logits[0, s:e - 1], targets[s:e - 1]
        keep = y != -100
        out.append((torch.nn.functional.cross_entropy(z[keep], y[keep], reduction="sum"), logits[0, s:e]))
    return out


@pytest.mark.parametrize("family", QWEN)
@pytest.mark.parametrize("attn", ["sdpa", attention.NAME])
def test_packed_sequences_equal_each_sequence_alone(family, attn, vlm_folder, images):
    model, processor = vision_models.load(vlm_folder(family), dtype=torch.float32,
                                          attn_implementation=attention.resolve(attn, packing=True))
    template = templates.default_for(processor.tokenizer)
    rows, _ = encode_dataset(_conversations(images), processor, template)
    [row] = packed_rows(rows, max_len=sum(len(r) for r in rows["input_ids"]))
    assert sorted(row["lengths"]) == sorted(len(r) for r in rows["input_ids"])
    batch = collate_packed([row], processor=processor, rope_index=qwen.rope_index(model))
    assert "attention_mask" not in batch and batch["position_ids"].shape == (4, 1, batch["input_ids"].shape[1])
    cut = [0] + [sum(row["lengths"][:i + 1]) for i in range(len(row["lengths"]))]  # the attention's boundaries
    assert batch["cu_seq_lens_q"].tolist() == cut and batch["max_length_q"] == max(row["lengths"])
    with torch.no_grad():
        packed = _per_sequence(model(**{k: v for k, v in batch.items() if k != "labels"}, use_cache=False).logits,
                               batch)
        # the packed row's sequences, in its order, each alone in a batch of one (the model's own positions)
        order = [next(k for k in range(len(rows)) if rows[k]["text"] == text) for text in row["texts"]]
        alone = []
        for k in order:
            single = collate([rows[k]], processor=processor, pad_token_id=processor.tokenizer.pad_token_id)
            logits = model(**{k: v for k, v in single.items() if k != "labels"}, use_cache=False).logits
            [(loss, _)] = _per_sequence(logits, {**single, "position_ids": torch.arange(logits.shape[1])[None]})
            alone.append((loss, logits[0]))
        # 1-D positions only (rows 1-3 dropped): sequences with images would see other rope positions
        text_only = model(**{**{k: v for k, v in batch.items() if k != "labels"},
                             "position_ids": batch["position_ids"][0]}, use_cache=False).logits
    assert len(packed) == len(alone) == 3
    for (loss_packed, logits_packed), (loss_alone, logits_alone) in zip(packed, alone):
        torch.testing.assert_close(logits_packed, logits_alone, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(loss_packed, loss_alone, atol=1e-5, rtol=1e-4)
    with_images = [i for i, refs in enumerate(row["images"]) if refs]
    s, e = attention.sequence_bounds(batch["position_ids"][0, 0], text_only.shape[1])[with_images[0]]
    assert not torch.allclose(text_only[0, s:e], packed[with_images[0]][1], atol=1e-3)

    # sftune's training loss over the pack is the token-weighted mean of the sequences' losses alone
    hidden, targets, _, head, rule, _ = trained_hidden_states(model, batch)
    loss = linear_cross_entropy(hidden, head, targets, logit_rule=rule) / len(targets)
    alone_tokens = sum(int((shifted_targets(collate([rows[k]], processor=processor, pad_token_id=0)) != -100).sum())
                       for k in order)
    assert len(targets) == alone_tokens
    torch.testing.assert_close(loss, sum(l for l, _ in alone) / alone_tokens, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("family,word", [("gemma3", "bidirectionally"), ("llava", "LLaVA"), ("idefics3", "Idefics3")])
def test_other_families_refuse_packing_with_their_reason(family, word):
    assert word in packing_refused(family)
    assert all(packing_refused(f) is None for f in QWEN)
