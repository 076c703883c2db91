"""EncodeOptions: everything besides the data, template and tokenizer that decides the ids and labels of an
encoded dataset, as one frozen value.

Training builds it once from its config's data section (`from_data`), encodes with it and saves it in the
run folder (encode_options.json); evaluation reads it back (`for_run`), so a run is scored under the labels it
was trained on. A run folder written before the file existed gets the values of its saved config.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from sftune.encode.labels import POLICIES, REASONING

FILE = "encode_options.json"
# More messages than this in one conversation is no real training record (the longest agent trajectories
# have hundreds); it is skipped, counted as too_many_turns (data.max_turns, `data encode --max-turns`).
MAX_TURNS = 10_000


@dataclass(frozen=True)
class EncodeOptions:
    """How conversations become input_ids and labels (see labels.py, reasoning.py and dataset.py):
    the masking policy, which parts of a think block are trained, one example per reasoning exchange,
    the longest sequence (None: no truncation) and the most messages a conversation may have."""

    policy: str = "assistant"
    reasoning: str = "think_and_answer"
    train_empty_think: bool = False
    split_reasoning_turns: bool = True
    max_len: int | None = None
    max_turns: int | None = MAX_TURNS

    def __post_init__(self) -> None:
        if self.policy not in POLICIES:
            raise ValueError(f"unknown masking policy {self.policy!r}; use one of {', '.join(POLICIES)}")
        if self.reasoning not in REASONING:
            raise ValueError(f"unknown reasoning option {self.reasoning!r}; use one of {', '.join(REASONING)}")

    @classmethod
    def from_data(cls, data: Any) -> EncodeOptions:
        """The options of a config's data section (sftune.config.DataSection)."""
        return cls(policy=data.policy, reasoning=data.reasoning, train_empty_think=data.train_empty_think,
                   split_reasoning_turns=data.split_reasoning_turns, max_len=data.max_len, max_turns=data.max_turns)

    def save(self, folder: str | Path) -> Path:
        """Write FOLDER/encode_options.json; returns its path."""
        path = Path(folder) / FILE
        path.write_text(json.dumps(asdict(self), indent=2) + "\n", encoding="utf-8")
        return path


def load(path: str | Path) -> EncodeOptions:
    """The options saved at `path` (an encode_options.json); a field this version does not know is an error
    naming the file, not dropped (labels decided by it would be lost)."""
    values = json.loads(Path(path).read_text(encoding="utf-8"))
    known = {f.name for f in fields(EncodeOptions)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"{path}: unknown encoding option(s) {', '.join(unknown)} (known: {', '.join(sorted(known))}); "
                         "it was written by a newer sftune: upgrade sftune to evaluate this run")
    try:
        return EncodeOptions(**values)
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None


def for_run(run_dir: str | Path | None, data: Any) -> EncodeOptions:
    """How the run in `run_dir` encoded its data: its saved encode_options.json, else (a run folder from before
    the file existed, or no run folder) the options of `data`, its config's data section."""
    if run_dir is not None and (Path(run_dir) / FILE).is_file():
        return load(Path(run_dir) / FILE)
    return EncodeOptions.from_data(data)
