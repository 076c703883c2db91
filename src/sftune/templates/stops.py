"""The stop-token audit: every trained reply must end in a token that stops generation.

A model learns to stop only from a trained stop token after its replies. The audit renders a probe
conversation with the training template, tokenizes it, and checks the last trained token of each reply
against the model's stop tokens (its generation_config eos ids, EOS and the template's end-of-turn).
Where the template writes no stop after the last reply (GLM-4.5 ends a turn at the next role header,
`<|user|>`, and writes nothing after the last reply), the model's stop token is appended to it
(`Template.append_stop`); a model with no stop token at all is refused.
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


@dataclass(frozen=True)
class Audit:
    """What the audit found: the template to train with, the ids generation stops at, and the stop text
    appended after the last reply (None when the template writes one)."""

    template: Template
    stop_ids: list[int]
    appended: str | None
    stops: list[str]

    def summary(self) -> str:
        """What a run says once at its start (rich markup)."""
        if self.appended is not None:
            return (f"[yellow]template {self.template.name!r} writes no stop token after the last reply: sftune "
                    f"appends {self.appended!r} (a stop token of the model) and trains it[/yellow]")
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
    template = replace(template, stop_texts=texts, append_stop="")
    messages, segments = _probe(template)
    ends = _reply_ends(segments, messages)
    text = "".join(piece for piece, _, _ in segments)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    last_ids = [_token_before(enc, end) for end in ends]
    appended = None
    if last_ids[-1] not in stops:
        mid = [token for token in last_ids[:-1] if token in stops]
        choice = mid[0] if mid else tokenizer.eos_token_id if tokenizer.eos_token_id in named else min(named)
        appended = named[choice]
        template = replace(template, append_stop=appended)
    return Audit(template, sorted(stops), appended, list(texts))


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


def _reply_ends(segments: list[Segment], messages: list[dict]) -> list[int]:
    """The character offset where each reply's trained text ends."""
    ends: dict[int, int] = {}
    pos = 0
    for piece, index, body in segments:
        pos += len(piece)
        if body and index is not None and messages[index]["role"] in MODEL_ROLES:
            ends[index] = pos
    return [ends[k] for k in sorted(ends)]


def _token_before(enc: Any, end: int) -> int:
    """The id of the token that holds the character just before offset `end`."""
    for token, (lo, hi) in zip(reversed(enc["input_ids"]), reversed(enc["offset_mapping"])):
        if lo < end <= hi:
            return token
    return -1
