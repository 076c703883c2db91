"""The reference pass runs where the model is: on a GPU the model is moved to training's device before its batches
follow it there (once, the model stayed on the CPU while the batches went to CUDA, and DPO crashed)."""

from __future__ import annotations

import torch
from datasets import Dataset

from sftune.preference import reference


def _pass(monkeypatch, model, device):
    """Run add_reference_logps on three pairs and return (model device, batch device) of each reference call."""
    seen = []

    def logps(model, batch):
        seen.append((next(model.parameters()).device, batch["input_ids"].device))
        return torch.arange(batch["input_ids"].shape[0], dtype=torch.float32), None

    monkeypatch.setattr(reference, "sequence_logps", logps)
    pairs = Dataset.from_dict({"x": [1, 2, 3]})

    def collate(features):  # chosen rows, then rejected rows
        return {"input_ids": torch.tensor([[f["x"]] for f in features] * 2)}

    out = reference.add_reference_logps(model, pairs, collate, batch_size=2, adapter_off=False, device=device,
                                        progress=False)
    assert out["ref_chosen"] == [0.0, 1.0, 0.0] and out["ref_rejected"] == [2.0, 3.0, 1.0]
    return seen


def test_the_model_moves_to_trainings_device_and_the_batches_follow(monkeypatch):
    model = torch.nn.Linear(2, 2)  # on the CPU, as loaded without a device_map; "meta" stands in for "cuda"
    assert _pass(monkeypatch, model, "meta") == [(torch.device("meta"), torch.device("meta"))] * 2
    assert reference.reference_device(torch.nn.Linear(2, 2)) == torch.device("cpu")  # no device: where it is


def test_a_model_placed_when_loaded_stays_and_the_batches_go_to_it(monkeypatch):
    model = torch.nn.Linear(2, 2)
    model.hf_device_map = {"": "cpu"}  # a 4-bit base loaded with its device_map (on its GPU)
    assert _pass(monkeypatch, model, "meta") == [(torch.device("cpu"), torch.device("cpu"))] * 2
