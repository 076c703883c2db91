"""Evaluation: metrics, generation for evaluation, benchmarks, a code sandbox, and the before/after report.

Files: results.py (what a task produced for one model).
"""

from sftune.evaluate.results import Sample, TaskResult

__all__ = ["Sample", "TaskResult"]
