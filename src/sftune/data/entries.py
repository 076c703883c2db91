"""A configuration's data section read: data.train or data.eval -> Conversations (or Pairs), the same for
training, preference training and evaluation's held-out task."""

from __future__ import annotations

from typing import Any, Literal

from sftune.config import Config, ConfigError, DataEntry
from sftune.data import files
from sftune.data.load import read
from sftune.data.mix import read_mix
from sftune.data.schema import Conversation


def read_entries(cfg: Config, key: Literal["train", "eval"], options: dict[str, Any]) -> list[Conversation]:
    """data.train or data.eval -> Conversations; a missing file is a ConfigError naming the key and its origin.

    Plain paths are read in order. Entries with their own options (weight or ratio, format, columns,
    the datasets of a dataset_info.json) are read and mixed by `sftune.data.read_mix`, seeded by data.seed.
    """
    entries: list[str | DataEntry] = getattr(cfg.data, key)
    try:
        with files.reading_limits(cfg.data.max_record_mb, cfg.data.max_unpacked_gb, cfg.data.max_ratio):
            if all(isinstance(entry, str) for entry in entries):
                return list(read(entries, **options))
            mixed = [{"path": entry} if isinstance(entry, str) else entry.model_dump(exclude_none=True)
                     for entry in entries]
            return read_mix(mixed, cfg.data.seed, **options)
    except FileNotFoundError as err:
        raise ConfigError(f"data.{key}: {err} ({cfg.named_in(f'data.{key}')})") from None
