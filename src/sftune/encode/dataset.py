"""Many conversations -> an encoded `datasets.Dataset` and an `EncodeReport`, cached on disk.

Records keep their order. A record whose encoding is unusual (over max_len, two BOS tokens, nothing
left to train) goes through `encode` one by one, to be truncated or skipped with its reason and place.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable

import numpy as np

from sftune.data.schema import Conversation
from sftune.encode import cache
from sftune.encode.labels import IGNORE, encode
from sftune.encode.options import EncodeOptions
from sftune.encode.reasoning import split_records
from sftune.encode.workers import Job, batch_results, worker_count
from sftune.templates import Template

MAX_SKIPPED_SHOWN = 100


@dataclass
class SkippedRecord:
    """A record left out of training: where it came from (file:line, or record index), why, details."""

    where: str
    reason: str
    detail: str


@dataclass
class EncodeReport:
    """What `encode_dataset` did: counts of records and tokens, skips with their reasons (the first
    places of each), where the result came from (cache hit or miss) and how the text was tokenized."""

    total: int = 0
    encoded: int = 0
    truncated: int = 0
    truncated_records: list[str] = field(default_factory=list)  # where, the first MAX_SKIPPED_SHOWN
    skipped: int = 0
    skipped_by_reason: dict[str, int] = field(default_factory=dict)
    skipped_records: list[SkippedRecord] = field(default_factory=list)
    tokens: int = 0
    trained_tokens: int = 0
    fingerprint: str = ""
    cache: str = "miss"  # "hit": read from the cache folder
    tokenizer: str = ""
    reasoning_split: int = 0  # records split into one example per reasoning exchange (encoded counts them all)

    def skip(self, where: str, reason: str, detail: str) -> None:
        self.skipped += 1
        self.skipped_by_reason[reason] = self.skipped_by_reason.get(reason, 0) + 1
        if len(self.skipped_records) < MAX_SKIPPED_SHOWN:
            self.skipped_records.append(SkippedRecord(where, reason, detail))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> EncodeReport:
        skipped = [SkippedRecord(**r) for r in values.get("skipped_records", [])]
        return cls(**{**values, "skipped_records": skipped})


def encode_dataset(conversations: Iterable[Conversation | dict], tokenizer: Any, template: Template,
                   options: EncodeOptions = EncodeOptions(), *, batch_size: int = 1000,
                   cache_dir: str | os.PathLike | None = None, use_cache: bool = True, progress: bool = True,
                   workers: int | None = None) -> tuple[Any, EncodeReport]:
    """Encode many conversations under `options` (policy, reasoning, max_len...: options.py): (datasets.Dataset,
    EncodeReport).

    Columns: input_ids, labels, and loss_weights when any message has a weight; the same rows as
    `encode` gives, one by one. Batches of conversations are rendered, tokenized and labelled on
    `workers` processes (default: one per CPU core, up to 4, for large inputs; see workers.py). The
    result is cached under a fingerprint of the data, template, tokenizer and options, so a re-run
    memory-maps it instead (see cache.py). `options.split_reasoning_turns`: one example per reasoning
    exchange where the template drops earlier reasoning (reasoning.py). A conversation of more than
    `options.max_turns` messages is skipped with the reason too_many_turns.
    """
    records = list(conversations)
    o = options
    fingerprint = cache.fingerprint(records, template, tokenizer, o.policy, o.max_len,
                                    f"{o.reasoning}|{o.train_empty_think}|{o.split_reasoning_turns}|{o.max_turns}")
    folder = cache.folder_for(fingerprint, cache_dir)
    if use_cache and (cached := cache.load(folder)) is not None:
        dataset, saved = cached
        return dataset, EncodeReport.from_dict({**saved, "cache": "hit"})
    if use_cache:  # one process encodes; the others (other ranks, other nodes on a shared disk) wait, then read it
        with cache.writer_lock(folder):
            if (cached := cache.load(folder)) is not None:
                dataset, saved = cached
                return dataset, EncodeReport.from_dict({**saved, "cache": "hit"})
            return _encode(records, tokenizer, template, options, batch_size, True, progress, workers, fingerprint,
                           folder)
    return _encode(records, tokenizer, template, options, batch_size, False, progress, workers, fingerprint, folder)


def _encode(records: list, tokenizer: Any, template: Template, options: EncodeOptions, batch_size: int,
            use_cache: bool, progress: bool, workers: int | None, fingerprint: str, folder: Any
            ) -> tuple[Any, EncodeReport]:
    """The encoding itself (a cache miss), saved into `folder` when `use_cache`."""
    import datasets

    report = EncodeReport(total=len(records), fingerprint=fingerprint)
    max_len, max_turns = options.max_len, options.max_turns
    if max_turns is not None:
        kept = []
        for k, conv in enumerate(records):
            count = len(conv.messages if isinstance(conv, Conversation) else conv["messages"])
            if count > max_turns:
                report.skip(record_place(conv, k), "too_many_turns",
                            f"{count:,} messages, over the limit of {max_turns:,}; "
                            "split the conversation, or raise data.max_turns (--max-turns)")
            else:
                kept.append(conv)
        records = kept

    weighted = any(m.weight is not None if not isinstance(m, dict) else m.get("weight") is not None
                   for conv in records for m in (conv.messages if isinstance(conv, Conversation) else conv["messages"]))
    if options.split_reasoning_turns:
        records, report.reasoning_split = split_records(records, template)
    rows = _Rows(weighted)
    bos_id = getattr(tokenizer, "bos_token_id", None)
    nothing_left = "no token left to train" + (f" within max_len={max_len}" if max_len else "")
    job = Job(records, template, options, weighted, _plain_backend(tokenizer))
    with batch_results(job, batch_size, worker_count(workers, len(records), batch_size)) as results:
        bar = _progress(progress, len(records))
        try:  # the bar's refresh thread ends with the loop, however it ends
            for batch in results:
                for k, err in batch.errors:
                    report.skip(record_place(records[k], k), "render_error", err)
                ks, ids, labels, weights, counts = batch.indices, batch.ids, batch.labels, batch.weights, batch.counts
                bounds = np.concatenate([[0], np.cumsum(counts)])
                padded = np.append(ids, [-1, -1])  # every row has a first and a second token to look at
                two_bos = ((counts > 1) & (padded[bounds[:-1]] == bos_id) & (padded[bounds[:-1] + 1] == bos_id)
                           if bos_id is not None else np.zeros(len(ks), dtype=bool))
                too_long = counts > max_len if max_len is not None else np.zeros(len(ks), dtype=bool)
                trained = np.concatenate([[0], np.cumsum(labels != IGNORE)])[bounds]
                unusual = np.flatnonzero(two_bos | too_long | (trained[1:] == trained[:-1])).tolist()
                row = 0  # rows are kept in order: runs of ordinary rows as slices, the unusual ones one by one
                for special in unusual + [len(ks)]:
                    lo, hi = bounds[row], bounds[special]
                    rows.keep(ids[lo:hi], labels[lo:hi], weights[lo:hi] if weighted else None, counts[row:special])
                    row = special + 1
                    if special == len(ks):
                        break
                    k = ks[special]
                    if two_bos[special]:
                        report.skip(record_place(records[k], k), "two_bos",
                                    f"template {template.name!r} renders two BOS tokens at the start")
                    elif not too_long[special]:
                        report.skip(record_place(records[k], k), "no_trained_token", nothing_left)
                    else:
                        report.truncated += 1
                        if len(report.truncated_records) < MAX_SKIPPED_SHOWN:
                            report.truncated_records.append(record_place(records[k], k))
                        result = encode(records[k], tokenizer, template, policy=options.policy, max_len=max_len,
                                        reasoning=options.reasoning, train_empty_think=options.train_empty_think)
                        if result is None:
                            report.skip(record_place(records[k], k), "no_trained_token", nothing_left)
                        else:
                            rows.keep_one(result)
                report.tokenizer = batch.tokenized_by
                bar(batch.done)
        finally:
            bar(None)

    table = rows.table()
    report.encoded = len(rows.lengths)
    report.tokens = int(sum(rows.lengths))
    report.trained_tokens = int(np.count_nonzero(table.column("labels").combine_chunks().flatten().to_numpy()
                                                 != IGNORE))
    if not report.tokenizer:
        report.tokenizer = "nothing to tokenize"
    if not use_cache:
        return datasets.Dataset(table), report
    saved = {k: v for k, v in report.to_dict().items() if k != "cache"}
    return cache.save(folder, table, saved), report


class _Rows:
    """The rows `encode_dataset` keeps: slices of flat arrays, in record order."""

    def __init__(self, weighted: bool):
        self.weighted = weighted
        self.columns: dict[str, list[np.ndarray]] = {"input_ids": [], "labels": [], "loss_weights": []}
        self.lengths: list[int] = []

    def keep(self, ids: np.ndarray, labels: np.ndarray, weights: np.ndarray | None, counts: np.ndarray) -> None:
        """Rows given as flat arrays and the token count of each."""
        if not len(counts):
            return
        self.columns["input_ids"].append(ids)
        self.columns["labels"].append(labels)
        if self.weighted:
            self.columns["loss_weights"].append(weights)
        self.lengths.extend(counts.tolist())

    def keep_one(self, result: dict[str, list]) -> None:
        """A row `encode` built (input_ids, labels and maybe loss_weights lists)."""
        n = len(result["input_ids"])
        weights = result.get("loss_weights", np.zeros(n)) if self.weighted else None
        self.keep(np.asarray(result["input_ids"], dtype=np.int32), np.asarray(result["labels"], dtype=np.int32),
                  None if weights is None else np.asarray(weights, dtype=np.float32), np.array([n]))

    def table(self) -> Any:
        """The rows as an Arrow table of list columns, built from the flat arrays without a Python loop."""
        import pyarrow as pa

        offsets = pa.array(np.concatenate([[0], np.cumsum(self.lengths, dtype=np.int64)]).astype(np.int32))

        def list_column(parts: list[np.ndarray], dtype: Any) -> pa.Array:
            values = np.concatenate(parts).astype(dtype, copy=False) if parts else np.zeros(0, dtype=dtype)
            return pa.ListArray.from_arrays(offsets, pa.array(values))

        table = {"input_ids": list_column(self.columns["input_ids"], np.int32),
                 "labels": list_column(self.columns["labels"], np.int32)}
        if self.weighted:
            table["loss_weights"] = list_column(self.columns["loss_weights"], np.float32)
        return pa.table(table)


def record_place(conversation: Conversation | dict, k: int) -> str:
    """Where a record came from (file:line), for reports; `record k` when it does not say."""
    meta = conversation.meta if isinstance(conversation, Conversation) else (conversation.get("meta") or {})
    source = meta.get("source") or meta.get("file")
    line = meta.get("line") or meta.get("record")
    if source:
        return f"{source}:{line}" if line is not None else str(source)
    return f"record {k}"


def _plain_backend(tokenizer: Any) -> Any:
    """The `tokenizers` backend, without padding or truncation a previous call may have left on it."""
    backend = tokenizer.backend_tokenizer
    if backend.padding is None and backend.truncation is None:
        return backend
    from tokenizers import Tokenizer

    backend = Tokenizer.from_str(backend.to_str())
    backend.no_padding()
    backend.no_truncation()
    return backend


def _progress(enabled: bool, total: int):
    """A rich progress bar as an update(done) function; update(None) closes it."""
    if not enabled or total < 5000:
        return lambda done: None
    from rich.progress import Progress

    bar = Progress(transient=True)
    task = bar.add_task("encoding", total=total)
    bar.start()

    def update(done: int | None) -> None:
        if done is None:
            bar.stop()
        else:
            bar.update(task, completed=done)

    return update
