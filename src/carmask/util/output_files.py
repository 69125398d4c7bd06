"""Output paths: checked before any work starts, and locked while a job writes them.

A job that runs for hours must not find out at the end that its output is a folder, or that a
second job has been writing the same file: both are checked before the model is loaded, and the
lock (`OUT.lock`, holding the writer's pid) is held for the whole run.
"""

from __future__ import annotations

import fcntl
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class OutputError(RuntimeError):
    """An output path that cannot be written, or one another process is writing."""


def check_output_file(path: str | Path, what: str = "output") -> Path:
    """Raise OutputError unless `path` can become a file: not a folder, and its nearest existing
    parent a folder (mkdir would fail on a file there, after the work was done)."""
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{path}: the {what} is a folder; give a file name")
    _check_parents(path, what)
    return path


def check_output_dir(path: str | Path, what: str = "output folder") -> Path:
    """Raise OutputError unless `path` is a folder or can be made one."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputError(f"{path}: the {what} is a file, not a folder")
    _check_parents(path, what)
    return path


def refuse_replacing(paths, what: str, overwrite: bool) -> None:
    """The one rule for every command's outputs: none is replaced without --overwrite, and each
    command checks before any work. OutputError names the first of `paths` that exists."""
    if overwrite:
        return
    existing = [Path(p) for p in paths if Path(p).exists() or Path(p).is_symlink()]
    if existing:
        more = f" (and {len(existing) - 1} more)" if len(existing) > 1 else ""
        raise OutputError(f"{existing[0]} exists{more}: the {what} would replace it; "
                          "--overwrite replaces it")


def _check_parents(path: Path, what: str) -> None:
    for parent in path.absolute().parents:
        if parent.exists():
            if not parent.is_dir():
                raise OutputError(f"{path}: cannot write the {what}: {parent} is a file, not a folder")
            if not os.access(parent, os.W_OK | os.X_OK):
                raise OutputError(f"{path}: cannot write the {what}: {parent} is not writable")
            return
        if parent.is_symlink():
            raise OutputError(f"{path}: cannot write the {what}: {parent} is a broken link")


# -- the lock ----------------------------------------------------------------------------------
_held: dict[Path, list] = {}  # lock file -> [fd, depth]: re-entrant within this process
_held_lock = threading.Lock()


def lock_path(output: str | Path) -> Path:
    """The lock file of an output: `NAME.lock` beside it, whichever way the path is spelt
    (`masks/`, `./masks`, a link to it); inside it for the root folder, which has no name."""
    output = Path(output).resolve()
    return output.with_name(output.name + ".lock") if output.name else output / ".carmask.lock"


@contextmanager
def output_lock(output: str | Path) -> Iterator[Path]:
    """Hold an exclusive lock on `output` (a file or a folder) for the block.

    Another process holding it raises OutputError naming that process's pid. The same process
    may take it again (the command line takes it before loading the model, the submission
    writer again inside). The lock is an flock, so a killed holder releases it at once.
    """
    path = lock_path(output)
    acquire(path, output)
    try:
        yield path
    finally:
        release(path)


def acquire(path: Path, output: str | Path | None = None) -> None:
    """Take the lock file `path` (see output_lock); `output` is the path named in the error."""
    with _held_lock:
        if path in _held:
            _held[path][1] += 1
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.read(fd, 64).decode("ascii", "replace").strip() or "unknown"
                os.close(fd)
                raise OutputError(
                    f"{output or path} is being written by another carmask process (pid {holder}, "
                    f"lock {path}); wait for it to finish or stop it") from None
            # The holder before us may have unlinked the file between our open and our lock:
            # then we hold a lock on a dead inode, and must lock the new file instead.
            try:
                same = os.stat(path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        _held[path] = [fd, 1]


def release(path: Path) -> None:
    with _held_lock:
        entry = _held.get(path)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1]:
            return
        del _held[path]
        try:
            os.unlink(path)  # while still locked: nobody can be holding it
        except FileNotFoundError:
            pass
        os.close(entry[0])
