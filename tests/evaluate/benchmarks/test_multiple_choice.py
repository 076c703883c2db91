"""MMLU / C-Eval / CMMLU: the original prompt, read from the public CSV layouts, scored by the letter's
log-likelihood; checked against a hand computation on one unpadded forward pass."""

from __future__ import annotations

import math

import pytest
import torch

from sftune.evaluate.benchmarks import TASKS, files, multiple_choice as mc
from sftune.evaluate.compare import with_harness
from tests.evaluate.benchmarks.conftest import FIXTURES, data


def test_mmlu_prompt_is_the_original_five_shot_format():
    items = mc.load_items("mmlu", data("mmlu"))
    assert [i.subject for i in items] == ["elementary_mathematics"] * 3 + ["high_school_geography"] * 3
    first = items[0]
    assert first.context == (
        "The following are multiple choice questions (with answers) about elementary mathematics.\n\n"
        "What is 2 + 3?\nA. 4\nB. 5\nC. 6\nD. 7\nAnswer: B\n\n"
        "What is 10 - 4?\nA. 6\nB. 5\nC. 14\nD. 4\nAnswer: A\n\n"
        "What is 3 * 3?\nA. 6\nB. 12\nC. 9\nD. 33\nAnswer: C\n\n"
        "What is 8 / 2?\nA. 2\nB. 6\nC. 16\nD. 4\nAnswer: D\n\n"
        "What is 7 + 1?\nA. 8\nB. 71\nC. 6\nD. 9\nAnswer: A\n\n"
        "What is 5 * 4?\nA. 9\nB. 20\nC. 1\nD. 54\nAnswer:")
    assert first.question.answer == 1  # B


def test_ceval_and_cmmlu_read_their_headers_and_write_the_chinese_prompt():
    ceval = mc.load_items("ceval", data("ceval"))
    assert len(ceval) == 3 and ceval[0].question.question == "一周有几天？" and ceval[0].question.answer == 1
    assert ceval[0].context.startswith("以下是中国关于高中语文考试的单项选择题，请选出其中的正确答案。\n\n1 加 1 等于多少？\nA. 1\n")
    assert ceval[0].context.endswith("一周有几天？\nA. 5\nB. 7\nC. 6\nD. 8\n答案：")
    cmmlu = mc.load_items("cmmlu", data("cmmlu"))
    assert [i.question.answer for i in cmmlu] == [1, 2, 3]
    assert cmmlu[0].context.startswith("以下是关于elementary commonsense的单项选择题")
    assert "中国的首都是哪里？\nA. 北京\nB. 上海\nC. 广州\nD. 深圳\n答案： A\n\n" in cmmlu[0].context


def test_letter_scores_equal_a_hand_computation(loaded):
    """log p(" B" | context) from one unpadded forward pass and a log-softmax, for each letter of one item."""
    item = mc.load_items("mmlu", data("mmlu"))[4]
    got = mc.letter_loglikelihoods(loaded, [item])[0]
    tokenizer, model = loaded.tokenizer, loaded.model
    context_ids = tokenizer(item.context)["input_ids"]
    for letter, score in zip(mc.LETTERS, got):
        whole = tokenizer(item.context + " " + letter)["input_ids"]
        assert whole[: len(context_ids)] == context_ids and len(whole) == len(context_ids) + 1
        with torch.no_grad():
            logits = model(torch.tensor([whole])).logits[0, -2].double()
        expected = (logits[whole[-1]] - torch.logsumexp(logits, -1)).item()
        assert score == pytest.approx(expected, abs=1e-4)
    assert len(set(got)) == 4  # the letters are told apart


def test_mmlu_accuracy_is_the_share_of_argmax_letters_that_are_right(loaded):
    result = TASKS["mmlu"](loaded, options=data("mmlu"))
    items = mc.load_items("mmlu", data("mmlu"))
    scores = mc.letter_loglikelihoods(loaded, items)
    predicted = [max(range(4), key=s.__getitem__) for s in scores]
    assert result.details["predictions"] == "".join(mc.LETTERS[p] for p in predicted)
    assert result.item_scores == [float(p == i.question.answer) for p, i in zip(predicted, items)]
    assert result.score == pytest.approx(sum(result.item_scores) / 6)
    assert result.metric == "accuracy" and result.general and result.details["n"] == 6
    math_acc = result.details["subjects"]["elementary_mathematics"]["accuracy"]
    assert math_acc == pytest.approx(sum(result.item_scores[:3]) / 3)
    assert result.samples[0].prompt == items[0].block and result.samples[0].reference == "B"


def test_limit_takes_questions_from_each_subject_in_turn(loaded):
    items = mc.load_items("mmlu", data("mmlu"), limit=3)
    assert [i.subject for i in items] == ["elementary_mathematics", "elementary_mathematics", "high_school_geography"]
    assert TASKS["ceval"](loaded, limit=2, options=data("ceval")).details["n"] == 2


def test_a_missing_file_names_it_the_source_and_the_place(tmp_path):
    (tmp_path / "data" / "test").mkdir(parents=True)
    (tmp_path / "data" / "test" / "anatomy_test.csv").write_text("Q?,a,b,c,d,A\n")
    with pytest.raises(files.BenchmarkDataError) as err:
        mc.load_items("mmlu", {"data_dir": str(tmp_path)})
    message = str(err.value)
    assert str(tmp_path / "data" / "dev" / "anatomy_dev.csv") in message
    assert "hendrycks" in message and "--data-dir" in message
    with pytest.raises(files.BenchmarkDataError, match="ceval-exam"):
        mc.load_items("ceval", {"data_dir": str(tmp_path / "nothing")})


def test_a_bad_row_is_named(tmp_path):
    for split in ("dev", "test"):
        (tmp_path / split).mkdir()
        (tmp_path / split / "s.csv").write_text(",Question,A,B,C,D,Answer\n0,Q?,a,b,c,d,E\n")
    with pytest.raises(files.BenchmarkDataError, match=r"s.csv: row 2"):
        mc.load_items("cmmlu", {"data_dir": str(tmp_path)})


def test_where_data_is_looked_for(monkeypatch, tmp_path):
    monkeypatch.delenv("SFTUNE_DATA", raising=False)
    monkeypatch.setenv("SFTUNE_HOME", str(tmp_path / "home"))
    assert files.data_dir("mmlu") == tmp_path / "home" / "data" / "mmlu"
    monkeypatch.setenv("SFTUNE_DATA", str(FIXTURES))
    assert files.data_dir("gsm8k") == FIXTURES / "gsm8k"
    assert len(mc.load_items("cmmlu")) == 3
    assert files.data_dir("gsm8k", {"data_dir": "/x"}).as_posix() == "/x"


def test_unknown_harness_is_refused(loaded):
    with pytest.raises(ValueError, match="lm-eval"):
        with_harness("mmlu", TASKS["mmlu"], "helm")(loaded, options={**data("mmlu"), "harness": "helm"})
    cmmlu = with_harness("cmmlu", TASKS["cmmlu"], "sftune")
    assert not math.isnan(cmmlu(loaded, options={**data("cmmlu"), "harness": "sftune"}).score)
