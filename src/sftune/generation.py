"""Generation and scoring, shared by evaluation, chat, batch generation and the server.

    prompts = render_prompts(loaded.template, [[{"role": "user", "content": "Hi"}]])
    answers = generate(loaded.model, loaded.tokenizer, prompts, GenerationOptions(max_new_tokens=64),
                       stop_token_ids=loaded.stop_token_ids)
    scores = loglikelihood(model, tokenizer, [("The capital of France is", " Paris")])

`generate` runs batches with left padding and a KV cache (transformers' `generate`), prompts sorted
by length so a batch wastes little padding; it stops each answer at the template's stop tokens and
at stop strings. `loglikelihood` scores continuations in batched forward passes.
"""

from __future__ import annotations

import contextlib
import math
import threading
import time
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Callable, Iterable, Iterator, Literal, Sequence

import numpy as np
import torch
from transformers import StoppingCriteria, StoppingCriteriaList


@dataclass(frozen=True)
class GenerationOptions:
    """How to generate: temperature 0 is greedy; stop strings end an answer (they are cut off)."""

    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    stop: tuple[str, ...] = ()
    seed: int | None = None

    @property
    def sampling(self) -> bool:
        return self.temperature > 0


@dataclass
class Completion:
    """One answer: its text (stop token / stop string removed), its token ids, and why it ended."""

    text: str
    token_ids: list[int] = field(default_factory=list)
    prompt_tokens: int = 0
    finish_reason: Literal["stop", "length"] = "length"

    @property
    def completion_tokens(self) -> int:
        return len(self.token_ids)


def render_prompts(template: Any, conversations: Iterable[Sequence[Any]], tools: list[dict] | None = None) -> list[str]:
    """Each conversation rendered by the training template, ending with the assistant's generation prompt."""
    return [template.render(list(messages), tools=tools, add_generation_prompt=True) for messages in conversations]


def encode_prompts(tokenizer: Any, prompts: Sequence[str | Sequence[int]], *, add_special_tokens: bool = False
                   ) -> list[list[int]]:
    """Token ids of each prompt. Rendered chat prompts carry their BOS text already, hence no special tokens
    by default; raw text (completions, benchmarks) passes add_special_tokens=True to get the tokenizer's BOS."""
    return [list(p) if not isinstance(p, str) else tokenizer(p, add_special_tokens=add_special_tokens)["input_ids"]
            for p in prompts]


def generate(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str | Sequence[int]],
    options: GenerationOptions = GenerationOptions(),
    *,
    stop_token_ids: Sequence[int] = (),
    batch_size: int = 16,
    add_special_tokens: bool = False,
    progress: bool = False,
    console: Any = None,
    description: str = "generating",
    synced_gpus: bool = False,
) -> list[Completion]:
    """Answers to `prompts` (texts or token ids), in order; batched, left-padded, with a KV cache.

    Stops at any of `stop_token_ids` (the template's end of turn and EOS) or at a stop string.
    `progress` shows a bar with the tokens generated per second, and after the first token steps the longest
    time all the batches can take. `synced_gpus`: every process keeps stepping until all have finished (needed
    when the weights are sharded over the processes: each forward pass gathers them from all).
    """
    ids = encode_prompts(tokenizer, prompts, add_special_tokens=add_special_tokens)
    order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))  # the longest prompts first: the slowest batch
    results: list[Completion | None] = [None] * len(ids)
    stops = stop_ids(tokenizer, stop_token_ids)
    if options.sampling and options.seed is not None:
        torch.manual_seed(options.seed)
    was_training = model.training
    model.eval()
    with TokenProgress(progress, console, description, len(ids)) as bar, half_precision(model):
        batches = math.ceil(len(ids) / batch_size)
        clock = StepClock(bar.note, description, len(ids), batches, options.max_new_tokens) if progress else None
        for lo in range(0, len(order), batch_size):
            chunk = order[lo: lo + batch_size]
            for index, completion in zip(chunk, _generate_batch(model, tokenizer, [ids[i] for i in chunk],
                                                                 options, stops, clock, synced_gpus)):
                results[index] = completion
            bar.advance(len(chunk), sum(results[i].completion_tokens for i in chunk))
    model.train(was_training)
    return results  # type: ignore[return-value]


def model_inputs(inputs: dict[str, Any], model: Any) -> dict[str, torch.Tensor]:
    """What a model takes beside the ids (an image prompt's pixels ...; arrays or tensors) as tensors on its
    device, the floating ones in its dtype."""
    dtype = next(model.parameters()).dtype
    out = {}
    for key, value in inputs.items():
        tensor = value if isinstance(value, torch.Tensor) else torch.from_numpy(np.asarray(value))
        out[key] = tensor.to(model.device, dtype) if tensor.is_floating_point() else tensor.to(model.device)
    return out


def autocast_dtype(weights: torch.dtype, attention: str | None, device_type: str, bf16: bool) -> torch.dtype | None:
    """The half dtype a model must run in under autocast outside training, or None: fp32 weights (full / freeze
    trained under mixed precision keep them) with a flash-attention kernel, which takes only fp16 / bf16 q/k/v,
    on CUDA. Training runs under the Trainer's autocast; generation and scoring between steps do not. `bf16`:
    whether the GPU computes bf16 natively (else fp16)."""
    if device_type != "cuda" or weights != torch.float32 or not (attention or "").startswith("flash_attention"):
        return None
    return torch.bfloat16 if bf16 else torch.float16


def half_precision(model: Any) -> contextlib.AbstractContextManager:
    """The context a generation or scoring pass of `model` runs in: autocast where autocast_dtype says so
    (eval.generate_metrics, CHORD rollouts, replay, UDS scoring), else nothing."""
    from sftune.hardware import cuda_bf16

    device = getattr(model, "device", torch.device("cpu"))
    attention = getattr(getattr(model, "config", None), "_attn_implementation", None)
    dtype = autocast_dtype(getattr(model, "dtype", torch.float32), attention, device.type,
                           device.type == "cuda" and cuda_bf16())
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


def stop_ids(tokenizer: Any, stop_token_ids: Sequence[int] = ()) -> list[int]:
    """The token ids an answer stops at: the template's (end of turn, EOS), else the tokenizer's EOS."""
    return list(stop_token_ids) or ([tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else [])


def settings(tokenizer: Any, options: GenerationOptions, *, stop_token_ids: Sequence[int] = (), batch_size: int
             ) -> dict[str, Any]:
    """How answers were generated, as a results file records it: length, greedy or sampling, stops, batch size."""
    stops = stop_ids(tokenizer, stop_token_ids)
    sampling = {"temperature": options.temperature, "top_p": options.top_p, "top_k": options.top_k,
                "seed": options.seed} if options.sampling else {}
    return {"max_new_tokens": options.max_new_tokens, "greedy": not options.sampling, **sampling,
            "stop_token_ids": stops, "stop_tokens": tokenizer.convert_ids_to_tokens(stops),
            "stop_strings": list(options.stop), "batch_size": batch_size}


class StepClock(StoppingCriteria):
    """Times the first batch's token steps (it stops nothing) and says once how long all batches take at most:
    every answer running to max_new_tokens, every batch as slow as the first (the longest prompts)."""

    STEPS = 4  # token steps timed after the first (whose time is mostly the prompt's)

    def __init__(self, say: Callable[[str], None], description: str, prompts: int, batches: int, max_new_tokens: int):
        self.say, self.description = say, description
        self.prompts, self.batches, self.max_new_tokens = prompts, batches, max_new_tokens
        self.started, self.steps, self.said = None, [], False

    def start_batch(self) -> None:
        if self.started is None:
            self.started = time.perf_counter()

    def end_batch(self) -> None:
        if not self.said and self.started is not None:  # the first batch ended before STEPS steps: its own time
            took = time.perf_counter() - self.started
            self._estimate(took, f"the first batch took {took:.1f} s: about", "(as long where answers are longer)")

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        if not self.said:
            self.steps.append(time.perf_counter())
            if len(self.steps) > self.STEPS:
                step = (self.steps[-1] - self.steps[0]) / (len(self.steps) - 1)
                prompt = self.steps[0] - self.started
                self._estimate(prompt + step * (self.max_new_tokens - 1),
                               f"the first batch read its prompts in {prompt:.2f} s and takes {step:.2f} s per token: "
                               "at most about", "(less where answers stop early)")
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)

    def _estimate(self, batch_seconds: float, measured: str, caveat: str) -> None:
        self.said = True
        total = timedelta(seconds=round(batch_seconds * self.batches))
        batches = f"{self.batches} batch{'es' if self.batches > 1 else ''}"
        self.say(f"{self.description}: {self.prompts} prompts in {batches} of up to {self.max_new_tokens} new "
                 f"tokens; {measured} {total} {caveat}")


def _generate_batch(model: Any, tokenizer: Any, batch: list[list[int]], options: GenerationOptions,
                    stops: list[int], clock: StepClock | None = None, synced_gpus: bool = False) -> list[Completion]:
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stops[0]
    width = max(map(len, batch))
    input_ids = torch.tensor([[pad] * (width - len(x)) + x for x in batch], device=model.device)
    mask = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in batch], device=model.device)
    kwargs = generate_kwargs(tokenizer, options, stops, pad)
    if synced_gpus:
        kwargs["synced_gpus"] = True
    if clock is not None:
        kwargs["stopping_criteria"] = StoppingCriteriaList([clock])
        clock.start_batch()
    with torch.no_grad():
        out = model.generate(input_ids=input_ids, attention_mask=mask, **kwargs)
    if clock is not None:
        clock.end_batch()
    return [completion_of(tokenizer, row[width:].tolist(), len(prompt), options, set(stops))
            for row, prompt in zip(out, batch)]


def generate_kwargs(tokenizer: Any, options: GenerationOptions, stops: list[int], pad: int | None) -> dict[str, Any]:
    """transformers' generate settings for `options`: stop tokens, greedy or sampling, stop strings."""
    kwargs: dict[str, Any] = dict(max_new_tokens=options.max_new_tokens, pad_token_id=pad, eos_token_id=stops,
                                  use_cache=True, do_sample=options.sampling)
    if options.sampling:
        kwargs.update(temperature=options.temperature, top_p=options.top_p, top_k=options.top_k or None)
    else:  # greedy: no sampling settings (a model's generation_config may carry some)
        kwargs.update(temperature=None, top_p=None, top_k=None)
    if options.stop:
        kwargs.update(stop_strings=list(options.stop), tokenizer=tokenizer)
    return kwargs


def completion_of(tokenizer: Any, new: list[int], prompt_tokens: int, options: GenerationOptions,
                stops: set[int]) -> Completion:
    """The answer in `new` up to the first stop token or stop string (both left out)."""
    finish: Literal["stop", "length"] = "length"
    for k, token in enumerate(new):
        if token in stops:
            new, finish = new[:k], "stop"
            break
    text = tokenizer.decode(new, skip_special_tokens=True)
    cut = first_stop(text, options.stop)
    if cut is not None:
        text, finish = text[:cut], "stop"
        new = _tokens_within(tokenizer, new, text)
    return Completion(text=text, token_ids=new, prompt_tokens=prompt_tokens, finish_reason=finish)


def first_stop(text: str, stop: Sequence[str]) -> int | None:
    """Where the earliest stop string starts in `text`, or None."""
    found = [text.find(s) for s in stop if s and s in text]
    return min(found) if found else None


def _tokens_within(tokenizer: Any, ids: list[int], text: str) -> list[int]:
    """The shortest prefix of `ids` whose decoded text covers `text` (the tokens before a stop string)."""
    for k in range(len(ids) + 1):
        if len(tokenizer.decode(ids[:k], skip_special_tokens=True)) >= len(text):
            return ids[:k]
    return ids


def stream(
    model: Any,
    tokenizer: Any,
    prompt: str | Sequence[int],
    options: GenerationOptions = GenerationOptions(),
    *,
    stop_token_ids: Sequence[int] = (),
    add_special_tokens: bool = False,
    model_inputs: dict[str, Any] | None = None,
    special_tokens: bool = False,
) -> Iterator[str]:
    """The answer to one prompt as text pieces while it is generated (for chat and streamed replies).

    Text that might be the start of a stop string is held back until it is known not to be one.
    `model_inputs` go to the model beside the ids (a vision-language prompt's pixel_values ...).
    With `special_tokens` the pieces keep them (gpt-oss's channels are written in them), the stop token too.
    """
    from transformers import TextIteratorStreamer

    ids = encode_prompts(tokenizer, [prompt], add_special_tokens=add_special_tokens)[0]
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=not special_tokens)
    stops = list(stop_token_ids) or [tokenizer.eos_token_id]
    kwargs = generate_kwargs(tokenizer, options, stops, tokenizer.pad_token_id)
    kwargs.update(model_inputs or {}, streamer=streamer)
    if options.sampling and options.seed is not None:
        torch.manual_seed(options.seed)
    input_ids = torch.tensor([ids], device=model.device)
    failure: list[BaseException] = []
    cancelled = threading.Event()  # set when the caller stops reading: generation stops at the next token
    kwargs["stopping_criteria"] = StoppingCriteriaList([_Cancelled(cancelled)])

    def run() -> None:
        try:
            with torch.no_grad():
                model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), **kwargs)
        except BaseException as err:  # surfaced in the caller's thread below
            failure.append(err)
            streamer.end()

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    text, sent, stopped = "", 0, False
    try:
        for piece in streamer:
            if stopped:  # drain: generation ends on its own at the stop string
                continue
            text += piece
            cut = first_stop(text, options.stop)
            if cut is not None:
                if cut > sent:
                    yield text[sent:cut]
                sent, stopped = len(text), True
                continue
            safe = len(text) - held_back(text, options.stop)
            if safe > sent:
                yield text[sent:safe]
                sent = safe
    finally:  # also when the caller closes the stream early (a client that went away)
        cancelled.set()
        worker.join()
    if failure:
        raise failure[0]
    if first_stop(text, options.stop) is None and len(text) > sent:
        yield text[sent:]


class _Cancelled(StoppingCriteria):
    def __init__(self, event: threading.Event):
        self.event = event

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)


def held_back(text: str, stop: Sequence[str]) -> int:
    """How many trailing characters of `text` could begin a stop string."""
    longest = 0
    for s in stop:
        for k in range(min(len(s) - 1, len(text)), 0, -1):
            if text.endswith(s[:k]):
                longest = max(longest, k)
                break
    return longest


def loglikelihood(
    model: Any,
    tokenizer: Any,
    requests: Sequence[tuple[str, str]],
    *,
    batch_size: int = 16,
    add_special_tokens: bool = True,
    progress: bool = False,
    console: Any = None,
) -> list[tuple[float, bool]]:
    """For each (context, continuation): the summed log-probability of the continuation's tokens given the
    context, and whether greedy decoding would have produced exactly those tokens (lm-eval's pair).

    The continuation's tokens are those of the whole text after the context's tokens, so a word split
    across the boundary is scored as the tokenizer splits the whole text. Requests whose tokens differ only
    in the last one (the letters of a multiple-choice question) share one forward pass.
    """
    encoded = [_split(tokenizer, context, continuation, add_special_tokens) for context, continuation in requests]
    # The model reads each request's tokens but its last: requests with the same such prefix share a row.
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, (context, continuation) in enumerate(encoded):
        groups.setdefault(tuple(context + continuation[:-1]), []).append(i)
    prefixes = sorted(groups, key=len, reverse=True)
    results: list[tuple[float, bool]] = [(0.0, False)] * len(encoded)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    was_training = model.training
    model.eval()
    with TokenProgress(progress, console, "scoring", len(encoded), unit="items") as bar:
        for lo in range(0, len(prefixes), batch_size):
            rows = prefixes[lo: lo + batch_size]
            width = max(map(len, rows))
            # Left padding: every continuation ends at the last position, so the model computes logits (and
            # log-softmax) only over the last `keep` positions, not over the whole context.
            keep = max(len(encoded[i][1]) for r in rows for i in groups[r])
            input_ids = torch.tensor([[pad] * (width - len(r)) + list(r) for r in rows], device=model.device)
            mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], device=model.device)
            positions = (mask.cumsum(-1) - 1).clamp(min=0)
            with torch.no_grad():
                logits = _last_logits(model, input_ids, mask, positions, max(keep, 1))
            logprobs = torch.log_softmax(logits.float(), dim=-1)
            done = 0
            for row, prefix in enumerate(rows):
                for index in groups[prefix]:
                    continuation = encoded[index][1]
                    target = torch.tensor(continuation, dtype=torch.long, device=logprobs.device)
                    scores = logprobs[row, logprobs.shape[1] - len(continuation):]
                    total = scores.gather(-1, target[:, None]).sum().item()
                    greedy = bool((scores.argmax(-1) == target).all())
                    results[index] = (total, greedy)
                    done += 1
            bar.advance(done, sum(len(encoded[i][1]) for r in rows for i in groups[r]))
    model.train(was_training)
    return results


def _last_logits(model: Any, input_ids: Any, mask: Any, positions: Any, keep: int) -> Any:
    """The logits of the last `keep` positions (models without `logits_to_keep` compute all, then slice)."""
    try:
        logits = model(input_ids=input_ids, attention_mask=mask, position_ids=positions, use_cache=False,
                       logits_to_keep=keep).logits
    except TypeError:
        logits = model(input_ids=input_ids, attention_mask=mask, position_ids=positions, use_cache=False).logits
    return logits[:, -keep:]


def _split(tokenizer: Any, context: str, continuation: str, add_special_tokens: bool) -> tuple[list[int], list[int]]:
    """(context ids, continuation ids); the context keeps at least one token to predict the first from."""
    if context.endswith(" ") and continuation and not continuation.startswith(" "):
        context, continuation = context[:-1], " " + continuation  # the space belongs to the next word
    whole = tokenizer(context + continuation, add_special_tokens=add_special_tokens)["input_ids"]
    head = tokenizer(context, add_special_tokens=add_special_tokens)["input_ids"]
    if whole[: len(head)] != head:  # the boundary merged into one token: score the continuation on its own
        return head, tokenizer(continuation, add_special_tokens=False)["input_ids"]
    if not head:
        head = [tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id]
        whole = head + whole
    return head, whole[len(head):]


class TokenProgress:
    """A rich progress bar with items done and tokens per second, or nothing when not asked for."""

    def __init__(self, show: bool, console: Any, description: str, total: int, unit: str = "prompts"):
        self.show, self.console, self.description, self.total, self.unit = show, console, description, total, unit
        self.tokens, self.started = 0, time.perf_counter()

    def __enter__(self) -> "TokenProgress":
        if self.show:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                TextColumn(f"{self.unit} · {{task.fields[rate]}}"), TimeRemainingColumn(),
                                console=self.console, transient=False)
            self.bar.start()
            self.task = self.bar.add_task(self.description, total=self.total, rate="")
        return self

    def note(self, text: str) -> None:
        """A line printed above the bar (nothing when the bar is not shown)."""
        if self.show:
            self.bar.console.print(text)

    def advance(self, items: int, tokens: int) -> None:
        self.tokens += tokens
        if self.show:
            rate = self.tokens / max(time.perf_counter() - self.started, 1e-9)
            self.bar.update(self.task, advance=items, rate=f"{rate:.0f} tokens/s")

    def __exit__(self, *exc: Any) -> None:
        if self.show:
            self.bar.stop()
