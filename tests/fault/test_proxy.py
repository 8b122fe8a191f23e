"""The fault proxy itself: it forwards to the fake, and each fault does what it says, as slack_sdk sees it."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError

from bot.slack.local.fake_api import FakeSlackAPI
from tests.fault import proxy as faults
from tests.fault.harness import http_request, wait_until
from tests.fault.proxy import FaultProxy

pytestmark = pytest.mark.fault


@pytest.fixture
def chain() -> Iterator[tuple[FakeSlackAPI, FaultProxy]]:
    with FakeSlackAPI() as api, FaultProxy(api.port) as proxy:
        yield api, proxy


def client(proxy: FaultProxy, timeout: int = 5) -> WebClient:
    return WebClient(token="xoxb-fault-test", base_url=proxy.url, timeout=timeout)


def test_requests_without_a_rule_are_forwarded_and_recorded_by_the_fake(chain: tuple[FakeSlackAPI, FaultProxy]) -> None:
    api, proxy = chain
    answer = client(proxy).chat_postMessage(channel="C1", text="hello")
    assert answer["ok"] and answer["channel"] == "C1"
    base = proxy.url.removesuffix("/api/")
    posted = http_request(base, "POST", "/response/cmd1", b'{"text": "hi"}', {"Content-Type": "application/json"})
    assert posted.status == 200
    assert [c.method for c in api.calls()] == ["chat.postMessage", "response_url"]
    assert api.responses("cmd1") == [{"text": "hi"}]
    assert [(e.method, e.action, e.status) for e in proxy.events] == [
        ("chat.postMessage", "forwarded", 200),
        ("response_url", "forwarded", 200),
    ]


def test_a_429_carries_retry_after_and_only_the_matching_channel_is_hit(
    chain: tuple[FakeSlackAPI, FaultProxy],
) -> None:
    api, proxy = chain
    proxy.add("chat.postMessage", faults.status(429, retry_after=2), times=1, channel="C2")
    web = client(proxy)
    web.chat_postMessage(channel="C1", text="other channel: untouched")
    with pytest.raises(SlackApiError) as raised:
        web.chat_postMessage(channel="C2", text="limited")
    assert raised.value.response.status_code == 429
    assert raised.value.response.headers.get("Retry-After") == "2"
    web.chat_postMessage(channel="C2", text="the rule fired once")
    assert [c.body["text"] for c in api.calls("chat.postMessage")] == [
        "other channel: untouched",
        "the rule fired once",
    ]


def test_html_error_pages_resets_and_hangs(chain: tuple[FakeSlackAPI, FaultProxy]) -> None:
    api, proxy = chain
    proxy.add("chat.update", faults.html(502))
    proxy.add("chat.update", faults.reset())
    proxy.add("chat.update", faults.hang(1.0))
    base = proxy.url.removesuffix("/api/")
    body, headers = b'{"channel": "C1", "ts": "1.0", "text": "x"}', {"Content-Type": "application/json"}
    page = http_request(base, "POST", "/api/chat.update", body, headers)
    assert page.status == 502 and page.body.startswith("<!DOCTYPE html>")
    dropped = http_request(base, "POST", "/api/chat.update", body, headers)
    assert dropped.status == 0, dropped.body
    started = time.monotonic()
    slow = http_request(base, "POST", "/api/chat.update", body, headers)
    assert slow.status == 200 and time.monotonic() - started >= 1.0
    assert len(api.calls("chat.update")) == 1  # only the hang forwarded; page and reset never reached the fake
    assert [e.action for e in proxy.events] == ["502 html", "reset before forwarding", "hang 1s before forwarding"]


def test_a_drip_answers_slowly_but_completely(chain: tuple[FakeSlackAPI, FaultProxy]) -> None:
    api, proxy = chain
    proxy.add("auth.test", faults.drip(chunk=40, seconds=0.1))
    started = time.monotonic()
    answer = client(proxy).auth_test()
    assert answer["ok"] and answer["user_id"] == "UBOT0001"
    assert time.monotonic() - started >= 0.3


def test_a_client_that_gives_up_during_a_hang_gets_nothing_forwarded(chain: tuple[FakeSlackAPI, FaultProxy]) -> None:
    api, proxy = chain
    proxy.add("chat.postMessage", faults.hang(5.0))
    base = proxy.url.removesuffix("/api/")
    body, headers = b'{"channel": "C1", "text": "x"}', {"Content-Type": "application/json"}
    gave_up = http_request(base, "POST", "/api/chat.postMessage", body, headers, timeout=0.5)
    assert gave_up.status == 0 and "timed out" in gave_up.body
    assert wait_until(lambda: proxy.events, 3)
    assert proxy.events[0].action == "hang 5s before forwarding: client gave up"
    assert api.calls() == []
