"""Online batch selection (UDS): the scores against torch.linalg / explicit distances, the top-K choice,
the FIFO memory, and training with ratio 1 equal to plain training."""

from __future__ import annotations

import json

import pytest
import torch

from sftune.packing import collate_padded
from sftune.training import selection
from tests.conftest import tiny_model
from tests.training.helpers import VOCAB, encoded_examples


def test_nuclear_norm_is_the_sum_of_singular_values():
    diagonal = torch.tensor([[3.0, 0.0, 0.0], [0.0, -4.0, 0.0]])  # singular values 4 and 3
    g = torch.Generator().manual_seed(0)
    dense = torch.randn(5, 11, generator=g)
    got = selection.nuclear_norms([diagonal, dense, torch.zeros(0, 11)])
    assert got[0].item() == pytest.approx(7.0)
    assert got[1].item() == pytest.approx(torch.linalg.svdvals(dense).sum().item(), rel=1e-6)
    assert got[1].item() == pytest.approx(torch.linalg.matrix_norm(dense, ord="nuc").item(), rel=1e-6)
    assert got[2].item() == 0.0


def test_projection_and_mean_distance_against_explicit_padding_and_loops():
    g = torch.Generator().manual_seed(1)
    max_len, vocab = 6, 10
    rows, cols = torch.randn(max_len, 3, generator=g), torch.randn(vocab, 4, generator=g)
    logits = [torch.randn(2, vocab, generator=g), torch.randn(5, vocab, generator=g)]
    got = selection.project(logits, rows, cols)
    for z, e in zip(logits, got):
        padded = torch.zeros(max_len, vocab)
        padded[: z.shape[0]] = z
        torch.testing.assert_close(e, (rows.T @ padded @ cols).flatten())
    memory = torch.randn(3, 12, generator=g)
    distances = selection.mean_distances(got, memory)
    for i, e in enumerate(got):
        expected = sum(float(((e - m) ** 2).sum().sqrt()) for m in memory) / len(memory)
        assert distances[i].item() == pytest.approx(expected, rel=1e-5)
    assert selection.mean_distances(got, None).tolist() == [0.0, 0.0]


def test_top_k_keeps_the_best_in_batch_order_and_memory_is_fifo():
    assert selection.top_k(torch.tensor([1.0, 5.0, 3.0, 4.0, 0.5]), 2).tolist() == [1, 3]
    assert selection.top_k(torch.tensor([2.0, 1.0]), 4).tolist() == [0, 1]
    memory = None
    for step in range(4):
        memory = selection.push(memory, torch.full((2, 1), float(step)), size=5)
    assert memory[:, 0].tolist() == [1.0, 2.0, 2.0, 3.0, 3.0]  # the oldest (step 0, one of step 1) dropped


def _batch(n: int = 6):
    rows = encoded_examples(n, seed=3)
    return collate_padded(rows, pad_token_id=0), rows


def test_uds_selects_the_top_k_of_the_papers_score():
    """The score recomputed from the model's full logits (no sftune loss code): nuclear norm of the
    response logits + alpha * mean distance of their projection to the memory."""
    model = tiny_model("llama", vocab_size=VOCAB)
    selector = selection.Selector(method="uds", keep=2, alpha=0.5, memory_size=3, max_len=32, seed=0)
    batch, rows = _batch()
    memory_before = torch.randn(2, selection.TOKEN_DIM * selection.VOCAB_DIM, generator=torch.Generator().manual_seed(5))
    selector.memory = memory_before.clone()
    out = selector(model, batch)

    proj_rows, proj_cols = selector._projection
    with torch.no_grad():
        full = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    scores, embeddings = [], []
    for i, row in enumerate(rows):
        trained = [t for t in range(len(row["labels"]) - 1) if row["labels"][t + 1] != -100]
        z = full[i, trained]
        e = (proj_rows[: len(trained)].T @ z @ proj_cols).flatten()
        s_inter = torch.stack([torch.linalg.vector_norm(e - m) for m in memory_before]).mean()
        scores.append(float(torch.linalg.svdvals(z).sum() + 0.5 * s_inter))
        embeddings.append(e)
    best = sorted(sorted(range(len(rows)), key=lambda i: -scores[i])[:2])
    assert out["input_ids"].shape[0] == 2
    longest = max(len(rows[i]["input_ids"]) for i in best)
    assert out["input_ids"].tolist() == [rows[i]["input_ids"] + [0] * (longest - len(rows[i]["input_ids"]))
                                         for i in best]
    # FIFO: the two new selections are appended, the oldest entry of the 2 is dropped (size 3)
    torch.testing.assert_close(selector.memory[0], memory_before[1])
    torch.testing.assert_close(selector.memory[1:], torch.stack([embeddings[i] for i in best]), rtol=1e-4, atol=1e-3)
    assert selector.summary()["candidates"] == 6 and selector.summary()["selected"] == 2


def test_random_selection_is_seeded_and_keeps_k():
    batch, _ = _batch()
    picks = [selection.Selector(method="random", keep=3, seed=7)(None, batch)["input_ids"] for _ in range(2)]
    assert picks[0].shape[0] == 3 and torch.equal(picks[0], picks[1])


def _config(tmp_path, model_dir, out: str, **selection_options) -> dict:
    from tests.training.test_recipe import run_config

    cfg = run_config(tmp_path, model_dir, train={"save_steps": None, "max_steps": 4, "batch_size": 2},
                     data={"packing": False}, eval={"steps": None}, output={"dir": str(tmp_path / out)})
    if selection_options:
        cfg["train"]["batch_selection"] = selection_options
    return cfg




def test_ratio_1_trains_exactly_as_plain_training(tmp_path, tiny_checkpoint):
    from safetensors.torch import load_file

    from sftune import train

    plain = train(_config(tmp_path, tiny_checkpoint, "plain"))
    selected = train(_config(tmp_path, tiny_checkpoint, "uds", method="uds", ratio=1.0))
    assert selected.summary["batch_selection"]["candidates"] == selected.summary["batch_selection"]["selected"] == 8
    assert selected.summary["train_loss"] == pytest.approx(plain.summary["train_loss"], rel=1e-6)
    a = load_file(plain.run_dir / "adapter_model.safetensors")
    b = load_file(selected.run_dir / "adapter_model.safetensors")
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=1e-6, msg=name)


def test_ratio_half_reads_twice_the_sequences_and_trains_k(tmp_path, tiny_checkpoint):
    from sftune import train

    result = train(_config(tmp_path, tiny_checkpoint, "half", method="uds", ratio=0.5))
    info = result.summary["batch_selection"]
    assert info == {"method": "uds", "candidates": 16, "selected": 8, "seconds": info["seconds"]}
    assert result.summary["packing"] is False
    saved = json.loads((result.run_dir / "summary.json").read_text())
    assert saved["batch_selection"]["selected"] == 8


# --------------------------------------------------------------------------------------- with packing


def test_packed_sequences_are_scored_each_alone():
    """In a padding-free row every sequence gets the same response logits, hence the same UDS score and
    projection, as in a padded batch of the same sequences."""
    from sftune.packing import collate_packed

    model = tiny_model("llama", vocab_size=VOCAB)
    rows = encoded_examples(5, seed=4)
    packed, padded = collate_packed(rows), collate_padded(rows, pad_token_id=0)
    assert selection.is_packed(packed) and not selection.is_packed(padded)
    assert selection.sequence_bounds(packed) == [(sum(len(r["input_ids"]) for r in rows[:i]),
                                                 sum(len(r["input_ids"]) for r in rows[: i + 1])) for i in range(5)]
    got, want = selection.response_logits(model, packed), selection.response_logits(model, padded)
    assert [z.shape[0] for z in got] == [sum(v != -100 for v in r["labels"][1:]) for r in rows]
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    on_packed = selection.Selector(method="uds", keep=2, ratio=0.6, max_len=32, seed=0)(model, packed)
    on_padded = selection.Selector(method="uds", keep=3, max_len=32, seed=0)(model, padded)
    kept = [[t for t, m in zip(row, mask) if m]
            for row, mask in zip(on_padded["input_ids"].tolist(), on_padded["attention_mask"].tolist())]
    assert on_packed["input_ids"][0].tolist() == [t for row in kept for t in row]  # round(0.6 * 5) = 3, same 3


def test_packed_selection_keeps_the_ratio_repacked():
    """The kept sequences come back as one padding-free row, exactly as collate_packed would build it from
    them: tokens, labels (first token of each -100), restarting position_ids, loss weights, and the kept
    sequences' boundaries for the attention (cu_seq_lens, max_length)."""
    from sftune.packing import collate_packed

    rows = [dict(r, loss_weights=[float(i + 1)] * len(r["input_ids"]))
            for i, r in enumerate(encoded_examples(7, seed=5))]
    batch = collate_packed(rows)
    for method in ("random", "uds"):
        selector = selection.Selector(method=method, keep=1, ratio=0.5, max_len=32, seed=3)
        out = selector(tiny_model("llama", vocab_size=VOCAB) if method == "uds" else None, batch)
        starts = torch.nonzero(out["position_ids"][0] == 0).flatten().tolist()
        assert len(starts) == round(7 * 0.5)  # 4 of 7 sequences kept
        weights = [int(out["loss_weights"][0, s]) - 1 for s in starts]  # each sequence's weight names it
        assert weights == sorted(weights) and len(set(weights)) == 4  # batch order, no repeats
        want = collate_packed([rows[i] for i in weights])
        assert set(out) == set(want)
        for key in want:
            same = torch.equal(out[key], want[key]) if torch.is_tensor(want[key]) else out[key] == want[key]
            assert same, (method, key)
        assert selector.summary()["candidates"] == 7 and selector.summary()["selected"] == 4
    model = tiny_model("llama", vocab_size=VOCAB)
    everything = selection.Selector(method="uds", keep=1, ratio=1.0, max_len=32)(model, batch)
    assert everything is batch  # ratio 1: the row unchanged


def test_uds_with_packing_trains_on_the_kept_share(tmp_path, tiny_checkpoint):
    from sftune import train

    cfg = _config(tmp_path, tiny_checkpoint, "packed", method="uds", ratio=0.5)
    cfg["data"].update(packing=True, max_len=512)  # rows of several demo sequences
    result = train(cfg)
    info, steps = result.summary["batch_selection"], result.summary["steps"]
    assert result.summary["packing"] is True and steps == 4
    # each micro-batch reads 2 / 0.5 = 4 packed rows (more than 4 sequences) and keeps round(n / 2) of them
    assert info["candidates"] > 4 * 4 and abs(info["selected"] - info["candidates"] / 2) <= steps / 2
    assert result.summary["trained_tokens"] > 0


def test_uds_scores_inside_half_precision(monkeypatch):
    """UDS's scoring pass runs outside the Trainer's autocast: it goes through generation.half_precision
    (an fp32 model with flash attention on a GPU would otherwise give the kernel fp32 q/k/v)."""
    from contextlib import contextmanager

    model = tiny_model("llama", vocab_size=VOCAB)
    entered = []

    @contextmanager
    def recorded(m):
        entered.append(m)
        yield

    monkeypatch.setattr(selection, "half_precision", recorded)
    batch, _ = _batch()
    selection.Selector(method="uds", keep=2, alpha=0.5, memory_size=3, max_len=32, seed=0)(model, batch)
    assert entered == [model]
