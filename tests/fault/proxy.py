"""A fault-injecting HTTP proxy in front of the fake Slack Web API, for opsbot processes to talk through.

It listens on 127.0.0.1 port 0 and forwards every request (Web API methods under /api/ and the
response_url paths under /response/) to the fake, unless a rule says otherwise. A rule names the Web API
method (``chat.postMessage``, or ``response_url`` for response_url posts), optionally the channel or the
response_url name it applies to, how many times it fires, and the fault: a status (429 with Retry-After,
5xx), an HTML error page, a hang before forwarding or before answering, a reset or close without an
answer, or a slow drip of the answer. Everything the proxy did is recorded as a ProxyEvent.

opsbot gets ``proxy.url`` as SLACK_API_URL; payloads get ``proxy.response_url(name)``.
"""

from __future__ import annotations

import http.client
import json
import select
import socket
import struct
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

RESPONSE_URL = "response_url"
HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade", "te"})
HTML_PAGE = (
    "<!DOCTYPE html><html><head><title>{status} Bad Gateway</title></head>"
    "<body><h1>{status}</h1><p>The server encountered a temporary error. Please try again in 30 seconds.</p>"
    "</body></html>"
)


@dataclass(frozen=True)
class Fault:
    """What to do instead of (or around) forwarding. Build with the helpers below."""

    kind: str  # status | html | hang | reset | close | drip
    status: int = 0
    retry_after: int | None = None
    seconds: float = 0.0  # hang: how long; drip: the pause between chunks
    forward: bool = False  # hang, reset, close: forward to the fake first (it records the call), then misbehave
    chunk: int = 0  # drip: bytes per chunk

    @property
    def label(self) -> str:
        if self.kind == "status":
            return f"{self.status}" + (f" Retry-After {self.retry_after}" if self.retry_after is not None else "")
        if self.kind == "html":
            return f"{self.status} html"
        if self.kind == "hang":
            return f"hang {self.seconds:g}s {'after' if self.forward else 'before'} forwarding"
        if self.kind == "drip":
            return f"drip {self.chunk}B/{self.seconds:g}s"
        return f"{self.kind} {'after' if self.forward else 'before'} forwarding"


def status(code: int, retry_after: int | None = None) -> Fault:
    """Answer ``code`` with Slack's JSON error body (429 gets Retry-After: ``retry_after``, default 1)."""
    if code == 429 and retry_after is None:
        retry_after = 1
    return Fault("status", status=code, retry_after=retry_after)


def html(code: int = 502) -> Fault:
    """Answer ``code`` with an HTML error page, as a load balancer in front of Slack does."""
    return Fault("html", status=code)


def hang(seconds: float, forward: bool = False) -> Fault:
    """Wait ``seconds`` before forwarding (or, with ``forward``, after forwarding and before answering).

    A client that gives up during a hang before forwarding gets nothing forwarded: Slack never saw it."""
    return Fault("hang", seconds=seconds, forward=forward)


def reset(forward: bool = False) -> Fault:
    """Reset the connection (RST) without an answer; with ``forward`` the fake has recorded the call."""
    return Fault("reset", forward=forward)


def close(forward: bool = False) -> Fault:
    """Close the connection (FIN) without an answer."""
    return Fault("close", forward=forward)


def drip(chunk: int = 16, seconds: float = 0.2) -> Fault:
    """Forward, then send the answer ``chunk`` bytes at a time with ``seconds`` between chunks."""
    return Fault("drip", seconds=seconds, chunk=chunk, forward=True)


@dataclass
class Rule:
    """Apply ``fault`` to the next ``times`` requests for ``method`` (``*`` for any), optionally only those
    to ``channel`` or, for response_url posts, to ``response_url(name)``. ``times=None`` never runs out."""

    method: str
    fault: Fault
    times: int | None = 1
    channel: str | None = None
    name: str | None = None
    used: int = 0

    def matches(self, method: str, path: str, channel: str) -> bool:
        if self.times is not None and self.used >= self.times:
            return False
        if self.method not in ("*", method):
            return False
        if self.channel is not None and self.channel != channel:
            return False
        return self.name is None or path == f"/response/{quote(self.name, safe='')}"


@dataclass(frozen=True)
class ProxyEvent:
    """One request through the proxy: what it was for and what the proxy did with it."""

    at: float
    method: str
    path: str
    channel: str
    action: str  # "forwarded", or a Fault label
    status: int | None  # what the client was answered, None when it got no answer
    forwarded: bool


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128

    def __init__(self, proxy: FaultProxy) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.proxy = proxy


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.0"  # one request per connection: a fault never leaks into the next request

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib's name
        """Quiet: the proxy records events instead."""

    def do_GET(self) -> None:  # noqa: N802 - stdlib's name
        self._handle()

    def do_POST(self) -> None:  # noqa: N802 - stdlib's name
        self._handle()

    def _handle(self) -> None:
        proxy = self.server.proxy
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length > 0 else b""
        path = urlsplit(self.path).path
        method = _method_of(path)
        channel = _channel_of(body, self.headers.get("Content-Type", ""))
        fault = proxy._take(method, path, channel)
        if fault is None:
            answer = proxy._forward(self.command, self.path, dict(self.headers.items()), body)
            proxy._record(method, path, channel, "forwarded", answer[0], True)
            self._answer(*answer)
            return
        forwarded = False
        answer = None
        if fault.forward:
            answer = proxy._forward(self.command, self.path, dict(self.headers.items()), body)
            forwarded = True
        if fault.kind == "hang":
            if not self._hang(fault.seconds, watch=answer is None):
                proxy._record(method, path, channel, f"{fault.label}: client gave up", None, forwarded)
                return
            if answer is None:
                answer = proxy._forward(self.command, self.path, dict(self.headers.items()), body)
                forwarded = True
            proxy._record(method, path, channel, fault.label, answer[0], forwarded)
            self._answer(*answer)
        elif fault.kind == "status":
            error = "ratelimited" if fault.status == 429 else "internal_error"
            headers = {"Content-Type": "application/json; charset=utf-8"}
            if fault.retry_after is not None:
                headers["Retry-After"] = str(fault.retry_after)
            proxy._record(method, path, channel, fault.label, fault.status, forwarded)
            self._answer(fault.status, headers, json.dumps({"ok": False, "error": error}).encode())
        elif fault.kind == "html":
            page = HTML_PAGE.format(status=fault.status).encode()
            proxy._record(method, path, channel, fault.label, fault.status, forwarded)
            self._answer(fault.status, {"Content-Type": "text/html; charset=utf-8"}, page)
        elif fault.kind in ("reset", "close"):
            proxy._record(method, path, channel, fault.label, None, forwarded)
            if fault.kind == "reset":  # SO_LINGER 0: close() sends RST instead of FIN
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.close_connection = True
            self.connection.close()
        elif fault.kind == "drip":
            assert answer is not None
            proxy._record(method, path, channel, fault.label, answer[0], forwarded)
            self._answer(*answer, drip=fault)

    def _hang(self, seconds: float, watch: bool) -> bool:
        """Wait; False when the client hung up meanwhile (watched only before forwarding: as for a server that
        never got the request, nothing is forwarded then)."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            if self.server.proxy._stopping.wait(min(0.2, left)):
                return False
            if watch and _hung_up(self.connection):
                return False
        return True

    def _answer(self, code: int, headers: dict[str, str], body: bytes, drip: Fault | None = None) -> None:
        try:
            self.send_response(code)
            for name, value in headers.items():
                if name.lower() not in HOP_BY_HOP and name.lower() != "content-length":
                    self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if drip is None:
                self.wfile.write(body)
                return
            self.wfile.flush()
            for start in range(0, len(body), max(1, drip.chunk)):
                self.wfile.write(body[start : start + drip.chunk])
                self.wfile.flush()
                if self.server.proxy._stopping.wait(drip.seconds):
                    return
        except OSError:  # the client gave up (its own timeout): nothing to answer any more
            pass


class FaultProxy:
    """Forwards to ``upstream`` (the fake's base, e.g. http://127.0.0.1:PORT) and injects faults by rule."""

    def __init__(self, upstream_port: int, upstream_timeout: float = 60.0) -> None:
        self.upstream_port = upstream_port
        self.upstream_timeout = upstream_timeout
        self.rules: list[Rule] = []
        self.events: list[ProxyEvent] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()  # ends hung requests: set by stop() and release()
        self._server: _Server | None = None

    # -- lifecycle ---------------------------------------------------------------------------------

    def start(self) -> FaultProxy:
        self._server = _Server(self)
        threading.Thread(target=self._server.serve_forever, args=(0.05,), name="fault-proxy", daemon=True).start()
        return self

    def stop(self) -> None:
        """Stop serving; hung requests end at once."""
        self._stopping.set()
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert self._server is not None, "the proxy is not running"
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        """The Web API base URL to give opsbot as SLACK_API_URL."""
        return f"http://127.0.0.1:{self.port}/api/"

    def response_url(self, name: str) -> str:
        """A response_url through the proxy; the fake records posts to it as ``response_url`` calls."""
        return f"http://127.0.0.1:{self.port}/response/{quote(name, safe='')}"

    # -- rules and records -------------------------------------------------------------------------

    def add(
        self, method: str, fault: Fault, times: int | None = 1, channel: str | None = None, name: str | None = None
    ) -> Rule:
        """Inject ``fault`` into the next ``times`` matching requests (see Rule)."""
        rule = Rule(method, fault, times, channel, name)
        with self._lock:
            self.rules.append(rule)
        return rule

    def clear(self) -> None:
        """Forget every rule (events are kept)."""
        with self._lock:
            self.rules.clear()

    def release(self) -> None:
        """Forget every rule and end hung requests at once, unanswered; the proxy still forwards. A scenario's
        teardown calls this before stopping its processes, whose orderly stop would otherwise wait out a hang."""
        self.clear()
        self._stopping.set()

    def faults_left(self) -> int:
        with self._lock:
            return sum((r.times or 0) - r.used for r in self.rules if r.times is not None)

    def events_for(self, method: str | None = None, channel: str | None = None) -> list[ProxyEvent]:
        with self._lock:
            return [
                e
                for e in self.events
                if (method is None or e.method == method) and (channel is None or e.channel == channel)
            ]

    def quiet_for(self, seconds: float) -> bool:
        """Whether no request came through for ``seconds``."""
        with self._lock:
            last = self.events[-1].at if self.events else 0.0
        return time.time() - last >= seconds

    def _take(self, method: str, path: str, channel: str) -> Fault | None:
        with self._lock:
            for rule in self.rules:
                if rule.matches(method, path, channel):
                    rule.used += 1
                    return rule.fault
        return None

    def _record(self, method: str, path: str, channel: str, action: str, code: int | None, forwarded: bool) -> None:
        with self._lock:
            self.events.append(ProxyEvent(time.time(), method, path, channel, action, code, forwarded))

    def _forward(self, verb: str, target: str, headers: dict[str, str], body: bytes) -> tuple[int, dict, bytes]:
        """Send the request on to the fake; a fake that cannot be reached is a 502 to the client."""
        connection = http.client.HTTPConnection("127.0.0.1", self.upstream_port, timeout=self.upstream_timeout)
        try:
            sent = {k: v for k, v in headers.items() if k.lower() not in HOP_BY_HOP and k.lower() != "host"}
            connection.request(verb, target, body=body or None, headers=sent)
            response = connection.getresponse()
            return response.status, dict(response.getheaders()), response.read()
        except OSError as exc:
            return 502, {"Content-Type": "application/json"}, json.dumps({"ok": False, "error": str(exc)}).encode()
        finally:
            connection.close()


def _hung_up(connection: socket.socket) -> bool:
    """Whether the client closed its side (a read would return end of file)."""
    readable, _, _ = select.select([connection], [], [], 0)
    if not readable:
        return False
    try:
        return connection.recv(1, socket.MSG_PEEK) == b""
    except OSError:
        return True


def _method_of(path: str) -> str:
    if path.startswith("/api/") and len(path) > len("/api/"):
        return path[len("/api/") :]
    if path.startswith("/response/"):
        return RESPONSE_URL
    return path


def _channel_of(body: bytes, content_type: str) -> str:
    """The ``channel`` field of a Web API call (JSON or form), or "" when it has none."""
    if not body:
        return ""
    text = body.decode("utf-8", errors="replace")
    if "json" in content_type or text.lstrip().startswith("{"):
        try:
            data = json.loads(text)
        except ValueError:
            return ""
        return str(data.get("channel", "")) if isinstance(data, dict) else ""
    values = parse_qs(text).get("channel") or [""]
    return unquote(values[0])


def iter_labels(events: list[ProxyEvent]) -> Iterator[str]:
    """Each event as `method action status`, for failure messages."""
    for e in events:
        yield f"{e.method}{'#' + e.channel if e.channel else ''} {e.action} -> {e.status}"


@dataclass
class ProxyStats:
    """How many requests of each action the proxy saw (for notes in the report)."""

    counts: dict[str, int] = field(default_factory=dict)

    @classmethod
    def of(cls, events: list[ProxyEvent]) -> ProxyStats:
        stats = cls()
        for e in events:
            stats.counts[e.action] = stats.counts.get(e.action, 0) + 1
        return stats

    def line(self) -> str:
        return ", ".join(f"{k}: {v}" for k, v in sorted(self.counts.items()))
