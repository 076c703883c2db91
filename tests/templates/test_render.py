"""Built-in templates render byte for byte what each family's official jinja chat_template renders."""

from __future__ import annotations

import json

import pytest

from sftune import templates
from sftune.data.schema import Message
from tests.templates.chats import (FIXTURES, OFFICIAL, PLAIN, TEXT_AND_CALL_CHAT, TOOL_CHAT, TOOL_FAMILIES, TOOLS, call,
                                   cases, official, prompt_part)



@pytest.mark.parametrize("name,fixture,bos,eos,chat,prompt", list(cases(OFFICIAL)))
def test_builtin_matches_official_template(name, fixture, bos, eos, chat, prompt):
    chat = prompt_part(chat) if prompt else chat
    template = templates.get(name)
    assert template.render(chat, add_generation_prompt=prompt) == official(fixture, chat, bos, eos,
                                                                           add_generation_prompt=prompt)


@pytest.mark.parametrize("name,chat,prompt", [pytest.param(name, chat, prompt, id=f"{name}-{k}-{prompt}")
                                              for name, chats in TOOL_FAMILIES.items()
                                              for k, chat in enumerate(chats) for prompt in (False, True)])
def test_builtin_matches_official_template_with_tools(name, chat, prompt):
    fixture, bos, eos, _ = OFFICIAL[name][0]
    chat = prompt_part(chat) if prompt else chat
    assert templates.get(name).render(chat, tools=TOOLS, add_generation_prompt=prompt) == official(
        fixture, chat, bos, eos, tools=TOOLS, add_generation_prompt=prompt)


def test_every_builtin_of_a_model_family_is_checked_against_an_official_template():
    """Only the layouts without a published jinja template (Vicuna, Alpaca, Chinese) are checked otherwise."""
    from tests.templates.test_reasoning import MODES  # the reasoning built-ins, checked there (and deepseek_r1
    # in test_deepseek_r1.py, deepseek_v3.1 in test_deepseek_v31.py, the current families in test_twins_current.py)
    from tests.templates.test_mistral import FAMILIES as MISTRAL  # against mistral-common's encodings
    from tests.templates.test_twins_current import FAMILIES

    assert set(templates.BUILTINS) - set(OFFICIAL) - set(MODES) - set(FAMILIES) - set(MISTRAL) - {"deepseek_r1",
                                                                                                   "gemma4"} - {
        "deepseek_v3.1", "deepseek_v3.1_nothink"} == {
        "vicuna", "alpaca", "zh_instruct", "zh_qa"}  # gemma4: plain and reasoning chats, in test_twins_current.py
    readme = (FIXTURES / "README.md").read_text(encoding="utf-8")
    for path in FIXTURES.glob("*.jinja"):
        assert f"`{path.name}`" in readme, f"{path.name} has no source in fixtures/templates/README.md"


def test_tool_call_arguments_given_as_json_text_render_as_the_object():
    """OpenAI sends arguments as JSON text; the official templates expect the object (tojson of a string
    would quote it twice), so the text is parsed first, as vLLM does before rendering."""
    as_text = [{"role": "user", "content": "Paris?"},
               {"role": "assistant", "content": "", "tool_calls": [call("Paris", '{"city": "Paris"}')]},
               {"role": "tool", "content": "21"}]
    as_object = [as_text[0], {**as_text[1], "tool_calls": [call("Paris")]}, as_text[2]]
    for name in TOOL_FAMILIES:
        fixture, bos, eos, _ = OFFICIAL[name][0]
        assert templates.get(name).render(as_text, tools=TOOLS) == official(fixture, as_object, bos, eos, tools=TOOLS)


@pytest.mark.parametrize("name", ["llama3.1", "llama3"])
def test_llama3_refuses_what_llama_31s_template_cannot_render(name):
    """Parallel calls make Meta's template raise; text beside a call is dropped by it. Both are refused."""
    with pytest.raises(Exception, match="single tool-calls"):
        official("llama3.1", TOOL_CHAT, "", "", tools=TOOLS)
    with pytest.raises(templates.TemplateError, match="message 2 holds 2 tool calls"):
        templates.get(name).render(TOOL_CHAT, tools=TOOLS)
    with pytest.raises(templates.TemplateError, match="messages 1 and 2 are assistant text and a tool call"):
        templates.get(name).render(TEXT_AND_CALL_CHAT, tools=TOOLS)
    two_calls = [Message("user", "Paris and Rome?"), Message("tool_call", '{"name": "get_weather", "arguments": {}}'),
                 Message("tool_call", '{"name": "get_weather", "arguments": {}}')]
    with pytest.raises(templates.TemplateError, match="messages 1 and 2 are two tool calls in one assistant turn"):
        templates.get(name).render(two_calls)
    with pytest.raises(Exception, match="one tool call per assistant turn"):
        templates.get(name).render_jinja(TEXT_AND_CALL_CHAT, tools=TOOLS)


def test_sftune_tool_call_messages_render_like_openai_tool_calls():
    """The data layer's tool_call messages and OpenAI's tool_calls give the same text."""
    ours = [Message("system", "You can look up the weather."), Message("user", "Weather in Paris and Zürich?"),
            Message("tool_call", json.dumps([{"name": "get_weather", "arguments": {"city": "Paris"}},
                                             {"name": "get_weather", "arguments": {"city": "Zürich"}}],
                                            ensure_ascii=False)),
            Message("tool", '{"temp": 21}'), Message("tool", '{"temp": 18}'),
            Message("assistant", "Paris 21°C, Zürich 18°C.")]
    for name in ("qwen2.5", "chatml"):
        template = templates.get(name)
        assert template.render(ours, tools=TOOLS) == template.render(TOOL_CHAT, tools=TOOLS)
    assert templates.get("qwen2.5").render(ours, tools=TOOLS) == official("qwen2.5", TOOL_CHAT, "", "", tools=TOOLS)


def test_vicuna_matches_fastchat_v1_1():
    """FastChat vicuna_v1.1: system, sep ' ', sep2 '</s>', roles USER/ASSISTANT (add_colon_two)."""
    system = templates.BUILTINS["vicuna"]["default_system"]
    seps = [" ", "</s>"]
    ret = system + seps[0]
    turns = [("USER", PLAIN[0]["content"]), ("ASSISTANT", PLAIN[1]["content"]), ("USER", "Thanks"), ("ASSISTANT", None)]
    for k, (role, message) in enumerate(turns):
        ret += role + ": " + message + seps[k % 2] if message else role + ":"
    chat = PLAIN[:2] + [{"role": "user", "content": "Thanks"}]
    assert templates.get("vicuna").render(chat, add_generation_prompt=True) == "<s>" + ret


def test_alpaca_matches_stanford_prompts():
    no_input = ("Below is an instruction that describes a task. Write a response that appropriately completes the "
                "request.\n\n### Instruction:\n{instruction}\n\n### Response:")
    with_input = ("Below is an instruction that describes a task, paired with an input that provides further "
                  "context. Write a response that appropriately completes the request.\n\n### Instruction:\n"
                  "{instruction}\n\n### Input:\n{input}\n\n### Response:")
    alpaca = templates.get("alpaca")
    chat = [{"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "Blue."}]
    assert alpaca.render(chat) == "<s>" + no_input.format(instruction="Name a colour.") + "Blue.</s>"
    # the data layer writes instruction + input as "instruction\n\ninput"
    chat = [{"role": "user", "content": "Translate.\n\nBonjour"}, {"role": "assistant", "content": "Hello"}]
    assert alpaca.render(chat) == "<s>" + with_input.format(instruction="Translate.", input="Bonjour") + "Hello</s>"


def test_chinese_layouts():
    chat = [{"role": "user", "content": "翻译成英文\n\n你好"}, {"role": "assistant", "content": "Hello"}]
    assert templates.get("zh_instruct").render(chat, add_generation_prompt=False) == "指令：翻译成英文\n输入：你好\n输出：Hello</s>\n"
    assert templates.get("zh_instruct").render(chat[:1], add_generation_prompt=True) == "指令：翻译成英文\n输入：你好\n输出："
    chat = [{"role": "user", "content": "天空为什么是蓝色的？"}, {"role": "assistant", "content": "因为瑞利散射。"}]
    assert templates.get("zh_qa").render(chat) == "问题：天空为什么是蓝色的？\n回答：因为瑞利散射。</s>\n"
