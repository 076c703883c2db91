"""Datasets on the Hugging Face Hub, named wherever a data path goes as `hub:ORG/NAME[/SUBSET][:SPLIT]`.

    hub:tatsu-lab/alpaca                   the train split
    hub:openai/gsm8k/main:test             subset (configuration) main, split test
    hub:tatsu-lab/alpaca:train[:1000]      a slice, as `datasets` writes it

Loaded by `datasets.load_dataset`, which downloads once into its own cache (HF_HOME) and reads that
cache offline (HF_HUB_OFFLINE=1); the rows are then read like any Arrow file, with the same format
detection, column mapping and checks as a local file.
"""

from __future__ import annotations

import functools
import re
from typing import Any

from sftune.data.errors import DataError

PREFIX = "hub:"
# ORG/NAME (a hub repository id), then an optional /SUBSET, then an optional :SPLIT (slices allowed).
SPEC = re.compile(r"hub:(?P<repo>[\w.-]+/[\w.-]+)(?:/(?P<subset>[^/:]+))?(?::(?P<split>[^:\[]+(?:\[[^\]]*\])?))?")
EXAMPLE = "hub:ORG/NAME, hub:ORG/NAME:SPLIT or hub:ORG/NAME/SUBSET:SPLIT (e.g. hub:tatsu-lab/alpaca:train)"


def is_hub(path: Any) -> bool:
    return isinstance(path, str) and path.startswith(PREFIX)


def parse(spec: str) -> tuple[str, str | None, str]:
    """(repository id, subset or None, split) of a `hub:` name."""
    match = SPEC.fullmatch(spec.strip())
    if match is None:
        raise DataError("hub_unavailable", "", "is not a hub dataset name", f"write {EXAMPLE}", source=spec)
    return match["repo"], match["subset"], match["split"] or "train"


def spec(repo: str, subset: str | None = None, split: str | None = None) -> str:
    """The `hub:` name of a repository's subset and split (parse's inverse)."""
    return f"{PREFIX}{repo}{f'/{subset}' if subset else ''}{f':{split}' if split else ''}"


def load(name: str) -> Any:
    """The `datasets.Dataset` a `hub:` name stands for, loaded (or read from the cache) now."""
    repo, subset, split = parse(name)
    return _load(repo, subset, split, name)


@functools.lru_cache(maxsize=16)  # planned, then read: one load (and one hub request online) per process
def _load(repo: str, subset: str | None, split: str, name: str) -> Any:
    import datasets

    try:
        return datasets.load_dataset(repo, subset, split=split)
    except ConnectionError as err:  # offline (HF_HUB_OFFLINE=1, or no network) and not in the cache
        raise DataError(
            "hub_unavailable", "", f"cannot be reached and is not in the datasets cache ({datasets.config.HF_DATASETS_CACHE})"
            f": {err}", "load it once on a machine that is online (the same HF_HOME), or download the files and "
            "name them instead", source=name) from None
    except (FileNotFoundError, ValueError, RuntimeError) as err:  # no such repository, subset or split; gated; a script
        raise DataError(
            "hub_unavailable", "", f"cannot be loaded: {str(err)[:500]}",
            f"check the repository id, subset and split ({EXAMPLE}); for a gated or private dataset set HF_TOKEN",
            source=name) from None

