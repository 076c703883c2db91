"""The on-disk cache of encoded datasets: a folder per fingerprint of everything that can change the
result (data, template, tokenizer, policy, max_len, this encoder's version), holding the rows as an
Arrow stream file that `datasets` memory-maps and the report beside it. A re-run reads the folder."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from sftune import scratch
from sftune.data.schema import Conversation
from sftune.templates import Template

CACHE_VERSION = "encode-v5"  # bumped when labels can change for the same inputs
DATA_FILE = "data.arrow"
REPORT_FILE = "report.json"


def _tokenizer_fingerprint(tokenizer: Any) -> str:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise TypeError("encode_dataset needs a fast tokenizer (a `tokenizers` backend); "
                        "load it with AutoTokenizer.from_pretrained(..., use_fast=True)")
    digest = hashlib.sha256(backend.to_str().encode())
    digest.update(json.dumps([tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token]).encode())
    return digest.hexdigest()


def _template_fingerprint(template: Template) -> str:
    stops = [template.stop_texts, template.append_stop] if template.stop_texts or template.append_stop else []
    stops += [template.append_stop_after_call] if template.append_stop_after_call else []
    stops += [template.kwargs] if template.kwargs else []
    return json.dumps([template.name, template.spec, template.jinja, template.bos, template.eos,
                       template.special_tokens, *stops], sort_keys=True, ensure_ascii=False)


def _record_key(conv: Conversation | dict) -> str:
    """Everything of a record that can change its encoding or its report line, as unambiguous text.

    Cheaper than JSON for the common case (a Conversation without tools or meta); content is
    length-prefixed so no text inside a message can imitate a field boundary.
    """
    if not isinstance(conv, Conversation):
        return json.dumps(conv, sort_keys=True, ensure_ascii=False)
    extra = json.dumps([conv.tools, conv.meta], sort_keys=True, ensure_ascii=False) if conv.tools or conv.meta else ""
    return "\x1e".join([extra, *(f"{m.role}|{m.train}|{m.weight}|{len(m.content)}|{m.content}"
                                 for m in conv.messages)])


def fingerprint(records: list, template: Template, tokenizer: Any, policy: str, max_len: int | None,
                options: str = "") -> str:
    """A short hash of everything an encoded dataset depends on (`options`: the reasoning options)."""
    digest = hashlib.sha256()
    for part in (CACHE_VERSION, _template_fingerprint(template), _tokenizer_fingerprint(tokenizer), policy,
                 str(max_len), options):
        digest.update(part.encode() + b"\0")
    digest.update("\x1d".join(map(_record_key, records)).encode("utf-8", "surrogatepass"))
    return digest.hexdigest()[:24]


def folder_for(fingerprint: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """The cache folder of a fingerprint (under $SFTUNE_HOME/cache/encoded unless cache_dir is given)."""
    if cache_dir is not None:
        return Path(cache_dir) / fingerprint
    from sftune.models import sftune_home

    return sftune_home() / "cache" / "encoded" / fingerprint


def load(folder: Path) -> tuple[Any, dict[str, Any]] | None:
    """(memory-mapped dataset, saved report fields) from a complete cache folder, or None."""
    import datasets

    if not (folder / REPORT_FILE).exists():
        return None
    report = json.loads((folder / REPORT_FILE).read_text())
    return datasets.Dataset.from_file(str(folder / DATA_FILE)), report


def writer_lock(folder: Path, timeout: float = 6 * 3600) -> Any:
    """An exclusive lock on the cache folder `folder` (a `<folder>.lock` file beside it): the one process
    that holds it encodes and writes; processes that wait for it read the finished folder afterwards."""
    from filelock import FileLock

    folder.parent.mkdir(parents=True, exist_ok=True)
    return FileLock(str(folder) + ".lock", timeout=timeout)


def save(folder: Path, table: Any, report: dict[str, Any]) -> Any:
    """Write the rows and the report into `folder` (atomically: a finished folder or none) and return the
    dataset memory-mapped from it."""
    import datasets

    with scratch.folder(folder.parent, prefix=".writing-") as work:  # a killed writer's folder: swept next time
        tmp = work / folder.name
        tmp.mkdir()
        write_arrow(table, tmp / DATA_FILE)
        (tmp / REPORT_FILE).write_text(json.dumps(report, ensure_ascii=False))
        if not folder.exists():
            tmp.rename(folder)
    return datasets.Dataset.from_file(str(folder / DATA_FILE))


def write_arrow(table: Any, path: Path) -> None:
    """An Arrow stream file, the format `datasets.Dataset.from_file` memory-maps."""
    import pyarrow as pa

    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table, max_chunksize=100_000)
