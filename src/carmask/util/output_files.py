"""Output paths: checked before any work starts, and locked while a job writes them.

A job that runs for hours must not find out at the end that its output is a folder, or that a
second job has been writing the same file: both are checked before the model is loaded, and the
lock (`OUT.lock`, holding the writer's pid) is held for the whole run.
"""

from __future__ import annotations

import errno
import fcntl
import os
import tempfile
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path


class OutputError(RuntimeError):
    """An output path that cannot be written, or one another process is writing."""


class DiskFullError(OutputError):
    """Writing an output ran out of disk space (or quota): the message says what was kept."""


_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def is_disk_full(error: BaseException | None) -> bool:
    """Whether `error`, or an error it was raised from, is the disk (or the quota) running out:
    writers wrap the OSError of a worker thread in their own errors."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, DiskFullError) or (isinstance(error, OSError)
                                                and error.errno in _DISK_FULL):
            return True
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return False


def disk_full_error(error: BaseException, path: str | Path) -> DiskFullError:
    """A DiskFullError naming `path`, the output whose writing ran out of space in `error`."""
    while not isinstance(error, OSError) and (error.__cause__ or error.__context__):
        error = error.__cause__ or error.__context__
    why = (error.strerror or os.strerror(error.errno)) if isinstance(error, OSError) else str(error)
    return DiskFullError(f"{path}: the disk is full ({why})")


def check_output_file(path: str | Path, what: str = "output") -> Path:
    """Raise OutputError unless `path` can become a file: not a folder, not a broken link, and
    its nearest existing parent a writable folder (mkdir would fail on a file there, after the
    work was done)."""
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{path}: the {what} is a folder; give a file name")
    _check_not_broken_link(path, what)
    _check_parents(path, what)
    return path


def check_output_dir(path: str | Path, what: str = "output folder") -> Path:
    """Raise OutputError unless `path` is a writable folder or can be made one."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputError(f"{path}: the {what} is a file, not a folder")
    _check_not_broken_link(path, what)
    if path.is_dir() and not os.access(path, os.W_OK | os.X_OK):
        raise OutputError(f"{path}: cannot write the {what}: the folder is not writable")
    _check_parents(path, what)
    return path


def refuse_clashes(files: Mapping[str, Path | None], folders: Mapping[str, Path | None]) -> None:
    """OutputError when two outputs of one command, each named by what it is, would write over
    each other: the same path (however spelt: `a`, `./a`, a link to it), or anything inside an
    output that is a file (a folder `sub.csv/masks` would make the submission a folder).
    A file inside an output folder is fine; the caller checks its name against the folder's
    own files."""
    outputs = [(what, Path(path).resolve(), what in files)
               for what, path in [*folders.items(), *files.items()] if path is not None]
    for index, (what, path, _) in enumerate(outputs):
        for other, other_path, _ in outputs[index + 1:]:
            if path == other_path:
                raise OutputError(f"{path}: the {what} and the {other} would be one path; "
                                  "give them different paths")
        for other, other_path, other_is_file in outputs:
            if other_is_file and path != other_path and path.is_relative_to(other_path):
                raise OutputError(f"{path}: the {what} would be inside the {other} "
                                  f"{other_path}, a file; give them different paths")


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


def _check_not_broken_link(path: Path, what: str) -> None:
    # a link to nowhere (or to itself) is not there for exists(), yet mkdir and the lock beside
    # its target fail on it, or make folders where the link points, after the work was done
    if path.is_symlink() and not path.exists():
        raise OutputError(f"{path}: the {what} is a broken link (to {os.readlink(path)}); "
                          "remove it or give another path")


def _check_parents(path: Path, what: str) -> None:
    for parent in path.absolute().parents:
        if parent.exists():
            if not parent.is_dir():
                raise OutputError(f"{path}: cannot write the {what}: {parent} is a file, not a folder")
            if not os.access(parent, os.W_OK | os.X_OK):
                raise OutputError(f"{path}: cannot write the {what}: {parent} is not writable")
            _try_making_a_folder_in(parent, path, what)
            return
        if parent.is_symlink():
            raise OutputError(f"{path}: cannot write the {what}: {parent} is a broken link")


def _try_making_a_folder_in(parent: Path, path: Path, what: str) -> None:
    """os.access answers yes to root for any folder, even where nothing can be made (/proc, a
    folder being unmounted): make and remove an empty folder there to be sure."""
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".carmask-probe-", dir=parent))
    except OSError as error:
        raise OutputError(f"{path}: cannot write the {what}: nothing can be made in {parent} "
                          f"({error.strerror})") from None


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
