"""data.template_kwargs: a template's switches (DeepSeek-V3.1's thinking, Qwen3's, GLM-4.5's and Nemotron 3's
enable_thinking, gpt-oss's reasoning_effort, Nemotron 3's truncate_history_thinking, Super's low_effort and Ultra's
medium_effort) reach the model's own template in every render and in its saved text; a built-in applies the
switches its official template reads, rendering byte for byte what that template renders with them, training what
the reasoning options say, and refuses any other switch, naming what it takes."""

from __future__ import annotations

import random
from dataclasses import replace

import jinja2
import pytest
from transformers.utils.chat_template_utils import render_jinja_template

from sftune import templates
from sftune import encode
from sftune.encode import cache
from sftune.templates import jinja_segments, stops, switches
from sftune.templates.render import split_think
from tests.templates.chats import FIXTURES, PLAIN, TOOLS, prompt_part
from tests.templates.test_official_spans import stand_in
from tests.templates.test_reasoning import REASONING_CHAT, _random_chat
from tests.templates.test_twins_current import CHATS, _official, _trained, _trained_under

# built-in, its official fixture, the switch and its values
SWITCHED = [("qwen3", "qwen3", "enable_thinking", [True, False]),
            ("qwen3_nothink", "qwen3", "enable_thinking", [True, False]),
            ("qwen3.5", "qwen3.5", "enable_thinking", [True, False]),
            ("qwen3.6", "qwen3.6", "enable_thinking", [True, False]),
            ("qwen3.5_nothink", "qwen3.5_nothink", "enable_thinking", [True, False]),
            ("qwen3.8", "qwen3.8", "reasoning_effort", ["xhigh", "medium", "low"]),
            ("gpt-oss", "gpt-oss", "reasoning_effort", ["low", "medium", "high"]),
            ("glm4.5", "glm4.5", "enable_thinking", [True, False]),
            ("nemotron3", "nemotron3_nano", "enable_thinking", [True, False]),
            ("nemotron3_super", "nemotron3_super", "enable_thinking", [True, False]),
            ("nemotron3_super", "nemotron3_super", "low_effort", [True, False]),
            ("nemotron3_ultra", "nemotron3_ultra", "enable_thinking", [True, False]),
            ("nemotron3_ultra", "nemotron3_ultra", "medium_effort", [True, False]),
            ("nemotron3", "nemotron3_nano", "truncate_history_thinking", [True, False]),
            ("nemotron3_super", "nemotron3_super", "truncate_history_thinking", [True, False]),
            ("nemotron3_ultra", "nemotron3_ultra", "truncate_history_thinking", [True, False])]
# built-in, its official fixture, the switches it is called with: each value alone, and Nemotron's two together
SWITCHINGS = [(name, fixture, {key: value}) for name, fixture, key, values in SWITCHED for value in values] + [
    ("nemotron3_super", "nemotron3_super", {"enable_thinking": False, "low_effort": True}),
    ("nemotron3_ultra", "nemotron3_ultra", {"enable_thinking": False, "medium_effort": True})]


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


@pytest.mark.parametrize("name,fixture,kwargs", SWITCHINGS)
def test_a_builtin_switched_matches_its_official_template_on_random_reasoning_and_tool_chats(name, fixture, kwargs):
    """Random chats (think blocks, empty ones, calls, results, several user turns): the switched built-in renders
    what the official template called with the switches renders, or refuses what it raises on."""
    rng = random.Random(11)
    template = templates.get(name, None, kwargs)
    for _ in range(30):
        chat = _random_chat(rng)
        tools = TOOLS if rng.random() < 0.8 else None
        for prompt in (False, True):
            shown = prompt_part(chat) if prompt else chat
            if name == "gpt-oss" and any(len(m.get("tool_calls") or []) > 1 for m in shown):
                continue  # the official template writes only the first call (test_twins_current)
            try:
                expected = _official(fixture, shown, tools, prompt, **kwargs)
            except jinja2.TemplateError:
                with pytest.raises(templates.TemplateError):
                    template.render(shown, tools, prompt)
                continue
            assert template.render(shown, tools, prompt) == expected, (kwargs, shown)


NO_REASONING = REASONING_CHAT[:4] + [{"role": "assistant", "content": "6"}]


def test_glm_without_thinking_ends_each_user_message_with_nothink_and_prompts_the_empty_think_block():
    """GLM-4.5 with enable_thinking false: "/nothink" ends each user message (once) and the generation prompt closes
    the empty think block, so a reply's empty block is the prompt's, never trained (train_empty_think or not);
    reasoning the data holds after the last user message is trained as the reasoning options say."""
    on, off = templates.get("glm4.5"), templates.get("glm4.5", None, {"enable_thinking": False})
    assert off.render(REASONING_CHAT[:2], add_generation_prompt=True) == \
        "[gMASK]<sop><|system|>\nThink first.<|user|>\n2+2?/nothink<|assistant|>\n<think></think>"
    said = [{"role": "user", "content": "hi /nothink"}, {"role": "assistant", "content": "x"}]
    assert off.render(said) == "[gMASK]<sop><|user|>\nhi /nothink<|assistant|>\n<think></think>\nx"
    assert _trained(on, NO_REASONING, train_empty_think=True) == "\n<think></think>\n4<|user|>\n<think></think>\n6"
    for empty in (False, True):
        assert _trained(off, NO_REASONING, train_empty_think=empty) == "\n4<|user|>\n6"
    assert _trained(off, REASONING_CHAT) == "\n4<|user|>six, clearly</think>\n6"
    assert _trained(off, REASONING_CHAT, reasoning="answer_only") == "\n4<|user|>\n6"


def test_nemotron_switches_prompt_the_empty_think_block_and_add_the_effort_line_to_the_last_user_message():
    """Nemotron 3 with enable_thinking false: the prompt ends <think></think>, the replies' empty blocks are the
    prompt's (not trained). Super's low_effort / Ultra's medium_effort: a line after the last user message only, in
    its (untrained) turn; the replies train as without it."""
    for name in ("nemotron3", "nemotron3_super", "nemotron3_ultra"):
        off = templates.get(name, None, {"enable_thinking": False})
        assert off.render(REASONING_CHAT[:2], add_generation_prompt=True).endswith(
            "<|im_start|>assistant\n<think></think>")
        for empty in (False, True):
            assert _trained(off, NO_REASONING, train_empty_think=empty) == "\n\n4<|im_end|>6<|im_end|>"
        assert _trained(off, REASONING_CHAT) == "\n\n4<|im_end|>\n\nsix, clearly\n\n</think>6<|im_end|>"
        assert _trained(off, REASONING_CHAT, reasoning="answer_only") == "\n\n4<|im_end|>6<|im_end|>"
    for name, key, line in (("nemotron3_super", "low_effort", "low"), ("nemotron3_ultra", "medium_effort",
                                                                       "efficient")):
        plain, effort = templates.get(name), templates.get(name, None, {key: True})
        text = effort.render(REASONING_CHAT)
        assert text.count("{reasoning effort:") == 1
        assert f"<|im_start|>user\nand 3+3?\n\n{{reasoning effort: {line}}}<|im_end|>\n" in text
        assert text == plain.render(REASONING_CHAT).replace("and 3+3?", f"and 3+3?\n\n{{reasoning effort: {line}}}")
        for options in ({}, {"reasoning": "answer_only"}, {"train_empty_think": True}):
            assert _trained(effort, REASONING_CHAT, **options) == _trained(plain, REASONING_CHAT, **options)


def test_nemotron_keeping_history_thinking_trains_every_replys_reasoning_and_splits_nothing():
    """truncate_history_thinking false: an earlier reply keeps its think block (trained, as in one example: nothing
    to split); think_last_turn trains the last exchange's only, answer_only none."""
    from sftune.data.schema import Conversation, Message
    from sftune.encode.reasoning import split_records

    t = templates.get("nemotron3", None, {"truncate_history_thinking": False})
    assert "<|im_start|>assistant\n<think>\nadd them\n</think>\n\n4<|im_end|>" in t.render(REASONING_CHAT)
    assert _trained(t, REASONING_CHAT) == "add them\n</think>\n\n4<|im_end|>\nsix, clearly\n\n</think>6<|im_end|>"
    assert _trained(t, REASONING_CHAT, reasoning="think_last_turn") == \
        "\n\n4<|im_end|>\nsix, clearly\n\n</think>6<|im_end|>"
    assert _trained(t, REASONING_CHAT, reasoning="answer_only") == "\n\n4<|im_end|>6<|im_end|>"
    conversation = Conversation([Message(m["role"], m["content"]) for m in REASONING_CHAT], None, {})
    assert split_records([conversation], t) == ([conversation], 0)
    assert split_records([conversation], templates.get("nemotron3"))[1] == 1  # truncated (the default): split


@pytest.mark.parametrize("name,fixture,kwargs", [case for case in SWITCHINGS if case[0].startswith(("glm", "nemo"))])
def test_a_switched_builtin_trains_what_the_jinja_path_trains_on_the_switched_official_text(name, fixture, kwargs):
    """The official text with the switches written in, as a model's own template (segmented by jinja renders),
    trains the same characters as the switched built-in under every policy, reasoning option and empty-think
    rule, both audited with the family's stops, wherever both write the same text."""
    builtin = templates.get(name, None, kwargs)
    stop_texts = tuple(dict.fromkeys(x for x in (builtin.stop, *builtin.spec.get("stops", []), builtin.spec["eos"])
                                     if x))
    builtin = replace(builtin, stop_texts=stop_texts)
    source = switches.bake((FIXTURES / f"{fixture}.jinja").read_text(encoding="utf-8"), kwargs)
    own = templates.Template(templates.TOKENIZER, jinja=source, stop_texts=stop_texts)
    compared = 0
    for chat in CHATS:
        tools = TOOLS if any("tool_calls" in m for m in chat) else None
        for prompt in (False, True):
            messages = templates.normalize_messages(prompt_part(chat) if prompt else chat)
            try:
                slow = stops.train_stops(jinja_segments.segments(own, messages, tools, prompt), messages,
                                         stop_texts, "")
            except (templates.TemplateError, jinja2.TemplateError):
                continue
            fast = builtin.segments(messages, tools, prompt)
            if "".join(t for t, _, _ in fast) != "".join(t for t, _, _ in slow):
                # GLM's template writes a call-only turn's None content as "None"; its built-in writes nothing
                assert name == "glm4.5" and any(m["role"] == "tool_call" for m in messages)
                continue
            compared += 1
            for policy in encode.POLICIES:
                for reasoning in ("think_and_answer", "answer_only", "think_last_turn"):
                    for empty in (False, True):
                        options = {"reasoning": reasoning, "train_empty_think": empty}
                        assert _trained_under(messages, fast, tools, policy, **options) == \
                            _trained_under(messages, slow, tools, policy, **options), (chat, policy, options)
    assert compared >= 15


def test_qwen3_switched_off_is_the_nothink_builtin():
    off = templates.get("qwen3", None, {"enable_thinking": False})
    assert off.render(PLAIN[:1], add_generation_prompt=True) == \
        templates.get("qwen3_nothink").render(PLAIN[:1], add_generation_prompt=True)


@pytest.mark.parametrize("name,kwargs,message", [
    ("llama3", {"thinking": True}, "built-in template 'llama3' does not read 'thinking'; it takes none"),
    ("qwen3", {"thinking": True}, "it takes enable_thinking (true | false)"),
    ("qwen3", {"enable_thinking": 1}, "does not read enable_thinking=1"),
    ("gpt-oss", {"reasoning_effort": "xhigh"}, 'reasoning_effort ("low" | "medium" | "high")'),
    ("glm4.5", {"thinking": False}, "built-in template 'glm4.5' does not read 'thinking'; it takes enable_thinking"),
    ("nemotron3", {"low_effort": True}, "it takes enable_thinking (true | false)"),
    ("nemotron3_super", {"low_effort": "yes"}, 'does not read low_effort="yes"; it takes enable_thinking (true | '
                                               'false); truncate_history_thinking (true | false); low_effort'),
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
