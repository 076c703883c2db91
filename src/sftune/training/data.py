"""The data a run trains on: data.train / data.eval read (and mixed), split, encoded, then batched
as the Trainer sees it (packed padding-free rows, or padded sequences)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from sftune import data
from sftune.config import Config, ConfigError, DataEntry
from sftune.data import files
from sftune.data.entries import read_entries
from sftune.encode import EncodeOptions, EncodeReport
from sftune.modality import Modality, text as text_modality, text_batches
from sftune.templates import Template
from sftune.training.loss import with_trained_index


@dataclass
class EncodedData:
    """The encoded training and held-out sets (held-out None when there is none), with their reports, the
    options both were encoded with (saved in the run folder for evaluation), and the held-out conversations
    themselves (eval.generate_metrics generates answers to them)."""

    train: Any
    eval: Any | None
    reports: dict[str, EncodeReport]
    options: EncodeOptions
    eval_conversations: list[data.Conversation] | None = None  # the held-out set as read (for generation)


def check_data_paths(cfg: Config) -> None:
    """Before the model loads: every file, folder or glob that data.train / data.eval names is there (a typo costs a
    second, not a model load and then the same error); a missing one is a ConfigError naming its key. output.dir
    may not be a data file or lie inside a data folder (files.refuse_overwrite): the run would write over the data,
    or the next run would read the run's own files as data. Data beside the run's own files is refused too; in a
    subfolder (held-out files kept with the run, runs/r/data/eval.jsonl) it is allowed."""
    for key in ("train", "eval"):
        inputs = []
        for entry in getattr(cfg.data, key):
            paths = entry.path if isinstance(entry, DataEntry) else entry
            try:
                inputs += [*([paths] if isinstance(paths, str) else paths), *files.expand(paths)]
            except FileNotFoundError as err:
                raise ConfigError(f"data.{key}: {err} ({cfg.named_in(f'data.{key}')})") from None
        try:
            files.refuse_overwrite(inputs, folders=True, holding=False, **{"output.dir": cfg.output.dir})
        except files.OverwriteError as err:
            raise ConfigError(f"data.{key} and output.dir: {err}") from None


def read_conversations(cfg: Config, template: Template) -> tuple[list[data.Conversation], list[data.Conversation]]:
    """(training conversations, held-out ones: data.eval, or a val_ratio share of data.train, or none). Every process
    reads the same rows in the same order, before the TrainingArguments are built (whether there is held-out data)."""
    d = cfg.data
    if not d.train:
        raise ConfigError("data.train is empty: give the SFT data files, e.g. data.train=[data/train.jsonl]")
    if d.instruction_position == "after" and template.effective_spec.get("user_with_input"):
        raise ConfigError(f"data.instruction_position=after: template {template.name!r} writes the instruction and "
                          "the input under their own headings (### Instruction / ### Input) from the first and the "
                          "second part of the user turn, so the input would be shown as the instruction; use a chat "
                          "template (data.template=chatml, or the model's own), or instruction_position=before")
    options = {"format": d.format, "columns": d.columns, "on_error": d.on_error,
               "instruction_position": d.instruction_position}
    conversations = read_entries(cfg, "train", options)
    if d.eval:
        return conversations, read_entries(cfg, "eval", options)
    if d.val_ratio > 0:
        return data.split(conversations, val_ratio=d.val_ratio, seed=d.seed)
    return conversations, []


def prepare_data(cfg: Config, tokenizer: Any, template: Template, *, console=None, modality: Modality | None = None,
                 replay: Callable[[int], list[dict[str, str]]] | None = None,
                 read: tuple[list[data.Conversation], list[data.Conversation]] | None = None) -> EncodedData:
    """Read (unless `read` holds read_conversations' result), split and encode data.train (and data.eval, or a
    val_ratio share of data.train) with the modality's encoder (the tokenizer's text encoder when None; an
    image-text one expands images into their tokens).

    `replay(task examples)` gives data.replay's pairs, mixed into the training part only.
    """
    d = cfg.data
    conversations, held_out = read if read is not None else read_conversations(cfg, template)
    if replay is not None and d.replay.ratio > 0:
        from sftune.training.replay import mix_in

        conversations = mix_in(conversations, replay(len(conversations)), d.replay.ratio, d.replay.seed)
    encoding = EncodeOptions.from_data(d)
    modality = modality or text_modality(tokenizer)
    sets, reports = {}, {}
    for name, convs in (("train", conversations), ("eval", held_out)):
        if not convs:
            sets[name] = None
            continue
        sets[name], reports[name] = modality.encode_dataset(convs, template, encoding)
        report = reports[name]
        if console is not None and report.skipped:
            console.print(f"[yellow]{name}: skipped {report.skipped} of {report.total} records: "
                          f"{report.skipped_by_reason}[/yellow]")
    if sets["train"] is None or len(sets["train"]) == 0:
        raise ConfigError("no training example is left after reading and encoding data.train; see the report above")
    return EncodedData(train=sets["train"], eval=sets["eval"], reports=reports, options=encoding,
                       eval_conversations=held_out or None)


def batches(dataset: Any, *, packing: bool, max_len: int, pad_token_id: int, modality: Modality | None = None
            ) -> tuple[Any, Any]:
    """(dataset as the Trainer sees it, collator) from the modality (text when None): packed rows and
    padding-free batches, or padded sequences; an image-text modality's batches carry the pixel inputs."""
    if dataset is None:
        return None, None
    rows_and_collate = modality.batches if modality is not None else text_batches
    rows, collate = rows_and_collate(dataset, packing=packing, max_len=max_len, pad_token_id=pad_token_id)
    return rows, with_trained_index(collate)
