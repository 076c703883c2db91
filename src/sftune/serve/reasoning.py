"""Reasoning split back out of an answer, in the layout its template family trained: what `chat` shows
apart and what `serve` returns as the message's `reasoning_content` (as vLLM and OpenAI-compatible
servers do).

    think    Qwen3 / 3.5 / 3.6 / 3.8, GLM-4.5, Nemotron 3, DeepSeek-R1, and a model's own jinja template that
             writes `</think>` (DeepSeek-V3 / V3.1): the reasoning is what precedes `</think>` (after a
             `<think>` the model writes, or the one the generation prompt opened), the answer what follows it;
             Magistral the same with its own markers `[THINK]` / `[/THINK]` (the spec's think_open /
             think_close), and Gemma 4 with its thought channel `<|channel>thought` / `<channel|>`: special
             tokens, read from the answer decoded with them
    harmony  gpt-oss: the analysis channel is the reasoning, the final channel (and plain commentary)
             the answer, a commentary message to a function a call; read from the answer decoded with
             its special tokens

    splitter = Splitter.of(template); pieces = splitter.feed("Because") + ... + splitter.close()
    reasoning, answer = split(template, text)

The splitter takes text as it streams and gives ("reasoning" | "content" | "call", text) pieces; a
marker cut between two pieces is held back until it is whole. Each part is trimmed, as the templates
trim what they write; the answer of a template without reasoning passes as it is.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from sftune.templates.jinja_segments import generation_prompt

REASONING, CONTENT, CALL = "reasoning", "content", "call"
THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
# Harmony's markup tokens: a header runs from <|start|> (or the answer's start, right after the
# generation prompt's <|start|>assistant) to <|message|>; a message ends at <|end|>, <|call|> or <|return|>.
_HARMONY_ENDS = ("<|end|>", "<|call|>", "<|return|>")
_HARMONY_MARKERS = ("<|start|>", "<|message|>", *_HARMONY_ENDS)
_RECIPIENT = re.compile(r"to=functions\.[^\s<]+")


def style(template: Any) -> str | None:
    """How a template's answers hold reasoning: "think", "harmony" or None (no reasoning)."""
    reasoning = template.reasoning
    if reasoning == "harmony":
        return "harmony"
    return "think" if reasoning or _own_think_template(template) else None


def _own_think_template(template: Any) -> bool:
    """A jinja template with no built-in twin that writes think blocks (DeepSeek-V3's, V3.1's)."""
    jinja = getattr(template, "jinja", None)
    return bool(jinja) and not template.effective_spec and THINK_CLOSE in jinja


def markers(template: Any) -> tuple[str, str]:
    """The texts that open and close a reply's reasoning in the template's layout (Magistral: [THINK], [/THINK])."""
    spec = template.effective_spec
    return spec.get("think_open") or THINK_OPEN, spec.get("think_close") or THINK_CLOSE


def special_tokens(template: Any) -> bool:
    """Whether the answer is read decoded with its special tokens: gpt-oss's channels, and a layout that names
    its own think markers (Magistral's [THINK] / [/THINK], Gemma 4's thought channel: control tokens a plain
    decode drops)."""
    kind = style(template)
    return kind == "harmony" or (kind == "think" and markers(template) != (THINK_OPEN, THINK_CLOSE))


def opened_by_prompt(template: Any) -> bool:
    """Whether the generation prompt opens the think block (Qwen3.5, Nemotron 3, DeepSeek-R1's `<think>\\n`),
    so the answer starts inside it. A jinja template without a twin is asked: DeepSeek-V3's prompt opens one,
    V3.1's closes it (`</think>`, its non-thinking default) unless its tokenizer's template thinks."""
    if _own_think_template(template):
        return generation_prompt(template).rstrip().endswith(THINK_OPEN)
    spec = template.effective_spec
    return bool(spec.get("think_prompt")) and spec.get("enable_thinking") is not False


@dataclass
class Splitter:
    """Text pieces in, (kind, text) pieces out; see the module docstring."""

    style: str | None
    opened: bool = False
    kind: str = CONTENT
    think_open: str = THINK_OPEN
    think_close: str = THINK_CLOSE
    ends: tuple[str, ...] = ()  # texts that end the answer (the stop tokens and EOS, decoded with the special tokens)
    _ended: bool = False
    _buffer: str = ""
    _pending: str = ""  # whitespace held back: it ends a part unless more text follows
    _started: bool = False  # the current part has written text (its leading whitespace is trimmed)
    _header: str | None = None  # Harmony: the header being read, None inside a message
    _out: list[tuple[str, str]] = field(default_factory=list)

    @classmethod
    def of(cls, template: Any) -> "Splitter":
        kind = style(template)
        ends = ()
        if kind == "think" and special_tokens(template):
            ends = tuple(dict.fromkeys(t for t in [template.stop, *template.effective_spec.get("stops", []),
                                                   template.eos] if t))
        splitter = cls(kind, opened_by_prompt(template), CONTENT, *markers(template), ends)
        if kind == "think" and splitter.opened:
            splitter.kind = REASONING
        if kind == "harmony":
            splitter._header = ""
        return splitter

    def feed(self, piece: str) -> list[tuple[str, str]]:
        """The pieces `piece` completes (text that may be the start of a marker waits for the next piece)."""
        if self._ended:  # past the stop token: nothing more belongs to the answer
            return []
        self._buffer += piece
        if self.style == "think":
            self._think(final=False)
        elif self.style == "harmony":
            self._harmony(final=False)
        elif self._buffer:  # no reasoning: the text as it is, untrimmed
            self._out.append((CONTENT, self._buffer))
            self._buffer = ""
        return self._take()

    def close(self) -> list[tuple[str, str]]:
        """The last pieces once the answer has ended."""
        if self.style == "think":
            self._think(final=True)
        elif self.style == "harmony":
            self._harmony(final=True)
        self._pending = ""
        return self._take()

    def _think(self, final: bool) -> None:
        cut = min((at for at in (self._buffer.find(end) for end in self.ends) if at >= 0), default=-1)
        if cut >= 0:  # the stop token (decoded with the special tokens): the answer ends before it
            self._buffer, self._ended, final = self._buffer[:cut], True, True
        while True:
            if self.kind == CONTENT and not self._started and not self.opened:
                stripped = self._buffer.lstrip()
                if stripped.startswith(self.think_open):  # the model opens it (Qwen3, GLM, Magistral)
                    self._buffer, self.kind, self.opened = stripped[len(self.think_open):], REASONING, True
                    continue
                if not final and self.think_open.startswith(stripped):
                    return  # maybe the start of the open marker
                self.opened = True  # the answer does not open with a think block: plain text from here on
            if self.kind != REASONING:
                self._write_held(self.ends, final)
                return
            at = self._buffer.find(self.think_close)
            if at >= 0:
                self._write(self._buffer[:at])
                self._buffer = self._buffer[at + len(self.think_close):]
                self._switch(CONTENT)
                continue
            self._write_held((self.think_close, *self.ends), final)
            return

    def _harmony(self, final: bool) -> None:
        while self._buffer:
            if self._header is not None:  # reading a header up to <|message|>
                at = self._buffer.find("<|message|>")
                if at < 0:
                    if final:
                        self._buffer = ""
                    return
                header = (self._header + self._buffer[:at]).replace("<|start|>", "")
                self._buffer, self._header = self._buffer[at + len("<|message|>"):], None
                kind = CALL if _RECIPIENT.search(header) else REASONING if "<|channel|>analysis" in header else CONTENT
                self._switch(kind)
                continue
            ends = [(self._buffer.find(m), m) for m in _HARMONY_ENDS if m in self._buffer]
            if ends:
                at, marker = min(ends)
                self._write(self._buffer[:at])
                self._buffer, self._header = self._buffer[at + len(marker):], ""
                continue
            self._write_held(_HARMONY_MARKERS, final)
            return

    def _write_held(self, markers: tuple[str, ...], final: bool) -> None:
        """Write the buffer but for an end that may be the start of one of `markers` (all of it when final)."""
        keep = 0 if final or not markers else _partial(self._buffer, markers)
        self._write(self._buffer[: len(self._buffer) - keep])
        self._buffer = self._buffer[len(self._buffer) - keep:]

    def _switch(self, kind: str) -> None:
        """A new part begins: the whitespace that ended the last one is dropped."""
        self._pending, self._started, self.kind = "", False, kind

    def _write(self, text: str) -> None:
        if not self._started:
            text = text.lstrip()
        if not text:
            return
        body = text.rstrip()
        if body:
            self._out.append((self.kind, self._pending + body))
            self._started, self._pending = True, ""
        self._pending += text[len(body):]

    def _take(self) -> list[tuple[str, str]]:
        out, self._out = self._out, []
        return out


def _partial(text: str, markers: tuple[str, ...]) -> int:
    """How many characters at the end of `text` may be the start of one of `markers`."""
    for size in range(min(len(text), max(map(len, markers)) - 1), 0, -1):
        if any(m.startswith(text[-size:]) for m in markers):
            return size
    return 0


def split(template: Any, text: str) -> tuple[str | None, str]:
    """(the reasoning, None when the answer has none; the answer) of a whole answer (Harmony's calls are
    left to serve/tools.py)."""
    splitter = Splitter.of(template)
    pieces = splitter.feed(text) + splitter.close()
    reasoning = "".join(t for kind, t in pieces if kind == REASONING)
    return reasoning or None, "".join(t for kind, t in pieces if kind == CONTENT)
