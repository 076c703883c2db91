"""One of 2 processes (torchrun, gloo): sftune's loss and gradients with the model split by torch's FSDP2
(`fully_shard`, per decoder layer and the root, as accelerate's FSDP2 plugin does on GPUs) against the same
model unsplit on one process over both processes' batches. Writes <out>/fsdp2-<rank>.json."""

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


def main(out: Path) -> None:
    from torch.distributed.fsdp import fully_shard

    from sftune import attention
    from sftune.training.loss import count_trained_tokens, is_sharded, linear_cross_entropy, trained_hidden_states
    from tests.conftest import tiny_model

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    batches = [batch(seed) for seed in range(world)]
    total = count_trained_tokens(batches)

    def loss_of(model, b):
        hidden, targets, weights, head, rule, _ = trained_hidden_states(model, b)
        return linear_cross_entropy(hidden, head, targets, weights, logit_rule=rule), is_sharded(head.weight)

    reference = tiny_model("llama", vocab_size=512).train()
    reference.set_attn_implementation(attention.register())
    ref_loss = sum(loss_of(reference, b)[0] for b in batches) / total
    ref_loss.backward()

    model = tiny_model("llama", vocab_size=512).train()
    model.set_attn_implementation(attention.register())
    for layer in model.model.layers:
        fully_shard(layer)
    fully_shard(model)
    loss_sum, sharded_head = loss_of(model, batches[rank])
    (loss_sum * world / total).backward()  # as SFTTrainer.compute_loss: FSDP averages gradients over processes
    summed = loss_sum.detach().clone()
    dist.all_reduce(summed)
    grads = {name: p.grad.full_tensor() for name, p in model.named_parameters()}
    ref_grads = dict(reference.named_parameters())
    worst = max(float((grads[n] - ref_grads[n].grad).abs().max()) for n in grads)
    scale = max(float(p.grad.abs().max()) for p in ref_grads.values())
    (out / f"fsdp2-{rank}.json").write_text(json.dumps({
        "loss": float(summed / total), "reference_loss": float(ref_loss), "max_grad_difference": worst,
        "max_grad": scale, "parameters": len(grads), "head_sharded_in_loss": sharded_head}))
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
