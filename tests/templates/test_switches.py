"""data.template_kwargs: a template's switches (DeepSeek-V3.1's thinking, Qwen3's enable_thinking, gpt-oss's
reasoning_effort) reach the model's own template in every render and in its saved text; a built-in applies the
switches its official template reads, rendering byte for byte what that template renders with them, and refuses
any other switch, naming what it takes."""

from __future__ import annotations

import jinja2
import pytest
from transformers.utils.chat_template_utils import render_jinja_template

from sftune import templates
from sftune.encode import cache
from sftune.templates import stops, switches
from sftune.templates.render import split_think
from tests.templates.chats import FIXTURES, PLAIN, TOOLS, prompt_part
from tests.templates.test_official_spans import stand_in
from tests.templates.test_twins_current import CHATS, _official

# built-in, its official fixture, the switch and its values
SWITCHED = [("qwen3", "qwen3", "enable_thinking", [True, False]),
            ("qwen3_nothink", "qwen3", "enable_thinking", [True, False]),
            ("qwen3.5", "qwen3.5", "enable_thinking", [True, False]),
            ("qwen3.6", "qwen3.6", "enable_thinking", [True, False]),
            ("qwen3.5_nothink", "qwen3.5_nothink", "enable_thinking", [True, False]),
            ("qwen3.8", "qwen3.8", "reasoning_effort", ["xhigh", "medium", "low"]),
            ("gpt-oss", "gpt-oss", "reasoning_effort", ["low", "medium", "high"])]


def _plain_official(source: str, chat: list[dict], prompt: bool, **kwargs) -> str:
    rendered, _ = render_jinja_template(conversations=[chat], chat_template=source, add_generation_prompt=prompt,
                                        bos_token="", eos_token="", **kwargs)
    return rendered[0]


@pytest.mark.parametrize("name,fixture,key,values", SWITCHED)
def test_a_builtin_switched_renders_its_official_template_called_with_the_switch(name, fixture, key, values):
    """Each value: the built-in's render and its exported jinja (the text saved with a run, switches written in,
    rendered with no argument) equal the official template called with the switch, on reasoning and tool chats."""
    for value in values:
        template = templates.get(name, None, {key: value})
        exported = template.to_jinja()
        for chat in CHATS:
            tools = TOOLS if any("tool_calls" in m for m in chat) else None
            if name == "gpt-oss" and any(len(m.get("tool_calls") or []) > 1 for m in chat):
                continue  # the official template writes only the first call (test_twins_current)
            for prompt in (False, True):
                shown = prompt_part(chat) if prompt else chat
                try:
                    expected = _official(fixture, shown, tools, prompt, **{key: value})
                except jinja2.TemplateError:  # refused by both (test_twins_current)
                    with pytest.raises(templates.TemplateError):
                        template.render(shown, tools, prompt)
                    continue
                assert template.render(shown, tools, prompt) == expected, (name, value, shown)
                if name in ("qwen3", "qwen3_nothink"):  # the export is sftune's own jinja, not the official text
                    assert template.render_jinja(shown, tools, prompt) == expected
                else:
                    assert _official_text_render(exported, fixture, shown, tools, prompt) == expected


def _official_text_render(source: str, fixture: str, chat, tools, prompt) -> str:
    """`source` rendered with no switch passed, the messages shaped as _official shapes them for `fixture`."""
    chat = [{**m, "content": "" if m.get("content") is None else m["content"]} for m in chat]
    field = {"gpt-oss": "thinking", "qwen3.8": "reasoning_content"}.get(fixture)
    if field:
        chat = [{**m, **dict(zip((field, "content"), split_think(m["content"])))}
                if m["role"] == "assistant" and "</think>" in m["content"] else m for m in chat]
    rendered, _ = render_jinja_template(conversations=[chat], tools=tools, chat_template=source,
                                        add_generation_prompt=prompt, bos_token="")
    return rendered[0]


def test_qwen3_switched_off_is_the_nothink_builtin():
    off = templates.get("qwen3", None, {"enable_thinking": False})
    assert off.render(PLAIN[:1], add_generation_prompt=True) == \
        templates.get("qwen3_nothink").render(PLAIN[:1], add_generation_prompt=True)


@pytest.mark.parametrize("name,kwargs,message", [
    ("llama3", {"thinking": True}, "built-in template 'llama3' does not read 'thinking'; it takes none"),
    ("qwen3", {"thinking": True}, "it takes enable_thinking (true | false)"),
    ("qwen3", {"enable_thinking": 1}, "does not read enable_thinking=1"),
    ("gpt-oss", {"reasoning_effort": "xhigh"}, 'reasoning_effort ("low" | "medium" | "high")'),
    ("glm4.5", {"enable_thinking": False}, "built-in template 'glm4.5' does not read 'enable_thinking'"),
])
def test_a_builtin_refuses_a_switch_it_does_not_render_and_names_what_it_takes(name, kwargs, message):
    with pytest.raises(templates.TemplateError, match="data.template_kwargs") as err:
        templates.get(name, None, kwargs)
    assert message in str(err.value) and "data.template: tokenizer" in str(err.value)


def test_a_dict_template_takes_no_switch():
    with pytest.raises(templates.TemplateError, match="dict of formats"):
        templates.get({"user": "U: {content}\n", "assistant": "A: {content}\n"}, None, {"x": 1})


def _v31(smollm2_tokenizer):
    return stand_in(smollm2_tokenizer, "deepseek_v3.1")


def test_the_models_own_template_gets_the_switch_everywhere_it_renders(smollm2_tokenizer):
    """DeepSeek-V3.1 with thinking on: the generation prompt opens <think> as apply_chat_template(thinking=True)
    writes it, the conversation render equals it, the saved text renders it with no argument, and loading the
    saved text again with the same switch gives the same text (a run's tokenizer and config agree)."""
    tokenizer, eos_ids = _v31(smollm2_tokenizer)
    source = tokenizer.chat_template
    template = stops.audit(templates.get(None, tokenizer, {"thinking": True}), tokenizer, eos_ids).template
    prompt = template.render(PLAIN[:1], add_generation_prompt=True)
    assert prompt == tokenizer.apply_chat_template(PLAIN[:1], tokenize=False, add_generation_prompt=True,
                                                   thinking=True)
    assert prompt.endswith("<｜Assistant｜><think>")
    assert template.render(PLAIN) == tokenizer.apply_chat_template(PLAIN, tokenize=False, thinking=True)
    saved = template.to_jinja()
    assert saved != source and _plain_official(saved, PLAIN[:1], True) == \
        _plain_official(source, PLAIN[:1], True, thinking=True)
    tokenizer.chat_template = saved
    again = templates.get("tokenizer", tokenizer, {"thinking": True})
    assert again.to_jinja() == saved and again.render(PLAIN) == template.render(PLAIN)
    plain = templates.get(None, tokenizer)  # the saved text alone keeps the mode
    assert plain.render(PLAIN[:1], add_generation_prompt=True) == prompt


def test_a_switch_reaches_a_macro_and_keeps_the_template_starting_its_line():
    """A switch read inside a macro, and a template whose first line relies on lstrip_blocks."""
    source = ("  {% macro head() %}{{ 'T' if thinking else 'F' }}{% endmacro %}\n"
              "{% for m in messages %}{{ m['content'] }}{% endfor %}{{ head() }}")
    chat = [{"role": "user", "content": "x"}]
    for value in (True, False):
        assert _plain_official(switches.bake(source, {"thinking": value}), chat, False) == \
            _plain_official(source, chat, False, thinking=value)
    assert switches.bake(switches.bake(source, {"thinking": True}), {"thinking": True}) == \
        switches.bake(source, {"thinking": True})
    assert switches.unbaked(switches.bake(source, {"thinking": True})) == source


@pytest.mark.parametrize("kwargs,message", [({"thinkng": True}, "never reads 'thinkng'"),
                                            ({"messages": []}, "cannot be a template switch")])
def test_the_models_own_template_refuses_a_switch_it_never_reads(kwargs, message, smollm2_tokenizer):
    tokenizer, _ = _v31(smollm2_tokenizer)
    with pytest.raises(templates.TemplateError, match=message):
        templates.get(None, tokenizer, kwargs)


def test_the_switches_are_part_of_the_encode_cache_key(smollm2_tokenizer):
    tokenizer, _ = _v31(smollm2_tokenizer)
    records = [{"messages": PLAIN}]
    keys = {cache.fingerprint(records, templates.get(None, tokenizer, kwargs), tokenizer, "assistant", 64)
            for kwargs in ({}, {"thinking": True}, {"thinking": False})}
    assert len(keys) == 3
    keys = {cache.fingerprint(records, templates.get("gpt-oss", None, {"reasoning_effort": effort}), tokenizer,
                              "assistant", 64) for effort in ("low", "high")}
    assert len(keys) == 2


def test_a_twin_switched_renders_through_jinja_and_keeps_its_stops():
    """The official Qwen3.5 text switched off is no longer its twin's text: it renders through jinja, equal to
    the switched built-in, and still stops where the family stops."""
    source = (FIXTURES / "qwen3.5.jinja").read_text(encoding="utf-8")
    own = templates.get({"name": "own", "jinja": source}, None, {"enable_thinking": False})
    builtin = templates.get("qwen3.5", None, {"enable_thinking": False})
    for chat in (PLAIN, CHATS[0]):
        assert own.render(chat) == builtin.render(chat)
        assert own.render(prompt_part(chat), add_generation_prompt=True) == \
            builtin.render(prompt_part(chat), add_generation_prompt=True)
    assert own.stop == "<|im_end|>" and own.reasoning == "qwen3"
