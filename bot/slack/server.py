"""Serving the Bolt app: HTTP (events, commands and interactivity on one path) or Socket Mode."""

from __future__ import annotations

import json
import logging
import queue
import socket
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from urllib.parse import urlsplit

from slack_bolt import App, BoltRequest
from slack_sdk.signature import SignatureVerifier

from bot.hooks import HOOK_PATH
from bot.runtime import Runtime
from bot.slack.hooks import handle_deploy_hook

log = logging.getLogger(__name__)
EVENTS_PATH = "/slack/events"
HEALTH_PATH = "/healthz"
MAX_BODY = 1 << 20  # Slack payloads are far smaller; refuse anything larger outright
HANDLER_THREADS = 64  # started once; a burst of Slack requests needs no new threads
IDLE_TIMEOUT_S = 30  # a kept-alive connection that sends nothing for this long is closed


def make_handler(app: App, runtime: Runtime, slack_events: bool = True) -> type[BaseHTTPRequestHandler]:
    """The request handler; ``slack_events=False`` serves only the deploy hook and the health check."""
    # Only the Slack events endpoint checks Slack's signature; the hooks-only server of Socket Mode has no
    # signing secret to check with (and slack_sdk refuses an empty one).
    verifier = SignatureVerifier(str(runtime.settings.slack_signing_secret)) if slack_events else None

    class SlackRequestHandler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "opsbot"
        timeout = IDLE_TIMEOUT_S

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - stdlib's name
            log.debug("http %s", format % args)

        def _send(self, status: int, body: bytes, content_type: str = "application/json") -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:  # noqa: N802 - stdlib's name
            if urlsplit(self.path).path == HEALTH_PATH:
                state = {"ok": True, "ready": runtime.ready}
                self._send(200, json.dumps(state).encode())
            else:
                self._send(404, b'{"error": "not found"}')

        def do_POST(self) -> None:  # noqa: N802 - stdlib's name
            parts = urlsplit(self.path)
            if parts.path == HOOK_PATH:
                self._deploy_hook()
                return
            if parts.path != EVENTS_PATH or not slack_events:
                self._send(404, b'{"error": "not found"}')
                return
            length = int(self.headers.get("Content-Length") or 0)
            if length > MAX_BODY:
                self._send(413, b'{"error": "payload too large"}')
                return
            body = self.rfile.read(length).decode("utf-8", errors="replace")
            headers = {k.lower(): [v] for k, v in self.headers.items()}
            try:
                request = BoltRequest(body=body, query=parts.query, headers=headers)
            except ValueError:
                # Unparseable: answer as Bolt would have, 401 unless Slack really signed it.
                assert verifier is not None  # this is the Slack events path
                signed = verifier.is_valid_request(body, {k: v[0] for k, v in headers.items()})
                self._send(400 if signed else 401, b'{"error": "malformed payload"}' if signed else b"")
                return
            response = app.dispatch(request)
            self.send_response(response.status)
            for name, values in response.headers.items():
                for value in values:
                    self.send_header(name, value)
            payload = (response.body or "").encode("utf-8")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def _deploy_hook(self) -> None:
            try:
                length = int(self.headers.get("Content-Length") or 0)
            except ValueError:
                length = -1
            if not 0 <= length <= MAX_BODY:
                self._send(413, b'{"error": "payload too large (or no Content-Length)"}')
                return
            body = self.rfile.read(length)
            try:
                status, answer = handle_deploy_hook(runtime, app.web, dict(self.headers.items()), body)
            except Exception:
                log.exception("deploy hook failed")
                status, answer = 500, {"error": "opsbot could not record the event; see its log, then send it again."}
            self._send(status, json.dumps(answer).encode())

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
        super().__init__(address, handler)
        self._threads = threads
        for n in range(threads):
            threading.Thread(target=self._serve_connections, name=f"opsbot-http-{n}", daemon=True).start()

    def process_request(self, request: socket.socket, client_address: object) -> None:  # type: ignore[override]
        if self._idle.acquire(blocking=False):
            self._connections.put((request, client_address))
        else:
            threading.Thread(target=self._handle, args=(request, client_address), daemon=True).start()

    def _serve_connections(self) -> None:
        while True:
            self._idle.release()
            item = self._connections.get()
            if item is None:
                return
            self._handle(*item)

    def _handle(self, request: socket.socket, client_address: object) -> None:
        try:
            self.finish_request(request, client_address)
        except Exception:
            self.handle_error(request, client_address)
        finally:
            self.shutdown_request(request)

    def server_close(self) -> None:
        super().server_close()
        for _ in range(self._threads):
            self._connections.put(None)


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

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def socket_mode_handler(app: App, runtime: Runtime):  # noqa: ANN201 - keeps the Socket Mode import lazy
    """Socket Mode over the same Web API base URL, so apps.connections.open can be local too."""
    from slack_bolt.adapter.socket_mode import SocketModeHandler

    return SocketModeHandler(app, app_token=str(runtime.settings.slack_app_token), web_client=app.client)
