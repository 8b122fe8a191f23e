"""The HTTP server: connections handled by threads started once, and one more when none is free."""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from urllib.parse import quote

import pytest

from bot.config import Secret
from bot.runtime import Runtime
from bot.slack import ids
from bot.slack import serve as server_module
from bot.slack.app import create_app
from bot.slack.local.fake_api import FakeSlackAPI
from bot.slack.serve import HttpServer
from tests.conftest import FakeEncoder
from tests.slack.conftest import SlackDriver, make_settings
from tests.slack.test_server_fuzz import FORM, Probe, exchange, request

PATHS = ("/slack/events", "/hooks/deploy")


def headers_signed(body: bytes, content_type: str) -> dict[str, str]:
    ts = int(time.time())
    return {"Content-Type": content_type, "X-Slack-Request-Timestamp": str(ts), "X-Slack-Signature": sign_raw(body, ts)}


def sign_raw(body: bytes, ts: int) -> str:
    import hashlib
    import hmac

    from tests.slack.conftest import SIGNING_SECRET

    return "v0=" + hmac.new(SIGNING_SECRET.encode(), b"v0:%d:" % ts + body, hashlib.sha256).hexdigest()


def pooled_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("opsbot-http-")]


@pytest.fixture
def bare_runtime(tmp_path: Path, slack_api: FakeSlackAPI) -> Iterator[Runtime]:
    """A runtime whose model is never loaded: enough for acknowledgements, usage texts and /healthz."""
    runtime = Runtime(make_settings(tmp_path, slack_api), encoder=FakeEncoder())
    yield runtime
    runtime.store.close()


def start(runtime: Runtime, api: FakeSlackAPI, threads: int) -> tuple[HttpServer, SlackDriver]:
    server = HttpServer(create_app(runtime), runtime, host="127.0.0.1", port=0, threads=threads).start()
    return server, SlackDriver(f"http://127.0.0.1:{server.port}", api)


def test_fifty_concurrent_slash_commands_are_each_acknowledged(bare_runtime: Runtime, slack_api: FakeSlackAPI) -> None:
    server, slack = start(bare_runtime, slack_api, threads=8)  # fewer threads than requests: the rest get their own
    try:
        with ThreadPoolExecutor(max_workers=50) as pool:
            responses = list(pool.map(lambda _: slack.command("/ask", ""), range(50)))
    finally:
        server.stop()
    assert [r.status for r in responses] == [200] * 50
    assert all(json.loads(r.body)["text"] == "Usage: /ask QUESTION" for r in responses)


def test_a_request_is_answered_while_every_pooled_thread_waits_on_an_idle_connection(
    bare_runtime: Runtime, slack_api: FakeSlackAPI
) -> None:
    server, slack = start(bare_runtime, slack_api, threads=2)
    idle = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(2)]  # connected, sending nothing
    try:
        response = slack.command("/ask", "")
    finally:
        for connection in idle:
            connection.close()
        server.stop()
    assert response.status == 200
    assert json.loads(response.body)["text"] == "Usage: /ask QUESTION"


def test_a_bad_signature_is_refused_by_a_pooled_thread(bare_runtime: Runtime, slack_api: FakeSlackAPI) -> None:
    server, slack = start(bare_runtime, slack_api, threads=2)
    try:
        response = slack.post("command=%2Fask&text=hello", "application/x-www-form-urlencoded", secret="not-the-secret")
    finally:
        server.stop()
    assert response.status == 401
    assert slack_api.calls() == []


def test_stop_ends_the_pooled_threads(bare_runtime: Runtime, slack_api: FakeSlackAPI) -> None:
    before = len(pooled_threads())
    server, _ = start(bare_runtime, slack_api, threads=4)
    assert len(pooled_threads()) == before + 4
    server.stop()
    deadline = time.monotonic() + 10
    while len(pooled_threads()) > before and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(pooled_threads()) == before


def test_after_stop_a_kept_alive_connection_is_answered_503(bare_runtime: Runtime, slack_api: FakeSlackAPI) -> None:
    """A stopping server takes no new request, even on a connection it kept open: Slack sends it again elsewhere."""
    import http.client

    server, _ = start(bare_runtime, slack_api, threads=2)
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        connection.request("POST", "/hooks/deploy", b"{}", {"Content-Type": "application/json"})
        before = connection.getresponse()
        before.read()
        assert server.stop(timeout=10) is True  # nothing was being handled
        connection.request("POST", "/hooks/deploy", b"{}", {"Content-Type": "application/json"})
        after = connection.getresponse()
        answer = json.loads(after.read())
    finally:
        connection.close()
    assert before.status == 401  # unsigned: the server was serving
    assert after.status == 503 and after.getheader("Retry-After") == "1"
    assert "stopping" in answer["error"]


def test_a_taken_port_fails_with_the_address_error(bare_runtime: Runtime, slack_api: FakeSlackAPI) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        before = len(pooled_threads())
        with pytest.raises(OSError, match="in use"):
            HttpServer(create_app(bare_runtime), bare_runtime, host="127.0.0.1", port=port, threads=4)
        assert len(pooled_threads()) == before


# -- malformed requests: each a 4xx that says why, with nothing held and no traceback -------------------------


def raw_answer(port: int, data: bytes, half_close: bool = True) -> tuple[int, dict]:
    answers, error = exchange(port, Probe("", data, half_close=half_close))
    assert not error, error
    return answers[0].status, json.loads(answers[0].body or b"{}")


@pytest.mark.parametrize(
    ("length", "status"),
    [("abc", 400), ("1e3", 400), ("-1", 400), ("+5", 400), ("0x10", 400), ("5, 6", 400), ("99999999999999999999", 413)],
)
def test_content_length_must_be_a_plain_decimal_number_within_the_limit(
    bare_runtime: Runtime, slack_api: FakeSlackAPI, caplog: pytest.LogCaptureFixture, length: str, status: int
) -> None:
    server, _ = start(bare_runtime, slack_api, threads=2)
    try:
        answers = [raw_answer(server.port, request("POST", path, b"{}", length=length)) for path in PATHS]
    finally:
        server.stop()
    assert [s for s, _ in answers] == [status, status]
    assert all(body["header"] == "Content-Length" and "Content-Length" in body["error"] for _, body in answers)
    assert not [r for r in caplog.records if r.exc_info]


def test_a_sender_without_a_token_or_signature_never_gets_its_body_held(
    bare_runtime: Runtime, slack_api: FakeSlackAPI
) -> None:
    # Before, the whole body (4 MiB to the Alertmanager hook) was read into memory before its token was looked at:
    # a few hundred such connections held over a gigabyte. Now it is dropped as it arrives, and refused.
    import tracemalloc

    bare_runtime.settings = replace(bare_runtime.settings, alertmanager_token=Secret("a-bearer-token-of-the-hook"))
    server, _ = start(bare_runtime, slack_api, threads=2)
    sizes = {"/hooks/alertmanager": server_module.MAX_ALERTS_BODY, "/hooks/deploy": server_module.MAX_BODY}
    sizes["/slack/events"] = server_module.MAX_BODY
    sent = {path: request("POST", path, b"x" * size) for path, size in sizes.items()}
    answers, peaks = {}, {}
    try:
        for path, data in sent.items():
            tracemalloc.start()
            answers[path] = raw_answer(server.port, data)
            peaks[path] = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
    finally:
        server.stop()
    assert {path: status for path, (status, _) in answers.items()} == dict.fromkeys(sizes, 401)
    assert all(peak < 1_000_000 for peak in peaks.values()), peaks


def test_a_post_needs_a_length_and_a_chunked_body_is_refused(bare_runtime: Runtime, slack_api: FakeSlackAPI) -> None:
    server, _ = start(bare_runtime, slack_api, threads=2)
    chunked = request("POST", "/slack/events", b"2\r\n{}\r\n0\r\n\r\n", {"Transfer-Encoding": "chunked"}, length=None)
    try:
        missing = raw_answer(server.port, request("POST", "/slack/events", b"", length=None))
        refused = raw_answer(server.port, chunked)
    finally:
        server.stop()
    assert missing == (411, {"error": "a POST needs a Content-Length header", "header": "Content-Length"})
    assert refused[0] == 411 and "Transfer-Encoding" in refused[1]["error"]


def test_a_body_cut_short_is_answered_408_within_the_body_timeout(
    bare_runtime: Runtime, slack_api: FakeSlackAPI, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(server_module, "BODY_TIMEOUT_S", 0.5)
    server, slack = start(bare_runtime, slack_api, threads=1)
    started = time.perf_counter()
    try:
        # The client keeps its side open and sends nothing more: only the server's timeout can end this.
        stalled = raw_answer(server.port, request("POST", "/slack/events", b"{", length="40"), half_close=False)
        seconds = time.perf_counter() - started
        after = slack.command("/ask", "")
    finally:
        server.stop()
    assert stalled[0] == 408 and "shorter than its Content-Length" in stalled[1]["error"]
    assert seconds < 10  # not held until the client leaves (the client here never would)
    assert after.status == 200


def test_wrong_methods_are_405_and_unknown_paths_404_as_json(bare_runtime: Runtime, slack_api: FakeSlackAPI) -> None:
    server, _ = start(bare_runtime, slack_api, threads=2)
    try:
        put = raw_answer(server.port, request("PUT", "/slack/events", b"{}"))
        get = raw_answer(server.port, request("GET", "/hooks/deploy", length=None))
        unknown = raw_answer(server.port, request("POST", "/slack/event", b"{}"))
    finally:
        server.stop()
    assert put == (405, {"error": "method not allowed: use POST"})
    assert get == (405, {"error": "method not allowed: use POST"})
    assert unknown == (404, {"error": "not found"})


MALFORMED = [
    ("foo=bar", FORM, "a form without command or payload"),
    ("payload=%5B1%5D", FORM, "payload is JSON but not an object"),
    ("payload=%7Bx", FORM, "payload is not JSON"),
    ("payload=" + quote('{"actions": []}'), FORM, "payload has no type string"),
    (
        "payload=" + quote('{"type": "block_actions", "user": {"id": "U1"}, "actions": "x"}'),
        FORM,
        "actions is not a list",
    ),
    (
        "payload="
        + quote(
            json.dumps({"type": "block_actions", "user": {"id": "U1"}, "actions": [{"action_id": ids.FEEDBACK_UP}]})
        ),
        FORM,
        "actions[0] has no value string",
    ),
    (
        "payload=" + quote('{"type": "view_submission", "user": {"id": "U1"}, "view": "x"}'),
        FORM,
        "view is not an object",
    ),
    ("command=%2Fask&text=hi&user_id=U1&channel_id=C1", FORM, "no response_url"),
    ('{"type": "event_callback"}', "application/json", "event_callback without an event object"),
    ('{"type": "event_callback", "event": {"type": "app_mention", "ts": "1.2"}}', "application/json", "no channel"),
    (
        '{"type": "event_callback", "event_id": [1], "event": {"type": "x"}}',
        "application/json",
        "event_id is not a string",
    ),
    ('{"type": "event_callback", "authorizations": "x", "event": {"type": "x"}}', "application/json", "not a list"),
    ('{"type": "event_callback", "team": 5, "event": {"type": "x"}}', "application/json", "team is neither"),
    ("[1, 2]", "application/json", "the body is JSON but not an object"),
    ('{"type": "url_verification"}', "application/json", "no challenge string"),
]


def test_slacks_app_rate_limited_notice_is_answered_200_with_one_warning(
    bare_runtime: Runtime, slack_api: FakeSlackAPI, caplog: pytest.LogCaptureFixture
) -> None:
    # It was answered 404 "unhandled request", which adds to the failures for which Slack turns events off.
    notice = {"token": "t", "type": "app_rate_limited", "team_id": "T0000001", "minute_rate_limited": 1518467820}
    server, slack = start(bare_runtime, slack_api, threads=2)
    try:
        with caplog.at_level(logging.WARNING):
            answer = slack.post(json.dumps(notice | {"api_app_id": "A0000001"}), "application/json")
    finally:
        server.stop()
    assert answer.status == 200
    (warning,) = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert "app_rate_limited" in warning.getMessage() and "minute=1518467820" in warning.getMessage()
    assert slack_api.calls() == []


def test_signed_malformed_slack_payloads_get_400_saying_what_is_wrong_and_unsigned_ones_401(
    bare_runtime: Runtime, slack_api: FakeSlackAPI, caplog: pytest.LogCaptureFixture
) -> None:
    server, slack = start(bare_runtime, slack_api, threads=2)
    try:
        signed = [slack.post(body, content_type) for body, content_type, _ in MALFORMED]
        unsigned = [slack.post(body, content_type, secret="not-the-secret") for body, content_type, _ in MALFORMED]
        not_utf8 = raw_answer(
            server.port,
            request("POST", "/slack/events", b"payload=\xff", headers_signed(b"payload=\xff", FORM)),
        )
    finally:
        server.stop()
    for (_, _, fragment), answer in zip(MALFORMED, signed, strict=True):
        assert answer.status == 400 and fragment in answer.json()["error"], (fragment, answer.body)
    assert {a.status for a in unsigned} == {401}
    assert not_utf8 == (400, {"error": "malformed Slack request: the body is not UTF-8 text"})
    assert slack_api.calls() == []  # no handler ran
    assert not [r for r in caplog.records if r.exc_info or "Traceback" in r.getMessage()]
    refusals = [r.getMessage() for r in caplog.records if r.name == "bot.slack.serve"]
    assert len(refusals) == 2 * len(MALFORMED) + 1  # one line each


def test_a_request_whose_headers_trickle_in_is_cut_off_at_the_headers_deadline(
    bare_runtime: Runtime, slack_api: FakeSlackAPI, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A byte every 0.2 s keeps the socket's own timeout from ever running out (slowloris); the deadline for the
    request line and headers in all does run out, and the connection is closed."""
    monkeypatch.setattr(server_module, "HEADERS_TIMEOUT_S", 1.0, raising=False)
    server, _ = start(bare_runtime, slack_api, threads=2)
    closed_after = None
    try:
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as client:
            client.sendall(b"POST /hooks/deploy HTTP/1.1\r\nHost: x\r\n")
            started = time.monotonic()
            client.settimeout(0.2)
            while time.monotonic() - started < 5:
                try:
                    client.sendall(b"X")
                    if client.recv(1024) == b"":
                        closed_after = time.monotonic() - started
                        break
                except TimeoutError:
                    continue
                except OSError:  # reset: closed as well
                    closed_after = time.monotonic() - started
                    break
    finally:
        server.stop()
    assert closed_after is not None and closed_after < 3, "the trickling connection was still open after 5 s"


def test_past_the_overflow_threads_a_connection_is_answered_503_and_later_ones_are_served_again(
    bare_runtime: Runtime, slack_api: FakeSlackAPI, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Clients holding connections open take the pool's threads and then threads of their own, up to a bound;
    beyond it a connection is told to retry, not given one more thread."""
    monkeypatch.setattr(server_module, "OVERFLOW_THREADS", 2, raising=False)
    server, _ = start(bare_runtime, slack_api, threads=1)
    holders = []
    try:
        for _ in range(3):  # one on the pooled thread, two on threads of their own
            holders.append(socket.create_connection(("127.0.0.1", server.port), timeout=5))
            time.sleep(0.1)
        before = threading.active_count()
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as turned_away:
            answer = turned_away.recv(4096)
        assert answer.startswith(b"HTTP/1.1 503") and b"send it again" in answer
        assert threading.active_count() <= before
        for holder in holders:
            holder.close()
        time.sleep(0.3)
        probe = Probe(
            "unsigned deploy hook", request("POST", "/hooks/deploy", b"{}", {"Content-Type": "application/json"})
        )
        answers, _ = exchange(server.port, probe, timeout=10)
        assert [a.status for a in answers] == [401]  # served again (unsigned)
    finally:
        for holder in holders:
            holder.close()
        server.stop()
