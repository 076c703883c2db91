"""Bins and collators: packed (padding-free) batches that keep sequences apart, padded batches otherwise.

Padding-free batches are one row `[1, T]`: the sequences concatenated, `position_ids` restarting at 0
for each, and the label of every sequence's first token -100 (no sequence learns to predict across a
boundary). There is no attention_mask: transformers (5.x, `masking_utils.find_packed_sequence_indices`)
builds a block-diagonal causal mask from the restarting position_ids only when attention_mask is None
AND there is no KV cache, so the model must be called with `use_cache=False` in training, or packed
sequences silently attend to each other. The batch also carries the sequences' boundaries
(`cu_seq_lens_q/k`, `max_length_q/k`, see `boundaries`), so that flash attention 2/3 and sftune's varlen
attention on a GPU need not find them on the device in every layer.
"""

from __future__ import annotations

import bisect
import itertools
from typing import Any, Sequence

import torch

from sftune.encode import IGNORE

VARLEN = "sftune_varlen"  # attention.NAME: the implementation ARCHITECTURES was proven under


def pack(lengths: Sequence[int], max_len: int) -> list[list[int]]:
    """Best-fit-decreasing bins of sequence indices, each bin's total length <= max_len.

    Longest first, each into the open bin with the least room that still fits it. Deterministic:
    ties keep index order. Bins come back in creation order (longest first).
    """
    order = sorted(range(len(lengths)), key=lambda k: (-lengths[k], k))
    bins: list[list[int]] = []
    room_keys: list[tuple[int, int]] = []  # sorted (room left, bin id)
    for k in order:
        length = lengths[k]
        if length > max_len:
            raise ValueError(f"sequence {k} has {length} tokens, more than max_len={max_len}; "
                             "encode with max_len to truncate it first")
        at = bisect.bisect_left(room_keys, (length, -1))
        if at < len(room_keys):
            room, b = room_keys.pop(at)
            bins[b].append(k)
            bisect.insort(room_keys, (room - length, b))
        else:
            bins.append([k])
            bisect.insort(room_keys, (max_len - length, len(bins) - 1))
    return bins


def packed_rows(dataset: Any, max_len: int) -> Any:
    """The encoded dataset packed into rows of <= max_len tokens (one row per bin).

    Each row holds input_ids, labels, position_ids (restarting per sequence) and loss_weights when the
    dataset has them; feed rows to `collate_packed`, which keeps the sequences inside a row apart.
    """
    import datasets

    lengths = [len(x) for x in dataset["input_ids"]]
    bins = pack(lengths, max_len)
    columns = [c for c in ("input_ids", "labels", "loss_weights") if c in dataset.column_names]
    data = {c: dataset[c] for c in columns}
    rows: dict[str, list] = {c: [] for c in columns + ["position_ids"]}
    for members in bins:
        for c in columns:
            rows[c].append([v for k in members for v in data[c][k]])
        rows["position_ids"].append([p for k in members for p in range(lengths[k])])
    return datasets.Dataset.from_dict(rows)


def collate_packed(features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """Padding-free batch: input_ids, labels, position_ids (and loss_weights) as [1, T], the sequences'
    `boundaries`; no attention_mask.

    Features are encoded sequences, or rows from `packed_rows` (their position_ids are kept). The label
    at every position where a sequence starts (position 0) is -100.
    """
    ids: list[int] = []
    labels: list[int] = []
    positions: list[int] = []
    weights: list[float] = []
    has_weights = "loss_weights" in features[0]
    for feature in features:
        row = list(feature["input_ids"])
        ids += row
        labels += list(feature.get("labels", row))
        positions += list(feature["position_ids"]) if "position_ids" in feature else list(range(len(row)))
        if has_weights:
            weights += list(feature["loss_weights"])
    position_ids = torch.tensor(positions, dtype=torch.long)
    label_tensor = torch.tensor(labels, dtype=torch.long)
    label_tensor[position_ids == 0] = IGNORE
    batch = {
        "input_ids": torch.tensor(ids, dtype=torch.long)[None],
        "labels": label_tensor[None],
        "position_ids": position_ids[None],
    }
    if has_weights:
        batch["loss_weights"] = torch.tensor(weights, dtype=torch.float32)[None]
    return {**batch, **boundaries(sequence_lengths(positions))}


def boundaries(lengths: Sequence[int]) -> dict[str, Any]:
    """The sequences of a padding-free row, given their lengths in order, as transformers' flash-attention
    keyword arguments: `cu_seq_lens_q` / `cu_seq_lens_k` ([n + 1] int32: where each sequence starts, then the
    row's end) and `max_length_q` / `max_length_k` (int, the longest). Computed on the CPU once per batch: the
    attention reads them instead of finding the boundaries with a device-to-host sync in every layer. Not for
    shared-prompt rows (their branches are not sequences of their own)."""
    cu = torch.tensor([0, *itertools.accumulate(lengths)], dtype=torch.int32)
    longest = max(lengths)
    return {"cu_seq_lens_q": cu, "cu_seq_lens_k": cu, "max_length_q": longest, "max_length_k": longest}


def sequence_lengths(positions: Sequence[int]) -> list[int]:
    """The lengths of the sequences of a padding-free row: one starts where its position is 0 (and at the
    row's first token)."""
    starts = [i for i, p in enumerate(positions) if p == 0 or i == 0]
    return [end - start for start, end in zip(starts, starts[1:] + [len(positions)])]


def text_positions(position_ids: torch.Tensor) -> torch.Tensor:
    """The [B, T] positions that restart at 0 for each packed sequence: position_ids itself, or row 0 of a
    Qwen2-VL / Qwen2.5-VL packed batch's [4, B, T] (text positions, then the 3-D rope positions, the
    layout transformers reads: row 0 finds the sequences, rows 1-3 turn the rotary embedding)."""
    return position_ids[0] if position_ids.dim() == 3 else position_ids


def collate_padded(features: list[dict[str, Any]], pad_token_id: int, *, pad_to_multiple_of: int | None = None,
                   padding_side: str = "right") -> dict[str, torch.Tensor]:
    """Padded batch for packing off: input_ids padded with pad_token_id, labels with -100, attention_mask.

    The pad id is only filler: labels come from the encoder, so an EOS equal to pad stays trained.
    """
    longest = max(len(f["input_ids"]) for f in features)
    if pad_to_multiple_of:
        longest = -(-longest // pad_to_multiple_of) * pad_to_multiple_of
    has_weights = "loss_weights" in features[0]
    batch: dict[str, list] = {"input_ids": [], "labels": [], "attention_mask": []}
    if has_weights:
        batch["loss_weights"] = []
    for f in features:
        n = len(f["input_ids"])
        pad = longest - n

        def fill(values: Sequence, value: Any) -> list:
            return list(values) + [value] * pad if padding_side == "right" else [value] * pad + list(values)

        batch["input_ids"].append(fill(f["input_ids"], pad_token_id))
        batch["labels"].append(fill(f.get("labels", f["input_ids"]), IGNORE))
        batch["attention_mask"].append(fill([1] * n, 0))
        if has_weights:
            batch["loss_weights"].append(fill(f["loss_weights"], 0.0))
    out = {k: torch.tensor(v, dtype=torch.float32 if k == "loss_weights" else torch.long) for k, v in batch.items()}
    out["labels"][:, 0] = torch.where(out["attention_mask"][:, 0] == 1, IGNORE, out["labels"][:, 0])
    return out




_RECURRENT = ("{} layers carry a state from token to token and transformers' CPU path ({}) reads no sequence "
              "boundaries (position_ids, cu_seq_lens or seq_idx), so a packed sequence starts from the state the "
              "sequence before it left")
_DELTANET = ("Gated DeltaNet (linear attention){} layers carry a state from token to token; transformers keeps packed "
             "sequences apart there only with the flash-linear-attention kernels (its torch path, {}, raises on "
             "sequence boundaries or reads none), so a packed sequence starts from the state the one before it left")
# Decoder architectures (transformers 5.24 model_type) and what packing does with each: None when sftune's
# varlen attention keeps packed sequences apart (packed == alone, tests/test_packing_families.py), else why
# their batches are padded. An architecture not listed is decided by `probe` at start-up. Read by the
# "Supported families" page.
ARCHITECTURES: dict[str, str | None] = {
    **dict.fromkeys((
        "llama", "mistral", "mixtral", "ministral", "ministral3", "qwen2", "qwen2_moe", "qwen3", "qwen3_moe",
        "gemma", "gemma2", "gemma3_text", "cohere", "cohere2", "phi", "phi3", "phimoe", "granite", "granitemoe",
        "olmo", "olmo2", "olmo3", "olmoe", "deepseek_v2", "deepseek_v3", "glm", "glm4", "glm4_moe", "glm4_moe_lite",
        "gpt_oss", "llama4_text", "starcoder2", "smollm3", "stablelm", "exaone4", "ernie4_5", "ernie4_5_moe",
        "minicpm3", "internlm3", "hunyuan_v1_dense", "hunyuan_v1_moe", "helium", "seed_oss", "apertus", "arcee",
        "bitnet", "dots1", "nemotron", "gpt_neox", "gpt2", "minimax_m2", "mimo_v2_flash",
    )),
    "qwen3_5_text": _DELTANET.format(" and short-convolution", "torch_chunk_gated_delta_rule"),
    "qwen3_5_moe_text": _DELTANET.format(" and short-convolution", "torch_chunk_gated_delta_rule"),
    "qwen3_next": _DELTANET.format(" and short-convolution", "torch_chunk_gated_delta_rule"),
    "olmo_hybrid": _DELTANET.format("", "torch_chunk_gated_delta_rule"),
    "minimax": _RECURRENT.format("Lightning (linear) attention", "its block-wise decay over the whole row"),
    "nemotron_h": _RECURRENT.format("Mamba-2 (state-space) and convolution", "torch_forward"),
    "bamba": _RECURRENT.format("Mamba-2 (state-space) and convolution", "torch_forward"),
    "falcon_h1": _RECURRENT.format("Mamba-2 (state-space) and convolution", "torch_forward"),
    "granitemoehybrid": _RECURRENT.format("Mamba-2 (state-space) and convolution", "torch_forward"),
    "jamba": _RECURRENT.format("Mamba (state-space) and convolution", "slow_forward"),
    "mamba": _RECURRENT.format("Mamba (state-space) and convolution", "slow_forward"),
    "falcon_mamba": _RECURRENT.format("Mamba (state-space) and convolution", "slow_forward"),
    "bailing_hybrid": _RECURRENT.format("linear-attention", "its recurrent torch path"),
    "recurrent_gemma": _RECURRENT.format("RG-LRU (recurrent) and convolution", "its torch scan"),
    "rwkv": _RECURRENT.format("RWKV time-mixing (recurrent)", "its torch scan"),
    "xlstm": _RECURRENT.format("mLSTM (recurrent)", "its native torch kernels"),
}


# The probe's sequences: short, of unequal lengths, so that a leak reaches each later sequence's first tokens.
PROBE_LENGTHS = (24, 16, 32)
# How far a packed sequence's logits may be from its logits alone (max absolute difference, over the largest
# |logit|): rounding of other matmul shapes in fp32; bf16 / fp16 keep 8 / 11 bits of mantissa. A sequence that
# sees another one differs by orders of magnitude more (0.05-0.9 on tiny random models).
PROBE_TOLERANCE = {torch.float32: 1e-4, torch.float64: 1e-6, torch.bfloat16: 3e-2, torch.float16: 5e-3}


def probe(model: Any, *, branches: bool = False) -> str | None:
    """Why this model's packed rows are not its sequences alone, or None when they are.

    A few short random sequences run through the model packed (`collate_packed`'s row, as training feeds it)
    and each alone, in eval mode without gradients; the logits must agree (PROBE_TOLERANCE). With
    `branches`, the row is the preference stage's shared prompt instead (`attention.pieces`): a prompt and
    answer, then a second answer branching from the prompt's last token, which must equal prompt + answer alone.
    A packed forward pass that raises is a reason too (packing goes off); one alone that raises is the model's.
    """
    embeddings = model.get_input_embeddings()
    device = embeddings.weight.device
    generator = torch.Generator().manual_seed(0)
    vocab = embeddings.num_embeddings
    sequences = [torch.randint(0, vocab, (n,), generator=generator).tolist() for n in PROBE_LENGTHS]
    if branches:
        prompt, first, second = sequences
        ids = prompt + first + prompt[-1:] + second
        positions = list(range(len(prompt) + len(first))) + list(range(len(prompt) - 1, len(prompt) + len(second)))
        row = {"input_ids": torch.tensor([ids]), "position_ids": torch.tensor([positions])}
        alone = [prompt + first, prompt + second]
        slices = [(0, len(prompt) + len(first), 0), (len(prompt) + len(first), len(ids), len(prompt) - 1)]
    else:
        row = collate_packed([{"input_ids": s} for s in sequences])
        del row["labels"]
        starts = [sum(PROBE_LENGTHS[:i]) for i in range(len(sequences))]
        alone = sequences
        slices = [(start, start + len(s), 0) for start, s in zip(starts, sequences)]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            references = [_logits(model, {"input_ids": torch.tensor([s])}, device) for s in alone]
            try:
                packed = _logits(model, row, device)
            except Exception as error:  # noqa: BLE001 - any failure of the packed pass turns packing off
                what = "shared-prompt" if branches else "packed"
                return f"the {what} forward pass fails on this model ({type(error).__name__}: {error})"
    finally:
        model.train(was_training)
    difference, scale = 0.0, 1.0
    for (start, end, skip), reference in zip(slices, references):
        difference = max(difference, float((packed[start:end] - reference[skip:]).abs().max()))
        scale = max(scale, float(reference.abs().max()))
    tolerance = PROBE_TOLERANCE.get(embeddings.weight.dtype, 3e-2)
    if difference > tolerance * scale:
        what = "a branch of a shared prompt" if branches else "a sequence inside a packed row"
        return (f"{what} is not the same sequence alone on this model (max logit difference {difference:.3g}, "
                f"allowed {tolerance * scale:.2g}): its layers let packed sequences see each other")
    return None


def _logits(model: Any, inputs: dict[str, torch.Tensor], device: torch.device) -> torch.Tensor:
    """[T, V] fp32 logits of one row, called as training calls the model (no cache)."""
    inputs = {k: v.to(device) if torch.is_tensor(v) else v for k, v in inputs.items()}
    return model(**inputs, use_cache=False).logits[0].float()


def packing_refused(model: Any, *, branches: bool = False) -> str | None:
    """Why this model trains on padded batches rather than packed rows, or None: its architecture's known
    outcome (ARCHITECTURES) under sftune's varlen attention, else the probe on the model itself (adapters and
    attention as they will train: an architecture not on the table, or another attention implementation)."""
    config = model.get_base_model().config if hasattr(model, "get_base_model") else model.config
    model_type = config.get_text_config().model_type
    known = ARCHITECTURES.get(model_type)
    if known is not None:
        return f"{model_type}: {known}"
    if model_type in ARCHITECTURES and getattr(config, "_attn_implementation", None) == VARLEN:
        return None  # proven isolated under sftune's varlen attention (tests/test_packing_families.py): no probe
    if _weights_elsewhere(model):
        if model_type in ARCHITECTURES:
            return None  # isolated on sftune's table; the probe cannot run on split weights
        return (f"{model_type}: its weights are split across processes (DeepSpeed ZeRO-3) or not loaded on this "
                "process yet (FSDP low-RAM loading), so the packed == alone probe cannot run before training, and "
                "this architecture is not on sftune's table of isolated ones (docs/families.md)")
    return probe(model, branches=branches)


def _weights_elsewhere(model: Any) -> bool:
    """Whether this process holds no usable copy of the weights before training: ZeRO-3 partitions each one at
    load (DeepSpeed marks it with ds_id and leaves an empty tensor), FSDP low-RAM loading leaves them on meta."""
    return any(hasattr(p, "ds_id") or p.is_meta for p in model.parameters())
