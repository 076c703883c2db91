"""DeepSeek-R1-Distill: prompts byte for byte as the official template renders them; the last reply as the
model writes it after that prompt (the official template drops every reply's reasoning, the last one too)."""

from __future__ import annotations

import random

import pytest

from sftune import templates
from sftune.templates import twins
from tests.templates.chats import CHINESE, FIXTURES, PLAIN, SYSTEM, TOOL_CHAT, TOOLS, official

BOS, EOS = "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>"

# Replies as DeepSeek-R1 writes them: the data layer's "<think>\n" + reasoning + "\n</think>\n\n" + answer.
R1_CHAT = [
    {"role": "system", "content": "Think step by step."},
    {"role": "user", "content": "2+2?"},
    {"role": "assistant", "content": "<think>\nadd them\n</think>\n\n4"},
    {"role": "user", "content": "and 3+3?"},
    {"role": "assistant", "content": "<think>\nsix, clearly\n</think>\n\n6"},
]
NO_REASONING_LAST = R1_CHAT[:4] + [{"role": "assistant", "content": "6"}]
CHATS = [R1_CHAT, NO_REASONING_LAST, PLAIN, SYSTEM, CHINESE, R1_CHAT[1:3]]


def _official(chat, prompt):
    return official("deepseek_r1", chat, BOS, EOS, None, prompt)


def completion(reply: str) -> str:
    """What the model writes after the official generation prompt (which ends with "<think>\\n", the opener
    DeepSeek's model card says every answer starts with): a canonical reply minus that opener; a reply
    without reasoning as an empty block."""
    body = reply[len("<think>\n"):] if reply.startswith("<think>\n") else "\n</think>\n\n" + reply
    return body + EOS


@pytest.mark.parametrize("k", range(len(CHATS)))
def test_every_prompt_is_byte_equal_to_the_official_template(k):
    chat, template = CHATS[k], templates.get("deepseek_r1")
    for end in range(1, len(chat) + 1):
        if chat[end - 1]["role"] == "assistant":
            continue  # a prompt ends before a reply
        expected = _official(chat[:end], True)
        assert expected.endswith("<｜Assistant｜><think>\n")
        assert template.render(chat[:end], add_generation_prompt=True) == expected
        assert template.render_jinja(chat[:end], add_generation_prompt=True) == expected  # the saved export
        assert template.render(chat[:end]) == _official(chat[:end], False)  # no reply: the official text


@pytest.mark.parametrize("k", range(len(CHATS)))
def test_the_last_reply_follows_the_official_prompt_as_generated(k):
    chat, template = CHATS[k], templates.get("deepseek_r1")
    expected = _official(chat[:-1], True) + completion(chat[-1]["content"])
    assert template.render(chat) == expected
    assert template.render_jinja(chat) == expected


def test_earlier_replies_lose_their_reasoning_as_the_official_template_writes_them():
    text = templates.get("deepseek_r1").render(R1_CHAT)
    assert "add them" not in text and "<｜Assistant｜>\n\n4<｜end▁of▁sentence｜>" in text
    assert text.endswith("<｜Assistant｜><think>\nsix, clearly\n</think>\n\n6<｜end▁of▁sentence｜>")
    # the official template drops the last reply's reasoning too: nothing of it would be trained
    assert "six, clearly" not in _official(R1_CHAT, False)


def _random_chat(rng: random.Random) -> list[dict]:
    words = ["", " ", "\n", "\n\n", "hi", " two words ", "ünï", "<think>", "</think>", "中文"]
    say = lambda: "".join(rng.choice(words) for _ in range(rng.randint(1, 3))) or "x"  # noqa: E731

    def reply() -> str:
        shape = rng.random()
        if shape < 0.5:
            return "<think>" + rng.choice(["\n", "", "\n\n"]) + say() + rng.choice(["\n", ""]) + "</think>" + say()
        return "<think>\n\n</think>\n\n" + say() if shape < 0.65 else say()

    chat = [{"role": "system", "content": say()}] if rng.random() < 0.5 else []
    for _ in range(rng.randint(1, 3)):
        chat += [{"role": "user", "content": say()}, {"role": "assistant", "content": reply()}]
    return chat


def test_random_reasoning_chats_prompts_and_answers_match_the_official_template():
    """Awkward think blocks and whitespace: every prompt byte-equal; after the last prompt, the answer is
    the text the official template keeps of that reply (what follows its last </think>)."""
    rng, template = random.Random(3), templates.get("deepseek_r1")
    for _ in range(80):
        chat = _random_chat(rng)
        prompt = _official(chat[:-1], True)
        assert template.render(chat[:-1], add_generation_prompt=True) == prompt, chat
        assert template.render_jinja(chat[:-1], add_generation_prompt=True) == prompt, chat
        text = template.render(chat)
        assert template.render_jinja(chat) == text, chat
        assert text.startswith(prompt) and text.endswith(EOS), chat
        generated = text[len(prompt):-len(EOS)]
        assert "\n</think>\n\n" in generated, chat
        kept = chat[-1]["content"].split("</think>")[-1]
        assert generated.split("\n</think>\n\n", 1)[1] == kept.lstrip("\n"), chat


def test_the_official_text_as_a_models_own_template_trains_through_the_twin():
    source = (FIXTURES / "deepseek_r1.jinja").read_text(encoding="utf-8")
    own = templates.Template(templates.TOKENIZER, jinja=source, bos=BOS, eos=EOS)
    assert twins.twin(source, templates.normalize_messages(R1_CHAT), None) == "deepseek_r1"
    assert own.render(R1_CHAT) == templates.get("deepseek_r1").render(R1_CHAT)
    assert own.render(R1_CHAT[:-1], add_generation_prompt=True) == _official(R1_CHAT[:-1], True)
    assert own.stop == EOS
    assert own.reasoning == "deepseek_r1"
    assert twins.twin(source, templates.normalize_messages(TOOL_CHAT), TOOLS) is None  # jinja renders those


def test_tool_conversations_are_refused_with_the_reason():
    template = templates.get("deepseek_r1")
    for chat, tools in ((TOOL_CHAT, TOOLS), (TOOL_CHAT, None), (PLAIN, TOOLS)):
        with pytest.raises(templates.TemplateError, match="no sound tool-call layout"):
            template.render(chat, tools)
        with pytest.raises(Exception, match="no tool-call layout"):
            template.render_jinja(chat, tools)
    with pytest.raises(templates.TemplateError, match="allowed only first"):
        template.render(PLAIN + [{"role": "system", "content": "late"}])
