"""Model FLOPs of one LoRA training run, and the machine's measured fp32 matmul rate.

`6 * params * tokens` is the rule for full fine-tuning; with LoRA the frozen base weights get no
weight gradient, so that rule overcounts by a third. The count used here is the useful work, the
same for every system whatever it wastes (padding, recomputation, logits at untrained positions):

    forward    2 * N_blocks * T  +  2 * N_head * T_trained  +  A
    backward   2 * N_blocks * T  +  2 * N_head * T_trained  +  2 * A   (gradients of activations only)
    LoRA       6 * N_lora * T                                         (forward, activation and weight gradients)

T = real (non-padding) tokens, T_trained = trained positions (the loss needs logits only there),
N_blocks = weights of the linear layers inside the decoder blocks, N_head = the output layer
(vocab x hidden), N_lora = LoRA A and B weights, A = attention scores and weighted values:
4 * layers * heads * head_dim * L * (L + 1) / 2 per sequence of length L (causal).
"""

from __future__ import annotations

import time
from typing import Any


def shape_of(model) -> dict[str, int]:
    """Parameter counts the FLOP formula needs, read from a base (not yet adapted) causal LM."""
    import torch

    config = model.config.get_text_config()
    blocks = 0
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and ".layers." in name:
            blocks += module.weight.numel()
    head = model.get_output_embeddings().weight.numel()
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    return {
        "blocks": blocks,
        "head": head,
        "layers": config.num_hidden_layers,
        "attention_width": config.num_attention_heads * head_dim,
    }


def lora_params(model) -> int:
    return sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)


def training_flops(shape: dict[str, int], lora: int, real: int, trained: int, lengths: list[int],
                   causal: bool = True) -> float:
    """Useful FLOPs of one LoRA forward + backward over sequences of these lengths (see the module doc).

    `causal=False` counts full score matrices, as kernels without causal skipping compute them.
    """
    pairs = (lambda n: n * (n + 1) / 2) if causal else (lambda n: n * n)
    attention = sum(4 * shape["layers"] * shape["attention_width"] * pairs(n) for n in lengths)
    return (
        4 * shape["blocks"] * real
        + 4 * shape["head"] * trained
        + 3 * attention
        + 6 * lora * real
    )


def matmul_rate(seconds: float = 3.0, size: int = 2048, device: str = "cpu", dtype: str = "float32",
                shape: tuple[int, int, int] | None = None) -> dict[str, Any]:
    """Best matmul FLOP/s over repeated products: size x size squares (the machine's practical peak), or
    (m x k) @ (k x n) for `shape` (the rate at a model's own shapes)."""
    import torch

    m, k, n = shape or (size, size, size)
    a = torch.randn(m, k, device=device, dtype=getattr(torch, dtype))
    b = torch.randn(k, n, device=device, dtype=getattr(torch, dtype))
    flop = 2 * m * k * n
    best = 0.0
    for _ in range(3):  # warm up
        a @ b
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        if device != "cpu":
            torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(4):
            a @ b
        if device != "cpu":
            torch.cuda.synchronize()
        best = max(best, 4 * flop / (time.perf_counter() - t))
    return {"flops": best, "shape": [m, k, n], "dtype": dtype, "threads": torch.get_num_threads(), "device": device}
