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
not durably: a log line says so. Rows written before are claimed in memory meanwhile (``outbox_held``).
"""

from __future__ import annotations

import hashlib
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
    RESPONSE_URL,
    SDK_LOG,
    MemoryOutbox,
    RetryPolicy,
    describe,
)
from bot.slack.outbox_worker import AfterHook, FailedHook, OutboxWorker, _Durable
from bot.store.outbox import OutboxRow, OutboxStore

log = logging.getLogger(__name__)
WORKERS = 3  # a few calls in flight at once: one slow channel must not hold up the others
POLL_S = 2.0  # how often idle workers look for rows other processes wrote
CLAIM_S = 25.0  # how long a row being sent is ours: over twice the 10 s call timeout, so only a dead process loses it


@dataclass(frozen=True)
class Notify:
    """Whom to tell, ephemerally, when a post fails for good: a user in a channel, or a response_url."""

    channel: str = ""
    user: str = ""
    response_url: str = ""


class SlackWeb(OutboxWorker):
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
        self._finishing = 0  # deliveries sent but whose after-delivery hook has not run yet: not idle
        self._hooks: dict[str, AfterHook] = {}
        self._failed_hooks: dict[str, FailedHook] = {}
        self._in_flight: set[int] = set()  # rows whose call to Slack is under way, their claims renewed meanwhile
        self._listeners: dict[str, Callable[[dict], None]] = {}
        self._workers = workers
        self._poll_s = poll_s
        self._cond = threading.Condition()
        self._generation = 0  # bumped whenever a row is written or done: a waiting worker looks again
        self._wakeups: list[float] = []  # retry times of rows this process scheduled
        self._threads: list[threading.Thread] = []  # the delivery threads
        self._renewer: threading.Thread | None = None  # renews the claims of the rows they are sending
        self._stopping = False
        self._pruned_at = 0.0
        self._refused = ""  # why the database refuses writes, while it does: rows are claimed in memory meanwhile
        self._write_again_at = 0.0
        self._write_backoff_s = poll_s

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

    def on(self, name: str, fn: AfterHook, failed: FailedHook | None = None) -> None:
        """Run ``fn(args, channel, ts)`` once a row posted with ``after=(name, args)`` is delivered, and
        ``failed(args, error)`` if it fails for good instead (before the person it was for is told)."""
        self._hooks[name] = fn
        if failed is not None:
            self._failed_hooks[name] = failed

    def listen(self, name: str, fn: Callable[[dict], None]) -> None:
        """Run ``fn(args)`` whenever ``emit(name, args)`` is called: how one part of the app tells another of a change
        it made, in the caller's thread and transaction, without importing it."""
        self._listeners[name] = fn

    def emit(self, name: str, args: dict) -> None:
        """Tell the listener of ``name``; its failure is logged and never undoes the caller's change (a nested
        transaction of the listener's own rolls back alone)."""
        if (fn := self._listeners.get(name)) is not None:
            try:
                fn(args)
            except Exception:  # noqa: BLE001 - the change that emitted stands whatever a listener does
                log.exception("listener failed event=%s", name)

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
            if self._durable is not None:
                self._renewer = threading.Thread(target=self._renew_claims, name="opsbot-slack-claims", daemon=True)
                self._renewer.start()
        return self

    def stop(self, timeout: float | None = None) -> bool:
        """Stop delivering; what is not sent yet stays in the outbox for the next start (or process). True when
        every delivery thread ended within ``timeout`` (a call to Slack in progress is let finish)."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
            threads, self._threads = self._threads, []
            if self._renewer is not None:
                threads, self._renewer = [*threads, self._renewer], None
        deadline = time.monotonic() + (timeout if timeout is not None else self.policy.timeout_s + 2)
        for thread in threads:
            thread.join(max(deadline - time.monotonic(), 0))
        return not any(thread.is_alive() for thread in threads)

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
        with self._cond:
            finishing = self._finishing
        return durable + self._memory.busy() + finishing

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
