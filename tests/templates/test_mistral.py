"""Mistral's current layouts (tokenizer v3, v7 tekken, Magistral's v13 with [THINK]) render what mistral-common,
Mistral's own tokenization library, encodes: the reference encodings in tests/fixtures/mistral (text, and the
control tokens in their places), and live mistral-common where it is importable. Each reply trains its text
and its </s>; Magistral's reasoning follows the reasoning options."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from transformers.utils.chat_template_utils import render_jinja_template

from sftune import templates
from sftune.encode.labels import render_spans
from tests.fixtures.mistral.conversations import CHATS, TOOLS
from tests.templates.chats import FIXTURES as JINJA

HERE = Path(__file__).parent.parent / "fixtures" / "mistral"
FAMILIES = {"mistral_v3": "v3", "mistral_v7_tekken": "v7_tekken", "magistral": "magistral"}


def _fixture(name: str) -> dict:
    return json.loads((HERE / f"{FAMILIES[name]}.json").read_text(encoding="utf-8"))


def _sftune_messages(messages: list[dict]) -> list[dict]:
    """The OpenAI-shaped fixture messages as sftune data: reasoning as a leading <think> block."""
    out = []
    for m in messages:
        m = dict(m)
        if m.get("reasoning_content"):
            m["content"] = "<think>" + m.pop("reasoning_content") + "</think>" + (m["content"] or "")
        out.append(m)
    return out


CASES = [(name, case["name"]) for name in FAMILIES for case in _fixture(name)["cases"]]


def _case(name: str, key: str) -> dict:
    return next(c for c in _fixture(name)["cases"] if c["name"] == key)


@pytest.mark.parametrize("name,key", CASES)
def test_builtin_renders_mistral_commons_text_with_its_control_tokens_in_place(name, key):
    fixture, case = _fixture(name), _case(name, key)
    text = templates.get(name).render(_sftune_messages(case["messages"]), TOOLS if case["tools"] else None)
    assert text == case["text"]
    # the control tokens mistral-common wrote, in order, are the control texts of the render, in order
    specials = fixture["specials"]
    expected = [specials[str(i)] for i in case["ids"] if str(i) in specials]
    pattern = "|".join(re.escape(s) for s in sorted(set(specials.values()), key=len, reverse=True))
    assert re.findall(pattern, text) == expected


@pytest.mark.parametrize("name,key", CASES)
def test_the_exported_jinja_renders_the_same_text(name, key):
    """The exported chat_template (mistral-common's generated template, shipped verbatim) gives the same text."""
    case = _case(name, key)
    t = templates.get(name)
    source = (JINJA / templates.BUILTINS[name]["official"]).read_text(encoding="utf-8")
    assert t.to_jinja() == source
    rendered = render_jinja_template(conversations=[case["messages"]], tools=TOOLS if case["tools"] else None,
                                     chat_template=source, bos_token="<s>", eos_token="</s>")[0][0]
    assert rendered == case["text"]


def _trained(name: str, messages: list[dict], tools=None, **options) -> str:
    text, spans = render_spans(templates.get(name), templates.normalize_messages(messages), tools, "assistant",
                               **options)
    return "".join(text[a:b] for a, b, _ in spans)


def test_each_reply_trains_its_text_and_its_stop():
    chat = _sftune_messages(CHATS["system_multi_turn"]["messages"])
    assert _trained("mistral_v3", chat) == " Blue.</s> Green.</s>"  # the sentencepiece space is the reply's
    assert _trained("mistral_v7_tekken", chat) == "Blue.</s>Green.</s>"
    tools = _sftune_messages(CHATS["tools"]["messages"])
    assert _trained("mistral_v3", tools, TOOLS) == (
        '[TOOL_CALLS] [{"name": "get_weather", "arguments": {"city": "Paris"}, "id": "a1b2c3d4e"}]</s>'
        " Sunny and 21 C in Paris.</s> You're welcome.</s>")
    assert _trained("magistral", tools, TOOLS) == ('[TOOL_CALLS]get_weather[ARGS]{"city": "Paris"}</s>'
                                                   "Sunny and 21 C in Paris.</s>You're welcome.</s>")


def test_magistral_reasoning_follows_the_reasoning_options():
    chat = _sftune_messages(CHATS["reasoning"]["messages"])
    both = "[THINK]add them[/THINK]4</s>[THINK]six, clearly[/THINK]6</s>"
    assert _trained("magistral", chat) == both
    assert _trained("magistral", chat, reasoning="answer_only") == "4</s>6</s>"
    assert _trained("magistral", chat, reasoning="think_last_turn") == "4</s>[THINK]six, clearly[/THINK]6</s>"
    assert templates.get("magistral").render(chat[:2], add_generation_prompt=True).endswith("[INST]2+2?[/INST]")


def test_refusals_say_what_and_how_to_fix():
    chat = _sftune_messages(CHATS["tools"]["messages"])
    chat[3] = {k: v for k, v in chat[3].items() if k != "tool_call_id"}
    with pytest.raises(templates.TemplateError, match="tool_call_id"):
        templates.get("mistral_v7_tekken").render(chat, TOOLS)
    assert "[TOOL_RESULTS]sunny, 21 C[/TOOL_RESULTS]" in templates.get("magistral").render(chat, TOOLS)  # no ids
    with pytest.raises(templates.TemplateError, match="one system prompt"):
        templates.get("mistral_v3").render([{"role": "user", "content": "x"}, {"role": "system", "content": "y"}])


class _Vocab:
    """A tokenizer of Mistral's control texts: each one token, other text one token per character."""

    eos_token_id = 2
    eos_token = "</s>"
    specials = {"<s>": 1, "</s>": 2, "[INST]": 3, "[/INST]": 4, "[TOOL_CALLS]": 5, "[THINK]": 34, "[/THINK]": 35}

    def __call__(self, text, add_special_tokens=False, return_offsets_mapping=False):
        ids, offsets, k = [], [], 0
        while k < len(text):
            hit = next((s for s in self.specials if text.startswith(s, k)), None)
            size = len(hit) if hit else 1
            ids.append(self.specials[hit] if hit else 100 + ord(text[k]))
            offsets.append((k, k + size))
            k += size
        return {"input_ids": ids, **({"offset_mapping": offsets} if return_offsets_mapping else {})}

    def convert_ids_to_tokens(self, ids):
        names = {v: s for s, v in self.specials.items()}
        return [names.get(i) for i in ids]


@pytest.mark.parametrize("name", list(FAMILIES))
def test_the_stop_audit_passes_with_nothing_appended(name):
    audit = templates.stops.audit(templates.get(name), _Vocab())
    assert audit.appended is None and audit.stop_ids == [2]


@pytest.mark.parametrize("name", list(FAMILIES))
def test_live_mistral_common_encodes_the_same_text(name):
    """With mistral-common importable (not a dependency: see tests/fixtures/mistral/README.md), the fixtures
    are what it encodes today."""
    pytest.importorskip("mistral_common")
    import sys

    sys.path.insert(0, str(HERE))
    from make_fixtures import _message, _text, _tokenizer  # noqa: PLC0415
    from mistral_common.protocol.instruct.request import ChatCompletionRequest
    from mistral_common.protocol.instruct.tool_calls import Function, Tool

    fixture = _fixture(name)
    tokenizer = _tokenizer(fixture["tokenizer_version"])
    for case in fixture["cases"]:
        tools = [Tool(function=Function(**t["function"])) for t in TOOLS] if case["tools"] else None
        ids = tokenizer.encode_chat_completion(ChatCompletionRequest(
            messages=[_message(m) for m in case["messages"]], tools=tools)).tokens
        assert ids == case["ids"] and _text(tokenizer, ids) == case["text"]
