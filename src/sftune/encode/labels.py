"""Conversation -> input_ids + labels (-100 where not trained), from the template's message spans.

The whole rendered text is tokenized once (no special tokens added: the template writes BOS itself,
as `apply_chat_template` does), so the ids are exactly the ids of the text a model sees at inference
and segment boundaries cannot change BPE merges. A token is trained when its characters overlap a
trained span. Spans come from `Template.segments`; nothing searches the text for a response marker.

Policies (per-message `train` flags override them):
  assistant  every model turn (assistant and tool_call): content and the end-of-turn marker (default)
  last       the last model turn only (an assistant text and the tool calls right after it are one turn)
  all        every token, the prompt included (continued pre-training, plain text)

Reasoning options, for templates that write a reply's <think> block as a segment of its own (qwen3,
deepseek_r1):
  think_and_answer  the think block and the answer (default)
  answer_only       the answer only; the think block is context
  think_last_turn   the think blocks of the final exchange only (the model turns after the last user
                    query: the last reply and the tool-call turns that lead to it, whose reasoning the
                    official templates keep there); every answer
An empty think block (`<think>\n\n</think>\n\n`, what a no-think reply or prompt holds) is never
trained unless train_empty_think: the model would learn to skip thinking (ms-swift's ignore_empty_think).

The end-of-turn / EOS token after a reply is part of its span and trained, whatever the pad token.
labels[0] is always -100 (nothing predicts the first token), which is also what packing relies on.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from sftune.data.schema import MODEL_ROLES, Conversation
from sftune.templates import Template, TemplateError, normalize_messages
from sftune.templates.render import EMPTY_THINK, THINK, last_query

POLICIES = ("assistant", "last", "all")
REASONING = ("think_and_answer", "answer_only", "think_last_turn")
IGNORE = -100  # the label of a position that is not trained (PyTorch's cross-entropy ignore_index)


def trained_flags(messages: list[dict[str, Any]], policy: str = "assistant") -> list[bool]:
    """Which messages are trained under `policy`, after each message's own `train` flag."""
    if policy not in POLICIES:
        raise ValueError(f"unknown masking policy {policy!r}; use one of {', '.join(POLICIES)}")
    first_of_last, last = last_turn(messages)
    flags = []
    for i, m in enumerate(messages):
        if m.get("train") is not None:
            flags.append(bool(m["train"]))
        elif policy == "all":
            flags.append(True)
        elif policy == "last":
            flags.append(first_of_last <= i <= last)
        else:
            flags.append(m["role"] in MODEL_ROLES)
    return flags


def last_turn(messages: list[dict[str, Any]]) -> tuple[int, int]:
    """(first, last) message index of the last model turn (a text and the tool calls right after it are
    one turn); (-1, -1) without one."""
    model_turns = [i for i, m in enumerate(messages) if m["role"] in MODEL_ROLES]
    last = model_turns[-1] if model_turns else -1
    first_of_last = last
    if last >= 0 and messages[last]["role"] == "tool_call":
        while first_of_last > 0 and messages[first_of_last - 1]["role"] == "tool_call":
            first_of_last -= 1
        if first_of_last > 0 and messages[first_of_last - 1]["role"] == "assistant":
            first_of_last -= 1
    return first_of_last, last


def final_exchange(messages: list[dict[str, Any]]) -> int:
    """The index of the first model message after the last user query (the final exchange: the last reply and
    the tool-call turns that lead to it); a user message that is all <tool_response> is no query (Qwen3's
    last_query_index). The last model turn's first message when no model message follows a query."""
    query = last_query(messages)
    first_of_last = last_turn(messages)[0]
    later = [i for i in range(query + 1, len(messages)) if messages[i]["role"] in MODEL_ROLES]
    return later[0] if later and messages[query]["role"] == "user" else first_of_last


def check_reasoning(reasoning: str) -> None:
    if reasoning not in REASONING:
        raise ValueError(f"unknown reasoning option {reasoning!r}; use one of {', '.join(REASONING)}")


def render_spans(template: Template, messages: list[dict], tools: list[dict] | None, policy: str,
                 reasoning: str = "think_and_answer", train_empty_think: bool = False
                 ) -> tuple[str, list[tuple[int, int, float]]]:
    """The rendered text and its trained character spans (start, end, weight)."""
    flags = trained_flags(messages, policy)
    check_reasoning(reasoning)
    final = final_exchange(messages)
    pieces, spans, pos = [], [], 0
    for text, index, body in template.segments(messages, tools):
        end = pos + len(text)
        if body == THINK and policy != "all" and (
                reasoning == "answer_only" or (reasoning == "think_last_turn" and index < final)):
            body = False
        elif body == EMPTY_THINK and policy != "all" and not train_empty_think:
            body = False
        if policy == "all" and index is None:
            spans.append((pos, end, 1.0))
        elif index is not None and flags[index] and (body or policy == "all"):
            weight = messages[index].get("weight")
            spans.append((pos, end, 1.0 if weight is None else float(weight)))
        pieces.append(text)
        pos = end
    return "".join(pieces), spans


def text_labels(ids: list[int], offsets: list[tuple[int, int]], spans: list[tuple[int, int, float]],
                n_chars: int, weighted: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """Labels (and per-token weights) of one text: a token is trained if its characters overlap a span (the
    vision encoder labels its text with it too)."""
    off = np.asarray(offsets, dtype=np.int64).reshape(-1, 2)
    return span_labels(np.asarray(ids, dtype=np.int64), off[:, 0], off[:, 1], np.array([len(ids)]),
                        np.array([n_chars]), [spans], weighted)


def span_labels(ids: np.ndarray, starts: np.ndarray, ends: np.ndarray, counts: np.ndarray, n_chars: np.ndarray,
                 spans: list[list[tuple[int, int, float]]], weighted: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """Labels (and weights) of many texts at once, from every token's character offsets.

    ids/starts/ends are flat over the texts (counts tokens each, offsets within each text); spans holds
    each text's trained character spans. A token is trained when a character of [start, max(end,
    start + 1)) lies in a span (an empty token counts its next character); its weight is the weight
    of its last character. The first token of each text is never trained: nothing predicts it.
    """
    rows = np.repeat(np.arange(len(counts)), counts)
    text_start = np.cumsum(n_chars) - n_chars
    limit = n_chars[rows]
    token_start = np.minimum(starts, limit)
    token_end = np.minimum(np.maximum(ends, token_start + 1), limit) + text_start[rows]
    token_start = token_start + text_start[rows]
    total = int(n_chars.sum())
    edges = [(int(base) + a, int(base) + b, w) for base, row in zip(text_start, spans) for a, b, w in row if b > a]
    marks = (np.bincount([a for a, _, _ in edges], minlength=total + 1)
             - np.bincount([b for _, b, _ in edges], minlength=total + 1))
    inside = np.concatenate([[0], np.cumsum(np.cumsum(marks[:-1]) > 0)])  # trained characters before each one
    trained = inside[token_end] > inside[token_start]
    trained[(np.cumsum(counts) - counts)[counts > 0]] = False
    labels = np.where(trained, ids, IGNORE)
    if not weighted:
        return labels, None
    char_weights = np.zeros(max(total, 1), dtype=np.float32)
    for a, b, weight in edges:
        char_weights[a:b] = weight
    return labels, np.where(trained, char_weights[np.maximum(token_end - 1, 0)], 0.0).astype(np.float32)


def _tokenize(tokenizer: Any, text: str) -> tuple[list[int], list[tuple[int, int]]]:
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    return enc["input_ids"], enc["offset_mapping"]


def _check_bos(ids: list[int], tokenizer: Any, template: Template) -> None:
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is not None and len(ids) > 1 and ids[0] == bos and ids[1] == bos:
        raise TemplateError(f"template {template.name!r} renders two BOS tokens ({tokenizer.bos_token!r}) at the "
                            "start; remove the BOS text from the template or from the data")


def encode(conversation: Conversation | dict | list, tokenizer: Any, template: Template, *,
           policy: str = "assistant", max_len: int | None = None, reasoning: str = "think_and_answer",
           train_empty_think: bool = False) -> dict[str, list] | None:
    """input_ids and labels (and loss_weights when a message has a weight) for one conversation.

    Over `max_len`, whole exchanges are dropped from the left (the system prompt stays), then the
    prompt is cut from the left (BOS stays), then, only if the trained tokens alone are too long,
    the end. Returns None when no trained token is left: callers count and report it, never train it.
    """
    messages, tools = messages_and_tools(conversation)
    options = {"reasoning": reasoning, "train_empty_think": train_empty_think}
    result = _encode_messages(messages, tools, tokenizer, template, policy, options)
    if max_len is not None and len(result["input_ids"]) > max_len:
        result = _truncate(messages, tools, tokenizer, template, policy, max_len, result, options)
    if not any(label != IGNORE for label in result["labels"]):
        return None
    return result


def messages_and_tools(conversation: Any) -> tuple[list[dict], list[dict] | None]:
    """A Conversation, a {"messages", "tools"} dict or a message list -> (normalized messages, tools)."""
    if isinstance(conversation, Conversation):
        return normalize_messages(conversation.messages), conversation.tools
    if isinstance(conversation, dict) and "messages" in conversation:
        return normalize_messages(conversation["messages"]), conversation.get("tools")
    return normalize_messages(conversation), None


def _encode_messages(messages: list[dict], tools: list[dict] | None, tokenizer: Any, template: Template,
                     policy: str, options: dict[str, Any]) -> dict[str, list]:
    text, spans = render_spans(template, messages, tools, policy, **options)
    ids, offsets = _tokenize(tokenizer, text)
    _check_bos(ids, tokenizer, template)
    weighted = any(m.get("weight") is not None for m in messages)
    labels, weights = text_labels(ids, offsets, spans, len(text), weighted)
    out = {"input_ids": list(ids), "labels": labels.tolist()}
    if weighted:
        out["loss_weights"] = weights.tolist()
    return out


def _truncate(messages: list[dict], tools: list[dict] | None, tokenizer: Any, template: Template, policy: str,
              max_len: int, result: dict[str, list], options: dict[str, Any]) -> dict[str, list]:
    # 1. Drop the oldest exchanges (a user turn and what follows it up to the next user turn), keeping
    #    the system prompt and at least the last exchange: the fewest that make it fit, found by bisection
    #    (both the length and what is left to train only shrink as more is dropped), so a conversation of
    #    thousands of turns takes a few encodings, not one per turn.
    head = 1 if messages and messages[0]["role"] == "system" else 0
    users = [i for i in range(head, len(messages)) if messages[i]["role"] == "user"]
    cuts = users[1:]
    encoded: dict[int, dict[str, list] | None] = {-1: result}

    def at(j: int) -> dict[str, list] | None:
        """The encoding with the exchanges before cuts[j] dropped; None when nothing is left to train."""
        if j not in encoded:
            kept = messages[:head] + messages[cuts[j]:]
            encoded[j] = (_encode_messages(kept, tools, tokenizer, template, policy, options)
                          if any(trained_flags(kept, policy)) else None)
        return encoded[j]

    low, high = 0, len(cuts)  # the first cut that fits or leaves nothing to train, else len(cuts)
    while low < high:
        middle = (low + high) // 2
        found = at(middle)
        if found is None or len(found["input_ids"]) <= max_len:
            high = middle
        else:
            low = middle + 1
    result = at(low) if low < len(cuts) and at(low) is not None else at(low - 1)
    if len(result["input_ids"]) <= max_len:
        return result
    # 2. Cut the prompt from the left (keeping BOS), then 3. the end.
    ids, labels = result["input_ids"], result["labels"]
    weights = result.get("loss_weights")
    keep_head = 1 if ids and ids[0] == getattr(tokenizer, "bos_token_id", None) else 0
    first_trained = next((k for k, label in enumerate(labels) if label != IGNORE), len(labels))
    cut = max(0, min(len(ids) - max_len, first_trained - 1 - keep_head))  # keep one prompt token before it
    order = list(range(keep_head)) + list(range(keep_head + cut, len(ids)))
    order = order[:max_len]
    out = {"input_ids": [ids[k] for k in order], "labels": [labels[k] for k in order]}
    out["labels"][0] = IGNORE
    if weights is not None:
        out["loss_weights"] = [weights[k] for k in order]
    return out



def explain(result: dict[str, list], tokenizer: Any, *, image_ids: frozenset[int] | set[int] = frozenset(),
            per_token: bool = False) -> list[tuple[str, str]]:
    """The record as (text, kind) pieces, kind "trained", "masked" or "image": what `sftune data inspect`
    prints and the web UI's Data tab colours.

    Tokens are decoded together, never a byte at a time: a character whose bytes span several tokens
    (Chinese in byte-level BPE) stays whole. Consecutive tokens of one kind are one piece (`per_token`:
    each token is one, merged with the next ones only to complete a character). Each image's run of tokens
    is one piece "[image k: n tokens]".
    """
    groups: list[tuple[list[int], str]] = []
    for token, label in zip(result["input_ids"], result["labels"]):
        kind = "image" if token in image_ids else ("trained" if label != IGNORE else "masked")
        if groups and kind == groups[-1][1] and (kind == "image" or not per_token):
            groups[-1][0].append(token)
        elif (groups and "image" not in (kind, groups[-1][1])
              and _ends_inside_a_character(tokenizer, groups[-1][0])):
            groups[-1][0].append(token)  # the rest of a character's bytes (tokens of one character share a label)
        else:
            groups.append(([token], kind))
    pieces, images = [], 0
    for ids, kind in groups:
        if kind == "image":
            images += 1
            pieces.append((f"[image {images}: {len(ids)} tokens]", kind))
        else:
            pieces.append((tokenizer.decode(ids), kind))
    return pieces


def _ends_inside_a_character(tokenizer: Any, ids: list[int]) -> bool:
    """Whether the tokens end inside a character: their last bytes decode to a replacement mark (U+FFFD).
    A character has at most 4 bytes, so the last 4 tokens tell."""
    return tokenizer.decode(ids[-4:]).endswith("\ufffd")
