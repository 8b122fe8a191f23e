"""Rows of the database outbox sent while the database refuses writes (a full disk): claimed in memory instead.

Claiming a row is itself a write, so without this a full disk held back every post queued before it filled. The
threads of one process claim such rows here, under one lock, so no two of them send a row at once; what became
of each (sent, given up) is kept until the database takes writes again. Other processes know nothing of these
claims: a row may be sent again by another process, or after a restart, as the outbox's at-least-once allows.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from bot.store.outbox import FAILED, PENDING, SENDING, SENT, OutboxRow, Settled


class HeldRows:
    """Database rows this process claimed in memory, and the outcomes it could not write yet."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._rows: dict[int, OutboxRow] = {}  # being sent, or waiting for their retry
        self._settled: dict[int, Settled] = {}  # sent or given up; written once the database takes writes

    def claim(self, now: float, read: Callable[[list[int], list[int]], OutboxRow | None]) -> OutboxRow | None:
        """A held row whose retry is due, else the row ``read(held, settled)`` finds in the database, now held.
        One thread at a time: two threads reading at once would find the same row."""
        with self._lock:
            row = self._due(now) or read(list(self._rows), list(self._settled))
            if row is not None:
                self._rows[row.id] = row
            return row

    def excluding(self, read: Callable[[list[int], list[int]], OutboxRow | None]) -> OutboxRow | None:
        """``read(held, settled)`` (a claim in the database), while no thread claims in memory."""
        with self._lock:
            return read(list(self._rows), list(self._settled))

    def due(self, now: float) -> OutboxRow | None:
        """A held row whose retry is due, claimed again."""
        with self._lock:
            return self._due(now)

    def _due(self, now: float) -> OutboxRow | None:
        for row in self._rows.values():
            if row.status == PENDING and row.next_at <= now:
                row.status, row.attempts = SENDING, row.attempts + 1
                return row
        return None

    def holds(self, row_id: int) -> bool:
        with self._lock:
            return row_id in self._rows

    def ids(self) -> tuple[list[int], list[int]]:
        """(held, settled) row ids, for the database's claim to leave alone."""
        with self._lock:
            return list(self._rows), list(self._settled)

    def outcomes(self) -> dict[int, tuple[str, str, str]]:
        """(status, channel, ts) of each settled row, as the rows referring to it look it up."""
        with self._lock:
            return {i: (s.status, s.channel, s.ts) for i, s in self._settled.items()}

    def unwritten(self) -> list[Settled]:
        with self._lock:
            return list(self._settled.values())

    def written(self, outcomes: list[Settled]) -> None:
        with self._lock:
            for done in outcomes:
                self._settled.pop(done.id, None)

    def retry(self, row: OutboxRow, next_at: float, error: str) -> bool:
        """Sent again at ``next_at`` from here (a row claimed in the database too, whose retry could not be written)."""
        with self._lock:
            row.status, row.next_at, row.last_error = PENDING, next_at, error
            self._rows[row.id] = row
            return True

    def sent(self, row: OutboxRow, channel: str, ts: str, now: float) -> bool:
        self._settle(Settled(row.id, SENT, channel, ts, "", row.attempts, now))
        return True

    def failed(self, row: OutboxRow, error: str, now: float) -> bool:
        self._settle(Settled(row.id, FAILED, "", "", error, row.attempts, now))
        return True

    def _settle(self, outcome: Settled) -> None:
        with self._lock:
            self._rows.pop(outcome.id, None)
            self._settled[outcome.id] = outcome
