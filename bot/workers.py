"""Thread pools that count their work in flight, so a caller can wait until they are idle."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")


class TrackedPool(ThreadPoolExecutor):
    """A thread pool of one kind of work (answers, deploy runs ...), counting what is queued or running."""

    def __init__(self, max_workers: int, name: str) -> None:
        super().__init__(max_workers=max_workers, thread_name_prefix=name)
        self._busy = 0
        self._idle = threading.Condition()

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        """Run ``fn`` in the pool, counted until it finishes."""
        with self._idle:
            self._busy += 1
        try:
            future = super().submit(fn, *args, **kwargs)
        except BaseException:
            self._finished(None)
            raise
        future.add_done_callback(self._finished)
        return future

    def _finished(self, _: Future[Any] | None) -> None:
        """One piece of work ended: wake whoever waits for the pool to go idle."""
        with self._idle:
            self._busy -= 1
            self._idle.notify_all()

    @property
    def busy(self) -> int:
        with self._idle:
            return self._busy

    def wait_idle(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for every piece of work to finish; True when none is left."""
        with self._idle:
            return self._idle.wait_for(lambda: self._busy == 0, timeout)
