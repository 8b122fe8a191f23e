"""A local stand-in for the Slack Web API: records every call and answers like Slack.

Used by the tests, by `opsbot shell` (the real Bolt app talks to it) and by benchmarks. Stdlib only:
a ThreadingHTTPServer on 127.0.0.1, port 0 (fake_http.py), served from a daemon thread. Hand `api.url` to
`WebClient(base_url=...)`. Tokens are never kept: the Authorization header and any `token` field are
masked before a call is recorded, and only a digest remains so tests can still check which token was used.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any
from urllib.parse import quote

from bot.slack.local.fake_http import FakeSlackServer
from bot.slack.local.fake_methods import SlackMethods, _channel, _default_user

log = logging.getLogger(__name__)

RESPONSE_URL_METHOD = "response_url"
REDACTED = "(redacted)"
# How often serve_forever checks for shutdown; the default 0.5 s would make every stop() that slow.
SHUTDOWN_POLL_SECONDS = 0.02
SECRET_FIELDS = frozenset({"token", "client_secret"})

Answer = dict[str, Any]
Body = dict[str, Any]


@dataclass(frozen=True)
class Call:
    """One request the fake received, with the answer's HTTP status, Slack error (if any) and JSON answer."""

    method: str
    path: str
    body: Body
    headers: dict[str, str]
    at: float
    status: int = 200
    error: str | None = None
    token_digest: str = field(default="", repr=False)
    answer: Answer = field(default_factory=dict, repr=False, compare=False)  # e.g. the ts of a posted message

    @property
    def ok(self) -> bool:
        """Whether the fake answered this call with HTTP 200 and `"ok": true`."""
        return self.status == 200 and self.error is None

    def used_token(self, token: str) -> bool:
        """Whether the call was authorised with this token (compared by digest; the token is not kept)."""
        return bool(self.token_digest) and hmac.compare_digest(self.token_digest, _digest(token))


@dataclass(frozen=True)
class _Failure:
    """One injected failure waiting for its call."""

    status: int
    retry_after: int | str
    error: str
    hang: float = 0.0  # seconds to wait before answering (a client with a shorter timeout gives up first)
    html: bool | str = False  # answer with an HTML error page, as a proxy does; a str: in that encoding
    reset: bool = False  # answer nothing: reset the connection
    slow: bool = False  # answer as usual, the call done, but spread over ``hang`` seconds in two halves


class FakeSlackAPI(SlackMethods):
    """A recording, Slack-shaped HTTP server on a random loopback port."""

    def __init__(self, strict_channels: bool = False) -> None:
        """``strict_channels``: conversations.info knows only the channels created or added here, and says so of any
        other (``opsbot shell``'s stand-in, which must not vouch for a real workspace's channels)."""
        self.strict_channels = strict_channels
        self.socket_url: str = "wss://fake.slack.invalid/link/?ticket=fake"
        self._cond = threading.Condition()
        self._stopping = threading.Event()  # ends the waits of hanging answers: set by stop() and release()
        self._calls: list[Call] = []
        self._failures: dict[str, deque[_Failure]] = {}
        self._messages: dict[str, list[dict[str, Any]]] = {}
        self._channels: dict[str, dict[str, Any]] = {}
        self._users: dict[str, dict[str, Any]] = {}
        self._ts_counter = 0
        self._id_counter = 1_000_000
        self._server: FakeSlackServer | None = None
        self._thread: threading.Thread | None = None
        self._answers: dict[str, Callable[[Body], Answer]] = {
            "auth.test": self._auth_test,
            "apps.connections.open": lambda body: {"ok": True, "url": self.socket_url},
            "chat.postMessage": self._chat_post_message,
            "chat.postEphemeral": self._chat_post_ephemeral,
            "chat.update": self._chat_update,
            "chat.delete": self._chat_delete,
            "chat.getPermalink": self._chat_get_permalink,
            "conversations.create": self._conversations_create,
            "conversations.info": self._conversations_info,
            "users.conversations": self._users_conversations,
            "conversations.invite": self._conversations_invite,
            "conversations.open": self._conversations_open,
            "conversations.replies": self._conversations_replies,
            "conversations.history": self._conversations_history,
            "reactions.add": lambda body: {"ok": True},
            "users.info": self._users_info,
            "views.open": self._view,
            "views.push": self._view,
            "views.update": self._view,
            "views.publish": self._view,
        }

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> FakeSlackAPI:
        """Bind 127.0.0.1 on a free port and serve from a daemon thread."""
        if self._server is not None:
            raise RuntimeError("FakeSlackAPI is already running; call stop() before starting it again")
        self._stopping.clear()
        self._server = FakeSlackServer(self)
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(SHUTDOWN_POLL_SECONDS,), name="fake-slack-api", daemon=True
        )
        self._thread.start()
        log.debug("fake slack api started url=%s", self.url)
        return self

    def stop(self) -> None:
        """Stop serving and release the port; safe to call twice."""
        server, thread = self._server, self._thread
        self._server, self._thread = None, None
        self._stopping.set()
        if server is not None:
            server.shutdown()
            server.server_close()
        if thread is not None:
            thread.join(timeout=5)

    def __enter__(self) -> FakeSlackAPI:
        """Start serving for the duration of a with block."""
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        """Stop serving when the with block ends."""
        self.stop()

    @property
    def port(self) -> int:
        """The port the server is bound to."""
        if self._server is None:
            raise RuntimeError("FakeSlackAPI is not running; call start() or use it as a context manager")
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        """The Web API base URL for `WebClient(base_url=...)`, with its trailing slash."""
        return f"http://127.0.0.1:{self.port}/api/"

    def response_url(self, name: str = "x") -> str:
        """A response_url to put in slash-command or interactivity payloads; posts to it are recorded."""
        return f"http://127.0.0.1:{self.port}/response/{quote(name, safe='')}"

    # -- test controls ---------------------------------------------------------------------------

    def fail_next(
        self,
        method: str,
        status: int = 429,
        times: int = 1,
        retry_after: int | str = 0,
        error: str | None = None,
        *,
        hang: float = 0.0,
        html: bool | str = False,
        reset: bool = False,
    ) -> None:
        """Make the next `times` calls of `method` fail: 429 ratelimited, 5xx internal_error, or `error`.

        ``retry_after`` is sent as given with a 429 (a string such as "soon" makes it malformed); ``hang``
        waits that many seconds before answering; ``html`` answers with an HTML error page instead of JSON
        (``html="latin-1"``: in that encoding, with no charset said);
        ``reset`` resets the connection without any answer.
        """
        if times < 1 or not 200 <= status <= 599 or hang < 0:
            raise ValueError(
                f"fail_next needs times >= 1, an HTTP status 200-599 and hang >= 0, got {times=} {status=}"
            )
        if error is None:
            error = "ratelimited" if status == 429 else "internal_error" if status >= 500 else "fake_failure"
        if reset:
            error = "connection_reset"
        with self._cond:
            pending = self._failures.setdefault(method, deque())
            pending.extend(_Failure(status, retry_after, error, hang, html, reset) for _ in range(times))

    def slow_next(self, method: str, seconds: float, times: int = 1) -> None:
        """Make the next `times` calls of `method` succeed as usual, but answer over ``seconds``: the headers after
        half of it, the body after the rest, so that no single read waits the whole time (a slow proxy)."""
        if times < 1 or seconds <= 0:
            raise ValueError(f"slow_next needs times >= 1 and seconds > 0, got {times=} {seconds=}")
        with self._cond:
            pending = self._failures.setdefault(method, deque())
            pending.extend(_Failure(200, 0, "", hang=seconds, slow=True) for _ in range(times))

    def release(self) -> None:
        """Drop the failures still queued and answer hanging calls now: a test's teardown calls this before its
        bot stops, so that the stop does not wait out a hang the test no longer needs."""
        with self._cond:
            self._failures.clear()
        self._stopping.set()

    def add_channel(self, channel_id: str, name: str, private: bool = False) -> None:
        """Make conversations.info describe this channel (public unless ``private``); others are public channels."""
        with self._cond:
            self._channels[channel_id] = {**_channel(channel_id, name), "is_private": private}

    def add_user(self, user_id: str, **fields: Any) -> None:
        """Make users.info answer with these fields for this user (merged over the default profile)."""
        with self._cond:
            self._users[user_id] = {**_default_user(user_id), **fields}

    def clear(self) -> None:
        """Forget recorded calls; pending failures and conversation state are kept."""
        with self._cond:
            self._calls.clear()

    # -- inspection ------------------------------------------------------------------------------

    def calls(self, method: str | None = None) -> list[Call]:
        """Every recorded call (failed attempts included), optionally only those of one method."""
        with self._cond:
            return [c for c in self._calls if method is None or c.method == method]

    def wait_for(
        self, method: str, count: int = 1, timeout: float = 5.0, predicate: Callable[[Call], bool] | None = None
    ) -> list[Call]:
        """Block until `count` matching calls arrived and return all matching so far; AssertionError on timeout."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                matching = [c for c in self._calls if c.method == method and (predicate is None or predicate(c))]
                remaining = deadline - time.monotonic()
                if len(matching) >= count or remaining <= 0:
                    break
                self._cond.wait(remaining)
            received = list(self._calls)
        if len(matching) >= count:
            return matching
        which = " matching the predicate" if predicate is not None else ""
        raise AssertionError(
            f"expected {count} {method} call(s){which} within {timeout}s but got {len(matching)}; "
            f"received {len(received)} call(s): {_summarise(received)}"
        )

    def messages(self, channel: str | None = None) -> list[Body]:
        """Bodies of the successful chat.postMessage calls, optionally to one channel."""
        return [c.body for c in self.calls("chat.postMessage") if c.ok and channel in (None, c.body.get("channel"))]

    def ephemerals(self, channel: str | None = None, user: str | None = None) -> list[Body]:
        """Bodies of the successful chat.postEphemeral calls, optionally to one channel and/or user."""
        return [
            c.body
            for c in self.calls("chat.postEphemeral")
            if c.ok and channel in (None, c.body.get("channel")) and user in (None, c.body.get("user"))
        ]

    def responses(self, name: str | None = None) -> list[Body]:
        """Bodies posted to response_url targets, optionally only those of `response_url(name)`."""
        path = None if name is None else f"/response/{quote(name, safe='')}"
        return [c.body for c in self.calls(RESPONSE_URL_METHOD) if c.ok and path in (None, c.path)]

    # -- dispatch --------------------------------------------------------------------------------

    def _dispatch(
        self, path: str, body: Body, headers: dict[str, str]
    ) -> tuple[int, Answer, dict[str, str], _Failure | None]:
        """Record one call and decide its answer: status, JSON body, extra headers and any injected failure."""
        if path.startswith("/api/") and len(path) > len("/api/"):
            method = path[len("/api/") :]
        elif path.startswith("/response/"):
            method = RESPONSE_URL_METHOD
        else:
            method = path
        digest = _token_digest(headers, body)
        headers, body = _mask_headers(headers), _mask_body(body)
        extra: dict[str, str] = {}
        failure = None
        with self._cond:
            pending = self._failures.get(method)
            if pending and pending[0].slow:
                failure = pending.popleft()
                status, answer = self._answer(method, body)
            elif pending:
                failure = pending.popleft()
                status, answer = (0 if failure.reset else failure.status), {"ok": False, "error": failure.error}
                if status == 429:
                    extra["Retry-After"] = str(failure.retry_after)
            elif method == RESPONSE_URL_METHOD:
                status, answer = 200, {"ok": True}
            elif method == path:
                status, answer = 404, {"ok": False, "error": "unknown_path"}
            else:
                status, answer = self._answer(method, body)
            error = None if answer.get("ok") else str(answer.get("error", "unknown_error"))
            self._calls.append(Call(method, path, body, headers, time.time(), status, error, digest, answer))
            self._cond.notify_all()
        log.debug("fake slack call method=%s status=%s error=%s", method, status, error)
        return status, answer, extra, failure

    def _answer(self, method: str, body: Body) -> tuple[int, Answer]:
        """Answer a Web API method; unknown methods get `{"ok": true}`."""
        handler = self._answers.get(method)
        if handler is None:
            return 200, {"ok": True}
        try:
            return 200, handler(body)
        except Exception as exc:  # a bug in the fake must reach the test, not hang the client
            log.exception("fake slack api failed method=%s", method)
            return 500, {"ok": False, "error": f"fake_api_error: {type(exc).__name__}: {exc}"}


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _token_digest(headers: dict[str, str], body: Body) -> str:
    """The digest of the bearer token, or of a `token` form field; empty when neither is present."""
    auth = headers.get("authorization", "")
    token = auth.removeprefix("Bearer ").strip() if auth.startswith("Bearer ") else body.get("token")
    return _digest(token) if isinstance(token, str) and token else ""


def _mask(secret: str) -> str:
    """Keep only the token kind (xoxb-, xapp- ...) so a test can tell tokens apart without seeing one."""
    kind = secret.split("-", 1)[0] + "-" if "-" in secret and secret.startswith("x") else ""
    return f"{kind}{REDACTED}"


def _mask_headers(headers: dict[str, str]) -> dict[str, str]:
    masked = dict(headers)
    if "authorization" in masked:
        scheme, _, secret = masked["authorization"].partition(" ")
        masked["authorization"] = f"{scheme} {_mask(secret)}" if secret else REDACTED
    return masked


def _mask_body(body: Body) -> Body:
    return {key: _mask(str(value)) if key in SECRET_FIELDS else value for key, value in body.items()}


def _summarise(calls: list[Call]) -> str:
    """Methods in arrival order, e.g. `auth.test, chat.postMessage (429 ratelimited)`; the last 30 at most."""
    if not calls:
        return "none"
    shown = [c.method if c.ok else f"{c.method} ({c.status} {c.error})" for c in calls[-30:]]
    prefix = f"... {len(calls) - len(shown)} earlier, " if len(calls) > len(shown) else ""
    return prefix + ", ".join(shown)
