"""DeepSeek-V3.1's built-ins: deepseek_v3.1 (thinking on) renders every prompt byte for byte as the official template
called with thinking=true and writes the last reply as the model writes it after that prompt (the official template
drops every reply's reasoning, the last one's too); deepseek_v3.1_nothink is the official render with thinking off.
The official text is llama.cpp's re-indented copy (tests/fixtures/templates/README.md)."""

from __future__ import annotations

import json
import random

import pytest
from transformers.utils.chat_template_utils import render_jinja_template

from sftune import templates
from sftune.data.schema import Conversation, Message
from sftune.encode import IGNORE, encode
from sftune.encode.labels import render_spans
from sftune.encode.reasoning import split_records
from sftune.templates import stops, switches
from tests.templates.chats import (CHINESE, EMPTY_SYSTEM, FIXTURES, MULTI_STEP_CHAT, PLAIN, SINGLE_CALL_CHAT,
                                   SPACED_SYSTEM, SYSTEM, TEXT_AND_CALL_CHAT, TOOL_CHAT, TOOLS, call, prompt_part,
                                   random_tool_chat)
from tests.templates.test_official_spans import stand_in

BOS, EOS = "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>"
SOURCE = (FIXTURES / "deepseek_v3.1.jinja").read_text(encoding="utf-8")

# Replies in the data layer's layout: "<think>\n" + reasoning + "\n</think>\n\n" + answer.
V31_CHAT = [
    {"role": "system", "content": "Think step by step."},
    {"role": "user", "content": "2+2?"},
    {"role": "assistant", "content": "<think>\nadd them\n</think>\n\n4"},
    {"role": "user", "content": "and 3+3?"},
    {"role": "assistant", "content": "<think>\nsix, clearly\n</think>\n\n6"},
]
NO_REASONING_LAST = V31_CHAT[:4] + [{"role": "assistant", "content": "6"}]
TWO_SYSTEMS = [{"role": "system", "content": "First."}, *PLAIN[:2], {"role": "system", "content": "Later."},
               *PLAIN[2:]]
CHATS = [V31_CHAT, NO_REASONING_LAST, PLAIN, SYSTEM, EMPTY_SYSTEM, SPACED_SYSTEM, CHINESE, V31_CHAT[1:3], TWO_SYSTEMS]


def _official(chat: list[dict], prompt: bool, thinking: bool) -> str:
    rendered, _ = render_jinja_template(conversations=[chat], chat_template=SOURCE, add_generation_prompt=prompt,
                                        bos_token=BOS, eos_token=EOS, thinking=thinking)
    return rendered[0]


def _trained(template, chat, **options) -> str:
    text, spans = render_spans(template, templates.normalize_messages(chat), None, "assistant", **options)
    return "".join(text[a:b] for a, b, _ in spans)


@pytest.mark.parametrize("k", range(len(CHATS)))
def test_every_prompt_is_byte_equal_to_the_official_template_in_each_mode(k):
    chat = CHATS[k]
    for name, thinking in (("deepseek_v3.1", True), ("deepseek_v3.1_nothink", False)):
        template = templates.get(name)
        for end in range(1, len(chat) + 1):
            if chat[end - 1]["role"] == "assistant":
                continue  # a prompt ends before a reply
            expected = _official(chat[:end], True, thinking)
            if [m["role"] for m in chat[:end] if m["role"] != "system"][-1:] == ["user"]:  # else no prompt
                assert expected.endswith("<｜Assistant｜><think>" if thinking else "<｜Assistant｜></think>")
            assert template.render(chat[:end], add_generation_prompt=True) == expected, (name, end)
            assert template.render_jinja(chat[:end], add_generation_prompt=True) == expected  # the saved export
            assert template.render(chat[:end]) == _official(chat[:end], False, thinking)


@pytest.mark.parametrize("k", range(len(CHATS)))
def test_the_nothink_builtin_is_the_official_render_with_thinking_off(k):
    template = templates.get("deepseek_v3.1_nothink")
    assert template.render(CHATS[k]) == _official(CHATS[k], False, False) == template.render_jinja(CHATS[k])


def test_the_last_reply_follows_the_official_thinking_prompt_as_the_model_writes_it():
    """Written out: the prompt (the earlier reply as the template writes it, </think> and what follows), then the
    last reply as generated after <think>: reasoning, </think>, the answer, the stop."""
    expected = (BOS + "Think step by step.<｜User｜>2+2?<｜Assistant｜></think>\n\n4" + EOS + "<｜User｜>and 3+3?"
                "<｜Assistant｜><think>six, clearly</think>6" + EOS)
    template = templates.get("deepseek_v3.1")
    assert template.render(V31_CHAT) == expected
    assert expected.startswith(_official(V31_CHAT[:-1], True, True))
    assert "six, clearly" not in _official(V31_CHAT, False, True)  # the official text would train none of it
    assert template.render(NO_REASONING_LAST) == _official(NO_REASONING_LAST[:-1], True, True) + "</think>6" + EOS
    # later system messages go to the top, joined by a blank line, as the official template writes them
    assert template.render(TWO_SYSTEMS).startswith(BOS + "First.\n\nLater.<｜User｜>Hi there!")


def test_trained_text_per_reasoning_option_and_the_empty_think_rule():
    template = templates.get("deepseek_v3.1")
    earlier = "\n\n4" + EOS  # what the template keeps of the earlier reply (its reasoning is trained on its own)
    assert _trained(template, V31_CHAT) == earlier + "six, clearly</think>6" + EOS
    assert _trained(template, V31_CHAT, reasoning="think_last_turn") == earlier + "six, clearly</think>6" + EOS
    assert _trained(template, V31_CHAT, reasoning="answer_only") == earlier + "6" + EOS
    # the empty think block: the earlier reply's </think> and a last reply without reasoning
    assert _trained(template, NO_REASONING_LAST) == earlier + "6" + EOS
    assert _trained(template, NO_REASONING_LAST, train_empty_think=True) == "</think>" + earlier + "</think>6" + EOS
    assert _trained(template, PLAIN) == "Hello! How can I help?" + EOS + "It is 4. " + EOS
    nothink = templates.get("deepseek_v3.1_nothink")  # </think> is its prompt's, never trained
    assert _trained(nothink, V31_CHAT, train_empty_think=True) == earlier + "\n\n6" + EOS


def test_each_replys_reasoning_is_trained_in_an_example_that_ends_with_it():
    """The template keeps reasoning on the last message only: a multi-turn chat is split per exchange, and each
    reply's reasoning is trained where it is the last reply; what an earlier example trained is context."""
    conversation = Conversation([Message(m["role"], m["content"]) for m in V31_CHAT])
    template = templates.get("deepseek_v3.1")
    records, n_split = split_records([conversation], template)
    assert n_split == 1 and len(records) == 2
    assert [_trained(template, record) for record in records] == ["add them</think>4" + EOS,
                                                                  "six, clearly</think>6" + EOS]
    assert split_records([conversation], templates.get("deepseek_v3.1_nothink")) == ([conversation], 0)


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
        if rng.random() < 0.15:
            chat.append({"role": "system", "content": say()})
    return chat if chat[-1]["role"] == "assistant" else chat[:-1]


def test_random_chats_match_the_official_template_in_both_modes():
    """Awkward think blocks and whitespace, system messages anywhere: every prompt byte-equal in both modes, the
    non-thinking render byte-equal; after the thinking prompt, the answer is what the official template keeps of
    that reply (what follows its first </think>), its leading newlines trimmed."""
    rng = random.Random(7)
    thinking, nothink = templates.get("deepseek_v3.1"), templates.get("deepseek_v3.1_nothink")
    for _ in range(120):
        chat = _random_chat(rng)
        prompt = _official(chat[:-1], True, True)
        assert thinking.render(chat[:-1], add_generation_prompt=True) == prompt, chat
        assert thinking.render_jinja(chat[:-1], add_generation_prompt=True) == prompt, chat
        assert nothink.render(chat[:-1], add_generation_prompt=True) == _official(chat[:-1], True, False), chat
        assert nothink.render(chat) == _official(chat, False, False) == nothink.render_jinja(chat), chat
        text = thinking.render(chat)
        assert text.startswith(prompt) and text.endswith(EOS), chat
        generated = text[len(prompt):-len(EOS)]
        content = chat[-1]["content"]
        kept = content.split("</think>", 1)[1] if "</think>" in content else content
        assert generated.split("</think>", 1)[1] == kept.lstrip("\n"), chat


@pytest.mark.parametrize("name", ["deepseek_v3.1", "deepseek_v3.1_nothink"])
def test_the_stop_is_trained_after_each_reply_and_the_audit_passes(name, smollm2_tokenizer):
    tokenizer, eos_ids = stand_in(smollm2_tokenizer, "deepseek_v3.1")
    checked = stops.audit(templates.get(name, tokenizer), tokenizer, eos_ids)
    assert checked.appended is None and checked.stops == [EOS]
    eos = tokenizer.convert_tokens_to_ids(EOS)
    labels = encode(V31_CHAT, tokenizer, checked.template)["labels"]
    trained = [label for label in labels if label != IGNORE]
    reference = "\n\n4" + EOS + ("six, clearly</think>6" if name == "deepseek_v3.1" else "\n\n6") + EOS
    assert tokenizer.decode(trained) == reference
    assert trained.count(eos) == 2 and labels[-1] == eos
    ids = encode(V31_CHAT, tokenizer, checked.template)["input_ids"]
    assert ids == tokenizer(checked.template.render(V31_CHAT), add_special_tokens=False)["input_ids"]


def test_the_export_is_the_official_text_with_its_mode_written_in(smollm2_tokenizer):
    """The saved chat_template is the official text, thinking set, so a server renders the training prompts with
    no argument; data.template_kwargs thinking switches one built-in to the other."""
    for name, mode in (("deepseek_v3.1", True), ("deepseek_v3.1_nothink", False)):
        exported = templates.get(name).to_jinja()
        assert switches.unbaked(exported) == SOURCE and f"{{% set thinking = {str(mode).lower()} %}}" in exported
        tokenizer, _ = stand_in(smollm2_tokenizer, "deepseek_v3.1")
        template = templates.get(name, tokenizer)
        templates.save_to_tokenizer(template, tokenizer)
        shown = V31_CHAT[:-1]
        assert tokenizer.apply_chat_template(shown, tokenize=False, add_generation_prompt=True) == \
            template.render(shown, add_generation_prompt=True)
    off = templates.get("deepseek_v3.1", None, {"thinking": False})
    on = templates.get("deepseek_v3.1_nothink", None, {"thinking": True})
    for chat in CHATS:
        assert off.render(chat) == templates.get("deepseek_v3.1_nothink").render(chat)
        assert on.render(chat) == templates.get("deepseek_v3.1").render(chat)
    assert off.to_jinja() == templates.get("deepseek_v3.1_nothink").to_jinja()
    with pytest.raises(templates.TemplateError, match="thinking"):
        templates.get("deepseek_v3.1", None, {"enable_thinking": True})


def test_replies_without_a_user_turn_or_a_result_before_them_are_refused_with_the_reason():
    template = templates.get("deepseek_v3.1")
    with pytest.raises(templates.TemplateError, match="follows no user message"):
        template.render([PLAIN[0], PLAIN[1], {"role": "assistant", "content": "More."}])
    with pytest.raises(templates.TemplateError, match="message 1 is an assistant message that follows no user"):
        template.render([{"role": "system", "content": "S"}, PLAIN[1]])
    with pytest.raises(templates.TemplateError, match="message 1 is a tool call that follows no user message or tool"):
        template.render([{"role": "system", "content": "S"},
                         {"role": "assistant", "content": None, "tool_calls": [call("Oslo")]}])


def _text_arguments(chat: list[dict]) -> list[dict]:
    """The chat with each call's arguments as JSON text, as OpenAI's API sends them (the official template joins them
    to its markers with `+`, so an object raises there)."""
    def text(c: dict) -> dict:
        arguments = c["function"]["arguments"]
        return {**c, "function": {**c["function"], "arguments": arguments if isinstance(arguments, str)
                                  else json.dumps(arguments, ensure_ascii=False)}}
    return [{**m, "tool_calls": [text(c) for c in m["tool_calls"]]} if m.get("tool_calls") else m for m in chat]


def _official_tools(chat: list[dict], prompt: bool, thinking: bool, tools=None) -> str:
    rendered, _ = render_jinja_template(conversations=[_text_arguments(chat)], tools=tools, chat_template=SOURCE,
                                        add_generation_prompt=prompt, bos_token=BOS, eos_token=EOS, thinking=thinking)
    return rendered[0]


def _expected(chat: list[dict], tools, thinking: bool) -> str:
    """The official render; with thinking on, a last text reply right after a user message as the model writes it
    after the official thinking prompt (the rule above): what the template keeps of it with its reasoning before."""
    full = _official_tools(chat, False, thinking, tools)
    before = [m["role"] for m in chat[:-1] if m["role"] != "system"][-1:]
    last = chat[-1]
    if not thinking or last["role"] != "assistant" or last.get("tool_calls") or before != ["user"]:
        return full
    content = last["content"] or ""
    reasoning, answer = content.split("</think>", 1) if "</think>" in content else ("", content)
    return (_official_tools(chat[:-1], True, thinking, tools) + reasoning.split("<think>", 1)[-1].strip("\n")
            + "</think>" + answer.lstrip("\n") + EOS)


V31_TOOL_CHATS = [TOOL_CHAT, SINGLE_CALL_CHAT, MULTI_STEP_CHAT, TEXT_AND_CALL_CHAT, TOOL_CHAT[1:],
                  [*MULTI_STEP_CHAT[:3]], [*TOOL_CHAT[:5]]]


@pytest.mark.parametrize("k", range(len(V31_TOOL_CHATS)))
@pytest.mark.parametrize("name, thinking", [("deepseek_v3.1", True), ("deepseek_v3.1_nothink", False)])
def test_tool_chats_render_as_the_official_template_writes_them(name, thinking, k):
    """Calls (several in a turn, text before them), results, the answer after them, more exchanges, with and without
    a system message: byte-equal to the official render, every prompt too (after a result it opens no reply). The
    tool list changes nothing, as in the official template, which never reads it."""
    template, chat = templates.get(name), V31_TOOL_CHATS[k]
    for tools in (TOOLS, None):
        assert template.render(chat, tools) == _expected(chat, tools, thinking), (name, k)
        shown = prompt_part(chat)
        assert template.render(shown, tools, True) == _official_tools(shown, True, thinking, tools), (name, k)


def test_a_tool_loop_written_out():
    expected = (BOS + "You can look up the weather.<｜User｜>Weather in Paris and Zürich?<｜Assistant｜></think>"
                "<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>get_weather<｜tool▁sep｜>{\"city\": \"Paris\"}<｜tool▁call▁end｜>"
                "<｜tool▁call▁begin｜>get_weather<｜tool▁sep｜>{\"city\": \"Zürich\"}<｜tool▁call▁end｜><｜tool▁calls▁end｜>"
                + EOS + "<｜tool▁output▁begin｜>{\"temp\": 21}<｜tool▁output▁end｜><｜tool▁output▁begin｜>{\"temp\": 18}"
                "<｜tool▁output▁end｜>Paris 21°C, Zürich 18°C." + EOS)
    for name in ("deepseek_v3.1", "deepseek_v3.1_nothink"):
        assert templates.get(name).render(TOOL_CHAT, TOOLS) == expected
    # arguments given as JSON text are written as they are
    chat = [PLAIN[0], {"role": "assistant", "content": None, "tool_calls": [call("", '{"city":"Oslo"}')]}]
    assert templates.get("deepseek_v3.1").render(chat).endswith('<｜tool▁sep｜>{"city": "Oslo"}<｜tool▁call▁end｜>'
                                                                "<｜tool▁calls▁end｜>" + EOS)


def test_calls_are_trained_with_their_stop_and_results_are_not():
    calls = ("<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>get_weather<｜tool▁sep｜>{\"city\": \"Paris\"}<｜tool▁call▁end｜>"
             "<｜tool▁call▁begin｜>get_weather<｜tool▁sep｜>{\"city\": \"Zürich\"}<｜tool▁call▁end｜><｜tool▁calls▁end｜>")
    for name in ("deepseek_v3.1", "deepseek_v3.1_nothink"):
        template = templates.get(name)
        assert _trained(template, TOOL_CHAT) == calls + EOS + "Paris 21°C, Zürich 18°C." + EOS
        # thinking on, the </think> before the calls is the model's: an empty think block
        assert _trained(template, TOOL_CHAT, train_empty_think=True) == \
            ("</think>" if name == "deepseek_v3.1" else "") + calls + EOS + "Paris 21°C, Zürich 18°C." + EOS
    text = _trained(templates.get("deepseek_v3.1"), TEXT_AND_CALL_CHAT)
    assert text.startswith("Let me check.<｜tool▁calls▁begin｜>")
    assert text.endswith("<｜tool▁calls▁end｜>" + EOS + "21°C." + EOS)


@pytest.mark.parametrize("name", ["deepseek_v3.1", "deepseek_v3.1_nothink"])
def test_tool_chats_encode_with_the_stop_trained_after_calls(name, smollm2_tokenizer):
    tokenizer, eos_ids = stand_in(smollm2_tokenizer, "deepseek_v3.1")
    checked = stops.audit(templates.get(name, tokenizer), tokenizer, eos_ids)
    encoded = encode({"messages": MULTI_STEP_CHAT, "tools": TOOLS}, tokenizer, checked.template)
    labels, ids = encoded["labels"], encoded["input_ids"]
    assert ids == tokenizer(checked.template.render(MULTI_STEP_CHAT, TOOLS), add_special_tokens=False)["input_ids"]
    eos = tokenizer.convert_tokens_to_ids(EOS)
    assert labels.count(eos) == 4 and labels[-1] == eos  # two call turns, the answer, the last reply
    trained = tokenizer.decode([label for label in labels if label != IGNORE])
    assert "bewölkt" not in trained and "21<" not in trained.replace("21°C", "")  # results are context


def test_random_tool_chats_match_the_official_template_in_both_modes():
    """The random tool chats of the other families' tests (parallel calls, text before calls, blank contents, results,
    several exchanges, with and without a system message): byte-equal to the official render and its prompts in each
    mode (thinking on: the last reply after a user message as the rule above writes it), calls trained with their
    stop, results never."""
    rng = random.Random(11)
    words = ["", " ", "\n", "hi", " two words ", "ünï", '{"a": 1}', "</think>"]
    say = lambda: "".join(rng.choice(words) for _ in range(rng.randint(1, 3))) or "x"  # noqa: E731
    for _ in range(80):
        chat = random_tool_chat(rng, say, parallel=True)
        tools = TOOLS if rng.random() < 0.5 else None
        for name, thinking in (("deepseek_v3.1", True), ("deepseek_v3.1_nothink", False)):
            template = templates.get(name)
            assert template.render(chat, tools) == _expected(chat, tools, thinking), (name, chat)
            shown = prompt_part(chat)
            assert template.render(shown, tools, True) == _official_tools(shown, True, thinking, tools), (name, chat)
            messages = templates.normalize_messages(chat)
            text, spans = render_spans(template, messages, tools, "assistant")
            trained = "".join(text[a:b] for a, b, _ in spans)
            n_turns = sum(1 for k, m in enumerate(messages) if m["role"] in ("assistant", "tool_call")
                          and (k + 1 == len(messages) or messages[k + 1]["role"] != "tool_call"))
            assert trained.count(EOS) == n_turns and trained.count("<｜tool▁calls▁end｜>" + EOS) == \
                sum(1 for m in chat if m.get("tool_calls")), chat
            assert "<｜tool▁output▁begin｜>" not in trained, chat


def test_the_dropped_reasoning_warning_points_to_the_builtin():
    chats = [V31_CHAT, PLAIN]
    assert templates.get("deepseek_v3.1").drops_reasoning is False
    assert templates.dropped_reasoning(templates.get("deepseek_v3.1"), chats) is None
    for template in (templates.get("deepseek_v3.1_nothink"), templates.get({"jinja": SOURCE}, None, {"thinking": True}),
                     templates.get({"jinja": (FIXTURES / "deepseekv3.jinja").read_text(encoding="utf-8")})):
        note = templates.dropped_reasoning(template, chats)
        assert "2 of 4 replies hold reasoning" in note and "data.template: deepseek_v3.1" in note, note
