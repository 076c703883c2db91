"""The work of `encode_dataset`, batch by batch: render, tokenize (through the word cache when the
tokenizer allows), label with numpy; here or on forked worker processes, results in record order.

Each worker is given its job and its share of the batches as arguments when it is forked (fork
shares the records without pickling them) and sends its results back on its own queue.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import queue
import traceback
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np

from sftune import scratch
from sftune.encode.labels import messages_and_tools, render_spans, span_labels
from sftune.encode.options import EncodeOptions
from sftune.encode.tokencache import PieceCache, tokenize_whole, why_not
from sftune.templates import Template, TemplateError

log = logging.getLogger("sftune.encode")

MIN_RECORDS_PER_WORKER = 5000
MAX_CHARS_AT_ONCE = 4_000_000  # long conversations: a few million characters at a time keep numpy arrays small


@dataclass
class Job:
    """What every batch of one `encode_dataset` call needs."""

    records: list
    template: Template
    options: EncodeOptions
    weighted: bool
    backend: Any  # the `tokenizers` backend, without padding or truncation


@dataclass
class BatchResult:
    """Records lo..done-1 encoded: flat ids / labels / weights over the records that rendered
    (`indices`), tokens per record, the render errors of the others, and how the text was tokenized."""

    done: int
    indices: list[int]
    errors: list[tuple[int, str]]
    ids: np.ndarray
    labels: np.ndarray
    weights: np.ndarray | None
    counts: np.ndarray
    tokenized_by: str


class BatchTokenizer:
    """Tokenizes batches of texts -> (ids, starts, ends, counts), and says how it went.

    Byte-level BPE tokenizers go through `PieceCache` (each distinct word tokenized once); the first
    batch is also tokenized whole and compared, and any difference switches back to whole texts for
    good (with a warning). Other tokenizers tokenize whole texts.
    """

    def __init__(self, backend: Any):
        self.backend = backend
        self.why_whole = why_not(backend)
        self.cache = None if self.why_whole else PieceCache(backend)
        self.checked = False
        self.mismatch: str | None = None

    def __call__(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        if self.cache is None or self.mismatch is not None:
            return tokenize_whole(self.backend, texts)
        out = self.cache.encode(texts)
        if not self.checked:
            self.checked = True
            sample = texts[:200]
            reference = tokenize_whole(self.backend, sample)
            n = int(out[3][:len(sample)].sum())
            if not all(np.array_equal(a[:n] if k < 3 else a[:len(sample)], b)
                       for k, (a, b) in enumerate(zip(out, reference))):
                self.mismatch = next((t for t in sample if not np.array_equal(
                    self.cache.encode([t])[0], tokenize_whole(self.backend, [t])[0])), sample[0])
                log.warning("the word cache gave other ids than the tokenizer for %r; tokenizing whole texts "
                            "instead (slower, same result). Please report this.", self.mismatch[:200])
                return tokenize_whole(self.backend, texts)
        return out

    def describe(self) -> str:
        if self.cache is None:
            return f"whole texts ({self.why_whole})"
        if self.mismatch is not None:
            return "whole texts (the word cache disagreed with the tokenizer on the first batch)"
        looked_up = self.cache.hits + self.cache.misses
        return (f"word cache ({self.cache.size:,} distinct pieces, "
                f"{self.cache.hits / max(looked_up, 1):.1%} of {looked_up:,} found)")


def worker_count(requested: int | None, n_records: int, batch_size: int) -> int:
    """`requested`, or one per CPU core (up to 4) for inputs large enough to pay for the processes."""
    if requested is not None:
        return max(1, requested)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(cores, 4, n_records // MIN_RECORDS_PER_WORKER, -(-n_records // batch_size)))


@contextlib.contextmanager
def batch_results(job: Job, batch_size: int, workers: int) -> Iterator[Iterator[BatchResult]]:
    """An iterator of every batch's result in record order, computed here or on `workers` forked processes."""
    n = len(job.records)
    bounds = [(lo, min(lo + batch_size, n)) for lo in range(0, n, batch_size)]
    if workers > 1 and len(bounds) > 1 and "fork" in multiprocessing.get_all_start_methods():
        with _forked(job, bounds, workers) as results:
            yield results
    else:
        tokenizer = BatchTokenizer(job.backend)
        yield (encode_batch(job, tokenizer, lo, hi) for lo, hi in bounds)


def encode_batch(job: Job, tokenizer: BatchTokenizer, lo: int, hi: int) -> BatchResult:
    """Records lo..hi-1 of the job, rendered, tokenized and labelled."""
    items, errors = [], []  # (k, text, spans) of each record that renders; (k, message) of the others
    for k in range(lo, hi):
        try:
            messages, tools = messages_and_tools(job.records[k])
            text, spans = render_spans(job.template, messages, tools, job.options.policy, job.options.reasoning,
                                       job.options.train_empty_think)
        except (TemplateError, ValueError) as err:
            errors.append((k, str(err)))
            continue
        items.append((k, text, spans))
    n_chars = np.fromiter((len(text) for _, text, _ in items), dtype=np.int64, count=len(items))
    parts = []
    cuts = np.searchsorted(np.cumsum(n_chars), np.arange(1, 1 + int(n_chars.sum()) // MAX_CHARS_AT_ONCE)
                           * MAX_CHARS_AT_ONCE)
    for a, b in zip([0, *cuts.tolist()], [*cuts.tolist(), len(items)]):
        if b > a:
            ids, starts, ends, counts = tokenizer([text for _, text, _ in items[a:b]])
            labels, weights = span_labels(ids, starts, ends, counts, n_chars[a:b],
                                          [spans for _, _, spans in items[a:b]], job.weighted)
            parts.append((ids.astype(np.int32), labels.astype(np.int32), weights, counts))
    if not parts:
        parts.append((np.zeros(0, np.int32), np.zeros(0, np.int32), np.zeros(0, np.float32), np.zeros(0, np.int64)))
    ids, labels, weights, counts = (np.concatenate(column) if column[0] is not None else None
                                    for column in zip(*parts))
    return BatchResult(hi, [k for k, _, _ in items], errors, ids, labels, weights, counts, tokenizer.describe())


@contextlib.contextmanager
def _forked(job: Job, bounds: list[tuple[int, int]], workers: int) -> Iterator[Iterator[BatchResult]]:
    """Worker w encodes batches w, w + workers, ...; the results are read back in batch order."""
    context = multiprocessing.get_context("fork")
    queues = [context.Queue() for _ in range(workers)]
    processes = [context.Process(target=_work, args=(job, bounds[w::workers], queues[w], os.getpid()), daemon=True)
                 for w in range(workers)]
    for process in processes:
        process.start()
    try:
        yield (_next_result(processes[b % workers], queues[b % workers]) for b in range(len(bounds)))
    finally:
        for process in processes:
            if process.is_alive():
                process.terminate()
            process.join()
        for q in queues:
            q.close()


def _work(job: Job, bounds: list[tuple[int, int]], results: Any, parent: int) -> None:
    """A worker process: one core each, so the tokenizer's own thread pool stays off (and silent); it ends with
    its parent (a killed run leaves no worker encoding on)."""
    scratch.die_with_parent(parent)
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    tokenizer = BatchTokenizer(job.backend)
    try:
        for lo, hi in bounds:
            results.put(encode_batch(job, tokenizer, lo, hi))
    except Exception:  # noqa: BLE001 - reported to the parent, which raises it
        results.put(traceback.format_exc())
    results.close()
    results.join_thread()


def _next_result(process: Any, results: Any) -> BatchResult:
    while True:
        try:
            result = results.get(timeout=5)
        except queue.Empty:
            if process.is_alive():
                continue
            try:
                result = results.get(timeout=1)  # sent just before it ended
            except queue.Empty:
                raise RuntimeError(f"an encoding worker process ended early (exit code {process.exitcode}); "
                                   "encode with workers=1 to see why") from None
        if isinstance(result, str):
            raise RuntimeError(f"an encoding worker process failed:\n{result}")
        return result
