"""Several processes asking for the same encoded dataset at once: exactly one encodes and writes the cache
folder, the others wait for its lock and memory-map the finished folder (a cache hit)."""

from __future__ import annotations

import multiprocessing

import pytest

from sftune import templates
from sftune.encode import encode_dataset


def _encode_after(barrier, conversations, tokenizer, cache_dir, results) -> None:
    barrier.wait()  # all processes ask at the same moment
    dataset, report = encode_dataset(conversations, tokenizer, templates.default_for(tokenizer),
                                     cache_dir=cache_dir, progress=False, workers=1)
    results.put((report.cache, [list(x) for x in dataset["input_ids"]]))


@pytest.mark.skipif("fork" not in multiprocessing.get_all_start_methods(), reason="needs fork")
def test_one_process_writes_the_cache_the_others_read_it(tmp_path, smollm2_tokenizer):
    conversations = [{"messages": [{"role": "user", "content": f"question {k} " * (k % 7 + 1)},
                                   {"role": "assistant", "content": f"answer {k}"}]} for k in range(3000)]
    context = multiprocessing.get_context("fork")
    barrier, results = context.Barrier(3), context.Queue()
    processes = [context.Process(target=_encode_after, args=(barrier, conversations, smollm2_tokenizer,
                                                              tmp_path, results)) for _ in range(3)]
    for p in processes:
        p.start()
    got = [results.get(timeout=120) for _ in processes]
    for p in processes:
        p.join(timeout=30)
    assert sorted(cache for cache, _ in got) == ["hit", "hit", "miss"]
    reference, _ = encode_dataset(conversations, smollm2_tokenizer, templates.default_for(smollm2_tokenizer),
                                  use_cache=False, progress=False, workers=1)
    expected = [list(x) for x in reference["input_ids"]]
    assert all(rows == expected for _, rows in got)
    assert [p.name for p in tmp_path.iterdir() if ".tmp" in p.name] == []  # no half-written folder left
