"""The folders the web UI may touch: its runs folder, the data roots (`--data-root`, default the working
directory it was started in) and the folder where gradio keeps uploaded files. Every path a browser sends
goes through `allowed` (or `run_folder`, `data_paths`, `model_name`) before anything reads, writes or starts
a process on it, with or without --auth: a page of another site, or another user of the machine, reaches
the UI on 127.0.0.1 too. Paths are resolved first (symlinks included), so a link inside a root that points
outside is outside."""

from __future__ import annotations

import glob
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from sftune.errors import UserError

GLOB_CHARS = "*?["


class OutsideError(UserError, PermissionError):
    """A path outside the folders this UI may touch; the message names the path, the folders and the fix.
    A PermissionError (an OSError): the tabs show it as they show a missing file."""


@dataclass(frozen=True)
class Roots:
    """The runs folder, the data roots and the upload folders, each resolved."""

    runs: Path
    data: tuple[Path, ...]
    uploads: tuple[Path, ...]

    @classmethod
    def of(cls, runs: str | Path, data_roots: Iterable[str | Path] = ()) -> "Roots":
        """The roots of a UI serving `runs`: the data roots given (none: the working directory) and gradio's
        upload folder (GRADIO_TEMP_DIR, default /tmp/gradio)."""
        from gradio.utils import get_upload_folder

        data = tuple(Path(d).expanduser().resolve() for d in data_roots) or (Path.cwd().resolve(),)
        return cls(Path(runs).expanduser().resolve(), data, (Path(get_upload_folder()).expanduser().resolve(),))

    def describe(self, *, runs_only: bool = False) -> str:
        if runs_only:
            return f"the runs folder {self.runs}"
        return "the folders this UI may read (" + ", ".join(str(p) for p in (self.runs, *self.data)) + ")"


def allowed(path: str | os.PathLike, roots: Roots, *, runs_only: bool = False, uploads: bool = True) -> Path:
    """`path` resolved (symlinks followed) when it is inside the runs folder, a data root or (with `uploads`)
    an upload folder; with `runs_only`, inside the runs folder alone. Raises OutsideError otherwise."""
    given = Path(path).expanduser()
    real = given.resolve()
    inside = (roots.runs,) if runs_only else (roots.runs, *roots.data, *(roots.uploads if uploads else ()))
    if any(real.is_relative_to(root) for root in inside):
        return real
    shown = f"{given} (a link to {real})" if real != given.absolute() else str(given)
    if runs_only:
        fix = "choose a run of the runs folder, or start `sftune webui --runs DIR` to serve another one"
    else:
        fix = "start `sftune webui --data-root DIR` to allow another folder"
    raise OutsideError(f"{shown} is outside {roots.describe(runs_only=runs_only)}; {fix}")


def run_folder(run: str | os.PathLike, roots: Roots) -> Path:
    """A run folder the browser named (resume, stop, progress, chat, evaluate, export): inside the runs folder."""
    return allowed(run, roots, runs_only=True)


def data_paths(paths: list[str], roots: Roots) -> list[str]:
    """Data paths as typed (files, folders, globs, `hub:` names), unchanged once every file they can reach is
    inside the roots: a folder's files, a glob's matches, the files a LLaMA-Factory dataset_info.json names."""
    from sftune.data.hub import is_hub

    for item in paths:
        if is_hub(item):
            continue
        if any(c in item for c in GLOB_CHARS):
            parts = Path(item).expanduser().parts
            head = next(k for k, part in enumerate(parts) if any(c in part for c in GLOB_CHARS))
            allowed(Path(*parts[:head]) if head else Path("."), roots)  # the folder the glob searches
            for match in glob.glob(os.path.expanduser(item), recursive=True):
                _reachable(Path(match), roots)
        else:
            _reachable(Path(item), roots)
    return paths


def _reachable(path: Path, roots: Roots, follow_info: bool = True) -> None:
    """path, and every file and folder under it (links included), inside the roots."""
    allowed(path, roots)
    if path.is_dir():
        for folder, subfolders, files in os.walk(path):
            for name in [*subfolders, *files]:
                allowed(Path(folder) / name, roots)
                if follow_info and name == "dataset_info.json":
                    _info_files(Path(folder) / name, roots)
    elif follow_info and path.name == "dataset_info.json":
        _info_files(path, roots)


def _info_files(info: Path, roots: Roots) -> None:
    """The files a LLaMA-Factory dataset_info.json names (file_name, relative to its folder, or absolute)."""
    try:
        entries = json.loads(info.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return  # the reader reports a broken file with its location
    if isinstance(entries, dict):
        for entry in entries.values():
            if isinstance(entry, dict) and isinstance(entry.get("file_name"), str):
                _reachable(info.parent / entry["file_name"], roots, follow_info=False)


def model_name(name: str, roots: Roots) -> str:
    """A model the browser named to read (a base to train, a model or run to chat with, a tokenizer): an
    embedded name or a hub id unchanged; a local folder (one that exists, or a name written as a path) inside
    the roots. A run folder is read like any model folder here; what writes into a run asks run_folder."""
    from sftune import models

    if not name or name in models.EMBEDDED:
        return name
    path = Path(name).expanduser()
    looks_local = path.is_absolute() or name.startswith(("~", ".")) or name.count("/") > 1 or "\\" in name
    if looks_local or path.exists():
        allowed(path, roots)
    return name  # else a hub id ("org/name"): nothing is read from the disk under that name


def image_ref(ref: str, roots: Roots) -> str:
    """An image of a record shown in the page (a data URL, or a local file inside the roots)."""
    if not ref.startswith("data:"):
        allowed(ref[len("file://"):] if ref.startswith("file://") else ref, roots)
    return ref
