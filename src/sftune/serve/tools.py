"""Tool calls in a model's answer, read back with the syntax its template family trained it on.

    qwen     <tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>, one block per call, text before
    llama3   the whole answer is one JSON call {"name": ..., "parameters": {...}}
    qwen3.5  <tool_call>\\n<function=NAME>\\n<parameter=KEY>\\nVALUE\\n</parameter>...</function>\\n</tool_call>
    glm      <tool_call>NAME\\n<arg_key>KEY</arg_key>\\n<arg_value>VALUE</arg_value>...</tool_call>
    llama4   <|python_start|>text<|python_end|> then the calls as JSON objects {"name": ..., "parameters": {...}},
             one after another
    mistral  text, then [TOOL_CALLS] and the calls: a JSON list [{"name", "arguments", "id"}] (tokenizers v3 / v7:
             Mistral-7B-v0.3, Mistral-Small-3), or name[ARGS]{...} after each [TOOL_CALLS] (v13: Magistral); the
             id the model writes is kept, so the result the client sends back renders as the model was trained
    harmony  gpt-oss's channels: the final channel is the answer, the analysis channel its reasoning (left
             out), a commentary message to=functions.NAME a call with JSON arguments
    gemma4   <|tool_call>call:NAME{key:value,...}<tool_call|>, one block per call, values in Gemma's notation
             (strings between <|"|> quotes, so a string stays a string); the text is the rest of the answer
    deepseek_v3.1  text, then <｜tool▁calls▁begin｜> and each call <｜tool▁call▁begin｜>NAME<｜tool▁sep｜>{JSON arguments}
             <｜tool▁call▁end｜>, closed by <｜tool▁calls▁end｜> (DeepSeek-V3.1, thinking on or off)

An answer whose call blocks are not valid JSON stays plain text (the client sees what the model wrote). A
value in the XML layouts is JSON when it parses as JSON and the tool does not declare the key a string.
The GLM, Llama 4, Mistral, Harmony, Gemma 4 and DeepSeek-V3.1 layouts are written in special tokens, so they
are read from the answer decoded with them (`answer_text`).
"""

from __future__ import annotations

import json
import re
import uuid
from typing import Any

from sftune.data.errors import DataError
from sftune.data.toolcalls import parse_tool_calls
from sftune.templates import Template
from sftune.templates.gemma4 import CALL_CLOSE, CALL_OPEN, QUOTE

_QWEN_CALL = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|$)", re.DOTALL)
_XML_CALL = re.compile(r"<tool_call>\s*<function=([^>\n]+)>(.*?)(?:</function>\s*</tool_call>|$)", re.DOTALL)
_XML_PARAMETER = re.compile(r"<parameter=([^>\n]+)>\n?(.*?)\n?</parameter>", re.DOTALL)
_GLM_CALL = re.compile(r"<tool_call>([^\n<]+)(.*?)(?:</tool_call>|$)", re.DOTALL)
_GLM_ARGUMENT = re.compile(r"<arg_key>(.*?)</arg_key>\s*<arg_value>(.*?)</arg_value>", re.DOTALL)
_HARMONY_MESSAGE = re.compile(r"(?:<\|start\|>assistant)?(.*?)<\|message\|>(.*?)"
                              r"(?:<\|end\|>|<\|call\|>|<\|return\|>|$)", re.DOTALL)
_PYTHON_LITERALS = {"True": True, "False": False, "None": None}
# Styles written in special tokens: read from the answer decoded with them.
MARKUP_TOKENS = ("glm", "harmony", "llama4", "mistral", "gemma4", "deepseek_v3.1")
_V31_CALLS_BEGIN, _V31_CALLS_END = "<｜tool▁calls▁begin｜>", "<｜tool▁calls▁end｜>"
_V31_CALL = re.compile(r"<｜tool▁call▁begin｜>(.*?)<｜tool▁sep｜>(.*?)(?:<｜tool▁call▁end｜>|$)", re.DOTALL)


def tool_style(template: Template) -> str | None:
    """The tool-call syntax of a template ("qwen", "llama3"), or None when it has none."""
    return template.effective_spec.get("tools")


def answer_text(tokenizer: Any, token_ids: list[int], text: str, style: str | None) -> str:
    """The text to read calls from: the answer decoded with its special tokens for the styles written in
    them (MARKUP_TOKENS), else the answer as decoded for the client."""
    return tokenizer.decode(token_ids, skip_special_tokens=False) if style in MARKUP_TOKENS else text


def parse(text: str, style: str | None, tools: list[dict] | None = None) -> tuple[str, list[dict[str, Any]]]:
    """(the answer's text without its calls, its calls in OpenAI's shape); no calls when there are none."""
    if style == "harmony":
        return _harmony(text)
    if style == "gemma4" and CALL_OPEN in text:
        rest, values = _gemma4_calls(text)
        calls = _calls(values)
        if calls is not None:
            return rest, calls
    if style in ("qwen3.5", "glm") and "<tool_call>" in text:
        calls_of, pairs_of = (_XML_CALL, _XML_PARAMETER) if style == "qwen3.5" else (_GLM_CALL, _GLM_ARGUMENT)
        values = []
        for name, body in calls_of.findall(text):
            name = name.strip()
            values.append({"name": name, "arguments": {key.strip(): _value(tools, name, key.strip(), value)
                                                       for key, value in pairs_of.findall(body)}})
        calls = _calls(values)
        if calls is not None:
            return text[: text.index("<tool_call>")].strip(), calls
    elif style == "qwen" and "<tool_call>" in text:
        bodies = _QWEN_CALL.findall(text)
        calls = _calls([_json(body) for body in bodies])
        if calls is not None:
            return text[: text.index("<tool_call>")].strip(), calls
    elif style == "llama4" and "<|python_end|>" in text:
        head, _, calls_text = text.partition("<|python_end|>")
        calls = _calls(_json_objects(calls_text.removesuffix("<|eot|>").strip()))
        if calls is not None:
            return head.split("<|python_start|>")[-1].strip(), calls
    elif style == "mistral" and "[TOOL_CALLS]" in text:
        head, _, calls_text = text.partition("[TOOL_CALLS]")
        calls = _calls(_mistral_calls(calls_text), ids=True)
        if calls is not None:
            return head.strip(), calls
    elif style == "deepseek_v3.1" and _V31_CALLS_BEGIN in text:
        head, _, calls_text = text.partition(_V31_CALLS_BEGIN)
        calls = _calls(_v31_calls(calls_text))
        if calls is not None:
            return head.strip(), calls
    elif style == "llama3" and text.strip().startswith("{"):
        value = _json(text.strip())
        if isinstance(value, dict) and "parameters" in value and "arguments" not in value:
            value = {"name": value.get("name"), "arguments": value["parameters"]}
        calls = _calls([value])
        if calls is not None:
            return "", calls
    return text, []


def _harmony(text: str) -> tuple[str, list[dict[str, Any]]]:
    """The final (and plain commentary) channel as the text; commentary messages to a function as calls."""
    answer, found = [], []
    for header, body in _HARMONY_MESSAGE.findall(text):
        recipient = re.search(r"to=functions\.([^\s<]+)", header)
        if recipient:
            found.append({"name": recipient.group(1), "arguments": _json(body.strip())})
        elif "<|channel|>analysis" not in header:
            answer.append(body)
    if any(not isinstance(call["arguments"], dict) for call in found):
        return text, []  # a call that is not valid JSON: the client sees what the model wrote
    return "".join(answer).strip(), (_calls(found) or []) if found else []


def _gemma4_calls(text: str) -> tuple[str, list[Any]]:
    """(the answer without its call blocks, each block's {"name", "arguments"}, or None for one that does not
    read as a call in Gemma's notation)."""
    rest, values, pos = [], [], 0
    while (at := text.find(CALL_OPEN, pos)) >= 0:
        rest.append(text[pos:at])
        head = at + len(CALL_OPEN)
        brace = text.find("{", head)
        name = text[head + len("call:"):brace].strip() if text.startswith("call:", head) and brace >= 0 else ""
        arguments, end = _gemma_value(text, brace) if name else (None, -1)
        if not isinstance(arguments, dict) or not (text.startswith(CALL_CLOSE, end) or end == len(text)):
            return text, [None]
        values.append({"name": name, "arguments": arguments})
        pos = end + len(CALL_CLOSE) if text.startswith(CALL_CLOSE, end) else end
    return "".join(rest + [text[pos:]]).strip(), values


_GEMMA_WORDS = {"true": True, "false": False, "null": None}
_GEMMA_STOPS = re.compile(r"[,}\]]")


def _gemma_value(text: str, pos: int) -> tuple[Any, int]:
    """One value in Gemma's notation at text[pos:] and where it ends; (None, -1) when it is not one. Keys are
    bare (calls) or quoted (declarations); numbers and words as JSON reads them."""
    if text.startswith(QUOTE, pos):
        end = text.find(QUOTE, pos + len(QUOTE))
        return (text[pos + len(QUOTE):end], end + len(QUOTE)) if end >= 0 else (None, -1)
    if text.startswith("{", pos) or text.startswith("[", pos):
        mapping = text[pos] == "{"
        close, out, pos = "}" if mapping else "]", {} if mapping else [], pos + 1
        while not text.startswith(close, pos):
            if out:
                if not text.startswith(",", pos):
                    return None, -1
                pos += 1
            if mapping:
                key, pos = _gemma_value(text, pos) if text.startswith(QUOTE, pos) else (
                    text[pos:text.find(":", pos)], text.find(":", pos))
                if not isinstance(key, str) or pos < 0 or not text.startswith(":", pos):
                    return None, -1
                item, pos = _gemma_value(text, pos + 1)
                if pos < 0:
                    return None, -1
                out[key] = item
            else:
                item, pos = _gemma_value(text, pos)
                if pos < 0:
                    return None, -1
                out.append(item)
        return out, pos + 1
    stop = _GEMMA_STOPS.search(text, pos)
    word = text[pos:stop.start() if stop else len(text)]
    if word in _GEMMA_WORDS:
        return _GEMMA_WORDS[word], pos + len(word)
    number = _json(word)
    return (number, pos + len(word)) if isinstance(number, (int, float)) and word.strip() == word else (None, -1)


def _value(tools: list[dict] | None, name: str, key: str, text: str) -> Any:
    """An XML call's value: the text for a key its tool declares a string; else JSON when it parses, or
    Python's True / False / None (Qwen3.5's template writes those with jinja's `string`)."""
    for tool in tools or []:
        fn = tool.get("function", tool)
        if fn.get("name") == name and ((fn.get("parameters") or {}).get("properties") or {}).get(key, {}).get("type") \
                == "string":
            return text
    if text in _PYTHON_LITERALS:
        return _PYTHON_LITERALS[text]
    value = _json(text)
    return text if value is None and text.strip() != "null" else value


def _json(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return None


def _json_objects(text: str) -> list[Any]:
    """JSON values written one after another (Llama 4's calls), as {"name", "arguments"}; [None] when the text
    is not such a run."""
    values, decoder, pos = [], json.JSONDecoder(), 0
    while pos < len(text):
        try:
            value, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError:
            return [None]
        if isinstance(value, dict) and "parameters" in value and "arguments" not in value:
            value = {"name": value.get("name"), "arguments": value["parameters"]}
        values.append(value)
        while pos < len(text) and text[pos].isspace():
            pos += 1
    return values


def _mistral_calls(text: str) -> list[Any]:
    """The calls after Mistral's first [TOOL_CALLS]: name[ARGS]{...} each after its own [TOOL_CALLS] (v13; v11's
    name[CALL_ID]id[ARGS]{...} too), else one JSON list (or object) of calls; [None] when the text is neither."""
    if "[ARGS]" not in text:
        value = _json(text.strip())
        return value if isinstance(value, list) else [value]
    values = []
    for call in text.split("[TOOL_CALLS]"):
        head, _, arguments = call.partition("[ARGS]")
        name, _, call_id = head.partition("[CALL_ID]")
        value = _json(arguments.strip())
        values.append({"name": name.strip(), "arguments": value, **({"id": call_id.strip()} if call_id else {})}
                      if isinstance(value, dict) and name.strip() else None)
    return values


def _v31_calls(text: str) -> list[Any]:
    """DeepSeek-V3.1's calls after <｜tool▁calls▁begin｜> (through <｜tool▁calls▁end｜> or the end), each
    {"name", "arguments"}; [None] when the text holds something else or arguments that are not a JSON object."""
    body = text.split(_V31_CALLS_END, 1)[0]
    values, pos = [], 0
    for match in _V31_CALL.finditer(body):
        if body[pos:match.start()].strip():
            return [None]
        arguments = _json(match.group(2).strip())
        values.append({"name": match.group(1).strip(), "arguments": arguments}
                      if isinstance(arguments, dict) and match.group(1).strip() else None)
        pos = match.end()
    return values if not body[pos:].strip() else [None]


def _calls(values: list[Any], ids: bool = False) -> list[dict[str, Any]] | None:
    """OpenAI tool_calls for parsed {"name", "arguments"} values; None when any is not a call. With `ids`, a call
    keeps the id the model wrote (Mistral's), else each gets a new one."""
    if not values or any(not isinstance(v, dict) for v in values):
        return None
    try:
        calls = parse_tool_calls(values, "answer", ids)
    except DataError:
        return None
    return [{"id": c.get("id") or f"call_{uuid.uuid4().hex[:24]}", "type": "function",
             "function": {"name": c["name"], "arguments": json.dumps(c["arguments"], ensure_ascii=False)}}
            for c in calls]
