"""`sftune generate`: answers for every conversation of a data file, batched, appended to a JSONL file.

    summary = generate_file(loaded, "eval.jsonl", "answers.jsonl", GenerationOptions(max_new_tokens=128))

The prompt of a conversation is everything up to its last user turn; the reply after that turn, when
the record has one, is kept as `reference`. Each output record carries the conversation's `index`
(its position among the valid records of the input) and its `id` when the input has one. The output
is appended and flushed batch by batch, so an interrupted run loses at most one batch, and a second
run skips the records already written.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable

from sftune import data, generation
from sftune.data.errors import where
from sftune.errors import UserError


class GenerateError(UserError, RuntimeError):
    """The output file cannot be resumed (written for other input, or damaged); the message says how to fix."""


def prompt_of(conversation: data.Conversation) -> tuple[list[dict[str, str]], str | None]:
    """(the messages up to and including the last user turn, the reply after it or None)."""
    messages = [{"role": m.role, "content": m.content} for m in conversation.messages]
    last = max((i for i, m in enumerate(messages) if m["role"] == "user"), default=None)
    if last is None:
        raise data.DataError("missing_field", "messages", "has no user turn to answer",
                             "give each record a user message", source=where(conversation.meta, "a record"))
    reference = messages[last + 1]["content"] if last + 1 < len(messages) else None
    return messages[: last + 1], reference


def read_prompts(path: str | Path, **read_options: Any) -> list[dict[str, Any]]:
    """Each valid conversation of `path` as {index, id, source, messages, tools, reference}.

    Reading stops at the first bad record with a DataError naming the file, line and field.
    """
    items = []
    for index, conversation in enumerate(data.read(str(path), on_error="raise", **read_options)):
        messages, reference = prompt_of(conversation)
        extra = conversation.meta.get("extra") or {}
        record_id = extra.get("id", conversation.meta.get("id"))
        items.append({"index": index, "id": record_id, "source": where(conversation.meta),
                      "messages": messages, "tools": conversation.tools, "reference": reference,
                      "images": list(conversation.images)})
    return items


def done_indices(out: Path, items: list[dict[str, Any]]) -> set[int]:
    """Indices already answered in `out`; a half-written last line (an interrupted run) is cut off.

    Each record found must match the input at its index (same prompt), else the file belongs to other input.
    """
    if not out.exists():
        return set()
    raw = out.read_bytes()
    lines = raw.split(b"\n")
    done: set[int] = set()
    kept = 0  # bytes of complete, valid lines
    for number, line in enumerate(lines, 1):
        if not line.strip():
            kept += len(line) + 1
            continue
        try:
            record = json.loads(line)
            index = record["index"]
        except (ValueError, KeyError, TypeError):
            if number == len(lines) or (number == len(lines) - 1 and not lines[-1]):
                break  # the last line was cut off by an interruption: drop it, answer that record again
            raise GenerateError(f"{out} line {number}: not a record written by `sftune generate`; "
                                "move the file away or pick another -o") from None
        if not isinstance(index, int) or not 0 <= index < len(items) or \
                record.get("messages") != items[index]["messages"]:
            raise GenerateError(f"{out} line {number}: record {index} does not match the input (another prompt "
                                "there, or fewer records); it was written for other input. Pick another -o, or "
                                "delete the file to start over")
        done.add(index)
        kept += len(line) + 1
    if kept < len(raw):
        with open(out, "r+b") as handle:
            handle.truncate(kept)
    return done


def generate_file(
    loaded: Any,
    input_path: str | Path,
    out: str | Path,
    options: generation.GenerationOptions = generation.GenerationOptions(),
    *,
    batch_size: int = 16,
    progress: bool = True,
    console: Any = None,
    read_options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Answer every conversation of `input_path` into `out` (JSONL), skipping those already there.

    Returns counts: total records, skipped (already in `out`), written now, tokens generated.
    """
    out = Path(out)
    items = read_prompts(input_path, outputs={"output": out}, **(read_options or {}))  # never out over the input
    done = done_indices(out, items)
    todo = [item for item in items if item["index"] not in done]
    with_images = next((item for item in todo if item["images"]), None)
    if with_images is not None and not loaded.modality.reads_images:
        raise GenerateError(f"{with_images['source']} has images, but {loaded.name} is a text-only run; answer "
                            "image records with a vision-language run, or drop them from the input")
    out.parent.mkdir(parents=True, exist_ok=True)
    tokens = 0
    with open(out, "a", encoding="utf-8") as handle, \
            generation.TokenProgress(progress, console, "generating", len(todo)) as bar:
        for lo in range(0, len(todo), batch_size):
            batch = todo[lo: lo + batch_size]
            answers = loaded.generate([data.Conversation(  # a vision-language run: each record's images with it
                [data.Message(m["role"], m["content"]) for m in item["messages"]], tools=item["tools"],
                images=item["images"]) for item in batch], options, batch_size=batch_size)
            for item, answer in zip(batch, answers):
                handle.write(json.dumps(_record(item, answer), ensure_ascii=False) + "\n")
            handle.flush()
            tokens += sum(a.completion_tokens for a in answers)
            bar.advance(len(batch), sum(a.completion_tokens for a in answers))
    return {"total": len(items), "skipped": len(done), "written": len(todo), "completion_tokens": tokens,
            "out": str(out)}


def _record(item: dict[str, Any], answer: generation.Completion) -> dict[str, Any]:
    record = {"index": item["index"]}
    if item["id"] is not None:
        record["id"] = item["id"]
    record.update(source=item["source"], messages=item["messages"], answer=answer.text,
                  finish_reason=answer.finish_reason, prompt_tokens=answer.prompt_tokens,
                  completion_tokens=answer.completion_tokens)
    if item.get("images"):
        record["images"] = item["images"]
    if item["reference"] is not None:
        record["reference"] = item["reference"]
    return record


def read_output(out: str | Path) -> Iterable[dict[str, Any]]:
    """The records of a `sftune generate` output file."""
    with open(out, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]
