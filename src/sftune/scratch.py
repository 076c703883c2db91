"""What a killed sftune process must not leave behind: its scratch folders and its worker processes.

    with scratch.folder(parent, prefix=".writing-") as tmp:   # removed on exit, and swept if we are killed
        ...
    scratch.die_with_parent(parent_pid)                        # first thing in a forked worker (Linux)

A scratch folder is locked (flock on the folder itself) for as long as its process lives, and then marked
with MARKER. The kernel drops the lock when the process ends, however it ends (kill -9 too), so the next
`folder()` in the same parent with the same prefix finds a marked folder it can lock and removes it: a
killed run's leftovers go at the next start. An unmarked folder is never touched (it is not ours, or its
owner has not locked it yet). Forked workers share the lock: a folder is not swept while one of them lives.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import glob
import logging
import os
import shutil
import signal
import tempfile
from pathlib import Path
from typing import Iterator

log = logging.getLogger("sftune")

MARKER = ".sftune-scratch"  # inside each scratch folder: the pid that made it
PR_SET_PDEATHSIG = 1


def _lock(path: Path, *, wait: bool) -> int | None:
    """An fd holding an exclusive flock on the folder `path`, or None where another process holds it."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
    except OSError as err:
        os.close(fd)
        if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            return None
        raise
    return fd


def sweep(parent: str | os.PathLike, prefix: str) -> list[Path]:
    """Remove the scratch folders `parent/prefix*` whose process has ended; returns those removed."""
    removed = []
    try:
        candidates = sorted(Path(parent).glob(f"{glob.escape(prefix)}*"))
    except OSError:
        return removed
    for path in candidates:
        if not (path / MARKER).is_file() or path.is_symlink():
            continue
        try:
            fd = _lock(path, wait=False)
        except OSError:
            continue
        if fd is None:  # its process (or a worker it forked) is alive
            continue
        try:
            shutil.rmtree(path, ignore_errors=True)
        finally:
            os.close(fd)
        log.info("removed %s, left by a process that ended without cleaning up", path)
        removed.append(path)
    return removed


@contextlib.contextmanager
def folder(parent: str | os.PathLike | None = None, prefix: str = "sftune-") -> Iterator[Path]:
    """A new folder `parent/prefix*` (parent None: the system's temporary folder), removed when the block ends;
    if this process is killed first, the next `folder()` with the same parent and prefix removes it."""
    parent = Path(parent) if parent is not None else Path(tempfile.gettempdir())
    parent.mkdir(parents=True, exist_ok=True)
    sweep(parent, prefix)
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    try:
        fd = _lock(path, wait=True)  # before the marker: a sweep never sees a marked folder that is not locked yet
    except OSError as err:  # a file system without locks (some network mounts): never marked, never swept
        log.debug("no lock on %s (%s): it is removed when this process ends normally only", path, err)
        fd = None
    try:
        if fd is not None:
            (path / MARKER).write_text(f"{os.getpid()}\n")
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
        if fd is not None:
            os.close(fd)


def die_with_parent(parent_pid: int) -> None:
    """In a forked worker: be killed when the thread that forked it ends (Linux), so a killed run leaves no worker
    behind; ends at once if `parent_pid` is already gone. Elsewhere (no prctl) nothing changes."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        return
    if os.getppid() != parent_pid:  # the parent died before the prctl: no signal will come
        os._exit(1)
