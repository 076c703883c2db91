"""Evaluation: metrics, generation for evaluation, benchmarks, a code sandbox, and the before/after report.

Files: results.py (what a task produced for one model), metrics.py (BLEU, ROUGE, exact match, token F1,
accuracy, pass@k, perplexity), benchmarks/ (the offline benchmarks, TASKS by name), data_task.py (a task on
any data file, and a run's held-out data), compare.py (`sftune eval`: base and fine-tuned on the same tasks),
bootstrap.py (paired confidence intervals), report.py (results.json, report.html, chart.png).
"""

from sftune.evaluate.metrics import pass_at_k
from sftune.evaluate.results import Sample, TaskResult

__all__ = ["Sample", "TaskResult", "pass_at_k"]
