"""Progress reporting handed in by the caller: the library never prints on its own.

A `Track` wraps an iterable the way `rich.progress.track` and `tqdm` do. Library functions take
one as `track=` and default to `silent_track`; the CLI hands in a rich progress bar.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Protocol, TypeVar

T = TypeVar("T")


class Track(Protocol):
    def __call__(
        self, iterable: Iterable[T], total: int | None = None, description: str = ""
    ) -> Iterable[T]: ...


def silent_track(iterable: Iterable[T], total: int | None = None, description: str = "") -> Iterator[T]:
    """The default Track: reports nothing."""
    yield from iterable
