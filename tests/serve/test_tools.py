"""Tool calls: the template family's syntax read back from canned answers, and through the server as
OpenAI `tool_calls` (a scripted model writes a known answer)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import openai
import pytest
import torch

from sftune import templates
from sftune.serve.adapters import Served
from sftune.serve.server import create_app
from sftune.serve.tools import answer_text, parse, tool_style
from sftune.serve.background import running

CALL = {"name": "get_weather", "arguments": {"city": "Paris", "unit": "°C"}}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
                                           "parameters": {"type": "object",
                                                          "properties": {"city": {"type": "string"}}}}}]


def test_the_styles_of_the_families():
    assert tool_style(templates.get("qwen2.5")) == "qwen" and tool_style(templates.get("chatml")) == "qwen"
    assert tool_style(templates.get("llama3")) == "llama3" and tool_style(templates.get("mistral")) is None


def test_qwen_calls_as_the_template_renders_them():
    """What the template writes for an assistant tool call is read back as that call."""
    template = templates.get("qwen2.5")
    prompt = [{"role": "user", "content": "Weather?"}]
    turn = {"role": "assistant", "content": "Let me look.", "tool_calls": [{"type": "function", "function": CALL},
                                                                          {"type": "function", "function": CALL}]}
    rendered = template.render(prompt + [turn])
    answer = rendered[len(template.render(prompt, add_generation_prompt=True)):].removesuffix("<|im_end|>\n")
    text, calls = parse(answer, "qwen")
    assert text == "Let me look." and len(calls) == 2
    assert [(c["type"], c["function"]["name"], json.loads(c["function"]["arguments"])) for c in calls] == \
        [("function", "get_weather", CALL["arguments"])] * 2


def test_llama3_calls_as_the_template_renders_them():
    template = templates.get("llama3")
    prompt = [{"role": "user", "content": "Weather?"}]
    rendered = template.render(prompt + [{"role": "assistant", "tool_calls": [{"type": "function", "function": CALL}]}])
    answer = rendered[len(template.render(prompt, add_generation_prompt=True)):].removesuffix("<|eot_id|>")
    text, [call] = parse(answer, "llama3")
    assert text == "" and call["function"]["name"] == "get_weather"
    assert json.loads(call["function"]["arguments"]) == CALL["arguments"]


@pytest.mark.parametrize("answer", ["Just text.", "<tool_call>\n{not json}\n</tool_call>", '{"no": "name"}',
                                    "<tool_call>\n[1, 2]\n</tool_call>"])
def test_answers_that_are_not_calls_stay_text(answer):
    assert parse(answer, "qwen") == (answer, []) and parse(answer, "llama3") == (answer, [])


class Scripted(torch.nn.Module):
    """A model whose greedy answer to any prompt is `script` (its logits put all weight on the next token)."""

    def __init__(self, script: list[int], vocab: int):
        super().__init__()
        self.script, self.vocab, self.prompt_len = script, vocab, 0
        self.config = SimpleNamespace(max_position_embeddings=4096)
        self.device = torch.device("cpu")

    def forward(self, input_ids, attention_mask, position_ids, past_key_values=None, use_cache=True,
                logits_to_keep=None):
        if input_ids.shape[1] > 1:
            self.prompt_len = int(attention_mask[0].sum())
        produced = int(position_ids[0, -1]) - self.prompt_len + 1
        logits = torch.zeros(input_ids.shape[0], 1, self.vocab)
        logits[:, 0, self.script[min(produced, len(self.script) - 1)]] = 1.0
        return SimpleNamespace(logits=logits)


def test_a_tool_call_through_the_openai_client(smollm2_tokenizer):
    tokenizer = smollm2_tokenizer
    template = templates.get("chatml", tokenizer)
    answer = "<tool_call>\n" + json.dumps(CALL, ensure_ascii=False) + "\n</tool_call>"
    script = tokenizer(answer, add_special_tokens=False)["input_ids"] + [tokenizer.convert_tokens_to_ids("<|im_end|>")]
    names = {"tooly": Served("tooly", None, template, tuple(template.stop_token_ids(tokenizer)))}
    with running(create_app(Scripted(script, len(tokenizer)), tokenizer, names)) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0, timeout=60)
        reply = client.chat.completions.create(model="tooly", messages=[{"role": "user", "content": "Paris?"}],
                                               tools=TOOLS, temperature=0)
        choice = reply.choices[0]
        assert choice.finish_reason == "tool_calls" and choice.message.content is None
        [call] = choice.message.tool_calls
        assert call.type == "function" and call.function.name == "get_weather"
        assert json.loads(call.function.arguments) == CALL["arguments"]
        assert reply.usage.completion_tokens == len(script) - 1
        streamed = list(client.chat.completions.create(model="tooly", tools=TOOLS, stream=True, temperature=0,
                                                       messages=[{"role": "user", "content": "Paris?"}]))
        calls = [c for chunk in streamed if chunk.choices for c in chunk.choices[0].delta.tool_calls or []]
        assert [(c.function.name, json.loads(c.function.arguments)) for c in calls] == \
            [("get_weather", CALL["arguments"])]
        assert streamed[-1].choices[0].finish_reason == "tool_calls"
        # without tools the same answer is plain text
        plain = client.chat.completions.create(model="tooly", messages=[{"role": "user", "content": "Paris?"}],
                                               temperature=0)
        assert plain.choices[0].message.content == answer and not plain.choices[0].message.tool_calls


def _answer(name: str, turn: dict, tools=TOOLS) -> str:
    """What the model writes after the generation prompt for `turn`, as the template renders it (its stop
    token left out, as generation cuts it)."""
    template = templates.get(name)
    prompt = [{"role": "user", "content": "Weather?"}]
    rendered = template.render(prompt + [turn], tools)
    answer = rendered[len(template.render(prompt, tools, add_generation_prompt=True)):]
    return answer.removesuffix("<|im_end|>\n").removesuffix("<|call|>").removesuffix("<|return|>") \
        .removesuffix("<|eot|>").removesuffix("</s>").removesuffix("<|tool_response>")


@pytest.mark.parametrize("name,style", [("qwen3.5", "qwen3.5"), ("qwen3.6", "qwen3.5"), ("qwen3.8", "qwen3.5"), ("glm4.5", "glm"),
                                        ("gpt-oss", "harmony"), ("qwen3_2507", "qwen"),
                                        ("nemotron3", "qwen3.5"), ("llama4", "llama4"), ("mistral_v3", "mistral"),
                                        ("mistral_v7_tekken", "mistral"), ("magistral", "mistral"),
                                        ("gemma4", "gemma4")])
def test_calls_of_the_current_families_as_their_templates_render_them(name, style):
    """Each family's call layout is read back as the call, typed values kept (a string stays a string)."""
    tools = [{"type": "function", "function": {"name": "book", "description": "Book", "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}, "code": {"type": "string"},
                                         "days": {"type": "integer"}, "late": {"type": "boolean"}}}}}]
    arguments = {"city": "Zürich", "code": "42", "days": 3, "late": False}
    thinking = "" if name in ("qwen3_2507", "llama4", "mistral_v3", "mistral_v7_tekken") else \
        "<think>I should book.</think>"
    turn = {"role": "assistant", "content": thinking, "tool_calls": [{"type": "function", "function": {
        "name": "book", "arguments": arguments}}]}
    assert tool_style(templates.get(name)) == style
    text, [call] = parse(_answer(name, turn, tools), style, tools)
    assert call["function"]["name"] == "book" and json.loads(call["function"]["arguments"]) == arguments
    assert "tool_call" not in text and "to=functions" not in text


def test_gpt_oss_answer_is_its_final_channel_and_reasoning_is_left_out():
    answer = _answer("gpt-oss", {"role": "assistant", "content": "<think>2 and 2</think>It is 4."})
    assert answer.startswith("<|channel|>analysis<|message|>2 and 2<|end|>")
    assert parse(answer, "harmony") == ("It is 4.", [])
    assert parse("<|channel|>commentary to=functions.book <|constrain|>json<|message|>{oops", "harmony")[1] == []


def test_glm_and_harmony_calls_are_read_from_the_answer_decoded_with_special_tokens():
    class Tokenizer:
        def decode(self, ids, skip_special_tokens):
            return "<|channel|>final<|message|>hi" if not skip_special_tokens else "finalhi"

    assert answer_text(Tokenizer(), [1, 2], "finalhi", "harmony") == "<|channel|>final<|message|>hi"
    assert answer_text(Tokenizer(), [1, 2], "finalhi", "glm") == "<|channel|>final<|message|>hi"
    assert answer_text(Tokenizer(), [1, 2], "as sent", "qwen3.5") == "as sent"


def test_llama4_reads_the_text_between_python_tags_and_each_json_call_after_them():
    answer = ('<|python_start|>Booking both.<|python_end|>{"name": "book", "parameters": {"city": "Oslo"}}'
              '{"name": "book", "parameters": {"city": "Zürich"}}')
    text, calls = parse(answer, "llama4")
    assert text == "Booking both." and [json.loads(c["function"]["arguments"])["city"] for c in calls] == \
        ["Oslo", "Zürich"]
    assert parse('<|python_start|><|python_end|>{"name": "book", oops', "llama4")[1] == []
    assert parse("It is 4.", "llama4") == ("It is 4.", [])


MISTRAL_FIXTURES = Path(__file__).parents[1] / "fixtures" / "mistral"


@pytest.mark.parametrize("fixture", ["v3", "v7_tekken", "magistral"])
def test_mistral_calls_read_back_from_mistral_common_s_own_encoding(fixture):
    """The parallel calls of the reference encoding (mistral-common 1.13.1), read back with the ids the model
    wrote (v3 / v7), so the results a client sends back render as the model was trained."""
    case = next(c for c in json.loads((MISTRAL_FIXTURES / f"{fixture}.json").read_text(encoding="utf-8"))["cases"]
                if c["name"] == "parallel_calls")
    answer = case["text"].split("[/INST]", 1)[1].split("</s>", 1)[0]
    assert answer.startswith("[TOOL_CALLS]")
    text, calls = parse(answer, "mistral", TOOLS)
    assert text == "" and [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in calls] == \
        [("get_weather", {"city": "Paris"}), ("get_weather", {"city": "Zürich"})]
    if fixture == "magistral":  # v13 writes no ids: each call gets a new one
        assert all(c["id"].startswith("call_") for c in calls)
    else:
        assert [c["id"] for c in calls] == [c["id"] for c in case["messages"][1]["tool_calls"]]


@pytest.mark.parametrize("answer", ["Just text.", "[TOOL_CALLS] [{not json}]", "[TOOL_CALLS]book[ARGS]{oops",
                                    '[TOOL_CALLS][{"no": "name"}]', '[TOOL_CALLS][ARGS]{"city": "Oslo"}'])
def test_mistral_answers_that_are_not_calls_stay_text(answer):
    assert parse(answer, "mistral") == (answer, [])


def test_magistral_reasoning_and_calls_through_the_server(mistral_tokenizer):
    """Magistral's [THINK] and [TOOL_CALLS]...[ARGS] are special tokens: the server reads them decoded with them
    and answers with reasoning_content and tool_calls, whole and streamed."""
    tokenizer = mistral_tokenizer
    answer = '[THINK]Ask the tool.[/THINK]Looking.[TOOL_CALLS]get_weather[ARGS]{"city": "Paris"}'
    script = tokenizer(answer, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    template = templates.get("magistral", tokenizer)
    names = {"magistral": Served("magistral", None, template, tuple(template.stop_token_ids(tokenizer)))}
    messages = [{"role": "user", "content": "Paris?"}]
    with running(create_app(Scripted(script, len(tokenizer)), tokenizer, names)) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0, timeout=60)
        choice = client.chat.completions.create(model="magistral", messages=messages, tools=TOOLS,
                                                temperature=0).choices[0]
        assert choice.finish_reason == "tool_calls" and choice.message.content == "Looking."
        assert choice.message.reasoning_content == "Ask the tool."
        [call] = choice.message.tool_calls
        assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {"city": "Paris"}
        streamed = list(client.chat.completions.create(model="magistral", messages=messages, tools=TOOLS,
                                                       temperature=0, stream=True))
        deltas = [c.choices[0].delta for c in streamed if c.choices]
        assert "".join(getattr(d, "reasoning_content", None) or "" for d in deltas) == "Ask the tool."
        assert [c.function.name for d in deltas for c in d.tool_calls or []] == ["get_weather"]
        assert streamed[-1].choices[0].finish_reason == "tool_calls"


def test_gemma4_calls_in_its_notation_are_read_back_typed():
    """Gemma 4 quotes strings with <|"|>, so "42" stays a string and 42 a number; nested objects and lists too;
    the text beside the calls (its template writes a call turn's text after them) is the answer's text."""
    answer = ('<|tool_call>call:book{city:<|"|>Zürich, CH<|"|>,code:<|"|>42<|"|>,days:3,late:false,rate:1.5,'
              'room:{beds:2,tags:[<|"|>a<|"|>,null]}}<tool_call|><|tool_call>call:ping{}<tool_call|>Booking.')
    text, calls = parse(answer, "gemma4")
    assert text == "Booking." and [c["function"]["name"] for c in calls] == ["book", "ping"]
    assert json.loads(calls[0]["function"]["arguments"]) == {
        "city": "Zürich, CH", "code": "42", "days": 3, "late": False, "rate": 1.5,
        "room": {"beds": 2, "tags": ["a", None]}}
    assert json.loads(calls[1]["function"]["arguments"]) == {}


@pytest.mark.parametrize("answer", ["Just text.", "<|tool_call>call:book{city:Paris}<tool_call|>",
                                    '<|tool_call>call:book{city:<|"|>Paris<tool_call|>', "<|tool_call>book{}",
                                    '<|tool_call>call:{a:1}<tool_call|>', '<|tool_call>call:book{a:1}} trailing'])
def test_gemma4_answers_that_are_not_calls_stay_text(answer):
    assert parse(answer, "gemma4") == (answer, [])


def test_gemma4_reasoning_and_calls_through_the_server(gemma4_tokenizer):
    """Gemma 4's thought channel and calls are special tokens: the server reads them decoded with them and
    answers with reasoning_content and tool_calls; generation stops at <|tool_response>, after the calls."""
    tokenizer = gemma4_tokenizer
    answer = ('<|channel>thought\nAsk the tool.\n<channel|>'
              '<|tool_call>call:get_weather{city:<|"|>Paris<|"|>}<tool_call|>')
    script = tokenizer(answer + "<|tool_response>", add_special_tokens=False)["input_ids"]
    template = templates.get("gemma4", tokenizer)
    stops = template.stop_token_ids(tokenizer)
    assert tokenizer.convert_tokens_to_ids("<|tool_response>") in stops
    names = {"gemma": Served("gemma", None, template, tuple(stops))}
    messages = [{"role": "user", "content": "Paris?"}]
    with running(create_app(Scripted(script, len(tokenizer)), tokenizer, names)) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0, timeout=60)
        choice = client.chat.completions.create(model="gemma", messages=messages, tools=TOOLS,
                                                temperature=0).choices[0]
        assert choice.finish_reason == "tool_calls" and not choice.message.content
        assert choice.message.reasoning_content == "Ask the tool."
        [call] = choice.message.tool_calls
        assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {"city": "Paris"}


V31_TOOLS = [{"type": "function", "function": {"name": "book", "parameters": {"type": "object", "properties": {}}}}]


@pytest.mark.parametrize("name", ["deepseek_v3.1", "deepseek_v3.1_nothink"])
def test_deepseek_v31_calls_as_its_template_renders_them(name):
    """DeepSeek-V3.1 writes calls only after "<｜Assistant｜></think>" (non-thinking): what follows that, through the
    calls' end, is read back as the text and the calls, typed arguments kept; in both built-ins."""
    template = templates.get(name)
    assert tool_style(template) == "deepseek_v3.1"
    arguments = [{"city": "Zürich", "code": "42", "days": 3, "late": False}, {"city": "Oslo", "room": {"beds": 2}}]
    turn = {"role": "assistant", "content": "Booking both.",
            "tool_calls": [{"type": "function", "function": {"name": "book", "arguments": a}} for a in arguments]}
    prompt = [{"role": "user", "content": "Book?"}]
    rendered = template.render(prompt + [turn], V31_TOOLS)
    head = template.render(prompt, V31_TOOLS) + "<｜Assistant｜></think>"
    assert rendered.startswith(head) and rendered.endswith("<｜end▁of▁sentence｜>")
    text, calls = parse(rendered[len(head):].removesuffix("<｜end▁of▁sentence｜>"), "deepseek_v3.1", V31_TOOLS)
    assert text == "Booking both." and [c["function"]["name"] for c in calls] == ["book", "book"]
    assert [json.loads(c["function"]["arguments"]) for c in calls] == arguments


@pytest.mark.parametrize("answer", [
    "Just text.", "<｜tool▁calls▁begin｜>",
    "<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>book<｜tool▁sep｜>{oops<｜tool▁call▁end｜>",
    "<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>book<｜tool▁sep｜>[1]<｜tool▁call▁end｜><｜tool▁calls▁end｜>",
    "<｜tool▁calls▁begin｜><｜tool▁call▁begin｜><｜tool▁sep｜>{}<｜tool▁call▁end｜><｜tool▁calls▁end｜>",
    "<｜tool▁calls▁begin｜>stray<｜tool▁call▁begin｜>book<｜tool▁sep｜>{}<｜tool▁call▁end｜><｜tool▁calls▁end｜>"])
def test_deepseek_v31_answers_that_are_not_calls_stay_text(answer):
    assert parse(answer, "deepseek_v3.1") == (answer, [])


def test_deepseek_v31_reasoning_and_calls_through_the_server(smollm2_tokenizer):
    """Thinking on, the answer after the <think> prompt: reasoning, </think>, the calls in DeepSeek's special tokens;
    the server answers with reasoning_content and tool_calls, and stops at the end-of-sentence token after them."""
    from tests.templates.test_official_spans import stand_in

    tokenizer, _ = stand_in(smollm2_tokenizer, "deepseek_v3.1")
    answer = ('Ask the tool.</think><｜tool▁calls▁begin｜><｜tool▁call▁begin｜>get_weather<｜tool▁sep｜>{"city": "Paris"}'
              "<｜tool▁call▁end｜><｜tool▁calls▁end｜><｜end▁of▁sentence｜>")
    script = tokenizer(answer, add_special_tokens=False)["input_ids"]
    template = templates.get("deepseek_v3.1", tokenizer)
    names = {"v31": Served("v31", None, template, tuple(template.stop_token_ids(tokenizer)))}
    messages = [{"role": "user", "content": "Paris?"}]
    with running(create_app(Scripted(script, len(tokenizer)), tokenizer, names)) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0, timeout=60)
        choice = client.chat.completions.create(model="v31", messages=messages, tools=TOOLS,
                                                temperature=0).choices[0]
        assert choice.finish_reason == "tool_calls" and not choice.message.content
        assert choice.message.reasoning_content == "Ask the tool."
        [call] = choice.message.tool_calls
        assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {"city": "Paris"}
