"""Forgetting mitigation by replay (data.replay): before training, the base model writes instructions
itself, prompted with its template's user prefix and nothing else (the text its template writes before a
user message's content; Magpie, Xu et al. 2024; the tutorials' "instruction distribution
reconstruction"), then answers them; these pairs are mixed into the training data at data.replay.ratio,
so that training rehearses what the model already did while it learns the task.

Choices: instructions are sampled (temperature 1, no top-p / top-k, seeded by data.replay.seed, at most
INSTRUCTION_TOKENS tokens: instructions are short, and rows that ramble hold a whole batch up); answers
are greedy, the model's own most likely reply. An instruction or answer that did not end with the
template's end of turn within max_new_tokens is dropped (a cut-off answer would teach stopping
mid-sentence), as are empty and repeated instructions; up to MAX_ROUNDS rounds of sampling fill `count`.
A template that always writes a default system prompt (SmolLM2's) keeps it in the prefix: the model never
sees a user turn without it. The pairs are cached in RUN/replay.json with the settings that made them, so
a resumed (or repeated) run reads them back instead of generating again.
"""

from __future__ import annotations

import json
import os
import random
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from sftune.data import Conversation, Message
from sftune.generation import GenerationOptions, generate, render_prompts

CACHE = "replay.json"
MAX_ROUNDS = 4
INSTRUCTION_TOKENS = 64
_MARKER = "\ue000"  # a private-use character: no template writes it


def user_prefix(template: Any) -> str:
    """What the template writes before the content of a first user message (with its prefix / BOS text)."""
    text = template.render([{"role": "user", "content": _MARKER}])
    return text.split(_MARKER, 1)[0]


def needed(ratio: float, task_examples: int) -> int:
    """Replay pairs that make `ratio` of a training set holding `task_examples` task examples."""
    return round(ratio * task_examples / (1 - ratio)) if ratio > 0 else 0


def generate_pairs(model: Any, tokenizer: Any, template: Any, count: int, *, max_new_tokens: int, seed: int,
                   batch_size: int = 16, console: Any = None) -> list[dict[str, str]]:
    """Up to `count` {instruction, answer} pairs written by `model` (peft adapters disabled: the base model)."""
    prefix, stops = user_prefix(template), template.stop_token_ids(tokenizer)
    pairs: list[dict[str, str]] = []
    seen: set[str] = set()
    disabled = model.disable_adapter() if hasattr(model, "disable_adapter") else nullcontext()
    with disabled:
        for round_ in range(MAX_ROUNDS):
            missing = count - len(pairs)
            if missing <= 0:
                break
            sampling = GenerationOptions(max_new_tokens=min(max_new_tokens, INSTRUCTION_TOKENS), temperature=1.0,
                                         seed=seed + round_)
            asked = generate(model, tokenizer, [prefix] * max(2 * missing, 8), sampling, stop_token_ids=stops,
                             batch_size=batch_size, progress=console is not None, console=console,
                             description="replay: instructions")
            fresh = []
            for c in asked:
                text = c.text.strip()
                if c.finish_reason == "stop" and text and text not in seen:
                    seen.add(text)
                    fresh.append(text)
            fresh = fresh[:missing]
            prompts = render_prompts(template, [[{"role": "user", "content": text}] for text in fresh])
            answers = generate(model, tokenizer, prompts, GenerationOptions(max_new_tokens=max_new_tokens),
                               stop_token_ids=stops, batch_size=batch_size, progress=console is not None,
                               console=console, description="replay: answers")
            pairs += [{"instruction": text, "answer": a.text.strip()} for text, a in zip(fresh, answers)
                      if a.finish_reason == "stop" and a.text.strip()]
    return pairs


def load_or_generate(path: Path, settings: dict[str, Any], make: Any, console: Any = None) -> list[dict[str, str]]:
    """The pairs cached at `path` when they were made with these `settings`, else make() them and cache them."""
    if path.is_file():
        cached = json.loads(path.read_text(encoding="utf-8"))
        if cached.get("settings") == settings:
            return cached["pairs"]
        if console is not None:
            console.print(f"[yellow]{path} was made with other settings; generating the replay pairs again[/yellow]")
    pairs = make()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"settings": settings, "pairs": pairs}, ensure_ascii=False, indent=1) + "\n",
                    encoding="utf-8")
    return pairs


def mix_in(conversations: list[Conversation], pairs: list[dict[str, str]], ratio: float, seed: int
           ) -> list[Conversation]:
    """The task conversations followed by needed(ratio) replay conversations, drawn from the shuffled pairs
    (cycled when there are fewer pairs than needed), each marked meta["replay"] = True."""
    want = needed(ratio, len(conversations))
    if not pairs or not want:
        return list(conversations)
    pool = list(pairs)
    random.Random(seed).shuffle(pool)
    replay = [Conversation([Message("user", p["instruction"]), Message("assistant", p["answer"])],
                           meta={"replay": True, "dataset": "replay"}) for p in (pool[i % len(pool)]
                                                                                  for i in range(want))]
    return list(conversations) + replay


def replay_pairs(cfg: Any, model: Any, tokenizer: Any, template: Any, task_examples: int, run_dir: Path,
                 console: Any = None) -> list[dict[str, str]]:
    """data.replay's pairs for a training set of `task_examples`: from RUN/replay.json, or generated now."""
    r = cfg.data.replay
    count = r.count or needed(r.ratio, task_examples)
    settings = {"model": cfg.model.name, "prefix": user_prefix(template), "count": count,
                "max_new_tokens": r.max_new_tokens, "seed": r.seed}

    def make() -> list[dict[str, str]]:
        import torch

        if torch.cuda.is_available() and model.device.type == "cpu":  # the Trainer would move it there anyway
            model.to(f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}")
        pairs = generate_pairs(model, tokenizer, template, count, max_new_tokens=r.max_new_tokens, seed=r.seed,
                               console=console)
        if console is not None:
            short = f" (only {len(pairs)} of {count}: they are repeated to reach the ratio)" if len(pairs) < count else ""
            console.print(f"replay: the base model wrote {len(pairs)} instruction/answer pairs{short}")
        return pairs

    return load_or_generate(run_dir / CACHE, settings, make, console)
