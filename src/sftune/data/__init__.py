"""Data layer: read any known SFT format, validate it, convert it to Conversations."""

from sftune.data.schema import MODEL_ROLES, ROLES, Conversation, Message

__all__ = ["Conversation", "Message", "ROLES", "MODEL_ROLES"]
