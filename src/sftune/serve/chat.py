"""`sftune chat`: a multi-turn terminal chat with a run, streamed token by token.

    history = chat_loop(loaded, iter(["Hi", "/reset", "Hello again", "/exit"]), console)

The loop reads lines from any iterator (the terminal, piped stdin, a test's list) and writes to a rich
console, so it runs the same in a terminal, in a pipe and in tests. Each turn renders the whole
history with the run's training template and stops at its stop tokens; the reasoning of a family that
reasons is shown apart from the answer (serve/reasoning.py) and kept in the history as a <think> block. With a
vision-language run, `/image PATH` attaches an image to the next message (runs.Loaded.stream answers messages with
or without images).
"""

from __future__ import annotations

import sys
from typing import Any, Iterable, Iterator

from sftune import generation
from sftune.serve import reasoning

COMMANDS = "/system TEXT sets the system prompt, /reset clears the history, /exit (or Ctrl-D) ends"
IMAGE_COMMAND = "/image PATH attaches an image to your next message"


def conversation(system: str | None, history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The messages the model sees: the system prompt (when set) and then the turns so far."""
    return ([{"role": "system", "content": system}] if system else []) + history


def chat_loop(
    loaded: Any,
    lines: Iterable[str],
    console: Any,
    options: generation.GenerationOptions = generation.GenerationOptions(),
    *,
    system: str | None = None,
) -> list[dict[str, Any]]:
    """Answer each line of `lines` with the history so far; return the history at the end.

    Lines starting with a slash are commands (see COMMANDS); empty lines are ignored.
    """
    history: list[dict[str, Any]] = []
    pending: list[str] = []  # images attached to the next message (/image PATH)
    for line in lines:
        text = line.rstrip("\r\n")
        command = text.strip()
        if not command:
            continue
        if command in ("/exit", "/quit"):
            break
        if command == "/image" or command.startswith("/image "):
            _attach(loaded, command[len("/image"):].strip(), pending, console)
            continue
        if command == "/reset":
            history.clear()
            pending.clear()
            console.print("[dim](history cleared)[/dim]")
            continue
        if command == "/system" or command.startswith("/system "):
            system = command[len("/system"):].strip() or None
            console.print(f"[dim](system prompt {'set' if system else 'removed'})[/dim]")
            continue
        if command.startswith("/"):
            console.print(f"[yellow]unknown command {command.split()[0]!r}[/yellow]; {COMMANDS}")
            continue
        if pending:  # OpenAI typed parts: the images first, then the text
            history.append({"role": "user", "content": [{"type": "image_url", "image_url": {"url": p}}
                                                        for p in pending] + [{"type": "text", "text": text}]})
            pending = []
        else:
            history.append({"role": "user", "content": text})
        pieces = loaded.stream(conversation(system, history), options,
                               special_tokens=reasoning.special_tokens(loaded.template))
        history.append({"role": "assistant", "content": _shown(pieces, reasoning.Splitter.of(loaded.template),
                                                               console)})
    return history


def _shown(pieces: Iterator[str], splitter: reasoning.Splitter, console: Any) -> str:
    """Print an answer as it streams, its reasoning apart (dim, under "thinking"); return it as the history
    keeps a reply: the reasoning in a <think> block before the answer (the layout the templates render)."""
    parts: dict[str, list[str]] = {reasoning.REASONING: [], reasoning.CONTENT: [], reasoning.CALL: []}
    shown = None

    def show(split: list[tuple[str, str]]) -> None:
        nonlocal shown
        for kind, text in split:
            if kind != shown:
                console.print(_LABELS[kind] if shown is None else "\n" + _LABELS[kind], end="", highlight=False)
                shown = kind
            parts[kind].append(text)
            console.print(text, end="", markup=False, highlight=False, soft_wrap=True,
                          style="dim" if kind == reasoning.REASONING else None)

    try:
        for piece in pieces:
            show(splitter.feed(piece))
        show(splitter.close())
    except KeyboardInterrupt:  # Ctrl-C stops this answer, not the chat
        pieces.close()
        show(splitter.close())
        console.print("[dim] (stopped)[/dim]", end="")
    console.print()
    thought, answer = "".join(parts[reasoning.REASONING]), "".join(parts[reasoning.CONTENT] + parts[reasoning.CALL])
    return f"<think>{thought}</think>{answer}" if thought else answer


# What precedes each part of an answer when it begins.
_LABELS = {reasoning.REASONING: "[dim italic]thinking:[/dim italic] ", reasoning.CONTENT: "",
           reasoning.CALL: "[dim italic]tool call:[/dim italic] "}


def _attach(loaded: Any, path: str, pending: list[str], console: Any) -> None:
    """Check an /image PATH (a vision-language run, a file that decodes) and keep it for the next message."""
    from pathlib import Path

    from sftune.data import images as image_refs
    from sftune.data.errors import DataError

    if not loaded.modality.reads_images:
        console.print(f"[yellow]{loaded.name} is a text-only run: /image needs a vision-language run[/yellow]")
        return
    if not path:
        console.print(f"[yellow]{IMAGE_COMMAND}, e.g. /image photos/cat.png[/yellow]")
        return
    resolved = str(Path(path).expanduser().resolve())
    try:
        image = image_refs.load(resolved, "/image")
    except DataError as err:
        console.print(f"[yellow]{err}[/yellow]", markup=True, highlight=False)
        return
    pending.append(resolved)
    console.print(f"[dim](image {image.width}x{image.height} attached to your next message)[/dim]")


def terminal_lines(console: Any, prompt: str = "[bold green]you>[/bold green] ") -> Iterator[str]:
    """Lines typed at the terminal (with a prompt), or read from stdin when it is a pipe."""
    if not sys.stdin.isatty():
        yield from sys.stdin
        return
    while True:
        try:
            yield console.input(prompt)
        except EOFError:
            console.print()
            return
