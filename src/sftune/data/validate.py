"""Checks every Conversation must pass before training, whatever format it came from.

Roles are known; content is text; the system prompt comes first; after it the conversation opens
with a user turn and alternates: user -> assistant | tool_call, assistant -> user | tool_call,
tool_call -> tool, tool -> tool | assistant | tool_call. There is at least one assistant (or
tool_call) turn, no assistant reply or user message is empty, and the record has at most
`max_chars` characters. Plain-text (pre-training) records need only be non-empty and short enough.
A conversation with images has as many `<image>` placeholders as images (the files themselves are
checked by the reader, which knows the data file's folder: images.py).
"""

from __future__ import annotations

from sftune.data.errors import DataError
from sftune.data.images import PLACEHOLDER, count_placeholders
from sftune.data.schema import ROLES, Conversation

# A limit on characters per record that only broken data reaches (about 250k tokens).
DEFAULT_MAX_CHARS = 1_000_000

NEXT_ROLES = {
    None: ("system", "user"),
    "system": ("user",),
    "user": ("assistant", "tool_call"),
    "assistant": ("user", "tool_call"),
    "tool_call": ("tool",),
    "tool": ("tool", "assistant", "tool_call"),
}


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _quote(text: str, limit: int = 40) -> str:
    text = text.replace("\n", " ")
    return repr(text if len(text) <= limit else text[:limit] + "...")


def validate(conversation: Conversation, max_chars: int | None = DEFAULT_MAX_CHARS) -> None:
    """Raise DataError (without file and line: the reader adds them) if the conversation is unfit."""
    messages = conversation.messages
    total = 0
    if conversation.meta.get("pretrain"):
        for message in messages:
            if not isinstance(message.content, str):
                raise DataError("wrong_type", "text", f"is a {type(message.content).__name__}", "make text a string")
            if not message.content.strip():
                raise DataError("empty_text", "text", "is empty", "remove the record, or give it text")
            total += len(message.content)
    else:
        previous = None
        has_reply = False
        for i, message in enumerate(messages):
            role, content = message.role, message.content
            if role not in ROLES:
                raise DataError(
                    "unknown_role", f"messages[{i}].role", f"is {role!r}", f"use one of {', '.join(ROLES)}"
                )
            if type(content) is not str:
                raise DataError(
                    "wrong_type", f"messages[{i}].content", f"is a {type(content).__name__}", "make content a string"
                )
            total += len(content)
            if role not in NEXT_ROLES[previous]:
                if role == "system":
                    problem = "is a system message after the conversation began"
                    fix = "put the system prompt first, or make it a user message"
                elif previous is None or previous == "system":
                    problem = f"is {role} {_quote(content)}, but a conversation opens with a user message"
                    fix = "start with the user's message (drop the opening reply, or add the user turn before it)"
                else:
                    problem = f"is {role} {_quote(content)} right after {previous}"
                    fix = (
                        f"roles must alternate; {_article(previous)} {previous} message is followed by "
                        f"{' or '.join(NEXT_ROLES[previous])}: merge the two or add the missing turn"
                    )
                raise DataError("roles_not_alternating", f"messages[{i}]", problem, fix)
            if role == "assistant" or role == "tool_call":
                has_reply = True
                if not content.strip():
                    raise DataError(
                        "empty_assistant",
                        f"messages[{i}].content",
                        f"is an empty {role} reply",
                        "write the reply, or remove this turn and the question before it",
                    )
            elif role == "user" and not content.strip():
                raise DataError(
                    "empty_user", f"messages[{i}].content", "is an empty user message", "write the user's message"
                )
            previous = role
        if not has_reply:
            raise DataError(
                "no_assistant_turn",
                "messages",
                "has no assistant turn",
                "add the assistant's reply; without one there is nothing to train on",
            )
    placeholders = count_placeholders(conversation) if conversation.images else 0
    if placeholders != len(conversation.images):
        where = next((f"messages[{i}].content" for i, m in enumerate(messages) if PLACEHOLDER in m.content),
                     "images")
        raise DataError(
            "image_count", where if placeholders else "images",
            f"has {placeholders} {PLACEHOLDER} placeholder(s) for {len(conversation.images)} image(s)",
            f"write one {PLACEHOLDER} in the text where each image goes, as many as the images listed",
        )
    if max_chars is not None and total > max_chars:
        raise DataError(
            "too_long",
            "",
            f"record has {total:,} characters, over the limit of {max_chars:,}",
            "split or drop the record, or raise max_chars (--max-chars)",
        )
