"""`sftune chat`: a multi-turn terminal chat with a run, streamed token by token.

    history = chat_loop(loaded, iter(["Hi", "/reset", "Hello again", "/exit"]), console)

The loop reads lines from any iterator (the terminal, piped stdin, a test's list) and writes to a rich
console, so it runs the same in a terminal, in a pipe and in tests. Each turn renders the whole
history with the run's training template and stops at its stop tokens.
"""

from __future__ import annotations

import sys
from typing import Any, Iterable, Iterator

from sftune import generation

COMMANDS = "/system TEXT sets the system prompt, /reset clears the history, /exit (or Ctrl-D) ends"


def conversation(system: str | None, history: list[dict[str, str]]) -> list[dict[str, str]]:
    """The messages the model sees: the system prompt (when set) and then the turns so far."""
    return ([{"role": "system", "content": system}] if system else []) + history


def chat_loop(
    loaded: Any,
    lines: Iterable[str],
    console: Any,
    options: generation.GenerationOptions = generation.GenerationOptions(),
    *,
    system: str | None = None,
) -> list[dict[str, str]]:
    """Answer each line of `lines` with the history so far; return the history at the end.

    Lines starting with a slash are commands (see COMMANDS); empty lines are ignored.
    """
    history: list[dict[str, str]] = []
    for line in lines:
        text = line.rstrip("\r\n")
        command = text.strip()
        if not command:
            continue
        if command in ("/exit", "/quit"):
            break
        if command == "/reset":
            history.clear()
            console.print("[dim](history cleared)[/dim]")
            continue
        if command == "/system" or command.startswith("/system "):
            system = command[len("/system"):].strip() or None
            console.print(f"[dim](system prompt {'set' if system else 'removed'})[/dim]")
            continue
        if command.startswith("/"):
            console.print(f"[yellow]unknown command {command.split()[0]!r}[/yellow]; {COMMANDS}")
            continue
        history.append({"role": "user", "content": text})
        prompt = generation.render_prompts(loaded.template, [conversation(system, history)])[0]
        pieces = generation.stream(loaded.model, loaded.tokenizer, prompt, options,
                                   stop_token_ids=loaded.stop_token_ids)
        answer = []
        try:
            for piece in pieces:
                answer.append(piece)
                console.print(piece, end="", markup=False, highlight=False, soft_wrap=True)
        except KeyboardInterrupt:  # Ctrl-C stops this answer, not the chat
            pieces.close()
            console.print("[dim] (stopped)[/dim]", end="")
        console.print()
        history.append({"role": "assistant", "content": "".join(answer)})
    return history


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
