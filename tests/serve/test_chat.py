"""sftune chat: each answer is the run's greedy answer to the whole history rendered by its template."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

from rich.console import Console

from sftune import generation, runs

OPTIONS = generation.GenerationOptions(max_new_tokens=10)


def greedy(loaded, messages) -> str:
    """The reference: sftune.generation's batched greedy answer for the rendered history."""
    prompt = generation.render_prompts(loaded.template, [messages])
    return generation.generate(loaded.model, loaded.tokenizer, prompt, OPTIONS,
                               stop_token_ids=loaded.stop_token_ids)[0].text


def test_chat_loop_keeps_history_system_and_reset(lora_run):
    from sftune.serve.chat import chat_loop

    loaded = runs.load(lora_run)
    out = io.StringIO()
    lines = ["Hello there", "And then?", "/reset", "/system Be brief.", "Fresh start", "/exit", "never read"]
    history = chat_loop(loaded, iter(lines), Console(file=out, width=200), OPTIONS)

    first = greedy(loaded, [{"role": "user", "content": "Hello there"}])
    second = greedy(loaded, [{"role": "user", "content": "Hello there"}, {"role": "assistant", "content": first},
                             {"role": "user", "content": "And then?"}])
    third = greedy(loaded, [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Fresh start"}])
    # after /reset only the new turn is there; the system prompt is not part of the history
    assert history == [{"role": "user", "content": "Fresh start"}, {"role": "assistant", "content": third}]
    text = out.getvalue()
    assert first in text and second in text and third in text
    assert "history cleared" in text and "never read" not in text


def test_chat_as_a_process_with_piped_stdin(lora_run):
    """`python -m sftune chat RUN` reading two turns, /reset and /exit from a pipe answers as generation does."""
    loaded = runs.load(lora_run)
    turns = ["What is the capital of France?", "And of Italy?", "/reset", "Hi", "/exit"]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[2] / "src"), "OMP_NUM_THREADS": "1",
           "COLUMNS": "400"}
    done = subprocess.run([sys.executable, "-m", "sftune", "chat", str(lora_run), "--temperature", "0",
                           "--max-tokens", "10"], input="\n".join(turns) + "\n", capture_output=True, text=True,
                          env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    a1 = greedy(loaded, [{"role": "user", "content": turns[0]}])
    a2 = greedy(loaded, [{"role": "user", "content": turns[0]}, {"role": "assistant", "content": a1},
                         {"role": "user", "content": turns[1]}])
    a3 = greedy(loaded, [{"role": "user", "content": "Hi"}])
    # each answer printed in turn: the first, the second, the notice of /reset, the answer after it
    at = 0
    for expected in (a1, a2, "(history cleared)", a3):
        found = done.stdout.find(expected + "\n", at)
        assert found >= 0, (expected, done.stdout[at:])
        at = found + len(expected)
    assert all(a.strip() for a in (a1, a2, a3))
