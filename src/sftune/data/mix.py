"""Mixing several datasets, and the train/validation split; both deterministic per seed.

    mix(datasets, seed=0, *, by="weight", total=None) -> list
        datasets: [(examples, number), ...] where examples is a list (or any iterable) of
        Conversations (or anything else).
        by="weight": `number` multiplies the dataset's size: 2.0 takes every example twice, 0.5 a
        seeded half, 1.5 every example once plus a seeded half. `total` is not used.
        by="ratio": `number`s are the shares of the result (normalized to sum 1, e.g. 0.6 / 0.3 /
        0.1). `total` defaults to the largest size reachable without repeating any example; with a
        larger `total` a short dataset is repeated (whole copies, then a seeded sample).
        The result is shuffled with the seed.

    split(examples, *, val_ratio=None, val_count=None, seed=0) -> (train, val)
        A seeded shuffle, then the first val_count (or round(val_ratio * n)) examples are val.

    read_mix(entries, seed=0, **read_options) -> list[Conversation]
        A training config `data: {train: [{path, format, weight}], val_ratio: 0.1}` is
        `train, val = split(read_mix(config["train"], seed), val_ratio=0.1, seed=seed)`.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Sequence
from typing import Any, TypeVar

T = TypeVar("T")


def _take(examples: Sequence[T], count: int, rng: random.Random) -> list[T]:
    """`count` examples: whole copies of the dataset, then a sample without repeats for the rest."""
    copies, rest = divmod(count, len(examples)) if examples else (0, 0)
    return list(examples) * copies + rng.sample(list(examples), rest)


def _largest_remainder(shares: list[float], total: int) -> list[int]:
    """Integer counts proportional to shares that sum exactly to total."""
    raw = [share * total for share in shares]
    counts = [math.floor(value) for value in raw]
    order = sorted(range(len(raw)), key=lambda i: raw[i] - counts[i], reverse=True)
    for i in order[: total - sum(counts)]:
        counts[i] += 1
    return counts


def mix(
    datasets: Sequence[tuple[Iterable[T], float]],
    seed: int = 0,
    *,
    by: str = "weight",
    total: int | None = None,
) -> list[T]:
    """Several datasets into one shuffled list, by size multipliers or by target shares."""
    if by not in ("weight", "ratio"):
        raise ValueError(f"by is {by!r}; use 'weight' (size multipliers) or 'ratio' (shares of the result)")
    rng = random.Random(seed)
    parts = [(list(examples), float(number)) for examples, number in datasets]
    for i, (examples, number) in enumerate(parts):
        if number < 0 or math.isnan(number):
            raise ValueError(f"dataset {i}: {by} is {number}; use a number >= 0")
        if not examples and number > 0:
            raise ValueError(f"dataset {i} is empty but has {by} {number}; remove it or check its path")
    if by == "weight":
        counts = [round(number * len(examples)) for examples, number in parts]
    else:
        shares_sum = sum(number for _, number in parts)
        if shares_sum <= 0:
            raise ValueError("ratios sum to 0; give at least one dataset a positive ratio")
        shares = [number / shares_sum for _, number in parts]
        if total is None:
            total = int(min(len(examples) / share for (examples, _), share in zip(parts, shares) if share > 0))
        counts = _largest_remainder(shares, total)
    mixed: list[T] = []
    for (examples, _), count in zip(parts, counts):
        mixed.extend(_take(examples, count, rng))
    rng.shuffle(mixed)
    return mixed


def split(
    examples: Iterable[T],
    *,
    val_ratio: float | None = None,
    val_count: int | None = None,
    seed: int = 0,
) -> tuple[list[T], list[T]]:
    """A seeded train/validation split by ratio or by count (give one of them)."""
    items: list[Any] = list(examples)
    if (val_ratio is None) == (val_count is None):
        raise ValueError("give exactly one of val_ratio (e.g. 0.1) or val_count (e.g. 500)")
    if val_ratio is not None:
        if not 0 <= val_ratio < 1:
            raise ValueError(f"val_ratio is {val_ratio}; use a number in [0, 1)")
        val_count = round(val_ratio * len(items))
    if not 0 <= val_count <= len(items):
        raise ValueError(f"val_count is {val_count} but there are {len(items)} examples")
    order = list(range(len(items)))
    random.Random(seed).shuffle(order)
    val = [items[i] for i in sorted(order[:val_count])]
    train = [items[i] for i in sorted(order[val_count:])]
    return train, val


def read_mix(entries: Sequence[dict[str, Any]], seed: int = 0, **read_options: Any) -> list:
    """A config's dataset list -> one mixed list of Conversations.

    entries: [{"path": ..., "format"?, "columns"?, "roles"?, ..., "weight"? | "ratio"?, "datasets"?}, ...];
    every key but weight / ratio is passed to read() (as are read_options, e.g. on_error, report);
    "datasets" names the entries of a LLaMA-Factory dataset_info.json to read (read's dataset_name).
    Entries with "ratio" mix by ratio (then every entry needs one), else by weight (default 1.0).
    """
    from sftune.data.load import read

    with_ratio = [entry for entry in entries if "ratio" in entry]
    if with_ratio and len(with_ratio) != len(entries):
        raise ValueError("give every dataset a ratio, or none (then weights are used, default 1.0)")
    by = "ratio" if with_ratio else "weight"
    datasets = []
    for entry in entries:
        if "path" not in entry:
            raise ValueError(f"dataset entry {entry} has no path")
        options = {key: value for key, value in entry.items() if key not in ("weight", "ratio")}
        paths = options.pop("path")
        if "datasets" in options:
            options["dataset_name"] = ",".join(options.pop("datasets"))
        datasets.append((list(read(paths, **{**read_options, **options})), entry.get(by, 1.0)))
    return mix(datasets, seed, by=by)
