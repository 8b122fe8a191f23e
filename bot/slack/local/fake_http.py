"""The fake Slack Web API's HTTP side: a loopback server that parses each request and writes the fake's answer."""

from __future__ import annotations

import json
import socket
import struct
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

if TYPE_CHECKING:
    from bot.slack.local.fake_api import Body, FakeSlackAPI

# Top-level form fields that hold prose, so a value like "[WARN] disk full" is never read as JSON.
FREE_TEXT_FIELDS = frozenset({"text", "markdown_text", "fallback", "query", "name", "topic", "purpose", "title"})
HTML_ERROR_PAGE = "<html><head><title>{status}</title></head><body><h1>{status} Server Error</h1></body></html>"


class FakeSlackServer(ThreadingHTTPServer):
    """A ThreadingHTTPServer that knows the FakeSlackAPI it serves."""

    request_queue_size = 128  # bursts of calls (benchmarks, 50 concurrent requests) must not be refused

    daemon_threads = True

    def __init__(self, api: FakeSlackAPI) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.api = api


class _Handler(BaseHTTPRequestHandler):
    """Parses one request and hands it to the FakeSlackAPI."""

    server: FakeSlackServer

    def do_GET(self) -> None:
        """Answer a GET (query parameters only)."""
        self._handle()

    def do_POST(self) -> None:
        """Answer a POST (form or JSON body, plus any query parameters)."""
        self._handle()

    def log_message(self, format: str, *args: Any) -> None:
        """Stay quiet: the fake logs its own line per call, without query strings or headers."""

    def _handle(self) -> None:
        """Parse, dispatch and answer as JSON."""
        parts = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length > 0 else b""
        body = _parse_form(parts.query)
        body.update(_parse_body(raw, self.headers.get("Content-Type", "")))
        headers = {key.lower(): value for key, value in self.headers.items()}
        api = self.server.api
        status, answer, extra_headers, failure = api._dispatch(parts.path, _decode_json_fields(body), headers)
        if failure is not None and failure.hang:
            api._stopping.wait(failure.hang / 2 if failure.slow else failure.hang)
        if failure is not None and failure.reset:
            # SO_LINGER with a zero timeout: close() sends a TCP reset instead of a clean end of stream.
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.close_connection = True
            self.connection.close()
            return
        content_type = "application/json; charset=utf-8"
        payload = json.dumps(answer).encode()
        if failure is not None and failure.html:
            content_type, payload = _error_page(status, failure.html)
        try:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(payload)))
            for name, value in extra_headers.items():
                self.send_header(name, value)
            self.end_headers()
            if failure is not None and failure.slow:
                self.wfile.flush()
                api._stopping.wait(failure.hang / 2)
            self.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):  # the client stopped waiting (it timed out)
            self.close_connection = True


def _error_page(status: int, html: bool | str) -> tuple[str, bytes]:
    """An HTML error page in UTF-8, labelled so; or, when ``html`` names an encoding, in that encoding with no
    charset in its Content-Type, as a proxy's page in German or French can be."""
    page = HTML_ERROR_PAGE.format(status=status)
    if html is True:
        return "text/html; charset=utf-8", page.encode()
    return "text/html", page.replace("Server Error", "Dienst nicht verfügbar").encode(str(html))


def _parse_form(text: str) -> Body:
    """Form or query string to a dict; repeated keys become lists."""
    parsed = parse_qs(text, keep_blank_values=True)
    return {key: values[0] if len(values) == 1 else values for key, values in parsed.items()}


def _parse_body(raw: bytes, content_type: str) -> Body:
    """A request body (JSON or form-encoded) to a dict."""
    if not raw:
        return {}
    if content_type.startswith("multipart/"):
        return {"_multipart_bytes": len(raw)}
    text = raw.decode("utf-8", errors="replace")
    if "json" in content_type or text.lstrip().startswith("{"):
        try:
            data = json.loads(text)
        except json.JSONDecodeError:
            return {"_unparsed": text}
        return data if isinstance(data, dict) else {"_json": data}
    return _parse_form(text)


def _decode_json_fields(body: Body) -> Body:
    """Turn JSON strings in top-level fields (blocks, attachments, view ...) back into lists and dicts."""
    decoded: Body = {}
    for key, value in body.items():
        if isinstance(value, str) and key not in FREE_TEXT_FIELDS and value.strip()[:1] in ("[", "{"):
            try:
                value = json.loads(value)
            except json.JSONDecodeError:
                pass
        decoded[key] = value
    return decoded
