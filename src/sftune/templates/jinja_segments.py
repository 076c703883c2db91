"""Segments of a jinja chat_template (the model's own): which rendered text belongs to which message.

A jinja template cannot say which text belongs to which message. Two ways find out:
- prefix renders (the fast path): message k's span is where the render of the messages before it stops
  agreeing with the render of the whole conversation. It needs a prefix-stable template.
- placeholders (for the rest: Qwen3.5+ raise on a prefix without a user turn, gpt-oss rewrites the last
  turn, DeepSeek-V3 writes its reply header only before a reply): the conversation is rendered once with
  a unique placeholder in place of each content and reasoning, the placeholders are located, the real
  contents put back, and the result must equal the real render. The text between placeholders is the
  template's; a reply owns it from its generation prompt to its end-of-turn token.
Only a template that rewrites contents (beyond trimming whitespace) is refused, naming what it rewrites.
"""

from __future__ import annotations

import json
import os
import re
from typing import TYPE_CHECKING

from sftune.templates.errors import TemplateError
from sftune.templates.messages import to_hf_messages
from sftune.templates.render import EMPTY_THINK, THINK, Segment, split_think

if TYPE_CHECKING:
    from sftune.templates.template import Template


def render_chats(source: str, t: Template, chats: list[list[dict]], tools: list[dict] | None,
                 add_generation_prompt: bool) -> list[str]:
    """Render OpenAI-shaped conversations with jinja `source` and t's special tokens, in one call to
    transformers' renderer (what `apply_chat_template` runs; its per-call work is paid once)."""
    from transformers.utils.chat_template_utils import render_jinja_template

    if not chats:
        return []
    rendered, _ = render_jinja_template(conversations=chats, tools=tools, chat_template=source,
                                        add_generation_prompt=add_generation_prompt, bos_token=t.bos,
                                        eos_token=t.eos, **t.special_tokens)
    return rendered


class NotPrefixStable(TemplateError):
    """The prefix renders cannot place the messages; the placeholder method can still."""


def segments(t: Template, msgs: list[dict], tools: list[dict] | None,
             add_generation_prompt: bool) -> list[Segment]:
    """Segments of a jinja template: from prefix renders where the template allows, else from placeholders.

    A template that is not prefix-stable on a plain multi-turn probe takes placeholders for every
    conversation (one method for all its records, and no prefix renders spent on each)."""
    if not _needs_placeholders(t) and not _reasoning_in_fields(t, msgs):
        try:
            return prefix_segments(t, msgs, tools, add_generation_prompt)
        except NotPrefixStable:
            pass
    return placeholder_segments(t, msgs, tools, add_generation_prompt)


def _reasoning_in_fields(t: Template, msgs: list[dict]) -> bool:
    """Whether a reply carries reasoning that the template reads from a field (gpt-oss, Qwen3.8, Gemma 4): prefix
    renders would write it as <think> text, placeholders put it in the field (`_placeholders`)."""
    return _fields_of_template(t) and any(m["role"] == "assistant" and split_think(m["content"] or "")[0] is not None
                                          for m in msgs)


def _fields_of_template(t: Template) -> bool:
    return bool(_REASONING_FIELDS.search(t.jinja or "")) and not _SPLITS_THINK.search(t.jinja or "")


def _has_reasoning(t: Template) -> bool:
    """Whether the template knows reasoning at all: it reads a reasoning field or writes or splits at </think>.
    In one that does not (Llama 4, Qwen3-2507), a reply's think block is plain reply text, trained as the
    reply (data check's think_in_plain_template), and the reasoning options do not apply to it."""
    return "</think>" in (t.jinja or "") or bool(_REASONING_FIELDS.search(t.jinja or ""))


_PLACEHOLDERS_FOR: dict[tuple[str | None, str, str], bool] = {}


def _needs_placeholders(t: Template) -> bool:
    """Whether prefix renders fail on [system, user, reply, user, reply] (or, for a template that takes no
    system message, on the rest), found once per template."""
    key = (t.jinja, t.bos, t.eos)
    if key not in _PLACEHOLDERS_FOR:
        _PLACEHOLDERS_FOR[key] = False
        for probe in (_PROBE, _PROBE[1:]):
            try:
                prefix_segments(t, probe, None, False)
            except NotPrefixStable:
                _PLACEHOLDERS_FOR[key] = True
            except TemplateError:
                continue
            break
    return _PLACEHOLDERS_FOR[key]


_PROBE = [{"role": "system", "content": "s", "train": None, "weight": None},
          {"role": "user", "content": "u", "train": None, "weight": None},
          {"role": "assistant", "content": "a", "train": None, "weight": None},
          {"role": "user", "content": "v", "train": None, "weight": None},
          {"role": "assistant", "content": "b", "train": None, "weight": None}]


def prefix_segments(t: Template, msgs: list[dict], tools: list[dict] | None,
                    add_generation_prompt: bool) -> list[Segment]:
    """Segments of a jinja template from renders of growing prefixes of the conversation.

    Message k spans from where the render of messages[:k] stops agreeing with the full render to where
    the render of messages[:k+1] does. A reply starts where the render of messages[:k] with the
    generation prompt stops agreeing; its body ends before trailing whitespace (ChatML's newline).
    """
    hf, owners = _hf_with_owners(msgs)
    try:
        # Without a generation prompt the full render is also the render of the longest prefix.
        if add_generation_prompt:
            full = _render(t, [hf], tools, True)[0]
            prefixes = _render(t, [hf[:k] for k in range(1, len(hf) + 1)], tools, False)
        else:
            full, *shorter = _render(t, [hf] + [hf[:k] for k in range(1, len(hf))], tools, False)
            prefixes = shorter + [full] if hf else []
        ends = [_boundary(t, rendered, full) for rendered in prefixes]
        closing = _closing_suffix(t, next((c for _, c in ends if c), ""))
        cut = next((k for k, (_, c) in enumerate(ends) if c and c != closing and hf[k]["role"] == "assistant"), None)
        if cut is not None:  # gpt-oss: the last reply ends in <|return|>, the others in <|end|>
            raise NotPrefixStable(f"template {t.name!r} ends message {owners[cut]} otherwise when it is the last one")
        bounds = [0] + [end for end, _ in ends]
        if closing and not add_generation_prompt and full.endswith(closing):
            bounds[-1] -= len(closing)  # the closing suffix belongs to the template, not to the last turn
        replies = [k for k, m in enumerate(hf) if m["role"] == "assistant"]
        later = [k for k in replies if k]
        prompts = _render(t, [hf[:k] for k in later], tools, True)
        starts = {k: 0 for k in replies}  # a reply that opens the conversation starts at 0
        starts.update((k, _boundary(t, rendered, full)[0]) for k, rendered in zip(later, prompts))
    except TemplateError:
        raise
    except Exception as err:  # jinja raises anything (raise_exception, undefined keys)
        try:
            _render(t, [hf], tools, add_generation_prompt)
        except Exception:
            raise TemplateError(f"template {t.name!r} cannot render this conversation: {err}") from err
        raise NotPrefixStable(f"template {t.name!r} renders this conversation but not its first messages alone "
                              f"({err})") from err
    segs: list[Segment] = []
    for k, m in enumerate(hf):
        lo, hi, owner = bounds[k], bounds[k + 1], owners[k]
        if hi < lo:
            raise NotPrefixStable(f"template {t.name!r} renders message {owner} before the messages ahead of it")
        if k in starts:
            reply = min(max(starts[k], lo), hi)
            body_end = lo + len(full[lo:hi].rstrip()) if full[lo:hi].strip() else hi
            body_end = max(body_end, reply)
            segs += [(full[lo:reply], owner, False), *_reply(t, full[reply:body_end], owner, m.get("content")),
                     (full[body_end:hi], owner, False)]
        else:
            segs.append((full[lo:hi], owner, True))
    segs.append((full[bounds[-1]:], None, False))
    return [seg for seg in segs if seg[0]]


_EMPTY_THINK = re.compile(r"\s*(?:<think>\s*)?</think>")


def _reply(t: Template, text: str, owner: int, content: str | None = None) -> list[Segment]:
    """A reply's trained text; the think block the template writes of the reply's reasoning (from its
    `content`, as the data has it) is a think segment, and an empty one the template writes before a reply
    (one without reasoning, or whose reasoning it drops: Qwen3.5, GLM, Nemotron 3) a segment of its own,
    trained only with train_empty_think. A block ends as the template ends it (`_think_tail`)."""
    tail = _think_tail(t)
    reasoning = split_think(content)[0] if isinstance(content, str) and _has_reasoning(t) else None
    kept = text.find(reasoning.strip()) if reasoning and reasoning.strip() else -1
    closed = text.find("</think>", kept) if kept >= 0 else -1
    if closed >= 0:  # the reasoning the template keeps, through its </think>
        cut = closed + len("</think>")
        cut += len(tail) if tail and text.startswith(tail, cut) else 0
        return [(text[:cut], owner, THINK), (text[cut:], owner, True)]
    empty = _EMPTY_THINK.match(text) if tail is not None else None
    if empty is None:
        return [(text, owner, True)]
    cut = empty.end() + (len(tail) if text.startswith(tail, empty.end()) else 0)
    block = empty.group()[:-len("</think>")]
    inner = block[block.find("<think>") + len("<think>"):] if "<think>" in block else ""
    # a block that holds spaces (reasoning of whitespace, written as it is: Qwen3) is a thought, as the twins say
    return [(text[:cut], owner, THINK if inner.strip("\n") else EMPTY_THINK), (text[cut:], owner, True)]


_TAIL_OF: dict[tuple[str | None, str, str], str | None] = {}


def _think_tail(t: Template) -> str | None:
    """What the template writes after a reply's </think> whether or not an answer follows (Qwen's "\n\n"):
    the end of the think block; the rest before the answer is the answer's (GLM's "\n" before its content).
    None for a template that writes no think block."""
    key = (t.jinja, t.bos, t.eos)
    if key not in _TAIL_OF:
        _TAIL_OF[key] = None
        chats = [[{"role": "user", "content": "u"}, {"role": "assistant", "content": answer}] for answer in ("A", "")]
        try:
            with_answer, without = _render(t, chats, None, False)
        except Exception:  # jinja raises anything; a template this probe does not suit splits no block
            return None
        if "</think>" in with_answer and "</think>" in without:
            after = [text[text.rindex("</think>") + len("</think>"):] for text in (with_answer, without)]
            spaces = [text[:len(text) - len(text.lstrip())] for text in after]
            _TAIL_OF[key] = os.path.commonprefix(spaces)
    return _TAIL_OF[key]


def _render(t: Template, chats: list[list[dict]], tools: list[dict] | None,
            add_generation_prompt: bool) -> list[str]:
    return render_chats(t.jinja, t, chats, tools, add_generation_prompt)


def _hf_with_owners(msgs: list[dict]) -> tuple[list[dict], list[int]]:
    """OpenAI-shaped messages and, for each, the index of the last sftune message it holds."""
    hf = to_hf_messages(msgs)
    owners, k = [], -1
    for i, m in enumerate(msgs):
        if not (m["role"] == "tool_call" and hf[k]["role"] == "assistant" and k >= 0 and hf[k].get("tool_calls")
                and len(owners) == k + 1):
            k += 1
            owners.append(i)
        else:
            owners[k] = i
    if len(owners) != len(hf):  # pragma: no cover - to_hf_messages and this walk agree by construction
        raise TemplateError("internal error: message mapping")
    return hf, owners



def _boundary(t: Template, rendered: str, full: str) -> tuple[int, str]:
    """Where a prefix render ends inside the full render.

    A prefix-stable template renders a prefix of the full text. A template that closes every render
    with a suffix (Phi-3 appends EOS) does not; the suffix is dropped before matching, never matched
    by common characters (EOS and the next turn's header can share a start like "<|").
    """
    if full.startswith(rendered):
        return len(rendered), ""
    for closing in (t.eos, t.eos + "\n", "\n"):
        if closing and rendered.endswith(closing) and full.startswith(rendered[: -len(closing)]):
            return len(rendered) - len(closing), closing
    raise NotPrefixStable(f"template {t.name!r} is not prefix-stable (rendering the first messages gives text the "
                          "whole conversation does not start with)")


_SUFFIX_OF: dict[tuple[str, str, str], str | None] = {}


def _closing_suffix(t: Template, seen: str) -> str:
    """The text a template writes after the last message of every render (Phi-3's EOS), or "".

    Found once per template from a probe: a template without one renders [user] as a prefix of
    [user, assistant]. A render that merely is no prefix of a longer one (Qwen closes a run of tool
    results only after the last of them) says nothing about the end. If the probe cannot be
    rendered, the closing seen in this conversation's prefix renders is used.
    """
    key = (t.jinja, t.bos, t.eos)
    if key not in _SUFFIX_OF:
        probe = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]
        try:
            short, long = _render(t, [probe[:1], probe], None, False)
            _SUFFIX_OF[key] = "" if long.startswith(short) else _boundary(t, short, long)[1]
        except Exception:  # jinja raises anything; a template this probe does not suit keeps the old rule
            _SUFFIX_OF[key] = None
    suffix = _SUFFIX_OF[key]
    return seen if suffix is None else suffix



# --- the placeholder method ---------------------------------------------------------------------------

_PLACEHOLDER = "SFTUNEx{:05d}x"  # letters and digits: templates that trim or JSON-quote a content keep it whole
# Texts shaped like the special tokens that end turns ("<|im_end|>", "<turn|>", "<｜end▁of▁sentence｜>",
# "</s>"), for a template bound to no tokenizer; a bound one adds its model's stop texts (Template.stop_texts).
_TOKEN_LIKE = re.compile(r"<\|[^<>|\s]+\|?>|<[^<>|\s]+\|>|<｜[^<>｜]+｜>|</s>|<end_of_turn>|<eos>")
_REASONING_KEYS = ("reasoning_content", "reasoning", "thinking")
_REASONING_FIELDS = re.compile(
    r"""\.(?:reasoning_content|thinking)\b|[\[(]\s*['"](?:reasoning_content|thinking|reasoning)['"]""")
_SPLITS_THINK = re.compile(r"""['"]</think>['"]\s+in\b|split\(\s*['"]</think>['"]""")


def placeholder_segments(t: Template, msgs: list[dict], tools: list[dict] | None,
                         add_generation_prompt: bool) -> list[Segment]:
    """Segments from one render with placeholder contents, checked against the real render.

    Blank contents get placeholders too, so that every message is placed, whatever order the template writes
    them in (Gemma 4 writes a call turn's text after the results of its calls). A template that writes other
    text around a blank content than around a placeholder (or raises on it) is rendered once more with blank
    contents as they are; it is refused where a blank content is written out of the messages' order."""
    hf, owners = _hf_with_owners(msgs)
    real, marked, fields = _placeholders(t, hf, blanks=True)
    blank = any(not text.strip() for _, _, text in fields)
    try:
        full, probe = _render(t, [real, marked], tools, add_generation_prompt)
    except Exception as err:  # jinja raises anything (raise_exception, undefined keys)
        if not blank:
            raise TemplateError(f"template {t.name!r} cannot render this conversation: {err}") from err
        full = probe = None  # it may raise on a placeholder in place of a blank content (gpt-oss: content and thinking)
    spans = None
    if probe is not None:
        try:
            spans = _locate(t, full, probe, fields, hf, owners)
        except TemplateError:
            if not blank:
                raise
    if spans is None:  # blank contents as they are; the order seen with placeholders in them, where it was seen
        order = _text_order(probe, fields) if probe is not None else []
        real, marked, fields = _placeholders(t, hf, blanks=False)
        try:
            full, probe = _render(t, [real, marked], tools, add_generation_prompt)
        except Exception as err:  # jinja raises anything (raise_exception, undefined keys)
            raise TemplateError(f"template {t.name!r} cannot render this conversation: {err}") from err
        spans = _locate(t, full, probe, fields, hf, owners)
        _refuse_hidden_order(t, order, hf, owners)
    located = [(fields[n][0], *spans[n], fields[n][1]) for n in sorted(spans, key=lambda n: (spans[n], n))]
    in_order, late = _late_fields(t, located, hf, owners)
    ends = _end_texts(t, full, hf, _by_message(in_order))
    # a late content owns the end-of-turn token right after it, unless the next field in the text comes first (a
    # blank reply written where the late content ends: the token is that reply's)
    following = {field: nxt[1] for field, nxt in zip(located, located[1:])}
    pieces = [(lo, _token_end(full, hi, following.get((k, lo, hi, kind), len(full)), ends, leading=True) or hi,
               owners[k]) for k, lo, hi, kind in late]
    return _overlay(_placeholder_cut(t, full, hf, owners, in_order, [hi for _, hi, _ in pieces]), pieces, full)


def _text_order(probe: str, fields: list[tuple[int, str, str]]) -> list[tuple[int, str, bool]]:
    """(message, kind, blank) of each field in the order a probe writes its placeholders."""
    at = sorted((probe.find(_PLACEHOLDER.format(n)), n) for n in range(len(fields)))
    return [(fields[n][0], fields[n][1], not fields[n][2].strip()) for pos, n in at if pos >= 0]


def _refuse_hidden_order(t: Template, order: list[tuple[int, str, bool]], hf: list[dict], owners: list[int]) -> None:
    """Refuse a template that writes a message after a later one where a blank content is involved: the blank
    content's span cannot be placed (the template writes other text around it when blank), nor its neighbours'."""
    for i, (k, kind, blank) in enumerate(order):
        for j, kind_j, blank_j in order[i + 1:]:
            if j < k and (blank or blank_j):
                raise TemplateError(
                    f"template {t.name!r} writes the {kind} of message {owners[k]} ({hf[k]['role']}) before the "
                    f"{kind_j} of message {owners[j]} ({hf[j]['role']}), and writes other text around a blank "
                    "content than around a written one, so the spans cannot be found. Use a built-in template "
                    "(--template), or data without blank contents")


def _late_fields(t: Template, located: list[tuple[int, int, int, str]], hf: list[dict], owners: list[int]
                 ) -> tuple[list[tuple[int, int, int, str]], list[tuple[int, int, int, str]]]:
    """Split the located fields (message, start, end, kind; in text order) into those written in message order
    and those written after a later message's. A late field is placed only where it is the content of a turn
    with tool calls written after the results of those calls (Gemma 4); any other is refused, named."""
    in_order, late = [], []
    for i, (k, lo, hi, kind) in enumerate(located):
        before = [j for j, *_ in located[:i] if j > k]
        if not before:
            in_order.append((k, lo, hi, kind))
            continue
        results = all(hf[j]["role"] == "tool" for j in range(k + 1, max(before) + 1))
        if kind != "content" or not hf[k].get("tool_calls") or not results:
            j = min(before)
            raise TemplateError(f"template {t.name!r} writes the {kind} of message {owners[k]} ({hf[k]['role']}) "
                                f"after message {owners[j]} ({hf[j]['role']}), so its span cannot be placed. "
                                "Use a built-in template (--template)")
        late.append((k, lo, hi, kind))
    return in_order, late


def _overlay(segs: list[Segment], pieces: list[tuple[int, int, int]], full: str) -> list[Segment]:
    """Give each late content (start, end with the end-of-turn token right after it, owner) to its own message,
    trained, cutting the segments it lies in."""
    if not pieces:
        return segs
    out: list[Segment] = []
    pos = 0
    for text, owner, body in segs:
        lo, hi = pos, pos + len(text)
        pos = hi
        cuts = sorted({lo, hi} | {c for a, b, _ in pieces for c in (a, b) if lo < c < hi})
        for a, b in zip(cuts, cuts[1:]):
            mine = next((o for pa, pb, o in pieces if pa <= a and b <= pb), None)
            out.append((full[a:b], owner, body) if mine is None else (full[a:b], mine, True))
    return [seg for seg in out if seg[0]]


def _by_message(fields: list[tuple[int, int, int, str]]) -> dict[int, list[tuple[int, int, str]]]:
    by_message: dict[int, list[tuple[int, int, str]]] = {}
    for k, lo, hi, kind in fields:  # (message, start, end, kind) in text order
        by_message.setdefault(k, []).append((lo, hi, kind))
    return by_message


def _placeholders(t: Template, hf: list[dict], blanks: bool = False
                  ) -> tuple[list[dict], list[dict], list[tuple[int, str, str]]]:
    """(the messages as rendered, the same with a placeholder for each content and reasoning, and the fields
    as (message, "content" | "reasoning", real text) in placeholder order).

    A reply's reasoning goes into `reasoning_content`, `reasoning` and `thinking` for a template that reads
    reasoning only from one of those fields (gpt-oss, Qwen3.8, Gemma 4), else stays in the content as written
    (Qwen3.5, GLM, Nemotron 3 split the <think> block out of it themselves, as their built-in twins do).
    With `blanks` false, blank texts keep their value (a template may write other text around an empty content);
    a None content always does."""
    fields_of_template, reasons = _fields_of_template(t), _has_reasoning(t)
    real, marked, fields = [], [], []

    def mark(k: int, kind: str, text: str) -> str:
        fields.append((k, kind, text))
        return _PLACEHOLDER.format(len(fields) - 1)

    for k, m in enumerate(hf):
        content = m.get("content")
        reasoning = None
        if m["role"] == "assistant" and isinstance(content, str) and reasons:
            reasoning, answer = split_think(content)
        if reasoning is None:
            real.append(m)
            called = m.get("tool_calls") and content == ""  # a turn of calls without text (`to_hf_messages`)
            marked.append({**m, "content": mark(k, "content", content)}
                          if isinstance(content, str) and (blanks or content.strip()) and not called else m)
            continue
        think = mark(k, "reasoning", reasoning) if reasoning.strip() else reasoning
        called = m.get("tool_calls") and answer == ""  # calls without text after the reasoning, as above
        said = mark(k, "content", answer) if (blanks or answer.strip()) and not called else answer
        if fields_of_template:
            real.append({**m, "content": answer, **dict.fromkeys(_REASONING_KEYS, reasoning)})
            marked.append({**m, "content": said, **dict.fromkeys(_REASONING_KEYS, think)})
        else:  # the placeholders in place of the reasoning and the answer, the reply's own text around them
            opened = content.find(reasoning, content.find("<think>") + len("<think>")) if reasoning else 0
            cut = len(content) - len(answer)
            real.append(m)
            marked.append({**m, "content": content[:opened] + think + content[opened + len(reasoning):cut] + said})
    return real, marked, fields


def _locate(t: Template, full: str, probe: str, fields: list[tuple[int, str, str]], hf: list[dict],
            owners: list[int]) -> dict[int, tuple[int, int]]:
    """Where each field's text lies in the real render (by field number); a reasoning the template drops is
    absent. Raises when the template rewrites a content: drops it, writes it twice, or changes more than
    the whitespace around it."""
    found = []
    for n, (k, kind, _) in enumerate(fields):
        marker = _PLACEHOLDER.format(n)
        count = probe.count(marker)
        where = f"the {kind} of message {owners[k]} ({hf[k]['role']})"
        if count > 1 or (count == 0 and kind == "content"):
            how = f"writes it {count} times" if count else "changes it or leaves it out"
            raise TemplateError(f"template {t.name!r} rewrites {where}: it {how}, so the trained text cannot be "
                                "placed. Use a built-in template (--template)")
        if count:
            found.append((probe.index(marker), n))
    found.sort()  # in text order, which may not be the messages' (`_late_fields` decides)
    glue, last = [], 0
    for at, n in found:
        glue.append(probe[last:at])
        last = at + len(_PLACEHOLDER.format(n))
    glue.append(probe[last:])
    spans, pos = {}, 0
    for (_, n), before, after in zip(found, glue, glue[1:]):
        k, kind, text = fields[n]
        if not full.startswith(before, pos):
            raise _rewrites(t, f"the text before the {kind} of message {owners[k]} ({hf[k]['role']})",
                            before, full[pos:pos + len(before)])
        pos += len(before)
        written = next((c for c in _as_written(text)
                        if full.startswith(c, pos) and full.startswith(after, pos + len(c))), None)
        if written is None:
            stop = full.find(after, pos) if after else len(full)
            raise _rewrites(t, f"the {kind} of message {owners[k]} ({hf[k]['role']})", text,
                            full[pos:stop if stop >= 0 else len(full)])
        spans[n] = (pos, pos + len(written))
        pos += len(written)
    if full[pos:] != glue[-1]:
        raise _rewrites(t, "the end of the conversation", glue[-1], full[pos:])
    return spans


def _as_written(text: str) -> dict[str, None]:
    """What a template may write for a text without changing it: the text, trimmed (Qwen3.5's `|trim`; Qwen3's
    answer after a think block, its leading newlines only), or escaped inside a JSON string (Llama 3.1's `tojson`
    of a tool result)."""
    quoted = json.dumps(text, ensure_ascii=False)[1:-1]
    return dict.fromkeys((text, text.strip(), text.lstrip(), text.rstrip(), text.lstrip("\n"), text.strip("\n"),
                          quoted))


def _rewrites(t: Template, what: str, expected: str, written: str) -> TemplateError:
    return TemplateError(f"template {t.name!r} rewrites {what}: it renders {written[:120]!r} where "
                         f"{expected[:120]!r} was expected, so the trained text cannot be placed. "
                         "Use a built-in template (--template), or data the template keeps as it is")


def _placeholder_cut(t: Template, full: str, hf: list[dict], owners: list[int],
                     fields: list[tuple[int, int, int, str]], late_ends: tuple[int, ...] | list[int] = ()
                     ) -> list[Segment]:
    """Cut the real render into segments at the message boundaries the located fields imply.

    A reply owns the text from the end of its generation prompt (the longest start of it found before
    its content, and what else of the prompt its text repeats: Nemotron's <think>) through its stop token
    (the audited template's stop texts, else its end-of-turn token); what precedes is its header, untrained.
    Any other message owns its text up to the end-of-turn token after its content, or up to the next reply's
    header. A reply that runs on without a header after a late content (`late_ends`: where each ends) starts there."""
    by_message = _by_message(fields)
    prompt = generation_prompt(t)
    ends = _end_texts(t, full, hf, by_message)
    segs: list[Segment] = []
    start = 0
    for k, m in enumerate(hf):
        own = by_message.get(k, [])
        later = next((by_message[j][0][0] for j in range(k + 1, len(hf)) if j in by_message), len(full))
        after = own[-1][1] if own else start
        owner = owners[k]
        if m["role"] != "assistant":
            header = _find_prompt(full, prompt, after, later) if k + 1 < len(hf) and hf[k + 1]["role"] == "assistant" \
                else None
            close = _result_close(t) if m["role"] == "tool" and own else ""
            if header:
                end = header[0]
            elif close and full.startswith(close, after):  # a result closed in a turn that runs on (Gemma 4)
                end = after + len(close)
            else:
                end = _token_end(full, after, later, ends, leading=True) or after
            segs.append((full[start:end], owner, True))
            start = end
            continue
        content_at = next((lo for lo, _, kind in own if kind == "content"), None)
        head_limit = own[0][0] if own else later
        header = _find_prompt(full, prompt, start, head_limit)
        if header:
            reply = header[1]
        elif not own:
            reply = max([start] + [e for e in late_ends if start <= e <= head_limit])
        else:  # a reply that runs on after results (Gemma 4) opens its think block itself: the opener is its own
            runs_on = k and hf[k - 1]["role"] == "tool" and own[0][2] == "reasoning"
            blank = _blank_thought(t, full, m, start, own[0][0]) if k and hf[k - 1]["role"] == "tool" else None
            reply = start if runs_on else blank[0] if blank else own[0][0]
        after = max(after, reply)  # a reply's end is looked for after its header, never inside it
        if own and own[-1][2] == "reasoning" and full[after:later].lstrip().startswith("</think>"):
            after = full.index("</think>", after) + len("</think>")  # a blank answer after it: the block is the reply's
        if m.get("tool_calls") or not own:  # through the model's stop token where the template is audited
            end = (_token_end(full, after, later, t.stop_texts) if t.stop_texts else None) \
                or _token_end(full, after, later, ends) or _token_end(full, after, later, None) or after
            empty = _EMPTY_THINK.match(full, after, later) if end == after and not own else None
            end = empty.end() if empty else end  # a blank reply that ends a conversation: its empty think block (GLM)
        else:
            end = _token_end(full, after, later, None, leading=True) or after
        segs.append((full[start:reply], owner, False))
        if any(kind == "reasoning" for _, _, kind in own):
            # a reply without text (only calls) has its think block end at the </think> after its reasoning, or
            # at the token that closes it (Gemma 4's <channel|>)
            thought = next(hi for _, hi, kind in own if kind == "reasoning")
            limit = end if content_at is None else content_at
            if full.find("</think>", thought, limit) >= 0:
                answer = full.find("</think>", thought, limit) + len("</think>")
            else:  # the thought's own end-of-message token, and the header the next message opens with after it
                # (gpt-oss: <|end|><|start|>assistant; the answer's channel header is the answer's)
                answer = (_token_match(full, thought, limit, None, leading=True) or (thought, thought))[1]
                if prompt and full.startswith(prompt, answer) and answer + len(prompt) < end:
                    answer += len(prompt)
                answer = limit if content_at is not None and answer == thought else answer
            closed = full.rfind("</think>", reply, answer)
            if closed >= 0:  # the think block ends as the template ends it (`_think_tail`)
                closed += len("</think>")
                answer = closed + (len(_think_tail(t) or "") if full.startswith(_think_tail(t) or "", closed) else 0)
            segs += [(full[reply:answer], owner, THINK), (full[answer:end], owner, True)]
        elif (blank := _blank_thought(t, full, m, reply, end if content_at is None else content_at)):
            segs += [(full[reply:blank[1]], owner, blank[2]), (full[blank[1]:end], owner, True)]
        else:
            segs += _reply(t, full[reply:end], owner)
        start = end
    segs.append((full[start:], None, False))
    return [seg for seg in segs if seg[0]]


def _blank_thought(t: Template, full: str, m: dict, lo: int, hi: int) -> tuple[int, int, str] | None:
    """Where the block a template writes of a reply's blank reasoning lies in full[lo:hi] (start, end) and its kind
    (THINK for whitespace, EMPTY_THINK for nothing, as the twins say), for a template that reads reasoning from a
    field and frames it with tokens (`_thought_frame`). None where the reply has no blank reasoning or no such block."""
    content, frame = m.get("content"), _thought_frame(t)
    reasoning = split_think(content)[0] if isinstance(content, str) and frame else None
    if reasoning is None or reasoning.strip():
        return None
    hit = re.compile(re.escape(frame[0]) + r"\s*" + re.escape(frame[1])).search(full, lo, hi)
    return (hit.start(), hit.end(), THINK if reasoning else EMPTY_THINK) if hit and hit.end() <= hi else None


_FRAME_OF: dict[tuple[str | None, str, str], tuple[str, str] | None] = {}


def _thought_frame(t: Template) -> tuple[str, str] | None:
    """The text a template that reads reasoning from a field writes before and after it in a reply, up to the answer
    or to the header the answer's message opens with (gpt-oss: '<|channel|>analysis<|message|>' and
    '<|end|><|start|>assistant'; Gemma 4: '<|channel>thought\\n' and '\\n<channel|>'), from a probe once per
    template; None for one that frames it with <think> tags (found by `_reply`) or where the probe cannot tell."""
    key = (t.jinja, t.bos, t.eos)
    if key not in _FRAME_OF:
        _FRAME_OF[key] = None
        thought, answer, prompt = _PLACEHOLDER.format(0), _PLACEHOLDER.format(1), generation_prompt(t)
        chat = [{"role": "user", "content": "u"},
                {"role": "assistant", "content": answer, **dict.fromkeys(_REASONING_KEYS, thought)}]
        try:
            text = _render(t, [chat], None, False)[0] if _fields_of_template(t) and prompt else ""
        except Exception:  # jinja raises anything; a template this probe does not suit frames nothing here
            return None
        at, then = text.find(thought), text.find(answer)
        opened = text.rfind(prompt, 0, at) if 0 <= at < then else -1
        if opened >= 0 and "think>" not in text:
            before, after = text[opened + len(prompt):at], text[at + len(thought):then]
            header = after.find(prompt)
            after = after[:header + len(prompt)] if header >= 0 else after
            _FRAME_OF[key] = (before, after) if before and after else None
    return _FRAME_OF[key]


def _end_texts(t: Template, full: str, hf: list[dict], by_message: dict[int, list]) -> tuple[str, ...]:
    """Texts that end a reply: the model's stop tokens, EOS, and the token written right after each plain
    reply of this conversation (a reply with tool calls ends at one of these, not at a token inside its calls)."""
    ends = [*t.stop_texts, t.eos]
    for k, m in enumerate(hf):
        if m["role"] == "assistant" and not m.get("tool_calls") and by_message.get(k):
            after = by_message[k][-1][1]
            hit = _token_match(full, after, len(full), None, leading=True)
            if hit:
                ends.append(full[hit[0]:hit[1]])
    return tuple(dict.fromkeys(e for e in ends if e))


def _token_end(full: str, lo: int, hi: int, texts: tuple[str, ...] | None, leading: bool = False) -> int | None:
    hit = _token_match(full, lo, hi, texts, leading)
    return hit[1] if hit else None


def _token_match(full: str, lo: int, hi: int, texts: tuple[str, ...] | None, leading: bool = False
                 ) -> tuple[int, int] | None:
    """The first of `texts` (None: any special-token-shaped text) in full[lo:hi]; with `leading`, only one
    that follows nothing but whitespace."""
    if texts is None:
        hit = _TOKEN_LIKE.search(full, lo, hi)
        span = hit.span() if hit else None
    else:
        hits = [(i, i + len(x)) for x in texts for i in [full.find(x, lo, hi)] if i >= 0]
        span = min(hits) if hits else None
    if span is None or (leading and full[lo:span[0]].strip()):
        return None
    return span


def _find_prompt(full: str, prompt: str, lo: int, hi: int) -> tuple[int, int] | None:
    """Where the generation prompt first occurs in full[lo:hi], or a start of it that ends at a token or a line
    ("<|im_start|>assistant\n" of Qwen3.5's "<|im_start|>assistant\n<think>\n"), at least half of it: the first
    header in the range (a blank reply's bare header comes before the next reply's full prompt), as long as it goes."""
    cuts = {len(prompt)} | {m.end() for m in _TOKEN_LIKE.finditer(prompt)} | {
        k + 1 for k, c in enumerate(prompt) if c == "\n"}
    found = [(at, -n) for n in cuts if n and 2 * n >= len(prompt) for at in [full.find(prompt[:n], lo, hi)] if at >= 0]
    if not found:
        return None
    at, longest = min(found)
    end = at - longest
    return at, end + _held(prompt[end - at:], full[end:hi])


_HELD_CUT = re.compile(_TOKEN_LIKE.pattern + r"|<think>|\n")


def _held(rest: str, text: str) -> int:
    """How much of `text` the rest of the generation prompt already holds, to a token, tag or line end
    (Nemotron's prompt opens <think>\n, a history reply <think></think>: its <think> is the prompt's)."""
    same = len(os.path.commonprefix([rest, text]))
    return max((m.end() for m in _HELD_CUT.finditer(rest) if m.end() <= same), default=0)


_CLOSE_OF: dict[tuple[str | None, str, str], str] = {}
_CLOSE_PROBE = [{"role": "user", "content": "u"},
                {"role": "assistant", "content": None, "tool_calls": [
                    {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
                {"role": "tool", "content": "SFTUNExRESULTx"}]
_CLOSE_TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
                                                  "parameters": {"type": "object", "required": ["city"],
                                                                 "properties": {"city": {"type": "string"}}}}}]


def _result_close(t: Template) -> str:
    """The text a template writes after a tool result's content whether the conversation ends there or a turn of
    calls follows (Gemma 4's '<|"|>}<tool_response|>'): the result's own, from a probe once per template; ""
    when the probe cannot tell."""
    key = (t.jinja, t.bos, t.eos)
    if key not in _CLOSE_OF:
        _CLOSE_OF[key] = ""
        marker = _CLOSE_PROBE[-1]["content"]
        try:
            alone, followed = _render(t, [_CLOSE_PROBE, _CLOSE_PROBE + [_CLOSE_PROBE[1]]], _CLOSE_TOOLS, False)
        except Exception:  # jinja raises anything; a template this probe does not suit closes no result here
            return ""
        if alone.count(marker) == 1 and followed.count(marker) == 1:
            after = [text[text.index(marker) + len(marker):] for text in (alone, followed)]
            _CLOSE_OF[key] = os.path.commonprefix(after)
    return _CLOSE_OF[key]


_PROMPT_OF: dict[tuple[str | None, str, str], str] = {}


def generation_prompt(t: Template) -> str:
    """The text a template adds for add_generation_prompt (a reply's header), from a one-user-turn probe
    (with a system message for templates that want one); "" when it cannot be told."""
    key = (t.jinja, t.bos, t.eos)
    if key not in _PROMPT_OF:
        _PROMPT_OF[key] = ""
        for probe in ([{"role": "user", "content": "a"}],
                      [{"role": "system", "content": "s"}, {"role": "user", "content": "a"}]):
            try:
                bare, prompted = _render(t, [probe], None, False)[0], _render(t, [probe], None, True)[0]
            except Exception:  # jinja raises anything; the next probe may suit the template
                continue
            if prompted.startswith(bare):
                _PROMPT_OF[key] = prompted[len(bare):]
                break
    return _PROMPT_OF[key]
