"""Tool-call data: the calls a message holds, each call checked against the declared tools, and calls written
in three shapes.

    tool_calls(content) -> list[dict]        the calls of a tool_call message ({"name", "arguments"})
    parse_tool_calls(calls, field)           OpenAI tool_calls (or plain calls) -> the same, checked

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
from sftune.data.fields import wrong_type
from sftune.data.schema import Conversation

def tool_calls(content: str, ids: bool = False) -> list[dict]:
    """The calls a tool_call message holds (its content: a call {"name", "arguments"} as JSON, or a list);
    with `ids`, each call keeps its "id" when it has one (what a template renders never holds it)."""
    try:
        value = json.loads(content)
    except json.JSONDecodeError:
        raise DataError("wrong_type", "tool_call content", f"is not JSON: {content[:80]!r}",
                        'write {"name": ..., "arguments": {...}}') from None
    return parse_tool_calls(value if isinstance(value, list) else [value], "tool_call content", ids)


def call_text(calls: list[dict]) -> str:
    """A tool_call message's content: one call as a JSON object, several as a JSON list."""
    return json.dumps(calls[0] if len(calls) == 1 else calls, ensure_ascii=False)


def call_list(calls: Any, field: str) -> list | None:
    """A message's tool calls as a list: the old single `function_call` object, or JSON text of them."""
    if calls is None or calls == "" or calls == []:
        return None
    if isinstance(calls, str):
        try:
            calls = json.loads(calls)
        except (ValueError, RecursionError):
            raise wrong_type(field, calls, "a list of tool calls",
                              'write tool_calls as a list: [{"type": "function", "function": {"name": ..., '
                              '"arguments": "{...}"}}]') from None
    if isinstance(calls, dict):
        calls = [calls]
    if not isinstance(calls, list):
        raise wrong_type(field, calls, "a list of tool calls",
                          'write tool_calls as a list: [{"type": "function", "function": {"name": ..., "arguments": "{...}"}}]')
    return calls


def parse_tool_calls(calls: Any, field: str, ids: bool = False) -> list[dict]:
    """OpenAI tool_calls (or plain {"name", "arguments"} calls) -> [{"name", "arguments": object}], with
    each call's "id" (a string) after them when `ids` and the call has one."""
    if not isinstance(calls, list):
        raise wrong_type(field, calls, "a list of tool calls")
    out = []
    for i, call in enumerate(calls):
        function = call.get("function", call) if isinstance(call, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise DataError(
                "wrong_type",
                f"{field}[{i}]",
                "has no function name",
                'write each call as {"type": "function", "function": {"name": ..., "arguments": "{...}"}}',
            )
        arguments = function.get("arguments")
        if isinstance(arguments, str):
            try:
                arguments = json.loads(arguments) if arguments.strip() else {}
            except json.JSONDecodeError:
                raise DataError(
                    "wrong_type",
                    f"{field}[{i}].function.arguments",
                    "is not valid JSON",
                    "arguments must be a JSON object, or that object as a JSON string",
                ) from None
        parsed = {"name": function["name"], "arguments": arguments if arguments is not None else {}}
        if ids and call.get("id") is not None:
            if not isinstance(call["id"], str):
                raise wrong_type(f"{field}[{i}].id", call["id"], "a string", 'write the call\'s id as text, e.g. "call_1"')
            parsed["id"] = call["id"]
        out.append(parsed)
    return out


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
