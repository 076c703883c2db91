"""CHORD ("On-Policy RL Meets Off-Policy Experts: Harmonizing SFT and RL via Dynamic Weighting", Zhang et al.
2025): L = (1 - mu) L_GRPO + mu L_SFT, the expert (SFT) loss phi-weighted, mu rising to a peak and then
decaying on a cosine to a floor over the optimizer steps.

On-policy part, per optimizer step: the prompt of each expert sequence of the step (the tokens before its
last trained span), G answers sampled from the model itself (sftune.generation), a reward for each from the
callable named in train.chord.reward, advantages normalised within each prompt's group,
A = (r - mean) / (std + 1e-6) (std with Bessel's correction, as GRPO implementations do). Choices, where
the paper leaves room: one gradient update per batch of samples, so the PPO ratio is 1 and its clip is
inert and the GRPO gradient is -A * grad log p(token): computed as cross-entropy weighted by A; no KL term
(no reference model); the GRPO term is a token mean over every sampled answer token of the step
(end-of-turn token included when the answer stopped), the SFT term a token mean over the expert tokens,
both normalised once per optimizer step like the SFT loss.
"""

from __future__ import annotations

import importlib
import math
from typing import Any, Callable, Sequence

import torch

from sftune.encode import IGNORE
from sftune.packing import boundaries

ADVANTAGE_EPS = 1e-6


def mu_at(step: int, peak: float, valley: float, warmup_steps: int, decay_steps: int) -> float:
    """mu at optimizer step `step` (from 0): linear 0 -> peak over warmup_steps, then a cosine from peak
    to valley over decay_steps, then valley (the authors' schedule)."""
    if step < warmup_steps:
        return peak * step / warmup_steps
    if step >= warmup_steps + decay_steps:
        return valley
    progress = (step - warmup_steps) / decay_steps
    return valley + (peak - valley) * 0.5 * (1.0 + math.cos(math.pi * progress))


def exact_match_reward(prompts: Sequence[str], completions: Sequence[str], references: Sequence[str]
                       ) -> list[float]:
    """1.0 where the answer equals the reference: as parsed JSON when every reference is a JSON object (the
    demo's extraction check, sftune.evaluate.data_task.json_match_items), else after answer normalisation."""
    from sftune.evaluate import metrics
    from sftune.evaluate.data_task import json_match_items

    answers = [c.strip() for c in completions]
    scores = json_match_items(answers, list(references))
    return scores if scores is not None else metrics.exact_match_items(answers, list(references))


def load_reward(spec: str) -> Callable[..., list[float]]:
    """The callable of a `module:function` string (train.chord.reward)."""
    module_name, _, name = spec.partition(":")
    if not module_name or not name:
        raise ValueError(f"train.chord.reward={spec!r}: give it as module:function, e.g. my_rewards:correct "
                         "(a module on PYTHONPATH with def correct(prompts, completions, references) -> list[float])")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ValueError(f"train.chord.reward={spec!r}: cannot import module {module_name!r} ({err}); put its "
                         "folder on PYTHONPATH") from None
    fn = getattr(module, name, None)
    if not callable(fn):
        raise ValueError(f"train.chord.reward={spec!r}: module {module_name!r} has no function {name!r}")
    return fn


def expert_answers(batch: dict[str, torch.Tensor]) -> list[tuple[list[int], list[int]]]:
    """(prompt ids, answer ids) of each sequence of a batch (packed rows or padded rows): the answer is the
    sequence's last trained span (the last assistant turn with its end-of-turn token), the prompt all before."""
    from sftune.attention import sequence_bounds
    from sftune.packing import text_positions

    pairs = []
    for row in range(batch["input_ids"].shape[0]):
        ids, labels = batch["input_ids"][row].tolist(), batch["labels"][row].tolist()
        if "position_ids" in batch:
            bounds = sequence_bounds(text_positions(batch["position_ids"])[row], len(ids))
        else:
            length = int(batch["attention_mask"][row].sum()) if "attention_mask" in batch else len(ids)
            bounds = [(0, length)]
        for start, end in bounds:
            trained = [t for t in range(start, end) if labels[t] != IGNORE]
            if not trained:
                continue
            last = trained[-1]
            first = last
            while first - 1 >= start and labels[first - 1] != IGNORE:
                first -= 1
            if first > start:  # a prompt to answer
                pairs.append((ids[start:first], ids[first:last + 1]))
    return pairs


def group_advantages(rewards: torch.Tensor) -> torch.Tensor:
    """[prompts, G] rewards -> advantages normalised within each row (0 where all G rewards are equal)."""
    mean = rewards.mean(dim=1, keepdim=True)
    std = rewards.std(dim=1, keepdim=True) if rewards.shape[1] > 1 else torch.zeros_like(mean)
    return (rewards - mean) / (std + ADVANTAGE_EPS)


def packed_rollouts(prompts: list[list[int]], answers: list[list[int]], advantages: list[float]
                    ) -> dict[str, torch.Tensor] | None:
    """One padding-free row of prompt + answer sequences, the answers trained with weight = their advantage;
    None when every advantage is 0 (nothing to learn)."""
    ids, labels, positions, weights, lengths = [], [], [], [], []
    for prompt, answer, advantage in zip(prompts, answers, advantages):
        if advantage == 0.0 or not answer:
            continue
        lengths.append(len(prompt) + len(answer))
        ids += prompt + answer
        labels += [IGNORE] * len(prompt) + answer
        positions += list(range(len(prompt) + len(answer)))
        weights += [float(advantage)] * (len(prompt) + len(answer))
    if not ids:
        return None
    return {"input_ids": torch.tensor([ids]), "labels": torch.tensor([labels]),
            "position_ids": torch.tensor([positions]), "loss_weights": torch.tensor([weights]), **boundaries(lengths)}


def synced_sampling(processes: int, sharded: bool) -> bool:
    """Whether the rollouts must be sampled with every process stepping together (transformers' synced_gpus):
    with the weights sharded (FSDP, ZeRO-3) each forward pass gathers them from all processes, so a process
    whose answers ended first must go on running forward passes until all have ended, else the others wait
    forever. transformers turns it on by itself for ZeRO-3 and FSDP1 only, not for accelerate's FSDP2."""
    return sharded and processes > 1


def sample_rollouts(model: Any, tokenizer: Any, batches: list[dict[str, torch.Tensor]], settings: Any,
                    reward: Callable[..., list[float]], stop_token_ids: Sequence[int], *, synced_gpus: bool = False
                    ) -> tuple[list[dict[str, torch.Tensor] | None], int, list[float]]:
    """On-policy samples for the micro-batches of one optimizer step: (per micro-batch a packed rollout row
    or None, answer tokens sampled in the step (the GRPO term's denominator), the rewards). `synced_gpus`:
    see synced_sampling."""
    from sftune import generation

    per_batch = [expert_answers(b) for b in batches]
    if settings.prompts_per_step is not None:  # the first prompts of each micro-batch, in turn
        budget, kept = settings.prompts_per_step, [[] for _ in per_batch]
        while budget > 0 and any(len(k) < len(p) for k, p in zip(kept, per_batch)):
            for k, p in zip(kept, per_batch):
                if budget > 0 and len(k) < len(p):
                    k.append(p[len(k)])
                    budget -= 1
        per_batch = kept
    g = settings.samples_per_prompt
    flat = [pair for pairs in per_batch for pair in pairs]
    if not flat:
        return [None] * len(batches), 0, []
    options = generation.GenerationOptions(max_new_tokens=settings.max_new_tokens, temperature=settings.temperature)
    completions = generation.generate(model, tokenizer, [prompt for prompt, _ in flat for _ in range(g)], options,
                                      stop_token_ids=stop_token_ids, batch_size=max(16, g), synced_gpus=synced_gpus)
    stops = set(stop_token_ids)
    answers = []
    for k, completion in enumerate(completions):
        end_of_turn = flat[k // g][1][-1]  # the expert answer's own end-of-turn token
        stop = [end_of_turn if end_of_turn in stops else next(iter(stop_token_ids))]
        answers.append(completion.token_ids + (stop if completion.finish_reason == "stop" else []))
    rewards = reward(prompts=[tokenizer.decode(prompt, skip_special_tokens=True) for prompt, _ in flat for _ in range(g)],
                     completions=[c.text for c in completions],
                     references=[tokenizer.decode(answer, skip_special_tokens=True).strip()
                                 for _, answer in flat for _ in range(g)])
    if len(rewards) != len(completions):
        raise ValueError(f"train.chord.reward returned {len(rewards)} rewards for {len(completions)} completions; "
                         "it must return one float per completion")
    advantages = group_advantages(torch.tensor(rewards, dtype=torch.float32).view(-1, g)).flatten().tolist()
    rows, offset = [], 0
    for pairs in per_batch:
        n = len(pairs) * g
        rows.append(packed_rollouts([prompt for prompt, _ in pairs for _ in range(g)], answers[offset:offset + n],
                                    advantages[offset:offset + n]))
        offset += n
    return rows, sum(map(len, answers)), [float(r) for r in rewards]
