"""The outbox: every post to Slack, written before the call is made, claimed by one deliverer at a time."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from bot.store.base import StoreBase

PENDING, SENDING, SENT, FAILED, SUPERSEDED = "pending", "sending", "sent", "failed", "superseded"
_COLUMNS = (
    "id, method, payload, url, lane, key, thread_of, update_of, target, after, after_args, notify, status, "
    "attempts, created_at, expires_at, next_at, last_error"
)
# A row may go when its time came (or the process sending it stopped renewing its claim), no earlier row of
# its lane is still to be delivered, and the messages it refers to (thread_of, update_of) are no longer on
# their way. Rows whose reference failed are claimed too: delivering them fails them, with the reason.
# While the database refuses writes, the deliverer keeps some rows in memory (JSON lists of ids): :held ones it is
# sending or will retry (never taken again), :settled ones it sent or gave up on (done, as far as the others care).
_CLAIMABLE = f"""
SELECT {_COLUMNS} FROM outbox o
WHERE ((o.status = 'pending' AND o.next_at <= :now) OR (o.status = 'sending' AND o.claim_until < :now))
  AND o.id NOT IN (SELECT value FROM json_each(:held)) AND o.id NOT IN (SELECT value FROM json_each(:settled))
  AND NOT EXISTS (
    SELECT 1 FROM outbox e WHERE e.lane = o.lane AND e.id < o.id AND e.status IN ('pending', 'sending')
    AND e.id NOT IN (SELECT value FROM json_each(:settled)))
  AND NOT EXISTS (
    SELECT 1 FROM outbox r WHERE r.key IN (o.thread_of, o.update_of) AND r.id < o.id
    AND r.status IN ('pending', 'sending') AND r.id NOT IN (SELECT value FROM json_each(:settled)))
ORDER BY o.next_at, o.id LIMIT 1
"""


@dataclass
class OutboxRow:
    """One Web API call or response_url POST to make, and where its delivery stands."""

    method: str
    payload: dict[str, Any]
    lane: str
    url: str = ""
    key: str = ""
    thread_of: str = ""
    update_of: str = ""
    target: str = ""
    after: str = ""
    after_args: dict[str, Any] = field(default_factory=dict)
    notify: dict[str, str] = field(default_factory=dict)
    status: str = PENDING
    attempts: int = 0
    created_at: float = 0.0
    expires_at: float = 0.0
    next_at: float = 0.0
    last_error: str = ""
    id: int = 0


@dataclass(frozen=True)
class Settled:
    """The outcome of a row sent or given up while the database refused writes, to be written once it takes them."""

    id: int
    status: str  # SENT or FAILED
    channel: str
    ts: str
    error: str
    attempts: int
    at: float


def _row(values: tuple) -> OutboxRow:
    (row_id, method, payload, url, lane, key, thread_of, update_of, target, after, after_args, notify, status,
     attempts, created_at, expires_at, next_at, last_error) = values  # fmt: skip
    return OutboxRow(
        id=row_id,
        method=method,
        payload=json.loads(payload or "{}"),
        lane=lane,
        url=url or "",
        key=key or "",
        thread_of=thread_of or "",
        update_of=update_of or "",
        target=target or "",
        after=after or "",
        after_args=json.loads(after_args or "{}"),
        notify=json.loads(notify or "{}"),
        status=status,
        attempts=attempts or 0,
        created_at=created_at or 0.0,
        expires_at=expires_at or 0.0,
        next_at=next_at or 0.0,
        last_error=last_error or "",
    )


class OutboxStore(StoreBase):
    """Rows of the outbox table. Every method takes the connection's lock, so closing the store waits for it."""

    def add_outbox(self, row: OutboxRow) -> int:
        """Write a row to deliver, superseding older pending updates of the same message; its id."""
        with self.transaction():
            if reference := row.update_of or row.thread_of:  # in the lane of the message it refers to, moved or not
                found = self.db.execute(
                    "SELECT lane FROM outbox WHERE key = ? AND status != 'superseded' ORDER BY id DESC LIMIT 1",
                    [reference],
                ).fetchone()
                if found is not None:
                    row.lane = found[0]
            if row.target:  # an edit made obsolete by a newer one is never sent
                self.db.execute(
                    "UPDATE outbox SET status = 'superseded', payload = NULL, url = NULL, notify = NULL, "
                    "after_args = NULL, done_at = ? WHERE target = ? AND status = 'pending'",
                    [row.created_at, row.target],
                )
            cur = self.db.execute(
                "INSERT INTO outbox (method, payload, url, lane, key, thread_of, update_of, target, after, "
                "after_args, notify, status, attempts, created_at, expires_at, next_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'pending', 0, ?, ?, ?)",
                [
                    row.method,
                    json.dumps(row.payload),
                    row.url or None,
                    row.lane,
                    row.key or None,  # NULL, not "": `key IN (thread_of, update_of)` must never match blanks
                    row.thread_of or None,
                    row.update_of or None,
                    row.target or None,
                    row.after or None,
                    json.dumps(row.after_args) if row.after else None,
                    json.dumps(row.notify) if row.notify else None,
                    row.created_at,
                    row.expires_at,
                    row.next_at,
                ],
            )
            return int(cur.lastrowid or 0)

    def claim_outbox(
        self, owner: str, now: float, claim_s: float, held: Iterable[int] = (), settled: Iterable[int] = ()
    ) -> OutboxRow | None:
        """Take the next deliverable row for ``owner`` until ``now + claim_s``; None when nothing may go now.
        ``held`` and ``settled`` are rows ``owner`` keeps in memory (see ``next_outbox``)."""
        where = {"now": now, "held": json.dumps(list(held)), "settled": json.dumps(list(settled))}
        with self.lock:
            if self.db.execute(_CLAIMABLE, where).fetchone() is None:
                return None  # checked first without the write lock: most polls find nothing
            with self.transaction():
                found = self.db.execute(_CLAIMABLE, where).fetchone()
                if found is None:
                    return None
                row = _row(found)
                self.db.execute(
                    "UPDATE outbox SET status = 'sending', claimed_by = ?, claim_until = ?, attempts = attempts + 1 "
                    "WHERE id = ?",
                    [owner, now + claim_s, row.id],
                )
        row.status, row.attempts = SENDING, row.attempts + 1
        return row

    def next_outbox(self, now: float, held: Iterable[int], settled: Iterable[int]) -> OutboxRow | None:
        """The row ``claim_outbox`` would take, read without writing anything: for a deliverer that claims it in
        memory while the database refuses writes. ``held`` rows it has already are not taken again; ``settled``
        ones, sent or failed with their outcome not written yet, hold up no other row."""
        where = {"now": now, "held": json.dumps(list(held)), "settled": json.dumps(list(settled))}
        with self.lock:
            found = self.db.execute(_CLAIMABLE, where).fetchone()
        if found is None:
            return None
        row = _row(found)
        row.status, row.attempts = SENDING, row.attempts + 1
        return row

    def outbox_reference(
        self, key: str, before_id: int | None = None, settled: Mapping[int, tuple[str, str, str]] | None = None
    ) -> tuple[str, str, str] | None:
        """(status, channel, ts) of the newest row named ``key`` (written before ``before_id``), if any; taken from
        ``settled`` (outcomes kept in memory, by row id) when that row's outcome is not written yet."""
        with self.lock:
            found = self.db.execute(
                "SELECT status, result_channel, result_ts, id FROM outbox WHERE key = ? AND id < ? "
                "AND status != 'superseded' ORDER BY id DESC LIMIT 1",
                [key, before_id if before_id is not None and before_id > 0 else 1 << 62],
            ).fetchone()
        if found and settled and found[3] in settled:
            return settled[found[3]]
        return (found[0], found[1] or "", found[2] or "") if found else None

    def outbox_settle(self, outcomes: list[Settled], owner: str, now: float) -> None:
        """Write the outcome of rows delivered (or given up) while the database refused writes. A row another
        process claimed since, and still holds, is left to it."""
        with self.transaction():
            for done in outcomes:
                sent = done.status == SENT
                self.db.execute(
                    "UPDATE outbox SET status = ?, payload = CASE WHEN ? THEN NULL ELSE payload END, url = NULL, "
                    "notify = NULL, after_args = NULL, last_error = ?, result_channel = ?, result_ts = ?, "
                    "attempts = max(attempts, ?), claimed_by = NULL, claim_until = NULL, done_at = ? WHERE id = ? "
                    "AND (status = 'pending' OR (status = 'sending' AND (claimed_by = ? OR claim_until < ?)))",
                    [done.status, sent, None if sent else done.error, done.channel or None, done.ts or None]
                    + [done.attempts, done.at, done.id, owner, now],
                )

    def outbox_sent(self, row_id: int, owner: str, channel: str, ts: str, now: float) -> bool:
        """Delivered: keep where it went, drop the payload, any response_url and the hook's arguments. False when
        ``owner`` no longer held the claim (another deliverer took the row over and records it)."""
        with self.transaction():
            cur = self.db.execute(
                "UPDATE outbox SET status = 'sent', payload = NULL, url = NULL, notify = NULL, after_args = NULL, "
                "last_error = NULL, result_channel = ?, result_ts = ?, claimed_by = NULL, claim_until = NULL, "
                "done_at = ? WHERE id = ? AND claimed_by = ? AND status = 'sending'",
                [channel or None, ts or None, now, row_id, owner],
            )
            return cur.rowcount == 1

    def outbox_renew(self, row_ids: list[int], owner: str, until: float) -> None:
        """Keep the claim on rows whose call to Slack is still under way, so nobody takes them for abandoned."""
        if not row_ids:
            return
        marks = ", ".join("?" for _ in row_ids)
        with self.transaction():
            self.db.execute(
                f"UPDATE outbox SET claim_until = ? WHERE id IN ({marks}) AND claimed_by = ? AND status = 'sending'",
                [until, *row_ids, owner],
            )

    def outbox_retry(self, row_id: int, owner: str, next_at: float, error: str) -> bool:
        """Back to pending until ``next_at``; False when ``owner`` no longer held the claim."""
        with self.transaction():
            cur = self.db.execute(
                "UPDATE outbox SET status = 'pending', next_at = ?, last_error = ?, claimed_by = NULL, "
                "claim_until = NULL WHERE id = ? AND claimed_by = ? AND status = 'sending'",
                [next_at, error, row_id, owner],
            )
            return cur.rowcount == 1

    def outbox_move(self, row: OutboxRow, owner: str, now: float, error: str) -> bool:
        """Sent again now, to the channel and lane ``row`` names; False when ``owner`` no longer held the claim.

        The row keeps its id, so the edits and replies written after it still wait for it and find it; those still
        to go move to its new lane with it, so that they keep their order with the edits written once its ts is
        known (a newer edit must never be overwritten by an older one retried later)."""
        with self.transaction():
            if row.key:
                self.db.execute(
                    "UPDATE outbox SET lane = ? WHERE status = 'pending' AND (thread_of = ? OR update_of = ?)",
                    [row.lane, row.key, row.key],
                )
            cur = self.db.execute(
                "UPDATE outbox SET status = 'pending', lane = ?, payload = ?, notify = ?, next_at = ?, last_error = ?, "
                "claimed_by = NULL, claim_until = NULL WHERE id = ? AND claimed_by = ? AND status = 'sending'",
                [row.lane, json.dumps(row.payload), json.dumps(row.notify) if row.notify else None, now, error]
                + [row.id, owner],
            )
            return cur.rowcount == 1

    def outbox_failed(self, row_id: int, owner: str, error: str, now: float) -> bool:
        """Failed for good: the payload stays for inspection, the response_url and notify go."""
        with self.transaction():
            cur = self.db.execute(
                "UPDATE outbox SET status = 'failed', url = NULL, notify = NULL, after_args = NULL, last_error = ?, "
                "claimed_by = NULL, claim_until = NULL, done_at = ? "
                "WHERE id = ? AND claimed_by = ? AND status = 'sending'",
                [error, now, row_id, owner],
            )
            return cur.rowcount == 1

    def outbox_busy(self) -> int:
        """How many rows are still to be delivered (pending, backing off or being sent)."""
        with self.lock:
            return int(
                self.db.execute("SELECT count(*) FROM outbox WHERE status IN ('pending', 'sending')").fetchone()[0]
            )

    def outbox_row(self, row_id: int) -> dict | None:
        """One row as stored, for inspection."""
        with self.lock:
            cur = self.db.execute("SELECT * FROM outbox WHERE id = ?", [row_id])
            found = cur.fetchone()
            return dict(zip([c[0] for c in cur.description], found, strict=True)) if found else None

    def prune_outbox(self, done_before: float, failed_before: float) -> int:
        """Forget sent and superseded rows done before ``done_before``, failed ones before ``failed_before``."""
        with self.transaction():
            cur = self.db.execute(
                "DELETE FROM outbox WHERE (status IN ('sent', 'superseded') AND done_at < ?) "
                "OR (status = 'failed' AND done_at < ?)",
                [done_before, failed_before],
            )
            return cur.rowcount
