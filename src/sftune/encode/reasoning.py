"""One example per reasoning turn, for templates that drop earlier turns' reasoning (Qwen3, DeepSeek-R1 / V3.1,
gpt-oss).

Qwen3's template writes a reply's <think> block only after the last user query, DeepSeek-R1's only on
the last message: in a conversation of several exchanges, the earlier replies' reasoning is not in the
rendered text, so it would never be trained. Split there, every reply with reasoning is trained in an example that ends with its exchange,
with the context the model really sees at inference (earlier replies without their reasoning, not trained
again).
"""

from __future__ import annotations

from typing import Any

from sftune.data.reasoning import LAST_MESSAGE_ONLY
from sftune.data.schema import MODEL_ROLES, Conversation, Message
from sftune.templates import Template
from sftune.templates.render import split_think, turn_end

# LAST_MESSAGE_ONLY: the reasoning styles that keep a reply's reasoning on the last message only (and, for Harmony,
# in a tool loop that no final answer has closed yet); "qwen3" keeps it after the last user query.
STYLES = ("qwen3", *LAST_MESSAGE_ONLY)


def queries(messages: list[dict]) -> list[int]:
    """Indices of the user queries (user messages that are not a <tool_response>), as Qwen3 counts them."""
    return [i for i, m in enumerate(messages) if m["role"] == "user"
            and not (m["content"].startswith("<tool_response>") and m["content"].endswith("</tool_response>"))]


def dropped_reasoning(messages: list[dict], style: str = "qwen3") -> list[int]:
    """Replies whose non-empty reasoning the template leaves out: before the last query (qwen3), or
    every reply but the last message (deepseek_r1, deepseek_v3.1, harmony)."""
    if style in LAST_MESSAGE_ONLY:
        last = len(messages) - 1
    else:
        starts = queries(messages)
        last = starts[-1] if starts else len(messages)
    return [i for i in range(last) if messages[i]["role"] == "assistant" and split_think(messages[i]["content"])[0]]


def split_turns(messages: list[dict], tools: list[dict] | None, meta: dict[str, Any],
                style: str = "qwen3") -> list[Conversation]:
    """The conversation as examples that each end after an exchange whose reasoning a later message would
    drop (at the next query for qwen3, right after the reply and its tool calls otherwise), plus the whole;
    in each, the messages trained by an earlier example are context (train=False)."""
    dropped = dropped_reasoning(messages, style)
    if style in LAST_MESSAGE_ONLY:
        bounds = [turn_end(messages, i) for i in dropped if turn_end(messages, i) < len(messages)] + [len(messages)]
    else:
        starts = queries(messages)
        bounds = [b for a, b in zip(starts, starts[1:]) if any(a < i < b for i in dropped)] + [len(messages)]
    out, done = [], 0
    for k, end in enumerate(bounds):
        kept = [Message(m["role"], m["content"], False if i < done else m["train"], m["weight"], m.get("tool_call_id"))
                for i, m in enumerate(messages[:end])]
        out.append(Conversation(kept, tools, {**meta, "turn": k + 1} if len(bounds) > 1 else dict(meta)))
        done = end
    return out


def split_records(records: list, template: Template) -> tuple[list, int]:
    """(records with each multi-turn reasoning conversation split, how many records were split)."""
    from sftune.encode.labels import messages_and_tools

    style = template.reasoning
    if style not in STYLES:
        return records, 0
    out, n_split = [], 0
    for record in records:
        messages, tools = messages_and_tools(record)
        if not any(m["role"] in MODEL_ROLES for m in messages) or not dropped_reasoning(messages, style):
            out.append(record)
            continue
        if isinstance(record, Conversation):
            meta = record.meta
        else:
            meta = dict(record.get("meta") or {}) if isinstance(record, dict) else {}
        out.extend(split_turns(messages, tools, meta, style))
        n_split += 1
    return out, n_split
