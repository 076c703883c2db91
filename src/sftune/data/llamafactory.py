"""LLaMA-Factory's dataset_info.json, read as it is, so that tool's users switch without converting.

Each entry names a file (`file_name`, relative to the dataset_info.json folder), a `formatting`
(alpaca, the default, or sharegpt / openai), `columns` (LLaMA-Factory's names: prompt, query,
response, history, system for alpaca; messages, system, tools for sharegpt) and `tags` (role_tag,
content_tag, user_tag, assistant_tag, observation_tag, function_tag, system_tag). They become the
same format / columns / roles options `read` takes. An alpaca entry that maps only `prompt` (the
pre-training layout, e.g. c4_demo) is plain text. An `images` column is read with its `<image>`
placeholders (paths relative to the dataset_info.json folder, as LLaMA-Factory's media_dir
default). Ranking entries (`ranking: true`, with `chosen` and `rejected` columns) are preference
data: read when reading preference data, as SFT data they are refused. A Hugging Face Hub entry
(`hf_hub_url`, with its `subset` and `split`) is read through `datasets` (hub.py) when it is named
(data.train entry `datasets: [...]`, `--dataset`); reading every entry leaves it out, so that pointing
at LLaMA-Factory's data folder downloads nothing. Other hubs (ModelScope, Modelers), scripts, a hub
`folder`, KTO data (kto_tag) and video/audio columns cannot be trained here: named explicitly they
raise, and when reading every entry they are left out with a warning that lists them.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, ValidationError

from sftune.data import hub
from sftune.data.errors import DataError

logger = logging.getLogger("sftune.data")

ALPACA_COLUMNS = {"prompt": "instruction", "query": "input", "response": "output", "system": "system", "history": "history"}
SHAREGPT_COLUMNS = {"messages": "conversations", "system": "system", "tools": "tools"}
TAG_ROLES = {
    "user_tag": "user",
    "assistant_tag": "assistant",
    "observation_tag": "tool",
    "function_tag": "tool_call",
    "system_tag": "system",
}
MEDIA_COLUMNS = ("videos", "audios")


class Entry(BaseModel):
    """The fields of one entry that sftune reads, with the types LLaMA-Factory gives them (others are kept as
    they are: LLaMA-Factory adds fields over time)."""

    model_config = ConfigDict(extra="allow", strict=True)
    file_name: Optional[str] = None
    hf_hub_url: Optional[str] = None
    subset: Optional[str] = None
    split: Optional[str] = None
    folder: Optional[str] = None
    formatting: Optional[Literal["alpaca", "sharegpt", "openai"]] = None
    ranking: Optional[bool] = None
    columns: Optional[dict[str, str]] = None
    tags: Optional[dict[str, str]] = None


def _validated(info: Any, info_path: Path) -> dict[str, dict]:
    """The entries of a parsed dataset_info.json, each checked against Entry; a DataError names the entry and field."""
    if not isinstance(info, dict):
        raise DataError("wrong_type", "", f"holds a JSON {type(info).__name__}, not an object of named entries",
                        'write {"my_data": {"file_name": "data.json"}, ...}, as LLaMA-Factory does',
                        source=str(info_path))
    for name, entry in info.items():
        try:
            Entry.model_validate(entry)
        except ValidationError as err:
            first = err.errors()[0]
            place = ".".join(str(part) for part in (name, *first["loc"]))
            given = first.get("input")
            raise DataError("wrong_type", place, f"is {type(given).__name__} {str(given)[:60]!r}: {first['msg']}",
                            "give each entry an object whose file_name is a path (text), columns and tags objects of "
                            "text, formatting alpaca / sharegpt / openai, ranking true or false (LLaMA-Factory's "
                            "data/README.md)", source=str(info_path)) from None
        file_name = entry.get("file_name")
        if file_name is not None and (Path(info_path).parent / file_name).resolve() == Path(info_path).resolve():
            raise DataError("wrong_type", f"{name}.file_name", f"is {file_name!r}, the dataset_info.json itself",
                            "point file_name at the entry's data file", source=str(info_path))
    return info


def _unsupported(entry: dict, preference: bool = False, named: bool = False) -> str | None:
    if "file_name" not in entry and "hf_hub_url" in entry and "folder" in entry:
        return "a folder of a hub dataset (folder); download it and point file_name at the files"
    if "file_name" not in entry and "hf_hub_url" in entry and not named:
        return "a Hugging Face Hub dataset; name it (datasets: [...] or --dataset) to read it from the hub"
    if "file_name" not in entry and "hf_hub_url" not in entry:
        return "a dataset of another hub or a script (no file_name or hf_hub_url); download it and point file_name at the files"
    if entry.get("ranking") and not preference:
        return "preference data (ranking), not SFT data"
    if preference and not entry.get("ranking"):
        return "SFT data, not preference data (no ranking: true)"
    columns = entry.get("columns") or {}
    if "kto_tag" in columns:
        return "KTO preference data (kto_tag), not SFT data"
    media = [c for c in MEDIA_COLUMNS if c in columns]
    if media:
        return f"video or audio ({', '.join(media)}); sftune trains on text and images"
    return None


def _entry_source(name: str, entry: dict, folder: Path) -> dict[str, Any]:
    """One entry -> the arguments for reading its files: path, format, columns, options, dataset."""
    formatting = entry.get("formatting", "alpaca")
    columns = entry.get("columns") or {}
    options: dict[str, Any] = {}
    ranking = {"chosen": columns.get("chosen", "chosen"), "rejected": columns.get("rejected", "rejected")}
    if formatting == "alpaca" and entry.get("ranking"):
        fmt = "preference"
        merged = {**ALPACA_COLUMNS, **columns}
        mapped = {ours: merged[theirs] for theirs, ours in (
            ("prompt", "instruction"), ("query", "input"), ("system", "system"), ("history", "history"))}
        mapped.update(ranking)
    elif formatting == "alpaca":
        if "prompt" in columns and not any(k in columns for k in ("query", "response", "history")):
            fmt, mapped = "text", {"text": columns["prompt"]}
        else:
            fmt = "alpaca"
            merged = {**ALPACA_COLUMNS, **columns}
            mapped = {ours: merged[theirs] for theirs, ours in (
                ("prompt", "instruction"), ("query", "input"), ("response", "output"),
                ("system", "system"), ("history", "history"),
            )}
    elif formatting in ("sharegpt", "openai"):
        fmt = "sharegpt"
        default_messages = "messages" if formatting == "openai" else "conversations"
        merged = {**SHAREGPT_COLUMNS, "messages": default_messages, **columns}
        mapped = {"conversations": merged["messages"], "system": merged["system"], "tools": merged["tools"]}
        if entry.get("ranking"):
            fmt = "preference"
            mapped.update(ranking)
        tags = entry.get("tags") or {}
        if "role_tag" in tags:
            options["role_key"] = tags["role_tag"]
        if "content_tag" in tags:
            options["content_key"] = tags["content_tag"]
        roles = {tags[tag]: role for tag, role in TAG_ROLES.items() if tag in tags}
        if roles:
            options["roles"] = roles
    else:
        raise DataError(
            "unsupported",
            f"{name}.formatting",
            f"is {formatting!r}",
            "use alpaca, sharegpt or openai, as LLaMA-Factory does",
        )
    if "images" in columns:
        mapped["images"] = columns["images"]
    path = folder / entry["file_name"] if "file_name" in entry else hub.spec(
        entry["hf_hub_url"], entry.get("subset"), entry.get("split", "train"))
    return {"path": path, "format": fmt, "columns": mapped, "options": options, "dataset": name}


def entry_files(entry: dict[str, Any], info_path: Path) -> list[Path | str]:
    """The data files of one entry (a file, folder or glob); a glob that also matches a dataset_info.json
    leaves it out, and an entry that names only such files is refused."""
    from sftune.data.files import expand, kind_of

    found = expand(entry["path"])
    data = [path for path in found if kind_of(path) != "llamafactory"]
    if not data:
        raise DataError("missing_field", f"{entry['dataset']}.file_name",
                        f"matches only {', '.join(map(str, found))}, a dataset list and not data",
                        "point file_name at the entry's data files", source=str(info_path))
    return data


def sources(info_path: Path, names: str | None = None, preference: bool = False) -> list[dict[str, Any]]:
    """The readable entries of a dataset_info.json (all, or those named, comma-separated): the SFT
    entries, or with `preference` the ranking ones."""
    try:
        info = json.loads(Path(info_path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise DataError(
            "broken_json", "", f"is not valid JSON ({err.msg} at line {err.lineno})", "fix the JSON",
            source=str(info_path),
        ) from None
    except (ValueError, RecursionError) as err:
        raise DataError("broken_json", "", f"cannot be read as JSON ({type(err).__name__}: {str(err)[:200]})",
                        "save it as UTF-8 JSON", source=str(info_path)) from None
    info = _validated(info, Path(info_path))
    folder = Path(info_path).parent
    if names:
        wanted = [n.strip() for n in names.split(",") if n.strip()]
        missing = [n for n in wanted if n not in info]
        if missing:
            raise DataError(
                "missing_field", ", ".join(missing), "is not an entry of dataset_info.json",
                f"pick from: {', '.join(info)}", source=str(info_path),
            )
    else:
        wanted = list(info)
    out, left_out = [], []
    for name in wanted:
        reason = _unsupported(info[name], preference, named=bool(names))
        if reason:
            if names:
                raise DataError("unsupported", name, f"is {reason}", "choose another entry", source=str(info_path))
            left_out.append(f"{name} ({reason})")
            continue
        out.append(_entry_source(name, info[name], folder))
    if left_out:
        logger.warning("%s: not read: %s", info_path, "; ".join(left_out))
    return out
