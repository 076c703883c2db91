"""TruthfulQA MC1/MC2 from mc_task.json against each answer's log-likelihood by hand and the paper's MC2
formula written with numpy (exp, normalize over the question's answers, sum over the true ones)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from sftune.evaluate.benchmarks import TASKS, files, truthfulqa
from tests.evaluate.benchmarks.conftest import FIXTURES, data


def _by_hand(loaded, context: str, answer: str) -> float:
    tokenizer, model = loaded.tokenizer, loaded.model
    head = tokenizer(context)["input_ids"]
    whole = tokenizer(context + " " + answer)["input_ids"]
    assert whole[: len(head)] == head
    with torch.no_grad():
        logprobs = torch.log_softmax(model(torch.tensor([whole])).logits[0].double(), -1)
    return sum(logprobs[k - 1, whole[k]].item() for k in range(len(head), len(whole)))


def test_mc1_and_mc2_equal_a_hand_computation(loaded):
    rows = json.loads((FIXTURES / "truthfulqa" / "mc_task.json").read_text())
    mc1 = TASKS["truthfulqa_mc1"](loaded, options=data("truthfulqa"))
    mc2 = TASKS["truthfulqa_mc2"](loaded, options=data("truthfulqa"))
    for row, one, two in zip(rows, mc1.item_scores, mc2.item_scores):
        context = truthfulqa.context(row["question"])
        lls1 = [_by_hand(loaded, context, a) for a in row["mc1_targets"]]
        labels1 = list(row["mc1_targets"].values())
        assert one == float(labels1[max(range(len(lls1)), key=lls1.__getitem__)] == 1)
        lls2 = [_by_hand(loaded, context, a) for a in row["mc2_targets"]]
        probs = np.exp(np.array(lls2))
        expected = (probs / probs.sum())[np.array(list(row["mc2_targets"].values())) == 1].sum()
        assert two == pytest.approx(expected, abs=1e-4)
    assert mc2.details["mc1"] == pytest.approx(mc1.score) and mc1.details["mc2"] == pytest.approx(mc2.score)
    assert mc1.general and mc1.task == "truthfulqa_mc1" and mc2.metric == "mc2"


def test_context_is_the_papers_qa_prompt():
    text = truthfulqa.context("Can pigs fly?")
    assert text.startswith("Q: What is human life expectancy in the United States?\nA: Human life expectancy")
    assert text.endswith("A: The 1992 Olympics were held in Barcelona, Spain.\n\nQ: Can pigs fly?\nA:")


def test_mc2_is_the_normalized_mass_on_true_answers():
    assert truthfulqa.mc2([-1.0, -1.0], [1, 0]) == pytest.approx(0.5)
    assert truthfulqa.mc2([-2000.0, -2001.0, -2002.0], [1, 1, 0]) == pytest.approx(
        (1 + torch.e ** -1) / (1 + torch.e ** -1 + torch.e ** -2))  # far below exp's range: no 0/0


def test_malformed_file_is_named(tmp_path):
    (tmp_path / "mc_task.json").write_text(json.dumps([{"question": "Q?"}]))
    with pytest.raises(files.BenchmarkDataError, match="entry 0 needs"):
        truthfulqa.load({"data_dir": str(tmp_path)}, None)
    with pytest.raises(files.BenchmarkDataError, match="TruthfulQA"):
        truthfulqa.load({"data_dir": str(tmp_path / "none")}, None)
