"""The server's generation speed under 1, 4 and 16 concurrent clients, against plain transformers
`generate` one request at a time: same prompts, same model (SmolLM2-135M-Instruct), greedy, same
max_tokens. Prints the machine, tokens/s of each and the ratio to the one-at-a-time baseline.

    python -m bench.bench_serve [--max-tokens 64] [--out bench/results/DATE-MACHINE-serve.md]
"""

from __future__ import annotations

import argparse
import time
from concurrent.futures import ThreadPoolExecutor

from sftune.serve.background import running

QUESTIONS = [
    "What is the capital of France?", "Name three colours of the sky at sunset.", "How do plants make food?",
    "Write a haiku about the sea.", "What is 12 times 7?", "Explain what a computer is to a child.",
    "Give me a tip for learning a language.", "Why is the ocean salty?", "What do bees make?",
    "Describe a cat in one sentence.", "What is the boiling point of water?", "Suggest a name for a dog.",
    "How many legs does a spider have?", "What is rain?", "Tell me a fun fact about the moon.",
    "What is a healthy breakfast?",
]


def baseline(model, tokenizer, prompts: list[str], max_tokens: int, stops: list[int]) -> tuple[float, int]:
    """Plain transformers generate, one request at a time: (seconds, generated tokens)."""
    import torch

    tokens, started = 0, time.perf_counter()
    for prompt in prompts:
        ids = tokenizer(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_tokens,
                                 do_sample=False, temperature=None, top_p=None, top_k=None, eos_token_id=stops,
                                 pad_token_id=tokenizer.pad_token_id)
        new = out[0, ids.shape[1]:].tolist()
        tokens += next((k for k, t in enumerate(new) if t in stops), len(new))
    return time.perf_counter() - started, tokens


def served(url: str, name: str, clients: int, max_tokens: int) -> tuple[float, int, list[str]]:
    """All questions through the server by `clients` concurrent openai clients: (seconds, tokens, answers)."""
    import openai

    client = openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0, timeout=600)

    def ask(question: str):
        return client.chat.completions.create(model=name, messages=[{"role": "user", "content": question}],
                                              max_tokens=max_tokens, temperature=0)

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        replies = list(pool.map(ask, QUESTIONS))
    seconds = time.perf_counter() - started
    return seconds, sum(r.usage.completion_tokens for r in replies), [r.choices[0].message.content for r in replies]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()

    from bench.machine import machine
    from sftune.generation import render_prompts
    from sftune.serve import adapters
    from sftune.serve.server import create_app

    info = machine()
    print(f"machine: {info['cpu']}, {info['cores']} cores, bf16 units: {info['bf16_units']}, gpu: {info['gpu']}, "
          f"torch {info['torch']}, transformers {info['transformers']}")
    model, tokenizer, names = adapters.load(args.model)
    name = next(iter(names))
    template, stops = names[name].template, list(names[name].stop_token_ids)
    prompts = render_prompts(template, [[{"role": "user", "content": q}] for q in QUESTIONS])
    base_s, base_tokens = baseline(model, tokenizer, prompts, args.max_tokens, stops)
    base_rate = base_tokens / base_s
    rows = [("transformers generate, one at a time", 1, base_tokens, base_s, base_rate, 1.0, "reference")]
    print(f"{rows[0][0]}: {base_tokens} tokens in {base_s:.1f} s = {base_rate:.1f} tokens/s")
    app = create_app(model, tokenizer, names, max_batch_size=16)
    answers_alone = None
    with running(app) as url:
        served(url, name, 1, 4)  # warm-up
        for clients in (1, 4, 16):
            seconds, tokens, answers = served(url, name, clients, args.max_tokens)
            answers_alone = answers_alone or answers
            same = "same" if answers == answers_alone else "DIFFERENT"
            rows.append((f"sftune serve, {clients} concurrent clients", clients, tokens, seconds, tokens / seconds,
                         tokens / seconds / base_rate, same))
            print(f"{rows[-1][0]}: {tokens} tokens in {seconds:.1f} s = {tokens / seconds:.1f} tokens/s, "
                  f"{tokens / seconds / base_rate:.2f}x the baseline; answers {same} as with 1 client")
    table = ["| system | clients | tokens | seconds | tokens/s | ratio | greedy answers vs 1 client |",
             "|---|---|---|---|---|---|---|"]
    table += [f"| {r[0]} | {r[1]} | {r[2]} | {r[3]:.1f} | {r[4]:.1f} | {r[5]:.2f}x | {r[6]} |" for r in rows]
    text = "\n".join(table)
    print(text)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            f.write(f"# sftune serve: tokens/s under concurrent clients\n\n"
                    f"Machine: {info['cpu']}, {info['cores']} cores, AVX512-BF16: {info['bf16_units']}, "
                    f"GPU: {info['gpu']}; torch {info['torch']}, transformers {info['transformers']}.\n"
                    f"Model {args.model}, {len(QUESTIONS)} chat prompts, greedy, max_tokens={args.max_tokens}, "
                    f"server --max-batch-size 16. Command: `python -m bench.bench_serve --max-tokens "
                    f"{args.max_tokens}`.\n\n{text}\n")


if __name__ == "__main__":
    main()
