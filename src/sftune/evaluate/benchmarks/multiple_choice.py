"""MMLU, C-Eval and CMMLU: 5-shot multiple choice scored by the log-likelihood of the answer letter.

The prompt is the original MMLU one (as lm-eval writes it): a subject header, the first five dev questions
of the subject with their answers, then the question, its choices "A. ..".."D. .." and "Answer:" (C-Eval and
CMMLU: "答案："). The model's choice is the letter among " A".." D" with the highest log-likelihood.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sftune.evaluate.benchmarks import files
from sftune.evaluate.benchmarks.result import finish
from sftune.evaluate.results import Sample, TaskResult

METRIC = "accuracy"  # the letter with the highest log-likelihood is the right one
LETTERS = ("A", "B", "C", "D")

# How each benchmark writes its prompt: the subject header and the answer cue (lm-eval's wording).
STYLES = {
    "mmlu": {"header": "The following are multiple choice questions (with answers) about {subject}.\n\n",
             "cue": "Answer:"},
    "ceval": {"header": "以下是中国关于{subject}考试的单项选择题，请选出其中的正确答案。\n\n", "cue": "答案："},
    "cmmlu": {"header": "以下是关于{subject}的单项选择题，请直接给出正确答案的选项。\n\n", "cue": "答案："},
}


@dataclass
class Question:
    subject: str
    question: str
    choices: tuple[str, str, str, str]
    answer: int  # index into LETTERS


@dataclass
class Item:
    """One question to score, with the full few-shot context it is asked in."""

    subject: str
    question: Question
    shots: list[Question]
    header: str
    cue: str

    @property
    def block(self) -> str:
        return question_block(self.question, self.cue)

    @property
    def context(self) -> str:
        shots = "".join(f"{question_block(q, self.cue)} {LETTERS[q.answer]}\n\n" for q in self.shots)
        return self.header + shots + self.block


def question_block(q: Question, cue: str) -> str:
    """The question, its four choices and the answer cue, as every shot and the asked question are written."""
    choices = "".join(f"\n{letter}. {text}" for letter, text in zip(LETTERS, q.choices))
    return f"{q.question.strip()}{choices}\n{cue}"


def load_items(benchmark: str, options: dict[str, Any] | None = None, limit: int | None = None) -> list[Item]:
    """The benchmark's questions in subject order, each with its subject's first k dev questions as shots.

    `limit` takes that many questions in all, spread over the subjects in turn (one from each, then the next).
    """
    options = options or {}
    folder = files.data_dir(benchmark, options)
    k = int(options.get("num_fewshot", 5))
    per_subject = READERS[benchmark](folder, options)
    wanted = options.get("subjects")
    if wanted:
        unknown = sorted(set(wanted) - set(per_subject))
        if unknown:
            raise files.BenchmarkDataError(f"{benchmark}: no subject {', '.join(unknown)} in {folder}; it has "
                                           f"{', '.join(sorted(per_subject))}.")
        per_subject = {s: per_subject[s] for s in wanted}
    names = _subject_names(folder)
    style = STYLES[benchmark]
    chosen = _spread({s: len(qs) for s, (qs, _) in per_subject.items()}, limit)
    items = []
    for subject, (questions, dev) in per_subject.items():
        header = style["header"].format(subject=names.get(subject, subject.replace("_", " ")))
        items += [Item(subject, q, dev[:k], header, style["cue"]) for q in questions[: chosen[subject]]]
    return items


def _spread(sizes: dict[str, int], limit: int | None) -> dict[str, int]:
    """How many questions of each subject `limit` takes when it takes one from each subject in turn."""
    if limit is None:
        return dict(sizes)
    taken = {s: 0 for s in sizes}
    left = limit
    while left > 0 and any(taken[s] < sizes[s] for s in sizes):
        for s in sizes:
            if left > 0 and taken[s] < sizes[s]:
                taken[s] += 1
                left -= 1
    return taken


def _subject_names(folder: Path) -> dict[str, str]:
    """C-Eval's subject_mapping.json (subject -> [English, Chinese, category]) gives the Chinese names."""
    path = folder / "subject_mapping.json"
    if not path.is_file():
        return {}
    return {s: v[1] if isinstance(v, list) and len(v) > 1 else str(v) for s, v in json.loads(path.read_text()).items()}


def _question(path: Path, row_number: int, subject: str, cells: list[str]) -> Question:
    if len(cells) < 6 or cells[5].strip() not in LETTERS:
        raise files.column_error(path, row_number, "question,A,B,C,D,answer (answer one of A-D)")
    return Question(subject, cells[0], (cells[1], cells[2], cells[3], cells[4]), LETTERS.index(cells[5].strip()))


def _read(path: Path, subject: str, *, header: bool, skip: int) -> list[Question]:
    """Questions of one CSV; `skip` leading columns (an id or index) come before the question."""
    rows = files.read_csv(path, header=header)
    return [_question(path, n + 1 + header, subject, row[skip: skip + 6]) for n, row in enumerate(rows)]


def _read_mmlu(folder: Path, options: dict[str, Any]) -> dict[str, tuple[list[Question], list[Question]]]:
    root = folder / "data" if (folder / "data").is_dir() else folder
    return _read_with_dev("mmlu", folder, root, options.get("split", "test"), header=False, skip=0)


def _read_ceval(folder: Path, options: dict[str, Any]) -> dict[str, tuple[list[Question], list[Question]]]:
    # C-Eval's test answers are not public: its val split is the one scored.
    return _read_with_dev("ceval", folder, folder, options.get("split", "val"), header=True, skip=1)


def _read_with_dev(name: str, folder: Path, root: Path, split: str, *, header: bool, skip: int
                   ) -> dict[str, tuple[list[Question], list[Question]]]:
    """Per subject (questions of ROOT/SPLIT/<subject>_SPLIT.csv, few-shot examples of ROOT/dev/<subject>_dev.csv)."""
    tests = sorted((root / split).glob(f"*_{split}.csv")) if (root / split).is_dir() else []
    if not tests:
        raise files.missing(name, root / split / f"<subject>_{split}.csv", folder)
    out = {}
    for path in tests:
        subject = path.name[: -len(f"_{split}.csv")]
        dev = files.need(name, root / "dev" / f"{subject}_dev.csv", folder)
        out[subject] = (_read(path, subject, header=header, skip=skip), _read(dev, subject, header=header, skip=skip))
    return out


def _read_cmmlu(folder: Path, options: dict[str, Any]) -> dict[str, tuple[list[Question], list[Question]]]:
    split = options.get("split", "test")
    tests = sorted((folder / split).glob("*.csv")) if (folder / split).is_dir() else []
    if not tests:
        raise files.missing("cmmlu", folder / split / "<subject>.csv", folder)
    out = {}
    for path in tests:
        dev = files.need("cmmlu", folder / "dev" / path.name, folder)
        out[path.stem] = (_read(path, path.stem, header=True, skip=1), _read(dev, path.stem, header=True, skip=1))
    return out


READERS = {"mmlu": _read_mmlu, "ceval": _read_ceval, "cmmlu": _read_cmmlu}


def letter_loglikelihoods(loaded: Any, items: list[Item], *, batch_size: int = 16, progress: bool = False,
                          console: Any = None) -> list[list[float]]:
    """For each item, the log-likelihood of " A".." D" after its context (one batched scoring pass)."""
    from sftune.generation import loglikelihood

    requests = [(item.context, f" {letter}") for item in items for letter in LETTERS]
    scores = loglikelihood(loaded.model, loaded.tokenizer, requests, batch_size=batch_size, progress=progress,
                           console=console)
    return [[scores[4 * i + j][0] for j in range(4)] for i in range(len(items))]


def evaluate(benchmark: str, loaded: Any, *, limit: int | None = None, console: Any = None,
             options: dict[str, Any] | None = None) -> TaskResult:
    """Accuracy of the model on `benchmark`, overall and per subject, as sftune scores it (lm_eval_bridge.run
    is the same through lm-evaluation-harness; `compare.with_harness` chooses)."""
    options = options or {}
    started = time.perf_counter()
    items = load_items(benchmark, options, limit)
    scores = letter_loglikelihoods(loaded, items, batch_size=int(options.get("batch_size", 16)),
                                   progress=console is not None, console=console)
    predictions = [max(range(4), key=s.__getitem__) for s in scores]
    return mc_result(benchmark, items, predictions, started, harness="sftune")


def mc_result(benchmark: str, items: list[Item], predictions: list[int], started: float, *, harness: str
              ) -> TaskResult:
    """The TaskResult of a multiple-choice run: accuracy per item, per subject and overall."""
    correct = [float(p == item.question.answer) for p, item in zip(predictions, items)]
    by_subject: dict[str, list[float]] = {}
    for item, c in zip(items, correct):
        by_subject.setdefault(item.subject, []).append(c)
    samples = [Sample(prompt=item.block, answer=LETTERS[p], reference=LETTERS[item.question.answer], score=c)
               for item, p, c in list(zip(items, predictions, correct))[:3]]
    details = {"subjects": {s: {"accuracy": sum(v) / len(v), "n": len(v)} for s, v in by_subject.items()},
               "predictions": "".join(LETTERS[p] for p in predictions), "num_fewshot": len(items[0].shots) if items
               else 0, "harness": harness}
    return finish(benchmark, METRIC, correct, samples, started, general=True, details=details)


def run_mmlu(loaded: Any, *, limit: int | None = None, console: Any = None,
             options: dict[str, Any] | None = None) -> TaskResult:
    return evaluate("mmlu", loaded, limit=limit, console=console, options=options)


def run_ceval(loaded: Any, *, limit: int | None = None, console: Any = None,
              options: dict[str, Any] | None = None) -> TaskResult:
    return evaluate("ceval", loaded, limit=limit, console=console, options=options)


def run_cmmlu(loaded: Any, *, limit: int | None = None, console: Any = None,
              options: dict[str, Any] | None = None) -> TaskResult:
    return evaluate("cmmlu", loaded, limit=limit, console=console, options=options)
