"""The messages a template takes: the schema's, as dicts, and back to the OpenAI shape jinja expects.

Messages may be `Message` objects, a Conversation, or dicts in the schema or OpenAI's shape
(assistant + `tool_calls`); dicts go through the data layer's one conversion (`data.formats.to_messages`).
"""

from __future__ import annotations

from typing import Any, Iterable

from sftune.data.formats import to_messages
from sftune.data.toolcalls import tool_calls
from sftune.data.schema import Message


class Normalized(list):
    """The list `normalize_messages` returns, tagged so that it is not normalized twice."""


def normalize_messages(messages: Iterable[Any]) -> Normalized:
    """Messages as dicts {role, content, train, weight} in the sftune schema (and a tool result's
    tool_call_id, when it has one)."""
    if isinstance(messages, Normalized):
        return messages
    if hasattr(messages, "messages"):  # a Conversation
        messages = messages.messages
    messages = list(messages)
    if not all(isinstance(m, Message) for m in messages):
        messages = to_messages([m.to_dict() if isinstance(m, Message) else m for m in messages], {})
    return Normalized({"role": m.role, "content": m.content, "train": m.train, "weight": m.weight,
                       **({"tool_call_id": m.tool_call_id} if m.tool_call_id is not None else {})} for m in messages)


def to_hf_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The OpenAI / Hugging Face shape that jinja chat templates expect (tool calls merged into the turn;
    call ids and results' tool_call_id where the data gave them, for templates that render them).

    A turn of calls without text has content "", as the official templates are shown it: GLM-4.5's writes a
    None content as "None", gpt-oss's, Llama 4's and DeepSeek-R1's raise on it; the others write both alike."""
    out: list[dict[str, Any]] = []
    for m in messages:
        if m["role"] == "tool_call":
            calls = [{"type": "function", "function": {"name": c["name"], "arguments": c["arguments"]},
                      **({"id": c["id"]} if "id" in c else {})} for c in tool_calls(m["content"], ids=True)]
            previous = out[-1] if out else None
            if previous is not None and previous["role"] == "assistant":
                previous.setdefault("tool_calls", []).extend(calls)
            else:
                out.append({"role": "assistant", "content": "", "tool_calls": calls})
        else:
            out.append({"role": m["role"], "content": m["content"],
                        **({"tool_call_id": m["tool_call_id"]} if m.get("tool_call_id") is not None else {})})
    return out
