"""Reasoning templates (Qwen3 thinking / non-thinking) render byte for byte what the official template renders."""

from __future__ import annotations

import random

import pytest

from sftune import templates
from sftune.templates import twins
from tests.templates.chats import FIXTURES, MULTI_STEP_CHAT, PLAIN, SYSTEM, TEXT_AND_CALL_CHAT, TOOL_CHAT, TOOLS, call, \
    official, prompt_part

# enable_thinking as the official template is called for each built-in.
MODES = {"qwen3": {}, "qwen3_nothink": {"enable_thinking": False}}

REASONING_CHAT = [
    {"role": "system", "content": "Think first."},
    {"role": "user", "content": "2+2?"},
    {"role": "assistant", "content": "<think>\nadd them\n</think>\n\n4"},
    {"role": "user", "content": "and 3+3?"},
    {"role": "assistant", "content": "<think>\n\nsix, clearly\n\n</think>6"},
]
# Reasoning on every step of a tool loop after the last query: all of it is kept.
REASONING_TOOL_CHAT = [
    {"role": "user", "content": "Weather in Paris?"},
    {"role": "assistant", "content": "<think>\nI should call the tool.\n</think>\n\n",
     "tool_calls": [call("Paris")]},
    {"role": "tool", "content": '{"temp": 21}'},
    {"role": "assistant", "content": "<think>\nIt said 21.\n</think>\n\nIt is 21°C."},
    {"role": "user", "content": "<tool_response>\nnot a query\n</tool_response>"},
    {"role": "assistant", "content": "<think>kept: the user turn above is a tool response</think>ok"},
]
# A reply with no think block last gets an empty one; an empty one before the last is left out.
HYBRID_CHAT = [
    {"role": "user", "content": "hi"},
    {"role": "assistant", "content": "<think>\n\n</think>\n\nhello"},
    {"role": "user", "content": "bye"},
    {"role": "assistant", "content": "bye!"},
]
CHATS = [PLAIN, SYSTEM, TOOL_CHAT, MULTI_STEP_CHAT, TEXT_AND_CALL_CHAT, REASONING_CHAT, REASONING_TOOL_CHAT,
         HYBRID_CHAT]


def _official(chat, tools, prompt, name):
    from transformers.utils.chat_template_utils import render_jinja_template

    source = (FIXTURES / "qwen3.jinja").read_text(encoding="utf-8")
    rendered, _ = render_jinja_template(conversations=[chat], tools=tools, chat_template=source,
                                        add_generation_prompt=prompt, **MODES[name])
    return rendered[0]


@pytest.mark.parametrize("name", list(MODES))
@pytest.mark.parametrize("k", range(len(CHATS)))
def test_qwen3_builtin_is_byte_equal_to_the_official_template(name, k):
    chat = CHATS[k]
    tools = TOOLS if any("tool_calls" in m for m in chat) else None
    for prompt in (False, True):
        shown = prompt_part(chat) if prompt else chat
        expected = _official(shown, tools, prompt, name)
        template = templates.get(name)
        assert template.render(shown, tools, prompt) == expected
        assert template.render_jinja(shown, tools, prompt) == expected  # the export saved into the tokenizer


def test_the_official_text_as_a_models_own_template_renders_through_the_qwen3_twin():
    source = (FIXTURES / "qwen3.jinja").read_text(encoding="utf-8")
    own = templates.Template(templates.TOKENIZER, jinja=source, eos="<|im_end|>")
    messages = templates.normalize_messages(REASONING_TOOL_CHAT)
    assert twins.twin(source, messages, TOOLS) == "qwen3"
    assert own.render(REASONING_TOOL_CHAT, TOOLS) == official("qwen3", REASONING_TOOL_CHAT, "", "<|im_end|>", TOOLS)
    assert own.stop == "<|im_end|>"


def test_no_think_generation_prompt_and_earlier_reasoning_dropped():
    think, nothink = templates.get("qwen3"), templates.get("qwen3_nothink")
    assert nothink.render(PLAIN[:1], add_generation_prompt=True).endswith(
        "<|im_start|>assistant\n<think>\n\n</think>\n\n")
    assert think.render(PLAIN[:1], add_generation_prompt=True).endswith("<|im_start|>assistant\n")
    text = think.render(REASONING_CHAT)
    assert "add them" not in text and "<|im_start|>assistant\n4<|im_end|>" in text
    assert "<think>\nsix, clearly\n</think>\n\n6<|im_end|>" in text


def _random_chat(rng: random.Random) -> list[dict]:
    words = ["", " ", "\n", "\n\n", "hi", " two words ", "ünï", "<think>", "</tool_response>", '{"a": 1}']
    say = lambda: "".join(rng.choice(words) for _ in range(rng.randint(1, 3))) or "x"  # noqa: E731

    def reply() -> str:
        shape = rng.random()
        if shape < 0.4:
            return "<think>" + rng.choice(["\n", "", "\n\n"]) + say() + rng.choice(["\n", ""]) + "</think>" + say()
        return "<think>\n\n</think>\n\n" + say() if shape < 0.55 else say()

    chat = [{"role": "system", "content": say()}] if rng.random() < 0.5 else []
    for _ in range(rng.randint(1, 3)):
        chat.append({"role": "user", "content": say() if rng.random() < 0.8 else "<tool_response>x</tool_response>"})
        for _ in range(rng.randint(0, 2)):
            text = reply() if rng.random() < 0.5 else None
            arguments = {"city": "Oslo", "days": 3} if rng.random() < 0.3 else None
            chat.append({"role": "assistant", "content": text,
                         "tool_calls": [call(rng.choice(["Paris", "Zürich"]), arguments)
                                        for _ in range(rng.randint(1, 2))]})
            chat += [{"role": "tool", "content": say()} for _ in range(rng.randint(1, 2))]
        chat.append({"role": "assistant", "content": reply()})
    return chat


@pytest.mark.parametrize("name", list(MODES))
def test_qwen3_builtin_matches_the_official_template_on_random_reasoning_and_tool_chats(name):
    rng = random.Random(1)
    template = templates.get(name)
    for _ in range(80):
        chat = _random_chat(rng)
        tools = TOOLS if rng.random() < 0.8 else None
        for prompt in (False, True):
            shown = prompt_part(chat) if prompt else chat
            expected = _official(shown, tools, prompt, name)
            assert template.render(shown, tools, prompt) == expected, shown
            assert template.render_jinja(shown, tools, prompt) == expected, shown
