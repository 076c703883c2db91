"""Conversations, official templates and helpers shared by the template tests."""

from __future__ import annotations

from pathlib import Path

import pytest
from transformers.utils.chat_template_utils import render_jinja_template

FIXTURES = Path(__file__).parent.parent / "fixtures" / "templates"

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

