"""Data layer: read any known SFT format, validate it, convert it to Conversations.

    read(paths, *, format=None, columns=None, on_error="raise", quarantine=None,
         dataset_name=None, roles=None, cot_layout=None, task_templates=None,
         max_chars=1_000_000, report=None) -> Iterator[Conversation]
    check(paths, *, quarantine=None, max_chars=1_000_000, workers=None, **read options) -> Report
        Report: total, valid, invalid, reasons, examples, files (the same counts per file, with
        its format), notes, validation_rate, to_dict(); always on_error="skip"
    convert(paths, out, style="messages", *, on_error="skip", quarantine=None, workers=None,
            **read options) -> Report: every valid conversation written to `out` (JSONL)
    mix([(examples, weight_or_ratio), ...], seed=0, *, by="weight" | "ratio", total=None) -> list
    split(examples, *, val_ratio=None | val_count=None, seed=0) -> (train, val)
    read_mix([{"path": ..., "format": ..., "weight": ...}, ...], seed=0, **read options) -> list

Details: files.py (files -> raw records), load.py (reading), parallel.py (check and convert on
several processes), writers.py (output shapes), formats.py (each format's meaning), validate.py (the checks),
mix.py (mixing and splitting). Errors are DataError (a ValueError): file, line/record, field, fix.
"""

from sftune.data.errors import REASONS, DataError
from sftune.data.formats import FORMATS, detect
from sftune.data.load import Report, read
from sftune.data.parallel import check, convert
from sftune.data.mix import mix, read_mix, split
from sftune.data.schema import MODEL_ROLES, ROLES, Conversation, Message
from sftune.data.validate import validate

__all__ = [
    "Conversation",
    "Message",
    "ROLES",
    "MODEL_ROLES",
    "DataError",
    "REASONS",
    "FORMATS",
    "Report",
    "read",
    "check",
    "convert",
    "detect",
    "validate",
    "mix",
    "split",
    "read_mix",
]
