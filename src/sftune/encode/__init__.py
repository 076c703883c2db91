"""Encoding: conversations -> input_ids + labels (-100 where not trained).

    labels.py      one conversation: render, tokenize the whole text, label by message spans, truncate
    options.py     EncodeOptions: the policy, reasoning and length options, saved with a run for evaluation
    dataset.py     many conversations -> a datasets.Dataset and an EncodeReport
    workers.py     the batch work of dataset.py, on forked worker processes for large inputs
    cache.py       the on-disk cache of encoded datasets, by fingerprint
    tokencache.py  exact batched tokenization through a cache of words
"""

from sftune.encode.dataset import EncodeReport, SkippedRecord, encode_dataset
from sftune.encode.labels import IGNORE, POLICIES, REASONING, encode, explain, trained_flags
from sftune.encode.options import EncodeOptions

__all__ = ["IGNORE", "POLICIES", "REASONING", "encode", "explain", "trained_flags", "encode_dataset", "EncodeReport",
           "EncodeOptions", "SkippedRecord"]
