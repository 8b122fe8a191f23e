"""Malformed requests against the real HTTP endpoint, generated from a seeded random source.

Every request must get an HTTP answer (no dropped connection), none a 5xx; every answer has a Content-Length, and a
refusal a JSON body saying why; the log shows no traceback; and the database tables that hold decisions do not
change. The generated requests are signed and unsigned, real Slack payloads mutated at random, bad Content-Length
values, truncated and stalled bodies, over-large bodies, wrong methods and paths, garbled request lines, sent over
raw sockets so that nothing is corrected on the way. A failure names the request and the seed reproduces it.
"""

from __future__ import annotations

import json
import logging
import random
import socket
import sqlite3
import time
import urllib.parse
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from bot.ops.ci_events import sign as sign_hook
from bot.runtime import Runtime
from bot.slack import ids
from bot.slack import serve as server
from bot.slack.app import create_app, create_client
from bot.slack.local.fake_api import FakeSlackAPI
from bot.slack.serve import MAX_ALERTS_BODY, MAX_BODY, HttpServer
from bot.slack.web import SlackWeb
from bot.workers import TrackedPool
from tests.slack.conftest import HOOK_SECRET, SIGNING_SECRET, sign

SEED = 140809  # issue 14, points 8 and 9
COUNT = 1100
STATE_TABLES = ("deploy_requests", "audit", "live_incidents", "deploy_decisions")
USER, CHANNEL, QUIET_CHANNEL = "U04C2RN8VD", "C0OPS0001", "C0FUZZ001"  # nothing is configured for the quiet one
FORM = "application/x-www-form-urlencoded"
CONTENT_TYPES = (FORM, "application/json", "text/plain", "", "application/json; charset=utf-16", "multipart/form-data")
BAD_LENGTHS = (
    " 5",
    "5 ",
    "abc",
    "1e3",
    "-1",
    "+5",
    "5 5",
    "0x10",
    "1_0",
    "\u0665",
    "",
    "1.0",
    "-0",
    "99999999999999999999",
    "9" * 5000,
    "5, 5",
)


@dataclass
class Probe:
    """One generated request: what it is (shown when it fails), its bytes, and the answers it may get."""

    label: str
    data: bytes
    expect: frozenset[int] | None = None  # None: any 2xx-4xx answer will do
    half_close: bool = True  # False: the client stalls after sending, and the server must end it
    head: bool = False


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes


def request(
    method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None, length: str | None = "auto"
) -> bytes:
    """A raw HTTP/1.1 request; ``length`` "auto" sends the true Content-Length, None none at all."""
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    if length is not None:
        lines.append(f"Content-Length: {len(body) if length == 'auto' else length}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8", "surrogateescape") + body


def exchange(port: int, probe: Probe, timeout: float = 30) -> tuple[list[Answer], str]:
    """Send the probe on a fresh connection; every answer that came back, and what was wrong with the bytes."""
    raw = b""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as conn:
        try:
            conn.sendall(probe.data)
            if probe.half_close:
                conn.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # refused before the whole body was sent (413): the answer is still there to read
        try:
            while chunk := conn.recv(65536):
                raw += chunk
        except OSError as exc:
            if not raw:
                return [], f"no answer: {type(exc).__name__}"
    return parse_answers(raw, probe.head)


def parse_answers(raw: bytes, head: bool) -> tuple[list[Answer], str]:
    """The HTTP responses in ``raw``, each delimited by its Content-Length."""
    answers: list[Answer] = []
    while raw:
        top, sep, rest = raw.partition(b"\r\n\r\n")
        if not sep:
            return answers, f"an answer cut short: {raw[:80]!r}"
        status_line, *header_lines = top.decode("iso-8859-1").split("\r\n")
        parts = status_line.split(" ", 2)
        if len(parts) < 2 or parts[0] != "HTTP/1.1" or not parts[1].isdigit():
            return answers, f"not an HTTP/1.1 status line: {status_line[:80]!r}"
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in header_lines)}
        if "content-length" not in headers:
            return answers, f"HTTP {parts[1]} without a Content-Length"
        length = 0 if head else int(headers["content-length"])
        if len(rest) < length:
            return answers, f"HTTP {parts[1]} body shorter than its Content-Length"
        answers.append(Answer(int(parts[1]), headers, rest[:length]))
        raw = rest[length:]
    return answers, "" if answers else "no answer: the connection closed"


def problems_with(probe: Probe, answers: list[Answer], error: str) -> str:
    """What is wrong with the answers to one probe ("" when nothing is)."""
    if error:
        return error
    first = answers[0]
    if first.status >= 500:
        return f"HTTP {first.status}: {first.body[:200]!r}"
    if probe.expect is not None and first.status not in probe.expect:
        return f"HTTP {first.status}, expected {sorted(probe.expect)}: {first.body[:200]!r}"
    for answer in answers:
        if answer.status >= 500:
            return f"a later answer HTTP {answer.status}"
        if answer.status >= 400 and not probe.head:
            try:
                data = json.loads(answer.body)
            except ValueError:
                return f"HTTP {answer.status} without a JSON body: {answer.body[:200]!r}"
            if not isinstance(data, dict) or not isinstance(data.get("error"), str):
                return f"HTTP {answer.status} JSON without an error: {answer.body[:200]!r}"
    return ""


# -- what Slack sends (the bases), all harmless when handled --------------------------------------------------


def event_body(event: dict, n: int) -> dict:
    return {
        "token": "legacy",
        "team_id": "T0000001",
        "api_app_id": "A0000001",
        "type": "event_callback",
        "event_id": f"EvFUZZ{n:08d}",
        "event_time": int(time.time()),
        "authorizations": [{"enterprise_id": None, "team_id": "T0000001", "user_id": "UBOT0001", "is_bot": True}],
        "event": event,
    }


def events(n: int) -> list[dict]:
    ts = f"{1700000000 + n}.000100"
    return [
        event_body({"type": "app_mention", "user": USER, "text": "<@UBOT0001> help", "channel": CHANNEL, "ts": ts}, n),
        event_body(
            {"type": "message", "channel_type": "im", "user": USER, "text": "hi", "channel": "D0DM00001", "ts": ts}, n
        ),
        event_body({"type": "message", "user": USER, "text": "lunch?", "channel": QUIET_CHANNEL, "ts": ts}, n),
        event_body(
            {
                "type": "reaction_added",
                "user": USER,
                "reaction": "pushpin",
                "item": {"type": "message", "channel": QUIET_CHANNEL, "ts": ts},
                "event_ts": ts,
            },
            n,
        ),
        event_body({"type": "channel_created", "channel": {"id": "C0NEW0001", "name": "new"}}, n),
        {
            "token": "legacy",
            "challenge": "3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P",
            "type": "url_verification",
        },
        {"token": "legacy", "type": "app_rate_limited", "team_id": "T0000001", "minute_rate_limited": 1518467820},
    ]


def commands(api: FakeSlackAPI, n: int) -> list[dict[str, str]]:
    """Slash commands that only show usage, help or read something: none records anything."""
    texts = [
        ("/ask", ""),
        ("/ask", "help"),
        ("/experts", ""),
        ("/deploy", ""),
        ("/deploy", "checkout-api"),
        ("/rollback", ""),
        ("/incident", ""),
        ("/incident", "help"),
        ("/incident", "list"),
        ("/incident", "status INC-1999-999"),
    ]
    return [
        {
            "token": "legacy",
            "team_id": "T0000001",
            "team_domain": "larder",
            "channel_id": CHANNEL,
            "channel_name": "ops",
            "user_id": USER,
            "user_name": "alice",
            "command": command,
            "text": text,
            "api_app_id": "A0000001",
            "response_url": api.response_url(f"fuzz{n}"),
            "trigger_id": f"trig.fuzz{n}",
        }
        for command, text in texts
    ]


def interactions(api: FakeSlackAPI, n: int) -> list[dict]:
    """Clicks on buttons whose answer, deploy or expert does not exist, views, shortcuts: none records anything."""
    user = {"id": "U03F8K2LQ1", "username": "bob", "team_id": "T0000001"}
    team = {"id": "T0000001", "domain": "larder"}
    clicks = [
        (ids.FEEDBACK_UP, "fuzz-no-such-answer"),
        (ids.FEEDBACK_DOWN, "fuzz-no-such-answer"),
        (ids.SHARE_ANSWER, "fuzz-no-such-answer"),
        (ids.INVITE_EXPERT, "UNOBODY00"),
        (ids.DEPLOY_APPROVE, "DR-FUZZ-0"),
        (ids.DEPLOY_REJECT, "DR-FUZZ-0"),
        (ids.INCIDENT_ROLLBACK, "not a rollback"),
        ("fuzz-unknown-action", "x"),
    ]
    payloads: list[dict] = [
        {
            "type": "block_actions",
            "team": team,
            "user": user,
            "api_app_id": "A0000001",
            "token": "legacy",
            "container": {"type": "message", "message_ts": "1700000000.000100", "channel_id": CHANNEL},
            "trigger_id": f"trig.fuzz{n}",
            "channel": {"id": CHANNEL, "name": "ops"},
            "message": {"type": "message", "ts": "1700000000.000100", "text": "answer", "blocks": []},
            "response_url": api.response_url(f"fuzz{n}"),
            "actions": [
                {"action_id": action, "block_id": "b1", "type": "button", "value": value, "action_ts": "1700000001.2"}
            ],
        }
        for action, value in clicks
    ]
    view = {"id": "V0FUZZ1", "type": "modal", "callback_id": "fuzz-view", "state": {"values": {}}, "hash": "1.a"}
    payloads += [
        {"type": "view_submission", "team": team, "user": user, "view": view, "api_app_id": "A0000001"},
        {"type": "view_closed", "team": team, "user": user, "view": view, "is_cleared": False},
        {"type": "shortcut", "callback_id": "fuzz-shortcut", "trigger_id": "t", "user": user, "team": team},
        {
            "type": "message_action",
            "callback_id": "fuzz-message-shortcut",
            "trigger_id": "t",
            "user": user,
            "team": team,
            "channel": {"id": CHANNEL, "name": "ops"},
            "message": {"type": "message", "ts": "1700000000.000100", "text": "x"},
            "response_url": api.response_url(f"fuzz{n}"),
        },
        {"type": "block_suggestion", "action_id": "fuzz-select", "block_id": "b", "value": "q", "user": user},
    ]
    return payloads


# -- mutation -------------------------------------------------------------------------------------------------


class Fuzzer:
    """Seeded generation of requests; the same seed gives the same requests."""

    def __init__(self, seed: int, api: FakeSlackAPI, real_ids: dict[str, str]) -> None:
        self.rng = random.Random(seed)
        self.api = api
        self.real_ids = real_ids
        self.n = 0

    def junk_string(self, spaces: bool = True) -> str:
        rng = self.rng
        choices: list[Callable[[], str]] = [
            lambda: "",
            lambda: "\x00",
            lambda: "é\u202e\u200b",
            lambda: "💥" * rng.randint(1, 40),
            lambda: "\ud800",  # half a surrogate pair: valid in JSON escapes, not in UTF-8
            lambda: "%zz%",
            lambda: "<@U000>&lt;" * rng.randint(1, 5),
            lambda: "a" * rng.randint(1000, 20000),
            lambda: "".join(chr(rng.randint(32, 0x2FFF)) for _ in range(rng.randint(1, 60))),
            lambda: "".join(chr(rng.randint(0, 31)) for _ in range(rng.randint(1, 10))),
        ]
        text = rng.choice(choices)()
        return text if spaces else "".join(c for c in text if not c.isspace())

    def junk_value(self) -> Any:
        rng = self.rng
        return rng.choice(
            [
                None,
                True,
                0,
                -1,
                2**70,
                1.5,
                [],
                {},
                [None],
                {"id": None},
                {"id": 5},
                [{"x": 1}],
                "x",
                self.junk_string(),
                [self.junk_string()],
            ]
        )

    def mutate(self, data: Any, times: int) -> Any:
        """``data`` with ``times`` random changes: a key removed, a value replaced by junk or by another type."""
        data = json.loads(json.dumps(data))
        for _ in range(times):
            containers = list(walk(data))
            if not containers:
                break
            parent, key = self.rng.choice(containers)
            action = self.rng.random()
            if action < 0.3 and isinstance(parent, dict) and key in parent:
                del parent[key]
            elif action < 0.4 and isinstance(parent, dict):
                parent[self.junk_string(spaces=False)[:30] or "k"] = self.junk_value()
            elif action < 0.5:
                parent[key] = [parent[key]]
            else:
                parent[key] = self.junk_value()
        return data

    def slack_body(self) -> tuple[str, str, str]:
        """(label, body, content type) of a random real payload, mutated or not."""
        self.n += 1
        rng, n = self.rng, self.n
        kind = rng.choice(["event", "command", "interaction"])
        mutations = rng.choice([0, 1, 1, 2, 3])
        if kind == "event":
            base = rng.choice(events(n))
            body = self.mutate(base, mutations) if mutations else base
            return f"event {base.get('type')} x{mutations}", json.dumps(body), "application/json"
        if kind == "command":
            form = rng.choice(commands(self.api, n))
            label = f"command {form['command']} {form['text']!r} x{mutations}"
            pairs = list(form.items())
            for _ in range(mutations):
                if not pairs:
                    break
                action = rng.random()
                index = rng.randrange(len(pairs))
                if action < 0.3 and pairs:
                    pairs.pop(index)
                elif action < 0.5:
                    pairs.append((rng.choice(["text", "command", "payload", "user_id"]), self.junk_string(False)))
                elif pairs[index][0] == "response_url":
                    pairs[index] = ("response_url", self.junk_string(False))  # never another URL to call
                else:  # no spaces: a junk /deploy text must not read as SERVICE VERSION ENV
                    pairs[index] = (pairs[index][0], self.junk_string(False))
            return label, urllib.parse.urlencode(pairs, errors="surrogatepass"), FORM
        base = rng.choice(interactions(self.api, n))
        payload = self.mutate(base, mutations) if mutations else base
        if mutations:
            for name in ("response_url",):  # a mutated payload never names another URL for opsbot to call
                value = payload.get(name) if isinstance(payload, dict) else None
                if isinstance(value, str) and value != base.get(name):
                    payload[name] = "not a url"
        text = json.dumps(payload)
        if rng.random() < 0.1:
            text = rng.choice([text[: rng.randrange(len(text))], "[" + text + "]", text.replace("{", "", 1)])
        form = urllib.parse.urlencode({"payload": text}, errors="surrogatepass")
        return f"interaction {base['type']} x{mutations}", form, FORM

    def byte_damage(self, body: bytes) -> bytes:
        rng = self.rng
        choice = rng.random()
        if choice < 0.3:
            return body[: rng.randrange(len(body) + 1)]
        if choice < 0.6:
            at = rng.randrange(len(body) + 1)
            return body[:at] + bytes(rng.randrange(256) for _ in range(rng.randint(1, 8))) + body[at:]
        if choice < 0.8:
            return b"\xff\xfe" + body
        return bytes(rng.randrange(256) for _ in range(rng.randint(1, 2000)))

    def slack_headers(self, body: bytes, content_type: str, signed: bool = True) -> dict[str, str]:
        ts = int(time.time())
        headers = {"Content-Type": content_type} if content_type else {}
        if signed:
            signature = "v0=" + sign_bytes(body, ts)
            headers |= {"X-Slack-Request-Timestamp": str(ts), "X-Slack-Signature": signature}
        return headers

    # -- the kinds of probe -------------------------------------------------------------------------------------

    def signed_slack(self) -> Probe:
        label, text, content_type = self.slack_body()
        body = text.encode()
        if self.rng.random() < 0.15:
            body = self.byte_damage(body)
            label += " damaged"
        if self.rng.random() < 0.1:
            content_type = self.rng.choice(CONTENT_TYPES)
            label += f" as {content_type!r}"
        headers = self.slack_headers(body, content_type)
        return Probe(f"signed {label}", request("POST", "/slack/events", body, headers))

    def unsigned_slack(self) -> Probe:
        """Requests that would change state if Slack had signed them: refused for their signature."""
        rng = self.rng
        self.n += 1
        real = [
            urllib.parse.urlencode(
                commands(self.api, self.n)[0] | {"command": "/deploy", "text": "checkout-api 1.4.2 staging"}
            ),
            urllib.parse.urlencode(
                {
                    "payload": json.dumps(
                        interactions(self.api, self.n)[4]
                        | {"actions": [{"action_id": ids.DEPLOY_APPROVE, "value": self.real_ids["deploy"]}]}
                    )
                }
            ),
            urllib.parse.urlencode(
                commands(self.api, self.n)[0] | {"command": "/incident", "text": f"resolve {self.real_ids['incident']}"}
            ),
        ]
        body = rng.choice(real).encode()
        ts = int(time.time())
        way = rng.choice(["none", "wrong secret", "stale", "future", "bad timestamp", "odd signature", "other body"])
        headers: dict[str, str] = {"Content-Type": FORM}
        if way == "wrong secret":
            headers |= {"X-Slack-Request-Timestamp": str(ts), "X-Slack-Signature": sign(body.decode(), ts, "wrong")}
        elif way in ("stale", "future"):
            then = ts - 600 if way == "stale" else ts + 600
            headers |= {"X-Slack-Request-Timestamp": str(then), "X-Slack-Signature": sign(body.decode(), then)}
        elif way == "bad timestamp":
            bad = rng.choice(["abc", "1e9", "", "-5", "9" * 5000, f"{ts}.0", "\u0661\u0662"])
            headers |= {"X-Slack-Request-Timestamp": bad, "X-Slack-Signature": sign(body.decode(), ts)}
        elif way == "odd signature":
            odd = rng.choice(["", "v0=", "v0=é", "v1=" + "0" * 64, "x" * 5000, "v0=\u00ff\u00fe"])
            headers |= {"X-Slack-Request-Timestamp": str(ts), "X-Slack-Signature": odd}
        elif way == "other body":
            headers |= {"X-Slack-Request-Timestamp": str(ts), "X-Slack-Signature": sign("other", ts)}
        return Probe(f"unsigned ({way})", request("POST", "/slack/events", body, headers), frozenset({401}))

    def bad_length(self) -> Probe:
        path = self.rng.choice(["/slack/events", server.HOOK_PATH])
        value = self.rng.choice(BAD_LENGTHS)
        expect: frozenset[int] | None = frozenset({413} if value.isdecimal() and value.isascii() else {400})
        if value.strip(" \t") != value:  # spaces around it are HTTP's optional whitespace: it reads 5 bytes
            expect = None
        data = request("POST", path, b'{"type": "x"}', length=value)
        return Probe(f"Content-Length {value[:20]!r} on {path}", data, expect)

    def framing(self) -> Probe:
        rng = self.rng
        path = rng.choice(["/slack/events", server.HOOK_PATH])
        body = b'{"type": "event_callback"}'
        kind = rng.choice(["none", "chunked", "chunked+length", "two lengths", "truncated", "longer", "huge", "big"])
        if kind == "none":
            return Probe(f"no Content-Length on {path}", request("POST", path, body, length=None), frozenset({411}))
        if kind == "chunked":
            chunked = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
            data = request("POST", path, chunked, {"Transfer-Encoding": "chunked"}, length=None)
            return Probe(f"chunked on {path}", data, frozenset({411}))
        if kind == "chunked+length":
            data = request("POST", path, body, {"Transfer-Encoding": "chunked"})
            return Probe(f"chunked with a length on {path}", data, frozenset({411}))
        if kind == "two lengths":
            data = request("POST", path, body, {"Content-Length": str(len(body) + 1)})
            return Probe(f"two Content-Lengths on {path}", data, frozenset({400}))
        if kind == "truncated":
            data = request("POST", path, body[:10], length=str(len(body) + rng.randint(1, 5000)))
            return Probe(f"body cut short on {path}", data, frozenset({408}))
        if kind == "longer":  # the rest is read as a next request, which is garbage
            data = request("POST", path, body + b"GARBAGE / HTTP/1.1\r\n\r\n" + body, length=str(len(body)))
            return Probe(f"body longer than its length on {path}", data)
        most = MAX_ALERTS_BODY if path == ids.ALERTMANAGER_PATH else MAX_BODY  # a whole alert group is larger
        if kind == "huge":
            data = request("POST", path, body, length=str(most + rng.randint(1, 10**9)))
            return Probe(f"huge Content-Length on {path}", data, frozenset({413}))
        big = b"x" * (most + rng.randint(1, 4096))
        return Probe(f"over-large body on {path}", request("POST", path, big), frozenset({413}))

    def methods_and_paths(self) -> Probe:
        rng = self.rng
        if rng.random() < 0.5:
            method = rng.choice(["PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "FOO", "HEAD", "GET"])
            path = rng.choice(["/slack/events", server.HOOK_PATH, "/healthz"])
            if method in ("GET", "HEAD") and path == "/healthz":
                method = "POST"
            data = request(method, path, b"{}" if method not in ("GET", "HEAD") else b"")
            return Probe(f"{method} {path}", data, frozenset({405}), head=method == "HEAD")
        path = rng.choice(
            [
                "/",
                "/slack",
                "/slack/events/",
                "/SLACK/EVENTS",
                "/../etc/passwd",
                "/hooks/deploy/x",
                "/healthz/x",
                "/%00",
                "/" + "a" * 8000,
                "/" + urllib.parse.quote(self.junk_string(False).encode("utf-8", "replace")),
            ]
        )
        method = rng.choice(["GET", "POST"])
        return Probe(
            f"{method} {path[:40]}", request(method, path, b"{}" if method == "POST" else b""), frozenset({404})
        )

    def garbage(self) -> Probe:
        rng = self.rng
        choices = [
            b"GET\r\n\r\n",
            b"GET / HTTP/9.9\r\n\r\n",
            b"GET /healthz HTTP/2.0\r\n\r\n",
            b"GET /healthz HTTP/1.1\r\nno colon here\r\n\r\n",
            b"\xff\xfe\xfd garbage\r\n\r\n",
            b"GET /healthz HTTP/1.1\r\nX: " + b"a" * 70000 + b"\r\n\r\n",
            b"GET /healthz HTTP/1.1\r\n" + b"".join(b"X-%d: y\r\n" % i for i in range(150)) + b"\r\n",
            b"G" * 70000 + b"\r\n\r\n",
            b"   \r\n\r\n",
            b"\r\n\r\nGET /healthz HTTP/1.1\r\nHost: x\r\n\r\n",
            bytes(rng.randrange(1, 256) for _ in range(rng.randint(1, 300))) + b"\r\n\r\n",
        ]
        data = rng.choice(choices)
        return Probe(f"garbage {data[:30]!r}", data)

    def health(self) -> Probe:
        headers = {"X-Junk": self.junk_string(False).encode("utf-8", "replace").decode("latin-1")[:200]}
        path = "/healthz" + rng_query(self.rng)
        method = self.rng.choice(["GET", "GET", "HEAD"])
        data = request(method, path, b"", headers, length=None)
        return Probe(f"{method} {path[:40]}", data, frozenset({200}), head=method == "HEAD")

    def hook(self) -> Probe:
        rng = self.rng
        event = {
            "event_id": "gh-fuzz",
            "service": "checkout-api",
            "env": "prod",
            "version": "1.4.2",
            "status": "succeeded",
        }
        body = json.dumps(event).encode()
        ts = int(time.time())
        way = rng.choice(["unsigned", "bad signature", "stale", "signed junk", "signed damaged", "signed mutated"])
        headers = {"Content-Type": "application/json"}
        expect: frozenset[int] | None = frozenset({401})
        if way == "bad signature":
            headers |= {
                "X-Opsbot-Timestamp": str(ts),
                "X-Opsbot-Signature": sign_hook("not-the-secret-at-all", ts, body),
            }
        elif way == "stale":
            headers |= {
                "X-Opsbot-Timestamp": str(ts - 900),
                "X-Opsbot-Signature": sign_hook(HOOK_SECRET, ts - 900, body),
            }
        elif way.startswith("signed"):
            if way == "signed junk":
                body = rng.choice(
                    [b"", b"[]", b'"x"', b"{", b"null", b"{}", self.junk_string().encode("utf-8", "replace")]
                )
            elif way == "signed damaged":  # without an event id, whatever the damage leaves is not recorded
                body = self.byte_damage(json.dumps(event | {"event_id": None}).encode())
            else:  # a mutation that leaves the event valid would record it: its event_id is broken on purpose
                mutated = self.mutate(event, rng.randint(1, 3))
                body = json.dumps(mutated | {"event_id": None}).encode()
            headers |= {"X-Opsbot-Timestamp": str(ts), "X-Opsbot-Signature": sign_hook(HOOK_SECRET, ts, body)}
            expect = frozenset({400})
        return Probe(f"hook {way}", request("POST", server.HOOK_PATH, body, headers), expect)

    def probes(self, count: int) -> list[Probe]:
        kinds: list[tuple[float, Callable[[], Probe]]] = [
            (0.50, self.signed_slack),
            (0.10, self.unsigned_slack),
            (0.08, self.bad_length),
            (0.08, self.framing),
            (0.08, self.methods_and_paths),
            (0.06, self.garbage),
            (0.04, self.health),
            (0.06, self.hook),
        ]
        weights = [w for w, _ in kinds]
        return [self.rng.choices([k for _, k in kinds], weights)[0]() for _ in range(count)]


def walk(data: Any) -> Iterator[tuple[Any, Any]]:
    """Every (container, key) in a JSON value, the top included as (a wrapper, 0)."""
    stack = [data]
    while stack:
        item = stack.pop()
        keys = list(item) if isinstance(item, dict) else range(len(item)) if isinstance(item, list) else []
        for key in keys:
            yield item, key
            stack.append(item[key])


def rng_query(rng: random.Random) -> str:
    return rng.choice(["", "?", "?x=1", "?%ff%fe", "?" + "a=b&" * 200, "?#frag"])


def sign_bytes(body: bytes, ts: int, secret: str = SIGNING_SECRET) -> str:
    import hashlib
    import hmac

    return hmac.new(secret.encode(), b"v0:%d:" % ts + body, hashlib.sha256).hexdigest()


def dump(db_path: Path) -> dict[str, list[tuple]]:
    """The rows of the tables that hold deploys, decisions, incidents and the audit trail."""
    with sqlite3.connect(f"file:{db_path}?mode=ro", uri=True) as conn:
        return {table: conn.execute(f"SELECT * FROM {table} ORDER BY rowid").fetchall() for table in STATE_TABLES}


@pytest.fixture
def fuzzed_bot(runtime: Runtime, slack_api: FakeSlackAPI) -> Iterator[tuple[HttpServer, TrackedPool, SlackWeb]]:
    """The real HTTP server and Bolt app, with a pool whose lazy work the test can wait for, and its outbox."""
    executor = TrackedPool(5, "opsbot-fuzz")
    app = create_app(runtime, client=create_client(runtime), listener_executor=executor)
    bot = HttpServer(app, runtime, host="127.0.0.1", port=0).start()
    yield bot, executor, app.web
    bot.stop()
    app.web.stop()
    executor.shutdown(wait=False, cancel_futures=True)


def test_a_thousand_malformed_requests_get_4xx_answers_no_traceback_and_change_nothing(
    fuzzed_bot: tuple[HttpServer, TrackedPool, SlackWeb],
    runtime: Runtime,
    slack_api: FakeSlackAPI,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    bot, executor, web = fuzzed_bot
    monkeypatch.setattr(server, "BODY_TIMEOUT_S", 1.0)  # the stalled clients below end within a second
    runtime.index(timeout=60)
    pending = runtime.deploys().request("deploy", "checkout-api", "staging", "1.4.2", USER, channel=CHANNEL)
    incident = runtime.incidents().declare(
        "checkout 503s after deploy", USER, 2, ["checkout-api"], origin_channel=CHANNEL, channel="C0INC0001"
    )
    assert web.wait_idle(30)  # the request's message is posted, and where it went recorded, before the snapshot
    before = dump(tmp_path / "opsbot.db")
    assert before["deploy_requests"] and before["live_incidents"]  # something to protect

    fuzzer = Fuzzer(SEED, slack_api, {"deploy": pending.id, "incident": incident.id})
    probes = fuzzer.probes(COUNT)
    stalled = [
        Probe("stalled body", request("POST", path, b"{", length="40"), frozenset({408}), half_close=False)
        for path in ("/slack/events", server.HOOK_PATH) * 3
    ]
    caplog.set_level(logging.WARNING)
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(lambda p: (p, *exchange(bot.port, p)), stalled + probes))
    assert executor.wait_idle(120), "the handlers' work did not finish"
    seconds = time.perf_counter() - started

    failures = [
        f"{p.label}: {problem}" for p, answers, error in results if (problem := problems_with(p, answers, error))
    ]
    assert failures == [], f"{len(failures)} of {len(results)} (seed {SEED}):\n" + "\n".join(failures[:30])
    tracebacks = [r for r in caplog.records if r.exc_info or "Traceback" in r.getMessage()]
    assert tracebacks == [], "\n".join(f"{r.name}: {r.getMessage()[:300]}" for r in tracebacks[:10])
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []
    assert "Traceback" not in caplog.text
    assert dump(tmp_path / "opsbot.db") == before
    statuses = sorted({answers[0].status for _, answers, _ in results})
    assert {400, 401, 404, 405, 408, 411, 413}.issubset(statuses), statuses
    assert 200 in statuses  # the well-formed ones among them were answered as before
    logging.getLogger(__name__).info("fuzzed requests=%d seconds=%.1f statuses=%s", len(results), seconds, statuses)
