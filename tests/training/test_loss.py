"""The SFT loss against references: the model's own cross-entropy, weighted tokens, pack boundaries."""

from __future__ import annotations

import contextlib

import datasets

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode, _disable_current_modes

from sftune.training import loss as loss_module
from sftune.training.loss import fp32_logits, linear_cross_entropy, token_stats, trained_hidden_states, writes_fp32
from tests.conftest import tiny_model
from tests.training.helpers import VOCAB, padding_free_collate


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gemma"])
def test_loss_and_gradients_equal_transformers_reference(arch):
    """Gathered, chunked loss == the model's own mean cross-entropy (with shifted labels)."""
    extra = {"final_logit_softcapping": 30.0} if arch == "gemma" else {}
    model = tiny_model(arch, vocab_size=VOCAB, **extra).train()
    ids = torch.randint(0, VOCAB, (3, 20), generator=torch.Generator().manual_seed(1))
    labels = ids.clone()
    labels[:, :7] = -100
    labels[1, 12:] = -100
    reference = model(input_ids=ids, labels=labels, use_cache=False).loss
    reference.backward()
    want = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()

    hidden, targets, weights, head, rule, _ = trained_hidden_states(model, {"input_ids": ids, "labels": labels})
    loss = linear_cross_entropy(hidden, head, targets, weights, logit_rule=rule, chunk_size=7) / targets.numel()
    loss.backward()
    assert loss.item() == pytest.approx(reference.item(), abs=1e-5)
    for name, param in model.named_parameters():
        torch.testing.assert_close(param.grad, want[name], atol=1e-5, rtol=1e-4, msg=name)


def test_loss_weights_scale_each_token():
    torch.manual_seed(0)
    head = torch.nn.Linear(8, 50, bias=True)
    hidden = torch.randn(9, 8, requires_grad=True)
    targets = torch.randint(0, 50, (9,))
    weights = torch.rand(9)
    got = linear_cross_entropy(hidden, head, targets, weights, chunk_size=4)
    got.backward()
    grads = (hidden.grad.clone(), head.weight.grad.clone(), head.bias.grad.clone())
    hidden.grad = head.weight.grad = head.bias.grad = None
    want = (torch.nn.functional.cross_entropy(head(hidden), targets, reduction="none") * weights).sum()
    want.backward()
    assert got.item() == pytest.approx(want.item(), rel=1e-6)
    for g, w in zip(grads, (hidden.grad, head.weight.grad, head.bias.grad)):
        torch.testing.assert_close(g, w, atol=1e-6, rtol=1e-5)


def test_token_stats_match_full_logits():
    torch.manual_seed(0)
    head = torch.nn.Linear(8, 40, bias=False)
    hidden, targets = torch.randn(11, 8), torch.randint(0, 40, (11,))
    loss, correct = token_stats(hidden, head, targets, chunk_size=3)
    logits = head(hidden)
    assert loss == pytest.approx(torch.nn.functional.cross_entropy(logits, targets, reduction="sum").item(), rel=1e-6)
    assert correct == int((logits.argmax(-1) == targets).sum())


def test_pack_boundary_is_never_a_target():
    """The last token of one packed sequence must not be trained to predict the next sequence's first."""
    rows = [{"input_ids": [5, 6, 7], "labels": [5, 6, 7]}, {"input_ids": [8, 9], "labels": [8, 9]}]
    model = tiny_model("llama", vocab_size=VOCAB)
    targets = trained_hidden_states(model, padding_free_collate(rows)).targets
    assert targets.tolist() == [6, 7, 9]


class _Ops(TorchDispatchMode):
    """Records every aten op run inside, with its first argument's shape."""

    def __init__(self):
        super().__init__()
        self.calls: list[tuple[str, tuple]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        first = args[0] if args and isinstance(args[0], torch.Tensor) else None
        self.calls.append((str(func), tuple(first.shape) if first is not None else ()))
        return func(*args, **(kwargs or {}))


def test_the_head_is_cast_once_per_call_under_autocast():
    """QLoRA's head after peft's fp32 upcast (frozen, fp32) under bf16 autocast: the loss casts its weight to
    bf16 once per call, not once per chunk (autocast recasts a frozen weight at every matmul)."""
    torch.manual_seed(0)
    head = torch.nn.Linear(16, 40, bias=False).requires_grad_(False)
    hidden = torch.randn(12, 16, requires_grad=True)
    targets = torch.randint(0, 40, (12,))
    with torch.autocast("cpu", dtype=torch.bfloat16), _Ops() as ops:
        loss = linear_cross_entropy(hidden, head, targets, chunk_size=3)
    casts = [shape for op, shape in ops.calls if op.startswith("aten._to_copy") and shape == (40, 16)]
    assert len(casts) == 1
    reference = torch.nn.functional.cross_entropy(
        (hidden.bfloat16() @ head.weight.bfloat16().T).float(), targets, reduction="sum")
    assert loss.item() == pytest.approx(reference.item(), rel=1e-3)


def test_head_products_are_written_in_fp32_where_the_device_can():
    """On CUDA the bf16 / fp16 products of the head go straight into fp32 logits (mm / addmm out_dtype: no
    16-bit logits rounded and copied); elsewhere, or for fp32 operands, a plain matmul. Run on the meta device
    with the CUDA fact passed in."""
    assert writes_fp32("cuda", torch.bfloat16) and writes_fp32("cuda", torch.float16)
    assert not writes_fp32("cuda", torch.float32) and not writes_fp32("cpu", torch.bfloat16)
    h = torch.empty(5, 16, dtype=torch.bfloat16, device="meta")
    w = torch.empty(40, 16, dtype=torch.bfloat16, device="meta")
    bias = torch.empty(40, dtype=torch.bfloat16, device="meta")
    for b, op in ((None, "aten.mm.dtype"), (bias, "aten.addmm.dtype")):
        with _Ops() as ops:
            z = fp32_logits(h, w.T, b, 2.0, fp32_out=True)
        assert z.dtype == torch.float32 and z.shape == (5, 40)
        names = [name for name, _ in ops.calls]
        assert op in names and not any(name.startswith("aten._to_copy") for name in names)


def test_zero3_head_is_gathered_and_chunked(monkeypatch):
    """An output layer split by DeepSpeed ZeRO-3 is gathered for the call and the loss stays chunked: never
    the layer's forward over all positions (all fp32 logits at once: 12-15 GB at 8k tokens x 152k vocabulary).
    The ZeRO-3 weight is a stand-in (a `ds_id` and a recording gather)."""
    torch.manual_seed(0)
    head = torch.nn.Linear(16, 40, bias=False)
    head.weight.ds_id = 7
    gathers = []
    monkeypatch.setattr(loss_module, "gathered", lambda layer: gathers.append(layer) or contextlib.nullcontext())
    head.register_forward_hook(lambda *_: pytest.fail("the ZeRO-3 head's forward built all logits"))
    hidden = torch.randn(12, 16, requires_grad=True)
    targets = torch.randint(0, 40, (12,))
    with _Ops() as ops:
        loss = linear_cross_entropy(hidden, head, targets, chunk_size=4)
    loss.backward()
    assert gathers == [head]
    assert max(shape[0] for op, shape in ops.calls if len(shape) == 2 and shape[1] == 40) <= 4
    reference = torch.nn.functional.cross_entropy(hidden.detach() @ head.weight.detach().T, targets, reduction="sum")
    assert loss.item() == pytest.approx(reference.item(), rel=1e-5)
    assert head.weight.grad is not None and hidden.grad is not None


class _Syncs(TorchDispatchMode):
    """The ops that make a CUDA device wait for the host (a stand-in for torch.cuda.set_sync_debug_mode on CPU):
    a tensor read as a Python number, nonzero, and indexing with a boolean mask (a nonzero inside)."""

    def __init__(self):
        super().__init__()
        self.seen: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = str(func)
        boolean_index = name.startswith("aten.index.") and any(
            isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in (args[1] if len(args) > 1 else []))
        if boolean_index or name.startswith(("aten._local_scalar_dense", "aten.nonzero", "aten.masked_select")):
            self.seen.append(name)
        return func(*args, **(kwargs or {}))


def test_the_default_training_path_gathers_trained_positions_without_a_host_sync():
    """A packed batch from sftune's collator carries its trained positions computed on the CPU: the loss gathers
    them with an index (no boolean mask, no nonzero on the device) and the step's trained-token count is an int
    known to the host; both equal the boolean-mask reference."""
    from sftune.training.data import batches
    from sftune.training.loss import count_trained_tokens, shifted_targets

    model = tiny_model("llama", vocab_size=VOCAB).train()
    g = torch.Generator().manual_seed(3)
    records = []
    for length, prompt in ((9, 4), (7, 2), (12, 5)):
        ids = torch.randint(0, VOCAB, (length,), generator=g).tolist()
        records.append({"input_ids": ids, "labels": [-100] * prompt + ids[prompt:]})
    _, collate = batches(datasets.Dataset.from_list(records), packing=True, max_len=64, pad_token_id=0)
    batch = collate(records)
    def model_unwatched(**inputs):  # the model's own attention masks are not the loss's business
        with _disable_current_modes():
            return model(**inputs)

    model_unwatched.config = model.config
    model_unwatched.get_output_embeddings = model.get_output_embeddings
    with _Syncs() as syncs:
        states = trained_hidden_states(model_unwatched, batch)
        loss = linear_cross_entropy(states.hidden, states.head, states.targets, logit_rule=states.logit_rule)
        count = count_trained_tokens([batch, batch])
    assert syncs.seen == []
    mask = shifted_targets(batch) != -100
    assert isinstance(count, int) and count == 2 * int(mask.sum())
    hidden = model(**{k: v for k, v in batch.items() if k in ("input_ids", "position_ids")},
                   output_hidden_states=True, use_cache=False).hidden_states[-1]
    torch.testing.assert_close(states.hidden, hidden[:, :-1][mask])
    torch.testing.assert_close(states.targets, shifted_targets(batch)[mask])
    assert loss.item() == pytest.approx(linear_cross_entropy(hidden[:, :-1][mask], states.head,
                                                             shifted_targets(batch)[mask]).item(), rel=1e-6)
