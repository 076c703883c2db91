"""A task on the user's own data: generate the last assistant turn of each conversation and score it.

    result = run(loaded, "data/eval.jsonl")                   # any file sftune reads
    path = heldout_file("runs/demo", "runs/demo/eval")        # a run's own held-out data, as a file

The last assistant message of each conversation is the reference, the messages before it the prompt
(rendered by the model's template, generated through sftune.generation with its stop tokens). Scores:
exact match, BLEU, ROUGE-1/2/L, token F1 (sftune.evaluate.metrics), JSON match where every reference
is a JSON object (the demo's extraction check), and perplexity on the same conversations.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sftune import data
from sftune.evaluate.results import Sample, TaskResult

MAX_NEW_TOKENS = 256
# What a data task (heldout, data:PATH) reports: exact_match is its score; json_match only where every
# reference is a JSON object; perplexity on the same conversations (lower is better).
METRICS = ("exact_match", "json_match", "bleu", "rouge1", "rouge2", "rougeL", "token_f1", "perplexity")
SAMPLES_KEPT = 20


def split_conversation(conversation: data.Conversation) -> tuple[list[data.Message], str] | None:
    """(prompt messages, reference): the messages before the last assistant turn and that turn's text;
    None when the conversation has no assistant message after some prompt."""
    for k in range(len(conversation.messages) - 1, 0, -1):
        if conversation.messages[k].role == "assistant":
            return conversation.messages[:k], conversation.messages[k].content
    return None


def json_match_items(answers: list[str], references: list[str]) -> list[float] | None:
    """1.0 where the answer parses as JSON equal to the reference's JSON; None unless every reference is a
    JSON object (then the check means something: the demo's extraction task, structured outputs)."""
    try:
        truths = [json.loads(r) for r in references]
    except (json.JSONDecodeError, ValueError):
        return None
    if not truths or not all(isinstance(t, dict) for t in truths):
        return None
    scores = []
    for answer, truth in zip(answers, truths):
        try:
            scores.append(float(json.loads(answer.strip()) == truth))
        except (json.JSONDecodeError, ValueError):
            scores.append(0.0)
    return scores


def read_items(path: str | Path, limit: int | None = None) -> tuple[list[data.Conversation], dict[str, int]]:
    """The conversations of `path` that have a reference (the first `limit`), and what was left out and why."""
    report = data.Report()
    usable, left_out = [], {"rejected": 0, "no assistant turn": 0}
    for conversation in data.read([str(path)], on_error="skip", report=report):
        if split_conversation(conversation) is None:
            left_out["no assistant turn"] += 1
            continue
        usable.append(conversation)
        if limit is not None and len(usable) >= limit:
            break
    left_out["rejected"] = report.invalid
    if not usable:
        raise ValueError(f"{path}: no conversation with an assistant turn to evaluate ({left_out['rejected']} "
                         f"rejected when read, {left_out['no assistant turn']} without an assistant message); check the "
                         f"file with `sftune data check {path}`")
    return usable, left_out


def run(loaded: Any, path: str | Path, *, name: str | None = None, limit: int | None = None, console: Any = None,
        options: dict[str, Any] | None = None) -> TaskResult:
    """Generate and score the last assistant turn of each conversation in `path` (see the module doc).

    options: max_new_tokens, batch_size, policy and max_len (for perplexity; default the run's own).
    """
    from sftune import generation
    from sftune.evaluate import metrics

    options = options or {}
    name = name or f"data:{path}"
    conversations, left_out = read_items(path, limit)
    if console is not None and any(left_out.values()):
        console.print(f"[yellow]{name}: left out {', '.join(f'{v} {k}' for k, v in left_out.items() if v)}[/yellow]")
    splits = [split_conversation(c) for c in conversations]
    prompts = [loaded.template.render(messages, tools=c.tools, add_generation_prompt=True)
               for c, (messages, _) in zip(conversations, splits)]
    references = [reference for _, reference in splits]
    how = generation.GenerationOptions(max_new_tokens=int(options.get("max_new_tokens") or MAX_NEW_TOKENS))
    batch_size = int(options.get("batch_size") or 16)
    completions = generation.generate(
        loaded.model, loaded.tokenizer, prompts, how, stop_token_ids=loaded.stop_token_ids, batch_size=batch_size,
        progress=console is not None, console=console, description=f"{name}: generating")
    answers = [c.text.strip() for c in completions]

    exact = metrics.exact_match_items(answers, references)
    rouge = metrics.rouge_items(answers, references)
    extra: dict[str, dict[str, Any]] = {}
    json_items = json_match_items(answers, references)
    if json_items is not None:
        extra["json_match"] = _metric(json_items)
    extra["bleu"] = {"score": metrics.bleu(answers, references), "item_scores": metrics.bleu_items(answers, references),
                     "higher_is_better": True, "note": "score: corpus BLEU; interval: over sentence BLEU"}
    for key in ("rouge1", "rouge2", "rougeL"):
        extra[key] = _metric([r[key] for r in rouge])
    extra["token_f1"] = _metric(metrics.token_f1_items(answers, references))
    ppl = _perplexity(loaded, conversations, options)
    extra["perplexity"] = {"score": ppl["perplexity"], "item_scores": [], "higher_is_better": False}

    samples = [Sample(prompt=_prompt_text(messages), answer=answer, reference=reference, score=score)
               for (messages, reference), answer, score in zip(splits[:SAMPLES_KEPT], answers, exact)]
    return TaskResult(task=name, metric="exact_match", score=sum(exact) / len(exact), item_scores=exact,
                      samples=samples, details={"metrics": extra, "n": len(answers), "left_out": left_out,
                                                "perplexity_tokens": ppl["tokens"],
                                                "generated_tokens": sum(c.completion_tokens for c in completions),
                                                "generation": generation.settings(
                                                    loaded.tokenizer, how, stop_token_ids=loaded.stop_token_ids,
                                                    batch_size=batch_size)})


def _metric(items: list[float]) -> dict[str, Any]:
    return {"score": sum(items) / len(items), "item_scores": items, "higher_is_better": True}


def _prompt_text(messages: list[data.Message]) -> str:
    return "\n".join(f"{m.role}: {m.content}" for m in messages)


def _perplexity(loaded: Any, conversations: list[data.Conversation], options: dict[str, Any]) -> dict[str, Any]:
    """Perplexity on exactly the conversations generated for, encoded as the run's training encoded its data."""
    from sftune.evaluate import metrics

    return metrics.conversation_perplexity(loaded, conversations, policy=options.get("policy"),
                                           max_len=options.get("max_len"),
                                           batch_size=int(options.get("batch_size") or 8))


def heldout_file(run_dir: str | Path, out_dir: str | Path) -> Path:
    """The run's own held-out conversations (data.eval, or the val_ratio split of data.train, exactly as
    training split it) written to OUT/heldout.jsonl, so both models are evaluated on the same file."""
    from sftune import runs
    from sftune.data.entries import read_entries

    cfg = runs.run_config(run_dir)
    d = cfg.data
    options = {"format": d.format, "columns": d.columns, "on_error": d.on_error}
    if d.eval:
        held_out = read_entries(cfg, "eval", options)
    elif d.val_ratio > 0 and d.train:
        _, held_out = data.split(read_entries(cfg, "train", options), val_ratio=d.val_ratio, seed=d.seed)
    else:
        raise ValueError(f"{run_dir}/config.yaml has no held-out data (data.eval is empty and data.val_ratio is 0); "
                         "evaluate a file instead with --tasks data:PATH")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "heldout.jsonl"
    path.write_text("".join(c.to_json() + "\n" for c in held_out), encoding="utf-8")
    return path
