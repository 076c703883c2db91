"""Data quality: duplicates, length / turn / token statistics, language mix and noise flags, kappa.

    dedup(conversations, *, threshold=0.85, num_perm=128, near=True)
        -> Iterator[(Conversation, None | {"kind": "exact" | "near", "of": "file line N"})]
        Conversations or preference pairs (a pair by its prompt, chosen and rejected answers).
        Exact duplicates: the same text after lower-casing and collapsing whitespace. Near
        duplicates: estimated Jaccard similarity of character 5-gram sets >= threshold, by
        MinHash + LSH (datasketch). The first occurrence is kept; later ones point at it.

    stats(conversations, *, tokenizer=None, bins=20, annotations="annotations") -> dict
        counts, per-conversation characters / turns / tokens (min, mean, p50, p90, p99, max and a
        histogram), language mix (zh / en / other), empty <think> blocks, repeated n-gram and
        low-entropy noise flags, and Cohen's kappa when records carry several annotators' labels
        (a field `annotations`: {annotator: label} or [{annotator, label}, ...]).

    cohen_kappa(labels_a, labels_b) -> float
"""

from __future__ import annotations

import hashlib
import math
import re
from collections import Counter
from collections.abc import Iterable, Iterator
from itertools import combinations
from typing import Any, BinaryIO

from sftune.data import files
from sftune.data.schema import Conversation, Pair

THINK_EMPTY = re.compile(r"<think>\s*</think>")
SPACES = re.compile(r"\s+")
CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
LATIN = re.compile(r"[A-Za-z]")
# Noise thresholds: a reply is flagged when over half its n-grams repeat, or when its characters
# carry under 2.5 bits of entropy (e.g. "aaaa...", "!!!!...", "ha ha ha ...").
REPEATED_NGRAM_RATIO = 0.5
LOW_ENTROPY_BITS = 2.5
MIN_NOISE_CHARS = 40
EXAMPLES_PER_FLAG = 5


def text_of(conversation: Conversation | Pair) -> str:
    """The text duplicates are found by: a conversation's messages; a preference pair's prompt, chosen and
    rejected answers, each part apart (a zero character on a line between them: text moved from one part to the next
    makes another pair)."""
    if isinstance(conversation, Pair):
        parts = (conversation.prompt, conversation.chosen, conversation.rejected)
        return "\n\x00\n".join("\n".join(message.content for message in part) for part in parts)
    return "\n".join(message.content for message in conversation.messages)


def where(conversation: Conversation) -> str:
    """`file line N` / `file record N`, from the provenance meta that read() sets."""
    meta = conversation.meta
    place = f"line {meta['line']}" if "line" in meta else f"record {meta.get('record', '?')}"
    return f"{meta.get('source', '?')} {place}"


def _normalized(text: str) -> str:
    return SPACES.sub(" ", text.lower()).strip()


def _shingles(text: str, size: int = 5) -> set[bytes]:
    return {text[i : i + size].encode("utf-8") for i in range(max(1, len(text) - size + 1))}


def dedup(
    conversations: Iterable[Conversation | Pair],
    *,
    threshold: float = 0.85,
    num_perm: int = 128,
    near: bool = True,
) -> Iterator[tuple[Conversation | Pair, dict[str, str] | None]]:
    """Each conversation with None (kept) or what it duplicates (see the module docstring)."""
    import xxhash
    from datasketch import MinHash, MinHashLSH

    seen: dict[bytes, str] = {}
    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm) if near else None
    # xxhash instead of the default sha1: the same estimate, several times faster per shingle.
    template = MinHash(num_perm=num_perm, seed=1, hashfunc=xxhash.xxh32_intdigest)
    for index, conversation in enumerate(conversations):
        text = _normalized(text_of(conversation))
        digest = hashlib.blake2b(text.encode("utf-8"), digest_size=16).digest()
        if digest in seen:
            yield conversation, {"kind": "exact", "of": seen[digest]}
            continue
        seen[digest] = where(conversation)
        if lsh is not None:
            signature = MinHash(  # the template's permutations are reused: building them is slow
                num_perm=num_perm, hashfunc=xxhash.xxh32_intdigest,
                permutations=template.permutations, scheme=template.scheme,
            )
            signature.update_batch(list(_shingles(text)))
            matches = lsh.query(signature)
            if matches:
                yield conversation, {"kind": "near", "of": _original(matches)}
                continue
            lsh.insert(f"{index}#{where(conversation)}", signature)
        yield conversation, None


def _original(keys: list[str]) -> str:
    """The earliest kept record among LSH matches (keys are "index#location")."""
    first = min(keys, key=lambda key: int(key.split("#", 1)[0]))
    return first.split("#", 1)[1]


def cohen_kappa(labels_a: list[Any], labels_b: list[Any]) -> float:
    """Cohen's kappa of two annotators over the same items: (p_o - p_e) / (1 - p_e)."""
    if len(labels_a) != len(labels_b) or not labels_a:
        raise ValueError("cohen_kappa needs two equally long, non-empty label lists")
    n = len(labels_a)
    observed = sum(a == b for a, b in zip(labels_a, labels_b)) / n
    count_a, count_b = Counter(labels_a), Counter(labels_b)
    expected = sum(count_a[label] * count_b[label] for label in count_a) / (n * n)
    if expected == 1.0:
        return 1.0
    return (observed - expected) / (1 - expected)


def _annotations(conversation: Conversation, field: str) -> dict[str, Any]:
    value = (conversation.meta.get("extra") or {}).get(field)
    if isinstance(value, dict):
        return value
    if isinstance(value, list):
        return {item["annotator"]: item["label"] for item in value if isinstance(item, dict) and "annotator" in item}
    return {}


def language(text: str) -> str:
    """zh when CJK characters outnumber Latin letters, en when Latin letters dominate, else other."""
    cjk, latin = len(CJK.findall(text)), len(LATIN.findall(text))
    if cjk == 0 and latin == 0:
        return "other"
    return "zh" if cjk >= latin else "en"


def repeated_ngram_ratio(text: str, n: int = 3) -> float:
    """Share of word n-grams (character n-grams for text without spaces) that repeat an earlier one."""
    units = text.split() if " " in text.strip() else list(text)
    grams = [tuple(units[i : i + n]) for i in range(len(units) - n + 1)]
    if not grams:
        return 0.0
    return 1 - len(set(grams)) / len(grams)


def char_entropy(text: str) -> float:
    """Shannon entropy of the character distribution, in bits."""
    counts = Counter(text)
    total = len(text)
    return -sum(c / total * math.log2(c / total) for c in counts.values()) if total else 0.0


def _summary(values: list[int], bins: int) -> dict[str, Any]:
    import numpy as np

    if not values:
        return {"count": 0}
    array = np.asarray(values)
    low, high = int(array.min()), int(array.max())
    if high - low < bins:  # few distinct integers (turns): one bin per value
        bins = np.arange(low, high + 2)
    counts, edges = np.histogram(array, bins=bins)
    return {
        "count": len(values),
        "min": int(array.min()),
        "mean": round(float(array.mean()), 2),
        "p50": float(np.percentile(array, 50)),
        "p90": float(np.percentile(array, 90)),
        "p99": float(np.percentile(array, 99)),
        "max": int(array.max()),
        "histogram": {"counts": counts.tolist(), "edges": [round(float(e), 2) for e in edges]},
    }


def stats(
    conversations: Iterable[Conversation],
    *,
    tokenizer: Any = None,
    bins: int = 20,
    annotations: str = "annotations",
) -> dict[str, Any]:
    """Statistics and quality flags of a dataset (see the module docstring)."""
    chars, turns, tokens = [], [], []
    languages: Counter = Counter()
    datasets: Counter = Counter()
    flags: dict[str, list[str]] = {"empty_think": [], "repeated_ngrams": [], "low_entropy": []}
    flag_counts: Counter = Counter()
    labels: dict[str, dict[int, Any]] = {}
    for index, conversation in enumerate(conversations):
        text = text_of(conversation)
        chars.append(len(text))
        turns.append(sum(m.role == "user" for m in conversation.messages))
        if tokenizer is not None:
            tokens.append(sum(len(tokenizer(m.content, add_special_tokens=False)["input_ids"]) for m in conversation.messages))
        languages[language(text)] += 1
        datasets[conversation.meta.get("dataset", "?")] += 1
        replies = [m.content for m in conversation.messages if m.role == "assistant"]
        found = set()
        for reply in replies:
            if THINK_EMPTY.search(reply):
                found.add("empty_think")
            if len(reply) >= MIN_NOISE_CHARS:
                if repeated_ngram_ratio(reply) > REPEATED_NGRAM_RATIO:
                    found.add("repeated_ngrams")
                if char_entropy(reply) < LOW_ENTROPY_BITS:
                    found.add("low_entropy")
        for flag in found:
            flag_counts[flag] += 1
            if len(flags[flag]) < EXAMPLES_PER_FLAG:
                flags[flag].append(where(conversation))
        for annotator, label in _annotations(conversation, annotations).items():
            labels.setdefault(str(annotator), {})[index] = label
    out: dict[str, Any] = {
        "conversations": len(chars),
        "datasets": dict(datasets),
        "characters": _summary(chars, bins),
        "user_turns": _summary(turns, bins),
        "languages": dict(languages),
        "flags": {flag: {"count": flag_counts[flag], "examples": flags[flag]} for flag in flags},
    }
    if tokenizer is not None:
        out["tokens"] = _summary(tokens, bins)
    pairs = {}
    for a, b in combinations(sorted(labels), 2):
        shared = sorted(labels[a].keys() & labels[b].keys())
        if shared:
            pairs[f"{a} vs {b}"] = {
                "items": len(shared),
                "kappa": round(cohen_kappa([labels[a][i] for i in shared], [labels[b][i] for i in shared]), 4),
            }
    if pairs:
        out["agreement"] = {"cohen_kappa": pairs, "mean_kappa": round(sum(p["kappa"] for p in pairs.values()) / len(pairs), 4)}
    return out


def write_dedup(
    conversations: Iterable[Conversation | Pair],
    output: str,
    removed: str,
    *,
    threshold: float = 0.85,
    near: bool = True,
) -> dict[str, int]:
    """Kept conversations to `output` (messages JSONL; preference pairs as prompt / chosen / rejected messages, as
    `data convert` writes them); each removed one to `removed`, with what it repeats.

    Both files appear whole when all is read (files.Replacing); a failure leaves the old ones as they were.
    The caller refuses outputs that would write over its inputs (read(..., outputs=...)).
    """
    import json

    files.refuse_overwrite((), output=output, removed=removed)
    counts = {"kept": 0, "exact": 0, "near": 0}
    kept, dropped = files.Replacing(output), files.Replacing(removed)
    try:
        for conversation, duplicate in dedup(conversations, threshold=threshold, near=near):
            if duplicate is None:
                counts["kept"] += 1
                kept.write(json.dumps(conversation.to_dict(), ensure_ascii=False) + "\n")
            else:
                counts[duplicate["kind"]] += 1
                line = {"duplicate": duplicate["kind"], "of": duplicate["of"], **conversation.to_dict()}
                dropped.write(json.dumps(line, ensure_ascii=False) + "\n")
    except BaseException:
        kept.discard()
        dropped.discard()
        raise
    kept.close()
    dropped.close()
    return counts


def plot_histograms(result: dict[str, Any], path: str | BinaryIO) -> None:
    """The length histograms of a stats() result, side by side, as an image (PNG when `path` is a file object)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [name for name in ("characters", "tokens", "user_turns") if result.get(name, {}).get("count")]
    figure, axes = plt.subplots(1, len(names), figsize=(5 * len(names), 3.5), squeeze=False)
    for axis, name in zip(axes[0], names):
        histogram = result[name]["histogram"]
        edges = histogram["edges"]
        axis.stairs(histogram["counts"], edges, fill=True)
        axis.set_title(f"{name} per conversation")
        axis.set_ylabel("conversations")
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
