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
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from sftune.data.schema import MODEL_ROLES, Conversation
from sftune.templates import Template, TemplateError, normalize_messages

POLICIES = ("assistant", "last", "all")
IGNORE = -100
_CACHE_VERSION = "encode-v1"


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


def encode_dataset(conversations: Iterable[Conversation | dict], tokenizer: Any, template: Template, *,
                   policy: str = "assistant", max_len: int | None = None, batch_size: int = 1000,
                   cache_dir: str | os.PathLike | None = None, use_cache: bool = True, progress: bool = True
                   ) -> tuple[Any, dict[str, Any]]:
    """Encode many conversations: (datasets.Dataset, report).

    Columns: input_ids, labels, and loss_weights when any message has a weight. Rendering is per
    conversation, tokenization is batched on the fast tokenizer. The result is cached on disk under a
    fingerprint of the data, template, tokenizer, policy and max_len, so a re-run loads it instead.
    The report counts total, encoded, truncated and skipped records (with reasons and places).
    """
    import datasets
    import pyarrow as pa

    if policy not in POLICIES:
        raise ValueError(f"unknown masking policy {policy!r}; use one of {', '.join(POLICIES)}")
    records = list(conversations)
    digest = hashlib.sha256()
    for part in (_CACHE_VERSION, _template_fingerprint(template), _tokenizer_fingerprint(tokenizer), policy,
                 str(max_len)):
        digest.update(part.encode() + b"\0")
    for conv in records:
        digest.update((conv.to_json() if isinstance(conv, Conversation) else json.dumps(conv, sort_keys=True,
                                                                                         ensure_ascii=False)).encode())
        digest.update(b"\n")
    fingerprint = digest.hexdigest()[:24]
    folder = _cache_root(cache_dir) / fingerprint
    if use_cache and (folder / "report.json").exists():
        report = json.loads((folder / "report.json").read_text())
        report["cache"] = "hit"
        return datasets.load_from_disk(str(folder)), report

    weighted = any(m.weight is not None if not isinstance(m, dict) else m.get("weight") is not None
                   for conv in records for m in (conv.messages if isinstance(conv, Conversation) else conv["messages"]))
    backend = tokenizer.backend_tokenizer
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

    bar = _progress(progress, len(records))
    for lo in range(0, len(records), batch_size):
        batch = []
        for k in range(lo, min(lo + batch_size, len(records))):
            try:
                messages, tools = _messages_and_tools(records[k])
                text, spans = _spans(template, messages, tools, policy)
            except (TemplateError, ValueError) as err:
                skip(k, "render_error", str(err))
                continue
            batch.append((k, messages, tools, text, spans))
        encodings = backend.encode_batch([item[3] for item in batch], add_special_tokens=False)
        flat_ids, flat_labels, flat_weights, counts = _batch_labels(batch, encodings, weighted)
        ends = np.cumsum(counts)
        for (k, messages, tools, text, spans), enc, end, count in zip(batch, encodings, ends, counts):
            ids_arr, labels = flat_ids[end - count:end], flat_labels[end - count:end]
            w = flat_weights[end - count:end] if weighted else None
            if count > 1 and ids_arr[0] == ids_arr[1] == bos_id:
                skip(k, "two_bos", f"template {template.name!r} renders two BOS tokens at the start")
                continue
            if max_len is not None and count > max_len:
                result = _truncate(messages, tools, tokenizer, template, policy, max_len,
                                   _encode_messages(messages, tools, tokenizer, template, policy))
                report["truncated"] += 1
                labels = np.asarray(result["labels"], dtype=np.int32)
                ids_arr = np.asarray(result["input_ids"], dtype=np.int32)
                w = np.asarray(result.get("loss_weights", np.zeros(len(ids_arr))), dtype=np.float32)
            if not (labels != IGNORE).any():
                skip(k, "no_trained_token", "no token left to train" + (f" within max_len={max_len}"
                                                                         if max_len else ""))
                continue
            columns["input_ids"].append(ids_arr)
            columns["labels"].append(labels)
            if weighted:
                columns["loss_weights"].append(w)
            lengths.append(len(ids_arr))
        bar(min(lo + batch_size, len(records)))
    bar(None)
    report["encoded"] = len(lengths)
    report["tokens"] = int(sum(lengths))
    report["trained_tokens"] = int(sum(int((x != IGNORE).sum()) for x in columns["labels"]))

    offsets = pa.array(np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)]).astype(np.int32))

    def list_column(parts: list[np.ndarray], dtype) -> pa.Array:
        values = np.concatenate(parts) if parts else np.zeros(0, dtype=dtype)
        return pa.ListArray.from_arrays(offsets, pa.array(values))

    table = {"input_ids": list_column(columns["input_ids"], np.int32),
             "labels": list_column(columns["labels"], np.int32)}
    if weighted:
        table["loss_weights"] = list_column(columns["loss_weights"], np.float32)
    dataset = datasets.Dataset(pa.table(table))
    if use_cache:
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = folder.with_name(folder.name + f".tmp{os.getpid()}")
        dataset.save_to_disk(str(tmp))
        (tmp / "report.json").write_text(json.dumps(report, ensure_ascii=False))
        if not folder.exists():
            tmp.rename(folder)
        dataset = datasets.load_from_disk(str(folder))
    report["cache"] = "miss"
    return dataset, report


def _batch_labels(batch: list[tuple], encodings: list, weighted: bool
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray]:
    """`_labels` for a whole batch at once: flat ids, labels, weights and the token count of each."""
    sizes = np.fromiter((len(item[3]) + 1 for item in batch), dtype=np.int64, count=len(batch))
    base = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    marks = np.zeros(int(sizes.sum()) + 1, dtype=np.int32)
    starts = [base[i] + span[0] for i, item in enumerate(batch) for span in item[4]]
    stops = [base[i] + span[1] for i, item in enumerate(batch) for span in item[4]]
    np.add.at(marks, np.asarray(starts, dtype=np.int64), 1)
    np.add.at(marks, np.asarray(stops, dtype=np.int64), -1)
    inside = np.concatenate([[0], np.cumsum(np.cumsum(marks[:-1]) > 0)])
    counts = np.fromiter((len(enc.ids) for enc in encodings), dtype=np.int64, count=len(encodings))
    ids = np.fromiter((i for enc in encodings for i in enc.ids), dtype=np.int32, count=int(counts.sum()))
    offsets = np.asarray([o for enc in encodings for o in enc.offsets], dtype=np.int64).reshape(-1, 2)
    token_base = np.repeat(base, counts)
    limit = np.repeat(base + sizes - 1, counts)
    lo = np.minimum(offsets[:, 0] + token_base, limit)
    hi = np.minimum(np.maximum(offsets[:, 1] + token_base, lo + 1), limit)
    trained = (inside[hi] - inside[lo]) > 0
    labels = np.where(trained, ids, IGNORE).astype(np.int32)
    firsts = np.cumsum(counts) - counts
    labels[firsts[counts > 0]] = IGNORE
    weights = None
    if weighted:
        char_weights = np.zeros(len(marks), dtype=np.float32)
        for i, item in enumerate(batch):
            for start, end, weight in item[4]:
                char_weights[base[i] + start:base[i] + end] = weight
        weights = np.where(trained, char_weights[np.maximum(hi - 1, lo)], 0.0).astype(np.float32)
    return ids, labels, weights, counts


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
