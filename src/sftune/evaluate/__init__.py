"""Evaluation: metrics, generation for evaluation, benchmarks, a code sandbox, and the before/after report.

Files: results.py (what a task produced for one model), metrics.py (BLEU, ROUGE, exact match, token F1,
accuracy, pass@k, perplexity).
"""

from sftune.evaluate.metrics import pass_at_k
from sftune.evaluate.results import Sample, TaskResult

__all__ = ["Sample", "TaskResult", "pass_at_k"]
