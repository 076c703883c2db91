"""Built-in templates render byte for byte what each family's official jinja chat_template renders."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from transformers.utils.chat_template_utils import render_jinja_template

from sftune import templates
from sftune.data.schema import Message

FIXTURES = Path(__file__).parent / "fixtures" / "templates"

PLAIN = [
    {"role": "user", "content": "Hi there!"},
    {"role": "assistant", "content": "Hello! How can I help?"},
    {"role": "user", "content": "  What is 2 + 2?\n"},
    {"role": "assistant", "content": "It is 4. "},
]
SYSTEM = [{"role": "system", "content": "You are terse."}] + PLAIN
EMPTY_SYSTEM = [{"role": "system", "content": ""}] + PLAIN
SPACED_SYSTEM = [{"role": "system", "content": "  Be brief.\n"}] + PLAIN
CHINESE = [{"role": "user", "content": "你好，请介绍一下北京。"}, {"role": "assistant", "content": "北京是中国的首都。"}]
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
                                              "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                                             "required": ["city"]}}}]


def call(city: str, arguments: "dict | str | None" = None) -> dict:
    return {"type": "function", "function": {"name": "get_weather", "arguments": arguments or {"city": city}}}


TOOL_CHAT = [
    {"role": "system", "content": "You can look up the weather."},
    {"role": "user", "content": "Weather in Paris and Zürich?"},
    {"role": "assistant", "content": None, "tool_calls": [call("Paris"), call("Zürich")]},
    {"role": "tool", "content": '{"temp": 21}'},
    {"role": "tool", "content": '{"temp": 18}'},
    {"role": "assistant", "content": "Paris 21°C, Zürich 18°C."},
]
SINGLE_CALL_CHAT = [
    {"role": "user", "content": "Weather in Paris?"},
    {"role": "assistant", "content": None, "tool_calls": [call("Paris")]},
    {"role": "tool", "content": '{"temp": 21}'},
    {"role": "assistant", "content": "It is 21°C."},
]
# Two rounds of call and result, then an answer and one more exchange; text with spaces to trim.
MULTI_STEP_CHAT = [
    {"role": "system", "content": " Plan, then act. "},
    {"role": "user", "content": " Weather in Zürich, then in Paris? "},
    {"role": "assistant", "content": None, "tool_calls": [call("Zürich")]},
    {"role": "tool", "content": '{"temp": 18, "sky": "bewölkt"}'},
    {"role": "assistant", "content": None, "tool_calls": [call("Paris")]},
    {"role": "tool", "content": "21"},
    {"role": "assistant", "content": "Zürich 18°C, Paris 21°C."},
    {"role": "user", "content": "Thanks!"},
    {"role": "assistant", "content": "You're welcome."},
]
TEXT_AND_CALL_CHAT = [
    {"role": "user", "content": "Paris?"},
    {"role": "assistant", "content": "Let me check.", "tool_calls": [call("Paris")]},
    {"role": "tool", "content": "21"},
    {"role": "assistant", "content": "21°C."},
]
CHATS = [PLAIN, SYSTEM, EMPTY_SYSTEM, SPACED_SYSTEM, CHINESE]

# builtin -> [(official fixture, bos, eos, conversations that official template accepts)]; sources in
# fixtures/templates/README.md. Gemma 1/2 refuse a system message; Gemma 3 folds it into the first turn.
OFFICIAL = {
    "chatml": [("chatml", "", "<|im_end|>", CHATS)],
    "smollm2": [("smollm2", "", "<|im_end|>", CHATS)],
    "qwen2.5": [("qwen2.5", "", "<|im_end|>",
                 CHATS + [TOOL_CHAT, SINGLE_CALL_CHAT, MULTI_STEP_CHAT, TEXT_AND_CALL_CHAT])],
    "llama2": [("llama2", "<s>", "</s>", CHATS)],
    "llama3": [("llama3", "<|begin_of_text|>", "<|eot_id|>", CHATS)],
    "llama3.1": [("llama3.1", "<|begin_of_text|>", "<|eot_id|>", CHATS + [SINGLE_CALL_CHAT, MULTI_STEP_CHAT])],
    "mistral": [("mistral", "<s>", "</s>", CHATS)],
    "gemma": [("gemma", "<bos>", "<eos>", [PLAIN, CHINESE]), ("gemma3", "<bos>", "<eos>", CHATS)],
    "phi3": [("phi3", "", "<|endoftext|>", CHATS)],
    "phi3.5": [("phi3.5", "", "<|endoftext|>", CHATS)],
    "zephyr": [("zephyr", "", "</s>", CHATS)],
}
TOOL_FAMILIES = {name: OFFICIAL[name][0][3] for name in ("qwen2.5", "llama3.1")}


def official(fixture: str, messages, bos: str, eos: str, tools=None, add_generation_prompt=False) -> str:
    """Render with the official template text, through transformers' renderer (apply_chat_template's)."""
    source = (FIXTURES / f"{fixture}.jinja").read_text(encoding="utf-8")
    rendered, _ = render_jinja_template(conversations=[messages], tools=tools, chat_template=source,
                                        add_generation_prompt=add_generation_prompt, bos_token=bos, eos_token=eos)
    return rendered[0]


def prompt_part(chat: list[dict]) -> list[dict]:
    """The conversation up to the last reply: what a generation prompt follows."""
    return chat[:-1] if chat[-1]["role"] == "assistant" else chat


def cases(families: dict):
    for name, fixtures in families.items():
        for fixture, bos, eos, chats in fixtures:
            for k, chat in enumerate(chats):
                for prompt in (False, True):
                    yield pytest.param(name, fixture, bos, eos, chat, prompt,
                                       id=f"{name}-{fixture}-{k}-{'gen' if prompt else 'full'}")


@pytest.mark.parametrize("name,fixture,bos,eos,chat,prompt", list(cases(OFFICIAL)))
def test_builtin_matches_official_template(name, fixture, bos, eos, chat, prompt):
    chat = prompt_part(chat) if prompt else chat
    template = templates.get(name)
    assert template.render(chat, add_generation_prompt=prompt) == official(fixture, chat, bos, eos,
                                                                           add_generation_prompt=prompt)


def trained_chars(messages, segments, policy):
    """The characters the encoder trains under `policy` for these segments."""
    from sftune import encode

    flags = encode.trained_flags(messages, policy)
    chars, pos = set(), 0
    for text, index, body in segments:
        if (policy == "all" and index is None) or (index is not None and flags[index] and (body or policy == "all")):
            chars.update(range(pos, pos + len(text)))
        pos += len(text)
    return chars


PLAIN_OFFICIAL = {name: [(fixture, bos, eos, [c for c in chats if c in CHATS]) for fixture, bos, eos, chats in fixtures]
                  for name, fixtures in OFFICIAL.items()}


@pytest.mark.parametrize("name,fixture,bos,eos,chat,prompt", list(cases(PLAIN_OFFICIAL)))
def test_a_known_model_template_renders_through_its_builtin_twin_with_the_same_spans(name, fixture, bos, eos, chat,
                                                                                      prompt):
    """A model's own template, when it is one of the official texts, takes the built-in's fast path:
    same text and same trained characters under every policy as rendering the jinja itself."""
    from sftune import encode

    source = (FIXTURES / f"{fixture}.jinja").read_text(encoding="utf-8")
    template = templates.Template(templates.TOKENIZER, jinja=source, bos=bos, eos=eos)
    messages = templates.normalize_messages(chat)
    assert templates._twin(template, messages, None) is not None
    fast = template.segments(messages, add_generation_prompt=prompt)
    slow = templates._jinja_segments(template, messages, None, prompt)
    assert "".join(t for t, _, _ in fast) == "".join(t for t, _, _ in slow)
    for policy in encode.POLICIES:
        assert trained_chars(messages, fast, policy) == trained_chars(messages, slow, policy), policy


def test_other_conversations_and_templates_still_render_through_jinja(smollm2_tokenizer):
    source = (FIXTURES / "gemma.jinja").read_text(encoding="utf-8")
    gemma = templates.Template(templates.TOKENIZER, jinja=source, bos="<bos>", eos="<eos>")
    assert templates._twin(gemma, templates.normalize_messages(SYSTEM), None) is None  # Gemma 1/2 refuse it
    with pytest.raises(templates.TemplateError):
        gemma.render(SYSTEM)
    own = templates.get("tokenizer", smollm2_tokenizer)
    assert templates._twin(own, templates.normalize_messages(PLAIN), None) is not None
    assert templates._twin(own, templates.normalize_messages(PLAIN), TOOLS) is None
    assert templates._twin(own, templates.normalize_messages(PLAIN[1:]), None) is None  # not user first
    edited = templates.Template(templates.TOKENIZER, jinja=own.jinja + " ", bos=own.bos, eos=own.eos)
    assert templates._twin(edited, templates.normalize_messages(PLAIN), None) is None


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
    assert set(templates.BUILTINS) - set(OFFICIAL) == {"vicuna", "alpaca", "zh_instruct", "zh_qa"}
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


def test_tokenizer_template_is_the_models_own(smollm2_tokenizer):
    """The `tokenizer` template and the `smollm2` built-in both render what SmolLM2's own template does."""
    for template in (templates.get("tokenizer", smollm2_tokenizer), templates.get("smollm2", smollm2_tokenizer)):
        for chat in CHATS:
            for prompt in (False, True):
                chat = prompt_part(chat) if prompt else chat
                assert template.render(chat, add_generation_prompt=prompt) == smollm2_tokenizer.apply_chat_template(
                    chat, tokenize=False, add_generation_prompt=prompt)


def test_tokenizer_template_needs_a_chat_template():
    with pytest.raises(templates.TemplateError, match="has none"):
        templates.get("tokenizer")


@pytest.mark.parametrize("name", list(templates.BUILTINS))
def test_exported_jinja_renders_what_render_renders(name):
    template = templates.get(name)
    chats = [PLAIN, CHINESE, [{"role": "user", "content": "Q\n\nwith input"}, {"role": "assistant", "content": "A"}],
             SYSTEM, EMPTY_SYSTEM, SPACED_SYSTEM]
    if template.spec.get("tools") == "llama3":
        chats += [SINGLE_CALL_CHAT, MULTI_STEP_CHAT]
    elif template.spec.get("tools"):
        chats += [TOOL_CHAT, MULTI_STEP_CHAT, TEXT_AND_CALL_CHAT]
    for chat in chats:
        for tools in (None, TOOLS if template.spec.get("tools") else None):
            assert template.render_jinja(chat, tools=tools) == template.render(chat, tools=tools)
            upto = next(k for k, m in enumerate(chat) if m["role"] == "user") + 1
            assert template.render_jinja(chat[:upto], tools=tools, add_generation_prompt=True) == template.render(
                chat[:upto], tools=tools, add_generation_prompt=True)


def test_save_to_tokenizer_makes_inference_render_the_training_template(smollm2_tokenizer):
    import copy

    tokenizer = copy.deepcopy(smollm2_tokenizer)
    template = templates.get("qwen2.5", tokenizer)
    templates.save_to_tokenizer(template, tokenizer)
    assert tokenizer.apply_chat_template(SYSTEM, tokenize=False) == template.render(SYSTEM)
    ids = tokenizer.apply_chat_template(PLAIN[:1], add_generation_prompt=True, tokenize=True, return_dict=False)
    assert list(ids) == tokenizer(template.render(PLAIN[:1], add_generation_prompt=True), add_special_tokens=False)["input_ids"]


def test_user_defined_template_and_errors():
    custom = templates.get({"name": "mine", "user": "Q: {content}\n", "assistant": "A: {content}\n\n",
                            "generation_prompt": "A:", "end": "\n"})
    assert custom.render(PLAIN[:2]) == "Q: Hi there!\nA: Hello! How can I help?\n\n"
    jinja = templates.get({"name": "j", "jinja": "{% for m in messages %}{{ m['content'] }};{% endfor %}"})
    assert jinja.render(PLAIN[:2]) == "Hi there!;Hello! How can I help?;"
    with pytest.raises(templates.TemplateError, match="missing assistant"):
        templates.get({"user": "{content}"})
    with pytest.raises(templates.TemplateError, match="unknown template 'nope'"):
        templates.get("nope")
    with pytest.raises(templates.TemplateError, match="only first"):
        templates.get("gemma").render(PLAIN + [{"role": "system", "content": "late"}])
    assert set(templates.BUILTINS) | {"tokenizer"} == set(templates.names())


def test_cli_template_render_and_data_inspect(tmp_path):
    from typer.testing import CliRunner

    from sftune.cli import app

    data = tmp_path / "chat.jsonl"
    data.write_text(json.dumps({"messages": SYSTEM[:3]}) + "\n")
    runner = CliRunner()
    out = runner.invoke(app, ["template", "render", "--template", "qwen2.5", str(data)])
    assert out.exit_code == 0, out.output
    assert json.loads(out.output.strip()) == {"text": templates.get("qwen2.5").render(SYSTEM[:3])}
    out = runner.invoke(app, ["template", "render", "-t", "llama3", "--generation-prompt", str(data)])
    assert json.loads(out.output.strip())["text"] == templates.get("llama3").render(SYSTEM[:2], add_generation_prompt=True)
    out = runner.invoke(app, ["data", "inspect", str(data), "--plain"])
    assert out.exit_code == 0, out.output
    trained = [line.split("\t", 1)[1] for line in out.output.splitlines() if line.startswith("TRAIN")]
    assert "".join(json.loads(t) for t in trained) == "Hello! How can I help?<|im_end|>"
    assert runner.invoke(app, ["template", "list"]).exit_code == 0


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
            if templates._twin(template, messages, None) is None:
                continue
            for prompt in (False, True):
                try:
                    slow = templates._jinja_segments(template, messages, None, prompt)
                except templates.TemplateError as err:
                    raise AssertionError(f"{fixture} refuses a plain chat its twin renders: {chat}") from err
                fast = template.segments(messages, add_generation_prompt=prompt)
                assert "".join(t for t, _, _ in fast) == "".join(t for t, _, _ in slow), (fixture, chat)
                for policy in encode.POLICIES:
                    assert trained_chars(messages, fast, policy) == trained_chars(messages, slow, policy), \
                        (fixture, chat, policy)


def random_tool_chat(rng, say, parallel: bool) -> list[dict]:
    """A user turn, then rounds of calls and results, replies and more user turns."""
    chat = [{"role": "system", "content": say()}] if rng.random() < 0.5 else []
    for _ in range(rng.randint(1, 3)):
        chat.append({"role": "user", "content": say()})
        for _ in range(rng.randint(0, 2)):
            n = rng.randint(1, 3) if parallel else 1
            text = say() if parallel and rng.random() < 0.3 else None
            arguments = {"city": "Oslo", "days": 3} if rng.random() < 0.3 else None
            chat.append({"role": "assistant", "content": text,
                         "tool_calls": [call(rng.choice(["Paris", "Zürich"]), arguments) for _ in range(n)]})
            chat += [{"role": "tool", "content": say()} for _ in range(rng.randint(1, n))]
        chat.append({"role": "assistant", "content": say()})
    return chat


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
        assert templates._twin(template, messages, tools) is not None
        for prompt in (False, True):
            shown = prompt_part(chat) if prompt else chat
            fast = template.segments(templates.normalize_messages(shown), tools, prompt)
            assert "".join(t for t, _, _ in fast) == official(fixture, shown, bos, eos, tools, prompt)
            try:
                slow = templates._jinja_segments(template, templates.normalize_messages(shown), tools, prompt)
            except templates.TemplateError:
                continue  # Llama 3.1 with tools and a system message: its prefix renders raise
            segmented += 1
            for policy in encode.POLICIES:
                shown_messages = templates.normalize_messages(shown)
                assert trained_chars(shown_messages, fast, policy) == trained_chars(shown_messages, slow, policy)
    assert segmented > 40


def test_the_jinja_path_trains_the_end_of_turn_of_the_last_reply():
    """After a run of tool results (Qwen closes the run only after its last result) and with Phi-3's
    closing EOS: the reply's end-of-turn is trained, a template-wide closing suffix is not."""
    qwen = templates.Template(templates.TOKENIZER, jinja=(FIXTURES / "qwen2.5.jinja").read_text(encoding="utf-8"),
                              eos="<|im_end|>")
    messages = templates.normalize_messages(TOOL_CHAT)
    segments = templates._jinja_segments(qwen, messages, TOOLS, False)
    text = "".join(t for t, _, _ in segments)
    trained = trained_chars(messages, segments, "last")
    assert "".join(text[i] for i in sorted(trained)) == "Paris 21°C, Zürich 18°C.<|im_end|>"
    phi3 = templates.Template(templates.TOKENIZER, jinja=(FIXTURES / "phi3.jinja").read_text(encoding="utf-8"),
                              eos="<|endoftext|>")
    messages = templates.normalize_messages(PLAIN)
    segments = templates._jinja_segments(phi3, messages, None, False)
    text = "".join(t for t, _, _ in segments)
    assert text.endswith("It is 4. <|end|>\n<|endoftext|>")
    trained = trained_chars(messages, segments, "last")
    assert "".join(text[i] for i in sorted(trained)) == "It is 4. <|end|>"


def test_a_template_that_cannot_render_a_prefix_says_so_and_what_to_use():
    """Llama 3.1's template puts tools into the first user turn and raises for [system] alone."""
    source = (FIXTURES / "llama3.1.jinja").read_text(encoding="utf-8") + "\n"  # not the official text: no twin
    template = templates.Template(templates.TOKENIZER, jinja=source, bos="<|begin_of_text|>", eos="<|eot_id|>")
    chat = [{"role": "system", "content": "Be brief."}] + SINGLE_CALL_CHAT
    with pytest.raises(templates.TemplateError, match="not its first messages alone.*--template"):
        template.segments(chat, TOOLS)
    with pytest.raises(templates.TemplateError, match="cannot render this conversation"):
        template.segments([{"role": "system", "content": "only a system message"}], TOOLS)
