"""Chat templates: render a conversation exactly as a model family expects, as labelled segments.

A built-in template is a plain dict of format strings (see `BUILTINS`). Rendering it yields
*segments*: pieces of text that each belong to one message (or to the template's own framing), and
for a reply, the part the model produces is its own segment. `sftune.encode` labels tokens from these
segments, so nothing ever searches the text for a response marker.

The `tokenizer` template is the model's own jinja `chat_template` (the default whenever the model has
one). Its segments come from rendering growing prefixes of the conversation. Every built-in exports
itself as jinja (`Template.to_jinja`), and `save_to_tokenizer` writes the template used in training
into the tokenizer, so inference (`apply_chat_template`) renders exactly what training rendered.

Placeholders in format strings: `{content}` (the message text), `{system}` (in `system_in_user`),
`{bos}` / `{eos}` (the tokenizer's BOS / EOS text, or the family's default when no tokenizer is given).

Tool turns: a `tool_call` message holds one call `{"name", "arguments"}` as JSON text (or a list of
calls); an assistant message followed by `tool_call` messages is one model turn, as in OpenAI's
`{"role": "assistant", "content": ..., "tool_calls": [...]}`. Messages may be `Message` objects,
dicts in that schema, or OpenAI/Hugging Face dicts with `tool_calls`.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import Any, Iterable

from sftune.data.schema import MODEL_ROLES, ROLES, Message

# A segment: (text, index of the message it belongs to or None for template framing, body).
# `body` marks the text a message contributes when it is trained: for a model turn, what the model
# produces after the generation prompt (content and end-of-turn marker); for any other message, all of it.
Segment = tuple[str, "int | None", bool]

_QWEN_TOOLS_INTRO = (
    "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>"
)
_QWEN_TOOLS_OUTRO = (
    "\n</tools>\n\nFor each function call, return a json object with function name and arguments within "
    '<tool_call></tool_call> XML tags:\n<tool_call>\n{"name": <function-name>, "arguments": <args-json-object>}\n'
    "</tool_call><|im_end|>\n"
)
_LLAMA3_TOOLS_INTRO = (
    "Given the following functions, please respond with a JSON for a function call with its proper "
    "arguments that best answers the given prompt.\n\n"
    'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}.'
    "Do not use variables.\n\n"
)
_LLAMA31_DATE = "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n"
_VICUNA_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
_ALPACA_SYSTEM = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request."
)
_ALPACA_SYSTEM_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request."
)

# Keys of a template dict (user-defined templates use the same keys; only `user` and `assistant` are
# required):
#   prefix             text before everything ("{bos}")
#   system             format of a system message; None folds it into the first user turn
#   system_in_user     when system is None: the first user content, e.g. "{system}\n\n{content}"
#   default_system     system text used when the conversation has none
#   user, assistant    formats; `assistant` starts with `generation_prompt`
#   user_with_input    optional: the user turn "instruction\n\ninput" (the data layer's Alpaca layout)
#                      laid out with {instruction} and {input}; default_system_with_input goes with it
#   generation_prompt  what add_generation_prompt appends: the model's reply starts after it
#   end                the end-of-turn text right after {content} in `assistant`; trained with the reply
#   suffix             text after the last message when no generation prompt is asked (Phi-3's EOS)
#   skip_empty_system  an empty system message renders nothing (Phi-3.5) instead of an empty system turn
#   strip              "content": strip each message's text (jinja `| trim`); "turn": strip the user
#                      text after the system is folded in (Llama 2's `content.strip()`); None: as is
#   tools              None, "qwen" (<tool_call> / <tool_response>) or "llama3" (JSON calls, ipython turns;
#                      one call per assistant turn and no text beside it, as Llama 3.1's template allows)
#   tool               format of a tool result for templates without a tools style (default: as a user turn)
#   bos, eos           the family's BOS / EOS text when no tokenizer is given
#   bos_only_if_added  {bos} is written only for tokenizers that add a BOS themselves (a convention of
#                      the layout, not a token of its own: a ChatML model's BOS is not written)
BUILTINS: dict[str, dict[str, Any]] = {
    "chatml": {
        "description": "ChatML (<|im_start|>role ... <|im_end|>); tools as Qwen's <tool_call> tags",
        "system": "<|im_start|>system\n{content}<|im_end|>\n",
        "user": "<|im_start|>user\n{content}<|im_end|>\n",
        "assistant": "<|im_start|>assistant\n{content}<|im_end|>\n",
        "generation_prompt": "<|im_start|>assistant\n",
        "end": "<|im_end|>",
        "tool": "<|im_start|>tool\n{content}<|im_end|>\n",
        "tools": "qwen",
        "eos": "<|im_end|>",
    },
    "qwen2.5": {
        "description": "Qwen2.5-Instruct: ChatML with Qwen's default system prompt and tool calls",
        "system": "<|im_start|>system\n{content}<|im_end|>\n",
        "default_system": "You are Qwen, created by Alibaba Cloud. You are a helpful assistant.",
        "user": "<|im_start|>user\n{content}<|im_end|>\n",
        "assistant": "<|im_start|>assistant\n{content}<|im_end|>\n",
        "generation_prompt": "<|im_start|>assistant\n",
        "end": "<|im_end|>",
        "tools": "qwen",
        "eos": "<|im_end|>",
    },
    "llama2": {
        "description": "Llama-2-chat: <s>[INST] <<SYS>> ... <</SYS>> ... [/INST] reply </s>",
        "system": None,
        "system_in_user": "<<SYS>>\n{system}\n<</SYS>>\n\n{content}",
        "user": "{bos}[INST] {content} [/INST]",
        "assistant": " {content} {eos}",
        "generation_prompt": "",
        "end": " {eos}",
        "strip": "turn",
        "bos": "<s>",
        "eos": "</s>",
    },
    "llama3": {
        "description": "Llama-3-Instruct headers and <|eot_id|>; tool turns as Llama 3.1 (JSON calls, ipython)",
        "prefix": "{bos}",
        "system": "<|start_header_id|>system<|end_header_id|>\n\n{content}<|eot_id|>",
        "user": "<|start_header_id|>user<|end_header_id|>\n\n{content}<|eot_id|>",
        "assistant": "<|start_header_id|>assistant<|end_header_id|>\n\n{content}<|eot_id|>",
        "generation_prompt": "<|start_header_id|>assistant<|end_header_id|>\n\n",
        "end": "<|eot_id|>",
        "strip": "content",
        "tools": "llama3",
        "bos": "<|begin_of_text|>",
        "eos": "<|eot_id|>",
    },
    "mistral": {
        "description": "Mistral-Instruct v0.1/v0.2 (tokenizer v1): <s> [INST] ... [/INST] reply</s>; system before the "
                       "first user text",
        "prefix": "{bos}",
        "system": None,
        "system_in_user": "{system}\n\n{content}",
        "user": " [INST] {content} [/INST]",
        "assistant": " {content}{eos}",
        "generation_prompt": "",
        "end": "{eos}",
        "bos": "<s>",
        "eos": "</s>",
    },
    "gemma": {
        "description": "Gemma (1-3): <start_of_turn>user/model ... <end_of_turn>; system before the first user text",
        "prefix": "{bos}",
        "system": None,
        "system_in_user": "{system}\n\n{content}",
        "user": "<start_of_turn>user\n{content}<end_of_turn>\n",
        "assistant": "<start_of_turn>model\n{content}<end_of_turn>\n",
        "generation_prompt": "<start_of_turn>model\n",
        "end": "<end_of_turn>",
        "strip": "content",
        "bos": "<bos>",
        "eos": "<eos>",
    },
    "phi3": {
        "description": "Phi-3-mini-instruct: <|user|> ... <|end|> <|assistant|>; EOS after the last turn",
        "system": "<|system|>\n{content}<|end|>\n",
        "user": "<|user|>\n{content}<|end|>\n",
        "assistant": "<|assistant|>\n{content}<|end|>\n",
        "generation_prompt": "<|assistant|>\n",
        "end": "<|end|>",
        "suffix": "{eos}",
        "eos": "<|endoftext|>",
    },
    "zephyr": {
        "description": "Zephyr-7b-beta: <|user|>\\n ... </s>\\n<|assistant|>\\n",
        "system": "<|system|>\n{content}{eos}\n",
        "user": "<|user|>\n{content}{eos}\n",
        "assistant": "<|assistant|>\n{content}{eos}\n",
        "generation_prompt": "<|assistant|>\n",
        "end": "{eos}",
        "eos": "</s>",
    },
    "vicuna": {
        "description": "Vicuna v1.1 (FastChat): SYSTEM USER: ... ASSISTANT: reply</s>",
        "prefix": "{bos}",
        "bos_only_if_added": True,
        "system": "{content} ",
        "default_system": _VICUNA_SYSTEM,
        "user": "USER: {content} ",
        "assistant": "ASSISTANT: {content}{eos}",
        "generation_prompt": "ASSISTANT:",
        "end": "{eos}",
        "bos": "<s>",
        "eos": "</s>",
    },
    "alpaca": {
        "description": "Stanford Alpaca: ### Instruction: / ### Input: / ### Response:",
        "prefix": "{bos}",
        "bos_only_if_added": True,
        "system": "{content}\n\n",
        "default_system": _ALPACA_SYSTEM,
        "default_system_with_input": _ALPACA_SYSTEM_INPUT,
        "user": "### Instruction:\n{content}\n\n",
        "user_with_input": "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n",
        "assistant": "### Response:{content}{eos}",
        "generation_prompt": "### Response:",
        "end": "{eos}",
        "bos": "<s>",
        "eos": "</s>",
    },
    "zh_instruct": {
        "description": "Chinese instruction layout: 指令：...\\n输入：...\\n输出：...",
        "prefix": "{bos}",
        "bos_only_if_added": True,
        "system": "{content}\n",
        "user": "指令：{content}\n",
        "user_with_input": "指令：{instruction}\n输入：{input}\n",
        "assistant": "输出：{content}{eos}\n",
        "generation_prompt": "输出：",
        "end": "{eos}",
        "eos": "</s>",
    },
    "zh_qa": {
        "description": "Chinese question/answer layout: 问题：...\\n回答：...",
        "prefix": "{bos}",
        "bos_only_if_added": True,
        "system": "{content}\n",
        "user": "问题：{content}\n",
        "assistant": "回答：{content}{eos}\n",
        "generation_prompt": "回答：",
        "end": "{eos}",
        "eos": "</s>",
    },
}

TOKENIZER = "tokenizer"

# Llama 3.1 is Llama 3 plus the dated system header its official template always writes.
BUILTINS["llama3.1"] = {
    **BUILTINS["llama3"],
    "description": "Llama-3.1-Instruct: Llama 3 plus the dated system header and its tool calls",
    "dated_system": True,
}

# SmolLM2-Instruct is ChatML with a default system prompt when the conversation has none.
BUILTINS["smollm2"] = {
    **BUILTINS["chatml"],
    "description": "SmolLM2-Instruct: ChatML with SmolLM's default system prompt",
    "default_system": "You are a helpful AI assistant named SmolLM, trained by Hugging Face",
}

# Phi-3.5-mini is Phi-3-mini except that an empty system message is left out.
BUILTINS["phi3.5"] = {
    **BUILTINS["phi3"],
    "description": "Phi-3.5-mini-instruct: Phi-3 layout; an empty system message is left out",
    "skip_empty_system": True,
}

# Names that also resolve, for users who know a model by another name.
ALIASES = {"qwen": "qwen2.5", "llama-2": "llama2", "llama-3": "llama3", "gemma2": "gemma", "gemma3": "gemma",
           "phi-3": "phi3", "phi-3.5": "phi3.5"}


# Official chat_template texts (sha256 of the verbatim copies in tests/fixtures/templates) whose
# built-in renders the same text and the same trained spans for plain conversations: an optional
# system message, then user and assistant turns in turn (tool chats: see _TOOL_TWINS). A model template with one of
# these texts renders such conversations through the built-in, several times faster than jinja;
# every other conversation, and every other template, goes through jinja.
_TWINS = {
    "fcf7a096fe99a48fd9ad2b250bf9237e96e8f48bffec1c7ea4d3f225176cd40e": "chatml",
    "ecd6ae513fe103f0eb62e8ab5bfa8d0fe45c1074fa398b089c93a7e70c15cfd6": "gemma",  # Gemma 1/2: no system turn
    "7de1c58e208eda46e9c7f86397df37ec49883aeece39fb961e0a6b24088dd3c4": "gemma",  # Gemma 3
    "e8d5b5a546d3f19df16a5320c614fab05bdc4edd50e850f1afd947b503ea41cf": "llama2",
    "e10ca381b1ccc5cf9db52e371f3b6651576caee0a630b452e2816b2d404d4b65": "llama3.1",
    "ba03a121d097859c7b5b9cd03af99aafe95275210d2876f642ad9929a150f122": "llama3",
    "796853172235ab3aaa4810013ddfe2eab481bda3306dad4f700c00d436eed596": "mistral",
    "78d976a442bcde2f0be15aafbb8e3050e1104f86732266f68403251b89982a90": "phi3.5",
    "dcaee66df77bfbb789ec541fe713218da30225a526f1db97138fc39ee6dc56aa": "phi3",
    "cd8e9439f0570856fd70470bf8889ebd8b5d1107207f67a5efb46e342330527f": "qwen2.5",
    "872be49dbb638044ad01b60388f48d469ff2980e5f0dccdc22ec907db54d0788": "smollm2",
    "66291cf0045c2425a3a667cf3cbb7af2b11f09e025c02f97245323ab79119362": "zephyr",
}
_REFUSES_SYSTEM = {"ecd6ae513fe103f0eb62e8ab5bfa8d0fe45c1074fa398b089c93a7e70c15cfd6"}
# Twins also for tool conversations (tools, calls and results after a first user turn): Qwen2.5 and
# Llama 3.1, whose built-ins are checked against these templates on random tool conversations too.
# (The jinja path cannot even segment Llama 3.1 tool chats with a system message: the render of the
# system message alone raises, as the tools go into the first user turn.)
_TOOL_TWINS = {digest for digest, name in _TWINS.items() if name in ("qwen2.5", "llama3.1")}


class TemplateError(ValueError):
    """A conversation the template cannot render, or a template that is not usable."""


@dataclass(frozen=True)
class Template:
    """A chat template bound to BOS/EOS texts: a built-in or user dict (`spec`) or a jinja source."""

    name: str
    spec: dict[str, Any] = field(default_factory=dict)  # empty for jinja templates
    jinja: str | None = None
    bos: str = ""
    eos: str = ""
    special_tokens: dict[str, str] = field(default_factory=dict)  # extra names a jinja template may use

    def render(self, messages: Iterable[Any], tools: list[dict] | None = None,
               add_generation_prompt: bool = False) -> str:
        """The text of the conversation, exactly as the family's official template renders it."""
        return "".join(text for text, _, _ in self.segments(messages, tools, add_generation_prompt))

    def segments(self, messages: Iterable[Any], tools: list[dict] | None = None,
                 add_generation_prompt: bool = False) -> list[Segment]:
        """The rendered text as (text, message index or None, body) pieces; see module docstring."""
        msgs = messages if _normalized(messages) else normalize_messages(messages)
        if self.jinja is not None:
            twin = _twin(self, msgs, tools)
            if twin is None:
                return _jinja_segments(self, msgs, tools, add_generation_prompt)
            return _builtin_segments(twin, msgs, tools, add_generation_prompt)
        return _builtin_segments(self, msgs, tools, add_generation_prompt)

    def render_jinja(self, messages: Iterable[Any], tools: list[dict] | None = None,
                     add_generation_prompt: bool = False) -> str:
        """Render through `to_jinja()` with transformers' jinja (what `apply_chat_template` does)."""
        from transformers.utils.chat_template_utils import render_jinja_template

        rendered, _ = render_jinja_template(
            conversations=[to_hf_messages(normalize_messages(messages))],
            tools=tools,
            chat_template=self.to_jinja(),
            add_generation_prompt=add_generation_prompt,
            bos_token=self.bos,
            eos_token=self.eos,
            **self.special_tokens,
        )
        return rendered[0]

    def to_jinja(self) -> str:
        """A jinja `chat_template` that renders what `render` renders (OpenAI-shaped messages)."""
        if self.jinja is not None:
            return self.jinja
        # A BOS written only for tokenizers that add one is resolved now, for the tokenizer bound.
        return _to_jinja(self.spec, bos=self.bos if self.spec.get("bos_only_if_added") else None)

    @property
    def stop(self) -> str:
        """The end-of-turn text that ends a reply (generation should stop there)."""
        if self.jinja is not None:
            return self.eos
        return _fill(self.spec.get("end", ""), self.bos, self.eos) or self.eos


def names() -> list[str]:
    """Names `get` accepts: the built-ins and `tokenizer`."""
    return [*BUILTINS, TOKENIZER]


def get(name: str | dict[str, Any] = TOKENIZER, tokenizer: Any = None) -> Template:
    """A template by name, or from a user dict (template keys, or {"jinja": source}).

    With a tokenizer, BOS/EOS are the tokenizer's; `tokenizer` (the default) is the tokenizer's own
    jinja `chat_template` and needs one.
    """
    if isinstance(name, dict):
        spec = dict(name)
        tname = str(spec.pop("name", "custom"))
        if "jinja" in spec:
            return _bind(Template(tname, jinja=spec["jinja"]), tokenizer)
        missing = [key for key in ("user", "assistant") if key not in spec]
        if missing:
            raise TemplateError(f"template {tname!r}: missing {', '.join(missing)}; a template needs at least "
                                "'user' and 'assistant' formats with {content}, or 'jinja'")
        spec.setdefault("system", "{content}")
        return _bind(Template(tname, spec=_checked(tname, spec)), tokenizer)
    key = ALIASES.get(name, name)
    if key == TOKENIZER:
        source = getattr(tokenizer, "chat_template", None) if tokenizer is not None else None
        if not source:
            raise TemplateError(
                "template 'tokenizer' needs a tokenizer with a chat_template; this model has none. "
                f"Pick a built-in with --template (one of {', '.join(BUILTINS)})"
            )
        if isinstance(source, dict):
            source = source.get("default") or next(iter(source.values()))
        return _bind(Template(TOKENIZER, jinja=source), tokenizer)
    if key not in BUILTINS:
        raise TemplateError(f"unknown template {name!r}; known: {', '.join(names())}")
    return _bind(Template(key, spec=_checked(key, BUILTINS[key])), tokenizer)


def default_for(tokenizer: Any) -> Template:
    """The model's own template when it has one, else ChatML."""
    return get(TOKENIZER if getattr(tokenizer, "chat_template", None) else "chatml", tokenizer)


def save_to_tokenizer(template: Template, tokenizer: Any) -> None:
    """Make inference use exactly the training template: set `tokenizer.chat_template` to its jinja."""
    tokenizer.chat_template = template.to_jinja()


def _checked(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    assistant, prompt = spec["assistant"], spec.get("generation_prompt")
    if prompt is None:
        prompt = assistant.split("{content}")[0]
        spec = {**spec, "generation_prompt": prompt}
    if "{content}" not in assistant or not assistant.startswith(prompt):
        raise TemplateError(f"template {name!r}: 'assistant' must contain {{content}} and start with "
                            f"'generation_prompt' ({prompt!r}), got {assistant!r}")
    tail = assistant.split("{content}", 1)[1]
    if not tail.startswith(spec.get("end", "")):
        raise TemplateError(f"template {name!r}: 'end' ({spec.get('end')!r}) must follow {{content}} in "
                            f"'assistant' ({assistant!r})")
    return spec


def _bind(template: Template, tokenizer: Any) -> Template:
    from dataclasses import replace

    if tokenizer is None:
        return replace(template, bos=template.spec.get("bos", ""), eos=template.spec.get("eos", ""))
    special = {}
    for attr in ("unk_token", "pad_token", "sep_token", "cls_token", "mask_token"):
        value = getattr(tokenizer, attr, None)
        if isinstance(value, str):
            special[attr] = value
    bos = tokenizer.bos_token or ""
    if bos and template.spec.get("bos_only_if_added"):
        bos_id = tokenizer.bos_token_id
        with_special = tokenizer("a")["input_ids"]
        bos = bos if with_special and with_special[0] == bos_id else ""
    return replace(template, bos=bos, eos=tokenizer.eos_token or "", special_tokens=special)


# --- messages -------------------------------------------------------------------------------------


def normalize_messages(messages: Iterable[Any]) -> list[dict[str, Any]]:
    """Messages as dicts {role, content, train, weight} in the sftune schema.

    Accepts `Message` objects, schema dicts and OpenAI dicts (assistant + `tool_calls` becomes an
    assistant message, when it has text, followed by one `tool_call` message).
    """
    if hasattr(messages, "messages"):  # a Conversation
        messages = messages.messages
    out: list[dict[str, Any]] = _Normalized()
    for i, m in enumerate(messages):
        if isinstance(m, Message):
            out.append({"role": m.role, "content": m.content, "train": m.train, "weight": m.weight})
            continue
        if not isinstance(m, dict) or "role" not in m:
            raise TemplateError(f"messages[{i}] is {m!r}; each message needs a role and content, "
                                'e.g. {"role": "user", "content": "hi"}')
        role, content = m["role"], m.get("content")
        calls = m.get("tool_calls")
        if role == "assistant" and calls:
            if content:
                out.append({"role": "assistant", "content": content, "train": m.get("train"), "weight": m.get("weight")})
            parsed = [_call_dict(c) for c in calls]
            out.append({"role": "tool_call", "content": json.dumps(parsed[0] if len(parsed) == 1 else parsed,
                                                                  ensure_ascii=False),
                        "train": m.get("train"), "weight": m.get("weight")})
            continue
        if role not in ROLES:
            raise TemplateError(f"messages[{i}].role is {role!r}; use one of {', '.join(ROLES)}")
        if not isinstance(content, str):
            raise TemplateError(f"messages[{i}].content is {type(content).__name__}; it must be text")
        out.append({"role": role, "content": content, "train": m.get("train"), "weight": m.get("weight")})
    return out


def _normalized(messages: Any) -> bool:
    """True for the list `normalize_messages` returns (tagged so it is not normalized twice)."""
    return isinstance(messages, _Normalized)


class _Normalized(list):
    pass


def _call_dict(call: Any) -> dict[str, Any]:
    function = call.get("function", call) if isinstance(call, dict) else None
    if not isinstance(function, dict) or "name" not in function:
        raise TemplateError(f"tool call {call!r} has no function name")
    arguments = function.get("arguments", {})
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments) if arguments.strip() else {}
        except json.JSONDecodeError:
            raise TemplateError(f"tool call {function['name']!r}: arguments are not valid JSON") from None
    return {"name": function["name"], "arguments": arguments}


def tool_calls(message_content: str) -> list[dict[str, Any]]:
    """The calls in a `tool_call` message: a list of {"name", "arguments"}."""
    try:
        value = json.loads(message_content)
    except json.JSONDecodeError:
        raise TemplateError(f"tool_call content is not JSON: {message_content[:80]!r}; write "
                            '{"name": ..., "arguments": {...}}') from None
    calls = value if isinstance(value, list) else [value]
    return [_call_dict(c) for c in calls]


def to_hf_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The OpenAI / Hugging Face shape that jinja chat templates expect (tool calls merged into the turn)."""
    out: list[dict[str, Any]] = []
    for m in messages:
        if m["role"] == "tool_call":
            calls = [{"type": "function", "function": c} for c in tool_calls(m["content"])]
            previous = out[-1] if out else None
            if previous is not None and previous["role"] == "assistant":
                previous.setdefault("tool_calls", []).extend(calls)
            else:
                out.append({"role": "assistant", "content": None, "tool_calls": calls})
        else:
            out.append({"role": m["role"], "content": m["content"]})
    return out


# --- built-in rendering ---------------------------------------------------------------------------


def _fill(fmt: str, bos: str, eos: str) -> str:
    return fmt.replace("{bos}", bos).replace("{eos}", eos)


def _put(fmt: str, **values: str) -> str:
    """Substitute {content}-style placeholders in one pass, so text inside messages is never re-read."""
    if len(values) == 1 and "content" in values:  # the common case, without a regex: same result
        return values["content"].join(fmt.split("{content}"))
    return _PLACEHOLDER.sub(lambda m: values.get(m.group(1), m.group(0)), fmt)


_PLACEHOLDER = re.compile(r"\{(system|instruction|input|content)\}")


def _tojson(value: Any, indent: int | None = None) -> str:
    return json.dumps(value, ensure_ascii=False, indent=indent)


def _check_single_call(name: str, msgs: list[dict], i: int, n_calls: int) -> None:
    """Llama 3.1's template renders one tool call per assistant turn, and only the call.

    It raises on parallel calls and drops the text of a turn that has text and a call; a training text
    it cannot render is refused here rather than rendered in a layout inference never shows.
    """
    before = msgs[i - 1]["role"] if i else None
    if n_calls > 1 or before == "tool_call":
        where = f"message {i} holds {n_calls} tool calls" if n_calls > 1 else \
            f"messages {i - 1} and {i} are two tool calls in one assistant turn"
        raise TemplateError(f"template {name!r}: {where}; Llama 3.1's template allows one call per turn (it "
                            "raises 'This model only supports single tool-calls at once!'). Put each call in its "
                            "own turn after the previous call's result, or use a template with parallel calls "
                            "(qwen2.5, chatml)")
    if before == "assistant":
        raise TemplateError(f"template {name!r}: messages {i - 1} and {i} are assistant text and a tool call in "
                            "one turn; Llama 3.1's template renders only the call and drops the text. Remove "
                            "the text, or use a template that keeps both (qwen2.5, chatml)")


_COMPILED: dict[int, tuple[Template, dict[str, str]]] = {}


def _compiled(t: Template) -> dict[str, str]:
    """The template's formats with BOS/EOS filled in, computed once per Template."""
    hit = _COMPILED.get(id(t))
    if hit is None or hit[0] is not t:
        keys = ("prefix", "system", "system_in_user", "user", "user_with_input", "assistant", "generation_prompt",
                "end", "suffix", "tool")
        formats = {key: _fill(t.spec.get(key) or "", t.bos, t.eos) for key in keys}
        prompt, end = formats["generation_prompt"], formats["end"]
        formats["reply_head"], tail = formats["assistant"][len(prompt):].split("{content}", 1)
        formats["after_end"] = tail[len(end):]
        hit = _COMPILED[id(t)] = (t, formats)
    return hit[1]


def _builtin_segments(t: Template, msgs: list[dict], tools: list[dict] | None,
                      add_generation_prompt: bool) -> list[Segment]:
    s = t.spec
    formats = _compiled(t)
    f = formats.__getitem__
    strip = s.get("strip")
    style = s.get("tools")
    fold_system = s.get("system") is None
    segs: list[Segment] = []

    def add(text: str, index: int | None, body: bool) -> None:
        if text:
            segs.append((text, index, body))

    add(f("prefix"), None, False)
    start = 0
    system_text, system_index = s.get("default_system"), None
    if msgs and msgs[0]["role"] == "system":
        system_text, system_index, start = msgs[0]["content"], 0, 1
    if strip == "content" and system_text is not None and not fold_system:
        system_text = system_text.strip()
    first_user = next((i for i in range(start, len(msgs)) if msgs[i]["role"] == "user"), None)
    if (system_index is None and s.get("default_system_with_input") and first_user is not None
            and "\n\n" in msgs[first_user]["content"]):
        system_text = s["default_system_with_input"]

    if style == "qwen" and tools:
        text = "<|im_start|>system\n" + (system_text + "\n\n" if system_text is not None else "") + _QWEN_TOOLS_INTRO
        text += "".join("\n" + _tojson(tool) for tool in tools) + _QWEN_TOOLS_OUTRO
        add(text, system_index, True)
    elif style == "llama3" and s.get("dated_system"):
        text = "<|start_header_id|>system<|end_header_id|>\n\n" + ("Environment: ipython\n" if tools else "")
        add(text + _LLAMA31_DATE + (system_text or "") + "<|eot_id|>", system_index, True)
    elif fold_system:
        if system_text is not None and first_user is None:
            raise TemplateError(f"template {t.name!r} puts the system prompt into the first user turn, "
                                "and this conversation has no user turn")
    elif system_text is not None and not (s.get("skip_empty_system") and not system_text):
        add(_put(f("system"), content=system_text), system_index, True)

    prompt, end, reply_head, after_end = f("generation_prompt"), f("end"), f("reply_head"), f("after_end")

    def model_turn(parts: list[tuple[int, str]]) -> None:
        """prompt | reply_head + parts joined + end (the body, trained) | what follows end."""
        add(prompt, parts[0][0], False)
        for k, (j, text) in enumerate(parts):
            add(reply_head + text if k == 0 else text, j, True)
        add(end, parts[-1][0], True)
        add(after_end, parts[-1][0], False)

    def content_of(m: dict) -> str:
        return m["content"].strip() if strip else m["content"]

    i = start
    while i < len(msgs):
        m = msgs[i]
        role, content = m["role"], m["content"]
        if role == "user":
            text = content.strip() if strip == "content" else content
            if style == "llama3" and tools and i == first_user:
                text = _LLAMA3_TOOLS_INTRO + "".join(_tojson(tool, 4) + "\n\n" for tool in tools) + text
            values = {"content": text}
            user_fmt = f("user")
            if s.get("user_with_input") and "\n\n" in text:
                instruction, extra = text.split("\n\n", 1)
                user_fmt, values = f("user_with_input"), {"instruction": instruction, "input": extra}
            elif fold_system and i == first_user and system_text is not None:
                values["content"] = _put(f("system_in_user"), system=system_text, content=text)
            if strip == "turn":
                values["content"] = values["content"].strip()
            add(_put(user_fmt, **values), i, True)
            i += 1
        elif role in MODEL_ROLES and style == "qwen":
            # One turn: an optional assistant text and the tool calls right after it, joined by newlines.
            parts: list[tuple[int, str]] = []
            j = i
            while j < len(msgs) and (j == i or msgs[j]["role"] == "tool_call"):
                if msgs[j]["role"] == "tool_call":
                    calls = tool_calls(msgs[j]["content"])
                    parts.append((j, "\n".join("<tool_call>\n" + _tojson(c) + "\n</tool_call>" for c in calls)))
                elif msgs[j]["content"] or j + 1 == len(msgs) or msgs[j + 1]["role"] != "tool_call":
                    parts.append((j, msgs[j]["content"]))
                j += 1
            model_turn([(idx, ("\n" if k else "") + text) for k, (idx, text) in enumerate(parts)])
            i = j
        elif role == "tool_call":
            calls = tool_calls(content)
            if style == "llama3":
                _check_single_call(t.name, msgs, i, len(calls))
            for call in calls:  # one turn per call
                if style == "llama3":
                    text = '{"name": "' + call["name"] + '", "parameters": ' + _tojson(call["arguments"]) + "}"
                else:
                    text = _tojson(call)
                model_turn([(i, text)])
            i += 1
        elif role == "assistant":
            model_turn([(i, content_of(m))])
            i += 1
        elif role == "tool":
            if style == "qwen":
                text = "" if i > 0 and msgs[i - 1]["role"] == "tool" else "<|im_start|>user"
                text += "\n<tool_response>\n" + content + "\n</tool_response>"
                if i + 1 == len(msgs) or msgs[i + 1]["role"] != "tool":
                    text += "<|im_end|>\n"
            elif style == "llama3":
                text = "<|start_header_id|>ipython<|end_header_id|>\n\n" + _tojson(content) + "<|eot_id|>"
            else:
                text = _put(f("tool") or f("user"), content=content)
            add(text, i, True)
            i += 1
        else:  # a system message after the first
            if fold_system:
                raise TemplateError(f"template {t.name!r} has no system turn; a system message is allowed "
                                    f"only first (message {i} is a system message)")
            add(_put(f("system"), content=content.strip() if strip == "content" else content), i, True)
            i += 1

    add(prompt if add_generation_prompt else f("suffix"), None, False)
    return segs


# --- jinja templates --------------------------------------------------------------------------------


_TWIN_OF: dict[tuple[str, str, str], tuple[Template | None, bool, bool]] = {}


def _twin(t: Template, msgs: list[dict], tools: list[dict] | None) -> Template | None:
    """The built-in that renders exactly what jinja template `t` renders for `msgs`, or None."""
    if not msgs:
        return None
    key = (t.jinja, t.bos, t.eos)
    if key not in _TWIN_OF:
        digest = hashlib.sha256(t.jinja.encode("utf-8")).hexdigest()
        name = _TWINS.get(digest)
        twin = None if name is None else Template(t.name, spec=_checked(name, BUILTINS[name]), bos=t.bos,
                                                   eos=t.eos, special_tokens=t.special_tokens)
        _TWIN_OF[key] = (twin, digest not in _REFUSES_SYSTEM, digest in _TOOL_TWINS)
    twin, system_ok, tools_ok = _TWIN_OF[key]
    if twin is None or (tools and not tools_ok):
        return None
    first = 1 if system_ok and msgs[0]["role"] == "system" else 0
    if tools_ok:  # a user turn first, then any turns but a system message
        if first == len(msgs) or msgs[first]["role"] != "user":
            return None
        return twin if all(m["role"] != "system" for m in msgs[first:]) else None
    for k in range(first, len(msgs)):
        if msgs[k]["role"] != ("user" if (k - first) % 2 == 0 else "assistant"):
            return None
    return twin


def _hf_with_owners(msgs: list[dict]) -> tuple[list[dict], list[int]]:
    """OpenAI-shaped messages and, for each, the index of the last sftune message it holds."""
    hf = to_hf_messages(msgs)
    owners, k = [], -1
    for i, m in enumerate(msgs):
        if not (m["role"] == "tool_call" and hf[k]["role"] == "assistant" and k >= 0 and hf[k].get("tool_calls")
                and len(owners) == k + 1):
            k += 1
            owners.append(i)
        else:
            owners[k] = i
    if len(owners) != len(hf):  # pragma: no cover - to_hf_messages and this walk agree by construction
        raise TemplateError("internal error: message mapping")
    return hf, owners


def _jinja_render(t: Template, chats: list[list[dict]], tools: list[dict] | None,
                  add_generation_prompt: bool) -> list[str]:
    """Render several conversations in one call to transformers' renderer (its per-call work is paid once)."""
    from transformers.utils.chat_template_utils import render_jinja_template

    if not chats:
        return []
    rendered, _ = render_jinja_template(conversations=chats, tools=tools, chat_template=t.jinja,
                                        add_generation_prompt=add_generation_prompt, bos_token=t.bos,
                                        eos_token=t.eos, **t.special_tokens)
    return rendered


def _boundary(t: Template, rendered: str, full: str) -> tuple[int, str]:
    """Where a prefix render ends inside the full render.

    A prefix-stable template renders a prefix of the full text. A template that closes every render
    with a suffix (Phi-3 appends EOS) does not; the suffix is dropped before matching, never matched
    by common characters (EOS and the next turn's header can share a start like "<|").
    """
    if full.startswith(rendered):
        return len(rendered), ""
    for closing in (t.eos, t.eos + "\n", "\n"):
        if closing and rendered.endswith(closing) and full.startswith(rendered[: -len(closing)]):
            return len(rendered) - len(closing), closing
    raise TemplateError(f"template {t.name!r} is not prefix-stable (rendering the first messages gives text the "
                        "whole conversation does not start with), so its spans cannot be found. "
                        "Use a built-in template (--template)")


_SUFFIX_OF: dict[tuple[str, str, str], str | None] = {}


def _closing_suffix(t: Template, seen: str) -> str:
    """The text a template writes after the last message of every render (Phi-3's EOS), or "".

    Found once per template from a probe: a template without one renders [user] as a prefix of
    [user, assistant]. A render that merely is no prefix of a longer one (Qwen closes a run of tool
    results only after the last of them) says nothing about the end. If the probe cannot be
    rendered, the closing seen in this conversation's prefix renders is used.
    """
    key = (t.jinja, t.bos, t.eos)
    if key not in _SUFFIX_OF:
        probe = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]
        try:
            short, long = _jinja_render(t, [probe[:1], probe], None, False)
            _SUFFIX_OF[key] = "" if long.startswith(short) else _boundary(t, short, long)[1]
        except Exception:  # jinja raises anything; a template this probe does not suit keeps the old rule
            _SUFFIX_OF[key] = None
    suffix = _SUFFIX_OF[key]
    return seen if suffix is None else suffix


def _jinja_segments(t: Template, msgs: list[dict], tools: list[dict] | None,
                    add_generation_prompt: bool) -> list[Segment]:
    """Segments of a jinja template from renders of growing prefixes of the conversation.

    Message k spans from where the render of messages[:k] stops agreeing with the full render to where
    the render of messages[:k+1] does. A reply starts where the render of messages[:k] with the
    generation prompt stops agreeing; its body ends before trailing whitespace (ChatML's newline).
    """
    hf, owners = _hf_with_owners(msgs)
    try:
        # Without a generation prompt the full render is also the render of the longest prefix.
        if add_generation_prompt:
            full = _jinja_render(t, [hf], tools, True)[0]
            prefixes = _jinja_render(t, [hf[:k] for k in range(1, len(hf) + 1)], tools, False)
        else:
            full, *shorter = _jinja_render(t, [hf] + [hf[:k] for k in range(1, len(hf))], tools, False)
            prefixes = shorter + [full] if hf else []
        ends = [_boundary(t, rendered, full) for rendered in prefixes]
        closing = _closing_suffix(t, next((c for _, c in ends if c), ""))
        bounds = [0] + [end for end, _ in ends]
        if closing and not add_generation_prompt and full.endswith(closing):
            bounds[-1] -= len(closing)  # the closing suffix belongs to the template, not to the last turn
        replies = [k for k, m in enumerate(hf) if m["role"] == "assistant"]
        later = [k for k in replies if k]
        prompts = _jinja_render(t, [hf[:k] for k in later], tools, True)
        starts = {k: 0 for k in replies}  # a reply that opens the conversation starts at 0
        starts.update((k, _boundary(t, rendered, full)[0]) for k, rendered in zip(later, prompts))
    except TemplateError:
        raise
    except Exception as err:  # jinja raises anything (raise_exception, undefined keys)
        try:
            _jinja_render(t, [hf], tools, add_generation_prompt)
        except Exception:
            raise TemplateError(f"template {t.name!r} cannot render this conversation: {err}") from err
        raise TemplateError(
            f"template {t.name!r} renders this conversation but not its first messages alone ({err}), so where "
            "each message starts cannot be found (Llama 3.x templates with tools and a system message do this). "
            "Use a built-in template with --template, e.g. llama3.1 or qwen2.5") from err
    segs: list[Segment] = []
    for k, m in enumerate(hf):
        lo, hi, owner = bounds[k], bounds[k + 1], owners[k]
        if hi < lo:
            raise TemplateError(f"template {t.name!r} renders message {owner} before the messages ahead of it; "
                                "its spans cannot be found. Use a built-in template (--template)")
        if k in starts:
            reply = min(max(starts[k], lo), hi)
            body_end = lo + len(full[lo:hi].rstrip()) if full[lo:hi].strip() else hi
            body_end = max(body_end, reply)
            segs += [(full[lo:reply], owner, False), (full[reply:body_end], owner, True), (full[body_end:hi], owner, False)]
        else:
            segs.append((full[lo:hi], owner, True))
    segs.append((full[bounds[-1]:], None, False))
    return [seg for seg in segs if seg[0]]


def _jinja_literal(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)


def _jinja_expr(fmt: str, bos: str | None = None, **variables: str) -> str:
    """A format string with {placeholders} as a jinja concatenation expression."""
    names = {"bos": "bos_token" if bos is None else _jinja_literal(bos), "eos": "eos_token", **variables}
    pieces = []
    for k, piece in enumerate(re.split(r"\{(bos|eos|content|system|instruction|input)\}", fmt)):
        if k % 2:
            pieces.append(names[piece])
        elif piece:
            pieces.append(_jinja_literal(piece))
    return " + ".join(pieces) if pieces else '""'


def _to_jinja(s: dict[str, Any], bos: str | None = None) -> str:
    """Generate the jinja chat_template of a built-in or user dict (mirrors `_builtin_segments`)."""
    strip, style, fold = s.get("strip"), s.get("tools"), s.get("system") is None
    trim = " | trim" if strip else ""
    out = ["{%- set ns = namespace(system=" + (_jinja_literal(s["default_system"]) if s.get("default_system")
                                              else "none") + ", start=0, first_user=-1) -%}",
           "{%- if messages and messages[0]['role'] == 'system' -%}{%- set ns.system = messages[0]['content'] -%}"
           "{%- set ns.start = 1 -%}{%- endif -%}",
           "{%- for m in messages -%}{%- if m['role'] == 'user' and ns.first_user < 0 -%}"
           "{%- set ns.first_user = loop.index0 -%}{%- endif -%}{%- endfor -%}"]
    if strip == "content" and not fold:
        out.append("{%- if ns.system is not none -%}{%- set ns.system = ns.system | trim -%}{%- endif -%}")
    if s.get("default_system_with_input"):
        out.append("{%- if ns.start == 0 and ns.first_user >= 0 and '\\n\\n' in messages[ns.first_user]['content'] -%}"
                   "{%- set ns.system = " + _jinja_literal(s["default_system_with_input"]) + " -%}{%- endif -%}")
    out.append("{{- " + _jinja_expr(s.get("prefix") or "", bos=bos) + " -}}")
    if style == "qwen":
        out.append("{%- if tools -%}{{- '<|im_start|>system\\n' -}}"
                   "{%- if ns.system is not none -%}{{- ns.system + '\\n\\n' -}}{%- endif -%}"
                   "{{- " + _jinja_literal(_QWEN_TOOLS_INTRO) + " -}}{%- for tool in tools -%}"
                   "{{- '\\n' + (tool | tojson) -}}{%- endfor -%}{{- " + _jinja_literal(_QWEN_TOOLS_OUTRO) + " -}}"
                   "{%- elif ns.system is not none -%}{{- " + _jinja_expr(s["system"], content="ns.system")
                   + " -}}{%- endif -%}")
    elif style == "llama3" and s.get("dated_system"):
        out.append("{{- '<|start_header_id|>system<|end_header_id|>\\n\\n' -}}{%- if tools -%}"
                   "{{- 'Environment: ipython\\n' -}}{%- endif -%}{{- " + _jinja_literal(_LLAMA31_DATE)
                   + " -}}{%- if ns.system is not none -%}{{- ns.system -}}{%- endif -%}{{- '<|eot_id|>' -}}")
    elif fold:
        pass
    else:
        cond = "ns.system" if s.get("skip_empty_system") else "ns.system is not none"
        out.append("{%- if " + cond + " -%}{{- " + _jinja_expr(s["system"], content="ns.system") + " -}}{%- endif -%}")

    prompt, end = s.get("generation_prompt", ""), s.get("end", "")
    reply_head, reply_tail = s["assistant"][len(prompt):].split("{content}", 1)
    turn = lambda text_expr: _jinja_expr(prompt + reply_head) + " + " + text_expr + " + " + _jinja_expr(reply_tail)  # noqa: E731
    call_text = ('\'{"name": "\' + c.name + \'", "parameters": \' + (c.arguments | tojson) + \'}\''
                 if style == "llama3" else '({"name": c.name, "arguments": c.arguments} | tojson)')

    out.append("{%- for m in messages[ns.start:] -%}{%- set i = loop.index0 + ns.start -%}")
    # user
    user = ["{%- if m['role'] == 'user' -%}{%- set text = m['content']" + (" | trim" if strip == "content" else "") + " -%}"]
    if style == "llama3":
        user.append("{%- if tools and i == ns.first_user -%}{%- set acc = namespace(text="
                    + _jinja_literal(_LLAMA3_TOOLS_INTRO) + ") -%}{%- for tool in tools -%}"
                    "{%- set acc.text = acc.text + (tool | tojson(indent=4)) + '\\n\\n' -%}{%- endfor -%}"
                    "{%- set text = acc.text + (m['content'] | trim) -%}{%- endif -%}")
    if s.get("user_with_input"):
        user.append("{%- if '\\n\\n' in text -%}{%- set parts = text.split('\\n\\n', 1) -%}{{- "
                    + _jinja_expr(s["user_with_input"], instruction="parts[0]", input="parts[1]") + " -}}{%- else -%}")
    if fold:
        user.append("{%- if i == ns.first_user and ns.system is not none -%}{%- set text = "
                    + _jinja_expr(s["system_in_user"], system="ns.system", content="text") + " -%}{%- endif -%}")
    user.append("{{- " + _jinja_expr(s["user"], content="text" + (" | trim" if strip == "turn" else "")) + " -}}")
    if s.get("user_with_input"):
        user.append("{%- endif -%}")
    out += user
    # model turns
    if style == "qwen":
        out.append("{%- elif m['role'] == 'assistant' -%}{{- " + _jinja_expr(prompt + reply_head) + " -}}"
                   "{%- set ns2 = namespace(sep='') -%}"
                   "{%- if m['content'] or not m.tool_calls -%}{{- m['content'] or '' -}}{%- set ns2.sep = '\\n' -%}{%- endif -%}"
                   "{%- for tc in m.tool_calls or [] -%}{%- set c = tc.function if tc.function is defined else tc -%}"
                   "{{- ns2.sep + '<tool_call>\\n{\"name\": \"' + c.name + '\", \"arguments\": ' + (c.arguments | tojson)"
                   " + '}\\n</tool_call>' -}}{%- set ns2.sep = '\\n' -%}{%- endfor -%}{{- "
                   + _jinja_expr(reply_tail) + " -}}")
    else:
        if style == "llama3":  # as Llama 3.1's template: one call per turn, and no text beside it
            out.append("{%- elif m['role'] == 'assistant' and m.tool_calls and (m.tool_calls | length > 1 "
                       "or m['content']) -%}{{- raise_exception('This template renders one tool call per "
                       "assistant turn, without text beside it') -}}")
        out.append("{%- elif m['role'] == 'assistant' -%}{%- if m['content'] or not m.tool_calls -%}{{- "
                   + turn("(m['content'] or '')" + trim) + " -}}{%- endif -%}"
                   "{%- for tc in m.tool_calls or [] -%}{%- set c = tc.function if tc.function is defined else tc -%}"
                   "{{- " + turn(call_text) + " -}}{%- endfor -%}")
    # tool results
    if style == "qwen":
        out.append("{%- elif m['role'] == 'tool' -%}{%- if i == 0 or messages[i - 1]['role'] != 'tool' -%}"
                   "{{- '<|im_start|>user' -}}{%- endif -%}{{- '\\n<tool_response>\\n' + m['content'] + "
                   "'\\n</tool_response>' -}}{%- if loop.last or messages[i + 1]['role'] != 'tool' -%}"
                   "{{- '<|im_end|>\\n' -}}{%- endif -%}")
    elif style == "llama3":
        out.append("{%- elif m['role'] == 'tool' -%}{{- '<|start_header_id|>ipython<|end_header_id|>\\n\\n' + "
                   "(m['content'] | tojson) + '<|eot_id|>' -}}")
    else:
        out.append("{%- elif m['role'] == 'tool' -%}{{- " + _jinja_expr(s.get("tool") or s["user"], content="m['content']")
                   + " -}}")
    # later system messages
    if fold:
        out.append("{%- elif m['role'] == 'system' -%}{{- raise_exception('a system message is allowed only first') -}}")
    else:
        out.append("{%- elif m['role'] == 'system' -%}{{- " + _jinja_expr(
            s["system"], content="(m['content']" + (" | trim" if strip == "content" else "") + ")") + " -}}")
    out.append("{%- endif -%}{%- endfor -%}")
    out.append("{%- if add_generation_prompt -%}{{- " + _jinja_expr(prompt) + " -}}{%- else -%}{{- "
               + _jinja_expr(s.get("suffix") or "") + " -}}{%- endif -%}")
    return "\n".join(out)
