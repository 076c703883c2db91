"""The stop-token audit: every trained reply must end in a token that stops generation.

A model learns to stop only from a trained stop token after its replies. The audit renders a probe
conversation with the training template, tokenizes it, and checks the last trained token of each reply
against the model's stop tokens (its generation_config eos ids, EOS and the template's end-of-turn).
Where the template writes no stop after the last reply (GLM-4.5 ends a turn at the next role header,
`<|user|>`, and writes nothing after the last reply), the model's stop token is appended to it
(`Template.append_stop`); a model with no stop token at all is refused. A conversation whose last reply is
a tool call gets the stop the model emits after a call (GLM-4.5's `<|observation|>`), found the same way on a
probe with a call (`Template.append_stop_after_call`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sftune.data.schema import MODEL_ROLES
from sftune.templates.errors import TemplateError
from sftune.templates.render import Segment

if TYPE_CHECKING:
    from sftune.templates.template import Template

PROBE = [{"role": "system", "content": "You answer briefly."}, {"role": "user", "content": "Name a colour."},
         {"role": "assistant", "content": "Blue."}, {"role": "user", "content": "And another?"},
         {"role": "assistant", "content": "Green."}]
CALL_TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather in a city", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]
CALL_PROBE = [{"role": "user", "content": "Weather in Paris?"},
              {"role": "assistant", "content": None, "tool_calls": [
                  {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
              {"role": "tool", "content": "21"}, {"role": "assistant", "content": "21 degrees."}]


@dataclass(frozen=True)
class Audit:
    """What the audit found: the template to train with, the ids generation stops at, and the stop text
    appended after the last reply (None when the template writes one), and after a last reply of tool calls."""

    template: Template
    stop_ids: list[int]
    appended: str | None
    stops: list[str]
    appended_after_call: str | None = None

    def summary(self) -> str:
        """What a run says once at its start (rich markup)."""
        calls = (f"; after a last reply of tool calls, {self.appended_after_call!r}"
                 if self.appended_after_call not in (None, self.appended) else "")
        if self.appended is not None:
            return (f"[yellow]template {self.template.name!r} writes no stop token after the last reply: sftune "
                    f"appends {self.appended!r} (a stop token of the model) and trains it{calls}[/yellow]")
        if self.appended_after_call is not None:
            return (f"[yellow]template {self.template.name!r} writes no stop token after a last reply of tool calls: "
                    f"sftune appends {self.appended_after_call!r} (a stop token of the model) and trains it[/yellow]")
        return f"stop tokens: {', '.join(self.stops)}"


def eos_ids(source: Any) -> list[int]:
    """The eos ids of a model's generation_config: from a loaded model, or a model folder (none if absent)."""
    if isinstance(source, (str, Path)):
        from transformers import GenerationConfig

        if not (Path(source) / "generation_config.json").is_file():
            return []
        config = GenerationConfig.from_pretrained(str(source))
    else:
        config = getattr(source, "generation_config", None)
    eos = getattr(config, "eos_token_id", None)
    return [] if eos is None else [eos] if isinstance(eos, int) else list(eos)


def audit(template: Template, tokenizer: Any, model_eos_ids: list[int] | tuple[int, ...] = ()) -> Audit:
    """Check that the template trains a stop token after every reply; append one where it writes none."""
    stops = set(model_eos_ids) | set(template.stop_token_ids(tokenizer))
    if not stops:
        raise TemplateError(f"template {template.name!r}: the model has no stop token (the tokenizer has no EOS "
                            "and its generation_config names no eos_token_id), so a trained model would never "
                            "stop. Set eos_token in the tokenizer or eos_token_id in generation_config.json")
    # an eos id the tokenizer has no token for (a generation_config beyond the vocabulary) cannot be written
    named = {i: t for i, t in zip(sorted(stops), tokenizer.convert_ids_to_tokens(sorted(stops))) if t is not None}
    if not named:
        raise TemplateError(f"template {template.name!r}: none of the model's stop ids {sorted(stops)} is a token of "
                            "its tokenizer, so no stop can be trained. Fix eos_token_id in generation_config.json")
    texts = tuple(named.values())
    template = replace(template, stop_texts=texts, append_stop="", append_stop_after_call="")
    messages, segments = _probe(template)
    ends = _reply_ends(segments, messages)
    last_ids = [_token_before(tokenizer, segments, ends[k]) for k in sorted(ends)]
    fallback = tokenizer.eos_token_id if tokenizer.eos_token_id in named else min(named)
    appended = None
    if last_ids[-1] not in stops:
        mid = [token for token in last_ids[:-1] if token in stops]
        appended = named[mid[0] if mid else fallback]
    after_call = _stop_after_call(template, tokenizer, stops)
    appended_after_call = None if after_call is None else named.get(after_call) or appended or named[fallback]
    template = replace(template, append_stop=appended or "", append_stop_after_call=appended_after_call or "")
    return Audit(template, sorted(stops), appended, list(texts), appended_after_call)


def _stop_after_call(template: Template, tokenizer: Any, stops: set[int]) -> int | None:
    """None when the template writes a stop after a last reply of tool calls (or renders no call it trains);
    else the stop it writes after a call that its result follows (GLM's <|observation|>), or -1 for none."""
    from sftune.templates.messages import normalize_messages

    alone, full = normalize_messages(CALL_PROBE[:2]), normalize_messages(CALL_PROBE)
    try:  # a template with no tool layout refuses tool conversations when they are encoded
        alone_segments, full_segments = template.segments(alone, CALL_TOOLS), template.segments(full, CALL_TOOLS)
    except TemplateError:
        return None
    alone_end = _reply_ends(alone_segments, alone).get(len(alone) - 1)
    result = next(k for k, m in enumerate(full) if m["role"] == "tool")
    full_end = _reply_ends(full_segments, full).get(result - 1)
    if alone_end is None or full_end is None or _token_before(tokenizer, alone_segments, alone_end) in stops:
        return None
    token = _token_before(tokenizer, full_segments, full_end)
    return token if token in stops else -1


def train_stops(segments: list[Segment], messages: list[dict], stop_texts: tuple[str, ...], append: str
                ) -> list[Segment]:
    """The segments with each reply's stop trained: a stop token the template writes right after a reply's
    trained text (GLM's next role header) joins the reply; `append` follows the last reply of a conversation
    that ends with one, when the template writes no stop after it."""
    def reply(seg: Segment) -> bool:
        return bool(seg[2]) and seg[1] is not None and messages[seg[1]]["role"] in MODEL_ROLES

    out = list(segments)
    ends = [k for k, seg in enumerate(out) if reply(seg) and (k + 1 == len(out) or not reply(out[k + 1]))]
    ends_conversation = bool(messages) and messages[-1]["role"] in MODEL_ROLES
    for k in reversed(ends):  # from the back, so that earlier positions stay valid
        text, index, _ = out[k]
        if any(text.endswith(stop) for stop in stop_texts):
            continue
        following = out[k + 1][0] if k + 1 < len(out) else ""
        stop = next((x for x in sorted(stop_texts, key=len, reverse=True) if x and following.startswith(x)), None)
        if stop is not None:
            rest = following[len(stop):]
            out[k + 1:k + 2] = [(stop, index, True)] + ([(rest, *out[k + 1][1:])] if rest else [])
        elif append and k == ends[-1] and ends_conversation:
            out.insert(k + 1, (append, index, True))
    return out


def _probe(template: Template) -> tuple[list[dict], list[Segment]]:
    """The probe conversation (without the system message for a template that takes none) and its segments."""
    from sftune.templates.messages import normalize_messages

    errors = []
    for chat in (PROBE, PROBE[1:]):
        messages = normalize_messages(chat)
        try:
            return messages, template.segments(messages)
        except TemplateError as err:
            errors.append(str(err))
    raise TemplateError(f"template {template.name!r} renders no plain two-turn conversation, so its stop token "
                        f"cannot be checked: {errors[-1]}")


def _reply_ends(segments: list[Segment], messages: list[dict]) -> dict[int, int]:
    """The character offset where each model message's trained text ends, by message index."""
    ends: dict[int, int] = {}
    pos = 0
    for piece, index, body in segments:
        pos += len(piece)
        if body and index is not None and messages[index]["role"] in MODEL_ROLES:
            ends[index] = pos
    return ends


def _token_before(tokenizer: Any, segments: list[Segment], end: int) -> int:
    """The id of the token of the rendered segments that holds the character just before offset `end`."""
    text = "".join(piece for piece, _, _ in segments)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    for token, (lo, hi) in zip(reversed(enc["input_ids"]), reversed(enc["offset_mapping"])):
        if lo < end <= hi:
            return token
    return -1
