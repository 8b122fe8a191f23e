"""The delivering half of ``SlackWeb``: threads that take outbox rows in order, call Slack, and retry or give up.

A mixin of ``bot.slack.web.SlackWeb``, which owns the state used here (the client, the retry policy, the
durable and in-memory queues, the hooks, the condition its threads wait on). See that module for the
guarantee these threads keep.
"""

from __future__ import annotations

import heapq
import logging
import sqlite3
import threading
import time
from collections.abc import Callable

from slack_sdk import WebClient

from bot.slack.delivery import (
    NOT_THERE,
    RESPONSE_URL,
    MemoryOutbox,
    Outcome,
    RetryPolicy,
    call_web_api,
    describe,
    failure_note,
    post_response_url,
)
from bot.slack.outbox_held import HeldRows
from bot.store.base import is_write_failure
from bot.store.outbox import PENDING, SENDING, SENT, OutboxRow, OutboxStore

log = logging.getLogger(__name__)
PRUNE_EVERY_S = 3600.0
KEEP_SENT_S = 24 * 3600.0
KEEP_FAILED_S = 7 * 24 * 3600.0
WRITE_RETRY_MAX_S = 30.0  # while the database refuses writes, claiming there is tried again at most this far apart
AfterHook = Callable[[dict, str, str], None]
FailedHook = Callable[[dict, str], None]


class _Durable:
    """The database part of the outbox, for one process (``owner``) claiming rows.

    While the database refuses writes, rows are claimed in memory (``held``), and an outcome that cannot be written
    is kept there until it can: a row is never sent again by this process for want of a write."""

    def __init__(self, store: OutboxStore, owner: str, claim_s: float) -> None:
        self.store, self.owner, self.claim_s = store, owner, claim_s
        self.held = HeldRows()

    def add(self, row: OutboxRow) -> int:
        return self.store.add_outbox(row)

    def claim(self, now: float) -> OutboxRow | None:
        """A held row whose retry is due, else the next row claimed in the database (a write)."""
        if (row := self.held.due(now)) is not None:
            return row
        # Under the lock of the rows held in memory: a thread still claiming in memory would otherwise read the
        # same pending row between the ids read here and this claim's write (found reviewing it: sent twice).
        return self.held.excluding(
            lambda held, settled: self.store.claim_outbox(self.owner, now, self.claim_s, held, settled)
        )

    def claim_unwritten(self, now: float, sending: list[int]) -> OutboxRow | None:
        """The next row, claimed in memory only: the database refuses writes. ``sending`` are rows of this process
        whose call is under way (claimed in the database before; their claims may have run out, unrenewed)."""
        return self.held.claim(now, lambda held, settled: self.store.next_outbox(now, held + sending, settled))

    def write_back(self, now: float) -> None:
        """Write the outcomes kept in memory while the database refused writes."""
        if outcomes := self.held.unwritten():
            self.store.outbox_settle(outcomes, self.owner, now)
            self.held.written(outcomes)

    def reference(self, key: str, before_id: int | None = None) -> tuple[str, str, str] | None:
        return self.store.outbox_reference(key, before_id, self.held.outcomes())

    def _settle(self, row: OutboxRow, in_db: Callable[[], bool], in_memory: Callable[[], bool]) -> bool:
        """Record what became of ``row``: in memory when it is held there or the database refuses the write."""
        if self.held.holds(row.id):
            return in_memory()
        try:
            return in_db()
        except sqlite3.OperationalError as exc:
            if not is_write_failure(exc):
                raise
            return in_memory()

    def sent(self, row: OutboxRow, channel: str, ts: str, now: float) -> bool:
        return self._settle(
            row,
            lambda: self.store.outbox_sent(row.id, self.owner, channel, ts, now),
            lambda: self.held.sent(row, channel, ts, now),
        )

    def renew(self, row_ids: list[int], now: float) -> None:
        self.store.outbox_renew(row_ids, self.owner, now + self.claim_s)

    def retry(self, row: OutboxRow, next_at: float, error: str) -> bool:
        return self._settle(
            row,
            lambda: self.store.outbox_retry(row.id, self.owner, next_at, error),
            lambda: self.held.retry(row, next_at, error),
        )

    def failed(self, row: OutboxRow, error: str, now: float) -> bool:
        return self._settle(
            row,
            lambda: self.store.outbox_failed(row.id, self.owner, error, now),
            lambda: self.held.failed(row, error, now),
        )

    def move(self, row: OutboxRow, now: float, error: str) -> bool:
        if self.held.holds(row.id):  # sent again from here, to its new channel; the database learns where it went
            return self.held.retry(row, now, f"moved ({error})")
        return self.store.outbox_move(row, self.owner, now, error)

    def busy(self) -> int:
        return self.store.outbox_busy()


class OutboxWorker:
    """Delivery threads over ``SlackWeb``'s state (``_enqueue``, ``respond`` and ``tell_user`` are SlackWeb's)."""

    client: WebClient
    policy: RetryPolicy
    owner: str
    _durable: _Durable | None
    _memory: MemoryOutbox
    _hooks: dict[str, AfterHook]
    _in_flight: set[int]
    _failed_hooks: dict[str, FailedHook]
    _poll_s: float
    _cond: threading.Condition
    _finishing: int
    _generation: int
    _wakeups: list[float]
    _stopping: bool
    _pruned_at: float
    _refused: str
    _write_again_at: float
    _write_backoff_s: float

    def _kick(self) -> None:
        with self._cond:
            self._generation += 1
            self._cond.notify_all()

    def _work(self) -> None:
        """A delivery thread: take the next row that may go, deliver it; sleep until woken or a retry is due."""
        while True:
            with self._cond:
                if self._stopping:
                    return
                seen = self._generation
            try:
                row = self._claim()
            except sqlite3.ProgrammingError:  # the store was closed under us: the process is ending
                log.info("outbox store closed; delivery stops owner=%s", self.owner)
                return
            except Exception:
                log.exception("outbox: could not read the next row; trying again shortly")
                row = None
            if row is not None:
                self._deliver_safely(row)
                continue
            with self._cond:
                if not self._stopping and self._generation == seen:
                    self._cond.wait(self._sleep_s())

    def _renew_claims(self) -> None:
        """Every third of the claim's length, renew the claims of the rows whose call to Slack is under way: a call
        slower than the claim (each read within the timeout, the whole longer) is never taken for abandoned and sent
        a second time alongside. Only a process that stopped loses its rows."""
        assert self._durable is not None
        period = self._durable.claim_s / 3
        while True:
            due = time.monotonic() + period
            with self._cond:  # woken by every kick of the delivery threads: wait out the period all the same
                while not self._stopping and (left := due - time.monotonic()) > 0:
                    self._cond.wait(left)
                if self._stopping:
                    return
                rows = [i for i in self._in_flight if i > 0]
            try:
                self._durable.renew(rows, time.time())
            except sqlite3.ProgrammingError:  # the store was closed under us: the process is ending
                return
            except Exception as exc:  # a busy or full database: the next round tries again, well within the claim
                if not is_write_failure(exc):  # a refused write is said once, by the claiming threads
                    log.exception("outbox: could not renew the claims of rows being sent")

    def _claim(self) -> OutboxRow | None:
        now = time.time()
        row = self._memory.claim(now)
        if row is None and self._durable is not None:
            row = self._claim_durable(self._durable, now)
        return row

    def _claim_durable(self, durable: _Durable, now: float) -> OutboxRow | None:
        """The next database row, claimed there; while the database refuses writes, claimed in memory instead, so
        posts queued before the disk filled still go. Writing is tried again with backoff meanwhile."""
        with self._cond:
            sending = [i for i in self._in_flight if i > 0]
            wait_to_write = bool(self._refused) and now < self._write_again_at
        if wait_to_write:
            return durable.claim_unwritten(now, sending)
        try:
            durable.write_back(now)
            if now - self._pruned_at > PRUNE_EVERY_S:
                self._pruned_at = now
                durable.store.prune_outbox(now - KEEP_SENT_S, now - KEEP_FAILED_S)
            row = durable.claim(now)
        except sqlite3.OperationalError as exc:
            if not is_write_failure(exc):
                raise
            self._writes_refused(str(exc), now)
            return durable.claim_unwritten(now, sending)
        if not durable.store.write_error:  # a write succeeded since the last that failed, here or elsewhere
            self._writes_taken()
        elif self._refused:  # nothing was written this time (nothing to claim): no sign it takes writes yet
            self._writes_refused(self._refused, now)
        return row

    def _writes_refused(self, reason: str, now: float) -> None:
        """Claim in memory until the next try, later each time; said once, when it starts."""
        with self._cond:
            first = not self._refused
            self._refused = reason
            self._write_backoff_s = self._poll_s if first else min(self._write_backoff_s * 2, WRITE_RETRY_MAX_S)
            self._write_again_at = now + self._write_backoff_s
        if first:
            log.warning(
                "outbox: the database refuses writes (%s); queued posts are still sent, claimed in memory, "
                "and what became of them is written once it takes writes again owner=%s",
                reason,
                self.owner,
            )

    def _writes_taken(self) -> None:
        with self._cond:
            was, self._refused = self._refused, ""
        if was:
            log.info("outbox: the database takes writes again; posts are claimed there again owner=%s", self.owner)

    def _sleep_s(self) -> float:
        """Until the soonest retry this process scheduled, or the poll for other processes' rows."""
        now = time.time()
        while self._wakeups and self._wakeups[0] <= now:
            heapq.heappop(self._wakeups)
        soonest = self._wakeups[0] - now if self._wakeups else self._poll_s
        return max(min(soonest, self._poll_s), 0.005)

    def _deliver_safely(self, row: OutboxRow) -> None:
        """Deliver, and let no exception end the thread: a dead thread stops every lane until a restart."""
        try:
            self._deliver(row)
        except Exception:  # recording the error failed too: the claim runs out and the row is tried again
            log.exception("outbox: delivery went wrong id=%s method=%s lane=%s", row.id, row.method, row.lane)

    def _deliver(self, row: OutboxRow) -> None:
        queue = self._memory if row.id < 0 else self._durable
        assert queue is not None
        try:
            now = time.time()
            if now >= row.expires_at:
                self._fail(queue, row, f"{row.last_error or 'not sent'}; given up after {row.attempts - 1} attempts")
                return
            payload, problem, wait = self._resolve(row)
            if wait:  # its reference is in the other part of the outbox (memory or database): look again soon
                queue.retry(row, now + 0.2, "waiting for the message it refers to")
                self._schedule(now + 0.2)
                return
            if payload is None:
                self._fail(queue, row, problem)
                return
            with self._cond:
                self._in_flight.add(row.id)
            try:
                outcome = self._attempt(row, payload)
            finally:
                with self._cond:
                    self._in_flight.discard(row.id)
            if outcome.ok:
                channel, ts = self._where(row, payload, outcome)
                # Idle only once the hook has run too: it records where the message went (a deploy's ts),
                # which whoever waits for idle (tests, a clean shutdown) expects to find written.
                with self._cond:
                    self._finishing += 1
                try:
                    if queue.sent(row, channel, ts, time.time()):
                        self._after(row, channel, ts)
                    else:  # this process lost its claim meanwhile (it could not renew it): the other records it
                        log.warning("slack post delivered after its claim was lost id=%s method=%s", row.id, row.method)
                finally:
                    with self._cond:
                        self._finishing -= 1
                        self._cond.notify_all()
            elif outcome.retry_in is not None and now + outcome.retry_in < row.expires_at:
                log.warning(
                    "slack delivery retry id=%s method=%s lane=%s attempt=%d error=%s in=%.1fs",
                    row.id,
                    row.method,
                    row.lane,
                    row.attempts,
                    outcome.error,
                    outcome.retry_in,
                )
                queue.retry(row, now + outcome.retry_in, outcome.error)
                self._schedule(now + outcome.retry_in)
            else:
                given_up = outcome.retry_in is not None
                self._fail(queue, row, f"{outcome.error}; given up" if given_up else outcome.error)
        except sqlite3.Error:  # the claim runs out and the row is delivered again: at least once
            log.exception("outbox: could not record a delivery id=%s method=%s", row.id, row.method)
        except Exception as exc:  # a bug, or an answer nobody foresaw
            self._retry_unexpected(queue, row, exc)
        finally:
            self._kick()  # later rows of its lane, and rows waiting for it, may go now

    def _retry_unexpected(self, queue: _Durable | MemoryOutbox, row: OutboxRow, exc: Exception) -> None:
        """Tried again with backoff and given up at the row's age, as a 5xx is; one line with the traceback, which
        names no token (tracebacks hold the code and the error, and the log's formatter redacts tokens anyway)."""
        now = time.time()
        error = f"unexpected {describe(exc)}"
        retry_in = self.policy.backoff(row.attempts)
        log.error(
            "slack delivery error id=%s method=%s lane=%s attempt=%d error=%s",
            row.id,
            row.method,
            row.lane,
            row.attempts,
            error,
            exc_info=exc,
        )
        if now + retry_in < row.expires_at:
            queue.retry(row, now + retry_in, error)
            self._schedule(now + retry_in)
        else:
            self._fail(queue, row, f"{error}; given up")

    def _resolve(self, row: OutboxRow) -> tuple[dict | None, str, bool]:
        """The payload with thread_of / update_of replaced by the ts of the message they name."""
        payload = dict(row.payload)
        for ref, field in ((row.thread_of, "thread_ts"), (row.update_of, "ts")):
            if not ref:
                continue
            found = self._memory.reference(ref) or (
                self._durable.reference(ref, row.id if row.id > 0 else None) if self._durable else None
            )
            if found is None:
                return None, f"the message it refers to ({ref}) is unknown", False
            status, channel, ts = found
            if status in (PENDING, SENDING):
                return None, "", True
            if status != SENT or not ts:
                return None, f"the message it refers to ({ref}) was not posted ({status})", False
            payload[field] = ts
            if channel:  # an edit, or a reply, goes where the message is (its fallback channel, if it was moved)
                payload["channel"] = channel
        return payload, "", False

    def _attempt(self, row: OutboxRow, payload: dict) -> Outcome:
        if row.method == RESPONSE_URL:
            return post_response_url(row.url, payload, self.policy, row.attempts)
        return call_web_api(self.client, row.method, payload, self.policy, row.attempts)

    @staticmethod
    def _where(row: OutboxRow, payload: dict, outcome: Outcome) -> tuple[str, str]:
        """The channel and ts of the message a delivered row created or edited."""
        answer = outcome.answer or {}
        channel = str(answer.get("channel") or payload.get("channel") or "")
        return channel, str(answer.get("ts") or answer.get("message_ts") or "")

    def _schedule(self, at: float) -> None:
        with self._cond:
            heapq.heappush(self._wakeups, at)

    def _fail(self, queue: _Durable | MemoryOutbox, row: OutboxRow, error: str) -> None:
        """Failed for good: one error line, and the person it was for is told, when the row says who. Where opsbot
        may not post, a row with a fallback channel is moved there instead."""
        notify = dict(row.notify or {})
        fallback = notify.pop("fallback_channel", "")
        channel = str(row.payload.get("channel", ""))
        if fallback and error.split(",")[0].split(" ")[0] in NOT_THERE and fallback != channel:
            self._move(queue, row, fallback, notify, error)
            return
        if not queue.failed(row, error, time.time()):
            return  # another process took the row over meanwhile
        self._after_failure(row, error)
        log.error(
            "slack delivery failed id=%s method=%s lane=%s attempts=%d error=%s",
            row.id,
            row.method,
            row.lane,
            row.attempts,
            error,
        )
        if not notify:
            return
        text, blocks = failure_note(row, error)
        self._tell(notify, text, blocks or None)

    def _move(self, queue: _Durable | MemoryOutbox, row: OutboxRow, fallback: str, notify: dict, error: str) -> None:
        """The same row, sent again at once to ``fallback``: edits and replies written meanwhile refer to it by its
        key, and must find the message that was posted, not the one that was refused."""
        channel = str(row.payload.get("channel", ""))
        row.payload, row.lane, row.notify = {**row.payload, "channel": fallback}, fallback, notify
        if not queue.move(row, time.time(), f"moved from {channel} ({error})"):
            return  # another process took the row over meanwhile
        log.warning("slack post moved id=%s from=%s to=%s error=%s", row.id, channel, fallback, error)
        self._tell(notify, f"I can't post in <#{channel}> ({error}), so it went to <#{fallback}> instead.", None)

    def _tell(self, notify: dict, text: str, blocks: list[dict] | None) -> None:
        if notify.get("response_url"):
            self.respond(notify["response_url"], text, blocks)
        elif notify.get("channel") and notify.get("user"):
            self.tell_user(notify["channel"], notify["user"], text, blocks)

    def _after_failure(self, row: OutboxRow, error: str) -> None:
        """A row posted with ``after=`` that failed for good: its failure hook, if it has one, before anyone is told."""
        hook = self._failed_hooks.get(row.after) if row.after else None
        if hook is None:
            return
        try:
            hook(row.after_args, error)
        except Exception:
            log.exception("after-failure hook failed hook=%s id=%s", row.after, row.id)

    def _after(self, row: OutboxRow, channel: str, ts: str) -> None:
        if not row.after:
            return
        hook = self._hooks.get(row.after)
        if hook is None:
            log.error("no after-delivery hook named %s; register it with SlackWeb.on id=%s", row.after, row.id)
            return
        try:
            hook(row.after_args, channel, ts)
        except Exception:
            log.exception("after-delivery hook failed hook=%s id=%s", row.after, row.id)
