"""Twins: official chat_template texts that a built-in renders exactly, for the conversations named here.

A model's own template whose text (by sha256) is one of these renders such conversations through
the built-in renderer, which gives the same text and the same trained spans as segmenting the jinja
render by prefixes, without running jinja several times per conversation. Every other
conversation, and every other template, goes through jinja. The texts are the verbatim copies in
tests/fixtures/templates; the tests check each twin against them, on random chats too.

One twin renders more than its official text: DeepSeek-R1-Distill's template drops the reasoning of
every reply, the last one included, so a conversation rendered through it would train no reasoning.
Its twin renders the same prompts (byte for byte, the open think block included) and writes the last
reply as the model writes it after that prompt, its reasoning kept (see definitions.py).

Three render what their official text renders for the messages their models are given, where sftune's
plain messages would make the jinja write something else: GLM-4.5's template writes a call-only turn's
None content as "None" (its twin writes nothing, as for ""); gpt-oss's template takes reasoning from a
`thinking` field, not a <think> block in the content, and raises on a call-only turn's None content (its
twin writes a <think> block as the analysis channel, the official render with `thinking` set); Qwen3.8's
reads it from `reasoning_content` only (its twin takes the <think> block as that field, as Gemma 4's
does); Llama 4's iterates a call-only turn's None content and raises (its twin writes nothing, as for
""). GLM-4.5's twin also trains the header that follows a reply (<|user|>, <|observation|>), the model's stop token.
"""

from __future__ import annotations

import hashlib

# sha256 of an official template -> its built-in, for plain conversations: an optional system
# message, then user and assistant turns in turn.
TWINS = {
    "fcf7a096fe99a48fd9ad2b250bf9237e96e8f48bffec1c7ea4d3f225176cd40e": "chatml",
    "ecd6ae513fe103f0eb62e8ab5bfa8d0fe45c1074fa398b089c93a7e70c15cfd6": "gemma",  # Gemma 1/2: no system turn
    "7de1c58e208eda46e9c7f86397df37ec49883aeece39fb961e0a6b24088dd3c4": "gemma",  # Gemma 3
    "e8d5b5a546d3f19df16a5320c614fab05bdc4edd50e850f1afd947b503ea41cf": "llama2",
    "e10ca381b1ccc5cf9db52e371f3b6651576caee0a630b452e2816b2d404d4b65": "llama3.1",
    "ba03a121d097859c7b5b9cd03af99aafe95275210d2876f642ad9929a150f122": "llama3",
    "796853172235ab3aaa4810013ddfe2eab481bda3306dad4f700c00d436eed596": "mistral",
    "78d976a442bcde2f0be15aafbb8e3050e1104f86732266f68403251b89982a90": "phi3.5",
    "dcaee66df77bfbb789ec541fe713218da30225a526f1db97138fc39ee6dc56aa": "phi3",
    "cd8e9439f0570856fd70470bf8889ebd8b5d1107207f67a5efb46e342330527f": "qwen2.5",
    "872be49dbb638044ad01b60388f48d469ff2980e5f0dccdc22ec907db54d0788": "smollm2",
    "66291cf0045c2425a3a667cf3cbb7af2b11f09e025c02f97245323ab79119362": "zephyr",
    "a55ee1b1660128b7098723e0abcd92caa0788061051c62d51cbe87d9cf1974d8": "qwen3",  # thinking mode (the default)
    "56a1447ad31926fdc21fb07e56e5642bd9c850c4f52d8c8af7bbe5f079a84f5f": "deepseek_r1",  # prompts; last reply kept
    "64f85b198065d0fba2a81f37e10ed68161ce2c19a754c7100e67e0ca2ee9c326": "qwen3_2507",
    "a4aee8afcf2e0711942cf848899be66016f8d14a889ff9ede07bca099c28f715": "qwen3.5",  # Qwen3.5-4B and larger
    "273d8e0e683b885071fb17e08d71e5f2a5ddfb5309756181681de4f5a1822d80": "qwen3.5_nothink",  # 2B and smaller
    "e84f32a23fdda27689f868aa4a1a5621f41133e51a48d7f3efcbea2839574259": "qwen3.6",
    "44f815868bf02fa458dd2f741a338046f4bf45f398eb6d067766726b9d96cce3": "glm4.5",
    "a4c9919cbbd4acdd51ccffe22da049264b1b73e59055fa58811a99efbd7c8146": "gpt-oss",  # <think> -> analysis
    "ab7813c3abdd9cb655905a410728b26c7884eca45ddfab8d9f931553485a7862": "nemotron3",
    "575fb74f54ed264df9047d0ecce3c98938aae953fb4f50356675706264cbb68a": "nemotron3_super",  # low_effort off
    "82753bef5cedc4932c1ed509b5c9a12be680fd86d1adb65bc3f7398d11c8eebc": "nemotron3_ultra",  # medium_effort off
    "c3cf9e34abf4f9e36c2d72165aa9c132d3e2a725b6c2586aaa3a8af9d7a81041": "qwen3.8",  # <think> -> reasoning_content
    "0a2c8073c878ab1da004bee933a998606537bbb62016310352c7285c3f01c5b5": "gemma4",  # <think> -> reasoning_content
    "95a231a15c8c976ac511e62c6fdf477ea9e3ca7a87cbb9974e0dd653eccb4563": "llama4",  # call-only turn: "" for None
}
# Gemma 1/2's template raises on a system message: a conversation with one is not a twin's.
REFUSES_SYSTEM = {"ecd6ae513fe103f0eb62e8ab5bfa8d0fe45c1074fa398b089c93a7e70c15cfd6"}
# Twins also for tool conversations (tools, calls and results after a first user turn): Qwen2.5 and
# Llama 3.1, whose built-ins are checked against these templates on random tool conversations too.
# (The jinja path cannot even segment Llama 3.1 tool chats with a system message: the render of the
# system message alone raises, as the tools go into the first user turn.)
TOOL_TWINS = {digest for digest, name in TWINS.items()
              if name in ("qwen2.5", "llama3.1", "qwen3", "qwen3_2507", "qwen3.5", "qwen3.5_nothink", "qwen3.6",
                          "qwen3.8", "glm4.5", "gpt-oss", "nemotron3", "nemotron3_super",
                          "nemotron3_ultra", "llama4", "gemma4")}

_FACTS: dict[str, tuple[str | None, bool, bool]] = {}


def builtin_of(jinja: str) -> str | None:
    """The built-in twin of template text `jinja` for plain conversations, or None."""
    return _facts(jinja)[0]


def _facts(jinja: str) -> tuple[str | None, bool, bool]:
    """(its twin, whether a system message keeps it a twin, whether tool conversations do), once per text."""
    if jinja not in _FACTS:
        digest = hashlib.sha256(jinja.encode("utf-8")).hexdigest()
        _FACTS[jinja] = (TWINS.get(digest), digest not in REFUSES_SYSTEM, digest in TOOL_TWINS)
    return _FACTS[jinja]


def twin(jinja: str, msgs: list[dict], tools: list[dict] | None) -> str | None:
    """The built-in that renders exactly what template text `jinja` renders for `msgs`, or None."""
    if not msgs:
        return None
    name, system_ok, tools_ok = _facts(jinja)
    if name is None or (tools and not tools_ok):
        return None
    first = 1 if system_ok and msgs[0]["role"] == "system" else 0
    if tools_ok:  # a user turn first, then any turns but a system message
        if first == len(msgs) or msgs[first]["role"] != "user":
            return None
        return name if all(m["role"] != "system" for m in msgs[first:]) else None
    for k in range(first, len(msgs)):
        if msgs[k]["role"] != ("user" if (k - first) % 2 == 0 else "assistant"):
            return None
    return name
