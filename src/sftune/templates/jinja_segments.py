"""Segments of a jinja chat_template (the model's own), found by rendering growing prefixes.

A jinja template cannot say which text belongs to which message, so each message's span is where
the render of the messages before it stops agreeing with the render of the whole conversation.
This needs templates that are prefix-stable (most are); those that are not are refused by name.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sftune.templates.errors import TemplateError
from sftune.templates.messages import to_hf_messages
from sftune.templates.render import Segment

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


def segments(t: Template, msgs: list[dict], tools: list[dict] | None,
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
        raise TemplateError(
            f"template {t.name!r} renders this conversation but not its first messages alone ({err}), so where "
            "each message starts cannot be found (Llama 3.x templates with tools and a system message do this). "
            "Use a built-in template with --template, e.g. llama3.1 or qwen2.5") from err
    segs: list[Segment] = []
    for k, m in enumerate(hf):
        lo, hi, owner = bounds[k], bounds[k + 1], owners[k]
        if hi < lo:
            raise TemplateError(f"template {t.name!r} renders message {owner} before the messages ahead of it; "
                                "its spans cannot be found. Use a built-in template (--template)")
        if k in starts:
            reply = min(max(starts[k], lo), hi)
            body_end = lo + len(full[lo:hi].rstrip()) if full[lo:hi].strip() else hi
            body_end = max(body_end, reply)
            segs += [(full[lo:reply], owner, False), (full[reply:body_end], owner, True), (full[body_end:hi], owner, False)]
        else:
            segs.append((full[lo:hi], owner, True))
    segs.append((full[bounds[-1]:], None, False))
    return [seg for seg in segs if seg[0]]


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
    raise TemplateError(f"template {t.name!r} is not prefix-stable (rendering the first messages gives text the "
                        "whole conversation does not start with), so its spans cannot be found. "
                        "Use a built-in template (--template)")


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

