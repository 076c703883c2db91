"""Gemma 4's tool texts, as its official chat_template (gemma4_v5.jinja) writes them: a declaration per tool in the
system turn, each call as call:name{key:value,...}, each result as response:name{...}. Values are written in
Gemma's own notation (strings between <|"|> quotes, keys bare in calls and results, sorted without regard to
case as jinja's dictsort sorts). `render.py` lays out the turns with these texts.

The declaration follows the template's macros exactly, their quirks included (a parameters block without a
"type" is never closed; a property that is neither a string, an array nor an object lists no enum or items).
"""

from __future__ import annotations

from typing import Any

from sftune.templates.errors import TemplateError

QUOTE = '<|"|>'
CALL_OPEN, CALL_CLOSE = "<|tool_call>", "<tool_call|>"
RESULT_OPEN, RESULT_CLOSE = "<|tool_response>", "<tool_response|>"
THOUGHT_OPEN, THOUGHT_CLOSE = "<|channel>thought\n", "\n<channel|>"


class _Undefined:
    """A key the schema does not have, as jinja's undefined: false, and written as nothing."""

    def __bool__(self) -> bool:
        return False


_MISSING = _Undefined()
_STANDARD = ("description", "type", "properties", "required", "nullable")


def declarations(tools: list[dict]) -> str:
    """The tools as the system turn lists them: <|tool>declaration:name{...}<tool|> each."""
    return "".join("<|tool>" + _declaration(tool).strip() + "<tool|>" for tool in tools)


def call(template: str, name: str, arguments: Any) -> str:
    """One call as the model writes it; arguments must be an object (the template raises otherwise)."""
    if arguments is None:
        arguments = {}
    if not isinstance(arguments, dict):
        raise TemplateError(f"template {template!r}: the call to {name!r} has arguments {arguments!r}; Gemma 4's "
                            "template raises 'chat_template: tool_calls[].function.arguments must be a JSON object "
                            "(mapping), not a string'. Write each call's arguments as a JSON object")
    return (CALL_OPEN + "call:" + name + "{"
            + ",".join(key + ":" + value(v, False) for key, v in _sorted(arguments)) + "}" + CALL_CLOSE)


def result(name: str, content: str) -> str:
    """A tool result's text inside the model turn, after its <|tool_response> opener: named by its call."""
    return "response:" + name + "{value:" + value(content, False) + "}" + RESULT_CLOSE


def value(v: Any, escape_keys: bool = True) -> str:
    """The template's format_argument: a JSON value in Gemma's notation."""
    if v is None:
        return "null"
    if isinstance(v, str):
        return QUOTE + v + QUOTE
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, dict):
        return "{" + ",".join((QUOTE + key + QUOTE if escape_keys else key) + ":" + value(item, escape_keys)
                              for key, item in _sorted(v)) + "}"
    if isinstance(v, (list, tuple)):
        return "[" + ",".join(value(item, escape_keys) for item in v) + "]"
    return str(v)


def _sorted(mapping: dict) -> list[tuple[Any, Any]]:
    """jinja's dictsort: by key, without regard to case (keys equal but for case keep their order)."""
    return sorted(mapping.items(), key=lambda kv: kv[0].lower() if isinstance(kv[0], str) else kv[0])


def _get(mapping: Any, key: str) -> Any:
    """mapping[key] as jinja reads it: missing (undefined) for an absent key or a value that is no mapping."""
    return mapping.get(key, _MISSING) if isinstance(mapping, dict) else _MISSING


def _text(v: Any) -> str:
    """A value as {{ }} writes it (undefined as nothing)."""
    return "" if v is _MISSING else str(v)


def _upper(v: Any) -> str:
    """jinja's `upper` filter."""
    return _text(v).upper()


def _declaration(tool: dict) -> str:
    """The template's format_function_declaration."""
    fn = tool.get("function", tool)
    out = "declaration:" + _text(_get(fn, "name")) + "{description:" + QUOTE + _text(_get(fn, "description")) + QUOTE
    params = _get(fn, "parameters")
    if params:
        out += ",parameters:{"
        if _get(params, "properties"):
            out += "properties:{" + _parameters(params["properties"], _get(params, "required")) + "},"
        if _get(params, "required"):
            out += "required:[" + ",".join(QUOTE + _text(item) + QUOTE for item in params["required"]) + "],"
        if _get(params, "type"):
            out += "type:" + QUOTE + _upper(params["type"]) + QUOTE + "}"
    if isinstance(fn, dict) and "response" in fn:
        response = fn["response"]
        out += ",response:{"
        if _get(response, "description"):
            out += "description:" + QUOTE + _text(response["description"]) + QUOTE + ","
        if _upper(_get(response, "type")) == "OBJECT":
            out += "type:" + QUOTE + "OBJECT" + QUOTE + "}"
    return out + "}"


def _parameters(properties: Any, required: Any, filter_keys: bool = False) -> str:
    """The template's format_parameters: each property as key:{description,...,type}."""
    parts = []
    for key, schema in _sorted(properties) if isinstance(properties, dict) else []:
        if filter_keys and key in _STANDARD:
            continue
        fields = []
        kind = _upper(_get(schema, "type"))
        if _get(schema, "description"):
            fields.append("description:" + QUOTE + _text(schema["description"]) + QUOTE)
        if kind == "STRING":
            if _get(schema, "enum"):
                fields.append("enum:" + value(schema["enum"]))
        elif kind == "ARRAY":
            items = _get(schema, "items")
            if isinstance(items, dict) and items:
                fields.append("items:{" + _items(items) + "}")
        if _get(schema, "nullable"):
            fields.append("nullable:true")
        if kind == "OBJECT":
            nested = _get(schema, "properties")
            inner_required = _get(schema, "required")
            inner_required = [] if inner_required is _MISSING else inner_required
            if isinstance(nested, dict):
                fields.append("properties:{" + _parameters(nested, inner_required) + "}")
            elif isinstance(schema, dict):
                fields.append("properties:{" + _parameters(schema, inner_required, True) + "}")
            if _get(schema, "required"):
                fields.append("required:[" + ",".join(QUOTE + _text(r) + QUOTE for r in schema["required"]) + "]")
        fields.append("type:" + QUOTE + kind + QUOTE)
        parts.append(str(key) + ":{" + ",".join(fields) + "}")
    return ",".join(parts)


def _items(items: dict) -> str:
    """An array's items schema, as the template writes it inside items:{...}."""
    parts = []
    for key, item in _sorted(items):
        if item is None:
            continue
        if key == "properties":
            required = items.get("required", [])
            parts.append("properties:{" + (_parameters(item, required) if isinstance(item, dict) else "") + "}")
        elif key == "required":
            parts.append("required:[" + ",".join(QUOTE + _text(r) + QUOTE for r in item) + "]")
        elif key == "type":
            parts.append("type:" + value(item.upper() if isinstance(item, str) else [_upper(t) for t in item]))
        else:
            parts.append(str(key) + ":" + value(item))
    return ",".join(parts)
