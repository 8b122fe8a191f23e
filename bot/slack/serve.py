"""Serving the Bolt app: HTTP (events, commands and interactivity on one path) or Socket Mode.

Every POST, whatever its path, is read by one method (``_read_body``): it needs a Content-Length that is a plain
decimal number of at most MAX_BODY bytes, and the whole body within BODY_TIMEOUT_S. Every answer is JSON with a
Content-Length. A request that cannot be used gets a 4xx saying why and one warning line in the log (never the
body, never a traceback): 400 malformed, 401 unsigned, 404 unknown path, 405 wrong method, 408 body cut short,
411 no length, 413 too large. /healthz answers 200 only when the model is loaded and the database takes writes.
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import io
import json
import logging
import os
import queue
import re
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any
from urllib.parse import urlsplit

from slack_bolt import App

from bot.errors import OpsbotError
from bot.ops.ci_events import HOOK_PATH
from bot.runtime import Runtime
from bot.slack.app import OpsbotApp
from bot.slack.ci_events import admit_deploy_hook, handle_deploy_hook
from bot.slack.delivery import describe
from bot.slack.ids import ALERTMANAGER_PATH, EVENTS_PATH, HEALTH_PATH
from bot.slack.jobs import Jobs
from bot.slack.payloads import MalformedPayload, SlackRequest, read_slack_body
from bot.store.base import is_busy, is_write_failure
from bot.workers import TrackedPool

log = logging.getLogger(__name__)
MAX_BODY = 1 << 20  # Slack payloads are far smaller; refuse anything larger outright
# Alertmanager sends a whole group: a thousand alerts of a kilobyte or so each must fit, so its hook takes more (the
# alerts past MAX_ALERTS are counted as truncated, not read).
MAX_ALERTS_BODY = 4 << 20
HANDLER_THREADS = 64  # started once; a burst of Slack requests needs no new threads
IDLE_TIMEOUT_S = 30  # a kept-alive connection that sends nothing for this long is closed
HEADERS_TIMEOUT_S = 30.0  # a request's line and headers, from when opsbot waits for them, however slowly they come
HOOK_RETRY_AFTER_S = 30  # a hook the database refused: a full disk or a held lock is not over in a second
OVERFLOW_THREADS = 256  # connections beyond the pool that get a thread of their own; past this, answered 503
BODY_TIMEOUT_S = 10.0  # the whole body must arrive within this, or the client is answered 408 and let go
LINGER_S = 1.0  # after an error answer, unread bytes are read and dropped this long, so the client sees the answer
DECIMAL = re.compile(r"[0-9]+")  # not int()'s syntax: no sign, spaces inside, underscores or other scripts' digits
MAX_SKEW_S = 300  # Slack's rule: a signed request older (or newer) than five minutes is a replay
BOLT_HEADERS = "x-slack-bolt-"  # Bolt's own headers between its processes (lazy-only runs); never from Slack
BUSY_BODY = json.dumps({"error": "opsbot is busy; send it again."}).encode()
TURNED_AWAY = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nRetry-After: 1\r\nConnection: close\r\n"
    b"Content-Length: %d\r\n\r\n%s" % (len(BUSY_BODY), BUSY_BODY)
)
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)  # what systemd, Docker, Kubernetes and Heroku send, and Ctrl-C
STOP_FLOOR_S = 2.0  # once the grace period is spent, each later step of a stop still gets this long
REQUESTS_STOP_S = 5.0  # HttpServer.stop's default wait for the requests being handled


def slack_signed(secret: str, body: bytes, headers: Mapping[str, str]) -> bool:
    """Whether Slack signed ``body``: v0= HMAC-SHA256 of v0:timestamp:body under the signing secret, five
    minutes fresh. Computed on the bytes, so a body that is not UTF-8 is judged too, and any header is safe."""
    timestamp = headers.get("x-slack-request-timestamp", "")
    signature = headers.get("x-slack-signature", "")
    if not secret or not DECIMAL.fullmatch(timestamp) or len(timestamp) > 12:
        return False
    if abs(time.time() - int(timestamp)) > MAX_SKEW_S:
        return False
    expected = "v0=" + hmac.new(secret.encode(), b"v0:" + timestamp.encode() + b":" + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected.encode(), signature.encode("utf-8", "replace"))


def slack_stamped(secret: str, headers: Mapping[str, str]) -> bool:
    """What can be judged of Slack's signature before the body is read: the secret set, both headers there, the
    time fresh. The body is read, and the signature checked on it, only when so."""
    timestamp = headers.get("x-slack-request-timestamp", "")
    if not (secret and headers.get("x-slack-signature") and DECIMAL.fullmatch(timestamp) and len(timestamp) <= 12):
        return False
    return abs(time.time() - int(timestamp)) <= MAX_SKEW_S


def printable(text: str, limit: int) -> str:
    """Text from the request, safe for a log line: cut short, control characters (terminal escapes) replaced."""
    return "".join(c if c.isprintable() else "?" for c in text[:limit])


class _Paced(io.RawIOBase):
    """A connection's reads, each allowed only what is left of a deadline while one is set.

    The socket's own timeout restarts with every byte, so a client sending a header byte every few seconds
    (slowloris) would hold a thread for ever; with the deadline, a request line and headers that take longer
    than HEADERS_TIMEOUT_S in all end the connection.
    """

    def __init__(self, connection: socket.socket, idle_s: float) -> None:
        super().__init__()
        self.connection, self.idle_s = connection, idle_s
        self.deadline: float | None = None

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self.deadline is not None:
            left = self.deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("the request line and headers took too long")
            self.connection.settimeout(min(self.idle_s, left))
        return self.connection.recv_into(buffer)


def make_handler(app: App, runtime: Runtime, slack_events: bool = True) -> type[BaseHTTPRequestHandler]:
    """The request handler; ``slack_events=False`` serves only the hooks (deploys, Alertmanager) and the health
    check."""
    # Only the Slack events endpoint checks Slack's signature; the hooks-only server of Socket Mode has no
    # signing secret to check with.
    secret = str(runtime.settings.slack_signing_secret) if slack_events else ""

    class SlackRequestHandler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "opsbot"
        timeout = IDLE_TIMEOUT_S

        def __init__(self, *args: Any) -> None:
            self.routes: dict[str, dict[str, Callable[..., None]]] = {
                HEALTH_PATH: {"GET": self._health, "HEAD": self._health},  # some load balancers send HEAD
                HOOK_PATH: {"POST": self._deploy_hook},
                ALERTMANAGER_PATH: {"POST": self._alertmanager_hook},
            }
            if slack_events:
                self.routes[EVENTS_PATH] = {"POST": self._slack_event}
            super().__init__(*args)

        def setup(self) -> None:
            super().setup()
            self._paced = _Paced(self.connection, self.timeout)
            self.rfile = io.BufferedReader(self._paced)

        def handle_one_request(self) -> None:
            # From now until the headers are parsed (parse_request), however slowly they come; http.server
            # closes the connection on the TimeoutError, with no answer (there is no request to answer yet).
            self._paced.deadline = time.monotonic() + HEADERS_TIMEOUT_S
            super().handle_one_request()

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - stdlib's name
            log.debug("http %s", format % args)

        def __getattr__(self, name: str) -> Any:
            # http.server calls do_<METHOD>, and answers 501 when there is none: every method is routed
            # instead, so a wrong one is 405 (or 404 for an unknown path).
            if name.startswith("do_"):
                return self._route
            raise AttributeError(name)

        # -- answering ----------------------------------------------------------------------------------

        def _send(
            self, status: int, answer: dict, headers: Mapping[str, str] | None = None, close: bool = False
        ) -> None:
            """A JSON answer with its Content-Length."""
            body = json.dumps(answer).encode("utf-8")
            self._write(status, body, {"Content-Type": "application/json", **(headers or {})}, close)

        def _write(self, status: int, body: bytes, headers: Mapping[str, str | list[str]], close: bool = False) -> None:
            self.send_response(status)
            for name, values in headers.items():
                for value in [values] if isinstance(values, str) else values:
                    self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            if close:
                self.send_header("Connection", "close")
                self.close_connection = True
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)
            self._answered = True

        def _refuse(self, status: int, reason: str, headers: Mapping[str, str] | None = None, **more: str) -> None:
            """A 4xx with the reason in words, logged as one line; the connection closes if the body was not read."""
            reason = printable(reason, 300)  # http.server's reasons quote the request line, which may be long
            path = printable(urlsplit(getattr(self, "path", "") or "").path, 200)
            method = printable(self.command or "-", 20)
            log.warning("http request refused status=%d method=%s path=%s reason=%s", status, method, path, reason)
            close = not self._body_read
            self._send(status, {"error": reason, **more}, headers, close=close)
            if close:
                self._linger()

        def parse_request(self) -> bool:
            """http.server's parsing, after skipping empty lines before the request line (RFC 9112 asks servers
            to), and with a 400 for a request line of blanks, which http.server drops without an answer. The
            headers' deadline ends here: the body has its own (BODY_TIMEOUT_S)."""
            try:
                return self._parse_request()
            finally:
                self._paced.deadline = None
                self.connection.settimeout(self.timeout)

        def _parse_request(self) -> bool:
            for _ in range(8):
                if self.raw_requestline not in (b"\r\n", b"\n"):
                    break
                self.raw_requestline = self.rfile.readline(65537)
            if not self.raw_requestline:  # the client sent only empty lines, then left: no request to answer
                return False
            if not self.raw_requestline.strip() or len(self.raw_requestline) > 65536:
                self.command, self.requestline, self.request_version = None, "", "HTTP/1.1"
                self.send_error(400, "empty or overlong request line")
                return False
            return super().parse_request()

        def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
            """http.server's own refusals (a bad request line, headers too long) as JSON like every other answer.

            What http.server could not parse is the client's fault, so a 5xx of its own (505: HTTP/2 in an
            HTTP/1 request line) is a 400 here.
            """
            if self.request_version == "HTTP/0.9":  # a garbled request line: answer with a status line anyway
                self.request_version = "HTTP/1.1"
            self.command = getattr(self, "command", None) or "-"
            self._body_read = False
            self._refuse(400 if code >= 500 else code, message or self.responses.get(code, ("bad request",))[0])

        def _linger(self) -> None:
            """Read and drop what the client still sends for a moment, so closing does not reset the connection
            before the client has read the answer."""
            deadline = time.monotonic() + LINGER_S
            try:
                self.wfile.flush()
                self.connection.shutdown(socket.SHUT_WR)
                while (left := deadline - time.monotonic()) > 0:
                    self.connection.settimeout(left)
                    if not self.connection.recv(65536):
                        break
            except OSError:  # the client left or stalled: nothing more to do for it
                pass

        # -- routing -----------------------------------------------------------------------------------

        def _route(self) -> None:
            self._answered = False
            self._body_read = False
            server: _Server = self.server  # type: ignore[assignment]
            if not server.begin_request():  # stopping: a kept-alive connection's next request goes elsewhere
                self._refuse(503, "opsbot is stopping; send the request again", {"Retry-After": "1"})
                return
            try:
                self._route_request()
            finally:
                server.end_request()

        def _route_request(self) -> None:
            path = urlsplit(self.path).path
            methods = self.routes.get(path)
            if methods is None:
                self._refuse(404, "not found")
                return
            handler = methods.get(self.command)
            if handler is None:
                allowed = ", ".join(sorted(methods))
                self._refuse(405, f"method not allowed: use {allowed}", {"Allow": allowed})
                return
            if self.command != "POST":
                if "Content-Length" in self.headers or "Transfer-Encoding" in self.headers:
                    self.close_connection = True  # a body nobody reads would be taken for the next request
                handler()
                return
            body = self._read_body(MAX_ALERTS_BODY if path == ALERTMANAGER_PATH else MAX_BODY, self._admit(path))
            if body is None:
                return
            try:
                handler(body)
            except Exception:  # a bug, not the request: logged with its traceback, and the client still answered
                log.exception("http handler failed path=%s", path)
                if not self._answered:
                    self._send(500, {"error": "opsbot failed on this request; its log says why."}, close=True)

        def _admit(self, path: str) -> tuple[int, dict] | None:
            """A refusal that the headers alone decide, before opsbot reads (and holds) a body for a sender with no
            token or signature: (HTTP status, JSON body), or None."""
            headers = {k.lower(): v for k, v in self.headers.items()}
            if path == ALERTMANAGER_PATH:
                return app.alerts.admit(headers)  # type: ignore[attr-defined]
            if path == HOOK_PATH:
                return admit_deploy_hook(runtime, headers)
            if path == EVENTS_PATH and not slack_stamped(secret, headers):
                log.warning("http request refused status=401 path=%s reason=unsigned or stale", path)
                return 401, {"error": "invalid request: not signed by Slack with this app's signing secret"}
            return None

        def _read_body(self, most: int = MAX_BODY, refused: tuple[int, dict] | None = None) -> bytes | None:
            """The POST body (``most`` bytes at most), or None once the request is answered with why it cannot be
            read. A request ``refused`` on its headers alone has its body read and dropped as it comes, never held
            (a sender without a token could otherwise make opsbot hold 4 MiB a connection), then that answer."""
            if "Transfer-Encoding" in self.headers:
                self._refuse(411, "send the body with a Content-Length, not a Transfer-Encoding")
                return None
            lengths = self.headers.get_all("Content-Length") or []
            if not lengths:
                self._refuse(411, "a POST needs a Content-Length header", header="Content-Length")
                return None
            value = lengths[0].strip(" \t")
            if len(set(lengths)) > 1 or not DECIMAL.fullmatch(value):
                reason = "the Content-Length header must be one non-negative decimal number of bytes"
                self._refuse(400, reason, header="Content-Length")
                return None
            if len(value) > 9 or int(value) > most:  # 9 digits: int() is never asked to read a huge number
                reason = f"the Content-Length is over the {most} bytes opsbot accepts here"
                self._refuse(413, reason, header="Content-Length")
                return None
            body = self._read_exactly(int(value), keep=refused is None)
            if body is None:
                reason = f"the body was shorter than its Content-Length (or took over {BODY_TIMEOUT_S:g} s to arrive)"
                self._refuse(408, reason)
                return None
            self._body_read = True
            if refused is not None:
                self._send(*refused)
                return None
            return body

        def _read_exactly(self, length: int, keep: bool = True) -> bytes | None:
            """``length`` bytes within BODY_TIMEOUT_S in all, however slowly they come; None if they do not. Without
            ``keep`` they are dropped as they come (b"")."""
            deadline = time.monotonic() + BODY_TIMEOUT_S
            chunks: list[bytes] = []
            missing = length
            try:
                while missing > 0:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        return None
                    self.connection.settimeout(left)
                    chunk = self.rfile.read1(min(missing, 65536))
                    if not chunk:  # the client closed its side
                        return None
                    if keep:
                        chunks.append(chunk)
                    missing -= len(chunk)
            except OSError:  # timed out, or the connection broke
                return None
            finally:
                self.connection.settimeout(self.timeout)
            return b"".join(chunks)

        # -- the endpoints -----------------------------------------------------------------------------

        def _health(self) -> None:
            problem = runtime.database_problem()
            db = f"not writable: {problem}" if problem else "writable"
            index = runtime.index_problem() or "ok"
            ready = runtime.ready and db == "writable" and index == "ok"
            body = {"ok": True, "ready": ready, "model": runtime.ready, "db": db, "index": index}
            self._send(200 if ready else 503, body)

        def _slack_event(self, body: bytes) -> None:
            headers = {k.lower(): v for k, v in self.headers.items()}
            if not slack_signed(secret, body, headers):
                self._body_read = True
                self._refuse(401, "invalid request: not signed by Slack with this app's signing secret")
                return
            try:
                data = read_slack_body(body, headers.get("content-type", ""))
                request = SlackRequest(
                    body=body.decode("utf-8"),
                    query=urlsplit(self.path).query,
                    headers={k: [v] for k, v in headers.items() if not k.startswith(BOLT_HEADERS)},
                )
            except MalformedPayload as exc:
                self._refuse(400, f"malformed Slack request: {exc}")
                return
            except Exception as exc:  # noqa: BLE001 - Bolt failing to read a checked body: still the body's fault
                self._refuse(400, f"malformed Slack request: {type(exc).__name__}")
                return
            if data.get("type") == "app_rate_limited":
                self._rate_limited(data)
                return
            response = app.dispatch(request)
            if response.status >= 400 and not response.body:  # every refusal says something, as JSON
                self._send(response.status, {"error": "unhandled request" if response.status == 404 else "refused"})
                return
            headers_out = {k: v for k, v in response.headers.items() if k.lower() != "content-length"}
            self._write(response.status, (response.body or "").encode("utf-8"), headers_out)

        def _rate_limited(self, data: dict) -> None:
            """Slack's notice that events over the app's quota are being dropped. Slack expects 200: any other
            answer counts among the failures for which it turns event subscriptions off."""
            log.warning(
                "slack app_rate_limited: events over the quota are dropped this minute team=%s minute=%s",
                data.get("team_id"),
                data.get("minute_rate_limited"),
            )
            self._send(200, {"ok": True})

        def _deploy_hook(self, body: bytes) -> None:
            try:
                status, answer = handle_deploy_hook(runtime, dict(self.headers.items()), body)
            except Exception as exc:
                if self._database_refused("deploy hook", "the event was not recorded: send it again later", exc):
                    return
                log.exception("deploy hook failed")
                status, answer = 500, {"error": "opsbot could not record the event; see its log, then send it again."}
            self._send(status, answer)

        def _alertmanager_hook(self, body: bytes) -> None:
            try:
                status, answer = app.alerts.receive(dict(self.headers.items()), body)  # type: ignore[attr-defined]
            except Exception as exc:
                if self._database_refused(
                    "alertmanager hook", "the alerts were not recorded; Alertmanager sends them again", exc
                ):
                    return
                log.exception("alertmanager hook failed")
                status = 500
                answer = {"error": "opsbot could not record the alerts; see its log. Alertmanager sends them again."}
            self._send(status, answer)

        def _database_refused(self, hook: str, outcome: str, exc: Exception) -> bool:
            """A database that refuses writes (a full disk, a read-only file) or that another process kept locked is
            an outage, not a bug: 503 with the reason and Retry-After, one log line. False for anything else."""
            if is_write_failure(exc):
                reason = f"opsbot's database refuses writes ({exc})"
            elif is_busy(exc):
                reason = f"opsbot's database is busy: another process held its write lock too long ({exc})"
            else:
                return False
            log.error("%s: nothing recorded, %s", hook, reason)
            answer = {"error": f"{reason}; {outcome}."}
            self._send(503, answer, {"Retry-After": str(HOOK_RETRY_AFTER_S)})
            return True

    return SlackRequestHandler


class _Server(HTTPServer):
    """An HTTP server whose connections are handled by threads started once, not one new thread each.

    Starting a thread waits until the new thread runs, and under load (searches and an index job busy
    on both cores) that handshake made the accepting thread take 2 ms a connection: 50 concurrent
    requests were accepted over 100 ms, and their acknowledgements waited for it. A connection that
    finds every pooled thread busy gets a thread of its own, as with ThreadingHTTPServer.
    """

    request_queue_size = 128  # the default listen backlog of 5 refuses connections when Slack sends a burst

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler], threads: int) -> None:
        # Set before binding: a failed bind calls server_close(), which must see no threads yet.
        self._connections: queue.SimpleQueue[tuple[socket.socket, object] | None] = queue.SimpleQueue()
        self._idle = threading.Semaphore(0)
        self._threads = 0
        self._stopping = False
        self._requests = 0  # being handled now, from the request line to the answer
        self._overflow = 0  # connections on threads of their own, beyond the pool
        self._turning_away = False
        self._requests_changed = threading.Condition()
        super().__init__(address, handler)
        self._threads = threads
        for n in range(threads):
            threading.Thread(target=self._serve_connections, name=f"opsbot-http-{n}", daemon=True).start()

    def process_request(self, request: socket.socket, client_address: object) -> None:  # type: ignore[override]
        if self._idle.acquire(blocking=False):
            self._connections.put((request, client_address))
            return
        with self._requests_changed:
            full = self._overflow >= OVERFLOW_THREADS
            self._overflow += 0 if full else 1
        if full:
            self._turn_away(request, client_address)
        else:
            threading.Thread(target=self._handle_overflow, args=(request, client_address), daemon=True).start()

    def _handle_overflow(self, request: socket.socket, client_address: object) -> None:
        try:
            self._handle(request, client_address)
        finally:
            with self._requests_changed:
                self._overflow -= 1

    def _turn_away(self, request: socket.socket, client_address: object) -> None:
        """Every thread is busy and the overflow is full (a flood, or clients holding connections open): a 503
        the client may retry, instead of one more thread. Logged once until the overflow has room again."""
        with self._requests_changed:
            first, self._turning_away = not self._turning_away, True
        if first:
            log.warning(
                "http overflow full: connections answered 503 threads=%d more=%d", self._threads, OVERFLOW_THREADS
            )
        try:
            request.settimeout(1)
            request.sendall(TURNED_AWAY)
        except OSError:
            pass
        self.shutdown_request(request)

    def _serve_connections(self) -> None:
        while True:
            self._idle.release()
            item = self._connections.get()
            if item is None:
                return
            self._handle(*item)

    def _handle(self, request: socket.socket, client_address: object) -> None:
        with self._requests_changed:
            if self._overflow < OVERFLOW_THREADS:
                self._turning_away = False
        try:
            self.finish_request(request, client_address)
        except Exception:
            self.handle_error(request, client_address)
        finally:
            self.shutdown_request(request)

    def handle_error(self, request: object, client_address: object) -> None:
        """The client left mid-answer: one line, no traceback. Anything else is a bug and keeps its traceback
        (socketserver's default prints it to stderr, outside the log)."""
        error = sys.exc_info()[1]
        if isinstance(error, OSError):
            log.info("http connection lost client=%s error=%s", client_address, type(error).__name__)
        else:
            log.error("http connection failed client=%s", client_address, exc_info=error)

    def server_close(self) -> None:
        super().server_close()
        for _ in range(self._threads):
            self._connections.put(None)

    def begin_request(self) -> bool:
        """Count a request as being handled; False once the server is stopping (the request is refused)."""
        with self._requests_changed:
            if self._stopping:
                return False
            self._requests += 1
            return True

    def end_request(self) -> None:
        with self._requests_changed:
            self._requests -= 1
            self._requests_changed.notify_all()

    def refuse_requests(self) -> None:
        """From now on every request is answered 503, on new and kept-alive connections alike."""
        with self._requests_changed:
            self._stopping = True

    def wait_requests(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the requests being handled; True when none is left."""
        with self._requests_changed:
            return self._requests_changed.wait_for(lambda: self._requests == 0, timeout)


class HttpServer:
    """A threaded HTTP server for the Bolt app; ``port=0`` picks a free port."""

    def __init__(
        self,
        app: App,
        runtime: Runtime,
        host: str = "0.0.0.0",
        port: int = 3000,
        slack_events: bool = True,
        threads: int = HANDLER_THREADS,
    ) -> None:
        self.httpd = _Server((host, port), make_handler(app, runtime, slack_events), threads)
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self.httpd.server_address[1])

    def start(self) -> HttpServer:
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="opsbot-http", daemon=True)
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        self.httpd.serve_forever()

    def stop(self, timeout: float = REQUESTS_STOP_S) -> bool:
        """Stop taking requests (a request on a kept-alive connection is answered 503), and wait up to
        ``timeout`` seconds for those being handled; True when none is left. Needs ``start()`` first."""
        self.httpd.refuse_requests()
        self.httpd.shutdown()
        self.httpd.server_close()
        return self.httpd.wait_requests(timeout)


def socket_mode_handler(app: App, runtime: Runtime):  # noqa: ANN201 - keeps the Socket Mode import lazy
    """Socket Mode over the same Web API base URL, so apps.connections.open can be local too."""
    from slack_bolt.adapter.socket_mode import SocketModeHandler

    return SocketModeHandler(app, app_token=str(runtime.settings.slack_app_token), web_client=app.client)


def connect_socket_mode(handler: Any) -> None:
    """Open the Socket Mode connection; an app token Slack refuses, or a Slack that cannot be reached, is an
    OpsbotError that says what to check (the SDK's own error would end `opsbot serve` with a traceback)."""
    from slack_sdk.errors import SlackApiError

    try:
        handler.connect()
    except (SlackApiError, OSError, http.client.HTTPException) as exc:
        raise OpsbotError(
            f"Socket Mode could not connect to Slack ({describe(exc)}): check SLACK_APP_TOKEN (an app-level token, "
            "xapp-..., with connections:write; Slack app > Basic Information) and that Slack can be reached."
        ) from None


def close_socket_mode(handler: Any, timeout: float) -> bool:
    """Stop taking envelopes, let those being handled send their acknowledgements, then disconnect from Slack;
    False when some were still being handled after ``timeout`` seconds.

    slack_sdk's own close() disconnects first and waits for its workers after, so an acknowledgement under
    way went out on a closed connection and Slack showed the person a timeout. Envelopes received but not
    yet taken up stay unacknowledged: Slack sends events again, as it does to a process that stopped.
    """
    client = handler.client
    parts = ("closed", "message_processor", "message_workers", "message_queue")
    if not all(hasattr(client, name) for name in parts):  # a slack_sdk other than the ones this was written for
        log.info("socket mode closed without draining: the client lacks one of %s", ",".join(parts))
        handler.close()
        return True
    deadline = time.monotonic() + timeout
    client.closed = True  # its dispatcher's loop ends at this flag, within its one-second wait for a message
    client.message_processor.shutdown()
    drained = threading.Thread(target=client.message_workers.shutdown, name="opsbot-socket-drain", daemon=True)
    drained.start()
    drained.join(max(deadline - time.monotonic(), 0))
    left = client.message_queue.qsize()
    if left:
        log.info("socket mode stopped with envelopes not taken up count=%d (Slack sends events again)", left)
    handler.close()
    return not drained.is_alive()


# -- stopping ------------------------------------------------------------------------------------------------


class StopSignals:
    """SIGTERM and SIGINT as one orderly stop: the first ends ``wait()``, a second one exits at once.

    Python runs signal handlers in the main thread only, and only between bytecodes; a handler that sets an
    Event can deadlock on the lock the interrupted main thread holds. So the handlers do nothing but replace
    the default action, and the wake-up file descriptor carries each signal to a watcher thread.
    Used as a context manager in the main thread; the previous handlers are put back at the end.
    """

    def __init__(self) -> None:
        self.received = ""  # the first signal's name
        self._requested = threading.Event()
        self._previous: dict[int, Any] = {}
        self._previous_fd = -1
        self._fds: tuple[int, int] | None = None

    def __enter__(self) -> StopSignals:
        read, write = os.pipe()
        os.set_blocking(write, False)  # set_wakeup_fd's rule: the C handler must never block
        self._fds = (read, write)
        for signum in STOP_SIGNALS:
            self._previous[signum] = signal.signal(signum, _noted)
        self._previous_fd = signal.set_wakeup_fd(write, warn_on_full_buffer=False)
        threading.Thread(target=self._watch, args=(read,), name="opsbot-signals", daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        signal.set_wakeup_fd(self._previous_fd)
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        if self._fds is not None:
            os.close(self._fds[1])  # the watcher reads end-of-file and returns; it closes the read end

    def wait(self) -> str:
        """Block until a stop signal arrives; its name."""
        self._requested.wait()
        return self.received

    def _watch(self, read: int) -> None:
        try:
            while data := os.read(read, 64):
                for signum in data:
                    if signum in STOP_SIGNALS:
                        self._received(signal.Signals(signum))
        finally:
            os.close(read)

    def _received(self, signum: signal.Signals) -> None:
        if self._requested.is_set():
            log.warning("second stop signal: exiting now signal=%s", signum.name)
            exit_now(128 + signum)
        self.received = signum.name
        self._requested.set()


def _noted(signum: int, frame: object) -> None:
    """The Python-level handler of a stop signal: none of the default action; StopSignals' watcher acts."""


def exit_now(code: int) -> None:
    """End the process without waiting for threads still at work (nor for interpreter shutdown to join them)."""
    for handler in logging.getLogger().handlers:
        handler.flush()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


@dataclass(frozen=True)
class Stopped:
    """How a stop went: pieces of work finished during it, and left running when the grace period ended."""

    drained: int
    abandoned: int
    clean: bool  # every thread ended and the store is closed; else the process must exit without joining them


def stop_serving(
    app: OpsbotApp,
    runtime: Runtime,
    jobs: Jobs,
    listeners: Sequence[Callable[[float], bool]],
    reason: str,
    grace_s: float,
) -> Stopped:
    """The orderly stop of `opsbot serve`: take no new requests, let the work in flight finish within
    ``grace_s``, then stop the outbox delivery (what is undelivered stays for the next start), the background
    jobs, and close the store. Work still running after the grace period is logged and abandoned.

    ``listeners`` stop taking requests (the HTTP server, the Socket Mode client), each given the time left.
    """
    started = time.monotonic()
    deadline = started + grace_s

    def left(floor: float = 0.0) -> float:
        return max(deadline - time.monotonic(), floor)

    # Listener work first: an approval it runs hands a deploy to the runners, an alert a briefing.
    pools = [p for p in (app.work, runtime.runners, runtime.briefings) if isinstance(p, TrackedPool)]

    def busy() -> int:
        return sum(pool.busy for pool in pools)

    log.info("stop begins signal=%s grace_s=%g work=%d", reason, grace_s, busy())
    listening_ended = all([stop(left(STOP_FLOOR_S)) for stop in listeners])
    in_flight = busy()  # with the work of the requests that were being acknowledged
    for pool in pools:
        pool.wait_idle(left())
    abandoned = busy()
    delivery_ended = app.web.stop(left(STOP_FLOOR_S))
    jobs_ended = jobs.stop(left(STOP_FLOOR_S))
    clean = not abandoned and listening_ended and delivery_ended and jobs_ended
    # Closing the store under a thread still at work would fail its next statement: left for the exit then.
    # The model's loading (a stop soon after the start) and a ranker refit are nobody's request: not waited out.
    clean = clean and runtime.close(min(left(), STOP_FLOOR_S))
    seconds = time.monotonic() - started
    if abandoned:
        log.warning("stop abandons work still running after the grace period work=%d grace_s=%g", abandoned, grace_s)
    if not (listening_ended and delivery_ended and jobs_ended):
        log.warning(
            "stop left threads running requests_ended=%s delivery_ended=%s jobs_ended=%s",
            listening_ended,
            delivery_ended,
            jobs_ended,
        )
    log.info(
        "stopped signal=%s drained=%d abandoned=%d seconds=%.1f store_closed=%s",
        reason,
        max(in_flight - abandoned, 0),
        abandoned,
        seconds,
        clean,
    )
    return Stopped(max(in_flight - abandoned, 0), abandoned, clean)
