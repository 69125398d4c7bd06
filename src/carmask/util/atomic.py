"""Writing files so that a reader, or a job resumed after a crash, sees the old file or the new
one and never half of one."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path: str | Path, suffix: str = ".tmp") -> Iterator[Path]:
    """A fresh temporary name beside `path` to write to: renamed onto `path` when the block ends,
    removed when it raises. Beside it, because `os.replace` is atomic only within one file
    system; fresh, so two writers of one file never share a temporary. `suffix` ends the
    temporary's name, for writers that insist on an extension (numpy's `.npy`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}{suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)  # gone already when the rename happened


def write_bytes(path: str | Path, data: bytes) -> Path:
    """Write `data` to `path` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)
