"""One of 2 processes (torchrun, gloo): sftune's loss and gradients with the model split by torch's FSDP2
(`fully_shard`, per decoder layer and the root, as accelerate's FSDP2 plugin does on GPUs) against the same
model unsplit on one process over both processes' batches: the SFT loss plus a weighted sum of the per-token
log-probs DPO uses. Writes <out>/fsdp2-<rank>.json.

The layout (argv[2]): `root`, the root with FSDP's own default (its head stays gathered after forward, as in
accelerate's tail group); `split-root`, the root resharded after forward; `split-tail`, the head (with the norm
and the tied embedding) a group of its own resharded after forward. In the split ones the head's weight is a
DTensor after the model's forward: the loss must gather it and stay chunked."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist


def batch(seed: int) -> dict[str, torch.Tensor]:
    """A packed row of 3 sequences, prompt tokens untrained."""
    g = torch.Generator().manual_seed(seed)
    lengths = [11, 23, 7]
    ids = torch.randint(0, 512, (sum(lengths),), generator=g)
    positions = torch.cat([torch.arange(n) for n in lengths])
    labels = ids.clone()
    labels[positions < 3] = -100
    return {"input_ids": ids[None], "labels": labels[None], "position_ids": positions[None]}


def main(out: Path, layout: str) -> None:
    from torch.distributed.fsdp import fully_shard

    from sftune import attention
    from torch.distributed.tensor import DTensor

    from sftune.preference.logps import token_logps
    from sftune.training.loss import count_trained_tokens, linear_cross_entropy, trained_hidden_states
    from tests.conftest import tiny_model

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    batches = [batch(seed) for seed in range(world)]
    total = count_trained_tokens(batches)

    def loss_of(model, b):
        hidden, targets, weights, head, rule, _ = trained_hidden_states(model, b)
        upstream = torch.randn(len(targets), generator=torch.Generator().manual_seed(len(targets)))
        logps = token_logps(hidden, head, targets, logit_rule=rule, chunk_size=16)
        return linear_cross_entropy(hidden, head, targets, weights, logit_rule=rule, chunk_size=16) + \
            (upstream * logps).sum()

    reference = tiny_model("llama", vocab_size=512).train()
    reference.set_attn_implementation(attention.register())
    ref_loss = sum(loss_of(reference, b) for b in batches) / total
    ref_loss.backward()

    model = tiny_model("llama", vocab_size=512).train()
    model.set_attn_implementation(attention.register())
    for layer in model.model.layers:
        fully_shard(layer)
    if layout == "split-tail":
        fully_shard([model.model.norm, model.model.embed_tokens, model.lm_head], reshard_after_forward=True)
    fully_shard(model, **({"reshard_after_forward": True} if layout == "split-root" else {}))
    split, head_rows = [], []
    model.register_forward_hook(lambda *_: split.append(isinstance(model.lm_head.weight, DTensor)))
    model.lm_head.register_forward_hook(lambda module, args, output: head_rows.append(args[0].shape[-2]))
    loss_sum = loss_of(model, batches[rank])
    (loss_sum * world / total).backward()  # as SFTTrainer.compute_loss: FSDP averages gradients over processes
    summed = loss_sum.detach().clone()
    dist.all_reduce(summed)
    grads = {name: p.grad.full_tensor() for name, p in model.named_parameters()}
    ref_grads = dict(reference.named_parameters())
    worst = max(float((grads[n] - ref_grads[n].grad).abs().max()) for n in grads)
    scale = max(float(p.grad.abs().max()) for p in ref_grads.values())
    (out / f"fsdp2-{rank}.json").write_text(json.dumps({
        "loss": float(summed / total), "reference_loss": float(ref_loss), "max_grad_difference": worst,
        "max_grad": scale, "parameters": len(grads), "head_split_after_forward": split,
        "head_forward_rows": head_rows}))
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2] if len(sys.argv) > 2 else "root")
