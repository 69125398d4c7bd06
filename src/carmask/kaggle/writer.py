"""Kaggle submissions, the writing side: a streaming, resumable writer.

The writer takes (image name, mask) pairs in any order from any number of threads, encodes them
in a worker pool, and appends each row to a spool file as soon as it is encoded; that spool is
what makes a killed run resumable. `finalize()` writes the rows in `sample_submission.csv` order
to a temporary file and renames it into place, so the submission is either complete or absent.
At most `max_pending` masks are held at once: producers block until the pool catches up.

Resuming (`resume=True`, `check_resumable`) reloads the spool, or a finished CSV, and checks
every row before keeping it. The format itself (HEADER, SubmissionError) and the reading side
(the checker, the merger, sample files) are in `carmask.kaggle.submission`.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import BinaryIO

import numpy as np

from carmask.kaggle import rle
from carmask.util.atomic import atomic_path
from carmask.util.output_files import (acquire, check_output_file, disk_full_error, is_disk_full,
                                       lock_path, release)
from carmask.util.parallel import BoundedExecutor
from carmask.kaggle.submission import HEADER, SubmissionError, csv_row, split_row

log = logging.getLogger(__name__)


class SubmissionWriter:
    """Stream masks into a Kaggle submission CSV. Use as a context manager::

        with SubmissionWriter("submission.csv", names, resume=True) as writer:
            for name in writer.remaining:
                writer.add(name, predict(name))
        # on a clean exit the CSV is finalised; after an error the spool is kept for --resume
    """

    def __init__(
        self,
        path: str | Path,
        names: Sequence[str],
        *,
        workers: int | None = None,
        max_pending: int | None = None,
        resume: bool = False,
        shape: tuple[int, int] | Callable[[str], tuple[int, int] | None] | None = None,
    ) -> None:
        """`shape` is the masks' (H, W), or a function giving it by image name (None where
        unknown): resume checks the resumed rows' RLEs against it, and without it for
        everything but their length.

        The output is locked (`NAME.lock`) until finalize() or close(): a second writer on the
        same path, in any process, raises OutputError naming the first.
        """
        self.path = Path(path)
        self.names = list(names)
        if len(set(self.names)) != len(self.names):
            raise SubmissionError("the list of expected image names has duplicates")
        self._expected = set(self.names)
        self.shape = shape
        self.spool_path = spool_file(self.path)
        self._offsets: dict[str, tuple[int, int]] = {}  # name -> (offset, length) in the spool
        self._lock = threading.Lock()
        self._error: BaseException | None = None
        self._claimed: set[str] = set()
        self.dropped: list[str] = []  # resumed rows that were invalid: "FILE:LINE: problem"
        check_output_file(self.path, "submission")
        self._lock_file = lock_path(self.path)
        acquire(self._lock_file, self.path)  # before the spool is read or written
        self._locked = True
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if resume:
                self._load_previous()
            elif self.spool_path.exists():
                log.warning("%s: discarding a previous partial run (pass resume to continue it)",
                            self.spool_path)
            self._spool = open(self.spool_path, "ab" if resume else "wb")
        except BaseException:
            self._unlock()
            raise
        self._spool_size = self._spool.tell()
        self._pool = BoundedExecutor(workers, max_pending, name="rle")

    def _unlock(self) -> None:
        if self._locked:
            self._locked = False
            release(self._lock_file)

    # -- what is left -------------------------------------------------------------------------
    @property
    def done(self) -> set[str]:
        """Names already encoded (in this run or a resumed one)."""
        with self._lock:
            return set(self._offsets)

    @property
    def remaining(self) -> list[str]:
        """Expected names not yet added, in sample order."""
        done = self.done
        return [name for name in self.names if name not in done and name not in self._claimed]

    # -- adding rows --------------------------------------------------------------------------
    def add(self, name: str, mask: np.ndarray) -> None:
        """Queue a mask for encoding; blocks while `max_pending` masks are already queued."""
        self._claim(name)
        future = self._pool.submit(rle.encode, mask)
        future.add_done_callback(lambda done: self._encoded(name, done))

    def add_runs(self, name: str, runs: np.ndarray) -> None:
        """Queue a mask's (k, 2) `rle.runs` pairs for formatting, as `add` queues a mask: the
        text is made in the pool, off the thread that feeds the device."""
        self._claim(name)
        future = self._pool.submit(rle.format_runs, runs)
        future.add_done_callback(lambda done: self._encoded(name, done))

    def add_rle(self, name: str, encoding: str) -> None:
        """Add a row whose mask is already run-length encoded."""
        self._claim(name)
        self._append(name, encoding)

    def _claim(self, name: str) -> None:
        self._raise_pending_error()
        if name not in self._expected:
            raise SubmissionError(f"{name}: not an image of this submission")
        with self._lock:
            if name in self._offsets or name in self._claimed:
                raise SubmissionError(f"{name}: added twice")
            self._claimed.add(name)

    def _encoded(self, name: str, future: Future) -> None:
        # runs in the pool's callback: an error must be kept and raised to the job (by the next
        # add or the close), or the row would be lost with only a log line
        if future.exception() is not None:
            self._error = future.exception()
            return
        if self._error is not None:
            # the job is stopping; a row written after a failed write (a full disk) could join
            # what that write left of its line, so this one is made again by --resume instead
            return
        try:
            self._append(name, future.result())
        except Exception as error:  # noqa: BLE001  (re-raised by _raise_pending_error)
            self._error = error

    def _append(self, name: str, encoding: str) -> None:
        line = csv_row(name, encoding)
        with self._lock:
            self._spool.write(line)
            self._spool.flush()  # a killed run loses at most the row being written
            self._offsets[name] = (self._spool_size, len(line))
            self._spool_size += len(line)
            self._claimed.discard(name)

    def _raise_pending_error(self) -> None:
        if self._error is None:
            return
        if is_disk_full(self._error):  # not the mask's fault: the job stops, the spool stays
            raise disk_full_error(self._error, self.spool_path) from self._error
        raise SubmissionError(f"encoding a mask failed: {self._error}") from self._error

    # -- finishing ----------------------------------------------------------------------------
    def finalize(self, allow_missing: bool = False) -> list[str]:
        """Write the CSV in sample order (atomically) and return the names that were missing.

        Missing names raise SubmissionError unless `allow_missing`, in which case their rows get
        an empty mask and the caller is expected to report the submission as incomplete.
        """
        try:
            return self._finalize(allow_missing)
        finally:
            self._unlock()

    def _finalize(self, allow_missing: bool) -> list[str]:
        self._pool.shutdown(wait=True)
        self._raise_pending_error()
        self._spool.close()
        missing = [name for name in self.names if name not in self._offsets]
        if missing and not allow_missing:
            raise SubmissionError(
                f"{len(missing)} of {len(self.names)} images have no mask yet "
                f"(first: {missing[0]}); the spool {self.spool_path} is kept for resume")
        try:
            self._write_in_order()
        except OSError as error:
            if is_disk_full(error):  # the spool stays: a resumed run writes the file again
                raise disk_full_error(error, self.path) from error
            raise
        if not missing:
            self.spool_path.unlink()
        log.info("wrote %s (%d rows, %d missing)", self.path, len(self.names), len(missing))
        return missing

    def _write_in_order(self) -> None:
        """The spool's rows in sample order, an empty row for each name without one, into the
        submission file (atomically)."""
        with atomic_path(self.path) as tmp, open(self.spool_path, "rb") as spool, open(tmp, "wb") as out:
            out.write(f"{HEADER}\n".encode())
            for name in self.names:
                if name in self._offsets:
                    offset, length = self._offsets[name]
                    spool.seek(offset)
                    out.write(spool.read(length))
                else:
                    out.write(csv_row(name, ""))
            out.flush()
            os.fsync(out.fileno())

    def close(self) -> None:
        """Stop without finalising; the spool stays for a resumed run."""
        try:
            self._pool.shutdown(wait=True)
            if not self._spool.closed:
                self._spool.close()
        except OSError as error:
            # on a full disk the last row's bytes may not reach the spool: resuming drops a cut
            # last line and makes that row again, so stopping matters more than this error
            if not is_disk_full(error):
                raise
        finally:
            self._unlock()

    def __enter__(self) -> SubmissionWriter:
        return self

    def __exit__(self, exc_type, exc, traceback) -> None:
        if exc_type is None:
            self.finalize()
        else:
            self.close()

    def _load_previous(self) -> None:
        """Reload rows from a previous run's spool, or from a finished CSV, for resume.

        A file that is not a submission is refused, not overwritten. Each row is checked (one of
        this job's names, once, with a valid RLE); a bad row is not kept, so its image is
        predicted again, and `dropped` says which rows went and why.
        """
        source = self.spool_path if self.spool_path.exists() else self.path
        if not source.exists():
            return
        if not source.is_file():
            raise SubmissionError(f"{source}: not a file; refusing to resume from it")
        finished = source == self.path
        valid_bytes = 0
        lines: list[bytes] = []
        with open(source, "rb") as file:
            if finished:
                _check_header(file, source)
            for line in file:
                if not line.endswith(b"\n"):
                    if not finished:
                        break  # the row being written when the previous run died
                    line += b"\n"  # a finished file need not end with a newline
                valid_bytes += len(line)
                lines.append(line)
        self._refuse_foreign_rows(source, lines)  # before anything in the file is touched
        if finished:  # re-spool its rows (the header is gone already)
            with open(self.spool_path, "wb") as spool:
                spool.writelines(lines)
        else:
            with open(self.spool_path, "r+b") as spool:
                spool.truncate(valid_bytes)
        first_line = 2 if finished else 1
        offset = 0
        for number, line in enumerate(lines, start=first_line):
            name, problem = self._check_row(line)
            if problem:
                self.dropped.append(f"{source}:{number}: {problem}")
            else:
                self._offsets[name] = (offset, len(line))
            offset += len(line)
        if self.dropped:
            log.warning("%s: %d row(s) not kept, their images are predicted again (first: %s)",
                        source, len(self.dropped), self.dropped[0])
        log.info("resuming %s: %d of %d rows already done", self.path, len(self._offsets),
                 len(self.names))

    def _refuse_foreign_rows(self, source: Path, lines: list[bytes]) -> None:
        """SubmissionError when the file holds rows for photos outside this job: it is another
        job's submission, and resuming into it would delete them."""
        foreign = []
        for line in lines:
            fields, problem = split_row(line.decode("utf-8", "replace").rstrip("\r\n"))
            if not problem and len(fields) == 2 and fields[0] not in self._expected:
                foreign.append(fields[0])
        if foreign:
            raise SubmissionError(
                f"{source} holds rows for {len(foreign)} photo(s) outside this job (first: "
                f"{foreign[0]!r}); resuming would delete them. Give another --out, or --overwrite "
                "to start this one again")

    def _check_row(self, line: bytes) -> tuple[str, str | None]:
        """(name, None) for a row to keep, else (name, why not)."""
        try:
            text = line.decode("utf-8").rstrip("\r\n")
        except UnicodeDecodeError:
            return "", f"not UTF-8 text: {line[:40]!r}"
        fields, problem = split_row(text)
        if problem or len(fields) != 2:
            return (fields[0] if fields else ""), problem or f"expected 'img,rle_mask', got {text[:40]!r}"
        name, encoding = fields
        if name not in self._expected:
            return name, f"{name}: not an image of this job"
        if name in self._offsets:
            return name, f"{name}: a second row for this image (the first is kept)"
        # Without a known shape, any length passes: photos of any size may be predicted.
        shape = self.shape(name) if callable(self.shape) else self.shape
        if problem := rle.validate(encoding, shape or _ANY_SHAPE):
            return name, f"{name}: invalid RLE: {problem}"
        return name, None


_ANY_SHAPE = (1 << 31, 1 << 31)


def spool_file(submission: Path) -> Path:
    """Where a submission's rows go as they are made: what makes a killed run resumable."""
    return submission.with_name(submission.name + ".spool")


def check_resumable(path: str | Path) -> None:
    """Raise SubmissionError unless resuming into `path` is safe: it is absent, it has a spool
    beside it, or it is a submission (its header is `img,rle_mask`). Resuming replaces the file,
    so anything else would be lost."""
    path = Path(path)
    if spool_file(path).is_file() or not path.exists():
        return
    if not path.is_file():
        raise SubmissionError(f"{path}: not a file; refusing to resume into it")
    with open(path, "rb") as file:
        _check_header(file, path)


def _check_header(file: BinaryIO, path: Path) -> None:
    header = file.readline(len(HEADER) + 16)
    if header.removeprefix(b"\xef\xbb\xbf").rstrip(b"\r\n") != HEADER.encode():
        raise SubmissionError(
            f"{path}: not a submission (it starts with {header[:40]!r}, not {HEADER!r}); "
            "refusing to resume into it, which would replace it")


def write_submission(
    path: str | Path,
    names: Sequence[str],
    masks: Iterable[tuple[str, np.ndarray]],
    *,
    workers: int | None = None,
    resume: bool = False,
) -> Path:
    """Convenience: stream (name, mask) pairs into a finished submission."""
    with SubmissionWriter(path, names, workers=workers, resume=resume) as writer:
        done = writer.done
        for name, mask in masks:
            if name not in done:
                writer.add(name, mask)
    return Path(path)
