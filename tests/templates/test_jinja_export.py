"""Every built-in exported as jinja renders what the built-in renderer renders."""

from __future__ import annotations

import pytest

from sftune import templates
from tests.templates.chats import (CHINESE, EMPTY_SYSTEM, MULTI_STEP_CHAT, PLAIN, SINGLE_CALL_CHAT, SPACED_SYSTEM, SYSTEM,
                                   TEXT_AND_CALL_CHAT, TOOL_CHAT, TOOLS)



# A built-in with an `official` text exports that text: test_twins_current.py checks it is the verbatim copy
# and that the built-in renders what it renders.
@pytest.mark.parametrize("name", [name for name, spec in templates.BUILTINS.items() if not spec.get("official")])
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
