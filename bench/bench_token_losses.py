"""The chunked output-layer loss alone: forward + backward seconds of each token loss at SmolLM2-135M's head
size (576 x 49152, fp32), and cross-entropy through autograd against its hand-written gradient.

    PYTHONPATH=src .venv/bin/python -m bench.bench_token_losses --tokens 512 --repeats 5

Arms run interleaved (machine noise spreads over all of them), after one warm-up call each; prints the median,
min and max per arm. `ce-autograd` is what cross-entropy would cost as a plain function like the others.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch


def main() -> None:
    from sftune.training import objectives
    from sftune.training.loss import linear_token_loss
    from sftune.training.objectives import ce

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=512, help="trained positions in the call")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.manual_seed(0)
    head = torch.nn.Linear(576, 49152, bias=False)
    hidden = torch.randn(args.tokens, 576, requires_grad=True)
    targets = torch.randint(0, 49152, (args.tokens,))
    arms = {name: objectives.token_loss_for(name) for name in objectives.TOKEN_LOSSES}
    arms["ce-autograd"] = lambda z, y: ce.token_loss(z, y)  # not ce.token_loss itself: no hand-written path
    times: dict[str, list[float]] = {name: [] for name in arms}
    for repeat in range(args.repeats + 1):
        for name, token_loss in arms.items():
            hidden.grad = head.weight.grad = None
            started = time.perf_counter()
            linear_token_loss(hidden, head, targets, token_loss=token_loss).backward()
            if repeat:
                times[name].append(time.perf_counter() - started)
    for name, seconds in times.items():
        print(f"{name:12} {statistics.median(seconds) * 1000:8.1f} ms median  (min {min(seconds) * 1000:.1f}, "
              f"max {max(seconds) * 1000:.1f})")


if __name__ == "__main__":
    main()
