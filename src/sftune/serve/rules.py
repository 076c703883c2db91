"""OpenAI's rules for a request body beyond its fields' types, checked before anything reads the body further:
no lone surrogate anywhere (no tokenizer or JSON writer takes one), a chat's role order (system or developer
messages, then a user message first), tool results only right after an assistant message that made the calls
they answer (matched by id, every call answered), tool definitions in OpenAI's shape, non-empty prompts.

Each rule raises `Refused`, naming the field as OpenAI's `param` does (messages[2].tool_call_id).
"""

from __future__ import annotations

import re
from typing import Any

from sftune.errors import UserError

ROLES = ("system", "developer", "user", "assistant", "tool")
PART_TYPES = {"system": ("text",), "developer": ("text",), "user": ("text", "image_url", "image"),
              "assistant": ("text", "refusal"), "tool": ("text",)}
TOOL_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
TOOL_KEYS = {"type", "function"}
FUNCTION_KEYS = {"name", "description", "parameters", "strict"}


class Refused(UserError, ValueError):
    """A body that breaks one of OpenAI's rules: `param` names the field, the message says what to send."""

    def __init__(self, param: str, message: str):
        super().__init__(f"{param}: {message}")
        self.param = param


def lone_surrogate(value: Any, path: str = "") -> str | None:
    """The path of the first string (key or value) holding a lone UTF-16 surrogate, else None."""
    if isinstance(value, str):
        return path or "body" if any("\ud800" <= c <= "\udfff" for c in value) else None
    if isinstance(value, dict):
        for key, item in value.items():
            where = f"{path}.{key}" if path else str(key)
            if isinstance(key, str) and lone_surrogate(key) is not None:
                return f"{path or 'body'} (a key)"
            found = lone_surrogate(item, where)
            if found is not None:
                return found
    elif isinstance(value, list):
        for k, item in enumerate(value):
            found = lone_surrogate(item, f"{path}[{k}]")
            if found is not None:
                return found
    return None


def check_messages(messages: list[dict[str, Any]]) -> None:
    """Roles, contents and tool calls of a chat in OpenAI's order; Refused at the first message that breaks it."""
    pending: dict[str, int] = {}  # tool_call ids of the last assistant message not yet answered -> its index
    first = None
    for i, message in enumerate(messages):
        field = f"messages[{i}]"
        role = message.get("role")
        if role not in ROLES:
            raise Refused(f"{field}.role", f"is {role!r}; a message's role is one of {', '.join(ROLES)} "
                                           "(tool results: role 'tool' with the call's tool_call_id)")
        _content(message, role, field)
        if role == "tool":
            _tool_result(message, field, pending)
            continue
        if pending:
            raise Refused(field, f"follows an assistant message whose tool calls {sorted(pending)} have no result; "
                                 "send one message with role 'tool' and the call's tool_call_id per call first")
        if role in ("system", "developer"):
            continue
        if first is None:
            first = i
            if role != "user":
                raise Refused(f"{field}.role", f"is {role!r}, but the first message after the system messages must "
                                               "be a user message")
        if role == "assistant":
            pending = _calls(message.get("tool_calls"), f"{field}.tool_calls")
            if message.get("content") is None and not pending:
                raise Refused(f"{field}.content", "is missing; an assistant message has content or tool_calls")
    if pending:
        raise Refused("messages", f"ends with tool calls {sorted(pending)} that have no result; send one message "
                                  "with role 'tool' and the call's tool_call_id per call")
    if first is None:
        raise Refused("messages", "has no user message; send at least one message with role 'user' "
                                  "(system messages alone ask nothing)")


def _content(message: dict[str, Any], role: str, field: str) -> None:
    content = message.get("content")
    if content is None and role == "assistant":
        return
    if isinstance(content, str):
        return
    if not isinstance(content, list) or not content:
        kind = "missing" if content is None else "an empty list" if content == [] else f"a {type(content).__name__}"
        raise Refused(f"{field}.content", f"is {kind}; a {role} message's content is a string or a non-empty list "
                                          "of parts like {'type': 'text', 'text': '...'}")
    allowed = PART_TYPES[role]
    for k, part in enumerate(content):
        where = f"{field}.content[{k}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind not in allowed:
            raise Refused(where, f"is not a part a {role} message takes (its type is {kind!r}); "
                                 f"the types it takes: {', '.join(allowed)}")
        if kind in ("text", "refusal") and not isinstance(part.get(kind), str):
            raise Refused(f"{where}.{kind}", f"must be a string, e.g. {{'type': '{kind}', '{kind}': 'Hello'}}")
        if kind == "image_url":
            url = part.get("image_url")
            if not isinstance(url.get("url") if isinstance(url, dict) else url, str):
                raise Refused(f"{where}.image_url", "must be {'url': 'data:image/png;base64,...'}")


def _calls(calls: Any, field: str) -> dict[str, int]:
    """The ids of an assistant message's tool_calls, each {id, type: function, function: {name, arguments}}."""
    if calls is None:
        return {}
    if not isinstance(calls, list) or not calls:
        raise Refused(field, "must be a non-empty list of {'id', 'type': 'function', 'function': {'name', "
                             "'arguments'}} (or left out)")
    ids: dict[str, int] = {}
    for k, call in enumerate(calls):
        where = f"{field}[{k}]"
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(call, dict) or call.get("type", "function") != "function" or not isinstance(function, dict):
            raise Refused(where, "must be {'id': 'call_1', 'type': 'function', 'function': {'name': ..., "
                                 "'arguments': '{...}'}}")
        if not isinstance(call.get("id"), str) or not call["id"]:
            raise Refused(f"{where}.id", "must be a non-empty string; each tool result names it as tool_call_id")
        if call["id"] in ids:
            raise Refused(f"{where}.id", f"{call['id']!r} is also the id of call {ids[call['id']]}; ids are unique")
        if not isinstance(function.get("name"), str) or not isinstance(function.get("arguments"), str):
            raise Refused(f"{where}.function", "needs 'name' and 'arguments', both strings (arguments is JSON text)")
        ids[call["id"]] = k
    return ids


def _tool_result(message: dict[str, Any], field: str, pending: dict[str, int]) -> None:
    call_id = message.get("tool_call_id")
    if not isinstance(call_id, str):
        raise Refused(f"{field}.tool_call_id", "must be the id of the tool call this message answers")
    if call_id not in pending:
        raise Refused(f"{field}.tool_call_id", f"{call_id!r} answers no call: a tool message must follow an assistant "
                                               "message with tool_calls (or other tool messages answering them), and "
                                               "name one of its call ids not answered yet")
    del pending[call_id]


def check_tools(tools: list[dict[str, Any]]) -> None:
    """Tool definitions: {'type': 'function', 'function': {'name', 'description'?, 'parameters'?, 'strict'?}}."""
    for k, tool in enumerate(tools):
        field = f"tools[{k}]"
        extra = sorted(set(tool) - TOOL_KEYS)
        if tool.get("type") != "function" or extra:
            raise Refused(field, f"must be {{'type': 'function', 'function': {{...}}}} "
                                 f"({'unknown keys ' + str(extra) if extra else 'type is ' + repr(tool.get('type'))})")
        function = tool.get("function")
        if not isinstance(function, dict):
            raise Refused(f"{field}.function", "must be an object {'name': ..., 'description': ..., "
                                               "'parameters': {JSON schema}}")
        extra = sorted(set(function) - FUNCTION_KEYS)
        if extra:
            raise Refused(f"{field}.function", f"has unknown keys {extra}; it takes {', '.join(sorted(FUNCTION_KEYS))}")
        name = function.get("name")
        if not isinstance(name, str) or not TOOL_NAME.fullmatch(name):
            raise Refused(f"{field}.function.name", "must be 1 to 64 letters, digits, '_' or '-'")
        for key, kind in (("description", str), ("parameters", dict), ("strict", bool)):
            if function.get(key) is not None and not isinstance(function[key], kind):
                raise Refused(f"{field}.function.{key}", f"must be a {kind.__name__}")


def check_prompt(prompt: str | list[str]) -> None:
    """A completions prompt: a non-empty string or a non-empty list of them."""
    if prompt == []:
        raise Refused("prompt", "is an empty list; send a string or a list of non-empty strings")
    for k, text in enumerate([prompt] if isinstance(prompt, str) else prompt):
        if not text:
            raise Refused("prompt" if isinstance(prompt, str) else f"prompt[{k}]",
                          "is empty; a completion continues a text, send at least one character")
