"""The built-ins of the current families (Qwen3-2507, Qwen3.5 / 3.6, GLM-4.5) render byte for byte what
their official templates render, on fixed and random chats with reasoning and tool calls; the official
text of a model renders through its twin; the reasoning options and the stops train what they say."""

from __future__ import annotations

import hashlib
import random
import re
import types

import jinja2
import pytest
from transformers.utils.chat_template_utils import render_jinja_template

from sftune import templates
from sftune.encode import labels as encode_labels
from sftune.encode.labels import render_spans
from sftune.encode.reasoning import split_records
from sftune.templates import jinja_segments, stops, twins
from sftune.templates.render import split_think
from sftune.templates.template import official_text
from tests.templates.chats import CHATS as PLAIN_CHATS
from tests.templates.chats import FIXTURES, TOOLS, call, prompt_part, random_tool_chat, trained_chars
from tests.templates.test_reasoning import CHATS as REASONING_CHATS
from tests.templates.test_reasoning import REASONING_CHAT, _random_chat

# built-in -> (official fixture, the keyword arguments its official template is called with)
FAMILIES = {
    "qwen3_2507": ("qwen3_2507", {}),
    "qwen3.5": ("qwen3.5", {}),
    "qwen3.5_nothink": ("qwen3.5_nothink", {}),
    "qwen3.6": ("qwen3.6", {}),
    "qwen3.8": ("qwen3.8", {}),
    "glm4.5": ("glm4.5", {}),
    "gpt-oss": ("gpt-oss", {}),
    "nemotron3": ("nemotron3_nano", {}),
    "llama4": ("llama4", {}),
    "nemotron3_super": ("nemotron3_super", {}),
    "nemotron3_ultra": ("nemotron3_ultra", {}),
    "gemma4": ("gemma4_v5", {}),
}
# The BOS text a fixture's template writes, where it writes one (the built-in writes its family's BOS).
BOS = {"llama4": "<|begin_of_text|>", "gemma4_v5": "<bos>"}
# The same texts called with the other thinking mode are the other built-in.
MODES = [("qwen3.5_nothink", "qwen3.5", {"enable_thinking": False}),
         ("qwen3.5", "qwen3.5_nothink", {"enable_thinking": True})]
# Non-string argument values, which Qwen3.5 writes with jinja's `string` and Qwen3.6 as JSON.
TYPED_CALL_CHAT = [
    {"role": "user", "content": "Book it."},
    {"role": "assistant", "content": "<think>\nneed the tool\n</think>\n\nBooking.",
     "tool_calls": [call("", {"city": "Oslo", "days": 3, "late": True, "pets": None, "tags": ["a", "ü"],
                              "room": {"beds": 2}, "rate": 1.5})]},
    {"role": "tool", "content": "  booked  "},
    {"role": "assistant", "content": "Done."},
]
CHATS = REASONING_CHATS + PLAIN_CHATS + [TYPED_CALL_CHAT]


def _official(fixture: str, chat: list[dict], tools, prompt: bool, **kwargs) -> str:
    """The official render, a call-only turn's content as "" (GLM's template writes a None content as
    "None", gpt-oss's and Llama 4's raise on it; their models are shown "" there, and the built-in writes
    nothing), and
    for gpt-oss, Qwen3.8 and Gemma 4 a reply's <think> block as the field their templates read reasoning from."""
    chat = [{**m, "content": "" if m.get("content") is None else m["content"]} for m in chat]
    field = {"gpt-oss": "thinking", "qwen3.8": "reasoning_content", "gemma4_v5": "reasoning_content"}.get(fixture)
    if field:
        chat = [{**m, **dict(zip((field, "content"), split_think(m["content"])))}
                if m["role"] == "assistant" and "</think>" in m["content"] else m for m in chat]
    source = (FIXTURES / f"{fixture}.jinja").read_text(encoding="utf-8")
    rendered, _ = render_jinja_template(conversations=[chat], tools=tools, chat_template=source,
                                        add_generation_prompt=prompt, bos_token=BOS.get(fixture, ""), **kwargs)
    return rendered[0]


def _check(name: str, fixture: str, kwargs: dict, chat: list[dict], tools) -> None:
    template = templates.get(name)
    own = templates.Template(templates.TOKENIZER, jinja=(FIXTURES / f"{fixture}.jinja").read_text(encoding="utf-8"),
                             bos=BOS.get(fixture, ""))
    for prompt in (False, True):
        shown = prompt_part(chat) if prompt else chat
        if name == "gpt-oss" and any(len(m.get("tool_calls") or []) > 1 for m in shown):
            with pytest.raises(templates.TemplateError, match="writes only the first call|Cannot pass both"):
                template.render(shown, tools, prompt)  # the official template drops all calls but the first
            continue
        try:
            expected = _official(fixture, shown, tools, prompt, **kwargs)
        except jinja2.TemplateError as refused:  # the built-in refuses it too, and says why
            with pytest.raises(templates.TemplateError, match=re.escape(str(refused)[:40])):
                template.render(shown, tools, prompt)
            continue
        assert template.render(shown, tools, prompt) == expected, (name, shown)
        if not kwargs:  # the official text as a model's own template, through the twin
            assert twins.twin(own.jinja, templates.normalize_messages(shown), tools) == name
            assert own.render(shown, tools, prompt) == expected, (name, shown)


@pytest.mark.parametrize("name", list(FAMILIES))
@pytest.mark.parametrize("k", range(len(CHATS)))
def test_current_family_builtin_is_byte_equal_to_its_official_template(name, k):
    chat = CHATS[k]
    _check(name, *FAMILIES[name], chat, TOOLS if any("tool_calls" in m for m in chat) else None)


@pytest.mark.parametrize("name,fixture,kwargs", MODES)
def test_qwen35_thinking_switch_of_one_text_is_the_other_builtin(name, fixture, kwargs):
    for chat in CHATS:
        _check(name, fixture, kwargs, chat, TOOLS if any("tool_calls" in m for m in chat) else None)


@pytest.mark.parametrize("name", list(FAMILIES))
def test_current_family_builtin_matches_its_official_template_on_random_reasoning_and_tool_chats(name):
    rng = random.Random(7)
    for _ in range(60):
        chat = _random_chat(rng)
        _check(name, *FAMILIES[name], chat, TOOLS if rng.random() < 0.8 else None)


@pytest.mark.parametrize("name", [n for n in FAMILIES if templates.BUILTINS[n].get("official")])
def test_the_export_is_the_official_text_shipped_verbatim(name):
    """The jinja saved into a trained model's tokenizer is the official text, byte for byte."""
    spec = templates.BUILTINS[name]
    fixture = (FIXTURES / spec["official"]).read_text(encoding="utf-8")
    assert official_text(spec["official"]) == fixture
    assert templates.get(name).to_jinja() == fixture
    assert twins.TWINS[hashlib.sha256(fixture.encode("utf-8")).hexdigest()] == name


def _trained(template, chat, tools=None, **options) -> str:
    messages = templates.normalize_messages(chat)
    text, spans = render_spans(template, messages, tools, "assistant", **options)
    return "".join(text[a:b] for a, b, _ in spans)


def test_qwen35_trains_reasoning_and_answers_after_the_prompts_think_opener():
    t = templates.get("qwen3.5")
    assert t.render(REASONING_CHAT[:2], add_generation_prompt=True).endswith("<|im_start|>assistant\n<think>\n")
    assert _trained(t, REASONING_CHAT) == "4<|im_end|>six, clearly\n</think>\n\n6<|im_end|>"
    assert _trained(t, REASONING_CHAT, reasoning="answer_only") == "4<|im_end|>6<|im_end|>"
    no_reasoning = REASONING_CHAT[:4] + [{"role": "assistant", "content": "6"}]
    assert _trained(t, no_reasoning) == "4<|im_end|>6<|im_end|>"  # the empty think block is not trained
    assert _trained(t, no_reasoning, train_empty_think=True) == "4<|im_end|>\n</think>\n\n6<|im_end|>"
    nothink = templates.get("qwen3.5_nothink")
    assert nothink.render(REASONING_CHAT[:2], add_generation_prompt=True).endswith("<think>\n\n</think>\n\n")
    assert _trained(nothink, no_reasoning) == "4<|im_end|>6<|im_end|>"


def test_qwen35_think_last_turn_and_tool_calls():
    chat = [{"role": "user", "content": "Weather?"},
            {"role": "assistant", "content": "<think>call it</think>", "tool_calls": [call("Paris")]},
            {"role": "tool", "content": "21"},
            {"role": "assistant", "content": "<think>it said 21</think>It is 21."}]
    t = templates.get("qwen3.5")
    call_text = "<tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n</parameter>\n</function>\n</tool_call>"
    assert _trained(t, chat, TOOLS) == ("call it\n</think>\n\n" + call_text + "<|im_end|>"
                                        "it said 21\n</think>\n\nIt is 21.<|im_end|>")
    # the call turn leads to the last reply: both are the final exchange, whose reasoning think_last_turn trains
    assert _trained(t, chat, TOOLS, reasoning="think_last_turn") == _trained(t, chat, TOOLS)
    assert _trained(t, chat, TOOLS, reasoning="answer_only") == (call_text + "<|im_end|>It is 21.<|im_end|>")


def test_glm_trains_the_next_header_as_the_stop_of_each_reply():
    """GLM-4.5's turns have no end text: the <|user|> / <|observation|> header after a reply is the model's
    stop token, so it is trained with the reply (the jinja path gives it to the next message)."""
    chat = [{"role": "system", "content": "S"},
            {"role": "user", "content": "Weather?"},
            {"role": "assistant", "content": "", "tool_calls": [call("Paris")]},
            {"role": "tool", "content": "21"},
            {"role": "assistant", "content": "<think> it said 21 </think> It is 21. "},
            {"role": "user", "content": "Thanks"},
            {"role": "assistant", "content": "<think>polite</think>You're welcome."}]
    t = templates.get("glm4.5")
    assert t.render(chat, TOOLS) == _official("glm4.5", chat, TOOLS, False)
    call_text = "\n<tool_call>get_weather\n<arg_key>city</arg_key>\n<arg_value>Paris</arg_value>\n</tool_call>"
    assert _trained(t, chat, TOOLS) == call_text + "<|observation|>\nIt is 21.<|user|>\n<think>polite</think>\n" \
                                                   "You're welcome."
    assert _trained(t, chat, TOOLS, reasoning="answer_only").endswith("<|user|>\nYou're welcome.")
    # The jinja path gives each header to the next message (compared on a chat it segments: no reasoning
    # dropped).
    stable = [chat[0], chat[1], {"role": "assistant", "content": "It is 21."}] + chat[5:]
    own = templates.Template(templates.TOKENIZER, jinja=(FIXTURES / "glm4.5.jinja").read_text(encoding="utf-8"))
    messages = templates.normalize_messages(stable)
    slow = jinja_segments.segments(own, messages, TOOLS, False)
    fast = own.segments(messages, TOOLS)
    text = "".join(piece for piece, _, _ in fast)
    stops = {k + n for header in ("<|user|>", "<|observation|>") for k in range(text.index("<|assistant|>"), len(text))
             if text.startswith(header, k) for n in range(len(header))}  # the headers after a reply
    assert trained_chars(messages, fast, "assistant") == trained_chars(messages, slow, "assistant") | stops


class _Vocab:
    """A tokenizer of a few special texts, enough for `stop_token_ids`."""

    eos_token_id = 0
    ids = {"<|endoftext|>": [0], "<|user|>": [1], "<|observation|>": [2], "<|im_end|>": [3]}

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": self.ids.get(text, [9, 9])}


def test_glm_generation_stops_at_the_next_header():
    assert templates.get("glm4.5").stop_token_ids(_Vocab()) == [0, 1, 2]
    assert templates.get("qwen3.5").stop_token_ids(_Vocab()) == [0, 3]


@pytest.mark.parametrize("name", ["qwen3.5", "glm4.5"])
def test_earlier_reasoning_is_split_into_its_own_example(name):
    """Both drop a reply's reasoning before the last user query: each exchange becomes an example."""
    from sftune.data.schema import Conversation, Message

    conversation = Conversation([Message(m["role"], m["content"]) for m in REASONING_CHAT], None, {})
    records, n_split = split_records([conversation], templates.get(name))
    assert n_split == 1 and len(records) == 2
    assert "add them" in _trained(templates.get(name), records[0])


def test_qwen35_refuses_what_its_template_refuses():
    t = templates.get("qwen3.5")
    with pytest.raises(templates.TemplateError, match="no user query"):
        t.render([{"role": "user", "content": "<tool_response>x</tool_response>"},
                  {"role": "assistant", "content": "y"}])
    with pytest.raises(templates.TemplateError, match="system message is allowed only first"):
        t.render([{"role": "user", "content": "x"}, {"role": "system", "content": "late"}])
    with pytest.raises(templates.TemplateError, match="must be a JSON object"):
        t.render([{"role": "user", "content": "x"},
                  {"role": "assistant", "content": None, "tool_calls": [call("", "[1, 2]")]}], TOOLS)


def test_gpt_oss_trains_channels_and_ends_the_last_reply_with_return():
    t = templates.get("gpt-oss")
    chat = [{"role": "system", "content": "Be brief."},
            {"role": "user", "content": "2+2?"},
            {"role": "assistant", "content": "<think>add</think>4"},
            {"role": "user", "content": "Weather?"},
            {"role": "assistant", "content": "<think>ask the tool</think>", "tool_calls": [call("Paris")]},
            {"role": "tool", "content": "21"},
            {"role": "assistant", "content": "<think>it said 21</think>21°C"}]
    text = t.render(chat, TOOLS)
    assert "<|start|>developer<|message|># Instructions\n\nBe brief.\n\n# Tools" in text
    call_text = ' to=functions.get_weather<|channel|>commentary json<|message|>{"city": "Paris"}<|call|>'
    assert _trained(t, chat, TOOLS) == ("<|channel|>final<|message|>4<|end|>" + call_text
                                        + "<|channel|>analysis<|message|>it said 21<|end|><|start|>assistant"
                                          "<|channel|>final<|message|>21°C<|return|>")
    assert "add" not in text and "ask the tool" not in text  # a later final answer drops them
    assert _trained(t, chat, TOOLS, reasoning="answer_only").endswith(call_text + "<|channel|>final<|message|>21°C"
                                                                      "<|return|>")
    assert t.render(chat[:4], TOOLS, True).endswith("<|start|>user<|message|>Weather?<|end|><|start|>assistant")
    assert t.stop == "<|return|>"


def test_gpt_oss_tool_namespace_matches_the_official_macros_on_a_rich_schema():
    rich = [{"type": "function", "function": {"name": "book", "description": "Book a room", "parameters": {
        "type": "object", "required": ["city", "when"], "properties": {
            "city": {"type": "string", "description": "City name"},
            "kind": {"type": "string", "enum": ["single", "double"], "default": "single"},
            "when": {"type": "object", "properties": {"day": {"type": "integer"}, "late": {"type": "boolean"}},
                     "required": ["day"]},
            "tags": {"type": "array", "items": {"type": "string"}, "nullable": True},
            "rooms": {"type": "array", "items": {"type": "object", "properties": {"beds": {"type": "number"}}}},
            "any": {"type": "array"},
            "note": {"type": "string", "nullable": True, "default": None},
            "either": {"oneOf": [{"type": "string", "description": "a name"}, {"type": "integer", "default": 3}]},
            "multi": {"type": ["string", "number"]},
            "obj": {"type": "object"},
            "free": {},
            "rate": {"type": "number", "default": 1.5}}}}},
        {"type": "function", "function": {"name": "ping", "description": "No arguments"}}]
    chat = [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]
    assert templates.get("gpt-oss").render(chat, rich) == _official("gpt-oss", chat, rich, False)
    with pytest.raises(templates.TemplateError, match="has no description"):
        templates.get("gpt-oss").render(chat, [{"type": "function", "function": {"name": "f"}}])


def test_gpt_oss_generation_stops_at_return_and_call():
    vocab = _Vocab()
    vocab.ids = {**vocab.ids, "<|return|>": [4], "<|call|>": [5]}
    assert templates.get("gpt-oss").stop_token_ids(vocab) == [0, 4, 5]


def test_gpt_oss_earlier_reasoning_is_split_into_its_own_example():
    from sftune.data.schema import Conversation, Message

    messages = [{"role": "user", "content": "Weather?"},
                {"role": "assistant", "content": "<think>ask the tool</think>"},
                {"role": "tool_call", "content": '{"name": "get_weather", "arguments": {"city": "Paris"}}'},
                {"role": "tool", "content": "21"},
                {"role": "assistant", "content": "<think>it said 21</think>21°C"}]
    conversation = Conversation([Message(m["role"], m["content"]) for m in messages], TOOLS, {})
    records, n_split = split_records([conversation], templates.get("gpt-oss"))
    assert n_split == 1 and [len(r.messages) for r in records] == [3, 5]  # the first ends after its call
    first = _trained(templates.get("gpt-oss"), records[0], TOOLS)
    assert first.startswith("<|channel|>analysis<|message|>ask the tool<|end|><|start|>assistant to=functions.")


def test_nemotron3_trains_each_replys_think_block_and_answer_and_lists_rich_tools_as_the_official():
    t = templates.get("nemotron3")
    assert t.render(REASONING_CHAT[:2], add_generation_prompt=True).endswith("<|im_start|>assistant\n<think>\n")
    # an earlier reply keeps what follows its </think> as the official template does ("\n\n4"); what the
    # generation prompt holds of a think block ("<think>\n", or "<think>" of an empty one) is not trained
    assert _trained(t, REASONING_CHAT) == "\n\n4<|im_end|>\nsix, clearly\n\n</think>6<|im_end|>"
    assert _trained(t, REASONING_CHAT, reasoning="answer_only") == "\n\n4<|im_end|>6<|im_end|>"
    assert _trained(t, REASONING_CHAT, train_empty_think=True).startswith("</think>\n\n4<|im_end|>")
    assert templates.get("nemotron3").render(PLAIN_CHATS[0]).startswith("<|im_start|>system\n<|im_end|>\n")
    rich = [{"type": "function", "function": {"name": "book", "description": " Book a room ", "strict": True,
                                              "parameters": {"type": "object", "required": ["city"],
                                                             "additionalProperties": False, "properties": {
            "city": {"type": "string", "description": "City", "minLength": 1},
            "kind": {"type": ["string", "null"], "enum": ["a", "b"], "default": "a"},
            "when": {"type": "object", "properties": {"day": {"type": "integer"}}}}}}},
        {"type": "function", "function": {"name": "ping"}}]
    chat = [{"role": "system", "content": "S"}, {"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]
    assert t.render(chat, rich) == _official("nemotron3_nano", chat, rich, False)


def test_qwen38_keeps_every_replys_reasoning_so_nothing_is_split():
    from sftune.data.schema import Conversation, Message

    t = templates.get("qwen3.8")
    assert t.render(REASONING_CHAT).startswith("<|im_start|>system\nReasoning effort is set to xhigh.")
    assert _trained(t, REASONING_CHAT) == "add them\n</think>\n\n4<|im_end|>six, clearly\n</think>\n\n6<|im_end|>"
    last_only = "4<|im_end|>six, clearly\n</think>\n\n6<|im_end|>"
    assert _trained(t, REASONING_CHAT, reasoning="think_last_turn") == last_only
    conversation = Conversation([Message(m["role"], m["content"]) for m in REASONING_CHAT], None, {})
    assert split_records([conversation], t) == ([conversation], 0)


def _trained_under(messages, segments, tools, policy, **options) -> set[int]:
    """The characters `render_spans` trains from these segments (the encoder's rule, options included)."""
    stub = types.SimpleNamespace(segments=lambda msgs, tls: segments)
    return {c for a, b, _ in render_spans(stub, messages, tools, policy, **options)[1] for c in range(a, b)}


@pytest.mark.parametrize("name", list(FAMILIES))
def test_trained_spans_equal_the_jinja_paths_wherever_it_segments_the_same_text(name):
    """Where the jinja path (prefix renders, else placeholders) renders a chat and writes the same text, the
    twin trains the same characters under every policy, with or without empty think blocks: each reply from
    the end of its generation prompt through its stop token. Both are audited with the family's stops, as a
    run's template is (GLM's next header trained with the reply it ends)."""
    from sftune import encode

    fixture, _ = FAMILIES[name]
    builtin = templates.get(name)
    stop_texts = tuple(dict.fromkeys(x for x in (builtin.stop, *builtin.spec.get("stops", []), builtin.spec["eos"])
                                     if x))
    own = templates.Template(templates.TOKENIZER, jinja=(FIXTURES / f"{fixture}.jinja").read_text(encoding="utf-8"),
                             stop_texts=stop_texts)
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
            try:
                fast = own.segments(messages, tools, prompt)
            except templates.TemplateError:  # gpt-oss: what its template raises on once reasoning is split out
                assert name == "gpt-oss"
                continue
            assert "".join(t for t, _, _ in fast) == "".join(t for t, _, _ in slow), (chat, prompt)
            compared += 1
            for policy in encode.POLICIES:
                for empty in (False, True):
                    assert _trained_under(messages, fast, tools, policy, train_empty_think=empty) == \
                        _trained_under(messages, slow, tools, policy, train_empty_think=empty), (chat, policy, empty)
    assert compared >= 20


def _both_paths(name: str, seed: int, chats: int, reasoning: bool = False):
    """Random tool chats (parallel calls where the family writes them, blank and whitespace contents, multi-turn,
    with and without a system message and a generation prompt; with think blocks when `reasoning`), each segmented
    by the twin and by the jinja path over the family's official text: yields (messages, tools, prompt, twin's
    segments, jinja path's segments, or the refusal's message, which must name a message)."""
    fixture, _ = FAMILIES.get(name, (name, {}))
    builtin = templates.get(name)
    stop_texts = tuple(dict.fromkeys(x for x in (builtin.stop, *builtin.spec.get("stops", []), builtin.spec["eos"])
                                     if x))
    own = templates.Template(templates.TOKENIZER, jinja=(FIXTURES / f"{fixture}.jinja").read_text(encoding="utf-8"),
                             bos=BOS.get(fixture, ""), eos=builtin.spec["eos"], stop_texts=stop_texts)
    rng = random.Random(seed)
    words = ["", " ", "\n", "hi", " two words ", "ünï", '{"a": 1}']
    say = lambda: "".join(rng.choice(words) for _ in range(rng.randint(1, 3))) or "x"  # noqa: E731
    for _ in range(chats):
        chat = random_tool_chat(rng, say, parallel=name != "gpt-oss")  # gpt-oss's template writes one call a turn
        chat = _with_reasoning(chat, rng, say) if reasoning else chat
        tools = TOOLS if rng.random() < 0.8 else None
        for prompt in (False, True):
            messages = templates.normalize_messages(prompt_part(chat) if prompt else chat)
            fast = own.segments(messages, tools, prompt)
            try:
                slow = stops.train_stops(jinja_segments.segments(own, messages, tools, prompt), messages,
                                         stop_texts, "")
            except templates.TemplateError as refusal:
                assert re.search(r"message \d+", str(refusal)), refusal
                yield messages, tools, prompt, fast, str(refusal)
                continue
            assert "".join(t for t, _, _ in slow) == "".join(t for t, _, _ in fast), (messages, prompt)
            yield messages, tools, prompt, fast, slow


@pytest.mark.parametrize("name", [*FAMILIES, "qwen3"])
def test_random_tool_chats_train_alike_through_the_twin_and_the_families_own_template(name):
    """Random tool chats through the official jinja segmented by the jinja path: it writes the twin's text and
    trains the twin's characters under every policy, with or without empty think blocks, or refuses the chat
    naming a message; most are compared."""
    from sftune import encode

    compared, refused = 0, []
    for messages, tools, prompt, fast, slow in _both_paths(name, seed=3, chats=60):
        if isinstance(slow, str):
            refused.append(slow)
            continue
        compared += 1
        for policy in encode.POLICIES:
            assert trained_chars(messages, fast, policy) == trained_chars(messages, slow, policy), \
                (messages, prompt, policy)
        assert _trained_under(messages, fast, tools, "assistant", train_empty_think=True) == \
            _trained_under(messages, slow, tools, "assistant", train_empty_think=True), (messages, prompt)
    assert compared >= 110, refused


def _with_reasoning(chat: list[dict], rng: random.Random, say) -> list[dict]:
    """The chat with a think block opening 40% of its replies, calls' turns included: text, whitespace or empty."""
    return [{**m, "content": f"<think>{rng.choice(['', ' ', say(), say()])}</think>" + (m["content"] or "")}
            if m["role"] == "assistant" and rng.random() < 0.4 else m for m in chat]


@pytest.mark.parametrize("name", [*FAMILIES, "qwen3"])
def test_random_tool_chats_with_reasoning_train_alike_under_each_reasoning_option(name):
    """The random tool chats above with think blocks (blank and empty ones too), through the official jinja and the
    twin: the same text and the same trained characters under each reasoning option, with or without empty think
    blocks, or a refusal naming a message. A template without reasoning (Llama 4, Qwen3-2507) trains the block as
    reply text; a blank reasoning gpt-oss or Gemma 4 reads from a field is the thought block their twins train.
    Known gap: Gemma 4 may refuse a blank call-turn text written after the results of its calls, naming it."""
    compared, refused = 0, []
    for messages, tools, prompt, fast, slow in _both_paths(name, seed=5, chats=40, reasoning=True):
        if isinstance(slow, str):
            refused.append(slow)
            continue
        compared += 1
        for option in encode_labels.REASONING:
            for empty in (False, True):
                assert _trained_under(messages, fast, tools, "assistant", reasoning=option,
                                      train_empty_think=empty) == \
                    _trained_under(messages, slow, tools, "assistant", reasoning=option,
                                   train_empty_think=empty), (messages, prompt, option, empty)
    assert compared >= 76, refused


# Tool loops with reasoning on each step: the final exchange (the steps after the last query) and one before it.
TOOL_REASONING_CHATS = [
    [{"role": "user", "content": "Weather?"},
     {"role": "assistant", "content": "<think>call it</think>", "tool_calls": [call("Paris")]},
     {"role": "tool", "content": "21"},
     {"role": "assistant", "content": "<think>it said 21</think>It is 21."}],
    [{"role": "system", "content": "S"},
     {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "<think>greet</think>Hello"},
     {"role": "user", "content": "Weather?"},
     {"role": "assistant", "content": "<think>\ncall it\n</think>\n\nChecking.", "tool_calls": [call("Paris")]},
     {"role": "tool", "content": "21"},
     {"role": "assistant", "content": "<think>then Oslo</think>", "tool_calls": [call("Oslo")]},
     {"role": "tool", "content": "18"},
     {"role": "assistant", "content": "<think>it said 21</think>It is 21."}],
    [{"role": "user", "content": "Weather?"},
     {"role": "assistant", "content": "<think>call it</think>Checking.", "tool_calls": [call("Paris")]}],
]


@pytest.mark.parametrize("name,fixture", [("qwen3", "qwen3"), ("qwen3.5", "qwen3.5"), ("qwen3.6", "qwen3.6"),
                                          ("qwen3.8", "qwen3.8"), ("glm4.5", "glm4.5"),
                                          ("nemotron3", "nemotron3_nano")])
def test_tool_call_turns_train_alike_through_the_twin_and_the_jinja_path_under_each_reasoning_option(name, fixture):
    """A tool-call turn after the last query belongs to the final exchange: its reasoning, which the official
    template keeps there, is trained with think_last_turn and left out with answer_only, through the twin and
    through the jinja segmenter (prefix renders or placeholders) alike; reasoning before the query is not."""
    builtin = templates.get(name)
    stop_texts = tuple(dict.fromkeys(x for x in (builtin.stop, *builtin.spec.get("stops", []), builtin.spec["eos"])
                                     if x))
    own = templates.Template(templates.TOKENIZER, jinja=(FIXTURES / f"{fixture}.jinja").read_text(encoding="utf-8"),
                             stop_texts=stop_texts)
    for chat in TOOL_REASONING_CHATS:
        messages = templates.normalize_messages(chat)
        fast = own.segments(messages, TOOLS)
        slow = stops.train_stops(jinja_segments.segments(own, messages, TOOLS, False), messages, stop_texts, "")
        text = "".join(piece for piece, _, _ in fast)
        assert text == "".join(piece for piece, _, _ in slow) == _official(fixture, chat, TOOLS, False)
        for option in encode_labels.REASONING:
            trained = _trained_under(messages, fast, TOOLS, "assistant", reasoning=option)
            assert trained == _trained_under(messages, slow, TOOLS, "assistant", reasoning=option), (chat, option)
            said = "".join(text[c] for c in sorted(trained))
            assert ("call it" in said) == (option != "answer_only"), (chat, option)
            assert "greet" not in said or option == "think_and_answer", (chat, option)


# Gemma 4 (its current revision): plain and reasoning conversations here; tool conversations in FAMILIES above.
GEMMA4 = ("gemma4_v5", {})


def _plain_reasoning_chat(rng: random.Random) -> list[dict]:
    """A random chat of user and assistant turns in turn (an optional system first) with reasoning, empty
    think blocks and awkward whitespace."""
    words = ["", " ", "\n", "\n\n", "hi", " two words ", "ünï", "<think>", "<|channel>x<channel|>", '{"a": 1}']
    say = lambda: "".join(rng.choice(words) for _ in range(rng.randint(1, 3))) or "x"  # noqa: E731
    chat = [{"role": "system", "content": say()}] if rng.random() < 0.5 else []
    for _ in range(rng.randint(1, 3)):
        chat.append({"role": "user", "content": say()})
        shape = rng.random()
        reply = ("<think>" + rng.choice(["\n", "", "\n\n"]) + say() + rng.choice(["\n", ""]) + "</think>" + say()
                 if shape < 0.5 else "<think>\n\n</think>\n\n" + say() if shape < 0.65 else say())
        chat.append({"role": "assistant", "content": reply})
    return chat


def _gemma4_official(chat: list[dict], prompt: bool) -> str:
    chat = [{**m, **dict(zip(("reasoning_content", "content"), split_think(m["content"])))}
            if m["role"] == "assistant" and "</think>" in m["content"] else m for m in chat]
    source = (FIXTURES / "gemma4_v5.jinja").read_text(encoding="utf-8")
    return render_jinja_template(conversations=[chat], chat_template=source, add_generation_prompt=prompt,
                                 bos_token="<bos>")[0][0]


def _check_gemma4(chat: list[dict]) -> None:
    template = templates.get("gemma4")
    own = templates.Template(templates.TOKENIZER, jinja=(FIXTURES / "gemma4_v5.jinja").read_text(encoding="utf-8"),
                             bos="<bos>", eos="<eos>")
    for prompt in (False, True):
        shown = prompt_part(chat) if prompt else chat
        expected = _gemma4_official(shown, prompt)
        assert template.render(shown, add_generation_prompt=prompt) == expected, shown
        assert twins.twin(own.jinja, templates.normalize_messages(shown), None) == "gemma4"
        assert own.render(shown, add_generation_prompt=prompt) == expected, shown


@pytest.mark.parametrize("chat", [c for c in CHATS if all(m["role"] in ("system", "user", "assistant")
                                                          and "tool_calls" not in m for m in c)])
def test_gemma4_builtin_is_byte_equal_to_its_official_template(chat):
    _check_gemma4(chat)


def test_gemma4_builtin_matches_its_official_template_on_random_reasoning_chats():
    rng = random.Random(11)
    for _ in range(60):
        _check_gemma4(_plain_reasoning_chat(rng))


def test_gemma4_trains_the_last_reasoning_and_answers_with_their_end_of_turn():
    t = templates.get("gemma4")
    assert t.to_jinja() == (FIXTURES / "gemma4_v5.jinja").read_text(encoding="utf-8")
    assert t.render(REASONING_CHAT[:2], add_generation_prompt=True) == \
        "<bos><|turn>system\nThink first.<turn|>\n<|turn>user\n2+2?<turn|>\n<|turn>model\n"
    assert _trained(t, REASONING_CHAT) == "4<turn|><|channel>thought\nsix, clearly\n<channel|>6<turn|>"
    assert _trained(t, REASONING_CHAT, reasoning="answer_only") == "4<turn|>6<turn|>"


def test_gemma4_runs_calls_results_and_answer_in_one_model_turn_and_trains_the_stop_after_the_calls():
    """A model turn holds the calls, the results the environment writes after the model's <|tool_response>
    stop, then the answer, which runs on without a header; calls and answer are trained, the results not."""
    t = templates.get("gemma4")
    chat = [{"role": "system", "content": "S"},
            {"role": "user", "content": "Weather?"},
            {"role": "assistant", "content": "<think>call it</think>", "tool_calls": [call("Paris"), call("Oslo")]},
            {"role": "tool", "content": "21"},
            {"role": "tool", "content": "18"},
            {"role": "assistant", "content": "<think>both in</think> Paris 21, Oslo 18. "}]
    text = t.render(chat, TOOLS)
    assert text == _official("gemma4_v5", chat, TOOLS, False)
    calls = ('<|tool_call>call:get_weather{city:<|"|>Paris<|"|>}<tool_call|>'
             '<|tool_call>call:get_weather{city:<|"|>Oslo<|"|>}<tool_call|>')
    results = ('<|tool_response>response:get_weather{value:<|"|>21<|"|>}<tool_response|>'
               '<|tool_response>response:get_weather{value:<|"|>18<|"|>}<tool_response|>')
    assert text.startswith('<bos><|turn>system\nS<|tool>declaration:get_weather{description:<|"|>Weather in a city')
    assert text.endswith("<|turn>model\n<|channel>thought\ncall it\n<channel|>" + calls + results
                         + "<|channel>thought\nboth in\n<channel|>Paris 21, Oslo 18.<turn|>\n")
    assert _trained(t, chat, TOOLS) == ("<|channel>thought\ncall it\n<channel|>" + calls + "<|tool_response>"
                                        "<|channel>thought\nboth in\n<channel|>Paris 21, Oslo 18.<turn|>")
    assert _trained(t, chat, TOOLS, reasoning="answer_only") == calls + "<|tool_response>Paris 21, Oslo 18.<turn|>"
    # no generation prompt after the results or after calls: the model writes on in its turn
    assert t.render(chat[:5], TOOLS, True) == text[:text.index("<|channel>thought\nboth")]
    assert t.render(chat[:3], TOOLS, True).endswith(calls + "<|tool_response>")
    vocab = _Vocab()
    vocab.ids = {**vocab.ids, "<turn|>": [7], "<|tool_response>": [8]}
    assert t.stop_token_ids(vocab) == [0, 7, 8]


def test_gemma4_random_tool_chats_match_the_official_render_and_the_jinja_paths_spans():
    """Parallel calls, several results, text beside calls, multi-turn, with and without a system message: the
    twin writes the official text, and trains what the jinja path trains (audited with the same stops), a call
    turn's text included, which the template writes after the results of its calls."""
    from sftune import encode

    rng = random.Random(3)
    words = ["", " ", "\n", "hi", " two words ", "ünï", '{"a": 1}', "<|channel>x<channel|>"]
    say = lambda: "".join(rng.choice(words) for _ in range(rng.randint(1, 3))) or "x"  # noqa: E731
    stop_texts = ("<turn|>", "<|tool_response>", "<eos>")
    own = templates.Template(templates.TOKENIZER, jinja=(FIXTURES / "gemma4_v5.jinja").read_text(encoding="utf-8"),
                             bos="<bos>", eos="<eos>", stop_texts=stop_texts)
    segmented = 0
    for _ in range(60):
        chat = random_tool_chat(rng, say, parallel=True)
        tools = TOOLS if rng.random() < 0.8 else None
        assert twins.twin(own.jinja, templates.normalize_messages(chat), tools) == "gemma4"
        for prompt in (False, True):
            shown = prompt_part(chat) if prompt else chat
            messages = templates.normalize_messages(shown)
            fast = own.segments(messages, tools, prompt)
            assert "".join(t for t, _, _ in fast) == _official("gemma4_v5", shown, tools, prompt), shown
            try:
                slow = stops.train_stops(jinja_segments.segments(own, messages, tools, prompt), messages,
                                         stop_texts, "")
            except templates.TemplateError as refused:  # its strip_thinking cuts a channel out of a reply's text
                assert "rewrites the content" in str(refused)
                assert any("<channel|>" in (m.get("content") or "") for m in shown if m["role"] == "assistant")
                continue
            segmented += 1
            for policy in encode.POLICIES:
                assert trained_chars(messages, fast, policy) == trained_chars(messages, slow, policy), (shown, policy)
    assert segmented > 80


def _gemma4_jinja_path(chat: list[dict]) -> tuple[str, list, list, list]:
    """(text, messages, the twin's segments, the jinja path's: prefix renders, else placeholders), both audited."""
    stop_texts = ("<turn|>", "<|tool_response>", "<eos>")
    own = templates.Template(templates.TOKENIZER, jinja=(FIXTURES / "gemma4_v5.jinja").read_text(encoding="utf-8"),
                             bos="<bos>", eos="<eos>", stop_texts=stop_texts)
    messages = templates.normalize_messages(chat)
    fast = own.segments(messages, TOOLS)
    slow = stops.train_stops(jinja_segments.segments(own, messages, TOOLS, False), messages, stop_texts, "")
    return "".join(t for t, _, _ in fast), messages, fast, slow


@pytest.mark.parametrize("text", ["Let me check.", "", " ", None])
@pytest.mark.parametrize("result", ["21", " "])
def test_gemma4_jinja_path_gives_a_call_turns_text_written_after_its_results_to_that_turn(text, result):
    """Gemma 4 writes a call turn's text after the results of its calls. The jinja path trains it with its
    turn, never a result; a blank result or text is placed too (before, a blank result hid the order, and the
    result's text was trained as the next call turn's)."""
    chat = [{"role": "user", "content": "Paris?"},
            {"role": "assistant", "content": text, "tool_calls": [call("Paris")]},
            {"role": "tool", "content": result},
            {"role": "assistant", "content": "Oslo too.", "tool_calls": [call("Oslo")]},
            {"role": "tool", "content": "18"},
            {"role": "assistant", "content": "21 and 18."}]
    rendered, messages, fast, slow = _gemma4_jinja_path(chat)
    assert rendered == "".join(t for t, _, _ in slow) == _official("gemma4_v5", chat, TOOLS, False)
    trained = "".join(rendered[c] for c in sorted(trained_chars(messages, slow, "assistant")))
    calls = ['<|tool_call>call:get_weather{city:<|"|>' + city + '<|"|>}<tool_call|><|tool_response>'
             for city in ("Paris", "Oslo")]
    assert trained == calls[0] + (text or "").strip() + calls[1] + "Oslo too.21 and 18.<turn|>"
    assert "response:" not in trained
    for policy in ("assistant", "last", "all"):
        assert trained_chars(messages, fast, policy) == trained_chars(messages, slow, policy), policy


def test_gemma4_jinja_path_gives_the_end_of_turn_after_a_late_blank_text_to_the_blank_reply_written_there():
    """A blank call-turn text written after its results ends where the blank last reply is written: the <turn|>
    there ends that reply (before, the call turn took it, and `last` trained nothing)."""
    chat = [{"role": "user", "content": "q"},
            {"role": "assistant", "content": "hi ", "tool_calls": [call("Paris")]},
            {"role": "tool", "content": "r"},
            {"role": "assistant", "content": " ", "tool_calls": [call("Paris")]},
            {"role": "tool", "content": "r1"},
            {"role": "assistant", "content": " "}]
    rendered, messages, fast, slow = _gemma4_jinja_path(chat)
    assert rendered == "".join(t for t, _, _ in slow)
    assert "".join(rendered[c] for c in sorted(trained_chars(messages, slow, "last"))) == "<turn|>"
    for policy in ("assistant", "last", "all"):
        assert trained_chars(messages, fast, policy) == trained_chars(messages, slow, policy), policy


def test_qwen35_jinja_path_trains_a_blank_reply_after_tool_results_through_its_end_of_turn():
    """A blank text beside calls makes the template write other text around it than around a placeholder; with
    blank contents left unmarked, a blank reply after the results and a blank user turn have no field. The blank
    reply's header is the first one after the results (before, the next reply's longer header was taken, and the
    blank reply trained nothing of its own, its <|im_end|> neither)."""
    builtin = templates.get("qwen3.5")
    stop_texts = tuple(dict.fromkeys(x for x in (builtin.stop, *builtin.spec.get("stops", []), builtin.spec["eos"])
                                     if x))
    own = templates.Template(templates.TOKENIZER, jinja=(FIXTURES / "qwen3.5.jinja").read_text(encoding="utf-8"),
                             stop_texts=stop_texts)
    chat = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "\n", "tool_calls": [call("Paris")]},
            {"role": "tool", "content": "21"}, {"role": "assistant", "content": " "},
            {"role": "user", "content": " "}, {"role": "assistant", "content": "ok"}]
    messages = templates.normalize_messages(chat)
    fast = own.segments(messages, TOOLS)
    slow = stops.train_stops(jinja_segments.segments(own, messages, TOOLS, False), messages, stop_texts, "")
    text = "".join(t for t, _, _ in slow)
    assert text == "".join(t for t, _, _ in fast) == _official("qwen3.5", chat, TOOLS, False)
    blank_reply = [(t, body) for t, k, body in slow if k == 4]  # 1 and 2: the text and the calls
    assert blank_reply == [("<|im_start|>assistant\n", False), ("<|im_end|>", True)]
    for policy in ("assistant", "last", "all"):
        for empty in (False, True):
            assert _trained_under(messages, fast, TOOLS, policy, train_empty_think=empty) == \
                _trained_under(messages, slow, TOOLS, policy, train_empty_think=empty), (policy, empty)


@pytest.mark.parametrize("name", ["glm4.5", "gpt-oss", "llama4"])
def test_a_turn_of_calls_without_text_renders_through_its_own_template_as_through_the_twin(name):
    """A call-only turn reaches a model's own template with content "", as its official renders are made: GLM-4.5's
    template wrote a None content as "None" (trained as the reply's text), gpt-oss's and Llama 4's raised on it."""
    fixture, _ = FAMILIES[name]
    own = templates.Template(templates.TOKENIZER, jinja=(FIXTURES / f"{fixture}.jinja").read_text(encoding="utf-8"),
                             bos=BOS.get(fixture, ""))
    chat = [{"role": "user", "content": "Weather?"},
            {"role": "assistant", "content": None, "tool_calls": [call("Paris")]},
            {"role": "tool", "content": "21"}, {"role": "assistant", "content": "It is 21."}]
    messages = templates.normalize_messages(chat)
    assert templates.to_hf_messages(messages)[1]["content"] == ""
    text = own.render(chat, TOOLS)
    assert text == templates.get(name).render(chat, TOOLS) == _official(fixture, chat, TOOLS, False)
    assert "None" not in text
    assert "".join(t for t, _, _ in jinja_segments.segments(own, messages, TOOLS, False)) == text


@pytest.mark.parametrize("text", ["Checking.", None])
def test_gemma4_jinja_path_trains_a_run_on_replys_thought_channel_as_thinking_under_each_reasoning_option(text):
    """After results, Gemma 4's answer runs on in the model turn and opens its own thought channel: the opener is
    thinking (before, it was taken for a header and left untrained); a call-only turn's thought ends at its
    <channel|>; a reasoning the template reads from a field is put there, never written as <think> text."""
    chat = [{"role": "user", "content": "Weather?"},
            {"role": "assistant", "content": "<think>call it</think>" + (text or ""), "tool_calls": [call("Paris")]},
            {"role": "tool", "content": "21"},
            {"role": "assistant", "content": "<think>it said 21</think>Paris 21."}]
    rendered, messages, fast, slow = _gemma4_jinja_path(chat)
    assert rendered == "".join(t for t, _, _ in slow)
    for option in encode_labels.REASONING:
        trained = _trained_under(messages, fast, TOOLS, "assistant", reasoning=option)
        assert trained == _trained_under(messages, slow, TOOLS, "assistant", reasoning=option), option
        said = "".join(rendered[c] for c in sorted(trained))
        assert ("<|channel>thought\nit said 21\n<channel|>Paris 21.<turn|>" in said) == (option != "answer_only")
        assert ("<channel|>" in said) == (option != "answer_only"), option


def test_jinja_path_refuses_a_template_writing_a_reply_after_the_next_user_turn_naming_it():
    swapped = ("{% for m in messages %}{% if m.role == 'user' %}<u>{{ m.content }}</u>{% if loop.index0 > 0 %}"
               "<a>{{ messages[loop.index0 - 1].content }}</a>{% endif %}{% endif %}{% endfor %}"
               "{% if messages[-1].role == 'assistant' %}<a>{{ messages[-1].content }}</a>{% endif %}")
    own = templates.Template(templates.TOKENIZER, jinja=swapped)
    chat = templates.normalize_messages([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
                                         {"role": "user", "content": "c"}, {"role": "assistant", "content": "d"}])
    with pytest.raises(templates.TemplateError, match=r"writes the content of message 1 \(assistant\) after "
                                                      r"message 2 \(user\)"):
        jinja_segments.placeholder_segments(own, chat, None, False)


def test_placeholders_render_a_conversation_once_with_its_probe(monkeypatch):
    """The placeholder method renders the real and the marked conversation in one call of two renders, blank
    contents included where the template writes the same text around them (the common case)."""
    calls = []
    real_render = jinja_segments.render_chats
    monkeypatch.setattr(jinja_segments, "render_chats",
                        lambda *a, **k: calls.append(len(a[2])) or real_render(*a, **k))
    own = templates.Template(templates.TOKENIZER, jinja=(FIXTURES / "gemma4_v5.jinja").read_text(encoding="utf-8"),
                             bos="<bos>", eos="<eos>")
    chat = [{"role": "user", "content": "Paris?"}, {"role": "assistant", "content": "", "tool_calls": [call("P")]},
            {"role": "tool", "content": " "}, {"role": "assistant", "content": "ok"}]
    messages = templates.normalize_messages(chat)
    jinja_segments.placeholder_segments(own, messages, TOOLS, False)  # once: the template's probes, cached
    calls.clear()
    for chat in (chat, PLAIN_CHATS[1]):
        jinja_segments.placeholder_segments(own, templates.normalize_messages(chat), TOOLS, False)
    assert calls == [2, 2]


def test_gemma4_names_each_result_from_its_call_and_refuses_a_result_its_template_drops():
    t = templates.get("gemma4")
    by_id = [{"role": "user", "content": "x"},
             {"role": "assistant", "content": None, "tool_calls": [
                 {"type": "function", "id": "a",
                  "function": {"name": "find", "arguments": {"Q": "b", "k": [1, None]}}},
                 {"type": "function", "id": "b", "function": {"name": "ping", "arguments": {}}}]},
             {"role": "tool", "content": "found", "tool_call_id": "a"},
             {"role": "tool", "content": "pong", "tool_call_id": "b"},
             {"role": "assistant", "content": "ok"}]
    text = t.render(by_id, TOOLS)
    assert text == _official("gemma4_v5", by_id, TOOLS, False)
    assert '<|tool_call>call:find{k:[1,null],Q:<|"|>b<|"|>}' in text  # keys sorted without regard to case
    assert "response:find{value:<|\"|>found" in text and "response:ping{value:<|\"|>pong" in text
    # without ids, the template names every result after the last call of the turn
    no_ids = [{**m, "tool_calls": [{k: v for k, v in c.items() if k != "id"} for c in m["tool_calls"]]}
              if m.get("tool_calls") else {k: v for k, v in m.items() if k != "tool_call_id"} for m in by_id]
    assert t.render(no_ids, TOOLS) == _official("gemma4_v5", no_ids, TOOLS, False)
    assert t.render(no_ids, TOOLS).count("response:ping") == 2
    dropped = [{"role": "user", "content": "x"}, {"role": "assistant", "content": "a"},
               {"role": "tool", "content": "RESULT"}, {"role": "assistant", "content": "b"}]
    assert "RESULT" not in _official("gemma4_v5", dropped, TOOLS, False)
    with pytest.raises(templates.TemplateError, match="message 2 is a tool result that follows no tool call"):
        t.render(dropped, TOOLS)
    with pytest.raises(templates.TemplateError, match="must be a JSON object"):
        t.render([{"role": "user", "content": "x"},
                  {"role": "assistant", "content": None, "tool_calls": [call("", "[1, 2]")]}], TOOLS)


def test_llama4_trains_each_reply_its_calls_and_its_end_of_turn():
    """Multi-turn with tools: every reply and every turn of calls is trained through its <|eot|>; the header
    before it, the tool list, the results and the user turns are not."""
    t = templates.get("llama4")
    chat = [{"role": "system", "content": " Be brief. "},
            {"role": "user", "content": " Weather in Paris? "},
            {"role": "assistant", "content": "Checking.", "tool_calls": [call("Paris"), call("Zürich")]},
            {"role": "tool", "content": "21"},
            {"role": "assistant", "content": "21°C."},
            {"role": "user", "content": "Thanks"},
            {"role": "assistant", "content": " You're welcome. "}]
    text = t.render(chat, TOOLS)
    assert text == _official("llama4", chat, TOOLS, False)
    assert text.startswith("<|begin_of_text|><|header_start|>system<|header_end|>\n\nEnvironment: ipython\n"
                           "Be brief.<|eot|><|header_start|>user<|header_end|>\n\nGiven the following functions")
    assert '\n\nWeather in Paris?<|eot|>' in text and '<|header_start|>ipython<|header_end|>\n\n"21"<|eot|>' in text
    calls = '{"name": "get_weather", "parameters": {"city": "Paris"}}{"name": "get_weather", "parameters": ' \
            '{"city": "Zürich"}}'
    assert _trained(t, chat, TOOLS) == ("<|python_start|>Checking.<|python_end|>" + calls + "<|eot|>21°C.<|eot|>"
                                        " You're welcome. <|eot|>")
    assert _trained(t, REASONING_CHAT[:2] + [{"role": "assistant", "content": "4"}]) == "4<|eot|>"
    assert t.render(chat[:2], TOOLS, True).endswith("<|eot|><|header_start|>assistant<|header_end|>\n\n")
    assert t.stop == "<|eot|>"
    vocab = _Vocab()
    vocab.ids = {**vocab.ids, "<|eot|>": [6]}
    assert t.stop_token_ids(vocab) == [0, 6]


def test_llama4_tool_list_goes_into_the_first_user_message_or_is_refused():
    t = templates.get("llama4")
    empty = t.render(PLAIN_CHATS[1], [])  # an empty tool list is still a tool list to its template
    assert empty == _official("llama4", PLAIN_CHATS[1], [], False) and "Environment: ipython" in empty
    with pytest.raises(templates.TemplateError, match="first user message"):
        t.render([{"role": "system", "content": "S"}, {"role": "assistant", "content": "x"}], TOOLS)
    with pytest.raises(templates.TemplateError, match="no message after the system message"):
        t.render([{"role": "system", "content": "S"}], TOOLS)


def test_nemotron3_super_and_ultra_render_their_own_official_texts_where_they_differ_from_nano():
    """Super is Nano's text with a low_effort switch (off by default: the same render); Ultra keeps an earlier
    tool-call turn's text untrimmed after its emptied think block, where Nano trims it."""
    chat = [{"role": "user", "content": "Weather?"},
            {"role": "assistant", "content": "<think>call it</think>\n\n Checking. ", "tool_calls": [call("Paris")]},
            {"role": "tool", "content": "21"},
            {"role": "assistant", "content": "It is 21."},
            {"role": "user", "content": "Thanks"},
            {"role": "assistant", "content": "<think>polite</think>Welcome."}]
    rendered = {}
    for name, (fixture, _) in FAMILIES.items():
        if name.startswith("nemotron3"):
            rendered[name] = templates.get(name).render(chat, TOOLS)
            assert rendered[name] == _official(fixture, chat, TOOLS, False), name
    assert rendered["nemotron3_super"] == rendered["nemotron3"] != rendered["nemotron3_ultra"]
    assert "<think></think>\n\n Checking. \n<tool_call>" in rendered["nemotron3_ultra"]
    low = _official("nemotron3_super", chat, TOOLS, False, low_effort=True)
    assert low.count("{reasoning effort: low}") == 1 and low != rendered["nemotron3_super"]
