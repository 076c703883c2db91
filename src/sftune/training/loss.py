"""The SFT loss: token cross-entropy on trained positions only, without a [tokens x vocabulary] tensor.

Position t predicts labels[t + 1]. The hidden states at trained positions are gathered before the
output layer and turned into logits a chunk at a time, so peak memory is one chunk of fp32 logits.
Dividing by the trained tokens of a whole optimizer step is the trainer's job (see trainer.py).

The logits are the model's own: some families scale them or soft-cap them after the output layer
(`logit_rule`), and a mixture-of-experts model whose config turns on `output_router_logits` adds its
router load-balancing loss (`TrainedStates.aux_loss`), as `model(labels=...).loss` does.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, Iterator, NamedTuple

import torch
from torch.distributed.tensor import DTensor

from sftune.encode import IGNORE
from sftune.packing import text_positions
from sftune.training.objectives import ce


@dataclass(frozen=True)
class LogitRule:
    """What a model does to its output layer's values before its own loss: multiply by `scale`, then
    soft-cap to softcap * tanh(z / softcap) where `softcap` is set."""

    scale: float = 1.0
    softcap: float | None = None

    def apply(self, z: torch.Tensor) -> torch.Tensor:
        """The model's logits from the output layer's values z (for paths that hold all logits at once)."""
        if self.scale != 1.0:
            z = z * self.scale
        if self.softcap:
            z = torch.tanh(z / self.softcap) * self.softcap
        return z


PLAIN = LogitRule()

# model_type -> (config field, True to multiply the logits by it / False to divide), as each family's
# forward in transformers does; the field is read in the text config of a vision-language model.
# MiniCPM3 divides the final hidden states, the same thing for its output layer without a bias.
LOGIT_SCALES: dict[str, tuple[str, bool]] = {
    **dict.fromkeys(("cohere", "cohere2", "cohere2_moe", "cohere_compass", "cohere_compass_text"), ("logit_scale", True)),
    **dict.fromkeys(("granite", "granite_swa", "granitemoe", "granitemoe_swa", "granitemoehybrid", "granitemoeshared",
                     "granite4_vision", "granite_docling", "minicpm3"), ("logits_scaling", False)),
    **dict.fromkeys(("hyperclovax", "hyperclovax_vision_v2"), ("logits_scaling", True)),
    "falcon_h1": ("lm_head_multiplier", True),
}
# model_type -> its config's final soft-cap field where it is not `final_logit_softcapping`
SOFTCAP_FIELDS: dict[str, str] = {"recurrent_gemma": "logits_soft_cap"}


def logit_rule(model: torch.nn.Module) -> LogitRule:
    """How `model` (a transformers causal LM, under any peft / DDP wrapper) post-processes its output
    layer's values into the logits of its own loss: a scale and a final soft-cap, read from its config."""
    config = output_model(model).config
    text = config.get_text_config()
    scale = 1.0
    if config.model_type in LOGIT_SCALES:
        field, multiplies = LOGIT_SCALES[config.model_type]
        value = getattr(text, field, None)
        if value is not None:
            scale = float(value) if multiplies else 1.0 / float(value)
    field = SOFTCAP_FIELDS.get(config.model_type, "final_logit_softcapping")
    softcap = getattr(config, field, None) or getattr(text, field, None)
    return LogitRule(scale, float(softcap) if softcap else None)


def compute_dtype(weight: torch.Tensor) -> torch.dtype:
    """The dtype of the output layer's products: autocast's where it is on for the weight's device (an fp32
    head under bf16 mixed precision, QLoRA's head after peft's fp32 upcast), else the weight's own."""
    device = weight.device.type
    if torch.amp.is_autocast_available(device) and torch.is_autocast_enabled(device):
        return torch.get_autocast_dtype(device)
    return weight.dtype


def writes_fp32(device_type: str, dtype: torch.dtype) -> bool:
    """Whether a matmul of `dtype` operands on `device_type` writes its fp32 accumulator as it is (mm / addmm
    `out_dtype`, on CUDA only in torch 2.13): bf16 / fp16 products, fp32 logits, never rounded to 16 bits."""
    return device_type == "cuda" and dtype in (torch.bfloat16, torch.float16)


def fp32_logits(h: torch.Tensor, weight_t: torch.Tensor, bias: torch.Tensor | None, beta: float,
                fp32_out: bool) -> torch.Tensor:
    """h @ weight_t (+ beta * bias) as fp32: written as fp32 by the matmul itself where `fp32_out`
    (writes_fp32), else computed in the operands' dtype and cast."""
    if fp32_out:
        if bias is None:
            return torch.mm(h, weight_t, out_dtype=torch.float32)
        return torch.addmm(bias, h, weight_t, beta=beta, out_dtype=torch.float32)
    return (h @ weight_t if bias is None else torch.addmm(bias, h, weight_t, beta=beta)).float()


class Head(NamedTuple):
    """The output layer's weight and bias cast once per loss call to the dtype of its products."""

    weight: torch.Tensor
    bias: torch.Tensor | None
    fp32_out: bool  # writes_fp32 for these operands

    @classmethod
    def of(cls, weight: torch.Tensor, bias: torch.Tensor | None, dtype: torch.dtype | None = None) -> "Head":
        dtype = dtype or compute_dtype(weight)
        return cls(weight.to(dtype), None if bias is None else bias.to(dtype), writes_fp32(weight.device.type, dtype))


def _logit_chunks(hidden: torch.Tensor, head: Head, chunk_size: int,
                  rule: LogitRule) -> Iterator[tuple[slice, torch.Tensor, torch.Tensor | None]]:
    """(rows, fp32 logits of those rows, tanh of the soft-cap or None), one chunk of rows at a time.

    The scale is folded into the chunk's states ([rows, H], not [rows, V]) and the bias term; the gradient
    on the output layer's values is then the gradient on the logits times the scale (callers fold it
    into their per-row factor)."""
    softcap = rule.softcap
    weight_t = head.weight.T
    for start in range(0, hidden.shape[0], chunk_size):
        rows = slice(start, start + chunk_size)
        h = hidden[rows].to(head.weight.dtype)
        if rule.scale != 1.0:
            h = h * rule.scale
        z = fp32_logits(h, weight_t, head.bias, rule.scale, head.fp32_out)
        tanh = None
        if softcap:
            tanh = torch.tanh(z / softcap)
            z = tanh * softcap
        yield rows, z, tanh


def chunk_loss_and_grad(token_loss: Callable, z: torch.Tensor, y: torch.Tensor, want_grad: bool
                        ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(per-token losses [n], gradient of their sum on the chunk's logits z [n, V], or None): cross-entropy
    by its hand-written form (objectives/ce.py), every other token loss through autograd on this chunk."""
    if token_loss is ce.token_loss:
        return ce.loss_and_grad(z, y, want_grad)
    if not want_grad:
        return token_loss(z, y), None
    z.requires_grad_()
    with torch.enable_grad():
        losses = token_loss(z, y)
        (g,) = torch.autograd.grad(losses.sum(), z)
    return losses.detach(), g


def _backprop_chunk(g: torch.Tensor, factor: torch.Tensor, tanh: torch.Tensor | None, rows: slice,
                    hidden: torch.Tensor, head: Head, grad_h: torch.Tensor | None, grad_w: torch.Tensor | None,
                    grad_b: torch.Tensor | None) -> None:
    """Carry g, the gradient on one chunk's output values before the soft-cap ([rows, V], written over), times
    `factor` per row (the token weight, the upstream gradient and the logit scale), into the gradients of the
    chunk's hidden states (written at `rows`), and added to those of the weight and bias (fp32 buffers)."""
    g.mul_(factor[:, None])
    if tanh is not None:
        g.mul_(1.0 - tanh * tanh)
    if grad_h is not None:
        grad_h[rows] = g.to(head.weight.dtype) @ head.weight
    if grad_w is not None:  # in place in fp32 (TF32 on CUDA): addmm's out_dtype cannot add into an fp32 buffer
        grad_w.addmm_(g.T, hidden[rows].float())
    if grad_b is not None:
        grad_b += g.sum(0)


class _LinearTokenLoss(torch.autograd.Function):
    """sum_i w_i * loss(h_i @ W.T + b, y_i), computed chunk by chunk, for a token loss of
    sftune.training.objectives (cross-entropy by default).

    Gradients are worked out inside the forward pass, chunk by chunk, while each chunk's logits
    exist; only d(hidden) and d(W) are kept for backward. Peak memory is one chunk of logits.
    """

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, token_weights, chunk_size, rule, want_grad, token_loss):
        need_h = want_grad and hidden.requires_grad
        need_w = want_grad and weight.requires_grad
        need_b = want_grad and bias is not None and bias.requires_grad
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        grad_h = torch.empty_like(hidden) if need_h else None
        grad_w = torch.zeros_like(weight, dtype=torch.float32) if need_w else None
        grad_b = torch.zeros_like(bias, dtype=torch.float32) if need_b else None
        head = Head.of(weight, bias)
        for rows, z, tanh in _logit_chunks(hidden, head, chunk_size, rule):
            w = token_weights[rows]
            losses, g = chunk_loss_and_grad(token_loss, z, targets[rows], need_h or need_w or need_b)  # g may be z
            total += (losses * w).sum()
            if g is not None:
                _backprop_chunk(g, w * rule.scale, tanh, rows, hidden, head, grad_h, grad_w, grad_b)
        ctx.save_for_backward(grad_h, grad_w, grad_b)
        ctx.dtypes = (weight.dtype, None if bias is None else bias.dtype)
        return total

    @staticmethod
    def backward(ctx, grad_out):
        grad_h, grad_w, grad_b = ctx.saved_tensors
        w_dtype, b_dtype = ctx.dtypes
        return (
            None if grad_h is None else grad_h * grad_out.to(grad_h.dtype),
            None if grad_w is None else (grad_w * grad_out).to(w_dtype),
            None if grad_b is None else (grad_b * grad_out).to(b_dtype),
            None, None, None, None, None, None,
        )


class _LinearTokenLosses(torch.autograd.Function):
    """[n] per-token w_i * loss(h_i @ W.T + b, y_i), chunk by chunk (linear_token_loss's reduction="none").

    The upstream gradient of each token is known only in backward. For a frozen output layer (LoRA, QLoRA,
    prompt methods) each row's gradient on its hidden state is worked out in the forward, while the chunk's
    logits exist, and backward scales it: no logits recomputed. A trained output layer needs the upstream
    gradients for its own: backward recomputes each chunk in the forward's dtype (it runs outside autocast),
    with the layer gathered again under ZeRO-3.
    """

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, token_weights, chunk_size, rule, want_grad, token_loss, layer):
        need_h = want_grad and hidden.requires_grad
        trained_head = want_grad and (weight.requires_grad or (bias is not None and bias.requires_grad))
        out = torch.empty(hidden.shape[0], dtype=torch.float32, device=hidden.device)
        row_grads = torch.empty_like(hidden) if need_h and not trained_head else None
        head = Head.of(weight, bias)
        for rows, z, tanh in _logit_chunks(hidden, head, chunk_size, rule):
            w = token_weights[rows]
            losses, g = chunk_loss_and_grad(token_loss, z, targets[rows], row_grads is not None)
            out[rows] = losses * w
            if g is not None:
                _backprop_chunk(g, w * rule.scale, tanh, rows, hidden, head, row_grads, None, None)
        if trained_head:
            ctx.save_for_backward(hidden, targets, token_weights)
            ctx.layer, ctx.dtype, ctx.chunk_size, ctx.rule, ctx.token_loss = layer, head.weight.dtype, chunk_size, \
                rule, token_loss
        else:
            ctx.save_for_backward(row_grads)
        ctx.trained_head = trained_head
        return out

    @staticmethod
    def backward(ctx, grad_out):
        if not ctx.trained_head:
            (row_grads,) = ctx.saved_tensors
            grad_h = None if row_grads is None else row_grads * grad_out[:, None].to(row_grads.dtype)
            return grad_h, None, None, None, None, None, None, None, None, None
        hidden, targets, token_weights = ctx.saved_tensors
        layer, rule = ctx.layer, ctx.rule
        need_h = ctx.needs_input_grad[0]
        with gathered(layer):
            weight, bias = layer.weight, getattr(layer, "bias", None)
            need_w, need_b = ctx.needs_input_grad[1], bias is not None and ctx.needs_input_grad[2]
            grad_h = torch.empty_like(hidden) if need_h else None
            grad_w = torch.zeros_like(weight, dtype=torch.float32) if need_w else None
            grad_b = torch.zeros_like(bias, dtype=torch.float32) if need_b else None
            head = Head.of(weight, bias, ctx.dtype)
            for rows, z, tanh in _logit_chunks(hidden, head, ctx.chunk_size, rule):
                _, g = chunk_loss_and_grad(ctx.token_loss, z, targets[rows], True)
                factor = grad_out[rows].float() * token_weights[rows] * rule.scale
                _backprop_chunk(g, factor, tanh, rows, hidden, head, grad_h, grad_w, grad_b)
            return (grad_h, None if grad_w is None else grad_w.to(weight.dtype),
                    None if grad_b is None else grad_b.to(bias.dtype), None, None, None, None, None, None, None)


def chunk_size_for(vocab_size: int) -> int:
    """Rows per chunk so that one chunk of fp32 logits stays near 128 MB."""
    return max(16, (1 << 25) // max(vocab_size, 1))


def linear_cross_entropy(
    hidden: torch.Tensor,
    head: torch.nn.Module,
    targets: torch.Tensor,
    token_weights: torch.Tensor | None = None,
    *,
    logit_rule: LogitRule = PLAIN,
    chunk_size: int | None = None,
) -> torch.Tensor:
    """Summed (weighted) cross-entropy of the logits `logit_rule` makes of `head(hidden)` against
    `targets`, one chunk at a time.

    hidden: [n, H] states at trained positions only; head: the model's output layer (nn.Linear);
    targets: [n] token ids. Differentiable in `hidden` and in the head's weight and bias.
    """
    return linear_token_loss(hidden, head, targets, token_weights, logit_rule=logit_rule, chunk_size=chunk_size)


def linear_token_loss(
    hidden: torch.Tensor,
    head: torch.nn.Module,
    targets: torch.Tensor,
    token_weights: torch.Tensor | None = None,
    *,
    token_loss: Callable | None = None,
    logit_rule: LogitRule = PLAIN,
    chunk_size: int | None = None,
    reduction: str = "sum",
) -> torch.Tensor:
    """The chunked output layer: the (weighted) `token_loss` of the logits `logit_rule` makes of `head(hidden)`
    against `targets`, one chunk of rows at a time (cross-entropy when None; the others are in
    sftune.training.objectives). reduction="sum" gives their sum (the SFT loss), "none" the [n] per-token
    values (-log p(y) per token for preference log-probabilities). Differentiable in `hidden` and the head's
    weight and bias; a head split by DeepSpeed ZeRO-3 is gathered for the call, never applied to all rows."""
    weight, bias = head.weight, getattr(head, "bias", None)
    if reduction not in ("sum", "none"):
        raise ValueError(f"reduction must be 'sum' or 'none', not {reduction!r}")
    if isinstance(weight, DTensor):
        raise ValueError("the output layer's weight is still split by FSDP2 (a DTensor): take the layer from "
                         "trained_hidden_states, which gathers it for the chunked loss")
    token_loss = token_loss or ce.token_loss
    if token_weights is None:
        token_weights = torch.ones(targets.shape, dtype=torch.float32, device=targets.device)
    with gathered(head):  # ZeRO-3: the whole weight for this call (the "sum" gradients are computed in the forward)
        weight, bias = head.weight, getattr(head, "bias", None)
        chunk_size = chunk_size or chunk_size_for(weight.shape[0])
        if reduction == "none":
            return _LinearTokenLosses.apply(hidden, weight, bias, targets, token_weights.float(), chunk_size,
                                            logit_rule, torch.is_grad_enabled(), token_loss, head)
        return _LinearTokenLoss.apply(hidden, weight, bias, targets, token_weights.float(), chunk_size, logit_rule,
                                      torch.is_grad_enabled(), token_loss)


def gathered(head: torch.nn.Module) -> contextlib.AbstractContextManager:
    """The output layer's whole weight and bias readable inside (DeepSpeed ZeRO-3 splits them over processes
    and only the layer's own forward gathers them), for the chunked loss; nothing to do otherwise. A parameter
    ZeRO-3 holds whole already (persistent below stage3_param_persistence_threshold, or still gathered) is left
    as it is: released at the end, the next forward would find it split."""
    split = [p for p in head.parameters(recurse=False) if getattr(p, "ds_status", None) is not None
             and p.ds_status.name == "NOT_AVAILABLE"]
    if not split:
        return contextlib.nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters(split, modifier_rank=None)


def unsharded_head(model: torch.nn.Module, head: torch.nn.Module) -> torch.nn.Module:
    """`head` with its whole weight readable, for the chunked loss. FSDP2 leaves an output layer split (DTensors)
    after the model's forward where its group reshards after forward (the root given reshard_after_forward=True,
    or a head group of its own that reshards): the FSDP module that owns it is unsharded here, as its own forward
    would, and stays so until FSDP's post-backward reduces the gradient and reshards. accelerate's FSDP2 keeps
    the final norm and head unsharded after forward: nothing to do then, nor without FSDP2."""
    if not isinstance(head.weight, DTensor):
        return head
    from torch.distributed.fsdp import FSDPModule

    name = next(n for n, m in model.named_modules() if m is head)
    owners = {n: m for n, m in model.named_modules() if isinstance(m, FSDPModule)}
    parts = name.split(".") if name else []
    owner = next((owners[".".join(parts[:k])] for k in range(len(parts), -1, -1) if ".".join(parts[:k]) in owners),
                 None)
    if owner is None:
        raise ValueError(f"the output layer {name!r} is split by FSDP2 but no fully_shard module above it owns it")
    owner.unshard()
    return head


@torch.no_grad()
def token_stats(
    hidden: torch.Tensor, head: torch.nn.Module, targets: torch.Tensor, *, logit_rule: LogitRule = PLAIN,
    chunk_size: int | None = None,
) -> tuple[float, int]:
    """(summed cross-entropy, number of argmax hits) over the given positions, chunk by chunk."""
    loss = torch.zeros((), dtype=torch.float64, device=hidden.device)
    correct = torch.zeros((), dtype=torch.long, device=hidden.device)
    with gathered(head):
        weights = Head.of(head.weight, getattr(head, "bias", None))
        for rows, z, _ in _logit_chunks(hidden, weights, chunk_size or chunk_size_for(head.weight.shape[0]), logit_rule):
            y = targets[rows]
            loss += torch.nn.functional.cross_entropy(z, y, reduction="sum")
            correct += (z.argmax(-1) == y).sum()
    return loss.item(), int(correct)


def shifted_targets(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """labels[:, 1:], i.e. what each position t < T-1 predicts, with -100 where nothing is trained.

    In a padding-free pack, the first token of each sequence (position_ids == 0) is never a
    target: the token before it belongs to another sequence.
    """
    targets = batch["labels"][:, 1:]
    position_ids = batch.get("position_ids")
    if position_ids is not None:
        targets = targets.masked_fill(text_positions(position_ids)[:, 1:] == 0, IGNORE)
    return targets


# The batch key of trained_index, added by the collator (with_trained_index) on the CPU.
TRAINED_INDEX = "trained_index"


def trained_index(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """[n] flat positions in the [B, T - 1] grid of shifted_targets that are trained. Computed on the CPU batch
    by the collator, the loss then gathers with an index tensor whose length the host knows: no boolean-mask
    indexing and its device-to-host sync per micro-batch."""
    return (shifted_targets(batch) != IGNORE).flatten().nonzero().squeeze(1)


def with_trained_index(collate: Callable[[list], dict]) -> Callable[[list], dict]:
    """`collate`, its batches carrying their trained_index (under TRAINED_INDEX)."""
    def collate_with_index(features: list) -> dict:
        batch = collate(features)
        batch[TRAINED_INDEX] = trained_index(batch)
        return batch

    return collate_with_index


def count_trained_tokens(batches: list[dict[str, torch.Tensor]]) -> int | torch.Tensor:
    """Trained (predicted) tokens over micro-batches, the loss's denominator for one optimizer step: an int read
    from the collator's trained_index (no host sync), else a tensor on the batches' device."""
    if all(TRAINED_INDEX in b for b in batches):
        return sum(b[TRAINED_INDEX].numel() for b in batches)
    return sum((shifted_targets(b) != IGNORE).sum() for b in batches)


def output_model(model: torch.nn.Module) -> torch.nn.Module:
    """The transformers model under DDP / peft wrappers (it owns the output layer and config)."""
    while hasattr(model, "module"):
        model = model.module
    if hasattr(model, "get_base_model"):
        model = model.get_base_model()
    return model


class TrainedStates(NamedTuple):
    """One forward pass, ready for the loss: what `trained_hidden_states` returns."""

    hidden: torch.Tensor  # [n, H] final hidden states at trained positions
    targets: torch.Tensor  # [n] the token each predicts
    weights: torch.Tensor | None  # [n] loss weights, or None
    head: torch.nn.Module  # the output layer
    logit_rule: LogitRule  # the model's scale and soft-cap of its logits
    aux_loss: torch.Tensor | None  # the model's router loss times its coefficient, where its config turns it on


def router_aux_coef(model: torch.nn.Module) -> float:
    """The coefficient the model's own loss puts on its router load-balancing loss."""
    inner = output_model(model)
    for source in (inner, inner.config, inner.config.get_text_config()):
        for field in ("router_aux_loss_coef", "aux_loss_coef"):  # JetMoe names it aux_loss_coef
            value = getattr(source, field, None)
            if value is not None:
                return float(value)
    raise ValueError(f"{type(inner).__name__} returned a router aux loss but its config has no router_aux_loss_coef")


def trained_hidden_states(model, batch: dict[str, torch.Tensor]) -> TrainedStates:
    """Run the model; return its hidden states at trained positions, their targets and loss weights,
    the output layer, the model's logit rule, and its weighted router loss (None unless the model's
    config sets output_router_logits, which makes the model compute it: transformers' own load-balancing
    loss, over all positions of the batch, as `model(labels=...).loss` adds it).

    The model computes no logits at all (`logits_to_keep` an empty index: the output layer runs on zero
    positions); the loss applies the output layer itself, chunk by chunk, on trained positions only (an output
    layer FSDP2 left split is gathered here: unsharded_head).
    """
    inputs = {k: v for k, v in batch.items() if k not in ("labels", "loss_weights", TRAINED_INDEX)}
    no_position = torch.empty(0, dtype=torch.long, device=batch["labels"].device)
    outputs = model(**inputs, use_cache=False, output_hidden_states=True, logits_to_keep=no_position)
    labels = batch["labels"]
    hidden = outputs.hidden_states[-1]
    # Prompt-learning methods prepend virtual tokens: keep the positions of the real tokens.
    hidden = hidden[:, hidden.shape[1] - labels.shape[1] :]
    targets = shifted_targets(batch)
    index = batch.get(TRAINED_INDEX)
    if index is None:  # a batch from elsewhere (CHORD rollouts, a selected batch): one nonzero, one sync
        index = (targets != IGNORE).flatten().nonzero().squeeze(1)
    width = max(targets.shape[1], 1)  # T - 1: row b's position t is b * (T - 1) + t here, b * T + t in hidden
    weights = batch.get("loss_weights")
    aux = getattr(outputs, "aux_loss", None)
    head = unsharded_head(model, output_model(model).get_output_embeddings())
    return TrainedStates(
        hidden.reshape(-1, hidden.shape[-1]).index_select(0, index + index // width),
        targets.flatten().index_select(0, index),
        None if weights is None else weights[:, 1:].flatten().index_select(0, index),
        head,
        logit_rule(model),
        None if aux is None else router_aux_coef(model) * aux,
    )
