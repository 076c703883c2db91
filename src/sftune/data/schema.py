"""The one conversation schema every data format is converted into.

A Conversation is the OpenAI `messages` shape plus what SFT needs: which messages are trained
(`train`), with what loss weight (`weight`), the function schemas offered (`tools`) and where the
record came from (`meta`). A system prompt, when there is one, is the first message. `images` lists
the conversation's images in order (file paths or data URLs); each one's place in the text is an
`<image>` placeholder (see data/images.py).

Roles: system, user, assistant, tool_call (the model calling a function; content is the call as
JSON text {"name", "arguments", "id"?}, or a list of them), tool (the function's result, an observation;
its `tool_call_id` names the call it answers when the data gave ids). Results follow their calls in the
calls' order: reading matches them by id and puts them in that order (formats.to_messages).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

ROLES = ("system", "user", "assistant", "tool_call", "tool")
# Roles whose content the model produces, and which are trained under the default policy.
MODEL_ROLES = ("assistant", "tool_call")


@dataclass(slots=True)
class Message:
    role: str
    content: str
    train: bool | None = None  # None: decided by the masking policy
    weight: float | None = None  # loss weight for this message's tokens; None means 1.0
    tool_call_id: str | None = None  # a tool result: the id of the call it answers, when the data gave one

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"role": self.role, "content": self.content}
        if self.train is not None:
            out["train"] = self.train
        if self.weight is not None:
            out["weight"] = self.weight
        if self.tool_call_id is not None:
            out["tool_call_id"] = self.tool_call_id
        return out


@dataclass(slots=True)
class Conversation:
    messages: list[Message]
    tools: list[dict[str, Any]] | None = None
    # Provenance: dataset name, source file, line or record number, and anything a format keeps.
    meta: dict[str, Any] = field(default_factory=dict)
    images: list[str] = field(default_factory=list)

    @property
    def system(self) -> str | None:
        if self.messages and self.messages[0].role == "system":
            return self.messages[0].content
        return None

    def to_dict(self) -> dict[str, Any]:
        """The OpenAI `messages` shape written to JSONL."""
        out: dict[str, Any] = {"messages": [m.to_dict() for m in self.messages]}
        if self.tools:
            out["tools"] = self.tools
        if self.images:
            out["images"] = self.images
        if self.meta:
            out["meta"] = self.meta
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False)

    @classmethod
    def from_dict(cls, record: dict[str, Any]) -> "Conversation":
        """Inverse of `to_dict` for already-valid records (validation lives in the data layer)."""
        return cls(
            messages=[
                Message(m["role"], m["content"], m.get("train"), m.get("weight"), m.get("tool_call_id"))
                for m in record["messages"]
            ],
            tools=record.get("tools"),
            meta=dict(record.get("meta") or {}),
            images=list(record.get("images") or []),
        )


@dataclass(slots=True)
class Pair:
    """A preference pair: one prompt (system, history, the last user or tool turn) and two answers to it,
    the chosen one and the rejected one (each one or more model messages, tool calls and results kept)."""

    prompt: list[Message]
    chosen: list[Message]
    rejected: list[Message]
    tools: list[dict[str, Any]] | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def conversation(self, answer: str) -> Conversation:
        """The prompt followed by the chosen or the rejected answer, as one Conversation (what is encoded)."""
        return Conversation(self.prompt + (self.chosen if answer == "chosen" else self.rejected), self.tools,
                            self.meta)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"prompt": [m.to_dict() for m in self.prompt],
                               "chosen": [m.to_dict() for m in self.chosen],
                               "rejected": [m.to_dict() for m in self.rejected]}
        if self.tools:
            out["tools"] = self.tools
        if self.meta:
            out["meta"] = self.meta
        return out
