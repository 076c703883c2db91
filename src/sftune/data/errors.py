"""DataError: one bad record, said so that a user can find and fix it.

The message reads `<file> <line N | record N>: <field> <problem>; <fix>`, for example
`data.jsonl line 7: messages[0] is a string; each message needs a role and content, e.g. ...`.
`reason` is a short stable code (one of REASONS) used to count rejections.
"""

from __future__ import annotations

import copy
from typing import Any

from sftune.errors import UserError

# Every reason a record can be rejected for, with what it means (shown by `sftune data check`).
REASONS = {
    "invalid_utf8": "the line is not valid UTF-8",
    "broken_json": "the line or file is not valid JSON",
    "broken_csv": "a CSV row cannot be parsed (a quote that never closes, more cells than the header)",
    "not_an_object": "the record is not a JSON object",
    "unknown_format": "no known format matches the record's fields",
    "missing_field": "a required field is missing",
    "wrong_type": "a field has the wrong type",
    "unknown_role": "a message role or speaker is not known",
    "empty_assistant": "an assistant reply (or tool call) is empty",
    "empty_user": "a user message is empty",
    "empty_text": "a plain-text record is empty",
    "roles_not_alternating": "roles do not alternate user / assistant",
    "no_assistant_turn": "the conversation has no assistant turn to train on",
    "too_long": "the record is longer than max_chars",
    "unsupported": "the record uses something sftune cannot train on (video, audio; preference pairs in SFT data)",
    "identical_answers": "a preference pair's chosen and rejected answers are the same",
    "prompt_mismatch": "a preference pair's chosen and rejected conversations have different prompts",
    "not_a_pair": "preference data expected (chosen and rejected), but the record has no such pair",
    "missing_image": "an image file does not exist (or is a web URL)",
    "bad_image": "an image does not decode (not an image, cut off, a broken data URL)",
    "image_too_large": "an image is over the size limits (bytes or pixels)",
    "image_count": "the <image> placeholders and the images do not match in number",
    "tool_call_id": "tool results and calls do not match by id (an unknown or missing id, a call without its result)",
    "bad_value": "a value JSON or training cannot hold (NaN, Infinity, a lone surrogate, a negative weight)",
    "unreadable_file": "the file cannot be read (corrupt, wrong compression, no permission)",
    "truncated_file": "the file ends in the middle of a record (cut off); the records before the cut are kept",
    "too_large": "one record, or what a compressed file unpacks to, is over the size limits (data.max_record_mb, "
    "max_unpacked_gb, max_ratio)",
    "hub_unavailable": "a hub: dataset cannot be loaded (offline and not cached, no such id, subset or split)",
}


def location(unit: str, number: int) -> str:
    """Where a record is inside its file: "line 7" (1-based) or "record 3" (0-based index)."""
    return f"{unit} {number}"


def where(meta: dict[str, Any], fallback: str = "") -> str:
    """Where a Conversation came from, from its meta: "data.jsonl line 7" (as DataError says it)."""
    source = meta.get("source") or ""
    unit = "line" if "line" in meta else "record" if "record" in meta else None
    place = location(unit, meta[unit]) if unit else ""
    return " ".join(part for part in (source, place) if part) or fallback


class DataError(UserError, ValueError):
    """A record that cannot become a valid Conversation: where it is, which field, and the fix."""

    def __init__(
        self,
        reason: str,
        field: str,
        problem: str,
        fix: str = "",
        *,
        source: str | None = None,
        location: str | None = None,
        record: Any = None,
    ) -> None:
        super().__init__(reason, field, problem, fix)
        self.reason = reason
        self.field = field  # e.g. "messages[0]", "output"; "" for the record as a whole
        self.problem = problem  # e.g. "is a string"
        self.fix = fix
        self.source = source  # the file, as the user named it
        self.location = location  # "line 7" (1-based) or "record 3" (0-based index)
        self.record = record  # the raw record (or raw line text), for the quarantine file

    def located(self, **changes: Any) -> "DataError":
        """A copy of this error with some fields set (source, location, record, problem, fix):
        the reader adds where a record is without editing the error the format raised."""
        error = copy.copy(self)
        for name, value in changes.items():
            setattr(error, name, value)
        return error

    def __str__(self) -> str:
        where = " ".join(part for part in (self.source, self.location) if part)
        what = f"{self.field} {self.problem}" if self.field else self.problem
        text = f"{where}: {what}" if where else what
        return f"{text}; {self.fix}" if self.fix else text

    def to_dict(self) -> dict[str, Any]:
        """The quarantine line for this rejection: where, why, and the record itself."""
        return {
            "source": self.source,
            "location": self.location,
            "reason": self.reason,
            "field": self.field,
            "error": str(self),
            "record": self.record,
        }
