"""One delivery attempt of an outbox row, what its failure means, and the queue kept when the database is full.

``bot.slack.web.SlackWeb`` runs these; nothing here sleeps or retries by itself.
"""

from __future__ import annotations

import http.client
import itertools
import logging
import math
import random
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError
from slack_sdk.webhook import WebhookClient

from bot.store.outbox import FAILED, PENDING, SENDING, SENT, OutboxRow

RESPONSE_URL = "response_url"  # the method of a row that POSTs to a response_url, not to the Web API
# slack_sdk logs an error line of its own for every failed request; the outbox logs one line with the row's
# context instead, so the SDK's logger for our clients only speaks when something is really wrong.
log = logging.getLogger(__name__)
SDK_LOG = logging.getLogger("bot.slack.sdk")
SDK_LOG.setLevel(logging.CRITICAL)
# Slack errors that come with HTTP 200 or 4xx but say "try again later".
TRANSIENT_ERRORS = frozenset(
    {"ratelimited", "internal_error", "fatal_error", "service_unavailable", "request_timeout", "timeout"}
)
NON_JSON = "Received a response in a non-JSON format"  # slack_sdk's error for an HTML or empty error page
HINTS = {
    "not_in_channel": "invite me with `/invite @opsbot`",
    "channel_not_found": "the channel is gone or private to me: invite me with `/invite @opsbot`",
    "is_archived": "the channel is archived",
    "restricted_action": "the channel's settings do not let me post there",
    "msg_too_long": "the message was too long for Slack",
}
NOT_THERE = frozenset({"not_in_channel", "channel_not_found", "is_archived", "restricted_action"})


@dataclass(frozen=True)
class RetryPolicy:
    """How long one call may take, how long to wait between attempts, and when to give up."""

    timeout_s: float = 10.0  # per call: a hung connection costs this, not the SDK's 30 s
    base_s: float = 0.5  # the first backoff; doubled each attempt, with jitter
    cap_s: float = 20.0  # the longest backoff: nine 5xx in a row still end within about two minutes
    retry_after_cap_s: float = 30.0  # Slack's Retry-After is honoured up to this
    max_age_s: float = 6 * 3600.0  # a post older than this is given up
    response_url_max_age_s: float = 30 * 60.0  # Slack accepts a response_url for 30 minutes

    def backoff(self, attempts: int) -> float:
        """Seconds before attempt ``attempts + 1``: capped exponential, between half and all of it."""
        delay = min(self.cap_s, self.base_s * 2 ** max(attempts - 1, 0))
        return random.uniform(delay / 2, delay)

    def retry_after(self, headers: Mapping[str, Any], attempts: int) -> float:
        """Slack's Retry-After up to the cap; the usual backoff when it is missing or not a number."""
        value = next((v for k, v in headers.items() if str(k).lower() == "retry-after"), None)
        if isinstance(value, list):
            value = value[0] if value else None
        try:
            seconds = float(value)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            return self.backoff(attempts)
        if not math.isfinite(seconds) or seconds < 0:
            return self.backoff(attempts)
        return min(seconds, self.retry_after_cap_s)


@dataclass(frozen=True)
class Outcome:
    """What one attempt gave: Slack's answer, or an error and, when worth it, how long to wait."""

    answer: dict[str, Any] | None = None
    error: str = ""
    retry_in: float | None = None  # None: failed for good
    response: Any = None  # the SDK's answer itself (its headers too), when there is one

    @property
    def ok(self) -> bool:
        return self.answer is not None


def call_web_api(
    client: WebClient, method: str, payload: dict[str, Any], policy: RetryPolicy, attempts: int, read: bool = False
) -> Outcome:
    """One Web API call with a JSON body (``read``: a GET with the payload as parameters, as Slack's read methods
    such as conversations.info take them)."""
    try:
        if read:
            response = client.api_call(method, http_verb="GET", params=payload)
        else:
            response = client.api_call(method, json=payload)
        return Outcome(answer=dict(response.data), response=response)  # type: ignore[arg-type]
    except SlackApiError as exc:
        response = exc.response
        data = response.data if isinstance(response.data, dict) else {}
        return judge(response.status_code, str(data.get("error", "")), response.headers, policy, attempts)
    except (OSError, http.client.HTTPException) as exc:  # refused, reset, timed out, cut short
        return Outcome(error=describe(exc), retry_in=policy.backoff(attempts))
    except (ValueError, LookupError) as exc:
        return _not_slack(exc, policy, attempts)


def call_while_waiting(
    call: Callable[[int], Outcome], attempts: int, longest_wait: float, sleep: Callable[[float], None] = time.sleep
) -> Outcome:
    """A call someone is waiting on (a declarer for their incident's channel, `opsbot serve` for its token check):
    what the outbox would try again (429, 5xx, an error page, a reset) is tried again here, ``attempts`` times at
    most, after Slack's Retry-After or the backoff; a wait longer than ``longest_wait`` is not waited for.
    ``call`` makes attempt number n."""
    for attempt in range(1, attempts + 1):
        outcome = call(attempt)
        if outcome.ok or outcome.retry_in is None or outcome.retry_in > longest_wait or attempt == attempts:
            return outcome
        log.warning("slack call failed error=%s attempt=%d: trying again", outcome.error, attempt)
        sleep(outcome.retry_in)
    raise AssertionError("attempts must be at least 1")


def post_response_url(url: str, payload: dict[str, Any], policy: RetryPolicy, attempts: int) -> Outcome:
    """One POST to a response_url."""
    hook = WebhookClient(url, timeout=policy.timeout_s, retry_handlers=[], logger=SDK_LOG)  # type: ignore[arg-type]
    try:
        response = hook.send_dict(payload)
    except (OSError, http.client.HTTPException) as exc:
        return Outcome(error=describe(exc), retry_in=policy.backoff(attempts))
    except (ValueError, LookupError) as exc:
        return _not_slack(exc, policy, attempts)
    if response.status_code == 200:
        return Outcome(answer={"ok": True})
    body = (response.body or "").strip()
    error = body if body.isidentifier() else ""  # Slack answers `expired_url`, `used_url`; not an HTML page
    return judge(response.status_code, error, response.headers or {}, policy, attempts)


def _not_slack(exc: Exception, policy: RetryPolicy, attempts: int) -> Outcome:
    """The SDK could not read the answer: a proxy's page in a charset it does not declare (UnicodeDecodeError)
    or in one Python does not know (LookupError). Not Slack's word, so it is tried again like a 5xx."""
    return Outcome(error=f"not a Slack answer ({type(exc).__name__})", retry_in=policy.backoff(attempts))


def judge(status: int, error: str, headers: Mapping[str, Any], policy: RetryPolicy, attempts: int) -> Outcome:
    """Slack said no: wait and try again (429, 5xx, an error page), or give up (anything Slack refuses)."""
    if status == 429 or error == "ratelimited":
        return Outcome(error="ratelimited", retry_in=policy.retry_after(headers, attempts))
    if error.startswith(NON_JSON):
        return Outcome(error=f"http {status}, not a Slack answer", retry_in=policy.backoff(attempts))
    if status >= 500 or status == 408 or error in TRANSIENT_ERRORS:
        return Outcome(error=f"http {status} {error}".strip(), retry_in=policy.backoff(attempts))
    return Outcome(error=error or f"http {status}")


def describe(exc: BaseException) -> str:
    """A short, token-free description of a failure, for a log line or a row's last_error."""
    if isinstance(exc, SlackApiError):
        data = exc.response.data if isinstance(exc.response.data, dict) else {}
        error = str(data.get("error", ""))
        return "not a Slack answer" if error.startswith(NON_JSON) else error or f"http {exc.response.status_code}"
    reason = getattr(exc, "reason", None)  # urllib's URLError wraps the socket error
    return f"{type(exc).__name__}: {reason if reason is not None else exc}"[:200]


def failure_note(row: OutboxRow, error: str) -> tuple[str, list[dict]]:
    """What to tell the person a post was for, when it failed for good: why, and the message itself."""
    channel = str(row.payload.get("channel", ""))
    where = f"in <#{channel}>" if channel else "there"
    code = error.split(",")[0].split(" ")[0]
    hint = HINTS.get(code, "see opsbot's log for details")
    note = f"I could not post this {where} ({error}): {hint}."
    text = str(row.payload.get("text", ""))
    blocks = row.payload.get("blocks") if code in NOT_THERE else None  # shown privately, as it was meant
    context = {"type": "context", "elements": [{"type": "mrkdwn", "text": note}]}
    if isinstance(blocks, list) and blocks:
        return f"{text}\n{note}", [*blocks, context]
    return f"{note}\n{text}".strip(), []


class MemoryOutbox:
    """Rows the database would not take (disk full): delivered in the same order, lost if the process ends."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._rows: list[OutboxRow] = []  # pending or being sent, in the order written
        self._named: dict[str, tuple[str, str, str]] = {}  # key -> (status, channel, ts) once done
        self._ids = itertools.count(-1, -1)  # negative: never confused with a database row

    def add(self, row: OutboxRow) -> int:
        with self._lock:
            if reference := row.update_of or row.thread_of:  # in the lane of the message it refers to
                row.lane = next((r.lane for r in reversed(self._rows) if r.key == reference), row.lane)
            if row.target:
                self._rows = [r for r in self._rows if not (r.target == row.target and r.status == PENDING)]
            row.id = next(self._ids)
            self._rows.append(row)
            return row.id

    def claim(self, now: float) -> OutboxRow | None:
        """The first row whose time came, with no earlier row of its lane or its reference still on the way."""
        with self._lock:
            busy_lanes: set[str] = set()
            open_keys: set[str] = set()
            for row in self._rows:
                waiting = {row.thread_of, row.update_of} & open_keys
                if row.status == PENDING and row.next_at <= now and row.lane not in busy_lanes and not waiting:
                    row.status, row.attempts = SENDING, row.attempts + 1
                    return row
                busy_lanes.add(row.lane)
                if row.key:
                    open_keys.add(row.key)
            return None

    def reference(self, key: str, before_id: int | None = None) -> tuple[str, str, str] | None:
        with self._lock:
            for row in reversed(self._rows):
                if row.key == key:
                    return row.status, "", ""
            return self._named.get(key)

    def sent(self, row: OutboxRow, channel: str, ts: str, now: float) -> bool:
        self._done(row, (SENT, channel, ts))
        return True

    def retry(self, row: OutboxRow, next_at: float, error: str) -> bool:
        with self._lock:
            row.status, row.next_at, row.last_error = PENDING, next_at, error
            return True

    def failed(self, row: OutboxRow, error: str, now: float) -> bool:
        self._done(row, (FAILED, "", ""))
        return True

    def move(self, row: OutboxRow, now: float, error: str) -> bool:
        """Pending again, now, in its place: the caller changed its channel and lane; the edits and replies still to
        go that refer to it move to that lane too."""
        with self._lock:
            for other in self._rows:
                if row.key and other.status == PENDING and row.key in (other.thread_of, other.update_of):
                    other.lane = row.lane
        return self.retry(row, now, error)

    def busy(self) -> int:
        with self._lock:
            return len(self._rows)

    def _done(self, row: OutboxRow, result: tuple[str, str, str]) -> None:
        with self._lock:
            self._rows = [r for r in self._rows if r is not row]
            if row.key:
                self._named[row.key] = result
