"""Template switches (data.template_kwargs): keyword arguments a chat template reads, such as DeepSeek-V3.1's
`thinking`, Qwen3's, GLM-4.5's and Nemotron 3's `enable_thinking`, gpt-oss's `reasoning_effort`, Nemotron 3
Super's `low_effort`.

A model's own jinja template gets them written into its text (`bake`: a `{% set %}` line per switch before the
template), so every render, the tokenizer's saved chat_template and a GGUF file built from it render the mode
training used, with or without the caller passing them again. A built-in takes only the switches of its official
template that it renders itself (`SWITCHES`); any other is refused, naming what it takes.
"""

from __future__ import annotations

import json
import re
from typing import Any

from sftune.templates.errors import TemplateError

# The variables transformers' renderer sets itself: a switch of that name would hide them.
RESERVED = ("messages", "tools", "documents", "add_generation_prompt", "bos_token", "eos_token", "raise_exception",
            "strftime_now")
_MARK = "{#- sftune data.template_kwargs #}"

_QWEN38_EFFORT = {
    "xhigh": "Reasoning effort is set to xhigh. Please think carefully through the task, validate key assumptions, "
             "consider plausible alternatives, and prioritize correctness, consistency, and clarity in the final "
             "answer.",
    "medium": "",
    "low": "Reasoning effort is set to low. Keep your thinking brief and focused, moving directly to the conclusion "
           "without unnecessary elaboration.",
}
_QWEN35_OFF = {"enable_thinking": False, "think_prompt": ""}
_QWEN35_ON = {"enable_thinking": True, "think_prompt": "<think>\n"}
# GLM-4.5 and Nemotron 3 with enable_thinking false: the generation prompt closes an empty think block (GLM-4.5 also
# ends each user message with /nothink)
_GLM_OFF = {"enable_thinking": False, "no_think": "\n<think></think>", "user_suffix": "/nothink"}
_NEMOTRON_OFF = {"enable_thinking": False, "think_prompt": "", "no_think": "<think></think>"}
_NEMOTRON_THINKING = {True: {}, False: _NEMOTRON_OFF}
# truncate_history_thinking false: every reply keeps its think block, so no reasoning is dropped (nothing to split)
_NEMOTRON_HISTORY = {True: {}, False: {"reasoning": "preserved", "preserve_thinking": True}}
_V31_OFF = {"reasoning": None, "think_prompt": "</think>", "official_switches": {"thinking": False}}
_V31_ON = {"reasoning": "deepseek_v3.1", "think_prompt": "<think>", "official_switches": {"thinking": True}}
# built-in -> switch -> value -> the keys of the built-in's dict that render its official template with that value
SWITCHES: dict[str, dict[str, dict[Any, dict[str, Any]]]] = {
    "qwen3": {"enable_thinking": {True: {}, False: {"enable_thinking": False}}},
    "qwen3_nothink": {"enable_thinking": {True: {"enable_thinking": True}, False: {}}},
    "qwen3.5": {"enable_thinking": {True: {}, False: _QWEN35_OFF}},
    "qwen3.6": {"enable_thinking": {True: {}, False: _QWEN35_OFF}},
    "qwen3.5_nothink": {"enable_thinking": {True: _QWEN35_ON, False: {}}},
    "qwen3.8": {"reasoning_effort": {effort: {"reasoning_instructions": text}
                                     for effort, text in _QWEN38_EFFORT.items()}},
    "deepseek_v3.1": {"thinking": {True: {}, False: _V31_OFF}},
    "deepseek_v3.1_nothink": {"thinking": {True: _V31_ON, False: {}}},
    "gpt-oss": {"reasoning_effort": {effort: {"reasoning_effort": effort} for effort in ("low", "medium", "high")}},
    "glm4.5": {"enable_thinking": {True: {}, False: _GLM_OFF}},
    "nemotron3": {"enable_thinking": _NEMOTRON_THINKING, "truncate_history_thinking": _NEMOTRON_HISTORY},
    "nemotron3_super": {"enable_thinking": _NEMOTRON_THINKING, "truncate_history_thinking": _NEMOTRON_HISTORY,
                        "low_effort": {True: {"last_user_suffix": "\n\n{reasoning effort: low}"}, False: {}}},
    "nemotron3_ultra": {"enable_thinking": _NEMOTRON_THINKING, "truncate_history_thinking": _NEMOTRON_HISTORY,
                        "medium_effort": {True: {"last_user_suffix": "\n\n{reasoning effort: efficient}"}, False: {}}},
}


def builtin(name: str, spec: dict[str, Any], kwargs: dict[str, Any]) -> dict[str, Any]:
    """Built-in `name`'s dict with `kwargs` applied, or a TemplateError naming what it takes."""
    takes = SWITCHES.get(name, {})
    for key, value in kwargs.items():
        values = takes.get(key, {})
        match = next((over for known, over in values.items() if type(known) is type(value) and known == value), None)
        if match is None:
            offered = "; ".join(f"{k} ({' | '.join(json.dumps(v) for v in vs)})" for k, vs in takes.items())
            what = f"takes {offered}" if takes else "takes none"
            got = f"{key}={json.dumps(value)}" if key in takes else repr(key)
            raise TemplateError(
                f"data.template_kwargs: built-in template {name!r} does not read {got}; it {what}. A switch of the "
                "model's own jinja template goes to it with data.template: tokenizer (or unset), or pick another "
                "built-in (sftune template list)")
        spec = {**spec, **match}
    return spec


def check_jinja(name: str, source: str, kwargs: dict[str, Any]) -> None:
    """Refuse a switch the template never mentions (a typo would train the default mode) or one that would hide
    a variable the renderer sets."""
    for key in kwargs:
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key) or key in RESERVED:
            raise TemplateError(f"data.template_kwargs: {key!r} cannot be a template switch (a jinja name, not one of "
                                f"{', '.join(RESERVED)})")
        if not re.search(rf"\b{key}\b", unbaked(source)):
            raise TemplateError(f"data.template_kwargs: template {name!r} never reads {key!r}, so it would change "
                                "nothing; check the name against the model's chat_template")


def bake(source: str, kwargs: dict[str, Any]) -> str:
    """`source` rendering as if called with `kwargs`: a `{% set %}` per switch before it (the same text when it
    already has them, so baking twice changes nothing)."""
    if not kwargs:
        return source
    sets = "".join(f"{{% set {key} = {_literal(value)} %}}" for key, value in sorted(kwargs.items()))
    # trim_blocks (transformers' renderer) drops the newline after the last tag: the template starts a line
    return _MARK + sets + "\n" + unbaked(source)


def unbaked(source: str) -> str:
    """A template text without the switches `bake` wrote."""
    if not source.startswith(_MARK):
        return source
    return source.split("\n", 1)[1] if "\n" in source else ""


def _literal(value: Any) -> str:
    """A jinja literal for a YAML value: JSON, with jinja's true / false / none."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "none"
    if isinstance(value, (int, float, str)):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_literal(v) for v in value) + "]"
    if isinstance(value, dict):
        pairs = (f"{json.dumps(str(k), ensure_ascii=False)}: {_literal(v)}" for k, v in value.items())
        return "{" + ", ".join(pairs) + "}"
    raise TemplateError(f"data.template_kwargs: {value!r} is not a value a template can read (use true / false, "
                        "numbers, text, lists or mappings)")

