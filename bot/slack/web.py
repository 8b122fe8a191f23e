"""SlackWeb: the one way opsbot talks to Slack. Posts go through a durable outbox, delivered by threads of its own.

Guarantee: at least once. A post is written to the database (the ``outbox`` table) before any call is made,
so it is not lost while the process lives, nor when it stops or crashes: the next process on the same
database delivers it. A call that timed out although Slack did process it is made again, so a message can
rarely show twice. Within a lane (a channel, or one response_url) rows go in the order written; lanes never
wait for each other. 429 waits for Retry-After (at most 30 s), 5xx, error pages, resets and timeouts back
off exponentially (0.5 s doubling to 20 s, with jitter); what Slack refuses (not_in_channel, invalid_blocks
...) fails at once. A post is given up after 6 hours, a response_url after 30 minutes (Slack's limit),
with an error log line, and the person it was for is told when the post names whom to tell (``Notify``).
If the database cannot be written (disk full), the post is kept in memory and delivered the same way, but
not durably: a log line says so.
"""

from __future__ import annotations

import hashlib
import heapq
import logging
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from slack_sdk import WebClient

from bot.slack.delivery import (
    NOT_THERE,
    RESPONSE_URL,
    SDK_LOG,
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
WORKERS = 3  # a few calls in flight at once: one slow channel must not hold up the others
POLL_S = 2.0  # how often idle workers look for rows other processes wrote
CLAIM_S = 25.0  # how long a row being sent is ours: over twice the 10 s call timeout, so only a dead process loses it
PRUNE_EVERY_S = 3600.0
KEEP_SENT_S = 24 * 3600.0
KEEP_FAILED_S = 7 * 24 * 3600.0
AfterHook = Callable[[dict, str, str], None]


@dataclass(frozen=True)
class Notify:
    """Whom to tell, ephemerally, when a post fails for good: a user in a channel, or a response_url."""

    channel: str = ""
    user: str = ""
    response_url: str = ""


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

    def sent(self, row: OutboxRow, channel: str, ts: str, now: float) -> None:
        self.store.outbox_sent(row.id, channel, ts, now)

    def retry(self, row: OutboxRow, next_at: float, error: str) -> bool:
        return self.store.outbox_retry(row.id, self.owner, next_at, error)

    def failed(self, row: OutboxRow, error: str, now: float) -> bool:
        return self.store.outbox_failed(row.id, self.owner, error, now)

    def busy(self) -> int:
        return self.store.outbox_busy()


class SlackWeb:
    """Domain verbs for Slack (post, update, tell_user, respond, call) over a durable outbox.

    ``store`` None keeps the outbox in memory only (the local shell: its fake Slack dies with the session,
    and its database may be a server's). Register after-delivery hooks with ``on`` before ``start``.
    """

    def __init__(
        self,
        client: WebClient,
        store: OutboxStore | None,
        *,
        policy: RetryPolicy | None = None,
        workers: int = WORKERS,
        poll_s: float = POLL_S,
        claim_s: float = CLAIM_S,
    ) -> None:
        self.policy = policy or RetryPolicy()
        # Our own client: no retry handlers (the outbox retries, without sleeping in anyone's thread).
        self.client = WebClient(
            token=client.token,
            base_url=client.base_url,
            timeout=self.policy.timeout_s,  # type: ignore[arg-type]
            ssl=client.ssl,
            proxy=client.proxy,
            headers=client.headers,
            logger=SDK_LOG,
            retry_handlers=[],
        )
        self.owner = f"{uuid.uuid4().hex[:12]}"
        self._durable = _Durable(store, self.owner, claim_s) if store is not None else None
        self._memory = MemoryOutbox()
        self._hooks: dict[str, AfterHook] = {}
        self._workers = workers
        self._poll_s = poll_s
        self._cond = threading.Condition()
        self._generation = 0  # bumped whenever a row is written or done: a waiting worker looks again
        self._wakeups: list[float] = []  # retry times of rows this process scheduled
        self._threads: list[threading.Thread] = []
        self._stopping = False
        self._pruned_at = 0.0

    # -- the verbs ------------------------------------------------------------------------------------------

    def post(
        self,
        channel: str,
        text: str,
        blocks: list[dict] | None = None,
        *,
        thread_ts: str | None = None,
        thread_of: str | None = None,
        key: str | None = None,
        reply_broadcast: bool = False,
        after: tuple[str, dict] | None = None,
        notify: Notify | None = None,
        fallback_channel: str = "",
    ) -> int:
        """A message in ``channel`` (in the thread of ``thread_ts``, or of the message named ``thread_of``).

        ``key`` names the message for later rows' ``thread_of`` / ``update_of`` (resolved when those are sent,
        against messages of the last day); ``after=(hook, args)`` runs that hook once it is delivered. When
        opsbot cannot post in ``channel`` (not a member, archived ...), the message goes to ``fallback_channel``
        instead, with the same key and hook, and whoever ``notify`` names is told where it went.
        """
        payload: dict[str, Any] = {"channel": channel, "text": text}
        if blocks:
            payload["blocks"] = blocks
        if thread_ts:
            payload["thread_ts"] = thread_ts
        if reply_broadcast:
            payload["reply_broadcast"] = True
        notified = {k: v for k, v in vars(notify).items() if v} if notify else {}
        if fallback_channel and fallback_channel != channel:
            notified["fallback_channel"] = fallback_channel
        row = OutboxRow("chat.postMessage", payload, lane=channel, key=key or "", thread_of=thread_of or "")
        row.notify = notified
        return self._enqueue(row, after)

    def update(
        self,
        channel: str,
        text: str,
        blocks: list[dict] | None = None,
        *,
        ts: str | None = None,
        update_of: str | None = None,
        key: str | None = None,
        after: tuple[str, dict] | None = None,
    ) -> int:
        """Edit a message, given by ``ts`` or by the key it was posted with.

        Older edits of the same message not sent yet are dropped (superseded), with their ``after`` hooks.
        """
        if not ts and not update_of:
            raise ValueError("update needs the message: ts=... or update_of=KEY")
        payload: dict[str, Any] = {"channel": channel, "text": text}
        if blocks is not None:
            payload["blocks"] = blocks
        if ts:
            payload["ts"] = ts
        target = f"key:{update_of}" if update_of else f"ts:{channel}:{ts}"
        row = OutboxRow("chat.update", payload, lane=channel, key=key or "", update_of=update_of or "", target=target)
        return self._enqueue(row, after)

    def tell_user(self, channel: str, user: str, text: str, blocks: list[dict] | None = None) -> int:
        """An ephemeral message only ``user`` sees, in ``channel``."""
        payload: dict[str, Any] = {"channel": channel, "user": user, "text": text}
        if blocks:
            payload["blocks"] = blocks
        return self._enqueue(OutboxRow("chat.postEphemeral", payload, lane=channel), None)

    def respond(
        self,
        response_url: str,
        text: str = "",
        blocks: list[dict] | None = None,
        *,
        response_type: str = "ephemeral",
        replace_original: bool = False,
        delete_original: bool = False,
    ) -> int:
        """A message through a slash command's or a button's response_url (valid 30 minutes)."""
        if not response_url:
            log.warning("respond without a response_url: nothing sent text=%r", text[:80])
            return 0
        payload: dict[str, Any] = {"delete_original": True}
        if not delete_original:
            payload = {"text": text, "response_type": response_type}
            if blocks:
                payload["blocks"] = blocks
            if replace_original:
                payload["replace_original"] = True
        # The lane is a digest: the URL itself is a capability, kept only until the row is done.
        lane = "response:" + hashlib.sha256(response_url.encode()).hexdigest()[:16]
        return self._enqueue(OutboxRow(RESPONSE_URL, payload, lane=lane, url=response_url), None)

    def call(self, method_name: str, **kwargs: Any) -> dict | None:
        """Call a Web API method now, for an answer needed now; None (and one log line) on any failure."""
        return self.try_call(method_name, **kwargs)[0]

    def try_call(self, method_name: str, **kwargs: Any) -> tuple[dict | None, str]:
        """Like ``call``, with what went wrong: (answer, "") or (None, Slack's error code or the failure)."""
        try:
            method = getattr(self.client, method_name.replace(".", "_"), None)
            if callable(method):  # the SDK's method knows how Slack wants its arguments encoded
                response = method(**kwargs)
            else:
                response = self.client.api_call(method_name, json=kwargs)
            return dict(response.data), ""  # type: ignore[arg-type]
        except Exception as exc:  # fail-soft: the caller says what it can do without the answer
            error = describe(exc)
            log.warning("slack call failed method=%s error=%s", method_name, error)
            return None, error

    def on(self, name: str, fn: AfterHook) -> None:
        """Run ``fn(args, channel, ts)`` once a row posted with ``after=(name, args)`` is delivered."""
        self._hooks[name] = fn

    # -- lifecycle ------------------------------------------------------------------------------------------

    def start(self) -> SlackWeb:
        """Start the delivery threads (once)."""
        with self._cond:
            if self._threads:
                return self
            self._stopping = False
            for n in range(self._workers):
                thread = threading.Thread(target=self._work, name=f"opsbot-slack-{n}", daemon=True)
                self._threads.append(thread)
                thread.start()
        return self

    def stop(self, timeout: float | None = None) -> None:
        """Stop delivering; what is not sent yet stays in the outbox for the next start (or process)."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
            threads, self._threads = self._threads, []
        deadline = time.monotonic() + (timeout if timeout is not None else self.policy.timeout_s + 2)
        for thread in threads:
            thread.join(max(deadline - time.monotonic(), 0))

    def wait_idle(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds until nothing is pending or being sent; True when so."""
        deadline = time.monotonic() + timeout
        while True:
            if self._busy() == 0:
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            with self._cond:
                self._cond.wait(min(remaining, 0.05))

    def _busy(self) -> int:
        try:
            durable = self._durable.busy() if self._durable is not None else 0
        except sqlite3.Error:
            durable = 1  # cannot tell: not idle
        return durable + self._memory.busy()

    # -- delivery ---------------------------------------------------------------------------------------------

    def _enqueue(self, row: OutboxRow, after: tuple[str, dict] | None) -> int:
        """Write the row before anything is sent; in memory when the database refuses it."""
        now = time.time()
        row.created_at = row.next_at = now
        max_age = self.policy.response_url_max_age_s if row.method == RESPONSE_URL else self.policy.max_age_s
        row.expires_at = now + max_age
        if after is not None:
            row.after, row.after_args = after
        row_id = 0
        if self._durable is not None and self._durable.store.in_transaction_here():
            # Joined to the caller's change (a deploy's approval, its finish): stored with it or not at all,
            # never kept in memory for a change that may roll back.
            row_id = self._durable.add(row)
        elif self._durable is not None:
            try:
                row_id = self._durable.add(row)
            except sqlite3.Error as exc:
                log.error(
                    "outbox not durable: the database refused the post, kept in memory method=%s lane=%s error=%s",
                    row.method,
                    row.lane,
                    exc,
                )
        if not row_id:
            row_id = self._memory.add(row)
        self._kick()
        return row_id

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
                self._deliver(row)
                continue
            with self._cond:
                if not self._stopping and self._generation == seen:
                    self._cond.wait(self._sleep_s())

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
            outcome = self._attempt(row, payload)
            if outcome.ok:
                channel, ts = self._where(row, payload, outcome)
                queue.sent(row, channel, ts, time.time())
                self._after(row, channel, ts)
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
        finally:
            self._kick()  # later rows of its lane, and rows waiting for it, may go now

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
            if field == "ts" and channel:
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
        """Failed for good: one error line, and the person it was for is told, when the row says who."""
        if not queue.failed(row, error, time.time()):
            return  # another process took the row over meanwhile
        log.error(
            "slack delivery failed id=%s method=%s lane=%s attempts=%d error=%s",
            row.id,
            row.method,
            row.lane,
            row.attempts,
            error,
        )
        notify = dict(row.notify or {})
        fallback = notify.pop("fallback_channel", "")
        channel = str(row.payload.get("channel", ""))
        if fallback and error.split(",")[0].split(" ")[0] in NOT_THERE and fallback != channel:
            moved = OutboxRow(row.method, {**row.payload, "channel": fallback}, lane=fallback, key=row.key,
                              thread_of=row.thread_of)
            moved.notify = notify
            self._enqueue(moved, (row.after, row.after_args) if row.after else None)
            log.info("slack post moved id=%s from=%s to=%s error=%s", row.id, channel, fallback, error)
            text = f"I can't post in <#{channel}> ({error}), so it went to <#{fallback}> instead."
            self._tell(notify, text, None)
            return
        if not notify:
            return
        text, blocks = failure_note(row, error)
        self._tell(notify, text, blocks or None)

    def _tell(self, notify: dict, text: str, blocks: list[dict] | None) -> None:
        if notify.get("response_url"):
            self.respond(notify["response_url"], text, blocks)
        elif notify.get("channel") and notify.get("user"):
            self.tell_user(notify["channel"], notify["user"], text, blocks)

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
