"""Generation speed: `sftune generate` (batched, left-padded, KV cache) vs plain transformers one request at a time.

    .venv/bin/python bench/bench_generate.py                 # 64 prompts of examples/data/eval.jsonl + train, 64 tokens
    .venv/bin/python bench/bench_generate.py --prompts 16 --max-new-tokens 32 --batch-size 16   # a quick run

Both sides answer the same prompts (rendered by SmolLM2-135M-Instruct's own template), greedily, with the
same max_new_tokens, on the same model object. The peer is what a user writes without sftune: for each
prompt, `tokenizer.apply_chat_template` + `model.generate` (batch of one, KV cache, stops at EOS).
sftune's side is the `sftune generate` code path (sftune.serve.batch.generate_file, written to a temporary
JSONL). Prints generated tokens/s of each, the ratio, and how many answers are token-identical.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "src"))


def prompts_file(n: int, folder: Path) -> Path:
    """The first n conversations of the example data (eval first, then train) as a JSONL file."""
    lines = []
    for name in ("eval.jsonl", "train.jsonl"):
        lines += (ROOT / "examples" / "data" / name).read_text(encoding="utf-8").splitlines()
    path = folder / "prompts.jsonl"
    path.write_text("\n".join(lines[:n]) + "\n", encoding="utf-8")
    return path


def plain_transformers(model, tokenizer, conversations, max_new_tokens):
    """One request at a time, as a user of transformers would write it; returns (answers ids, seconds)."""
    import torch

    answers, start = [], time.perf_counter()
    for messages in conversations:
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                            return_dict=True)
        with torch.no_grad():
            out = model.generate(**ids, max_new_tokens=max_new_tokens, do_sample=False, temperature=None,
                                 top_p=None, top_k=None, pad_token_id=tokenizer.pad_token_id)
        new = out[0, ids["input_ids"].shape[1]:].tolist()
        answers.append(new[: new.index(tokenizer.eos_token_id)] if tokenizer.eos_token_id in new else new)
    return answers, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: every core)")
    args = parser.parse_args()

    from bench.machine import machine
    from bench.workload import set_threads
    from sftune import generation, runs
    from sftune.serve.batch import generate_file, read_output, read_prompts

    set_threads()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    info = machine()
    loaded = runs.load(args.model)
    options = generation.GenerationOptions(max_new_tokens=args.max_new_tokens)
    with tempfile.TemporaryDirectory() as tmp:
        source = prompts_file(args.prompts, Path(tmp))
        conversations = [item["messages"] for item in read_prompts(source)]
        plain_transformers(loaded.model, loaded.tokenizer, conversations[:1], 4)  # warm-up, both sides
        generate_file(loaded, source, Path(tmp) / "warm.jsonl", generation.GenerationOptions(max_new_tokens=4),
                      batch_size=args.batch_size, progress=False)
        start = time.perf_counter()
        generate_file(loaded, source, Path(tmp) / "out.jsonl", options, batch_size=args.batch_size, progress=False)
        ours_seconds = time.perf_counter() - start
        ours = read_output(Path(tmp) / "out.jsonl")
        peer, peer_seconds = plain_transformers(loaded.model, loaded.tokenizer, conversations, args.max_new_tokens)
    ours_tokens = sum(r["completion_tokens"] for r in ours)
    peer_tokens = sum(map(len, peer))
    same = sum(loaded.tokenizer(r["answer"], add_special_tokens=False)["input_ids"] == p
               or loaded.tokenizer.decode(p, skip_special_tokens=True) == r["answer"] for r, p in zip(ours, peer))
    result = {
        "machine": f"{info['cpu']}, {info['cores']} cores, bf16 units: {info['bf16_units']}, gpu: {info['gpu']}",
        "threads": __import__("torch").get_num_threads(), "load_average": os.getloadavg()[0],
        "model": args.model, "prompts": len(conversations), "max_new_tokens": args.max_new_tokens,
        "batch_size": args.batch_size,
        "sftune_generate": {"seconds": round(ours_seconds, 2), "tokens": ours_tokens,
                            "tokens_per_s": round(ours_tokens / ours_seconds, 1)},
        "transformers_one_at_a_time": {"seconds": round(peer_seconds, 2), "tokens": peer_tokens,
                                       "tokens_per_s": round(peer_tokens / peer_seconds, 1)},
        "speedup": round((ours_tokens / ours_seconds) / (peer_tokens / peer_seconds), 2),
        "identical_answers": f"{same}/{len(conversations)}",
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
