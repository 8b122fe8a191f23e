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
from bot.store.outbox import PENDING, SENDING, SENT, OutboxRow, OutboxStore

log = logging.getLogger(__name__)
PRUNE_EVERY_S = 3600.0
KEEP_SENT_S = 24 * 3600.0
KEEP_FAILED_S = 7 * 24 * 3600.0
AfterHook = Callable[[dict, str, str], None]
FailedHook = Callable[[dict, str], None]


class _Durable:
    """The database part of the outbox, for one process (``owner``) claiming rows."""

    def __init__(self, store: OutboxStore, owner: str, claim_s: float) -> None:
        self.store, self.owner, self.claim_s = store, owner, claim_s

    def add(self, row: OutboxRow) -> int:
        return self.store.add_outbox(row)

    def claim(self, now: float) -> OutboxRow | None:
        return self.store.claim_outbox(self.owner, now, self.claim_s)

    def reference(self, key: str, before_id: int | None = None) -> tuple[str, str, str] | None:
        return self.store.outbox_reference(key, before_id)

    def sent(self, row: OutboxRow, channel: str, ts: str, now: float) -> bool:
        return self.store.outbox_sent(row.id, self.owner, channel, ts, now)

    def renew(self, row_ids: list[int], now: float) -> None:
        self.store.outbox_renew(row_ids, self.owner, now + self.claim_s)

    def retry(self, row: OutboxRow, next_at: float, error: str) -> bool:
        return self.store.outbox_retry(row.id, self.owner, next_at, error)

    def failed(self, row: OutboxRow, error: str, now: float) -> bool:
        return self.store.outbox_failed(row.id, self.owner, error, now)

    def move(self, row: OutboxRow, now: float, error: str) -> bool:
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
            except Exception:  # a busy or full database: the next round tries again, well within the claim
                log.exception("outbox: could not renew the claims of rows being sent")

    def _claim(self) -> OutboxRow | None:
        now = time.time()
        row = self._memory.claim(now)
        if row is None and self._durable is not None:
            row = self._durable.claim(now)
            if now - self._pruned_at > PRUNE_EVERY_S:
                self._pruned_at = now
                self._durable.store.prune_outbox(now - KEEP_SENT_S, now - KEEP_FAILED_S)
        return row

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
