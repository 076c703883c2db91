"""Packing: bins, collators, and isolation of packed sequences in real transformers models."""

from __future__ import annotations

import random

import pytest
import torch
import torch.nn.functional as F

from sftune import packing
from tests.conftest import tiny_model


def test_pack_best_fit_decreasing_fills_bins_and_keeps_every_sequence():
    lengths = [7, 5, 4, 3, 3, 2, 1, 9, 6]
    bins = packing.pack(lengths, 10)
    assert sorted(k for b in bins for k in b) == list(range(len(lengths)))
    assert all(sum(lengths[k] for k in b) <= 10 for b in bins)
    # 40 tokens need at least 4 bins of 10; best-fit-decreasing reaches it here
    assert len(bins) == 4
    # the longest goes first into the first bin, and each later item goes where it leaves least room
    assert bins[0][0] == 7


def test_pack_matches_a_reference_best_fit_decreasing():
    rng = random.Random(0)
    lengths = [rng.randint(1, 64) for _ in range(500)]
    # reference: plain O(n * bins) best fit decreasing
    ref_bins: list[list[int]] = []
    for k in sorted(range(len(lengths)), key=lambda k: (-lengths[k], k)):
        fits = [b for b in range(len(ref_bins)) if sum(lengths[j] for j in ref_bins[b]) + lengths[k] <= 64]
        if fits:
            best = min(fits, key=lambda b: (64 - sum(lengths[j] for j in ref_bins[b]), b))
            ref_bins[best].append(k)
        else:
            ref_bins.append([k])
    assert packing.pack(lengths, 64) == ref_bins


def test_pack_rejects_a_sequence_longer_than_max_len():
    with pytest.raises(ValueError, match="sequence 1 has 12 tokens"):
        packing.pack([3, 12], 10)


def test_collate_packed_restarts_positions_and_masks_boundaries():
    features = [{"input_ids": [5, 6, 7], "labels": [-100, 6, 7]}, {"input_ids": [8, 9], "labels": [8, 9]}]
    batch = packing.collate_packed(features)
    assert "attention_mask" not in batch
    assert batch["input_ids"].tolist() == [[5, 6, 7, 8, 9]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0, 1]]
    assert batch["labels"].tolist() == [[-100, 6, 7, -100, 9]]


def test_collate_packed_gives_the_attention_each_sequences_boundaries():
    """cu_seq_lens_q/k ([n + 1] int32 on the CPU) and max_length_q/k (int): where flash attention 2/3 and
    sftune_varlen on a GPU cut the row, without a device sync to find them."""
    batch = packing.collate_packed([{"input_ids": [5, 6, 7]}, {"input_ids": [8, 9, 10, 11, 12]}, {"input_ids": [13]}])
    for side in ("q", "k"):
        cu = batch[f"cu_seq_lens_{side}"]
        assert cu.tolist() == [0, 3, 8, 9] and cu.dtype == torch.int32 and cu.device.type == "cpu"
        assert batch[f"max_length_{side}"] == 5 and type(batch[f"max_length_{side}"]) is int


def test_boundaries_of_packed_rows_are_their_sequences_not_the_rows():
    """Rows from packed_rows (position_ids kept) collated together: one boundary per sequence, also where a row
    ends and the next row's first sequence starts."""
    import datasets

    ds = datasets.Dataset.from_dict({"input_ids": [[1, 2, 3], [4, 5], [6, 7, 8, 9], [10]]})
    rows = list(packing.packed_rows(ds, 5))
    assert [r["position_ids"] for r in rows] == [[0, 1, 2, 3, 0], [0, 1, 2, 0, 1]]
    batch = packing.collate_packed(rows)
    assert batch["cu_seq_lens_q"].tolist() == [0, 4, 5, 8, 10] and batch["max_length_q"] == 4
    assert packing.sequence_lengths([0, 1, 2, 0, 0, 1]) == [3, 1, 2]
    assert packing.sequence_lengths([4, 5, 0, 1]) == [2, 2]  # a row that starts inside a sequence


def test_collate_padded_pads_with_pad_id_and_keeps_eos_label_equal_to_pad():
    pad = 2  # also the EOS id, as in SmolLM2
    features = [{"input_ids": [1, 5, 2], "labels": [-100, 5, 2]}, {"input_ids": [1, 2], "labels": [-100, 2]}]
    batch = packing.collate_padded(features, pad_token_id=pad)
    assert batch["input_ids"].tolist() == [[1, 5, 2], [1, 2, pad]]
    assert batch["labels"].tolist() == [[-100, 5, 2], [-100, 2, -100]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]


def test_packed_rows_carry_positions_through_the_collator():
    import datasets

    ds = datasets.Dataset.from_dict({"input_ids": [[1, 2, 3], [4, 5], [6, 7, 8, 9]],
                                     "labels": [[-100, 2, 3], [-100, 5], [-100, 7, 8, 9]]})
    rows = packing.packed_rows(ds, 5)
    assert sorted(len(r) for r in rows["input_ids"]) == [4, 5]
    batch = packing.collate_packed(list(rows))
    starts = (batch["position_ids"][0] == 0).sum().item()
    assert starts == 3
    assert (batch["labels"][0][batch["position_ids"][0] == 0] == -100).all()


def _loss_sum(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits[:-1].float(), labels[1:], ignore_index=-100, reduction="sum")


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gemma"])
def test_packed_sequences_do_not_attend_to_each_other(arch):
    """Each sequence's logits and loss inside a pack equal those of the sequence alone (fp32, <= 1e-5)."""
    vocab = 512
    model = tiny_model(arch, vocab_size=vocab)
    gen = torch.Generator().manual_seed(1)
    seqs = [torch.randint(0, vocab, (n,), generator=gen).tolist() for n in (11, 7, 20)]
    features = [{"input_ids": s, "labels": [-100] + s[1:]} for s in seqs]
    batch = packing.collate_packed(features)
    with torch.no_grad():
        packed = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits[0]
        start = 0
        for s in seqs:
            alone = model(input_ids=torch.tensor([s]), use_cache=False).logits[0]
            inside = packed[start:start + len(s)]
            torch.testing.assert_close(inside, alone, atol=1e-5, rtol=0)
            labels = torch.tensor(s)
            assert abs(_loss_sum(inside, labels) - _loss_sum(alone, labels)) <= 1e-5 * len(s)
            start += len(s)
        # the whole-pack loss with the collator's labels equals the sum of the sequences' losses
        total = F.cross_entropy(packed[:-1], batch["labels"][0][1:], ignore_index=-100, reduction="sum")
        parts = sum(_loss_sum(model(input_ids=torch.tensor([s]), use_cache=False).logits[0], torch.tensor(s))
                    for s in seqs)
        assert abs(total - parts) <= 1e-4


def test_a_kv_cache_breaks_isolation_which_is_why_use_cache_must_be_false():
    """Guard for the trap: with a cache (the default in eval), transformers ignores the packing."""
    model = tiny_model("llama", vocab_size=512)
    seqs = [[5, 6, 7, 8], [9, 10, 11]]
    batch = packing.collate_packed([{"input_ids": s} for s in seqs])
    with torch.no_grad():
        cached = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=True).logits[0]
        alone = model(input_ids=torch.tensor([seqs[1]]), use_cache=False).logits[0]
    assert not torch.allclose(cached[4:], alone, atol=1e-5)
