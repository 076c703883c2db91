"""GSM8K: the answer after '####' (the last number otherwise) on real-format solutions, and the k-shot prompt."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest

from sftune.evaluate.benchmarks import TASKS, files, gsm8k
from tests.evaluate.benchmarks.conftest import FIXTURES, data


def test_reference_answers_of_real_format_solutions():
    rows = [json.loads(line) for line in (FIXTURES / "gsm8k" / "test.jsonl").read_text().splitlines()]
    assert [gsm8k.reference_answer(r["answer"]) for r in rows] == [Decimal(72), Decimal(3600), Decimal(10)]
    # A solution extracted as a model answer gives its own reference: calculator notes <<..>> do not confuse it.
    assert all(gsm8k.extract_answer(r["answer"]) == gsm8k.reference_answer(r["answer"]) for r in rows)


@pytest.mark.parametrize("text, expected", [
    ("She sold 48/2 = <<48/2=24>>24 in May.\n#### 72", Decimal(72)),
    ("#### $1,200.", Decimal(1200)),
    ("So the total is 3,600 cups.\n#### 3,600\n\nQuestion: next", Decimal(3600)),
    ("It loses 2.5*4=10 liters. The answer is 10.", Decimal(10)),  # no '####': the last number
    ("The temperature fell to -5 degrees.", Decimal(-5)),
    ("#### 12 apples, from 3 trees", Decimal(12)),
    ("I do not know.", None),
])
def test_extract_answer(text, expected):
    assert gsm8k.extract_answer(text) == expected


def test_numbers_match_exactly_whatever_their_writing():
    assert gsm8k.extract_answer("#### 10.00") == gsm8k.reference_answer("#### 10")
    assert gsm8k.extract_answer("#### 10.5") != gsm8k.reference_answer("#### 10")


def test_runs_end_to_end_with_the_train_file_as_shots(loaded):
    result = TASKS["gsm8k"](loaded, options={**data("gsm8k"), "max_new_tokens": 8})
    assert result.metric == "exact_match" and result.details["n"] == 3 and result.details["num_fewshot"] == 3
    assert result.details["chat_template"] is False  # a plain model folder without "instruct" in its name
    # Each item's score is what the extraction of its generated answer gives.
    for sample, score in zip(result.samples, result.item_scores):
        got = gsm8k.extract_answer(sample.answer)
        assert score == float(got is not None and got == gsm8k.reference_answer(sample.reference))


def test_plain_and_chat_prompts(loaded):
    shots = files.read_jsonl(FIXTURES / "gsm8k" / "train.jsonl")[:2]
    [plain] = gsm8k.prompts(loaded, ["How many?"], shots, chat=False)
    assert plain == (f"Question: {shots[0]['question']}\nAnswer: {shots[0]['answer']}\n\n"
                     f"Question: {shots[1]['question']}\nAnswer: {shots[1]['answer']}\n\nQuestion: How many?\nAnswer:")
    [chat] = gsm8k.prompts(loaded, ["How many?"], shots, chat=True)
    assert chat.count("<|im_start|>user") == 3 and chat.count("<|im_start|>assistant") == 3
    assert chat.endswith("Question: How many?\nAnswer:<|im_end|>\n<|im_start|>assistant\n")


def test_missing_test_file(tmp_path, loaded):
    with pytest.raises(files.BenchmarkDataError, match="test.jsonl not found.*grade-school-math"):
        TASKS["gsm8k"](loaded, options={"data_dir": str(tmp_path)})
