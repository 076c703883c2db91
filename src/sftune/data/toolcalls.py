"""Tool-call data: check each call against the declared tools, and write calls in three shapes.

    check_tools(conversations) -> dict       counts and located examples of each kind in KINDS
    to_openai(conversation) -> dict          assistant `tool_calls` (arguments as JSON text), `tool` results
    to_hermes(conversation) -> dict          <tool_call> JSON inside assistant text, <tool_response> results
    (ShareGPT's function_call / observation turns: writers.to_sharegpt)

Reading takes all three back into the same Conversation (formats.to_messages), so a conversion is
lossless: the tests convert through every shape and compare.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from typing import Any

from sftune.data.errors import DataError
from sftune.data.formats import tool_calls
from sftune.data.schema import Conversation

KINDS = {
    "no_tools_declared": "a tool call in a record without `tools`: the model cannot know the function",
    "unknown_tool": "a call names a function that `tools` does not declare",
    "bad_arguments": "a call's arguments do not match its function's JSON schema (`parameters`)",
    "result_without_call": "more tool results than the calls before them",
    "call_without_result": "a call whose result never comes (a reply or a user turn follows)",
}
EXAMPLES_PER_KIND = 5


def _schemas(tools: list[dict] | None) -> dict[str, dict]:
    """name -> parameters schema, from OpenAI tools ({"type": "function", "function": {...}}) or plain ones."""
    out = {}
    for tool in tools or []:
        function = tool.get("function", tool) if isinstance(tool, dict) else {}
        if isinstance(function, dict) and isinstance(function.get("name"), str):
            out[function["name"]] = function.get("parameters") or {}
    return out


def _where(conversation: Conversation, field: str) -> str:
    meta = conversation.meta
    place = f"{meta.get('source', '?')}:{meta['line']}" if "line" in meta else \
        f"{meta.get('source', '?')} record {meta.get('record', '?')}"
    return f"{place} {field}"


def problems(conversation: Conversation) -> list[tuple[str, str, str]]:
    """(kind, field, detail) of each tool-call defect of one conversation."""
    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import SchemaError

    schemas, out, pending = _schemas(conversation.tools), [], 0
    messages = conversation.messages
    for i, m in enumerate(messages):
        if m.role == "tool_call":
            calls = tool_calls(m.content)
            pending += len(calls)
            for k, call in enumerate(calls):
                field = f"messages[{i}].content" + (f"[{k}]" if len(calls) > 1 else "")
                if not schemas:
                    out.append(("no_tools_declared", field, f"calls {call['name']!r}"))
                elif call["name"] not in schemas:
                    out.append(("unknown_tool", field, f"calls {call['name']!r}; declared: {', '.join(schemas)}"))
                else:
                    try:
                        error = next(iter(Draft202012Validator(schemas[call["name"]]).iter_errors(call["arguments"])),
                                     None)
                    except SchemaError as err:
                        error = err
                    if error is not None:
                        path = "".join(f"[{p!r}]" for p in error.path)
                        out.append(("bad_arguments", field, f"{call['name']}: arguments{path}: {error.message}"))
        elif m.role == "tool":
            if pending == 0:
                out.append(("result_without_call", f"messages[{i}]", "no call is waiting for this result"))
            pending = max(0, pending - 1)
        elif pending and m.role in ("assistant", "user"):
            out.append(("call_without_result", f"messages[{i}]", f"{pending} call(s) before it have no result"))
            pending = 0
    return out


def check_tools(conversations: Iterable[Conversation]) -> dict[str, Any]:
    """Counts and located examples (file:line field: detail) of each tool-call defect kind."""
    counts: Counter = Counter()
    examples: dict[str, list[str]] = {kind: [] for kind in KINDS}
    n = with_calls = calls = 0
    for conversation in conversations:
        n += 1
        k = sum(len(tool_calls(m.content)) for m in conversation.messages if m.role == "tool_call")
        calls += k
        with_calls += k > 0
        for kind, field, detail in problems(conversation):
            counts[kind] += 1
            if len(examples[kind]) < EXAMPLES_PER_KIND:
                examples[kind].append(f"{_where(conversation, field)}: {detail}")
    return {"conversations": n, "with_tool_calls": with_calls, "calls": calls,
            "kinds": {kind: {"count": counts[kind], "meaning": KINDS[kind], "examples": examples[kind]}
                      for kind in KINDS}}


def _turns(conversation: Conversation, ids: bool = False) -> list[tuple[Any, list[dict]]]:
    """(message, the calls of its turn) per OpenAI message: an assistant text takes the tool_call
    messages right after it (as does a first tool_call); other messages stand alone. With `ids`, calls
    keep the ids the data gave them."""
    out: list[tuple[Any, list[dict]]] = []
    previous = None
    for m in conversation.messages:
        if m.role == "tool_call" and previous in ("assistant", "tool_call"):
            head, calls = out[-1]
            if (head.train, head.weight) != (m.train, m.weight):
                raise DataError("unsupported", "messages", "has a reply and its tool calls with different train "
                                "flags or weights, which one OpenAI / Hermes message cannot hold",
                                "convert it --to messages")
            out[-1] = (head, calls + tool_calls(m.content, ids))
        else:
            out.append((m, tool_calls(m.content, ids) if m.role == "tool_call" else []))
        previous = m.role
    return out


def _extra(m: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if m.train is not None:
        out["train"] = m.train
    if m.weight is not None:
        out["weight"] = m.weight
    return out


def to_openai(conversation: Conversation) -> dict[str, Any]:
    """OpenAI chat shape: an assistant message's calls in `tool_calls` (arguments as JSON text, the ids
    the data gave, else call_1, call_2, ...), each result a `tool` message with the id of its call."""
    messages, ids, n = [], [], 0
    for m, calls in _turns(conversation, ids=True):
        if m.role == "tool":
            call_id = m.tool_call_id if m.tool_call_id is not None else ids[0] if ids else ""
            if call_id in ids:
                ids.remove(call_id)
            messages.append({"role": "tool", "tool_call_id": call_id, "content": m.content, **_extra(m)})
            continue
        if not calls:
            messages.append({"role": m.role, "content": m.content, **_extra(m)})
            continue
        entries = []
        for call in calls:
            n += 1
            ids.append(call.get("id", f"call_{n}"))
            entries.append({"id": ids[-1], "type": "function", "function": {
                "name": call["name"], "arguments": json.dumps(call["arguments"], ensure_ascii=False)}})
        text = m.content if m.role == "assistant" else None
        messages.append({"role": "assistant", "content": text, "tool_calls": entries, **_extra(m)})
    return _with_tools_and_meta(conversation, {"messages": messages})


def to_hermes(conversation: Conversation) -> dict[str, Any]:
    """Hermes function-calling shape: calls as <tool_call> JSON blocks in the assistant text (after the
    text and a newline), results wrapped in <tool_response> tags; the schemas stay in `tools`. Hermes has
    no call ids: results follow their calls in the calls' order, which is how it pairs them."""
    messages = []
    for m, calls in _turns(conversation):
        if m.role == "tool":
            messages.append({"role": "tool", "content": f"<tool_response>\n{m.content}\n</tool_response>",
                             **_extra(m)})
        elif calls:
            blocks = ["<tool_call>\n" + json.dumps(c, ensure_ascii=False) + "\n</tool_call>" for c in calls]
            text = m.content if m.role == "assistant" else ""
            messages.append({"role": "assistant", "content": "\n".join(([text] if text else []) + blocks),
                             **_extra(m)})
        else:
            messages.append({"role": m.role, "content": m.content, **_extra(m)})
    return _with_tools_and_meta(conversation, {"messages": messages})


def _with_tools_and_meta(conversation: Conversation, out: dict[str, Any]) -> dict[str, Any]:
    if conversation.meta.get("pretrain"):
        raise DataError("unsupported", "", "is pre-training text, which a chat shape cannot hold",
                        "convert it --to messages")
    if conversation.tools:
        out["tools"] = conversation.tools
    return out
