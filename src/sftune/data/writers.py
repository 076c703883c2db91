"""Conversations out, as JSONL in one of five shapes: messages (the schema), alpaca, sharegpt, and the
tool-call shapes openai (`tool_calls`) and hermes (<tool_call> tags; see toolcalls.py).

`messages` keeps everything (train flags, weights, tools, meta). `alpaca` and `sharegpt` are the
shapes other tools read (LLaMA-Factory's defaults); a conversation they cannot hold without losing
meaning (tool turns in alpaca, per-message train flags or weights, pre-training text) raises a
DataError instead of being written half; the reader counts it as rejected (see load.read_plan).
Reading and writing together, on several processes: parallel.convert.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from json.encoder import encode_basestring
from pathlib import Path
from typing import Any

from sftune.data.errors import DataError
from sftune.data.files import Replacing
from sftune.data.toolcalls import call_text, tool_calls
from sftune.data.schema import MODEL_ROLES, Conversation

SHAREGPT_ROLES = {"user": "human", "assistant": "gpt", "tool_call": "function_call", "tool": "observation"}
STYLES = ("messages", "alpaca", "sharegpt", "openai", "hermes")
# One encoder for every line: json.dumps(..., ensure_ascii=False) would build a new one per call. It refuses
# NaN / Infinity, which JSON does not have (reading turns those it carries into null: load._nulls_for_non_finite).
_encoder = json.JSONEncoder(ensure_ascii=False, check_circular=False, allow_nan=False).encode


def _encode(value: Any) -> str:
    try:
        return _encoder(value)
    except ValueError as err:
        raise DataError("bad_value", "", f"holds a value JSON cannot hold ({err})",
                        "write a number, or null for a missing value") from None
_quote = encode_basestring  # a JSON string literal, in C


def messages_line(conversation: Conversation) -> str:
    """`json.dumps(conversation.to_dict())` with the same text, built twice as fast (the hot path)."""
    parts = []
    for message in conversation.messages:
        if message.train is None and message.weight is None and message.tool_call_id is None:
            parts.append(f'{{"role": {_quote(message.role)}, "content": {_quote(message.content)}}}')
        else:
            parts.append(_encode(message.to_dict()))
    line = '{"messages": [' + ", ".join(parts) + "]"
    if conversation.tools:
        line += ', "tools": ' + _encode(conversation.tools)
    if conversation.images:
        line += ', "images": ' + _encode(conversation.images)
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
    """{conversations: [{from, value}], system?, tools? (as JSON text, as LLaMA-Factory reads it)}; ShareGPT has
    no call ids: results follow their calls in the calls' order, which is how it pairs them."""
    turns = _plain(conversation, "sharegpt")
    out: dict[str, Any] = {"conversations": [
        {"from": SHAREGPT_ROLES[m.role], "value": call_text(tool_calls(m.content)) if m.role == "tool_call" else m.content}
        for m in turns]}
    if conversation.system is not None:
        out["system"] = conversation.system
    if conversation.tools:
        out["tools"] = json.dumps(conversation.tools, ensure_ascii=False)
    return out


def to_record(conversation: Conversation, style: str = "messages") -> dict[str, Any]:
    """The conversation in `style`; images go in an `images` column, their places stay `<image>` in the text."""
    if style == "messages":
        return conversation.to_dict()
    if style in ("alpaca", "sharegpt", "openai", "hermes"):
        from sftune.data.toolcalls import to_hermes, to_openai

        shape = {"alpaca": to_alpaca, "sharegpt": to_sharegpt, "openai": to_openai, "hermes": to_hermes}[style]
        out = shape(conversation)
        if conversation.images:
            out["images"] = list(conversation.images)
        return out
    raise ValueError(f"unknown output style {style!r}; use one of {', '.join(STYLES)}")


def shaper(style: str) -> Callable[[Conversation], str]:
    """conversation -> its JSONL line (no newline) in `style`; raises DataError where the style cannot hold it."""
    if style not in STYLES:
        raise ValueError(f"unknown output style {style!r}; use one of {', '.join(STYLES)}")
    if style == "messages":
        return messages_line
    return lambda conversation: _encode(to_record(conversation, style))


def write_jsonl(conversations: Iterable[Conversation], path: str | Path, style: str = "messages") -> int:
    """Write conversations as JSONL in `style`; returns how many were written."""
    return write_lines(map(shaper(style), conversations), path)


def write_lines(lines: Iterable[str], path: str | Path) -> int:
    """Write lines (without their newline) to `path`, moved into place only when all are written."""
    count = 0
    out = Replacing(path)
    try:
        for line in lines:
            out.write(line + "\n")
            count += 1
    except BaseException:
        out.discard()
        raise
    out.close()
    return count
