"""Dynamic batching: one worker thread owns the model and decodes all active requests together, step by step.

Each step feeds every active request's last token through the model at once (one left-padded batch,
one KV cache). Requests that arrive while a step runs wait for the step boundary: they are prefilled
together, their caches left-padded to the batch's width and appended to it, and from then on they
decode with the others. A request leaves the batch when it stops, hits its token limit or is cancelled
(its client went away); the cache drops its row and the padding columns nobody needs any more.

Qwen2-VL / Qwen2.5-VL place an image's tokens on a 3-D grid (mrope), so a prompt with images ends at
another rope position than its token count: its prefill takes the model's own 3-D positions
(`get_rope_index`), and every later token's position is its text position plus the prompt's rope delta
(kept per row), as transformers' generate does.

A batch holds requests for one adapter only (LoRA weights are switched per batch, not per row): new
requests join in arrival order while they ask for the batch's adapter; the first one asking for another
waits, with everything after it, until the batch drains, then its adapter is switched on.

Answers end exactly as `generation.generate` ends them (the same stop tokens, stop strings and text),
so a greedy answer is the same served alone, in a batch, or by `sftune.generation`.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from transformers import DynamicCache

from sftune.generation import Completion, GenerationOptions, completion_of, held_back, first_stop
from sftune.vision import qwen


@dataclass(eq=False)
class Request:
    """One answer to generate. `on_event` is called from the worker thread with {"text": piece} while
    streaming, then once with {"done": Completion} or {"error": message}. With `special_tokens` the streamed
    pieces keep them (Magistral's [THINK] markers are control tokens); the Completion's text never has them."""

    prompt_ids: list[int]
    options: GenerationOptions
    stop_token_ids: frozenset[int]
    on_event: Callable[[dict[str, Any]], None] = lambda event: None
    adapter: str | None = None
    stream: bool = False
    special_tokens: bool = False
    cancelled: threading.Event = field(default_factory=threading.Event)
    tokens: list[int] = field(default_factory=list)
    sent: int = 0  # characters of the answer already streamed
    generator: torch.Generator | None = None
    model_inputs: dict[str, torch.Tensor] | None = None  # a vision-language prompt's pixels (prefilled alone)
    rope_delta: int = 0  # Qwen2-VL: what the prompt's images add to each later token's position


class Batcher:
    """The worker thread and the requests it holds: waiting (not yet prefilled) and active (in the batch)."""

    def __init__(self, model: Any, tokenizer: Any, activate: Callable[[str | None], None] = lambda name: None,
                 max_batch_size: int = 16):
        self.model, self.tokenizer, self.activate, self.max_batch_size = model, tokenizer, activate, max_batch_size
        self.waiting: deque[Request] = deque()
        self.rows: list[Request] = []  # the active batch, in cache row order
        self.adapter: str | None = None
        self.cache: DynamicCache | None = None
        self.mask: torch.Tensor | None = None  # (rows, cached positions + 0): 1 where a row has a real token
        self.last: torch.Tensor | None = None  # (rows,) the token each row feeds next
        self.deltas: torch.Tensor | None = None  # (rows,) each row's rope delta (0 but for Qwen2-VL images)
        self.rope_index = qwen.rope_index(model) if qwen.uses_mrope(model) else None
        self.steps = 0  # decode steps run (a batch of any size counts once)
        self._wake = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._loop, name="sftune-serve-batcher", daemon=True)

    def start(self) -> "Batcher":
        self._thread.start()
        return self

    def stop(self) -> None:
        with self._wake:
            self._stopping = True
            self._wake.notify()
        self._thread.join(timeout=30)

    def submit(self, request: Request) -> None:
        if request.options.sampling:
            request.generator = torch.Generator(device=self.model.device)
            if request.options.seed is not None:
                request.generator.manual_seed(request.options.seed)
            else:
                request.generator.seed()
        with self._wake:
            self.waiting.append(request)
            self._wake.notify()

    def cancel(self, request: Request) -> None:
        """Free the request's slot at the next step boundary (its client went away)."""
        request.cancelled.set()
        with self._wake:
            self._wake.notify()

    def counts(self) -> dict[str, int]:
        return {"active": len(self.rows), "waiting": len(self.waiting)}

    # --- the worker thread ----------------------------------------------------------------------------------

    def _loop(self) -> None:
        while True:
            with self._wake:
                while not self._stopping and not self.waiting and not self.rows:
                    self._wake.wait()
                if self._stopping:
                    return
                admitted = self._admit()
            try:
                with torch.no_grad():
                    if admitted:
                        self._prefill(admitted)
                    if self.rows:
                        self._decode()
            except Exception as err:  # a failed step fails its requests, never the server
                message = f"generation failed: {type(err).__name__}: {err}"
                for request in [*self.rows, *admitted]:
                    request.on_event({"error": message})
                self._reset()

    def _admit(self) -> list[Request]:
        """Waiting requests that join now: in arrival order, for the batch's adapter, up to the batch size."""
        while self.waiting and self.waiting[0].cancelled.is_set():
            self.waiting.popleft()
        if not self.waiting:
            return []
        if not self.rows:
            self.adapter = self.waiting[0].adapter
        admitted: list[Request] = []
        while self.waiting and len(self.rows) + len(admitted) < self.max_batch_size:
            request = self.waiting[0]
            if request.cancelled.is_set():
                self.waiting.popleft()
                continue
            if request.adapter != self.adapter:
                break
            admitted.append(self.waiting.popleft())
        return admitted

    def _prefill(self, requests: list[Request]) -> None:
        """Run the new prompts (text ones left-padded together, each one with images alone: its pixels are
        its own), pick their first tokens, merge them into the batch."""
        if not self.rows:
            self.activate(self.adapter)
        text = [r for r in requests if not r.model_inputs]
        groups = ([text] if text else []) + [[r] for r in requests if r.model_inputs]
        for group in groups:
            self._prefill_group(group)

    def _prefill_group(self, requests: list[Request]) -> None:
        device = self.model.device
        width = max(len(r.prompt_ids) for r in requests)
        ids = torch.tensor([[0] * (width - len(r.prompt_ids)) + r.prompt_ids for r in requests], device=device)
        mask = torch.tensor([[0] * (width - len(r.prompt_ids)) + [1] * len(r.prompt_ids) for r in requests],
                            device=device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        cache = DynamicCache()
        extra = dict(requests[0].model_inputs or {})
        if self.rope_index is not None and "image_grid_thw" in extra:  # one prompt with images: 3-D positions
            positions, deltas = qwen.positions(self.rope_index, ids, extra.get("mm_token_type_ids"),
                                               extra["image_grid_thw"], attention_mask=mask)
            requests[0].rope_delta = int(deltas[0])
        logits = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, past_key_values=cache,
                            use_cache=True, logits_to_keep=1, **extra).logits[:, -1]
        tokens = self._choose(logits, requests)
        deltas = torch.tensor([r.rope_delta for r in requests], device=device)
        first_new = len(self.rows)
        if self.rows:
            cache, mask = _merge(self.cache, self.mask, cache, mask)
            tokens, deltas = torch.cat([self.last, tokens]), torch.cat([self.deltas, deltas])
        self.cache, self.mask, self.last, self.deltas = cache, mask, tokens, deltas
        self.rows.extend(requests)
        self._advance(first_new)

    def _decode(self) -> None:
        """One step for the whole batch: every row's last token in, every row's next token out."""
        self.mask = torch.cat([self.mask, self.mask.new_ones(len(self.rows), 1)], dim=1)
        positions = self.mask.sum(-1, keepdim=True) - 1 + self.deltas[:, None]
        logits = self.model(input_ids=self.last[:, None], attention_mask=self.mask, position_ids=positions,
                            past_key_values=self.cache, use_cache=True).logits[:, -1]
        self.last = self._choose(logits, self.rows)
        self.steps += 1
        self._advance()

    def _choose(self, logits: torch.Tensor, requests: list[Request]) -> torch.Tensor:
        """The next token of each row: argmax when greedy, else sampled with the request's own generator."""
        tokens = logits.argmax(-1)
        for row, request in enumerate(requests):
            if request.options.sampling:
                tokens[row] = _sample(logits[row].float(), request.options, request.generator)
        return tokens

    def _advance(self, first: int = 0) -> None:
        """Give rows `first`.. their new token (self.last); drop the rows whose answers are finished."""
        keep = list(range(first))
        for row, (request, token) in enumerate(zip(self.rows, self.last.tolist())):
            if row >= first and not self._step(request, token):
                keep.append(row)
        if len(keep) < len(self.rows):
            self._keep(keep)

    def _step(self, request: Request, token: int) -> bool:
        """Add one token to a request; stream its safe text; True when it is finished (or abandoned)."""
        if request.cancelled.is_set():
            return True
        request.tokens.append(token)
        options = request.options
        if token in request.stop_token_ids or len(request.tokens) >= options.max_new_tokens:
            return self._finish(request)
        if options.stop or request.stream:
            text = self.tokenizer.decode(request.tokens, skip_special_tokens=not request.special_tokens)
            if first_stop(text, options.stop) is not None:
                return self._finish(request)
            if request.stream:
                safe = len(text) - held_back(text, options.stop)
                while safe > request.sent and text[safe - 1] == "\ufffd":  # half of a multi-byte character
                    safe -= 1
                if safe > request.sent:
                    request.on_event({"text": text[request.sent: safe]})
                    request.sent = safe
        return False

    def _finish(self, request: Request) -> bool:
        done: Completion = completion_of(self.tokenizer, request.tokens, len(request.prompt_ids), request.options,
                                       set(request.stop_token_ids))
        if request.stream:
            text = self.tokenizer.decode(done.token_ids, skip_special_tokens=False) if request.special_tokens \
                else done.text
            if len(text) > request.sent:
                request.on_event({"text": text[request.sent:]})
        request.on_event({"done": done})
        return True

    def _keep(self, rows: list[int]) -> None:
        """Keep only these rows of the batch, and cut the padding columns no remaining row needs."""
        self.rows = [self.rows[i] for i in rows]
        if not rows:
            self._reset()
            return
        index = torch.tensor(rows, device=self.mask.device)
        self.cache.batch_select_indices(index)
        self.mask, self.last, self.deltas = self.mask[index], self.last[index], self.deltas[index]
        first = int(self.mask.any(0).nonzero()[0])
        if first:
            for layer in self.cache.layers:
                layer.keys, layer.values = layer.keys[..., first:, :], layer.values[..., first:, :]
            self.mask = self.mask[:, first:]

    def _reset(self) -> None:
        self.rows, self.cache, self.mask, self.last, self.deltas = [], None, None, None, None


def _merge(cache: DynamicCache, mask: torch.Tensor, new: DynamicCache, new_mask: torch.Tensor
           ) -> tuple[DynamicCache, torch.Tensor]:
    """The batch's cache with the new rows appended below, the narrower side padded on the left."""
    width = max(mask.shape[1], new_mask.shape[1])
    for old_layer, new_layer in zip(cache.layers, new.layers):
        old_layer.keys = torch.cat([_pad_left(old_layer.keys, width), _pad_left(new_layer.keys, width)])
        old_layer.values = torch.cat([_pad_left(old_layer.values, width), _pad_left(new_layer.values, width)])
    return cache, torch.cat([_pad_left(mask, width), _pad_left(new_mask, width)])


def _pad_left(tensor: torch.Tensor, width: int) -> torch.Tensor:
    """Zeros on the left of the sequence dimension (-2 for cached keys/values, -1 for masks) up to `width`."""
    dim = -1 if tensor.dim() == 2 else -2
    missing = width - tensor.shape[dim]
    if missing <= 0:
        return tensor
    shape = list(tensor.shape)
    shape[dim] = missing
    return torch.cat([tensor.new_zeros(shape), tensor], dim=dim)


def _sample(logits: torch.Tensor, options: GenerationOptions, generator: torch.Generator | None) -> int:
    """A token drawn from softmax(logits / temperature), restricted to the top_p nucleus."""
    probs = torch.softmax(logits / options.temperature, dim=-1)
    if options.top_p < 1:
        sorted_probs, order = probs.sort(descending=True)
        outside = sorted_probs.cumsum(-1) - sorted_probs > options.top_p  # the most likely token always stays
        sorted_probs[outside] = 0
        probs = torch.zeros_like(probs).scatter(0, order, sorted_probs)
    return int(torch.multinomial(probs, 1, generator=generator))
