"""The messages a template takes: OpenAI dicts go through the data layer's one conversion."""

from __future__ import annotations

import pytest

from sftune import templates
from sftune.data import DataError
from sftune.data.formats import to_messages
from sftune.data.schema import Message
from tests.templates.chats import TOOL_CHAT


def test_openai_messages_normalize_as_the_data_layer_converts_them():
    converted = [{"role": m.role, "content": m.content, "train": m.train, "weight": m.weight}
                 for m in to_messages(TOOL_CHAT, {})]
    assert templates.normalize_messages(TOOL_CHAT) == converted
    assert [m["role"] for m in converted] == ["system", "user", "tool_call", "tool", "tool", "assistant"]
    messages = [Message(m["role"], m["content"]) for m in converted]
    assert templates.normalize_messages(messages) == converted


def test_to_hf_messages_gives_back_the_openai_shape():
    hf = templates.to_hf_messages(templates.normalize_messages(TOOL_CHAT))
    assert [m["role"] for m in hf] == [m["role"] for m in TOOL_CHAT]
    assert [c["function"]["arguments"] for c in hf[2]["tool_calls"]] == [{"city": "Paris"}, {"city": "Zürich"}]


def test_a_bad_message_says_which_and_how():
    with pytest.raises(DataError, match=r"messages\[0\].role is 'robot'"):
        templates.normalize_messages([{"role": "robot", "content": "hi"}])
    with pytest.raises(DataError, match="tool_call content is not JSON"):
        templates.get("chatml").render([Message("user", "hi"), Message("tool_call", "not json")])
