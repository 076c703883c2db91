"""A model's own template that is an official text renders through its built-in twin: same text, same spans."""

from __future__ import annotations

import pytest

from sftune import templates
from sftune.templates import jinja_segments, twins
from tests.templates.chats import (FIXTURES, OFFICIAL, PLAIN, PLAIN_OFFICIAL, SYSTEM, TOOLS, cases, official, prompt_part,
                                   random_tool_chat, trained_chars)



@pytest.mark.parametrize("name,fixture,bos,eos,chat,prompt", list(cases(PLAIN_OFFICIAL)))
def test_a_known_model_template_renders_through_its_builtin_twin_with_the_same_spans(name, fixture, bos, eos, chat,
                                                                                      prompt):
    """A model's own template, when it is one of the official texts, takes the built-in's fast path:
    same text and same trained characters under every policy as rendering the jinja itself."""
    from sftune import encode

    source = (FIXTURES / f"{fixture}.jinja").read_text(encoding="utf-8")
    template = templates.Template(templates.TOKENIZER, jinja=source, bos=bos, eos=eos)
    messages = templates.normalize_messages(chat)
    assert twins.twin(template.jinja, messages, None) is not None
    fast = template.segments(messages, add_generation_prompt=prompt)
    slow = jinja_segments.segments(template, messages, None, prompt)
    assert "".join(t for t, _, _ in fast) == "".join(t for t, _, _ in slow)
    for policy in encode.POLICIES:
        assert trained_chars(messages, fast, policy) == trained_chars(messages, slow, policy), policy


def test_other_conversations_and_templates_still_render_through_jinja(smollm2_tokenizer):
    source = (FIXTURES / "gemma.jinja").read_text(encoding="utf-8")
    gemma = templates.Template(templates.TOKENIZER, jinja=source, bos="<bos>", eos="<eos>")
    assert twins.twin(gemma.jinja, templates.normalize_messages(SYSTEM), None) is None  # Gemma 1/2 refuse it
    with pytest.raises(templates.TemplateError):
        gemma.render(SYSTEM)
    own = templates.get("tokenizer", smollm2_tokenizer)
    assert twins.twin(own.jinja, templates.normalize_messages(PLAIN), None) is not None
    assert twins.twin(own.jinja, templates.normalize_messages(PLAIN), TOOLS) is None
    assert twins.twin(own.jinja, templates.normalize_messages(PLAIN[1:]), None) is None  # not user first
    edited = templates.Template(templates.TOKENIZER, jinja=own.jinja + " ", bos=own.bos, eos=own.eos)
    assert twins.twin(edited.jinja, templates.normalize_messages(PLAIN), None) is None


def test_builtin_twins_agree_with_jinja_on_random_plain_chats():
    """Awkward contents (whitespace at the edges, empty turns, newlines, markup) in random plain chats."""
    import random

    from sftune import encode

    rng = random.Random(0)
    words = ["", " ", "\n", "hi", "  two  words ", "line\nbreak", "<b>", "{{x}}", "ünï", "中文", "\t", "[INST]"]
    for fixture, bos, eos, chats in (f for fixtures in PLAIN_OFFICIAL.values() for f in fixtures):
        source = (FIXTURES / f"{fixture}.jinja").read_text(encoding="utf-8")
        template = templates.Template(templates.TOKENIZER, jinja=source, bos=bos, eos=eos)
        for _ in range(25):
            say = lambda: "".join(rng.choice(words) for _ in range(rng.randint(1, 4))) or "x"  # noqa: E731
            chat = [{"role": "system", "content": say()}] if fixture != "gemma" and rng.random() < 0.5 else []
            for _ in range(rng.randint(1, 3)):
                chat += [{"role": "user", "content": say()}, {"role": "assistant", "content": say()}]
            messages = templates.normalize_messages(chat)
            if twins.twin(template.jinja, messages, None) is None:
                continue
            for prompt in (False, True):
                try:
                    slow = jinja_segments.segments(template, messages, None, prompt)
                except templates.TemplateError as err:
                    raise AssertionError(f"{fixture} refuses a plain chat its twin renders: {chat}") from err
                fast = template.segments(messages, add_generation_prompt=prompt)
                assert "".join(t for t, _, _ in fast) == "".join(t for t, _, _ in slow), (fixture, chat)
                for policy in encode.POLICIES:
                    assert trained_chars(messages, fast, policy) == trained_chars(messages, slow, policy), \
                        (fixture, chat, policy)


@pytest.mark.parametrize("name", ["qwen2.5", "llama3.1"])
def test_tool_chats_through_a_known_model_template_match_the_official_render_and_spans(name):
    import random

    from sftune import encode

    rng = random.Random(0)
    words = ["", " ", "\n", "hi", " two words ", "ünï", '{"a": 1}']
    say = lambda: "".join(rng.choice(words) for _ in range(rng.randint(1, 3))) or "x"  # noqa: E731
    fixture, bos, eos, _ = OFFICIAL[name][0]
    template = templates.Template(templates.TOKENIZER, jinja=(FIXTURES / f"{fixture}.jinja").read_text(encoding="utf-8"),
                                  bos=bos, eos=eos)
    segmented = 0
    for _ in range(60):
        chat = random_tool_chat(rng, say, parallel=name == "qwen2.5")
        tools = TOOLS if rng.random() < 0.8 else None
        messages = templates.normalize_messages(chat)
        assert twins.twin(template.jinja, messages, tools) is not None
        for prompt in (False, True):
            shown = prompt_part(chat) if prompt else chat
            fast = template.segments(templates.normalize_messages(shown), tools, prompt)
            assert "".join(t for t, _, _ in fast) == official(fixture, shown, bos, eos, tools, prompt)
            try:
                slow = jinja_segments.segments(template, templates.normalize_messages(shown), tools, prompt)
            except templates.TemplateError:
                continue  # Llama 3.1 with tools and a system message: its prefix renders raise
            segmented += 1
            for policy in encode.POLICIES:
                shown_messages = templates.normalize_messages(shown)
                assert trained_chars(shown_messages, fast, policy) == trained_chars(shown_messages, slow, policy)
    assert segmented > 40
