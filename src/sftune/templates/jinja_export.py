"""A built-in or user dict template written as a jinja `chat_template` that renders what `render` renders.

The export is saved into the trained model's tokenizer, so inference (`apply_chat_template`) renders
exactly the training text. It takes OpenAI-shaped messages (assistant `tool_calls`), as jinja
templates do. Each section below mirrors a part of `render.py`; the tests render both and compare.
"""

from __future__ import annotations

import json
import re
from typing import Any

from sftune.templates.definitions import (LLAMA3_TOOLS_INTRO, LLAMA31_DATE, NO_THINK, QWEN_TOOLS_INTRO,
                                          QWEN_TOOLS_OUTRO)


def to_jinja(s: dict[str, Any], bos: str | None = None) -> str:
    """The jinja source of template dict `s`; `bos` given: that text for {bos} instead of `bos_token`."""
    return "\n".join([
        *_head(s, bos),
        *_system_header(s),
        *([_qwen3_last_query()] if s.get("reasoning") == "qwen3" else []),
        "{%- for m in messages[ns.start:] -%}{%- set i = loop.index0 + ns.start -%}",
        *_user(s),
        *_model_turns(s),
        _tool_result(s),
        _later_system(s),
        "{%- endif -%}{%- endfor -%}",
        "{%- if add_generation_prompt -%}{{- " + _expr(s.get("generation_prompt", "") + s.get("think_prompt", ""))
        + " -}}" + (_no_think(s) if s.get("reasoning") else "")
        + "{%- else -%}{{- " + _expr(s.get("suffix") or "") + " -}}{%- endif -%}",
    ])


def _literal(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)


def _expr(fmt: str, bos: str | None = None, **variables: str) -> str:
    """A format string with {placeholders} as a jinja concatenation expression."""
    names = {"bos": "bos_token" if bos is None else _literal(bos), "eos": "eos_token", **variables}
    pieces = []
    for k, piece in enumerate(re.split(r"\{(bos|eos|content|system|instruction|input)\}", fmt)):
        if k % 2:
            pieces.append(names[piece])
        elif piece:
            pieces.append(_literal(piece))
    return " + ".join(pieces) if pieces else '""'


def _head(s: dict[str, Any], bos: str | None) -> list[str]:
    """The system prompt (given, default or default-with-input), the first user turn, and the prefix."""
    default = _literal(s["default_system"]) if s.get("default_system") else "none"
    out = ["{%- set ns = namespace(system=" + default + ", start=0, first_user=-1, last_query=-1, found=false) -%}",
           "{%- if messages and messages[0]['role'] == 'system' -%}{%- set ns.system = messages[0]['content'] -%}"
           "{%- set ns.start = 1 -%}{%- endif -%}",
           "{%- for m in messages -%}{%- if m['role'] == 'user' and ns.first_user < 0 -%}"
           "{%- set ns.first_user = loop.index0 -%}{%- endif -%}{%- endfor -%}"]
    if s.get("strip") == "content" and s.get("system") is not None:
        out.append("{%- if ns.system is not none -%}{%- set ns.system = ns.system | trim -%}{%- endif -%}")
    if s.get("default_system_with_input"):
        out.append("{%- if ns.start == 0 and ns.first_user >= 0 and '\\n\\n' in messages[ns.first_user]['content'] -%}"
                   "{%- set ns.system = " + _literal(s["default_system_with_input"]) + " -%}{%- endif -%}")
    out.append("{{- " + _expr(s.get("prefix") or "", bos=bos) + " -}}")
    return out


def _system_header(s: dict[str, Any]) -> list[str]:
    style = s.get("tools")
    if s.get("reasoning") == "deepseek_r1":
        return ["{%- if tools -%}" + _NO_TOOLS + "{%- endif -%}",
                "{%- if ns.system is not none -%}{{- " + _expr(s["system"], content="ns.system") + " -}}{%- endif -%}"]
    if style == "qwen":
        return [_qwen_system(s)]
    if style == "llama3" and s.get("dated_system"):
        return [_llama31_system()]
    if s.get("system") is None:  # folded into the first user turn
        return []
    cond = "ns.system" if s.get("skip_empty_system") else "ns.system is not none"
    return ["{%- if " + cond + " -%}{{- " + _expr(s["system"], content="ns.system") + " -}}{%- endif -%}"]


def _user(s: dict[str, Any]) -> list[str]:
    strip = s.get("strip")
    out = ["{%- if m['role'] == 'user' -%}{%- set text = m['content']" + (" | trim" if strip == "content" else "") + " -%}"]
    if s.get("tools") == "llama3":
        out.append(_llama3_tools_intro())
    if s.get("user_with_input"):
        out.append("{%- if '\\n\\n' in text -%}{%- set parts = text.split('\\n\\n', 1) -%}{{- "
                   + _expr(s["user_with_input"], instruction="parts[0]", input="parts[1]") + " -}}{%- else -%}")
    if s.get("system") is None:
        out.append("{%- if i == ns.first_user and ns.system is not none -%}{%- set text = "
                   + _expr(s["system_in_user"], system="ns.system", content="text") + " -%}{%- endif -%}")
    out.append("{{- " + _expr(s["user"], content="text" + (" | trim" if strip == "turn" else "")) + " -}}")
    if s.get("user_with_input"):
        out.append("{%- endif -%}")
    return out


def _reply_parts(s: dict[str, Any]) -> tuple[str, str]:
    """(what comes before a reply's text: the generation prompt and the reply head, what comes after it)."""
    prompt = s.get("generation_prompt", "")
    head, tail = s["assistant"][len(prompt):].split("{content}", 1)
    return prompt + head, tail


def _model_turns(s: dict[str, Any]) -> list[str]:
    """Assistant turns with their tool calls: each call a turn of its own, except in the qwen style."""
    style = s.get("tools")
    if s.get("reasoning") == "qwen3":
        return [_qwen3_model_turn(s)]
    if s.get("reasoning") == "deepseek_r1":
        return [_deepseek_r1_model_turn(s)]
    if style == "qwen":
        return [_qwen_model_turn(s)]
    before, after = _reply_parts(s)
    text = "(m['content'] or '')" + (" | trim" if s.get("strip") else "")
    call = _llama3_call() if style == "llama3" else '({"name": c.name, "arguments": c.arguments} | tojson)'
    out = [_llama3_single_call()] if style == "llama3" else []
    out.append("{%- elif m['role'] == 'assistant' -%}{%- if m['content'] or not m.tool_calls -%}{{- "
               + _expr(before) + " + " + text + " + " + _expr(after) + " -}}{%- endif -%}"
               "{%- for tc in m.tool_calls or [] -%}{%- set c = tc.function if tc.function is defined else tc -%}"
               "{{- " + _expr(before) + " + " + call + " + " + _expr(after) + " -}}{%- endfor -%}")
    return out


def _tool_result(s: dict[str, Any]) -> str:
    style = s.get("tools")
    if s.get("reasoning") == "deepseek_r1":
        return "{%- elif m['role'] == 'tool' -%}" + _NO_TOOLS
    if style == "qwen":
        return _qwen_result()
    if style == "llama3":
        return _llama3_result()
    return "{%- elif m['role'] == 'tool' -%}{{- " + _expr(s.get("tool") or s["user"], content="m['content']") + " -}}"


def _later_system(s: dict[str, Any]) -> str:
    if s.get("system") is None or s.get("reasoning") == "deepseek_r1":
        return "{%- elif m['role'] == 'system' -%}{{- raise_exception('a system message is allowed only first') -}}"
    content = "(m['content']" + (" | trim" if s.get("strip") == "content" else "") + ")"
    return "{%- elif m['role'] == 'system' -%}{{- " + _expr(s["system"], content=content) + " -}}"


# --- the qwen tool style ------------------------------------------------------------------------------


def _qwen_system(s: dict[str, Any]) -> str:
    return ("{%- if tools -%}{{- '<|im_start|>system\\n' -}}"
            "{%- if ns.system is not none -%}{{- ns.system + '\\n\\n' -}}{%- endif -%}"
            "{{- " + _literal(QWEN_TOOLS_INTRO) + " -}}{%- for tool in tools -%}"
            "{{- '\\n' + (tool | tojson) -}}{%- endfor -%}{{- " + _literal(QWEN_TOOLS_OUTRO) + " -}}"
            "{%- elif ns.system is not none -%}{{- " + _expr(s["system"], content="ns.system") + " -}}{%- endif -%}")


def _qwen_model_turn(s: dict[str, Any]) -> str:
    """The text (when there is any, or no call) and every call, joined by newlines, in one turn."""
    before, after = _reply_parts(s)
    return ("{%- elif m['role'] == 'assistant' -%}{{- " + _expr(before) + " -}}"
            "{%- set ns2 = namespace(sep='') -%}"
            "{%- if m['content'] or not m.tool_calls -%}{{- m['content'] or '' -}}{%- set ns2.sep = '\\n' -%}{%- endif -%}"
            "{%- for tc in m.tool_calls or [] -%}{%- set c = tc.function if tc.function is defined else tc -%}"
            "{{- ns2.sep + '<tool_call>\\n{\"name\": \"' + c.name + '\", \"arguments\": ' + (c.arguments | tojson)"
            " + '}\\n</tool_call>' -}}{%- set ns2.sep = '\\n' -%}{%- endfor -%}{{- " + _expr(after) + " -}}")


# --- the qwen3 reasoning style -------------------------------------------------------------------------


def _qwen3_last_query() -> str:
    """ns.last_query: the last user message that is not a <tool_response> (else the last message)."""
    return ("{%- set ns.last_query = messages | length - 1 -%}{%- set ns.found = false -%}"
            "{%- for m in messages[::-1] -%}{%- if not ns.found and m['role'] == 'user' and not "
            "(m['content'].startswith('<tool_response>') and m['content'].endswith('</tool_response>')) -%}"
            "{%- set ns.last_query = messages | length - 1 - loop.index0 -%}{%- set ns.found = true -%}"
            "{%- endif -%}{%- endfor -%}")


def _qwen3_model_turn(s: dict[str, Any]) -> str:
    """Reasoning split off at </think>, written back as a <think> block only after the last user query."""
    before, after = _reply_parts(s)
    return ("{%- elif m['role'] == 'assistant' -%}"
            "{%- set content = m['content'] if m['content'] is string else '' -%}{%- set reasoning = '' -%}"
            "{%- if m.reasoning_content is string -%}{%- set reasoning = m.reasoning_content -%}"
            "{%- elif '</think>' in content -%}"
            "{%- set reasoning = content.split('</think>')[0].rstrip('\n').split('<think>')[-1].lstrip('\n') -%}"
            "{%- set content = content.split('</think>')[-1].lstrip('\n') -%}{%- endif -%}"
            "{{- " + _expr(before) + " -}}"
            "{%- if i > ns.last_query and (loop.last or reasoning) -%}"
            "{{- '<think>\n' + reasoning.strip('\n') + '\n</think>\n\n' + content.lstrip('\n') -}}"
            "{%- else -%}{{- content -}}{%- endif -%}"
            "{%- for tc in m.tool_calls or [] -%}{%- set c = tc.function if tc.function is defined else tc -%}"
            "{%- if not loop.first or content -%}{{- '\n' -}}{%- endif -%}"
            "{{- '<tool_call>\n{\"name\": \"' + c.name + '\", \"arguments\": ' + (c.arguments if c.arguments "
            "is string else c.arguments | tojson) + '}\n</tool_call>' -}}{%- endfor -%}{{- " + _expr(after) + " -}}")


# --- the deepseek_r1 reasoning style -------------------------------------------------------------------

_NO_TOOLS = ("{{- raise_exception('this template has no tool-call layout (DeepSeek-R1-Distill): train tool use "
             "with another') -}}")


def _deepseek_r1_model_turn(s: dict[str, Any]) -> str:
    """Replies before the last keep what follows their last </think>; the last is written as generated
    after the think prompt: its reasoning (or none), the closed block and the answer."""
    before, after = _reply_parts(s)
    return ("{%- elif m['role'] == 'assistant' -%}"
            "{%- if m.tool_calls -%}" + _NO_TOOLS + "{%- endif -%}"
            "{%- set content = m['content'] if m['content'] is string else '' -%}{{- " + _expr(before) + " -}}"
            "{%- if loop.last -%}{%- set reasoning = '' -%}"
            "{%- if m.reasoning_content is string -%}{%- set reasoning = m.reasoning_content -%}"
            "{%- elif '</think>' in content -%}"
            "{%- set reasoning = content.split('</think>')[0].rstrip('\n').split('<think>')[-1].lstrip('\n') -%}"
            "{%- set content = content.split('</think>')[-1] -%}{%- endif -%}"
            "{{- " + _literal(s.get("think_prompt", "")) + " + reasoning.strip('\n') + '\n</think>\n\n' + "
            "content.lstrip('\n') -}}"
            "{%- else -%}{{- content.split('</think>')[-1] -}}{%- endif -%}{{- " + _expr(after) + " -}}")


def _no_think(s: dict[str, Any]) -> str:
    """enable_thinking=False (the default of a no-think template) adds the empty think block."""
    default = "false" if s.get("enable_thinking") is False else "true"
    return ("{%- if (enable_thinking if enable_thinking is defined else " + default + ") is false -%}"
            "{{- " + _literal(NO_THINK) + " -}}{%- endif -%}")


def _qwen_result() -> str:
    return ("{%- elif m['role'] == 'tool' -%}{%- if i == 0 or messages[i - 1]['role'] != 'tool' -%}"
            "{{- '<|im_start|>user' -}}{%- endif -%}{{- '\\n<tool_response>\\n' + m['content'] + "
            "'\\n</tool_response>' -}}{%- if loop.last or messages[i + 1]['role'] != 'tool' -%}"
            "{{- '<|im_end|>\\n' -}}{%- endif -%}")


# --- the llama3 tool style ----------------------------------------------------------------------------


def _llama31_system() -> str:
    return ("{{- '<|start_header_id|>system<|end_header_id|>\\n\\n' -}}{%- if tools -%}"
            "{{- 'Environment: ipython\\n' -}}{%- endif -%}{{- " + _literal(LLAMA31_DATE)
            + " -}}{%- if ns.system is not none -%}{{- ns.system -}}{%- endif -%}{{- '<|eot_id|>' -}}")


def _llama3_tools_intro() -> str:
    return ("{%- if tools and i == ns.first_user -%}{%- set acc = namespace(text="
            + _literal(LLAMA3_TOOLS_INTRO) + ") -%}{%- for tool in tools -%}"
            "{%- set acc.text = acc.text + (tool | tojson(indent=4)) + '\\n\\n' -%}{%- endfor -%}"
            "{%- set text = acc.text + (m['content'] | trim) -%}{%- endif -%}")


def _llama3_call() -> str:
    return '\'{"name": "\' + c.name + \'", "parameters": \' + (c.arguments | tojson) + \'}\''


def _llama3_single_call() -> str:
    """As Llama 3.1's template: one call per turn, and no text beside it."""
    return ("{%- elif m['role'] == 'assistant' and m.tool_calls and (m.tool_calls | length > 1 "
            "or m['content']) -%}{{- raise_exception('This template renders one tool call per "
            "assistant turn, without text beside it') -}}")


def _llama3_result() -> str:
    return ("{%- elif m['role'] == 'tool' -%}{{- '<|start_header_id|>ipython<|end_header_id|>\\n\\n' + "
            "(m['content'] | tojson) + '<|eot_id|>' -}}")
