"""Conversation -> input_ids + labels (-100 where not trained), from the template's message spans.

The whole rendered text is tokenized once (no special tokens added: the template writes BOS itself,
as `apply_chat_template` does), so the ids are exactly the ids of the text a model sees at inference
and segment boundaries cannot change BPE merges. A token is trained when its characters overlap a
trained span. Spans come from `Template.segments`; nothing searches the text for a response marker.

Policies (per-message `train` flags override them):
  assistant  every model turn (assistant and tool_call): content and the end-of-turn marker (default)
  last       the last model turn only (an assistant text and the tool calls right after it are one turn)
  all        every token, the prompt included (continued pre-training, plain text)

The end-of-turn / EOS token after a reply is part of its span and trained, whatever the pad token.
labels[0] is always -100 (nothing predicts the first token), which is also what packing relies on.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import multiprocessing
import os
import shutil
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from sftune.data.schema import MODEL_ROLES, Conversation
from sftune.templates import Template, TemplateError, normalize_messages

POLICIES = ("assistant", "last", "all")
IGNORE = -100
log = logging.getLogger("sftune.encode")
_CACHE_VERSION = "encode-v3"  # bumped when labels can change for the same inputs


def trained_flags(messages: list[dict[str, Any]], policy: str = "assistant") -> list[bool]:
    """Which messages are trained under `policy`, after each message's own `train` flag."""
    if policy not in POLICIES:
        raise ValueError(f"unknown masking policy {policy!r}; use one of {', '.join(POLICIES)}")
    model_turns = [i for i, m in enumerate(messages) if m["role"] in MODEL_ROLES]
    last = model_turns[-1] if model_turns else -1
    first_of_last = last  # the last turn: text and the tool calls right after it are one turn
    if last >= 0 and messages[last]["role"] == "tool_call":
        while first_of_last > 0 and messages[first_of_last - 1]["role"] == "tool_call":
            first_of_last -= 1
        if first_of_last > 0 and messages[first_of_last - 1]["role"] == "assistant":
            first_of_last -= 1
    flags = []
    for i, m in enumerate(messages):
        if m.get("train") is not None:
            flags.append(bool(m["train"]))
        elif policy == "all":
            flags.append(True)
        elif policy == "last":
            flags.append(first_of_last <= i <= last)
        else:
            flags.append(m["role"] in MODEL_ROLES)
    return flags


def _spans(template: Template, messages: list[dict], tools: list[dict] | None, policy: str
           ) -> tuple[str, list[tuple[int, int, float]]]:
    """The rendered text and its trained character spans (start, end, weight)."""
    flags = trained_flags(messages, policy)
    pieces, spans, pos = [], [], 0
    for text, index, body in template.segments(messages, tools):
        end = pos + len(text)
        if policy == "all" and index is None:
            spans.append((pos, end, 1.0))
        elif index is not None and flags[index] and (body or policy == "all"):
            weight = messages[index].get("weight")
            spans.append((pos, end, 1.0 if weight is None else float(weight)))
        pieces.append(text)
        pos = end
    return "".join(pieces), spans


def _labels(ids: list[int], offsets: list[tuple[int, int]], spans: list[tuple[int, int, float]],
            n_chars: int, weighted: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """Labels (and per-token weights) of one text: a token is trained if its characters overlap a span."""
    off = np.asarray(offsets, dtype=np.int64).reshape(-1, 2)
    return _flat_labels(np.asarray(ids, dtype=np.int64), off[:, 0], off[:, 1], np.array([len(ids)]),
                        np.array([n_chars]), [spans], weighted)


def _flat_labels(ids: np.ndarray, starts: np.ndarray, ends: np.ndarray, counts: np.ndarray, n_chars: np.ndarray,
                 spans: list[list[tuple[int, int, float]]], weighted: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """Labels (and weights) of many texts at once, from every token's character offsets.

    ids/starts/ends are flat over the texts (counts tokens each, offsets within each text); spans holds
    each text's trained character spans. A token is trained when a character of [start, max(end,
    start + 1)) lies in a span (an empty token counts its next character); its weight is the weight
    of its last character. The first token of each text is never trained: nothing predicts it.
    """
    rows = np.repeat(np.arange(len(counts)), counts)
    text_start = np.cumsum(n_chars) - n_chars
    limit = n_chars[rows]
    token_start = np.minimum(starts, limit)
    token_end = np.minimum(np.maximum(ends, token_start + 1), limit) + text_start[rows]
    token_start = token_start + text_start[rows]
    total = int(n_chars.sum())
    edges = [(int(base) + a, int(base) + b, w) for base, row in zip(text_start, spans) for a, b, w in row if b > a]
    marks = (np.bincount([a for a, _, _ in edges], minlength=total + 1)
             - np.bincount([b for _, b, _ in edges], minlength=total + 1))
    inside = np.concatenate([[0], np.cumsum(np.cumsum(marks[:-1]) > 0)])  # trained characters before each one
    trained = inside[token_end] > inside[token_start]
    trained[(np.cumsum(counts) - counts)[counts > 0]] = False
    labels = np.where(trained, ids, IGNORE)
    if not weighted:
        return labels, None
    char_weights = np.zeros(max(total, 1), dtype=np.float32)
    for a, b, weight in edges:
        char_weights[a:b] = weight
    return labels, np.where(trained, char_weights[np.maximum(token_end - 1, 0)], 0.0).astype(np.float32)


def _tokenize(tokenizer: Any, text: str) -> tuple[list[int], list[tuple[int, int]]]:
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    return enc["input_ids"], enc["offset_mapping"]


def _check_bos(ids: list[int], tokenizer: Any, template: Template) -> None:
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is not None and len(ids) > 1 and ids[0] == bos and ids[1] == bos:
        raise TemplateError(f"template {template.name!r} renders two BOS tokens ({tokenizer.bos_token!r}) at the "
                            "start; remove the BOS text from the template or from the data")


def encode(conversation: Conversation | dict | list, tokenizer: Any, template: Template, *,
           policy: str = "assistant", max_len: int | None = None) -> dict[str, list] | None:
    """input_ids and labels (and loss_weights when a message has a weight) for one conversation.

    Over `max_len`, whole exchanges are dropped from the left (the system prompt stays), then the
    prompt is cut from the left (BOS stays), then, only if the trained tokens alone are too long,
    the end. Returns None when no trained token is left: callers count and report it, never train it.
    """
    messages, tools = _messages_and_tools(conversation)
    result = _encode_messages(messages, tools, tokenizer, template, policy)
    if max_len is not None and len(result["input_ids"]) > max_len:
        result = _truncate(messages, tools, tokenizer, template, policy, max_len, result)
    if not any(label != IGNORE for label in result["labels"]):
        return None
    return result


def _messages_and_tools(conversation: Any) -> tuple[list[dict], list[dict] | None]:
    if isinstance(conversation, Conversation):
        return normalize_messages(conversation.messages), conversation.tools
    if isinstance(conversation, dict) and "messages" in conversation:
        return normalize_messages(conversation["messages"]), conversation.get("tools")
    return normalize_messages(conversation), None


def _encode_messages(messages: list[dict], tools: list[dict] | None, tokenizer: Any, template: Template,
                     policy: str) -> dict[str, list]:
    text, spans = _spans(template, messages, tools, policy)
    ids, offsets = _tokenize(tokenizer, text)
    _check_bos(ids, tokenizer, template)
    weighted = any(m.get("weight") is not None for m in messages)
    labels, weights = _labels(ids, offsets, spans, len(text), weighted)
    out = {"input_ids": list(ids), "labels": labels.tolist()}
    if weighted:
        out["loss_weights"] = weights.tolist()
    return out


def _truncate(messages: list[dict], tools: list[dict] | None, tokenizer: Any, template: Template, policy: str,
              max_len: int, result: dict[str, list]) -> dict[str, list]:
    # 1. Drop the oldest exchanges (a user turn and what follows it up to the next user turn), keeping
    #    the system prompt and at least the last exchange.
    head = 1 if messages and messages[0]["role"] == "system" else 0
    users = [i for i in range(head, len(messages)) if messages[i]["role"] == "user"]
    for cut in users[1:]:
        if len(result["input_ids"]) <= max_len:
            break
        kept = messages[:head] + messages[cut:]
        if not any(trained_flags(kept, policy)):
            break
        result = _encode_messages(kept, tools, tokenizer, template, policy)
    if len(result["input_ids"]) <= max_len:
        return result
    # 2. Cut the prompt from the left (keeping BOS), then 3. the end.
    ids, labels = result["input_ids"], result["labels"]
    weights = result.get("loss_weights")
    keep_head = 1 if ids and ids[0] == getattr(tokenizer, "bos_token_id", None) else 0
    first_trained = next((k for k, label in enumerate(labels) if label != IGNORE), len(labels))
    cut = max(0, min(len(ids) - max_len, first_trained - 1 - keep_head))  # keep one prompt token before it
    order = list(range(keep_head)) + list(range(keep_head + cut, len(ids)))
    order = order[:max_len]
    out = {"input_ids": [ids[k] for k in order], "labels": [labels[k] for k in order]}
    out["labels"][0] = IGNORE
    if weights is not None:
        out["loss_weights"] = [weights[k] for k in order]
    return out


# --- dataset level ------------------------------------------------------------------------------------


def _tokenizer_fingerprint(tokenizer: Any) -> str:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise TypeError("encode_dataset needs a fast tokenizer (a `tokenizers` backend); "
                        "load it with AutoTokenizer.from_pretrained(..., use_fast=True)")
    digest = hashlib.sha256(backend.to_str().encode())
    digest.update(json.dumps([tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token]).encode())
    return digest.hexdigest()


def _template_fingerprint(template: Template) -> str:
    return json.dumps([template.name, template.spec, template.jinja, template.bos, template.eos,
                       template.special_tokens], sort_keys=True, ensure_ascii=False)


def _record_key(conv: Conversation | dict) -> str:
    """Everything of a record that can change its encoding or its report line, as unambiguous text.

    Cheaper than JSON for the common case (a Conversation without tools or meta); content is
    length-prefixed so no text inside a message can imitate a field boundary.
    """
    if not isinstance(conv, Conversation):
        return json.dumps(conv, sort_keys=True, ensure_ascii=False)
    extra = json.dumps([conv.tools, conv.meta], sort_keys=True, ensure_ascii=False) if conv.tools or conv.meta else ""
    return "\x1e".join([extra, *(f"{m.role}|{m.train}|{m.weight}|{len(m.content)}|{m.content}"
                                 for m in conv.messages)])


def _fingerprint(records: list, template: Template, tokenizer: Any, policy: str, max_len: int | None) -> str:
    digest = hashlib.sha256()
    for part in (_CACHE_VERSION, _template_fingerprint(template), _tokenizer_fingerprint(tokenizer), policy,
                 str(max_len)):
        digest.update(part.encode() + b"\0")
    digest.update("\x1d".join(map(_record_key, records)).encode("utf-8", "surrogatepass"))
    return digest.hexdigest()[:24]


def _cache_root(cache_dir: str | os.PathLike | None) -> Path:
    if cache_dir is not None:
        return Path(cache_dir)
    from sftune.models import sftune_home

    return sftune_home() / "cache" / "encoded"


def _where(conversation: Conversation | dict, k: int) -> str:
    meta = conversation.meta if isinstance(conversation, Conversation) else (conversation.get("meta") or {})
    source = meta.get("source") or meta.get("file")
    line = meta.get("line") or meta.get("record")
    if source:
        return f"{source}:{line}" if line is not None else str(source)
    return f"record {k}"


def _plain_backend(tokenizer: Any) -> Any:
    """The `tokenizers` backend, without padding or truncation a previous call may have left on it."""
    backend = tokenizer.backend_tokenizer
    if backend.padding is None and backend.truncation is None:
        return backend
    from tokenizers import Tokenizer

    backend = Tokenizer.from_str(backend.to_str())
    backend.no_padding()
    backend.no_truncation()
    return backend


def encode_dataset(conversations: Iterable[Conversation | dict], tokenizer: Any, template: Template, *,
                   policy: str = "assistant", max_len: int | None = None, batch_size: int = 1000,
                   cache_dir: str | os.PathLike | None = None, use_cache: bool = True, progress: bool = True,
                   workers: int | None = None) -> tuple[Any, dict[str, Any]]:
    """Encode many conversations: (datasets.Dataset, report).

    Columns: input_ids, labels, and loss_weights when any message has a weight. Batches of
    conversations are rendered, tokenized (byte-level BPE tokenizers through a word cache, see
    `sftune.tokencache`) and labelled with numpy, on `workers` processes (default: one per CPU core,
    up to 4, for large inputs). The result is cached on disk under a fingerprint of the data,
    template, tokenizer, policy and max_len, so a re-run memory-maps it instead. The report counts
    total, encoded, truncated and skipped records (with reasons and places) and says how the text was
    tokenized.
    """
    import datasets

    if policy not in POLICIES:
        raise ValueError(f"unknown masking policy {policy!r}; use one of {', '.join(POLICIES)}")
    records = list(conversations)
    fingerprint = _fingerprint(records, template, tokenizer, policy, max_len)
    folder = _cache_root(cache_dir) / fingerprint
    if use_cache and (folder / "report.json").exists():
        report = json.loads((folder / "report.json").read_text())
        report["cache"] = "hit"
        return datasets.Dataset.from_file(str(folder / _DATA_FILE)), report

    weighted = any(m.weight is not None if not isinstance(m, dict) else m.get("weight") is not None
                   for conv in records for m in (conv.messages if isinstance(conv, Conversation) else conv["messages"]))
    rows = _Rows(records, weighted, {"total": len(records), "encoded": 0, "truncated": 0, "skipped": 0,
                                     "skipped_by_reason": {}, "skipped_records": [], "fingerprint": fingerprint})
    bos_id = getattr(tokenizer, "bos_token_id", None)
    nothing_left = "no token left to train" + (f" within max_len={max_len}" if max_len else "")
    job = {"records": records, "template": template, "policy": policy, "weighted": weighted,
           "backend": _plain_backend(tokenizer)}
    how = "nothing to tokenize"
    with _batch_results(job, batch_size, _workers(workers, len(records), batch_size)) as results:
        bar = _progress(progress, len(records))
        for done, ks, errors, ids, labels, weights, counts, how in results:
            for k, err in errors:
                rows.skip(k, "render_error", err)
            bounds = np.concatenate([[0], np.cumsum(counts)])
            padded = np.append(ids, [-1, -1])  # every row has a first and a second token to look at
            two_bos = ((counts > 1) & (padded[bounds[:-1]] == bos_id) & (padded[bounds[:-1] + 1] == bos_id)
                       if bos_id is not None else np.zeros(len(ks), dtype=bool))
            too_long = counts > max_len if max_len is not None else np.zeros(len(ks), dtype=bool)
            trained = np.concatenate([[0], np.cumsum(labels != IGNORE)])[bounds]
            unusual = np.flatnonzero(two_bos | too_long | (trained[1:] == trained[:-1])).tolist()
            row = 0  # rows are kept in order: runs of ordinary rows as slices, the unusual ones one by one
            for special in unusual + [len(ks)]:
                lo, hi = bounds[row], bounds[special]
                rows.keep(ids[lo:hi], labels[lo:hi], weights[lo:hi] if weighted else None, counts[row:special])
                row = special + 1
                if special == len(ks):
                    break
                k = ks[special]
                if two_bos[special]:
                    rows.skip(k, "two_bos", f"template {template.name!r} renders two BOS tokens at the start")
                elif not too_long[special]:
                    rows.skip(k, "no_trained_token", nothing_left)
                else:
                    messages, tools = _messages_and_tools(records[k])
                    result = _truncate(messages, tools, tokenizer, template, policy, max_len,
                                       _encode_messages(messages, tools, tokenizer, template, policy))
                    rows.report["truncated"] += 1
                    rows.report.setdefault("truncated_records", []).append(_where(records[k], k))
                    if all(label == IGNORE for label in result["labels"]):
                        rows.skip(k, "no_trained_token", nothing_left)
                    else:
                        rows.keep_one(result)
            bar(done)
        bar(None)

    table = rows.table()
    report = rows.report
    report["encoded"] = len(rows.lengths)
    report["tokens"] = int(sum(rows.lengths))
    report["trained_tokens"] = int(np.count_nonzero(table.column("labels").combine_chunks().flatten().to_numpy()
                                                    != IGNORE))
    report["cache"] = "miss"
    report["tokenizer"] = how
    if not use_cache:
        return datasets.Dataset(table), report
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.with_name(folder.name + f".tmp{os.getpid()}")
    tmp.mkdir(exist_ok=True)
    _write_arrow(table, tmp / _DATA_FILE)
    (tmp / "report.json").write_text(json.dumps({k: v for k, v in report.items() if k != "cache"},
                                                ensure_ascii=False))
    if not folder.exists():
        tmp.rename(folder)
    else:
        shutil.rmtree(tmp)
    return datasets.Dataset.from_file(str(folder / _DATA_FILE)), report


def _render_batch(records: list, ks: range, template: Template, policy: str
                  ) -> tuple[list[tuple], list[tuple[int, Exception]]]:
    """(k, messages, tools, text, spans) for each record of a batch that renders, and the errors of the rest."""
    items, errors = [], []
    for k in ks:
        try:
            messages, tools = _messages_and_tools(records[k])
            text, spans = _spans(template, messages, tools, policy)
        except (TemplateError, ValueError) as err:
            errors.append((k, err))
            continue
        items.append((k, messages, tools, text, spans))
    return items, errors


MIN_RECORDS_PER_WORKER = 5000
MAX_CHARS_AT_ONCE = 4_000_000
_JOB: dict[str, Any] = {}  # what a batch needs, set before worker processes fork so they share it


def _workers(requested: int | None, n_records: int, batch_size: int) -> int:
    if requested is not None:
        return max(1, requested)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(cores, 4, n_records // MIN_RECORDS_PER_WORKER, -(-n_records // batch_size)))


@contextlib.contextmanager
def _batch_results(job: dict[str, Any], batch_size: int, workers: int):
    """An iterator of `_encode_batch` results in record order, computed here or on forked workers."""
    n = len(job["records"])
    bounds = [(lo, min(lo + batch_size, n)) for lo in range(0, n, batch_size)]
    _JOB.clear()
    _JOB.update(job)
    try:
        if workers > 1 and "fork" in multiprocessing.get_all_start_methods():
            with multiprocessing.get_context("fork").Pool(workers, initializer=_single_threaded_tokenizer) as pool:
                yield pool.imap(_encode_batch, bounds)
        else:
            yield map(_encode_batch, bounds)
    finally:
        _JOB.clear()


def _single_threaded_tokenizer() -> None:
    """In a worker process: one core each, so the tokenizer's own thread pool stays off (and silent)."""
    os.environ["TOKENIZERS_PARALLELISM"] = "false"


def _encode_batch(bounds: tuple[int, int]) -> tuple:
    """Records lo..hi-1 of the job: (hi, rendered record indices, render errors, ids, labels, weights,
    tokens per record, how the text was tokenized)."""
    lo, hi = bounds
    job = _JOB
    if "tokenize" not in job:
        job["tokenize"], job["describe"] = _batch_tokenizer(job["backend"])
    items, errors = _render_batch(job["records"], range(lo, hi), job["template"], job["policy"])
    n_chars = np.fromiter((len(item[3]) for item in items), dtype=np.int64, count=len(items))
    parts = []  # long conversations: a few million characters at a time keep the numpy arrays small
    cuts = np.searchsorted(np.cumsum(n_chars), np.arange(1, 1 + int(n_chars.sum()) // MAX_CHARS_AT_ONCE)
                           * MAX_CHARS_AT_ONCE)
    for a, b in zip([0, *cuts.tolist()], [*cuts.tolist(), len(items)]):
        if b > a:
            ids, starts, ends, counts = job["tokenize"]([item[3] for item in items[a:b]])
            labels, weights = _flat_labels(ids, starts, ends, counts, n_chars[a:b], [item[4] for item in items[a:b]],
                                           job["weighted"])
            parts.append((ids.astype(np.int32), labels.astype(np.int32), weights, counts))
    if not parts:
        parts.append((np.zeros(0, np.int32), np.zeros(0, np.int32), np.zeros(0, np.float32), np.zeros(0, np.int64)))
    ids, labels, weights, counts = (np.concatenate(column) if column[0] is not None else None
                                    for column in zip(*parts))
    return (hi, [item[0] for item in items], [(k, str(err)) for k, err in errors], ids, labels, weights, counts,
            job["describe"]())


_DATA_FILE = "data.arrow"


class _Rows:
    """The rows `encode_dataset` keeps (slices of flat arrays, in record order) and its report."""

    def __init__(self, records: list, weighted: bool, report: dict[str, Any]):
        self.records, self.weighted, self.report = records, weighted, report
        self.columns: dict[str, list[np.ndarray]] = {"input_ids": [], "labels": [], "loss_weights": []}
        self.lengths: list[int] = []

    def keep(self, ids: np.ndarray, labels: np.ndarray, weights: np.ndarray | None, counts: np.ndarray) -> None:
        """Rows given as flat arrays and the token count of each."""
        if not len(counts):
            return
        self.columns["input_ids"].append(ids)
        self.columns["labels"].append(labels)
        if self.weighted:
            self.columns["loss_weights"].append(weights)
        self.lengths.extend(counts.tolist())

    def keep_one(self, result: dict[str, list]) -> None:
        """A row `encode` built (input_ids, labels and maybe loss_weights lists)."""
        n = len(result["input_ids"])
        weights = result.get("loss_weights", np.zeros(n)) if self.weighted else None
        self.keep(np.asarray(result["input_ids"], dtype=np.int32), np.asarray(result["labels"], dtype=np.int32),
                  None if weights is None else np.asarray(weights, dtype=np.float32), np.array([n]))

    def skip(self, k: int, reason: str, detail: str) -> None:
        report = self.report
        report["skipped"] += 1
        report["skipped_by_reason"][reason] = report["skipped_by_reason"].get(reason, 0) + 1
        if len(report["skipped_records"]) < 100:
            report["skipped_records"].append({"where": _where(self.records[k], k), "reason": reason,
                                              "detail": detail})

    def table(self) -> Any:
        """The rows as an Arrow table of list columns, built from the flat arrays without a Python loop."""
        import pyarrow as pa

        offsets = pa.array(np.concatenate([[0], np.cumsum(self.lengths, dtype=np.int64)]).astype(np.int32))

        def list_column(parts: list[np.ndarray], dtype: Any) -> pa.Array:
            values = np.concatenate(parts).astype(dtype, copy=False) if parts else np.zeros(0, dtype=dtype)
            return pa.ListArray.from_arrays(offsets, pa.array(values))

        table = {"input_ids": list_column(self.columns["input_ids"], np.int32),
                 "labels": list_column(self.columns["labels"], np.int32)}
        if self.weighted:
            table["loss_weights"] = list_column(self.columns["loss_weights"], np.float32)
        return pa.table(table)


def _write_arrow(table: Any, path: Path) -> None:
    """An Arrow stream file, the format `datasets.Dataset.from_file` memory-maps."""
    import pyarrow as pa

    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table, max_chunksize=100_000)


def _batch_tokenizer(backend: Any) -> tuple[Any, Any]:
    """A function tokenizing a batch of texts -> (ids, starts, ends, counts), and one describing how it went.

    Byte-level BPE tokenizers go through `PieceCache` (each distinct word tokenized once); the first
    batch is also tokenized whole and compared, and any difference switches back to whole texts for
    good (with a warning). Other tokenizers tokenize whole texts.
    """
    from sftune.tokencache import PieceCache, tokenize_whole, why_not

    reason = why_not(backend)
    if reason is not None:
        return (lambda texts: tokenize_whole(backend, texts)), (lambda: f"whole texts ({reason})")
    cache = PieceCache(backend)
    state = {"checked": False, "mismatch": None}

    def tokenize(texts: list[str]) -> tuple[np.ndarray, ...]:
        if state["mismatch"] is not None:
            return tokenize_whole(backend, texts)
        out = cache.encode(texts)
        if not state["checked"]:
            state["checked"] = True
            sample = texts[:200]
            reference = tokenize_whole(backend, sample)
            n = int(out[3][:len(sample)].sum())
            if not all(np.array_equal(a[:n] if k < 3 else a[:len(sample)], b)
                       for k, (a, b) in enumerate(zip(out, reference))):
                state["mismatch"] = next((t for t in sample if not np.array_equal(
                    cache.encode([t])[0], tokenize_whole(backend, [t])[0])), sample[0])
                log.warning("the word cache gave other ids than the tokenizer for %r; tokenizing whole texts "
                            "instead (slower, same result). Please report this.", state["mismatch"][:200])
                return tokenize_whole(backend, texts)
        return out

    def describe() -> str:
        if state["mismatch"] is not None:
            return "whole texts (the word cache disagreed with the tokenizer on the first batch)"
        looked_up = cache.hits + cache.misses
        return (f"word cache ({cache.size:,} distinct pieces, "
                f"{cache.hits / max(looked_up, 1):.1%} of {looked_up:,} found)")

    return tokenize, describe


def _progress(enabled: bool, total: int):
    """A rich progress bar as an update(done) function; update(None) closes it."""
    if not enabled or total < 5000:
        return lambda done: None
    from rich.progress import Progress

    bar = Progress(transient=True)
    task = bar.add_task("encoding", total=total)
    bar.start()

    def update(done: int | None) -> None:
        if done is None:
            bar.stop()
        else:
            bar.update(task, completed=done)

    return update


def explain(result: dict[str, list], tokenizer: Any) -> list[tuple[str, bool]]:
    """Each token's text and whether it is trained: what `sftune data inspect` shows."""
    return [(tokenizer.decode([token]), label != IGNORE)
            for token, label in zip(result["input_ids"], result["labels"])]
