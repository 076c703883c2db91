"""The first records of data files as training sees them, for `sftune data inspect` and the web UI's Data
tab (each only draws them): the template as training renders it (a stop sftune appends shows, trained), and
each record encoded by the model's modality, so images show as one masked run of image tokens each."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable, Iterator

from sftune import models, runs, templates
from sftune.data import read
from sftune.data.errors import where as where_from
from sftune.data.schema import Conversation
from sftune.encode import IGNORE, EncodeOptions
from sftune.errors import UserError
from sftune.modality import Modality
from sftune.templates import stops


class InspectError(UserError, ValueError):
    """Data that cannot be shown for this model (a record with images, a text-only model)."""


@dataclass
class Record:
    """One record as training sees it: where it is, the conversation read, and its encoding (input_ids,
    labels ...; None when no token is left to train: training skips it)."""

    where: str
    conversation: Conversation
    encoded: dict[str, Any] | None

    @property
    def trained(self) -> int:
        return sum(label != IGNORE for label in self.encoded["labels"]) if self.encoded else 0


@dataclass
class Inspection:
    """The template and modality records are encoded with, and the records (read and encoded lazily)."""

    checked: stops.Audit
    modality: Modality
    records: Iterator[Record]

    @property
    def template(self) -> templates.Template:
        return self.checked.template


def inspect(paths: list[str], model: str | os.PathLike, *, template: str | dict | None = None,
            template_kwargs: dict | None = None,
            options: EncodeOptions = EncodeOptions(), limit: int = 3, format: str | None = None,
            check: Callable[[Conversation], None] | None = None) -> Inspection:
    """The first `limit` records of `paths` encoded for `model` (a name, model folder or run folder) under
    `options` (policy, reasoning, max_len) with `template` (default: the model's own) and its switches
    `template_kwargs` (data.template_kwargs). `check(conversation)`
    runs before a record is encoded (the web UI checks its images are inside its roots)."""
    modality = runs.modality_of(model)
    checked = stops.audit(templates.get(template, modality.tokenizer, template_kwargs), modality.tokenizer,
                          stops.eos_ids(models.resolve(model)))
    return Inspection(checked, modality, _records(paths, model, checked.template, modality, options, limit, format,
                                                  check))


def _records(paths: list[str], model: Any, template: templates.Template, modality: Modality, options: EncodeOptions,
             limit: int, format: str | None, check: Callable[[Conversation], None] | None) -> Iterator[Record]:
    for k, conversation in enumerate(read(paths, format=format, syntax="cli")):
        if k >= limit:
            break
        where = where_from(conversation.meta, f"record {k}")
        if check is not None:
            check(conversation)
        if conversation.images and not modality.reads_images:
            raise InspectError(f"{where} has images, but {model} is a text-only model: pick a vision-language "
                               "model folder to inspect image-text data")
        yield Record(where, conversation, modality.encode(conversation, template, options))
