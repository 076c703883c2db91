"""Conversation -> input_ids + labels (-100 where not trained), from the template's message spans.

The whole rendered text is tokenized once (no special tokens added: the template writes BOS itself,
as `apply_chat_template` does), so the ids are exactly the ids of the text a model sees at inference
and segment boundaries cannot change BPE merges. A token is trained when its characters overlap a
trained span. Spans come from `Template.segments`; nothing searches the text for a response marker.

Policies (per-message `train` flags override them):
  assistant  every model turn (assistant and tool_call): content and the end-of-turn marker (default)
  last       the last model turn only
  all        every token, the prompt included (continued pre-training, plain text)

The end-of-turn / EOS token after a reply is part of its span and trained, whatever the pad token.
labels[0] is always -100 (nothing predicts the first token), which is also what packing relies on.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from itertools import chain
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from sftune.data.schema import MODEL_ROLES, Conversation
from sftune.templates import Template, TemplateError, normalize_messages

POLICIES = ("assistant", "last", "all")
IGNORE = -100
_CACHE_VERSION = "encode-v2"


def trained_flags(messages: list[dict[str, Any]], policy: str = "assistant") -> list[bool]:
    """Which messages are trained under `policy`, after each message's own `train` flag."""
    if policy not in POLICIES:
        raise ValueError(f"unknown masking policy {policy!r}; use one of {', '.join(POLICIES)}")
    model_turns = [i for i, m in enumerate(messages) if m["role"] in MODEL_ROLES]
    last = model_turns[-1] if model_turns else -1
    flags = []
    for i, m in enumerate(messages):
        if m.get("train") is not None:
            flags.append(bool(m["train"]))
        elif policy == "all":
            flags.append(True)
        elif policy == "last":
            flags.append(i == last)
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
    """Labels (and per-token weights) from character spans: a token is trained if it overlaps one."""
    marks = np.zeros(n_chars + 1, dtype=np.int32)
    weights = np.zeros(n_chars, dtype=np.float32) if weighted else None
    for start, end, weight in spans:
        marks[start] += 1
        marks[end] -= 1
        if weighted:
            weights[start:end] = weight
    # inside[c] = number of trained characters before character c
    inside = np.concatenate([[0], np.cumsum(np.cumsum(marks[:-1]) > 0)])
    off = np.asarray(offsets, dtype=np.int64).reshape(-1, 2)
    starts = off[:, 0].clip(max=n_chars)
    ends = np.maximum(off[:, 1], starts + 1).clip(max=n_chars)
    trained = (inside[ends] - inside[starts]) > 0
    labels = np.where(trained, np.asarray(ids, dtype=np.int64), IGNORE)
    if len(labels):
        labels[0] = IGNORE
    token_weights = None
    if weighted:
        token_weights = np.where(trained, weights[np.maximum(ends - 1, 0)], 0.0).astype(np.float32)
    return labels, token_weights


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
                   cache_dir: str | os.PathLike | None = None, use_cache: bool = True, progress: bool = True
                   ) -> tuple[Any, dict[str, Any]]:
    """Encode many conversations: (datasets.Dataset, report).

    Columns: input_ids, labels, and loss_weights when any message has a weight. Rendering is per
    conversation, tokenization is batched on the fast tokenizer (its thread pool uses every core), and
    labels come from a few token lookups at span edges instead of every token's offsets. The result is
    cached on disk under a fingerprint of the data, template, tokenizer, policy and max_len, so a re-run
    memory-maps it instead. The report counts total, encoded, truncated and skipped records (with
    reasons and places).
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
    backend = _plain_backend(tokenizer)
    bos_id = getattr(tokenizer, "bos_token_id", None)
    columns: dict[str, list[np.ndarray]] = {"input_ids": [], "labels": [], "loss_weights": []}
    lengths: list[int] = []
    report: dict[str, Any] = {"total": len(records), "encoded": 0, "truncated": 0, "skipped": 0,
                              "skipped_by_reason": {}, "skipped_records": [], "fingerprint": fingerprint}

    def skip(k: int, reason: str, detail: str) -> None:
        report["skipped"] += 1
        report["skipped_by_reason"][reason] = report["skipped_by_reason"].get(reason, 0) + 1
        if len(report["skipped_records"]) < 100:
            report["skipped_records"].append({"where": _where(records[k], k), "reason": reason, "detail": detail})

    nothing_left = "no token left to train" + (f" within max_len={max_len}" if max_len else "")
    bar = _progress(progress, len(records))
    for done, items, errors, encodings in _tokenized_batches(records, template, policy, backend, batch_size):
        for k, err in errors:
            skip(k, "render_error", str(err))
        ids, labels, weights, counts = _batch_labels(items, encodings, weighted)
        bounds = np.concatenate([[0], np.cumsum(counts)])
        padded = np.append(ids, [-1, -1])  # every row has a first and a second token to look at
        two_bos = ((counts > 1) & (padded[bounds[:-1]] == bos_id) & (padded[bounds[:-1] + 1] == bos_id)
                   if bos_id is not None else np.zeros(len(items), dtype=bool))
        too_long = counts > max_len if max_len is not None else np.zeros(len(items), dtype=bool)
        trained = np.concatenate([[0], np.cumsum(labels != IGNORE)])[bounds]
        unusual = np.flatnonzero(two_bos | too_long | (trained[1:] == trained[:-1])).tolist()

        row = 0  # rows are kept in order: runs of ordinary rows as slices, the unusual ones one by one
        for special in unusual + [len(items)]:
            if special > row:  # rows row..special-1 are kept as they are: one slice of the flat arrays
                lo, hi = bounds[row], bounds[special]
                columns["input_ids"].append(ids[lo:hi])
                columns["labels"].append(labels[lo:hi])
                if weighted:
                    columns["loss_weights"].append(weights[lo:hi])
                lengths.extend(counts[row:special].tolist())
            row = special + 1
            if special == len(items):
                break
            k, messages, tools = items[special][:3]
            if two_bos[special]:
                skip(k, "two_bos", f"template {template.name!r} renders two BOS tokens at the start")
                continue
            if not too_long[special]:
                skip(k, "no_trained_token", nothing_left)
                continue
            result = _truncate(messages, tools, tokenizer, template, policy, max_len,
                               _encode_messages(messages, tools, tokenizer, template, policy))
            report["truncated"] += 1
            if all(label == IGNORE for label in result["labels"]):
                skip(k, "no_trained_token", nothing_left)
                continue
            columns["input_ids"].append(np.asarray(result["input_ids"], dtype=np.int32))
            columns["labels"].append(np.asarray(result["labels"], dtype=np.int32))
            if weighted:
                columns["loss_weights"].append(np.asarray(result.get("loss_weights", np.zeros(len(result["labels"]))),
                                                          dtype=np.float32))
            lengths.append(len(result["input_ids"]))
        bar(done)
    bar(None)

    table = _table(columns, lengths, weighted)
    report["encoded"] = len(lengths)
    report["tokens"] = int(sum(lengths))
    report["trained_tokens"] = int(np.count_nonzero(table.column("labels").combine_chunks().flatten().to_numpy()
                                                    != IGNORE))
    report["cache"] = "miss"
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


def _tokenized_batches(records: list, template: Template, policy: str, backend: Any, batch_size: int):
    """Yield (records done, items, render errors, encodings) per batch.

    The tokenizer encodes a batch on its own threads, without the GIL, while this thread renders the
    next batch and the caller labels the previous one: the Python work hides behind the tokenizer's.
    """
    from concurrent.futures import ThreadPoolExecutor

    def encode(items: list[tuple]) -> list:
        return backend.encode_batch([item[3] for item in items], add_special_tokens=False)

    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = None
        for lo in range(0, len(records), batch_size):
            items, errors = _render_batch(records, range(lo, min(lo + batch_size, len(records))), template, policy)
            job = pool.submit(encode, items)
            if pending is not None:
                yield lo, pending[0], pending[1], pending[2].result()
            pending = (items, errors, job)
        if pending is not None:
            yield len(records), pending[0], pending[1], pending[2].result()


_DATA_FILE = "data.arrow"


def _table(columns: dict[str, list[np.ndarray]], lengths: list[int], weighted: bool) -> Any:
    """The encoded rows as an Arrow table of list columns, built from flat arrays without a Python loop."""
    import pyarrow as pa

    offsets = pa.array(np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)]).astype(np.int32))

    def list_column(parts: list[np.ndarray], dtype: Any) -> pa.Array:
        values = np.concatenate(parts).astype(dtype, copy=False) if parts else np.zeros(0, dtype=dtype)
        return pa.ListArray.from_arrays(offsets, pa.array(values))

    table = {"input_ids": list_column(columns["input_ids"], np.int32),
             "labels": list_column(columns["labels"], np.int32)}
    if weighted:
        table["loss_weights"] = list_column(columns["loss_weights"], np.float32)
    return pa.table(table)


def _write_arrow(table: Any, path: Path) -> None:
    """An Arrow stream file, the format `datasets.Dataset.from_file` memory-maps."""
    import pyarrow as pa

    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table, max_chunksize=100_000)


def _batch_labels(batch: list[tuple], encodings: list, weighted: bool
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray]:
    """Flat ids, labels and weights of a batch, and the token count of each conversation.

    Trained token ranges come from `_trained_ranges` (lookups at span edges); a conversation it cannot
    settle, or one with loss weights, goes through `_labels` on every token's offsets instead.
    """
    id_lists = [enc.ids for enc in encodings]
    counts = np.fromiter(map(len, id_lists), dtype=np.int64, count=len(id_lists))
    firsts = np.cumsum(counts) - counts
    ids = np.fromiter(chain.from_iterable(id_lists), dtype=np.int32, count=int(counts.sum()))
    weights = np.zeros(len(ids), dtype=np.float32) if weighted else None
    edges: list[int] = []  # +1 at a trained range's first token, -1 after its last, in flat positions
    exact: list[tuple[int, np.ndarray, np.ndarray | None]] = []
    for item, enc, first in zip(batch, encodings, firsts.tolist()):
        text, spans = item[3], item[4]
        ranges = None if weighted else _trained_ranges(enc, spans, len(text))
        if ranges is None:
            labels, token_weights = _labels(enc.ids, enc.offsets, spans, len(text), weighted)
            exact.append((first, labels, token_weights))
            continue
        for start, stop in ranges:
            edges += (first + start, first + stop)
    marks = (np.bincount(edges[0::2], minlength=len(ids) + 1)
             - np.bincount(edges[1::2], minlength=len(ids) + 1))  # ranges may share a token
    labels = np.where(np.cumsum(marks[:-1]) > 0, ids, IGNORE).astype(np.int32)
    for first, row_labels, row_weights in exact:
        labels[first:first + len(row_labels)] = row_labels
        if weighted:
            weights[first:first + len(row_labels)] = row_weights
    labels[firsts[counts > 0]] = IGNORE
    return ids, labels, weights, counts


def _trained_ranges(encoding: Any, spans: list[tuple[int, int, float]], n_chars: int
                    ) -> list[tuple[int, int]] | None:
    """Token ranges [start, stop) that overlap trained character spans, found at the span edges only.

    Gives exactly the tokens `_labels` marks from every token's offsets (offsets run in text order),
    with a few lookups per span instead of a Python object per token. Returns None where an edge needs
    a token's full offsets to settle (no token covers the edge character, an empty token sits there, or
    tokens overlap across it); the caller then uses `_labels`.
    """
    merged: list[list[int]] = []
    for start, end, _ in spans:
        if merged and merged[-1][1] == start:
            merged[-1][1] = end
        elif start < end:
            merged.append([start, end])
    n_tokens = len(encoding)
    ranges = []
    for start, end in merged:
        first = encoding.char_to_token(start)
        if first is None or (first > 0 and encoding.token_to_chars(first - 1) == (start, start)):
            return None
        if end >= n_chars:
            if encoding.token_to_chars(n_tokens - 1)[0] >= n_chars:
                return None
            stop = n_tokens
        else:
            stop = encoding.char_to_token(end)  # the first token at or across the span's end
            if stop is None:
                return None
            if encoding.token_to_chars(stop)[0] < end:  # it starts inside the span: it is trained
                stop += 1
                if stop < n_tokens and encoding.token_to_chars(stop)[0] < end:
                    return None
            elif encoding.token_to_chars(stop - 1) == (end, end):
                return None
        if first < stop:
            ranges.append((first, stop))
    return ranges


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
