"""Tool calls in a model's answer, read back with the syntax its template family trained it on.

    qwen    <tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>, one block per call, text before
    llama3  the whole answer is one JSON call {"name": ..., "parameters": {...}}

An answer whose call blocks are not valid JSON stays plain text (the client sees what the model wrote).
"""

from __future__ import annotations

import json
import re
import uuid
from typing import Any

from sftune.data.errors import DataError
from sftune.data.formats import parse_tool_calls
from sftune.templates import BUILTINS, Template
from sftune.templates import twins

_QWEN_CALL = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|$)", re.DOTALL)


def tool_style(template: Template) -> str | None:
    """The tool-call syntax of a template ("qwen", "llama3"), or None when it has none."""
    spec = template.spec if template.jinja is None else BUILTINS.get(twins.builtin_of(template.jinja) or "", {})
    return spec.get("tools")


def parse(text: str, style: str | None) -> tuple[str, list[dict[str, Any]]]:
    """(the answer's text without its calls, its calls in OpenAI's shape); no calls when there are none."""
    if style == "qwen" and "<tool_call>" in text:
        bodies = _QWEN_CALL.findall(text)
        calls = _calls([_json(body) for body in bodies])
        if calls is not None:
            return text[: text.index("<tool_call>")].strip(), calls
    elif style == "llama3" and text.strip().startswith("{"):
        value = _json(text.strip())
        if isinstance(value, dict) and "parameters" in value and "arguments" not in value:
            value = {"name": value.get("name"), "arguments": value["parameters"]}
        calls = _calls([value])
        if calls is not None:
            return "", calls
    return text, []


def _json(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return None


def _calls(values: list[Any]) -> list[dict[str, Any]] | None:
    """OpenAI tool_calls for parsed {"name", "arguments"} values; None when any is not a call."""
    if not values or any(not isinstance(v, dict) for v in values):
        return None
    try:
        calls = parse_tool_calls(values, "answer")
    except DataError:
        return None
    return [{"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function",
             "function": {"name": c["name"], "arguments": json.dumps(c["arguments"], ensure_ascii=False)}}
            for c in calls]
