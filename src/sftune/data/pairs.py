"""Preference records -> Pair: the layouts in use, read with their exact meaning.

  TRL explicit    prompt (text or messages), chosen, rejected (text, a message, or messages)
  TRL implicit    chosen and rejected are whole conversations; the prompt is what they share
  alpaca ranking  instruction, input?, system?, history?, chosen, rejected (LLaMA-Factory, ranking: true)
  sharegpt / openai ranking  conversations or messages (the shared history, ending with the user's turn),
                  system?, tools?, chosen, rejected (each a message or a list of messages)

Answers written as OpenAI messages keep their tool_calls (and the tool results between them), as SFT
data does. `validate_pair` then checks both conversations like any SFT record, and the pair itself.
"""

from __future__ import annotations

import re
from typing import Any

from sftune.data.errors import DataError
from sftune.data.fields import system_messages, text_field, tool_schemas
from sftune.data.formats import alpaca, to_messages
from sftune.data.schema import MODEL_ROLES, Message, Pair

KNOWN_FIELDS = {"prompt", "chosen", "rejected", "system", "tools", "instruction", "input", "history",
                "conversations", "messages", "meta"}


def _answer(value: Any, field: str, options: dict) -> list[Message]:
    if value is None or value == "" or value == []:
        raise DataError("missing_field", field, "is missing or empty",
                        f"give both answers: {field} as text or as a list of assistant messages")
    if isinstance(value, dict):
        value = [value]
    if isinstance(value, list):
        return to_messages(value, options, field)
    return [Message("assistant", text_field(value, field))]


def _prompt(record: dict, options: dict) -> list[Message] | None:
    """The prompt messages the record gives explicitly, or None when chosen/rejected hold it (implicit)."""
    if record.get("prompt") is not None:
        prompt = record["prompt"]
        if isinstance(prompt, list):
            out = to_messages(prompt, options, "prompt")
        else:
            out = [Message("user", text_field(prompt, "prompt"))]
    elif record.get("instruction") is not None:
        return alpaca({**record, "output": "-"}, options).messages[:-1]  # the user turn alpaca SFT data has
    elif record.get("conversations") is not None or record.get("messages") is not None:
        key = "messages" if record.get("messages") is not None else "conversations"
        items = record[key]
        if not isinstance(items, list):
            raise DataError("wrong_type", key, f"is a {type(items).__name__}", f"make {key} a list of messages")
        out = to_messages(items, options, key)
    else:
        return None
    if out and out[0].role != "system":
        out[:0] = system_messages(record)
    return out


def _implicit(chosen: list[Message], rejected: list[Message]) -> tuple[list[Message], list[Message], list[Message]]:
    """(prompt, chosen answer, rejected answer) of two whole conversations: the prompt is the longest shared
    run of messages up to the first model turn where they part."""
    shared = 0
    while shared < min(len(chosen), len(rejected)) and chosen[shared].to_dict() == rejected[shared].to_dict():
        shared += 1
    if shared < min(len(chosen), len(rejected)) and chosen[shared].role not in MODEL_ROLES:
        raise DataError("prompt_mismatch", f"chosen[{shared}] / rejected[{shared}]",
                        f"differ in a {chosen[shared].role} message, so the two answers reply to different prompts",
                        "give both conversations the same prompt, or put it in a 'prompt' field and only the answers "
                        "in chosen / rejected")
    return chosen[:shared], chosen[shared:], rejected[shared:]


def convert(record: dict, options: dict) -> Pair:
    """One preference record (any layout above) -> Pair; raises DataError naming the field and the fix."""
    for field in ("chosen", "rejected"):
        if record.get(field) is None:
            raise DataError("not_a_pair" if record.get("chosen") is None and record.get("rejected") is None
                            else "missing_field", field, "is missing",
                            "a preference record needs both answers: chosen (preferred) and rejected")
    chosen = _answer(record["chosen"], "chosen", options)
    rejected = _answer(record["rejected"], "rejected", options)
    prompt = _prompt(record, options)
    if prompt is None:
        prompt, chosen, rejected = _implicit(chosen, rejected)
        if prompt and prompt[0].role != "system":
            prompt[:0] = system_messages(record)
    pair = Pair(prompt, chosen, rejected, tools=tool_schemas(record))
    if isinstance(record.get("meta"), dict):
        pair.meta["origin"] = record["meta"]
    return pair


_INDEX = re.compile(r"^messages\[(\d+)\]")


def validate_pair(pair: Pair, max_chars: int | None) -> None:
    """Both conversations pass the SFT checks; each answer starts with the model's turn; the answers differ."""
    from sftune.data.validate import validate

    if not pair.prompt or pair.prompt[-1].role not in ("user", "tool"):
        raise DataError("missing_field", "prompt", "has no user turn before the answers" if not pair.prompt else
                        f"ends with a {pair.prompt[-1].role} message, not the user's (or a tool's) turn",
                        "the prompt ends with the turn the two answers reply to")
    for name, answer in (("chosen", pair.chosen), ("rejected", pair.rejected)):
        if not answer:
            raise DataError("identical_answers" if name == "rejected" or not pair.rejected else "missing_field",
                            name, "is part of the prompt: the two conversations do not part before it ends",
                            "chosen and rejected must end in different answers")
        if answer[0].role not in MODEL_ROLES:
            raise DataError("roles_not_alternating", f"{name}[0]", f"is a {answer[0].role} message",
                            f"{name} is the model's answer: it starts with an assistant message (or a tool call)")
        try:
            validate(pair.conversation(name), None)
        except DataError as error:
            raise error.located(field=_field(error.field, name, len(pair.prompt))) from None
    if [m.to_dict() for m in pair.chosen] == [m.to_dict() for m in pair.rejected]:
        raise DataError("identical_answers", "rejected", "is the same as chosen",
                        "a pair needs two different answers: drop the record or fix the rejected answer")
    total = sum(len(m.content) for m in pair.prompt + pair.chosen + pair.rejected)
    if max_chars is not None and total > max_chars:
        raise DataError("too_long", "", f"record has {total:,} characters, over the limit of {max_chars:,}",
                        "split or drop the record, or raise max_chars (--max-chars)")


def _field(field: str, answer: str, prompt_len: int) -> str:
    """messages[i]... of the joined conversation -> prompt[i]... or chosen[j]... (where the user wrote it)."""
    found = _INDEX.match(field)
    if not found:
        return f"{answer} conversation: {field}" if field else answer
    i = int(found.group(1))
    where = f"prompt[{i}]" if i < prompt_len else f"{answer}[{i - prompt_len}]"
    return where + field[found.end():]
