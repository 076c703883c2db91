"""Conversations out, as JSONL in one of three shapes: messages (the schema), alpaca, sharegpt.

`messages` keeps everything (train flags, weights, tools, meta). `alpaca` and `sharegpt` are the
shapes other tools read (LLaMA-Factory's defaults); a conversation they cannot hold without losing
meaning (tool turns in alpaca, per-message train flags or weights, pre-training text) raises a
DataError instead of being written half.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from json.encoder import encode_basestring
from typing import Any

from sftune.data.errors import DataError
from sftune.data.schema import MODEL_ROLES, Conversation
from sftune.data.validate import DEFAULT_MAX_CHARS

SHAREGPT_ROLES = {"user": "human", "assistant": "gpt", "tool_call": "function_call", "tool": "observation"}
STYLES = ("messages", "alpaca", "sharegpt")
# One encoder for every line: json.dumps(..., ensure_ascii=False) would build a new one per call.
_encode = json.JSONEncoder(ensure_ascii=False, check_circular=False).encode
_quote = encode_basestring  # a JSON string literal, in C


def messages_line(conversation: Conversation) -> str:
    """`json.dumps(conversation.to_dict())` with the same text, built twice as fast (the hot path)."""
    parts = []
    for message in conversation.messages:
        if message.train is None and message.weight is None:
            parts.append(f'{{"role": {_quote(message.role)}, "content": {_quote(message.content)}}}')
        else:
            parts.append(_encode(message.to_dict()))
    line = '{"messages": [' + ", ".join(parts) + "]"
    if conversation.tools:
        line += ', "tools": ' + _encode(conversation.tools)
    if conversation.meta:
        line += ', "meta": ' + _encode(conversation.meta)
    return line + "}"


def _plain(conversation: Conversation, style: str) -> list:
    """The messages after the system prompt; refuses what the style cannot say."""
    if conversation.meta.get("pretrain"):
        raise DataError(
            "unsupported", "", f"is pre-training text, which {style} cannot hold", "convert it --to messages"
        )
    for i, message in enumerate(conversation.messages):
        default = message.role in MODEL_ROLES  # what a reader of this style will train
        trained = default if message.train is None else message.train
        if trained != default or (trained and message.weight not in (None, 1.0)):
            raise DataError(
                "unsupported",
                f"messages[{i}]",
                f"has a train flag or loss weight other than the default, which {style} cannot hold",
                "convert it --to messages",
            )
    return conversation.messages[1:] if conversation.system is not None else conversation.messages


def to_alpaca(conversation: Conversation) -> dict[str, Any]:
    """{instruction, input: "", output, system?, history?}; the last user/assistant pair is the instruction."""
    turns = _plain(conversation, "alpaca")
    roles = [m.role for m in turns]
    if len(turns) < 2 or roles != ["user", "assistant"] * (len(turns) // 2):
        raise DataError(
            "unsupported",
            "messages",
            f"has roles {roles[:8]}, but alpaca holds only user/assistant pairs",
            "convert it --to messages or --to sharegpt",
        )
    out: dict[str, Any] = {"instruction": turns[-2].content, "input": "", "output": turns[-1].content}
    if conversation.system is not None:
        out["system"] = conversation.system
    if len(turns) > 2:
        out["history"] = [[turns[i].content, turns[i + 1].content] for i in range(0, len(turns) - 2, 2)]
    return out


def to_sharegpt(conversation: Conversation) -> dict[str, Any]:
    """{conversations: [{from, value}], system?, tools? (as JSON text, as LLaMA-Factory reads it)}."""
    turns = _plain(conversation, "sharegpt")
    out: dict[str, Any] = {"conversations": [{"from": SHAREGPT_ROLES[m.role], "value": m.content} for m in turns]}
    if conversation.system is not None:
        out["system"] = conversation.system
    if conversation.tools:
        out["tools"] = json.dumps(conversation.tools, ensure_ascii=False)
    return out


def to_record(conversation: Conversation, style: str = "messages") -> dict[str, Any]:
    if style == "messages":
        return conversation.to_dict()
    if style == "alpaca":
        return to_alpaca(conversation)
    if style == "sharegpt":
        return to_sharegpt(conversation)
    raise ValueError(f"unknown output style {style!r}; use one of {', '.join(STYLES)}")


def write_jsonl(conversations: Iterable[Conversation], path: str | Path, style: str = "messages") -> int:
    """Write conversations as JSONL; returns how many were written."""
    if style not in STYLES:
        raise ValueError(f"unknown output style {style!r}; use one of {', '.join(STYLES)}")
    count = 0
    with open(path, "w", encoding="utf-8") as handle:
        for conversation in conversations:
            record = conversation.to_dict() if style == "messages" else to_record(conversation, style)
            handle.write(_encode(record) + "\n")
            count += 1
    return count


def write_valid(conversations: Iterable[Conversation], out: str | Path, style: str, report, on_error: str) -> list[DataError]:
    """Write conversations in `style`; those the style cannot hold are counted as rejected and returned."""
    unwritable: list[DataError] = []
    with open(out, "w", encoding="utf-8") as handle:
        for conversation in conversations:
            if style == "messages":
                handle.write(messages_line(conversation) + "\n")
                continue
            try:
                record = to_record(conversation, style)
            except DataError as error:
                meta = conversation.meta
                error.source = meta.get("source")
                error.location = f"line {meta['line']}" if "line" in meta else f"record {meta.get('record')}"
                error.record = conversation.to_dict()
                report.valid -= 1
                report.add_error(error)
                if on_error == "raise":
                    raise
                unwritable.append(error)
                continue
            handle.write(_encode(record) + "\n")
    return unwritable


def append_rejected(errors: list[DataError], quarantine: str | Path | None) -> None:
    if errors and quarantine:
        with open(quarantine, "a", encoding="utf-8") as sink:
            for error in errors:
                sink.write(json.dumps(error.to_dict(), ensure_ascii=False, default=str) + "\n")


def convert(
    paths: Any,
    out: str | Path,
    style: str = "messages",
    *,
    on_error: str = "skip",
    quarantine: str | Path | None = None,
    workers: int | None = None,
    max_chars: int | None = DEFAULT_MAX_CHARS,
    **read_options: Any,
):
    """Read `paths` (any format) and write every valid conversation to `out` in `style`.

    Returns the read's Report. A conversation the style cannot hold counts as rejected, with
    reason "unsupported", like a record that failed validation. With on_error="skip", large
    JSONL / text files are split over `workers` processes (default: up to 2, see parallel.py).
    """
    from sftune.data import parallel
    from sftune.data.load import Report, log_rejections, prepare, read

    if style not in STYLES:
        raise ValueError(f"unknown output style {style!r}; use one of {', '.join(STYLES)}")
    if on_error == "skip":
        plan = prepare(paths, **read_options)
        report = parallel.run(plan, out=out, style=style, quarantine=quarantine, max_chars=max_chars, workers=workers)
        log_rejections(report)
        return report
    report = Report()
    conversations = read(paths, on_error=on_error, quarantine=quarantine, report=report, max_chars=max_chars, **read_options)
    append_rejected(write_valid(conversations, out, style, report, on_error), quarantine)
    return report
