"""A chat template: what it is (a dict of formats or a jinja source, bound to a tokenizer's BOS/EOS),
how to get one (`get`, `default_for`), and how it renders.

A jinja template renders through its built-in twin where one is known (`twins`), else by segmenting
prefix renders (`jinja_segments`); a dict template through `render`. `save_to_tokenizer` writes the
training template into the tokenizer, so inference renders exactly what training rendered.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable

from sftune.templates import jinja_segments, stops, switches, twins
from sftune.templates.definitions import ALIASES, BUILTINS, TOKENIZER
from sftune.templates.errors import TemplateError
from sftune.templates.jinja_export import to_jinja
from sftune.templates.messages import normalize_messages, to_hf_messages
from sftune.templates.render import Segment, fill, render


@dataclass(frozen=True)
class Template:
    """A chat template bound to BOS/EOS texts: a built-in or user dict (`spec`) or a jinja source."""

    name: str
    spec: dict[str, Any] = field(default_factory=dict)  # empty for jinja templates
    jinja: str | None = None
    bos: str = ""
    eos: str = ""
    special_tokens: dict[str, str] = field(default_factory=dict)  # extra names a jinja template may use
    stop_texts: tuple[str, ...] = ()  # the model's stop tokens (generation_config eos, EOS) as text
    append_stop: str = ""  # written after the last reply when the template writes no stop there (stops.audit)
    append_stop_after_call: str = ""  # instead, after a last reply of tool calls (GLM's <|observation|>)
    kwargs: dict[str, Any] = field(default_factory=dict)  # data.template_kwargs (switches.py), in `jinja` already

    def render(self, messages: Iterable[Any], tools: list[dict] | None = None,
               add_generation_prompt: bool = False) -> str:
        """The text of the conversation, exactly as the family's official template renders it."""
        return "".join(text for text, _, _ in self.segments(messages, tools, add_generation_prompt))

    def segments(self, messages: Iterable[Any], tools: list[dict] | None = None,
                 add_generation_prompt: bool = False) -> list[Segment]:
        """The rendered text as (text, message index or None, body) pieces; see `render.py`."""
        msgs = normalize_messages(messages)
        if self.jinja is None:
            segments = render(self, msgs, tools, add_generation_prompt)
        elif (name := twins.twin(self.jinja, msgs, tools)) is None:
            segments = jinja_segments.segments(self, msgs, tools, add_generation_prompt)
        else:
            segments = render(_twin_template(self, name), msgs, tools, add_generation_prompt)
        if self.stop_texts:  # audited (stops.audit): every reply's stop trained
            calls = bool(msgs) and msgs[-1]["role"] == "tool_call"
            append = "" if add_generation_prompt else (calls and self.append_stop_after_call) or self.append_stop
            return stops.train_stops(segments, msgs, self.stop_texts, append)
        return segments

    def render_jinja(self, messages: Iterable[Any], tools: list[dict] | None = None,
                     add_generation_prompt: bool = False) -> str:
        """Render through `to_jinja()` with transformers' jinja (what `apply_chat_template` does)."""
        chat = to_hf_messages(normalize_messages(messages))
        return jinja_segments.render_chats(self.to_jinja(), self, [chat], tools, add_generation_prompt)[0]

    def to_jinja(self) -> str:
        """A jinja `chat_template` that renders what `render` renders (OpenAI-shaped messages)."""
        if self.jinja is not None:
            return self.jinja
        if self.spec.get("official"):  # a family the tests prove byte-equal to its official text
            return switches.bake(official_text(self.spec["official"]),
                                 {**self.spec.get("official_switches", {}), **self.kwargs})
        # A BOS written only for tokenizers that add one is resolved now, for the tokenizer bound.
        return switches.bake(to_jinja(self.spec, bos=self.bos if self.spec.get("bos_only_if_added") else None),
                             self.kwargs)

    @property
    def effective_spec(self) -> dict[str, Any]:
        """The template dict this template renders as: its own, or its twin's for an official jinja text
        (empty for any other jinja; a twin's switched by data.template_kwargs renders through jinja, and still
        tells its stops and reasoning style)."""
        if self.jinja is None:
            return self.spec
        return BUILTINS.get(twins.builtin_of(switches.unbaked(self.jinja)) or "", {})

    @property
    def stop(self) -> str:
        """The end-of-turn text that ends a reply (generation stops there)."""
        return fill(self.effective_spec.get("end", ""), self.bos, self.eos).strip() or self.eos

    @property
    def reasoning(self) -> str | None:
        """The reasoning style ("qwen3": think blocks dropped before the last user query; "deepseek_r1",
        "deepseek_v3.1": dropped from every reply but the last message), or None."""
        return self.effective_spec.get("reasoning")

    @property
    def drops_reasoning(self) -> bool:
        """Whether the template leaves out the reasoning of a conversation's last reply (DeepSeek-V3 / V3.1's
        official templates write only what follows </think>): then no reasoning in the data is ever trained.
        Found by rendering a reply with a think block and looking for its reasoning."""
        key = (self.jinja, json.dumps(self.spec, sort_keys=True, default=str), self.bos, self.eos)
        if key not in _DROPS:
            probe = [{"role": "user", "content": "Q"},
                     {"role": "assistant", "content": f"<think>\n{_MARK}\n</think>\n\nA"}]
            try:
                _DROPS[key] = _MARK not in replace(self, stop_texts=()).render(probe)
            except TemplateError:  # a template that renders no such chat drops nothing it trains
                _DROPS[key] = False
        return _DROPS[key]

    def stop_token_ids(self, tokenizer: Any) -> list[int]:
        """The ids generation stops at: the end-of-turn token (when it is one token), the layout's other
        stops (GLM's next headers, gpt-oss's <|call|>) and EOS."""
        stops = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
        for text in [self.stop, *self.effective_spec.get("stops", [])]:
            ids = tokenizer(text, add_special_tokens=False)["input_ids"] if text else []
            stops |= set(ids[:1] if len(ids) == 1 else [])
        return sorted(stops)


def official_text(filename: str) -> str:
    """The verbatim official chat_template shipped in templates/official/ (see its README)."""
    return (Path(__file__).parent / "official" / filename).read_text(encoding="utf-8")


def names() -> list[str]:
    """Names `get` accepts: the built-ins and `tokenizer`."""
    return [*BUILTINS, TOKENIZER]


def get(name: str | dict[str, Any] | None = TOKENIZER, tokenizer: Any = None,
        kwargs: dict[str, Any] | None = None) -> Template:
    """A template by name, or from a user dict (template keys, or {"jinja": source}); no name (None, as an
    unset data.template or --template is) means the tokenizer's default (default_for).

    With a tokenizer, BOS/EOS are the tokenizer's; `tokenizer` (the default) is the tokenizer's own
    jinja `chat_template` and needs one. `kwargs` (data.template_kwargs) are the template's switches: written
    into a jinja template's text, applied to a built-in that renders them, refused otherwise (switches.py).
    """
    kwargs = dict(kwargs or {})
    if not name:
        return default_for(tokenizer, kwargs)
    if isinstance(name, dict):
        spec = dict(name)
        tname = str(spec.pop("name", "custom"))
        if "jinja" in spec:
            return _jinja(tname, spec["jinja"], kwargs, tokenizer)
        if kwargs:
            raise TemplateError(f"data.template_kwargs: template {tname!r} is a dict of formats, which reads no "
                                "switches; leave data.template_kwargs out, or use a jinja template")
        missing = [key for key in ("user", "assistant") if key not in spec]
        if missing:
            raise TemplateError(f"template {tname!r}: missing {', '.join(missing)}; a template needs at least "
                                "'user' and 'assistant' formats with {content}, or 'jinja'")
        spec.setdefault("system", "{content}")
        return _bind(Template(tname, spec=_checked(tname, spec)), tokenizer)
    key = ALIASES.get(name, name)
    if key == TOKENIZER:
        source = getattr(tokenizer, "chat_template", None) if tokenizer is not None else None
        if not source:
            raise TemplateError(
                "template 'tokenizer' needs a tokenizer with a chat_template; this model has none. "
                f"Pick a built-in with --template (one of {', '.join(BUILTINS)})"
            )
        if isinstance(source, dict):
            source = source.get("default") or next(iter(source.values()))
        return _jinja(TOKENIZER, source, kwargs, tokenizer)
    if key not in BUILTINS:
        raise TemplateError(f"unknown template {name!r}; known: {', '.join(names())}")
    spec = switches.builtin(key, BUILTINS[key], kwargs)
    return _bind(Template(key, spec=_checked(key, spec), kwargs=kwargs), tokenizer)


def default_for(tokenizer: Any, kwargs: dict[str, Any] | None = None) -> Template:
    """The model's own template when it has one, else ChatML."""
    return get(TOKENIZER if getattr(tokenizer, "chat_template", None) else "chatml", tokenizer, kwargs)


def _jinja(name: str, source: str, kwargs: dict[str, Any], tokenizer: Any) -> Template:
    """A jinja template with its switches written into its text (a run's saved one has them already)."""
    switches.check_jinja(name, source, kwargs)
    return _bind(Template(name, jinja=switches.bake(source, kwargs), kwargs=kwargs), tokenizer)


def save_to_tokenizer(template: Template, tokenizer: Any) -> None:
    """Make inference use exactly the training template: set `tokenizer.chat_template` to its jinja."""
    tokenizer.chat_template = template.to_jinja()


def _checked(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    """The spec with its generation prompt filled in, once its assistant format is found usable."""
    assistant, prompt = spec["assistant"], spec.get("generation_prompt")
    if prompt is None:
        prompt = assistant.split("{content}")[0]
        spec = {**spec, "generation_prompt": prompt}
    if "{content}" not in assistant or not assistant.startswith(prompt):
        raise TemplateError(f"template {name!r}: 'assistant' must contain {{content}} and start with "
                            f"'generation_prompt' ({prompt!r}), got {assistant!r}")
    tail = assistant.split("{content}", 1)[1]
    if not tail.startswith(spec.get("end", "")):
        raise TemplateError(f"template {name!r}: 'end' ({spec.get('end')!r}) must follow {{content}} in "
                            f"'assistant' ({assistant!r})")
    return spec


def _bind(template: Template, tokenizer: Any) -> Template:
    """The template with the tokenizer's BOS / EOS and special-token texts (the family's without one)."""
    if tokenizer is None:
        return replace(template, bos=template.spec.get("bos", ""), eos=template.spec.get("eos", ""))
    special = {}
    for attr in ("unk_token", "pad_token", "sep_token", "cls_token", "mask_token"):
        value = getattr(tokenizer, attr, None)
        if isinstance(value, str):
            special[attr] = value
    bos = tokenizer.bos_token or ""
    if bos and template.spec.get("bos_only_if_added"):
        bos_id = tokenizer.bos_token_id
        with_special = tokenizer("a")["input_ids"]
        bos = bos if with_special and with_special[0] == bos_id else ""
    return replace(template, bos=bos, eos=tokenizer.eos_token or "", special_tokens=special)


_MARK = "SFTUNEreasoning7"
_DROPS: dict[tuple, bool] = {}


def dropped_reasoning(template: Template, conversations: Iterable[Any]) -> str | None:
    """What to say once when `template` drops reasoning that the data holds (None when it keeps it, or the data
    has none): how many replies lose it, and the fix."""
    if not template.drops_reasoning:
        return None
    from sftune.data.reasoning import think_parts

    replies = held = 0
    for conversation in conversations:
        for m in getattr(conversation, "messages", conversation):
            role, content = (m.role, m.content) if hasattr(m, "role") else (m["role"], m.get("content"))
            if role == "assistant" and isinstance(content, str):
                replies += 1
                reasoning = think_parts(content)[0]
                held += bool(reasoning and reasoning.strip())
    if not held:
        return None
    if _deepseek_v3(template):
        fix = ("pick data.template: deepseek_v3.1 (DeepSeek-V3 / V3.1's layout with thinking on: the same prompts, the "
               "last reply's reasoning written as the model writes it; deepseek_r1 is R1-Distill's)")
    else:
        fix = ("pick a built-in that writes the last reply's reasoning as the model does (data.template: "
               "deepseek_v3.1 for DeepSeek-V3 / V3.1, deepseek_r1 for DeepSeek-R1-Distill, qwen3, ...; sftune "
               "template list)")
    return (f"template {template.name!r} drops every reply's reasoning (it writes only what follows </think>, the "
            f"last reply's too): {held:,} of {replies:,} replies hold reasoning, and none of it is trained. To train "
            f"it, {fix}, or leave the think blocks out")


def _deepseek_v3(template: Template) -> bool:
    """A DeepSeek-V3 / V3.1 layout (their official jinja, or the non-thinking built-in): <｜Assistant｜> turns."""
    return template.spec.get("layout") == "deepseek_v3.1" or "<｜Assistant｜>" in (template.jinja or "")


_TWIN_OF: dict[tuple[str, str, str], Template] = {}


def _twin_template(t: Template, name: str) -> Template:
    """Built-in `name` bound like jinja template t, one per template (the renderer caches by object)."""
    key = (t.jinja, t.bos, t.eos)
    if key not in _TWIN_OF:
        _TWIN_OF[key] = Template(t.name, spec=_checked(name, BUILTINS[name]), bos=t.bos, eos=t.eos,
                                 special_tokens=t.special_tokens)
    return _TWIN_OF[key]
