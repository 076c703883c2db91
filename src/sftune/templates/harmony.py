"""gpt-oss's Harmony layout, as its official chat_template writes it: the system block (identity, dates,
reasoning effort, channels), the developer block (instructions and the tools as a TypeScript namespace),
and the channel headers of a reply. `render.py` lays out the turns with these texts.

The tool namespace follows the official template's macros, their stray whitespace included (a nested
object's properties and a oneOf variant's default sit after a line break and indentation).
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from sftune.templates.errors import TemplateError

IDENTITY = "You are ChatGPT, a large language model trained by OpenAI."
CHANNELS = "# Valid channels: analysis, commentary, final. Channel must be included for every message."
TOOL_CHANNEL = "\nCalls to these tools must go to the commentary channel: 'functions'."
ANALYSIS = "<|channel|>analysis<|message|>"
FINAL = "<|channel|>final<|message|>"


def system_block(tools: list[dict] | None, effort: str) -> str:
    """The system message the official template always writes (today's date, as its strftime_now)."""
    return ("<|start|>system<|message|>" + IDENTITY + "\nKnowledge cutoff: 2024-06\nCurrent date: "
            + datetime.now().strftime("%Y-%m-%d") + "\n\nReasoning: " + effort + "\n\n" + CHANNELS
            + (TOOL_CHANNEL if tools else "") + "<|end|>")


def developer_block(instructions: str | None, tools: list[dict] | None) -> str:
    """The developer message: the conversation's system text as instructions, then the tools."""
    if not instructions and not tools:
        return ""
    text = "<|start|>developer<|message|>" + ("# Instructions\n\n" + instructions + "\n\n" if instructions else "")
    return text + ("# Tools\n\n" + _namespace(tools) if tools else "") + "<|end|>"


def call(function: str, arguments: Any) -> str:
    """A call in the commentary channel, after the reply's `<|start|>assistant`."""
    return " to=functions." + function + "<|channel|>commentary json<|message|>" + _tojson(arguments) + "<|call|>"


def result(function: str, content: str) -> str:
    """A tool result, from the function the last call named."""
    return ("<|start|>functions." + function + " to=assistant<|channel|>commentary<|message|>" + _tojson(content)
            + "<|end|>")


def _tojson(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def _namespace(tools: list[dict]) -> str:
    out = "## functions\n\nnamespace functions {\n\n"
    for tool in tools:
        fn = tool.get("function", tool)
        if not isinstance(fn.get("description"), str):
            raise TemplateError(f"tool {fn.get('name')!r} has no description; gpt-oss's template writes each "
                                "tool's description (and raises without one): add one")
        out += "// " + fn["description"] + "\ntype " + fn["name"] + " = "
        params = fn.get("parameters") or {}
        if not params.get("properties"):
            out += "() => any;\n\n"
            continue
        out += "(_: {\n"
        required = params.get("required") or []
        for pname, pspec in params["properties"].items():
            if pspec.get("description"):
                out += "// " + pspec["description"] + "\n"
            out += pname + ("" if pname in required else "?") + ": " + _type(pspec, required)
            if "default" in pspec:
                default = pspec["default"]
                if pspec.get("enum") or pspec.get("oneOf"):
                    if not isinstance(default, str):
                        raise TemplateError(f"tool {fn['name']!r} parameter {pname!r}: gpt-oss's template writes "
                                            "the default of an enum or oneOf as text and raises on "
                                            f"{default!r}; make it a string")
                    out += (", // default: " if pspec.get("enum") else "// default: ") + default
                else:
                    out += ", // default: " + _tojson(default)
            out += ",\n"
        out += "}) => any;\n\n"
    return out + "} // namespace functions"


def _type(spec: dict, required: list) -> str:
    """render_typescript_type of the official template."""
    kind = spec.get("type")
    if kind == "array":
        items = spec.get("items")
        if not items:
            return "any[]" + (" | null" if spec.get("nullable") else "")
        simple = {"string": "string[]", "number": "number[]", "integer": "number[]", "boolean": "boolean[]"}
        if items.get("type") in simple:
            text = simple[items["type"]]
        else:
            inner = _type(items, required)
            text = "any[]" if inner == "object | object" or len(inner) > 50 else inner + "[]"
        return text + (" | null" if spec.get("nullable") else "")
    if isinstance(kind, list) and kind:
        return " | ".join(kind) if len(kind) > 1 else kind[0]
    if spec.get("oneOf"):
        out = ""
        for k, variant in enumerate(spec["oneOf"]):
            out += _type(variant, required)
            if variant.get("description"):
                out += "// " + variant["description"]
            if "default" in variant:
                out += " " * 20 + "// default: " + _tojson(variant["default"])
            if k + 1 < len(spec["oneOf"]):
                out += " | \n"
        return out
    if kind == "string":
        if spec.get("enum"):
            return '"' + '" | "'.join(spec["enum"]) + '"'
        return "string" + (" | null" if spec.get("nullable") else "")
    if kind in ("number", "integer"):
        return "number"
    if kind == "boolean":
        return "boolean"
    if kind == "object":
        if not spec.get("properties"):
            return "object"
        inner = spec.get("required") or []
        parts = [name + ("" if name in inner else "?") + ": " + "\n" + " " * 16 + _type(prop, inner)
                 for name, prop in spec["properties"].items()]
        return "{\n" + ", ".join(parts) + "}"
    return "any"
