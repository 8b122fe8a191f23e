"""Test doubles shared by every test, defined once: a clock the test controls, and waiting for a condition.

(The fake encoder is in tests/conftest.py, the fake Slack Web API in bot/slack/local/fake_api.py and the
request signer in bot/slack/local/shell_dispatch.py: the shell uses those two as well.)
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import TypeVar

T = TypeVar("T")
START = datetime(2026, 11, 2, 10, 0, tzinfo=UTC)


class Clock:
    """A clock the test moves by hand; with ``step``, every reading is that much later than the one before
    (so requests and runs recorded one after another keep their order). Safe to read from several threads."""

    def __init__(self, now: datetime = START, step: timedelta = timedelta(0)) -> None:
        self.now = now
        self.step = step
        self._lock = threading.Lock()

    def __call__(self) -> datetime:
        with self._lock:
            self.now += self.step
            return self.now

    def set(self, when: datetime) -> None:
        with self._lock:
            self.now = when

    def advance(self, **delta: float) -> None:
        with self._lock:
            self.now += timedelta(**delta)


def eventually(read: Callable[[], T], ok: Callable[[T], object], timeout: float = 5) -> T:
    """What ``read`` returns once ``ok`` accepts it, or its last reading after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not ok(value := read()) and time.monotonic() < deadline:
        time.sleep(0.02)
    return value
