"""Reasoning split back out of each family's answers: the templates' own renders read back (whole and streamed
a character at a time), through the server as `reasoning_content`, and in `sftune chat` shown apart."""

from __future__ import annotations

import io
import json

import openai
import pytest
from rich.console import Console

from sftune import runs, templates
from sftune.serve import chat, reasoning
from sftune.serve.adapters import Served
from sftune.serve.background import running
from sftune.serve.server import create_app
from tests.serve.test_tools import Scripted
from tests.templates.chats import FIXTURES

PROMPT = [{"role": "user", "content": "What is 2 + 2?"}]
THINKING = ["qwen3", "qwen3.5", "qwen3.6", "qwen3.8", "glm4.5", "nemotron3", "deepseek_r1", "gpt-oss", "magistral",
            "gemma4", "deepseek_v3.1"]


def _answer(template, turn: dict) -> str:
    """What the model writes after the generation prompt for `turn`, as its template renders it (its stop
    token left out, as generation cuts it)."""
    rendered = template.render(PROMPT + [turn])
    prompt = template.render(PROMPT, add_generation_prompt=True)
    common = 0
    while common < min(len(prompt), len(rendered)) and prompt[common] == rendered[common]:
        common += 1
    answer = rendered[common:].rstrip("\n")
    for stop in [template.stop, *template.effective_spec.get("stops", [])]:
        answer = answer.removesuffix(stop)
    return answer


def _streamed(template, text: str) -> tuple[str | None, str]:
    splitter = reasoning.Splitter.of(template)
    pieces = [p for char in text for p in splitter.feed(char)] + splitter.close()
    thought = "".join(t for kind, t in pieces if kind == reasoning.REASONING)
    return thought or None, "".join(t for kind, t in pieces if kind == reasoning.CONTENT)


@pytest.mark.parametrize("name", THINKING)
def test_each_family_s_reasoning_is_read_back_from_its_own_layout(name):
    template = templates.get(name)
    answer = _answer(template, {"role": "assistant", "content": "<think>Two and two.\nFour.</think>It is 4."})
    assert "Two and two" in answer and "It is 4." in answer
    assert reasoning.split(template, answer) == ("Two and two.\nFour.", "It is 4.")
    assert _streamed(template, answer) == ("Two and two.\nFour.", "It is 4.")


@pytest.mark.parametrize("name", ["qwen3_nothink", "qwen3.5_nothink", "qwen3_2507", "chatml", "llama3",
                                  "deepseek_v3.1_nothink"])
def test_a_template_without_thinking_leaves_the_answer_whole(name):
    template = templates.get(name)
    assert reasoning.split(template, "It is 4.") == (None, "It is 4.")
    if reasoning.style(template) is None:  # no reasoning at all: a think block is plain text
        assert reasoning.split(template, "<think>x</think>y") == (None, "<think>x</think>y")


def _own(fixture: str, thinking: bool = False) -> dict:
    """A model's own template (jinja, no built-in twin) from the official fixtures; V3.1's set to think."""
    source = (FIXTURES / f"{fixture}.jinja").read_text(encoding="utf-8")
    return {"name": fixture, "jinja": ("{%- set thinking = true -%}" if thinking else "") + source}


@pytest.mark.parametrize("fixture,thinking,answer,expected", [
    ("deepseekv3", False, "Two and two.\n</think>\n\nIt is 4.", ("Two and two.", "It is 4.")),  # prompt: <think>\n
    ("deepseek_v3.1", False, "It is 4.", (None, "It is 4.")),  # non-thinking: the prompt ends </think>
    ("deepseek_v3.1", True, "Two and two.</think>It is 4.", ("Two and two.", "It is 4.")),  # the prompt: <think>
])
def test_deepseek_v3_and_v31_reasoning_is_read_back_through_their_own_templates(fixture, thinking, answer,
                                                                                 expected):
    template = templates.get(_own(fixture, thinking))
    prompt = template.render(PROMPT, add_generation_prompt=True)
    assert prompt.endswith("<think>\n" if fixture == "deepseekv3" else "<think>" if thinking else "</think>")
    assert reasoning.style(template) == "think" and reasoning.opened_by_prompt(template) is (expected[0] is not None)
    assert reasoning.split(template, answer) == expected
    assert _streamed(template, answer) == expected


def test_an_empty_think_block_is_no_reasoning_and_an_unfinished_one_is_all_reasoning():
    template = templates.get("qwen3.5")  # the prompt opens the think block
    assert reasoning.split(template, "\n</think>\n\nIt is 4.") == (None, "It is 4.")
    assert reasoning.split(template, "Still thinking") == ("Still thinking", "")
    assert reasoning.split(templates.get("qwen3"), "  It is 4.") == (None, "It is 4.")


def test_gpt_oss_calls_are_apart_from_reasoning_and_answer():
    template = templates.get("gpt-oss")
    text = ("<|channel|>analysis<|message|>Look it up.<|end|><|start|>assistant to=functions.book<|channel|>"
            "commentary json<|message|>{\"city\": \"Paris\"}")
    splitter = reasoning.Splitter.of(template)
    assert splitter.feed(text) + splitter.close() == [("reasoning", "Look it up."), ("call", '{"city": "Paris"}')]


def test_magistral_reasoning_is_its_think_tokens_and_the_stop_token_ends_the_answer():
    """Magistral's markers are control tokens: read from the answer decoded with them, where its stop token
    (</s>) shows too and ends the answer; a <think> in its answer is plain text."""
    template = templates.get("magistral")
    assert reasoning.special_tokens(template) and not reasoning.special_tokens(templates.get("qwen3"))
    answer = "[THINK]Two and two.[/THINK]It is 4.</s>"
    assert reasoning.split(template, answer) == ("Two and two.", "It is 4.")
    assert _streamed(template, answer) == ("Two and two.", "It is 4.")
    assert _streamed(template, "[THINK]Still thinking</s>") == ("Still thinking", "")
    assert reasoning.split(template, "<think>x</think>y") == (None, "<think>x</think>y")


def test_gemma4_reasoning_is_its_thought_channel_and_the_stop_tokens_end_the_answer():
    """Gemma 4's thought channel is written in special tokens: read from the answer decoded with them, where
    <turn|> (or EOS, or the <|tool_response> after calls) shows too and ends the answer."""
    template = templates.get("gemma4")
    assert reasoning.special_tokens(template) and reasoning.style(template) == "think"
    answer = "<|channel>thought\nTwo and two.\n<channel|>It is 4.<turn|>"
    assert reasoning.split(template, answer) == ("Two and two.", "It is 4.")
    assert _streamed(template, answer) == ("Two and two.", "It is 4.")
    assert _streamed(template, "<|channel>thought\nStill thinking<eos>") == ("Still thinking", "")
    assert reasoning.split(template, "It is 4.<eos>") == (None, "It is 4.")
    assert reasoning.split(template, "<think>x</think>y") == (None, "<think>x</think>y")


def _serve(tokenizer, name: str, answer: str):
    template = templates.get(name, tokenizer)
    script = tokenizer(answer, add_special_tokens=False)["input_ids"] + [tokenizer.convert_tokens_to_ids("<|im_end|>")]
    names = {"thinker": Served("thinker", None, template, tuple(template.stop_token_ids(tokenizer)))}
    return running(create_app(Scripted(script, len(tokenizer)), tokenizer, names))


@pytest.mark.parametrize("name,answer", [
    ("qwen3.5", "Two and two.\n</think>\n\nIt is 4."),
    ("qwen3", "<think>\nTwo and two.\n</think>\n\nIt is 4."),
    (_own("deepseekv3"), "Two and two.\n</think>\n\nIt is 4."),
    (_own("deepseek_v3.1", thinking=True), "Two and two.</think>It is 4."),
    ("deepseek_v3.1", "Two and two.</think>It is 4."),  # the built-in: the prompt opens <think>
    ("gpt-oss", "<|channel|>analysis<|message|>Two and two.<|end|><|start|>assistant<|channel|>final<|message|>"
                "It is 4."),
])
def test_the_server_returns_reasoning_as_reasoning_content(smollm2_tokenizer, name, answer):
    with _serve(smollm2_tokenizer, name, answer) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0, timeout=60)
        message = client.chat.completions.create(model="thinker", messages=PROMPT, temperature=0).choices[0].message
        assert message.content == "It is 4." and message.reasoning_content == "Two and two."
        streamed = list(client.chat.completions.create(model="thinker", messages=PROMPT, temperature=0, stream=True))
        deltas = [c.choices[0].delta for c in streamed if c.choices]
        assert "".join(getattr(d, "reasoning_content", None) or "" for d in deltas) == "Two and two."
        assert "".join(d.content or "" for d in deltas) == "It is 4."


def test_the_server_reads_magistral_s_think_tokens_whole_and_streamed(mistral_tokenizer):
    """[THINK] / [/THINK] are special tokens: a plain decode drops them, so the server reads the answer decoded
    with them, whole and while streaming."""
    tokenizer, answer = mistral_tokenizer, "[THINK]Two and two.[/THINK]It is 4."
    assert tokenizer.decode(tokenizer(answer, add_special_tokens=False)["input_ids"], skip_special_tokens=True) == \
        "Two and two.It is 4."
    with _serve(tokenizer, "magistral", answer) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0, timeout=60)
        message = client.chat.completions.create(model="thinker", messages=PROMPT, temperature=0).choices[0].message
        assert message.content == "It is 4." and message.reasoning_content == "Two and two."
        streamed = list(client.chat.completions.create(model="thinker", messages=PROMPT, temperature=0, stream=True))
        deltas = [c.choices[0].delta for c in streamed if c.choices]
        assert "".join(getattr(d, "reasoning_content", None) or "" for d in deltas) == "Two and two."
        assert "".join(d.content or "" for d in deltas) == "It is 4."
        assert sum(bool(getattr(d, "reasoning_content", None)) for d in deltas) > 1  # streamed, not sent whole


def test_the_server_reads_gemma4_s_thought_channel_whole_and_streamed(gemma4_tokenizer):
    tokenizer, answer = gemma4_tokenizer, "<|channel>thought\nTwo and two.\n<channel|>It is 4."
    assert tokenizer.decode(tokenizer(answer, add_special_tokens=False)["input_ids"], skip_special_tokens=True) == \
        "thought\nTwo and two.\nIt is 4."
    with _serve(tokenizer, "gemma4", answer) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0, timeout=60)
        message = client.chat.completions.create(model="thinker", messages=PROMPT, temperature=0).choices[0].message
        assert message.content == "It is 4." and message.reasoning_content == "Two and two."
        streamed = list(client.chat.completions.create(model="thinker", messages=PROMPT, temperature=0, stream=True))
        deltas = [c.choices[0].delta for c in streamed if c.choices]
        assert "".join(getattr(d, "reasoning_content", None) or "" for d in deltas) == "Two and two."
        assert "".join(d.content or "" for d in deltas) == "It is 4."


def test_a_model_without_reasoning_gets_no_reasoning_field(smollm2_tokenizer):
    with _serve(smollm2_tokenizer, "chatml", "<think>kept</think>It is 4.") as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0, timeout=60)
        reply = client.chat.completions.with_raw_response.create(model="thinker", messages=PROMPT, temperature=0)
        message = json.loads(reply.text)["choices"][0]["message"]
        assert message == {"role": "assistant", "content": "<think>kept</think>It is 4."}


@pytest.mark.parametrize("name,pieces,special", [
    ("qwen3.5", ["Two and", " two.\n</th", "ink>\n\nIt is", " 4."], False),
    ("deepseek_v3.1", ["Two and", " two.</th", "ink>It is", " 4."], False),
    ("gpt-oss", ["<|channel|>analysis<|mess", "age|>Two and two.<|end|><|start|>assistant<|channel|>final",
                 "<|message|>It is 4.<|return|>"], True),
    ("magistral", ["[TH", "INK]Two and", " two.[/TH", "INK]It is 4.<", "/s>"], True),
    ("gemma4", ["<|channel>tho", "ught\nTwo and", " two.\n<chan", "nel|>It is 4.<tu", "rn|>"], True),
])
def test_chat_shows_reasoning_apart_and_keeps_it_in_the_history(monkeypatch, smollm2_tokenizer, name, pieces,
                                                                 special):
    asked = {}

    def stream(model, tokenizer, prompt, options, *, stop_token_ids, special_tokens=False, model_inputs=None):
        asked["special_tokens"] = special_tokens
        yield from pieces

    monkeypatch.setattr(chat.generation, "stream", stream)
    loaded = runs.Loaded("chat", None, smollm2_tokenizer, templates.get(name), [])  # its prompt ids go unread
    out = io.StringIO()
    history = chat.chat_loop(loaded, iter(["What is 2 + 2?"]), Console(file=out, width=200))
    assert asked["special_tokens"] is special  # gpt-oss's channels are read from its special tokens
    assert history[-1] == {"role": "assistant", "content": "<think>Two and two.</think>It is 4."}
    assert out.getvalue() == "thinking: Two and two.\nIt is 4.\n"
