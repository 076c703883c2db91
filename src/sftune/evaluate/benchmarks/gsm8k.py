"""GSM8K: grade-school maths by chain-of-thought generation, scored by exact numeric match.

The prompt is k-shot (8 by default) from the first train.jsonl problems, each written "Question: ..\\nAnswer: .."
with its worked solution ending "#### N" (lm-eval's gsm8k format); an instruct model or a run gets the same
examples as earlier chat turns through its template. The model's answer is the number after its first "####",
else the last number it wrote; it scores 1 when that number equals the reference's.
"""

from __future__ import annotations

import re
import time
from decimal import Decimal, InvalidOperation
from typing import Any

from sftune.evaluate.benchmarks import files
from sftune.evaluate.benchmarks.result import finish
from sftune.evaluate.results import Sample, TaskResult

METRIC = "exact_match"  # the final number of the answer equals the reference's
STOP = ("Question:", "</s>", "<|im_end|>")
NUMBER = re.compile(r"-?[$]?\d[\d,]*(?:\.\d+)?|-?\.\d+")


def normalize_number(text: str) -> Decimal | None:
    """'$1,200.50' -> Decimal('1200.50'); None when the text holds no number."""
    cleaned = text.replace(",", "").replace("$", "").rstrip(".")
    try:
        return Decimal(cleaned)
    except InvalidOperation:
        return None


def extract_answer(text: str) -> Decimal | None:
    """The number after the first '####' in `text`, else the last number in it (None when there is none)."""
    if "####" in text:
        found = NUMBER.search(text.split("####", 1)[1])
        if found:
            return normalize_number(found.group())
    numbers = NUMBER.findall(text)
    return normalize_number(numbers[-1]) if numbers else None


def reference_answer(answer: str) -> Decimal:
    """The reference number of a GSM8K solution: what follows its '####'."""
    value = normalize_number(answer.split("####")[-1].strip())
    if value is None:
        raise ValueError(f"a GSM8K solution with no number after '####': {answer[-80:]!r}")
    return value


def is_chat(loaded: Any, options: dict[str, Any]) -> bool:
    """Chat prompts for runs and instruct models (override with options['chat'])."""
    if options.get("chat") is not None:
        return bool(options["chat"])
    return loaded.run_dir is not None or "instruct" in str(loaded.name).lower()


def prompts(loaded: Any, questions: list[str], shots: list[dict[str, str]], chat: bool) -> list[str]:
    """The k-shot prompt of each question, as plain text or rendered by the model's template."""
    if not chat:
        head = "".join(f"Question: {s['question']}\nAnswer: {s['answer']}\n\n" for s in shots)
        return [f"{head}Question: {q}\nAnswer:" for q in questions]
    from sftune.generation import render_prompts

    turns = []
    for s in shots:
        turns += [{"role": "user", "content": f"Question: {s['question']}\nAnswer:"},
                  {"role": "assistant", "content": s["answer"]}]
    return render_prompts(loaded.template, [turns + [{"role": "user", "content": f"Question: {q}\nAnswer:"}]
                                            for q in questions])


def run(loaded: Any, *, limit: int | None = None, console: Any = None,
        options: dict[str, Any] | None = None) -> TaskResult:
    """Exact-match accuracy on GSM8K's test problems (the first `limit` of them)."""
    from sftune.generation import GenerationOptions, generate

    options = options or {}
    started = time.perf_counter()
    folder = files.data_dir("gsm8k", options)
    test = files.read_jsonl(files.need("gsm8k", folder / "test.jsonl", folder))[:limit]
    k = int(options.get("num_fewshot", 8))
    shots = files.read_jsonl(files.need("gsm8k", folder / "train.jsonl", folder))[:k] if k else []
    for number, row in enumerate(test, 1):
        if not {"question", "answer"} <= set(row):
            raise files.BenchmarkDataError(f"{folder / 'test.jsonl'}:{number}: needs the fields question and answer.")
    chat = is_chat(loaded, options)
    texts = prompts(loaded, [r["question"] for r in test], shots, chat)
    gen = GenerationOptions(max_new_tokens=int(options.get("max_new_tokens", 256)), stop=STOP)
    answers = generate(loaded.model, loaded.tokenizer, texts, gen, stop_token_ids=loaded.stop_token_ids,
                       batch_size=int(options.get("batch_size", 16)), add_special_tokens=not chat,
                       progress=console is not None, console=console, description="gsm8k")
    scores, samples = [], []
    for row, answer in zip(test, answers):
        got, want = extract_answer(answer.text), reference_answer(row["answer"])
        scores.append(float(got is not None and got == want))
        if len(samples) < 3:
            samples.append(Sample(prompt=row["question"], answer=answer.text, reference=row["answer"],
                                  score=scores[-1]))
    tokens = sum(a.completion_tokens for a in answers)
    return finish("gsm8k", METRIC, scores, samples, started, general=True,
                  details={"num_fewshot": len(shots), "chat_template": chat, "generated_tokens": tokens})
