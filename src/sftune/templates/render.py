"""The built-in renderer: a template dict and a conversation in, labelled segments out.

A segment is (text, index of the message it belongs to or None for the template's framing, body).
`body` marks the text a message contributes when it is trained: for a model turn, what the model
produces after the generation prompt (its content and end-of-turn marker); for any other message,
all of it. `sftune.encode` labels tokens from segments, so nothing searches the text for a marker.

Each tool style ("qwen", "llama3", "llama4") is a few small functions at the end of this file: its system
header, its calls and its tool results. `jinja_export` writes the same layout as jinja. A family whose
layout format strings cannot say (`layout`: Qwen3.5, GLM-4.5) has its turns here too, and exports its
official template text instead; gpt-oss's and Gemma 4's texts are in harmony.py and gemma4.py.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from sftune.data.toolcalls import tool_calls
from sftune.data.schema import MODEL_ROLES
from sftune.templates.definitions import (GLM_TOOLS_INTRO, GLM_TOOLS_OUTRO, LLAMA3_TOOLS_INTRO, LLAMA31_DATE,
                                          NO_THINK, QWEN35_TOOLS_INTRO, QWEN35_TOOLS_OUTRO, QWEN_TOOLS_INTRO,
                                          QWEN_TOOLS_OUTRO)
from sftune.templates import gemma4, harmony
from sftune.templates.errors import TemplateError

if TYPE_CHECKING:
    from sftune.templates.template import Template

# body: False (framing), True (trained with its message), or for a reasoning template's think block
# "think" / "empty_think" (truthy: trained like the body unless the reasoning options leave it out).
Segment = tuple[str, "int | None", "bool | str"]
THINK, EMPTY_THINK = "think", "empty_think"


def fill(fmt: str, bos: str, eos: str) -> str:
    """A format with the tokenizer's BOS / EOS text in place of {bos} / {eos}."""
    return fmt.replace("{bos}", bos).replace("{eos}", eos)


def render(t: Template, msgs: list[dict], tools: list[dict] | None, add_generation_prompt: bool) -> list[Segment]:
    """The segments of a built-in or user dict template for normalized messages."""
    turns = _Turns(t, msgs, tools, add_generation_prompt)
    turns.system_header()
    i = turns.start
    while i < len(msgs):
        i = turns.message(i)
    if add_generation_prompt:
        no_think = turns.no_think if t.spec.get("reasoning") else ""
        if not turns.continues():
            turns.add(turns.f["generation_prompt"] + turns.f["think_prompt"] + no_think, None, False)
    else:
        turns.add(turns.f["suffix"], None, False)
    return turns.segs


class _Turns:
    """One render: the template's formats, the system prompt decided up front, and the segments so far."""

    def __init__(self, t: Template, msgs: list[dict], tools: list[dict] | None, add_generation_prompt: bool = False):
        self.name, self.spec, self.f, self.msgs, self.tools = t.name, t.spec, _formats(t), msgs, tools
        self.style, self.strip, self.fold = t.spec.get("tools"), t.spec.get("strip"), t.spec.get("system") is None
        self.layout = t.spec.get("layout")
        self.segs: list[Segment] = []
        self._last_query: int | None = None
        self.opened = ""  # a header the previous reply wrote as its stop (GLM), not written again
        self.prompted = add_generation_prompt
        self.last_call: str | None = None  # Harmony: the function a tool result answers
        if t.spec.get("reasoning") == "deepseek_r1":
            _check_no_tools(t.name, msgs, tools)
        self.add(self.f["prefix"], None, False)
        self.start, self.system, self.system_index = 0, t.spec.get("default_system"), None
        if msgs and msgs[0]["role"] == "system":
            self.start, self.system, self.system_index = 1, msgs[0]["content"], 0
        if self.strip == "content" and self.system is not None and not self.fold:
            self.system = self.system.strip()
        self.first_user = next((i for i in range(self.start, len(msgs)) if msgs[i]["role"] == "user"), None)
        if (self.system_index is None and t.spec.get("default_system_with_input") and self.first_user is not None
                and "\n\n" in msgs[self.first_user]["content"]):
            self.system = t.spec["default_system_with_input"]

    def continues(self) -> bool:
        """Whether no generation prompt follows the conversation. Gemma 4: it ends in a model turn of calls, which
        the next reply runs on in (after the results). DeepSeek-V3.1: its last message other than a system one
        is no user message (the official template opens a reply only after one)."""
        if self.layout == "deepseek_v3.1":
            return next((m["role"] for m in reversed(self.msgs) if m["role"] != "system"), None) != "user"
        last = next((m["role"] for m in reversed(self.msgs) if m["role"] != "tool"), None)
        return self.layout == "gemma4" and last == "tool_call"

    def add(self, text: str, index: int | None, body: bool) -> None:
        if text:
            self.segs.append((text, index, body))

    def system_header(self) -> None:
        """The opening system turn (or, when the template folds it into the first user turn, nothing)."""
        system, s = self.system, self.spec
        if self.layout == "qwen3.5":
            self.last_query(0)  # its template raises on a conversation without a user query, whatever follows
            skip = s.get("skip_empty_system") and not (system or "").strip()  # Qwen3.8 at reasoning effort medium
            self.add(_qwen35_system(None if skip else system, self.tools, s.get("reasoning_instructions")),
                     self.system_index, True)
        elif self.layout == "nemotron3":
            self.add("<|im_start|>system\n" + (system or "") + _nemotron_tools(system, self.tools) + "<|im_end|>\n",
                     self.system_index, True)
        elif self.layout == "harmony":
            self.add(harmony.system_block(self.tools, s.get("reasoning_effort", "medium")), None, False)
            self.add(harmony.developer_block(system, self.tools), self.system_index, True)
        elif self.layout == "llama4":
            self.llama4_system()
        elif self.layout == "gemma4" and self.tools:
            self.add("<|turn>system\n" + (system or "").strip() + gemma4.declarations(self.tools) + "<turn|>\n",
                     self.system_index, True)
        elif self.layout == "mistral":
            if system is not None and s["mistral"] != "v3":
                self.add(_put(self.f["system"], content=system), self.system_index, True)
        elif self.layout == "deepseek_v3.1":  # every system message, wherever it is, joined by blank lines
            systems = [k for k, m in enumerate(self.msgs) if m["role"] == "system"]
            for n, k in enumerate(systems):
                self.add(("\n\n" if n else "") + self.msgs[k]["content"], k, True)
        elif self.layout == "glm4.5":
            self.add(_glm_tools(self.tools) + ("" if system is None else _put(self.f["system"], content=system)),
                     self.system_index, True)
        elif self.style == "qwen" and self.tools:
            self.add(_qwen_system_with_tools(system, self.tools), self.system_index, True)
        elif self.style == "llama3" and s.get("dated_system"):
            self.add(_llama31_system(system, self.tools), self.system_index, True)
        elif self.fold:
            if system is not None and self.first_user is None:
                raise TemplateError(f"template {self.name!r} puts the system prompt into the first user turn, "
                                    "and this conversation has no user turn")
        elif system is not None and not (s.get("skip_empty_system") and not system):
            self.add(_put(self.f["system"], content=system), self.system_index, True)

    def message(self, i: int) -> int:
        """Render the message at i (a qwen model turn takes the tool calls after it too); the next index."""
        role = self.msgs[i]["role"]
        if role == "user":
            self.user(i)
        elif role in MODEL_ROLES and self.layout == "qwen3.5":
            return self.qwen35_model_turn(i)
        elif role in MODEL_ROLES and self.layout == "glm4.5":
            return self.glm_model_turn(i)
        elif role in MODEL_ROLES and self.layout == "harmony":
            return self.harmony_model_turn(i)
        elif role in MODEL_ROLES and self.layout == "nemotron3":
            return self.nemotron_model_turn(i)
        elif role in MODEL_ROLES and self.layout == "mistral":
            return self.mistral_model_turn(i)
        elif role in MODEL_ROLES and self.layout == "gemma4":
            return self.gemma4_model_turn(i)
        elif role in MODEL_ROLES and self.layout == "llama4":
            return self.llama4_model_turn(i)
        elif self.layout == "deepseek_v3.1" and role == "system":
            pass  # written at the top with the other system messages
        elif role in MODEL_ROLES and self.layout == "deepseek_v3.1":
            return self.deepseek_v31_model_turn(i)
        elif role in MODEL_ROLES and self.spec.get("reasoning") == "qwen3":
            return self.qwen3_model_turn(i)
        elif role == "assistant" and self.spec.get("reasoning") == "deepseek_r1":
            self.deepseek_r1_model_turn(i)
        elif role in MODEL_ROLES and self.style == "qwen":
            return self.qwen_model_turn(i)
        elif role == "tool_call":
            self.tool_call(i)
        elif role == "assistant":
            content = self.msgs[i]["content"]
            self.model_turn([(i, content.strip() if self.strip else content)])
        elif role == "tool":
            self.tool_result(i)
        else:
            self.later_system(i)
        return i + 1

    def user(self, i: int) -> None:
        text, f = self.msgs[i]["content"], self.f
        if self.layout == "mistral":
            self.add(_mistral_user(self, i), i, True)
            return
        if self.strip == "content":
            text = text.strip()
        text = self.switched_user(i, text)
        if self.style == "llama3" and self.tools and i == self.first_user:
            text = _llama3_tools_intro(self.tools) + text
        elif self.layout == "llama4" and self.tools is not None and i == self.start:
            text = _llama3_tools_intro(self.tools) + text.strip()
        user_fmt, values = f["user"], {"content": text}
        if self.spec.get("user_with_input") and "\n\n" in text:
            instruction, extra = text.split("\n\n", 1)
            user_fmt, values = f["user_with_input"], {"instruction": instruction, "input": extra}
        elif self.fold and i == self.first_user and self.system is not None:
            values["content"] = _put(f["system_in_user"], system=self.system, content=text)
        if self.strip == "turn":
            values["content"] = values["content"].strip()
        self.add(self.after_stop(_put(user_fmt, **values)), i, True)

    def switched_user(self, i: int, text: str) -> str:
        """A user text with what a switch appends to it: GLM-4.5's "/nothink" to each (enable_thinking false,
        once), Nemotron 3's reasoning-effort line to the last (Super's low_effort, Ultra's medium_effort)."""
        every, last = self.spec.get("user_suffix"), self.spec.get("last_user_suffix")
        if every and not text.endswith(every):
            text += every
        if last and i == self.last_user():
            text += last
        return text

    def after_stop(self, text: str) -> str:
        """A turn's text without the header that the reply before it wrote (and trained) as its stop."""
        opened, self.opened = self.opened, ""
        return text[len(opened):] if opened and text.startswith(opened) else text

    def model_turn(self, parts: list[tuple[int, str]]) -> None:
        """prompt | reply head + the parts + end (the body, trained) | what the format writes after end."""
        f = self.f
        self.add(f["generation_prompt"], parts[0][0], False)
        for k, (j, text) in enumerate(parts):
            self.add(f["reply_head"] + text if k == 0 else text, j, True)
        self.add(f["end"], parts[-1][0], True)
        self.add(f["after_end"], parts[-1][0], False)

    def tool_call(self, i: int) -> None:
        """A tool_call message in a style without joined turns: one model turn per call."""
        calls = tool_calls(self.msgs[i]["content"])
        if self.style == "llama3":
            _check_single_call(self.name, self.msgs, i, len(calls))
        for call in calls:
            self.model_turn([(i, _llama3_call(call) if self.style == "llama3" else _tojson(call))])

    def qwen_model_turn(self, i: int) -> int:
        """An optional assistant text and the tool calls right after it: one turn, parts joined by newlines."""
        msgs, parts, j = self.msgs, [], i
        while j < len(msgs) and (j == i or msgs[j]["role"] == "tool_call"):
            if msgs[j]["role"] == "tool_call":
                parts.append((j, _qwen_calls(tool_calls(msgs[j]["content"]))))
            elif msgs[j]["content"] or j + 1 == len(msgs) or msgs[j + 1]["role"] != "tool_call":
                parts.append((j, msgs[j]["content"]))
            j += 1
        self.model_turn([(index, ("\n" if k else "") + text) for k, (index, text) in enumerate(parts)])
        return j

    def qwen3_model_turn(self, i: int) -> int:
        """Qwen3: a reply's leading <think> block is written only after the last user query (and always,
        empty if need be, on the last message); its tool calls follow in the same turn."""
        msgs, f = self.msgs, self.f
        j, content, reasoning = self.reply_and_reasoning(i)
        self.add(f["generation_prompt"], i, False)
        if i > self.last_query(i) and (j == len(msgs) or reasoning):
            inner = (reasoning or "").strip("\n")
            self.add("<think>\n" + inner + "\n</think>\n\n", i, THINK if inner else EMPTY_THINK)
            self.add(content.lstrip("\n"), i, True)
        else:
            self.add(content, i, True)
        return self.calls_then_end(i, j, lambda n, call: ("\n" if n or content else "") + "<tool_call>\n"
                                   + _qwen3_call(call) + "\n</tool_call>")

    def reply_and_reasoning(self, i: int) -> tuple[int, str, str | None]:
        """(where the model turn at i ends, its reply without a leading think block, that block's text or None)."""
        j = turn_end(self.msgs, i)
        content = self.msgs[i]["content"] if self.msgs[i]["role"] == "assistant" else ""
        reasoning, answer = split_think(content)
        return j, answer if reasoning is not None else content, reasoning

    def calls_then_end(self, i: int, j: int, written: Callable[[int, dict], str]) -> int:
        """The tool calls of the turn msgs[i:j], the n-th written as written(n, call), then the turn's end."""
        msgs, f = self.msgs, self.f
        calls = [(k, c) for k in range(i, j) if msgs[k]["role"] == "tool_call" for c in tool_calls(msgs[k]["content"])]
        for n, (k, call) in enumerate(calls):
            self.add(written(n, call), k, True)
        self.add(f["end"], j - 1, True)
        self.add(f["after_end"], j - 1, False)
        return j

    def deepseek_r1_model_turn(self, i: int) -> None:
        """DeepSeek-R1: a reply before the last message keeps only what follows its last </think> (the
        official template); the last reply is the think prompt, its reasoning block and its answer."""
        f, content = self.f, self.msgs[i]["content"]
        self.add(f["generation_prompt"], i, False)
        if i + 1 < len(self.msgs):
            self.add(content.split("</think>")[-1], i, True)
        else:
            reasoning, answer = split_think(content)
            inner = (reasoning or "").strip("\n")
            self.add(f["think_prompt"], i, False)
            self.add(inner + "\n</think>\n\n", i, THINK if inner else EMPTY_THINK)
            self.add(answer.lstrip("\n"), i, True)
        self.add(f["end"], i, True)
        self.add(f["after_end"], i, False)

    def deepseek_v31_model_turn(self, i: int) -> int:
        """DeepSeek-V3.1, as its official template writes a model turn. After a user message: "<｜Assistant｜></think>",
        then a reply is what follows its first </think>; with thinking on, the last reply follows the prompt's <think>
        as the model writes it: its reasoning (none when the data has none), </think>, the answer. A turn of calls:
        its text as it is, then <｜tool▁calls▁begin｜>, each call name<｜tool▁sep｜>JSON arguments, <｜tool▁calls▁end｜>
        (after a user message always "</think>" first, thinking on or off). After a tool result: no header, the
        reply as it is. Each turn ends with the end-of-sentence stop; the next index."""
        f, msgs, thinking = self.f, self.msgs, self.spec.get("reasoning") == "deepseek_v3.1"
        j, content = turn_end(msgs, i), msgs[i]["content"] if msgs[i]["role"] == "assistant" else ""
        before = next((m["role"] for m in reversed(msgs[:i]) if m["role"] != "system"), None)
        if before not in ("user", "tool"):
            kind = "an assistant message" if msgs[i]["role"] == "assistant" else "a tool call"
            raise TemplateError(f"template {self.name!r}: message {i} is {kind} that follows no user message or tool "
                                "result; DeepSeek-V3.1's template opens a reply (<｜Assistant｜>) only after a user "
                                "message and runs one on only after a result. Merge consecutive replies, or start the "
                                "conversation with a user message")
        if before == "user":
            self.add(f["generation_prompt"], i, False)
        if j > i + 1 or msgs[i]["role"] == "tool_call":  # calls: the text is written as it is
            if before == "user":
                self.add("</think>", i, EMPTY_THINK if thinking else False)
            self.add(content, i, True)
            for k in range(i, j):
                if msgs[k]["role"] == "tool_call":
                    opens = V31_CALLS_BEGIN if k == i + (msgs[i]["role"] == "assistant") else ""
                    self.add(opens + "".join(_v31_call(call) for call in tool_calls(msgs[k]["content"])), k, True)
            self.add(V31_CALLS_END, j - 1, True)
        elif before == "tool":  # the official template splits no think block here
            self.add(content, i, True)
        elif thinking and j == len(msgs):
            self.add(f["think_prompt"], i, False)
            reasoning, answer = content.split("</think>", 1) if "</think>" in content else ("", content)
            inner = reasoning.split("<think>", 1)[-1].strip("\n")
            self.add(inner + "</think>", i, THINK if inner else EMPTY_THINK)
            self.add(answer.lstrip("\n"), i, True)
        else:  # thinking on, the </think> is the model's (an empty think block); off, the prompt's
            self.add("</think>", i, EMPTY_THINK if thinking else False)
            self.add(content.split("</think>", 1)[1] if "</think>" in content else content, i, True)
        self.add(f["end"], j - 1, True)
        self.add(f["after_end"], j - 1, False)
        return j

    def qwen35_model_turn(self, i: int) -> int:
        """Qwen3.5: the trimmed reply; after the last user query its think block (empty if need be) opens
        it, the thinking prompt's <think>\n being the prompt's; then its <function=...> calls."""
        msgs, f = self.msgs, self.f
        j = turn_end(msgs, i)
        content = msgs[i]["content"] if msgs[i]["role"] == "assistant" else ""
        preserve = self.spec.get("preserve_thinking")
        # Qwen3.5 splits the trimmed reply; Qwen3.8 reads reasoning from its own field (here the <think>
        # block) and trims the answer
        reasoning, answer = split_think(content if preserve else content.strip())
        content = answer.strip() if preserve else answer
        self.add(f["generation_prompt"], i, False)
        if i > self.last_query(i) or preserve:
            inner = (reasoning or "").strip()
            self.think_block(i, "<think>\n" + inner + "\n</think>\n\n", bool(inner))
        self.add(content, i, True)
        return self.calls_then_end(i, j, lambda n, call: ("\n" if n else ("\n\n" if content.strip() else ""))
                                   + _qwen35_call(self.name, call, self.spec.get("arg_values")))

    def glm_model_turn(self, i: int) -> int:
        """GLM-4.5: a think block (kept after the last user message when it has reasoning, else empty), the
        trimmed answer, the calls; then the next turn's header when it is a stop (<|user|>, <|observation|>)."""
        msgs, f = self.msgs, self.f
        j, content, reasoning = self.reply_and_reasoning(i)
        inner = (reasoning or "").strip()
        self.add(f["generation_prompt"], i, False)
        kept = bool(inner) and i > self.last_user()
        self.think_block(i, "\n<think>" + inner + "</think>" if kept else "\n<think></think>", kept)
        self.add("\n" + content.strip() if content.strip() else "", i, True)
        for k in range(i, j):
            if msgs[k]["role"] == "tool_call":
                self.add("".join(_glm_call(self.name, call) for call in tool_calls(msgs[k]["content"])), k, True)
        following = msgs[j]["role"] if j < len(msgs) else None
        self.opened = {"user": "<|user|>", "tool": "<|observation|>"}.get(following, "")
        self.add(self.opened, j - 1, True)
        return j

    def harmony_model_turn(self, i: int) -> int:
        """gpt-oss: a call goes to the commentary channel, after its reasoning (or text) in the analysis
        channel unless a later final answer drops it; a reply is a final message, its reasoning kept and
        <|return|> written on the last message only (earlier ones end with <|end|>)."""
        msgs, f = self.msgs, self.f
        j = turn_end(msgs, i)
        content = msgs[i]["content"] if msgs[i]["role"] == "assistant" else ""
        reasoning, answer = split_think(content)
        calls = [(k, c) for k in range(i, j) if msgs[k]["role"] == "tool_call" for c in tool_calls(msgs[k]["content"])]
        self.add(f["generation_prompt"], i, False)
        if calls:
            if len(calls) > 1:
                raise TemplateError(f"template {self.name!r}: message {calls[1][0]} is a second tool call in one "
                                    "assistant turn; gpt-oss's template writes only the first call of a turn. Put "
                                    "each call in its own turn after the previous call's result")
            if reasoning and answer:
                raise TemplateError(f"template {self.name!r}: message {i} has reasoning and text beside a tool "
                                    "call; gpt-oss's template raises 'Cannot pass both content and thinking in an "
                                    "assistant message with tool calls!'. Keep one of them")
            final_later = any(msgs[k]["role"] == "assistant" and turn_end(msgs, k) == k + 1
                              for k in range(j, len(msgs)))
            if not final_later and (reasoning or answer):
                text = reasoning or answer
                self.add(harmony.ANALYSIS + text + "<|end|>" + f["generation_prompt"], i, THINK if reasoning else True)
            k, first = calls[0]
            self.add(harmony.call(first["name"], first["arguments"]), k, True)
            self.last_call = first["name"]
            return j
        if i + 1 == len(msgs) and not self.prompted:
            if reasoning is not None:
                self.add(harmony.ANALYSIS + reasoning + "<|end|>" + f["generation_prompt"], i,
                         THINK if reasoning else EMPTY_THINK)
            self.add(harmony.FINAL + answer, i, True)
            self.add(f["end"], i, True)
        else:
            self.add(harmony.FINAL + answer, i, True)
            self.add("<|end|>", i, True)
            self.last_call = None
        return j

    def nemotron_model_turn(self, i: int) -> int:
        """Nemotron 3: the trimmed reply, opening with its think block (<think></think> when it has none); a
        reply before the last user message keeps only its answer, after an empty block (unless its
        truncate_history_thinking switch is off); then its calls."""
        msgs, f = self.msgs, self.f
        j = turn_end(msgs, i)
        content = msgs[i]["content"] if msgs[i]["role"] == "assistant" else ""
        if "<think>" not in content and "</think>" not in content:
            content = "<think></think>" + content
        calls = [(k, c) for k in range(i, j) if msgs[k]["role"] == "tool_call" for c in tool_calls(msgs[k]["content"])]
        kept = i > self.last_user() or self.spec.get("preserve_thinking")  # truncate_history_thinking false
        if kept:
            text = content.strip()
        elif calls:
            rest = content.split("</think>")[-1] if "</think>" in content else content.split("<think>")[0]
            text = "<think></think>" + (rest.strip() if self.spec.get("trim_earlier_call_text", True) else rest)
        else:
            text = ("<think></think>" + content.split("</think>")[-1] if "<think>" in content and "</think>" in content
                    else content).strip()
        self.add(f["generation_prompt"], i, False)
        if text.startswith("<think>") and "</think>" in text:
            cut = text.index("</think>") + len("</think>")
            self.think_block(i, text[:cut], bool(text[len("<think>"):cut - len("</think>")].strip()))
            text = text[cut:]
        self.add(text + ("\n" if calls else ""), i, True)
        for k, call in calls:
            self.add(_qwen35_call(self.name, call, "python") + "\n", k, True)
        self.add(f["end"], j - 1, True)
        self.add(f["after_end"], j - 1, False)
        return j

    def llama4_system(self) -> None:
        """Llama 4: the first system message trimmed (with tools, after "Environment: ipython"); the tool list
        goes into the first message after it, which must be a user message (its template makes it one)."""
        if self.system is not None:
            self.add("<|header_start|>system<|header_end|>\n\n" + ("Environment: ipython\n" if self.tools is not None
                     else "") + self.system.strip() + "<|eot|>", self.system_index, True)
        if self.tools is not None and (self.start == len(self.msgs) or self.msgs[self.start]["role"] != "user"):
            where = ("the conversation has no message after the system message" if self.start == len(self.msgs)
                     else f"message {self.start} is a {self.msgs[self.start]['role']} message")
            raise TemplateError(f"template {self.name!r}: {where}; Llama 4's template puts the tool list into the "
                                "first user message, the first message after the system message (it raises "
                                "\"Cannot put tools in the first user message when there's no first user "
                                "message!\" or writes another message as the user's). Start the conversation with "
                                "a user message, or drop the tools from this record")

    def llama4_model_turn(self, i: int) -> int:
        """Llama 4: a reply as is; a turn with calls writes its text between <|python_start|> and <|python_end|>,
        then each call as JSON, no separator; <|eot|>."""
        j = turn_end(self.msgs, i)
        content = self.msgs[i]["content"] if self.msgs[i]["role"] == "assistant" else ""
        self.add(self.f["generation_prompt"], i, False)
        if j == i + 1 and self.msgs[i]["role"] == "assistant":
            self.add(content, i, True)
        else:
            self.add("<|python_start|>" + content + "<|python_end|>", i, True)
        return self.calls_then_end(i, j, lambda n, call: _llama3_call(call))

    def gemma4_model_turn(self, i: int) -> int:
        """Gemma 4: one model turn holds a reply's thought channel (after the last user message), its calls,
        the results of those calls (each named from its call), then its text; <turn|> ends it. A reply right
        after a model turn (the answer after the results) runs on in that turn, without a header. The model
        stops after its calls at <|tool_response>, trained with them; the results follow it."""
        msgs, f = self.msgs, self.f
        j = turn_end(msgs, i)
        calls = [(k, c) for k in range(i, j) if msgs[k]["role"] == "tool_call"
                 for c in tool_calls(msgs[k]["content"], ids=True)]
        n = j  # the results this turn takes in: the tool messages right after its calls
        while calls and n < len(msgs) and msgs[n]["role"] == "tool":
            n += 1
        results = range(j, n)
        reasoning, answer = split_think(msgs[i]["content"]) if msgs[i]["role"] == "assistant" else (None, "")
        before = next((msgs[k]["role"] for k in range(i - 1, self.start - 1, -1) if msgs[k]["role"] != "tool"), None)
        self.add("" if before in MODEL_ROLES else f["generation_prompt"], i, False)
        if reasoning and i > self.last_user():
            self.add(gemma4.THOUGHT_OPEN + reasoning + gemma4.THOUGHT_CLOSE, i, THINK)
        for k, call in calls:
            self.add(gemma4.call(self.name, call["name"], call["arguments"]), k, True)
        for r in results:
            named = "unknown"  # the template's name for a result no call answers; with no ids, the last call's
            for _, call in calls:
                if call.get("id") == msgs[r].get("tool_call_id"):
                    named = call["name"]
            self.add(gemma4.RESULT_OPEN, j - 1 if r == j else r, True)  # the first is the calls' stop
            self.add(gemma4.result(named, msgs[r]["content"]), r, True)
        text = "".join(part if "<|channel>" not in part else part.split("<|channel>")[0]
                       for part in answer.split("<channel|>")).strip()
        self.add(text, i, True)
        following = msgs[n]["role"] if n < len(msgs) else None
        if calls and not results:
            self.add(gemma4.RESULT_OPEN, j - 1, True)  # the stop after calls no result follows
        elif following in MODEL_ROLES:
            pass  # the next reply runs on in this turn
        elif text or not results:
            self.add(f["end"], i if text else j - 1, True)
            self.add(f["after_end"], i if text else j - 1, False)
        elif following is not None:  # results, then a user turn: the template closes the turn for it
            self.add(f["end"] + f["after_end"], None, False)
        return n

    def mistral_model_turn(self, i: int) -> int:
        """Mistral: the reply (v13: its [THINK] block first), trailing spaces cut as mistral-common cuts them, then
        its calls ([TOOL_CALLS] JSON list up to v7, [TOOL_CALLS]name[ARGS]... from v13), then </s>."""
        msgs, version = self.msgs, self.spec["mistral"]
        j = turn_end(msgs, i)
        content = msgs[i]["content"] if msgs[i]["role"] == "assistant" else ""
        reasoning = None
        if version == "v13":
            reasoning, content = split_think(content)
        calls = [(k, c) for k in range(i, j) if msgs[k]["role"] == "tool_call"
                 for c in tool_calls(msgs[k]["content"], ids=True)]
        content = content.rstrip(" ")
        if version == "v3" and content and calls:
            raise TemplateError(f"template {self.name!r}: message {i} has text beside tool calls; Mistral's tokenizer "
                                "v3 raises 'Cannot have tool calls and content defined in the same assistant "
                                "message'. Keep the text or the calls in that turn")
        if reasoning is not None:
            block = self.spec["think_open"] + reasoning + self.spec["think_close"]
            self.add(block, i, THINK if reasoning else EMPTY_THINK)
        if content:
            self.add(self.space + content, i, True)
        if calls and version == "v13":
            for k, call in calls:
                self.add("[TOOL_CALLS]" + call["name"] + "[ARGS]" + _tojson(_json_value(call["arguments"])), k, True)
        elif calls:
            listed = [{"name": c["name"], "arguments": _json_value(c["arguments"]),
                       **({"id": c["id"]} if c.get("id") and c["id"] != "null" else {})} for _, c in calls]
            self.add("[TOOL_CALLS]" + self.space + _tojson(listed), calls[0][0], True)
        self.add(self.f["end"], j - 1, True)
        return j

    @property
    def space(self) -> str:
        """What opens each text after a control token: the sentencepiece space (Mistral v3), else nothing."""
        return " " if self.spec.get("spaced") else ""

    @property
    def no_think(self) -> str:
        """The empty think block that a no-think mode's generation prompt closes (enable_thinking false), else ""."""
        return self.spec.get("no_think", NO_THINK) if self.spec.get("enable_thinking") is False else ""

    def think_block(self, i: int, block: str, reasoning: bool) -> None:
        """A reply's think block: what the generation prompt already holds of it (Qwen3.5's `<think>\n`, a
        no-think mode's whole empty block: Qwen3.5's, GLM-4.5's, Nemotron 3's) is framing; the rest a think /
        empty-think segment."""
        prompt = self.f["think_prompt"] + self.no_think
        held = len(os.path.commonprefix([prompt, block]))
        self.add(block[:held], i, False)
        self.add(block[held:], i, THINK if reasoning else EMPTY_THINK)

    def last_user(self) -> int:
        """GLM-4.5's last_user_index: the last user message, -1 without one."""
        return max((k for k, m in enumerate(self.msgs) if m["role"] == "user"), default=-1)

    def last_query(self, i: int) -> int:
        """Qwen3's last_query_index, as an index into msgs (see `last_query`)."""
        if self._last_query is None:
            self._last_query = _qwen35_last_query(self.name, self.msgs) if self.layout == "qwen3.5" \
                else last_query(self.msgs)
        return self._last_query

    def tool_result(self, i: int) -> None:
        content = self.msgs[i]["content"]
        if self.layout == "qwen3.5":
            text = _qwen35_result(self.msgs, i)
        elif self.layout == "nemotron3":
            opens = i > self.start and self.msgs[i - 1]["role"] != "tool"  # a result first opens no turn
            closes = i + 1 == len(self.msgs) or self.msgs[i + 1]["role"] != "tool"
            text = ("<|im_start|>user\n" if opens else "") + "<tool_response>\n" + content + "\n</tool_response>\n" \
                + ("<|im_end|>\n" if closes else "")
        elif self.layout == "harmony":
            if self.last_call is None:
                raise TemplateError(f"template {self.name!r}: message {i} is a tool result with no tool call before "
                                    "it; gpt-oss's template names the function a result answers from the last call")
            text = harmony.result(self.last_call, content)
        elif self.layout == "mistral":
            text = _mistral_result(self, i)
        elif self.layout == "deepseek_v3.1":
            text = V31_OUTPUT_BEGIN + content + V31_OUTPUT_END
        elif self.layout == "gemma4":  # a result a model turn with calls takes in; any other is dropped there
            raise TemplateError(f"template {self.name!r}: message {i} is a tool result that follows no tool call; "
                                "Gemma 4's template writes a result only inside the model turn of its call and "
                                "leaves this one out. Put the call before its result, or drop the result")
        elif self.layout == "glm4.5":
            opens = i == 0 or self.msgs[i - 1]["role"] != "tool"
            text = self.after_stop(("<|observation|>" if opens else "") + "\n<tool_response>\n" + content
                                   + "\n</tool_response>")
        elif self.style == "qwen":
            text = _qwen_result(self.msgs, i)
        elif self.style == "llama3":
            text = _llama3_result(content)
        elif self.layout == "llama4":
            text = "<|header_start|>ipython<|header_end|>\n\n" + _tojson(content) + "<|eot|>"
        else:
            text = _put(self.f["tool"] or self.f["user"], content=content)
        self.add(text, i, True)

    def later_system(self, i: int) -> None:
        if self.layout == "mistral" and self.spec["mistral"] == "v3":
            raise TemplateError(f"template {self.name!r}: message {i} is a system message after the first message; "
                                "Mistral's tokenizer v3 writes one system prompt, in the last user turn. Merge the "
                                "system messages into the first one")
        if self.fold or self.spec.get("reasoning") == "deepseek_r1" or self.layout in ("qwen3.5", "harmony"):
            raise TemplateError(f"template {self.name!r} has no system turn; a system message is allowed "
                                f"only first (message {i} is a system message)")
        content = self.msgs[i]["content"]
        self.add(_put(self.f["system"], content=content.strip() if self.strip == "content" else content), i, True)


_COMPILED: dict[int, tuple[Template, dict[str, str]]] = {}
_PLACEHOLDER = re.compile(r"\{(system|instruction|input|content)\}")


def _formats(t: Template) -> dict[str, str]:
    """The template's formats with BOS/EOS filled in, computed once per Template."""
    hit = _COMPILED.get(id(t))
    if hit is None or hit[0] is not t:
        keys = ("prefix", "system", "system_in_user", "user", "user_with_input", "assistant", "generation_prompt",
                "end", "suffix", "tool", "think_prompt")
        formats = {key: fill(t.spec.get(key) or "", t.bos, t.eos) for key in keys}
        prompt, end = formats["generation_prompt"], formats["end"]
        formats["reply_head"], tail = formats["assistant"][len(prompt):].split("{content}", 1)
        formats["after_end"] = tail[len(end):]
        hit = _COMPILED[id(t)] = (t, formats)
    return hit[1]


def _put(fmt: str, **values: str) -> str:
    """Substitute {content}-style placeholders in one pass, so text inside messages is never re-read."""
    if len(values) == 1 and "content" in values:  # the common case, without a regex: same result
        return values["content"].join(fmt.split("{content}"))
    return _PLACEHOLDER.sub(lambda m: values.get(m.group(1), m.group(0)), fmt)


def _tojson(value: Any, indent: int | None = None) -> str:
    """JSON as the official templates' `tojson` writes it (non-ASCII kept)."""
    return json.dumps(value, ensure_ascii=False, indent=indent)


# --- the qwen tool style: <tool_call> tags, results in one user turn of <tool_response> tags -----------


def _qwen_system_with_tools(system: str | None, tools: list[dict]) -> str:
    text = "<|im_start|>system\n" + (system + "\n\n" if system is not None else "") + QWEN_TOOLS_INTRO
    return text + "".join("\n" + _tojson(tool) for tool in tools) + QWEN_TOOLS_OUTRO


def _qwen_calls(calls: list[dict]) -> str:
    return "\n".join("<tool_call>\n" + _tojson(call) + "\n</tool_call>" for call in calls)


def last_query(msgs: list[dict]) -> int:
    """The last user message that is not a <tool_response> (Qwen3's last_query_index); with none, the
    last message. Replies after it keep their reasoning; replies before it lose it."""
    for k in range(len(msgs) - 1, -1, -1):
        m = msgs[k]
        if m["role"] == "user" and not (m["content"].startswith("<tool_response>")
                                        and m["content"].endswith("</tool_response>")):
            return k
    return len(msgs) - 1


def _qwen3_call(call: dict) -> str:
    arguments = call["arguments"]
    return '{"name": "' + call["name"] + '", "arguments": ' + (arguments if isinstance(arguments, str)
                                                              else _tojson(arguments)) + "}"


def split_think(content: str) -> tuple[str | None, str]:
    """(reasoning, answer) of a reply as Qwen3's template splits them (on </think>, newlines trimmed at
    the split), or (None, content) when the reply has no </think>."""
    if "</think>" not in content:
        return None, content
    reasoning = content.split("</think>")[0].rstrip("\n").split("<think>")[-1].lstrip("\n")
    return reasoning, content.split("</think>")[-1].lstrip("\n")


def _qwen_result(msgs: list[dict], i: int) -> str:
    """A run of tool results is one user turn: opened before the first, closed after the last."""
    text = "" if i > 0 and msgs[i - 1]["role"] == "tool" else "<|im_start|>user"
    text += "\n<tool_response>\n" + msgs[i]["content"] + "\n</tool_response>"
    return text + "<|im_end|>\n" if i + 1 == len(msgs) or msgs[i + 1]["role"] != "tool" else text


def turn_end(msgs: list[dict], i: int) -> int:
    """The index after the model turn at i: its tool_call messages are part of it."""
    j = i + 1
    while j < len(msgs) and msgs[j]["role"] == "tool_call":
        j += 1
    return j


def _arguments(name: str, call: dict) -> dict:
    """A call's arguments as the key/value pairs the XML call layouts write; an object is required."""
    if not isinstance(call["arguments"], dict):
        raise TemplateError(f"template {name!r}: the call to {call['name']!r} has arguments "
                            f"{call['arguments']!r}; this family writes each argument as a key and a value, so "
                            "arguments must be a JSON object")
    return call["arguments"]


# --- the qwen3.5 layout: trimmed texts, <function=...> calls, no system message after the first ---------


def _qwen35_system(system: str | None, tools: list[dict] | None, instructions: str | None) -> str:
    if not tools and instructions:
        return "<|im_start|>system\n" + instructions + ("\n\n" + system if system else "") + "<|im_end|>\n"
    if not tools:
        return "" if system is None else "<|im_start|>system\n" + system + "<|im_end|>\n"
    text = "<|im_start|>system\n" + (instructions + "\n\n" if instructions else "") + QWEN35_TOOLS_INTRO
    text += "".join("\n" + _tojson(tool) for tool in tools)
    return text + QWEN35_TOOLS_OUTRO + ("\n\n" + system if system else "") + "<|im_end|>\n"


def _qwen35_last_query(name: str, msgs: list[dict]) -> int:
    """Qwen3.5's last_query_index (contents trimmed first); its template raises when there is none."""
    for k in range(len(msgs) - 1, -1, -1):
        content = msgs[k]["content"].strip()
        if msgs[k]["role"] == "user" and not (content.startswith("<tool_response>")
                                              and content.endswith("</tool_response>")):
            return k
    raise TemplateError(f"template {name!r}: the conversation has no user query (a user message that is not a "
                        "<tool_response>); Qwen3.5's template raises 'No user query found in messages.'")


def _qwen35_call(name: str, call: dict, values: str | None) -> str:
    def value(v: Any) -> str:
        if isinstance(v, str):
            return v
        if values == "json" or isinstance(v, (dict, list, tuple)):
            return _tojson(v)
        return str(v)  # jinja's `string` filter: True, None, 1.5

    params = "".join("<parameter=" + key + ">\n" + value(v) + "\n</parameter>\n"
                     for key, v in _arguments(name, call).items())
    return "<tool_call>\n<function=" + call["name"] + ">\n" + params + "</function>\n</tool_call>"


def _qwen35_result(msgs: list[dict], i: int) -> str:
    """As `_qwen_result`, the content trimmed; a result that is the first message opens no user turn."""
    text = "<|im_start|>user" if i > 0 and msgs[i - 1]["role"] != "tool" else ""
    text += "\n<tool_response>\n" + msgs[i]["content"].strip() + "\n</tool_response>"
    return text + "<|im_end|>\n" if i + 1 == len(msgs) or msgs[i + 1]["role"] != "tool" else text


# --- the nemotron3 layout: the tools as an XML list in the system turn ------------------------------------


def _nemotron_tools(system: str | None, tools: list[dict] | None) -> str:
    if not tools:
        return ""
    out = ("\n\n" if system else "") + "# Tools\n\nYou have access to the following functions:\n\n<tools>"
    for tool in tools:
        fn = tool.get("function", tool)
        out += "\n<function>\n<name>" + fn["name"] + "</name>"
        if "description" in fn:
            out += "\n<description>" + str(fn["description"]).strip() + "</description>"
        out += "\n<parameters>"
        params = fn.get("parameters")
        if isinstance(params, dict) and isinstance(params.get("properties"), dict):
            for name, field in params["properties"].items():
                out += "\n<parameter>\n<name>" + name + "</name>"
                if "type" in field:
                    out += "\n<type>" + str(field["type"]) + "</type>"
                if "description" in field:
                    out += "\n<description>" + str(field["description"]).strip() + "</description>"
                if "enum" in field:
                    out += "\n<enum>" + _tojson(field["enum"]) + "</enum>"
                out += _extra_keys(field, ("name", "type", "description", "enum")) + "\n</parameter>"
        out += _extra_keys(params, ("type", "properties", "required"))
        if isinstance(params, dict) and "required" in params:
            out += "\n<required>" + _tojson(params["required"]) + "</required>"
        out += "\n</parameters>" + _extra_keys(fn, ("type", "name", "description", "parameters")) + "\n</function>"
    return out + QWEN35_TOOLS_OUTRO


def _extra_keys(value: Any, handled: tuple[str, ...]) -> str:
    """Nemotron's render_extra_keys: each other key as <key>value</key> (JSON for containers)."""
    if not isinstance(value, dict):
        return ""
    return "".join("\n<" + key + ">" + (_tojson(v) if isinstance(v, (dict, list, tuple)) else str(v)) + "</" + key + ">"
                   for key, v in value.items() if key not in handled)


# --- the glm4.5 layout: no end-of-turn text, <arg_key>/<arg_value> calls --------------------------------


def _glm_tools(tools: list[dict] | None) -> str:
    if not tools:
        return ""
    return GLM_TOOLS_INTRO + "".join(_tojson(tool) + "\n" for tool in tools) + GLM_TOOLS_OUTRO


def _glm_call(name: str, call: dict) -> str:
    args = "".join("<arg_key>" + key + "</arg_key>\n<arg_value>" + (v if isinstance(v, str) else _tojson(v))
                   + "</arg_value>\n" for key, v in _arguments(name, call).items())
    return "\n<tool_call>" + call["name"] + "\n" + args + "</tool_call>"


# --- the deepseek_r1 reasoning style: no tool layout ----------------------------------------------------


def _check_no_tools(name: str, msgs: list[dict], tools: list[dict] | None) -> None:
    """DeepSeek-R1-Distill's official template has no tool layout a model could learn from: refuse tools."""
    where = next((f"message {i} is a {m['role']} message" for i, m in enumerate(msgs)
                  if m["role"] in ("tool_call", "tool")), "the conversation declares tools" if tools else None)
    if where:
        raise TemplateError(f"template {name!r}: {where}; DeepSeek-R1-Distill's official template has no sound "
                            "tool-call layout (it drops the calls of a reply with text, ignores the tool list, and "
                            "closes a turn of calls only after a second call). Train tool use with a template that "
                            "has one (qwen3, qwen2.5, llama3.1), or drop the tools from these records")


# --- the deepseek_v3.1 layout's tool calls: name<｜tool▁sep｜>arguments as JSON text, results in output markers -----

V31_CALLS_BEGIN, V31_CALLS_END = "<｜tool▁calls▁begin｜>", "<｜tool▁calls▁end｜>"
V31_CALL_BEGIN, V31_CALL_SEP, V31_CALL_END = "<｜tool▁call▁begin｜>", "<｜tool▁sep｜>", "<｜tool▁call▁end｜>"
V31_OUTPUT_BEGIN, V31_OUTPUT_END = "<｜tool▁output▁begin｜>", "<｜tool▁output▁end｜>"


def _v31_call(call: dict) -> str:
    """One call as DeepSeek-V3.1's template writes it: its arguments are JSON text there (as OpenAI's API sends them),
    written here as `tojson` writes an object (non-ASCII kept)."""
    arguments = call["arguments"]
    text = arguments if isinstance(arguments, str) else _tojson(arguments)
    return V31_CALL_BEGIN + call["name"] + V31_CALL_SEP + text + V31_CALL_END


# --- the llama3 tool style (Llama 3.1): tools in the first user turn, JSON calls, ipython results -------


def _llama31_system(system: str | None, tools: list[dict] | None) -> str:
    text = "<|start_header_id|>system<|end_header_id|>\n\n" + ("Environment: ipython\n" if tools else "")
    return text + LLAMA31_DATE + (system or "") + "<|eot_id|>"


def _llama3_tools_intro(tools: list[dict]) -> str:
    return LLAMA3_TOOLS_INTRO + "".join(_tojson(tool, 4) + "\n\n" for tool in tools)


def _llama3_call(call: dict) -> str:
    return '{"name": "' + call["name"] + '", "parameters": ' + _tojson(call["arguments"]) + "}"


def _llama3_result(content: str) -> str:
    return "<|start_header_id|>ipython<|end_header_id|>\n\n" + _tojson(content) + "<|eot_id|>"


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


# --- the mistral layout (mistral-common's encoding of tokenizers v3, v7 and v13) ---------------------------


def _mistral_user(turns: "_Turns", i: int) -> str:
    """[AVAILABLE_TOOLS] before the last user turn (the first from v13), then [INST] text [/INST]; v3 writes the
    system prompt at the head of the last user turn's text."""
    msgs, version, sp = turns.msgs, turns.spec["mistral"], turns.space
    users = [k for k, m in enumerate(msgs) if m["role"] == "user"]
    text = msgs[i]["content"]
    head = ""
    if turns.tools and i == (users[0] if version == "v13" else users[-1]):
        listed = [{"type": "function", "function": {"name": fn["name"], "description": fn.get("description", ""),
                                                    "parameters": fn.get("parameters", {})}}
                  for fn in (tool.get("function", tool) for tool in turns.tools)]
        head = "[AVAILABLE_TOOLS]" + sp + _tojson(listed) + "[/AVAILABLE_TOOLS]"
    if version == "v3" and i == users[-1] and turns.system:
        text = turns.system + "\n\n" + text
    return head + "[INST]" + sp + text + "[/INST]"


def _mistral_result(turns: "_Turns", i: int) -> str:
    """A tool result: v3 as {"content", "call_id"} JSON (content read as JSON where it is), v7 as the call id then
    [TOOL_CONTENT] and the content, v13 as the content alone."""
    message, version, sp = turns.msgs[i], turns.spec["mistral"], turns.space
    call_id = message.get("tool_call_id")
    if version != "v13" and not call_id:
        raise TemplateError(f"template {turns.name!r}: message {i} is a tool result without a tool_call_id; Mistral's "
                            f"tokenizer {version} writes the id of the call each result answers. Give each call an "
                            "\"id\" and each result its \"tool_call_id\"")
    if version == "v3":
        body = _tojson({"content": _json_value(message["content"]), "call_id": call_id})
    elif version == "v7":
        body = call_id + "[TOOL_CONTENT]" + sp + message["content"]
    else:
        body = message["content"]
    return "[TOOL_RESULTS]" + sp + body + "[/TOOL_RESULTS]"


def _json_value(text: Any) -> Any:
    """A value written as JSON text read back (mistral-common reads arguments and results so), else as it is."""
    if not isinstance(text, str):
        return text
    try:
        return json.loads(text)
    except ValueError:
        return text
