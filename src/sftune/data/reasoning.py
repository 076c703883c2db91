"""Reasoning data checks: what goes wrong with <think> blocks before a reasoning model is trained.

    check_reasoning(conversations, *, template_reasoning="qwen3") -> dict
        counts and located examples (file:line and field) of each defect kind in KINDS, and the
        reasoning vs answer lengths (characters) of the replies that have reasoning.

`template_reasoning` is the template's reasoning style: "qwen3" (think blocks kept only after the
last user query), "deepseek_r1", "deepseek_v3.1" or "harmony" (kept only on the last message), "dropped" for a
template that drops every reply's reasoning, the last one's too (DeepSeek-V3 / V3.1's official templates:
Template.drops_reasoning), or None for a template without one (every think block is then plain reply text).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from typing import Any

import numpy as np

from sftune.data.schema import Conversation

KINDS = {
    "empty_think": "a <think> block with nothing inside (other than the no-think prefix); it teaches the "
                   "model to skip thinking",
    "unclosed_think": "<think> without </think>, or </think> without <think>: the template splits the reply "
                      "wrongly",
    "think_not_first": "text before the <think> block; reasoning templates split at </think> and keep "
                       "only what follows as the answer",
    "think_in_plain_template": "a <think> block while the template has no reasoning support: it is trained "
                               "as plain reply text and inference never shows it",
    "reasoning_dropped_by_template": "reasoning in a reply while the template drops every reply's reasoning, the last "
                                     "one's too (it writes only what follows </think>): it is never trained; pick a "
                                     "built-in that writes it (deepseek_v3.1, deepseek_r1, qwen3, ...)",
    "dropped_reasoning": "reasoning in a reply that the template drops from the rendered text (qwen3: before "
                         "the last user query; deepseek_r1: any reply but the last message); encode splits such "
                         "conversations per exchange (see data.split_reasoning_turns)",
    "no_think_prefix": "a reply that opens with the empty no-think block <think>\\n\\n</think>\\n\\n (a hybrid "
                       "model's non-thinking mode); the block is not trained unless train_empty_think",
    "answer_repeats_reasoning": "the answer is a copy of the reasoning (or of a long stretch of it)",
    "reasoning_without_answer": "a think block and no answer after it",
}
NO_THINK_PREFIX = "<think>\n\n</think>\n\n"
# The reasoning styles whose template keeps a reply's reasoning on the last message only.
LAST_MESSAGE_ONLY = ("deepseek_r1", "deepseek_v3.1", "harmony")
EXAMPLES_PER_KIND = 5
MIN_REPEAT_CHARS = 20
_SPACES = re.compile(r"\s+")


def think_parts(content: str) -> tuple[str | None, str, str | None]:
    """(reasoning, answer, defect) of a reply: reasoning None when there is no think block; defect one of
    "unclosed_think", "think_not_first" or None."""
    opens, closes = content.count("<think>"), content.count("</think>")
    if not opens and not closes:
        return None, content, None
    if opens != closes or content.find("<think>") > content.find("</think>"):
        return None, content, "unclosed_think"
    head, rest = content.split("<think>", 1)
    reasoning, answer = rest.split("</think>", 1)
    return reasoning, answer, "think_not_first" if head.strip() else None


def _last_query(conversation: Conversation) -> int:
    for i in range(len(conversation.messages) - 1, -1, -1):
        m = conversation.messages[i]
        if m.role == "user" and not (m.content.startswith("<tool_response>") and m.content.endswith("</tool_response>")):
            return i
    return len(conversation.messages)


def _where(conversation: Conversation, i: int) -> str:
    meta = conversation.meta
    place = f"{meta.get('source', '?')}:{meta['line']}" if "line" in meta else \
        f"{meta.get('source', '?')} record {meta.get('record', '?')}"
    return f"{place} messages[{i}].content"


def _normalized(text: str) -> str:
    return _SPACES.sub(" ", text).strip().lower()


def _repeats(reasoning: str, answer: str) -> bool:
    a, r = _normalized(answer), _normalized(reasoning)
    return len(a) >= MIN_REPEAT_CHARS and a in r


def _summary(values: list[float]) -> dict[str, Any]:
    if not values:
        return {"count": 0}
    array = np.asarray(values, dtype=np.float64)
    return {"count": len(values), "mean": round(float(array.mean()), 2), "p50": round(float(np.median(array)), 2),
            "p90": round(float(np.percentile(array, 90)), 2), "max": round(float(array.max()), 2)}


def check_reasoning(conversations: Iterable[Conversation], *, template_reasoning: str | None = "qwen3"
                    ) -> dict[str, Any]:
    """Counts and located examples of each reasoning defect kind, and reasoning / answer lengths."""
    counts: Counter = Counter()
    examples: dict[str, list[str]] = {kind: [] for kind in KINDS}
    reasoning_chars, answer_chars, ratios = [], [], []
    n_conversations = n_replies = n_with = 0

    def found(kind: str, conversation: Conversation, i: int) -> None:
        counts[kind] += 1
        if len(examples[kind]) < EXAMPLES_PER_KIND:
            examples[kind].append(_where(conversation, i))

    for conversation in conversations:
        n_conversations += 1
        last_query = _last_query(conversation) if template_reasoning not in LAST_MESSAGE_ONLY else \
            len(conversation.messages) - 1
        for i, m in enumerate(conversation.messages):
            if m.role != "assistant":
                continue
            n_replies += 1
            reasoning, answer, defect = think_parts(m.content)
            if defect:
                found(defect, conversation, i)
            if reasoning is None:
                continue
            n_with += 1
            calls_follow = i + 1 < len(conversation.messages) and conversation.messages[i + 1].role == "tool_call"
            if template_reasoning is None:
                found("think_in_plain_template", conversation, i)
            elif template_reasoning == "dropped" and reasoning.strip():
                found("reasoning_dropped_by_template", conversation, i)
            if m.content.startswith(NO_THINK_PREFIX):
                found("no_think_prefix", conversation, i)
            elif not reasoning.strip():
                found("empty_think", conversation, i)
            if reasoning.strip():
                if template_reasoning in ("qwen3", *LAST_MESSAGE_ONLY) and i < last_query:
                    found("dropped_reasoning", conversation, i)
                if not answer.strip() and not calls_follow:
                    found("reasoning_without_answer", conversation, i)
                if _repeats(reasoning, answer):
                    found("answer_repeats_reasoning", conversation, i)
                reasoning_chars.append(len(reasoning.strip()))
                answer_chars.append(len(answer.strip()))
                ratios.append(len(reasoning.strip()) / max(1, len(answer.strip())))
    return {
        "conversations": n_conversations,
        "replies": n_replies,
        "replies_with_think": n_with,
        "template_reasoning": template_reasoning,
        "kinds": {kind: {"count": counts[kind], "meaning": KINDS[kind], "examples": examples[kind]} for kind in KINDS},
        "reasoning_chars": _summary(reasoning_chars),
        "answer_chars": _summary(answer_chars),
        "reasoning_to_answer": _summary(ratios),
    }
