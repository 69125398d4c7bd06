"""Order-preserving parallel map with a bound on results in flight."""

from __future__ import annotations

import os
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


def imap_bounded(fn: Callable[[T], R], items: Iterable[T], workers: int | None = None,
                 ahead: int | None = None) -> Iterator[R]:
    """Like `map(fn, items)` on a thread pool, holding at most `ahead` results not yet consumed.

    `ThreadPoolExecutor.map` submits everything at once, which for full-size masks means holding
    the whole data set in memory when the consumer is slower than the decoders.
    """
    workers = workers or os.cpu_count() or 1
    ahead = ahead or 2 * workers
    pending: deque[Future[R]] = deque()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for item in items:
            if len(pending) >= ahead:
                yield pending.popleft().result()
            pending.append(pool.submit(fn, item))
        while pending:
            yield pending.popleft().result()


class BoundedExecutor:
    """A thread pool whose `submit` blocks while `max_pending` tasks are queued or running,
    so producers of large items (full-size masks) cannot outrun the workers and fill memory."""

    def __init__(self, workers: int | None = None, max_pending: int | None = None,
                 name: str = "worker") -> None:
        workers = workers or os.cpu_count() or 1
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=name)
        self._slots = threading.BoundedSemaphore(max_pending or 2 * workers + 2)

    def submit(self, fn: Callable[..., R], *args) -> Future[R]:
        self._slots.acquire()
        try:
            future = self._pool.submit(fn, *args)
        except BaseException:
            self._slots.release()
            raise
        future.add_done_callback(lambda _: self._slots.release())
        return future

    def shutdown(self, wait: bool = True) -> None:
        self._pool.shutdown(wait=wait)
