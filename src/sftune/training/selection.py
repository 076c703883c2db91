"""Online batch selection (train.batch_selection): each forward pass reads micro_batch_size / ratio
candidate sequences, scores them without gradients, and back-propagates only the K = micro_batch_size best.

UDS (Zou et al. 2025, "Utility-Diversity Aware Online Batch Selection for LLM Supervised Fine-tuning";
the authors' UDSamplingTrainer.py) scores sequence i by

    score_i = s_intra_i + alpha * s_inter_i
    s_intra_i = ||Z_i||_*            nuclear norm (sum of singular values) of its logits Z_i [n_i, V]
    s_inter_i = mean_m ||P(Z_i) - M_m||_2   over a FIFO memory M of the projections of past selections
    P(Z)      = R_t[:n]^T Z R_v       a random low-dimensional projection ([r_t, r_v], flattened)

Choices where the paper and the code leave room (docs/selection.md):
- Z_i holds the logits of the response (trained) positions only, where the authors' code takes every
  position, prompt and padding included: padding is not the sample, and the prompt is not what is learned.
- P is a Gaussian Johnson-Lindenstrauss projection (entries N(0, 1/r), r_t = 8 token rows, r_v = 128
  vocabulary columns, the authors' sizes; a sequence shorter than data.max_len is padded with zero rows),
  where the authors use a subsampled randomized FFT. Ours preserves distances in expectation; theirs
  scales them by about sqrt(T * V) / 2, so their alpha weighs diversity more than the same alpha here.
- Scoring runs in eval mode (no dropout noise in the scores); the memory is empty at first (s_inter = 0),
  and receives the projections of the selected sequences after each selection, oldest out first.
- The selected sequences keep their order in the candidate batch, and the padded batch is trimmed to the
  longest selected one, so ratio 1 trains exactly as no selection does.
- With packing (data.packing=true) a forward pass reads batch_size / ratio packed rows, every sequence
  inside them is scored on its own (the pack keeps sequences apart: restarting position_ids, no KV cache,
  so a sequence's logits in the pack are its logits alone), the best round(ratio * n) of the n sequences
  are kept, and the kept sequences are repacked into one padding-free row (their order kept). The
  paper selects among sequences, not among packed rows; this is that, with the step's token budget
  about batch_size rows as without selection.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch

from sftune.encode import IGNORE
from sftune.generation import half_precision
from sftune.packing import boundaries
from sftune.training.loss import shifted_targets, trained_hidden_states

TOKEN_DIM, VOCAB_DIM = 8, 128  # the projection's size (the authors' projection_dim2 x projection_dim1)


@dataclass
class Selector:
    """The state of online batch selection across steps: the method, K, the random projection and the
    memory of past selections (UDS), and the seconds spent selecting (its overhead)."""

    method: str  # "uds" or "random"
    keep: int  # K: sequences back-propagated per forward pass (padded batches)
    ratio: float = 1.0  # share of the sequences kept from a packed batch (padding-free rows)
    alpha: float = 2.5e-3
    memory_size: int = 1024
    max_len: int = 1024
    seed: int = 0
    memory: torch.Tensor | None = None  # [m <= memory_size, TOKEN_DIM * VOCAB_DIM], oldest first
    seconds: float = 0.0
    selected: int = 0  # sequences kept so far
    seen: int = 0  # candidate sequences scored so far
    _projection: tuple[torch.Tensor, torch.Tensor] | None = field(default=None, repr=False)
    _generator: torch.Generator | None = field(default=None, repr=False)

    def __call__(self, model: Any, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The batch cut down to its K selected sequences (the batch itself when it has K or fewer)."""
        started = time.perf_counter()
        packed = is_packed(batch)
        size = len(sequence_bounds(batch)) if packed else batch["input_ids"].shape[0]
        keep = max(1, round(size * self.ratio)) if packed else self.keep
        self.seen += size
        if size <= keep and self.method == "random":
            chosen = torch.arange(size)
        elif self.method == "random":
            chosen = torch.randperm(size, generator=self._rng())[:keep].sort().values
        else:
            chosen = self._uds(model, batch, keep)
        self.selected += len(chosen)
        out = subset_packed(batch, chosen) if packed else subset(batch, chosen)
        self.seconds += time.perf_counter() - started
        return out

    def _uds(self, model: Any, batch: dict[str, torch.Tensor], keep: int) -> torch.Tensor:
        with half_precision(model):  # outside the Trainer's autocast: flash attention needs half q/k/v
            logits = response_logits(model, batch)
        rows, cols = self._projections(logits[0].shape[-1], logits[0].device)
        embeddings = project(logits, rows, cols)
        scores = nuclear_norms(logits) + self.alpha * mean_distances(embeddings, self.memory)
        chosen = top_k(scores, keep)
        self.memory = push(self.memory, embeddings[chosen], self.memory_size)
        return chosen.cpu()

    def _rng(self) -> torch.Generator:
        if self._generator is None:
            self._generator = torch.Generator().manual_seed(self.seed)
        return self._generator

    def _projections(self, vocab: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        if self._projection is None:
            g = self._rng()
            rows = torch.randn(self.max_len, TOKEN_DIM, generator=g) / TOKEN_DIM ** 0.5
            cols = torch.randn(vocab, VOCAB_DIM, generator=g) / VOCAB_DIM ** 0.5
            self._projection = rows.to(device), cols.to(device)
        return self._projection

    def summary(self) -> dict[str, Any]:
        """What summary.json says of the selection: method, sequences scored and kept, its seconds."""
        return {"method": self.method, "candidates": self.seen, "selected": self.selected,
                "seconds": round(self.seconds, 3)}


@torch.no_grad()
def response_logits(model: Any, batch: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    """Each sequence's fp32 logits at its trained positions ([n_i, V]), from one forward pass without
    gradients, in eval mode; a sequence is a row of a padded batch or a segment of a packed row."""
    was_training = model.training
    model.eval()
    try:
        hidden, _, _, head, rule, _ = trained_hidden_states(model, batch)
    finally:
        model.train(was_training)
    z = rule.apply(head(hidden.to(head.weight.dtype)).float())  # a bf16 base: bf16 states into its bf16 head
    trained = shifted_targets(batch) != IGNORE
    if is_packed(batch):  # [1, T]: the sequence of each predicting position t (it and t + 1 are one sequence)
        starts = batch["position_ids"][0, :-1] == 0
        owner = torch.cumsum(starts.long(), 0) - 1
        counts = torch.bincount(owner[trained[0]], minlength=len(sequence_bounds(batch))).tolist()
    else:
        counts = trained.sum(dim=1).tolist()
    return list(torch.split(z, counts))


def is_packed(batch: dict[str, torch.Tensor]) -> bool:
    """A padding-free batch (sftune.packing.collate_packed): one row, restarting position_ids, no mask."""
    return "attention_mask" not in batch and "position_ids" in batch and batch["input_ids"].shape[0] == 1


def sequence_bounds(batch: dict[str, torch.Tensor]) -> list[tuple[int, int]]:
    """[start, end) of each sequence in a packed row: a sequence starts where position_ids is 0."""
    positions = batch["position_ids"][0]
    starts = torch.nonzero(positions == 0).flatten().tolist()
    return list(zip(starts, starts[1:] + [positions.shape[0]]))


def subset_packed(batch: dict[str, torch.Tensor], chosen: torch.Tensor) -> dict[str, torch.Tensor]:
    """The packed row's sequences `chosen`, repacked into one padding-free row in their order (each keeps
    its own tokens, labels, restarting position_ids and loss weights)."""
    bounds = sequence_bounds(batch)
    if len(chosen) == len(bounds):
        return batch
    spans = [bounds[i] for i in chosen.tolist()]
    out = {k: torch.cat([v[:, a:b] for a, b in spans], dim=1) if torch.is_tensor(v) and v.dim() == 2 else v
           for k, v in batch.items()}
    if "cu_seq_lens_q" in batch:  # the kept sequences' boundaries, from their spans (on the host already)
        kept = boundaries([b - a for a, b in spans])
        out.update(kept, cu_seq_lens_q=kept["cu_seq_lens_q"].to(batch["cu_seq_lens_q"].device),
                   cu_seq_lens_k=kept["cu_seq_lens_k"].to(batch["cu_seq_lens_k"].device))
    return out


def nuclear_norms(logits: list[torch.Tensor]) -> torch.Tensor:
    """s_intra: the sum of singular values of each logits matrix (0 for one without rows)."""
    return torch.stack([torch.linalg.svdvals(z).sum() if z.shape[0] else z.new_zeros(()) for z in logits])


def project(logits: list[torch.Tensor], rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """[B, r_t * r_v]: each R_t^T Z R_v, Z padded with zero rows to R_t's length (so only R_t's first n
    rows take part)."""
    return torch.stack([(rows[: z.shape[0]].T @ (z @ cols)).flatten() for z in logits])


def mean_distances(embeddings: torch.Tensor, memory: torch.Tensor | None) -> torch.Tensor:
    """s_inter: each embedding's mean L2 distance to the memory's entries (0 while the memory is empty)."""
    if memory is None or memory.shape[0] == 0:
        return embeddings.new_zeros(embeddings.shape[0])
    return torch.cdist(embeddings, memory.to(embeddings.device)).mean(dim=1)


def push(memory: torch.Tensor | None, entries: torch.Tensor, size: int) -> torch.Tensor:
    """The FIFO memory with `entries` added last and the oldest dropped beyond `size`."""
    joined = entries if memory is None else torch.cat([memory, entries.to(memory.device)])
    return joined[-size:]


def top_k(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the k highest scores, in ascending index order (the batch keeps its order)."""
    return torch.topk(scores, min(k, scores.shape[0])).indices.sort().values


def subset(batch: dict[str, torch.Tensor], chosen: torch.Tensor) -> dict[str, torch.Tensor]:
    """The padded batch's rows `chosen`, trimmed to the longest of them (right padding)."""
    if len(chosen) == batch["input_ids"].shape[0] and bool((chosen == torch.arange(len(chosen))).all()):
        return batch
    index = chosen.to(batch["input_ids"].device)
    out = {k: v.index_select(0, index) if torch.is_tensor(v) and v.dim() else v for k, v in batch.items()}
    mask = out.get("attention_mask")
    if mask is not None:
        width = int(mask.sum(dim=1).max())
        out = {k: v[:, :width] if torch.is_tensor(v) and v.dim() == 2 else v for k, v in out.items()}
    return out


def selector_for(cfg: Any, keep: int) -> Selector | None:
    """The Selector of train.batch_selection (None when it is off); `keep` is the micro-batch size."""
    s = cfg.train.batch_selection
    if s.method == "none":
        return None
    return Selector(method=s.method, keep=keep, ratio=s.ratio, alpha=s.alpha, memory_size=s.memory,
                    max_len=cfg.data.max_len, seed=cfg.train.seed)


def candidates(keep: int, ratio: float) -> int:
    """Candidates read per forward pass: K / ratio, rounded to the nearest whole number (sequences, or
    packed rows with packing)."""
    return max(keep, round(keep / ratio))
