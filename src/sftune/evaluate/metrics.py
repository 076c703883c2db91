"""Scores of generated text against references, pass@k for code, and perplexity on a data file.

    bleu(preds, refs, lang="auto")      corpus BLEU (sacrebleu, 0-100; its `zh` tokenizer for Chinese)
    bleu_items(preds, refs)             sentence BLEU per item (for bootstrap intervals)
    rouge(preds, refs)                  mean ROUGE-1/2/L F1 (0-1); Chinese segmented with jieba
    exact_match, token_f1, accuracy     SQuAD-style normalized answers; Chinese by characters
    pass_at_k(n, c, k)                  unbiased pass@k (Chen et al. 2021)
    perplexity(loaded, path)            exp(NLL per trained token), encoded exactly as the run's training encoded
    conversation_perplexity(loaded, cs) the same on conversations in memory

Each `x(...)` is the mean of `x_items(...)` (per-item scores, in item order) except corpus BLEU.
A reference may be one string or a list of acceptable strings (the best one counts).
"""

from __future__ import annotations

import math
import re
import string
import unicodedata
from collections import Counter
from dataclasses import replace
from typing import Any, Sequence

from sftune.errors import UserError

Reference = str | Sequence[str]

# CJK ideographs (with extension A and compatibility ideographs), kana and hangul: text written without spaces.
_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uac00-\ud7af]")
_CJK_RUN = re.compile(r"([\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uac00-\ud7af]+)")


def _refs(reference: Reference) -> list[str]:
    return [reference] if isinstance(reference, str) else list(reference)


def _check_lengths(predictions: Sequence[Any], references: Sequence[Any]) -> None:
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references: give one reference "
                         "(or one list of references) per prediction, in the same order")


def is_mostly_cjk(texts: Sequence[str]) -> bool:
    """Whether most letters in `texts` are CJK characters (spaces, digits and punctuation not counted)."""
    cjk = letters = 0
    for text in texts:
        for ch in text:
            if ch.isalpha():
                letters += 1
                cjk += bool(_CJK.match(ch))
    return letters > 0 and cjk / letters > 0.5


def _bleu_tokenizer(lang: str, texts: Sequence[str]) -> str:
    if lang == "auto":
        lang = "zh" if is_mostly_cjk(texts) else "en"
    if lang not in ("en", "zh"):
        raise ValueError(f"unknown BLEU language {lang!r}; use 'en', 'zh' or 'auto'")
    return "zh" if lang == "zh" else "13a"


def _reference_streams(references: Sequence[Reference]) -> list[list[str]]:
    """sacrebleu's layout: one stream per reference slot; items with fewer references repeat their first."""
    lists = [_refs(r) for r in references]
    width = max((len(r) for r in lists), default=1)
    return [[r[k] if k < len(r) else r[0] for r in lists] for k in range(width)]


def bleu(predictions: Sequence[str], references: Sequence[Reference], lang: str = "auto") -> float:
    """Corpus BLEU (0-100) by sacrebleu: 13a tokenization for English, its `zh` tokenizer for Chinese;
    `auto` picks zh when most letters of the references are CJK."""
    import sacrebleu

    _check_lengths(predictions, references)
    streams = _reference_streams(references)
    tokenize = _bleu_tokenizer(lang, [t for s in streams for t in s])
    return float(sacrebleu.corpus_bleu(list(predictions), streams, tokenize=tokenize).score)


def bleu_items(predictions: Sequence[str], references: Sequence[Reference], lang: str = "auto") -> list[float]:
    """Sentence BLEU (0-100, sacrebleu's exponential smoothing) of each item, for paired bootstrap intervals.
    The language is chosen once for the whole set, as `bleu` chooses it."""
    import sacrebleu

    _check_lengths(predictions, references)
    tokenize = _bleu_tokenizer(lang, [t for r in references for t in _refs(r)])
    return [float(sacrebleu.sentence_bleu(p, _refs(r), tokenize=tokenize).score)
            for p, r in zip(predictions, references)]


def rouge_tokens(text: str) -> list[str]:
    """Words for ROUGE: Latin text as rouge-score tokenizes it (lowercase, runs of a-z0-9), CJK runs
    segmented into words by jieba (rouge-score's own tokenizer drops them and scores Chinese 0.0)."""
    tokens: list[str] = []
    for k, part in enumerate(_CJK_RUN.split(text.lower())):
        if k % 2:  # a CJK run
            tokens.extend(w for w in _jieba().lcut(part) if w.strip())
        else:
            tokens.extend(re.sub(r"[^a-z0-9]+", " ", part).split())
    return tokens


def _jieba():
    import logging

    import jieba

    jieba.setLogLevel(logging.WARNING)  # jieba prints its dictionary loading on first use
    return jieba


def _f1(overlap: int, predicted: int, reference: int) -> float:
    if overlap == 0 or predicted == 0 or reference == 0:
        return 0.0
    precision, recall = overlap / predicted, overlap / reference
    return 2 * precision * recall / (precision + recall)


def _ngrams(tokens: list[str], n: int) -> Counter:
    return Counter(tuple(tokens[i: i + n]) for i in range(len(tokens) - n + 1))


def _lcs(a: list[str], b: list[str]) -> int:
    """Length of the longest common subsequence (dynamic programming, one row at a time)."""
    if len(a) < len(b):
        a, b = b, a
    row = [0] * (len(b) + 1)
    for x in a:
        previous = 0
        for j, y in enumerate(b, 1):
            previous, row[j] = row[j], previous + 1 if x == y else max(row[j], row[j - 1])
    return row[-1]


def _rouge_pair(prediction: list[str], reference: list[str]) -> dict[str, float]:
    scores = {}
    for n in (1, 2):
        p, r = _ngrams(prediction, n), _ngrams(reference, n)
        scores[f"rouge{n}"] = _f1(sum((p & r).values()), sum(p.values()), sum(r.values()))
    scores["rougeL"] = _f1(_lcs(prediction, reference), len(prediction), len(reference))
    return scores


def rouge_items(predictions: Sequence[str], references: Sequence[Reference]) -> list[dict[str, float]]:
    """ROUGE-1, ROUGE-2 and ROUGE-L (sentence-level LCS) F1 of each item; with several references,
    each score is the best over them (as rouge-score's score_multi)."""
    _check_lengths(predictions, references)
    items = []
    for prediction, reference in zip(predictions, references):
        tokens = rouge_tokens(prediction)
        pairs = [_rouge_pair(tokens, rouge_tokens(r)) for r in _refs(reference)]
        items.append({key: max(p[key] for p in pairs) for key in ("rouge1", "rouge2", "rougeL")})
    return items


def rouge(predictions: Sequence[str], references: Sequence[Reference]) -> dict[str, float]:
    """Mean ROUGE-1/2/L F1 (0-1) over the items; works for English, Chinese and mixed text."""
    items = rouge_items(predictions, references)
    return {key: sum(i[key] for i in items) / len(items) if items else 0.0 for key in ("rouge1", "rouge2", "rougeL")}


def normalize_answer(text: str) -> str:
    """SQuAD's normalization: lowercase, no punctuation (ASCII and Unicode, e.g. Chinese 。，), no English
    articles, single spaces."""
    text = "".join(" " if unicodedata.category(ch).startswith("P") or ch in string.punctuation else ch
                   for ch in text.lower())
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def answer_tokens(text: str) -> list[str]:
    """Normalized answer tokens: words, and each CJK character on its own (Chinese has no spaces)."""
    return [t for word in _CJK_RUN.sub(r" \1 ", normalize_answer(text)).split()
            for t in (list(word) if _CJK.match(word) else [word])]


def exact_match_items(predictions: Sequence[str], references: Sequence[Reference]) -> list[float]:
    """1.0 where the normalized prediction equals a normalized reference (Chinese: spaces ignored), else 0.0."""
    _check_lengths(predictions, references)
    return [float(any(answer_tokens(p) == answer_tokens(r) for r in _refs(ref)))
            for p, ref in zip(predictions, references)]


def exact_match(predictions: Sequence[str], references: Sequence[Reference]) -> float:
    """Share of predictions that equal a reference after SQuAD normalization."""
    items = exact_match_items(predictions, references)
    return sum(items) / len(items) if items else 0.0


def token_f1_items(predictions: Sequence[str], references: Sequence[Reference]) -> list[float]:
    """SQuAD's token F1 of each item (bag of normalized tokens; CJK by characters), best over references."""
    _check_lengths(predictions, references)
    scores = []
    for prediction, reference in zip(predictions, references):
        p = Counter(answer_tokens(prediction))
        best = 0.0
        for r in _refs(reference):
            rc = Counter(answer_tokens(r))
            if not p or not rc:  # SQuAD: two empty answers agree, one empty answer does not
                best = max(best, float(not p and not rc))
                continue
            best = max(best, _f1(sum((p & rc).values()), sum(p.values()), sum(rc.values())))
        scores.append(best)
    return scores


def token_f1(predictions: Sequence[str], references: Sequence[Reference]) -> float:
    """Mean SQuAD token F1."""
    items = token_f1_items(predictions, references)
    return sum(items) / len(items) if items else 0.0


def accuracy(predictions: Sequence[Any], references: Sequence[Any]) -> float:
    """Share of predictions equal to their reference (labels, choices; compared as they are)."""
    _check_lengths(predictions, references)
    return sum(p == r for p, r in zip(predictions, references)) / len(predictions) if predictions else 0.0


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c passed: 1 - C(n-c, k) / C(n, k) (Chen et al. 2021),
    as a stable product instead of large binomials."""
    if not 0 <= c <= n or k < 1:
        raise ValueError(f"pass@k needs 0 <= c <= n and k >= 1; got n={n}, c={c}, k={k}")
    if k > n:
        raise ValueError(f"pass@{k} needs at least {k} samples per problem; got n={n}. Generate more samples "
                         f"or lower k")
    if n - c < k:
        return 1.0
    result = 1.0
    for i in range(n - c + 1, n + 1):
        result *= 1.0 - k / i
    return 1.0 - result


class NothingToScore(UserError, ValueError):
    """Perplexity was asked of records that have no trained token (none, or all skipped at encoding)."""


def perplexity(
    loaded: Any,
    path: str | Sequence[str],
    *,
    policy: str | None = None,
    max_len: int | None = None,
    batch_size: int = 8,
    progress: bool = False,
    console: Any = None,
) -> dict[str, Any]:
    """Perplexity of `loaded` (a `runs.load` result) on a data file sftune reads, over trained positions only.

    Records are read as training reads them (the run's data.format / columns) and scored by
    `conversation_perplexity`. Returns perplexity, nll, tokens, records, skipped (unreadable ones included).
    """
    from sftune import data

    d = getattr(loaded.config, "data", None)
    options = {"format": getattr(d, "format", None), "columns": getattr(d, "columns", None), "on_error": "skip"}
    report = data.Report()
    conversations = list(data.read([str(path)] if isinstance(path, str) else [str(p) for p in path],
                                   report=report, **options))
    try:
        result = conversation_perplexity(loaded, conversations, policy=policy, max_len=max_len, batch_size=batch_size,
                                         progress=progress, console=console)
    except NothingToScore as err:
        raise NothingToScore(f"{path}: {err}, {report.invalid} unreadable; check the file with "
                             f"`sftune data check {path}`") from None
    return {**result, "skipped": result["skipped"] + report.invalid}


def conversation_perplexity(
    loaded: Any,
    conversations: Sequence[Any],
    *,
    policy: str | None = None,
    max_len: int | None = None,
    batch_size: int = 8,
    progress: bool = False,
    console: Any = None,
) -> dict[str, Any]:
    """Perplexity of `loaded` on conversations in memory, over trained positions only.

    They are encoded exactly as the run's training encoded its data (`loaded.encode_options`: its policy,
    reasoning options, max_len; `policy` / `max_len` override those two); perplexity is
    exp(sum of token NLL / number of trained tokens). Returns perplexity, nll, tokens, records, skipped.
    """
    import torch

    from sftune import encode
    from sftune.generation import TokenProgress

    options = loaded.encode_options
    options = replace(options, policy=policy or options.policy, max_len=max_len or options.max_len)
    dataset, encoded = encode.encode_dataset(conversations, loaded.tokenizer, loaded.template, options,
                                             use_cache=False, progress=False)
    rows = [(list(ids), list(labels)) for ids, labels in zip(dataset["input_ids"], dataset["labels"])]
    if not rows:
        raise NothingToScore(f"no record with a trained token to score ({encoded.skipped} skipped at encoding: "
                             f"{encoded.skipped_by_reason})")
    model = loaded.model
    pad = loaded.tokenizer.pad_token_id if loaded.tokenizer.pad_token_id is not None else 0
    order = sorted(range(len(rows)), key=lambda i: -len(rows[i][0]))
    total_nll, total_tokens = 0.0, 0
    was_training = model.training
    model.eval()
    with TokenProgress(progress, console, "perplexity", len(rows), unit="records") as bar:
        for lo in range(0, len(order), batch_size):
            chunk = [rows[i] for i in order[lo: lo + batch_size]]
            width = max(len(ids) for ids, _ in chunk)
            input_ids = torch.tensor([ids + [pad] * (width - len(ids)) for ids, _ in chunk], device=model.device)
            labels = torch.tensor([lab + [encode.IGNORE] * (width - len(lab)) for _, lab in chunk],
                                  device=model.device)
            mask = torch.tensor([[1] * len(ids) + [0] * (width - len(ids)) for ids, _ in chunk], device=model.device)
            with torch.no_grad():
                logits = model(input_ids=input_ids, attention_mask=mask, use_cache=False).logits
            logits = logits[:, logits.shape[1] - width:]  # prompt-learning methods prepend virtual tokens
            targets = labels[:, 1:]
            nll = torch.nn.functional.cross_entropy(logits[:, :-1].float().reshape(-1, logits.shape[-1]),
                                                    targets.reshape(-1), ignore_index=encode.IGNORE,
                                                    reduction="sum")
            trained = int((targets != encode.IGNORE).sum())
            total_nll += float(nll)
            total_tokens += trained
            bar.advance(len(chunk), trained)
    model.train(was_training)
    mean = total_nll / total_tokens
    return {"perplexity": math.exp(mean), "nll": mean, "tokens": total_tokens, "records": len(rows),
            "skipped": encoded.skipped}
