"""The fake Slack Web API, driven by the real slack_sdk clients."""

from __future__ import annotations

import json
import re
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator

import pytest
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.builtin_handlers import RateLimitErrorRetryHandler
from slack_sdk.webhook import WebhookClient

from bot.slack.local.fake_api import Call, FakeSlackAPI

TOKEN = "xoxb-test"
BLOCKS = [
    {"type": "section", "text": {"type": "mrkdwn", "text": "*Deploy* payments-api 1.4.2"}},
    {
        "type": "actions",
        "elements": [
            {"type": "button", "action_id": "deploy-approve", "text": {"type": "plain_text", "text": "Approve"}}
        ],
    },
]


@pytest.fixture
def api() -> Iterator[FakeSlackAPI]:
    with FakeSlackAPI() as fake:
        yield fake


@pytest.fixture
def client(api: FakeSlackAPI) -> WebClient:
    return WebClient(base_url=api.url, token=TOKEN)


def test_url_is_a_loopback_base_url_with_trailing_slash(api: FakeSlackAPI) -> None:
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+/api/", api.url)
    assert api.port > 0


def test_post_message_returns_increasing_unique_ts(api: FakeSlackAPI, client: WebClient) -> None:
    answers = [client.chat_postMessage(channel="C_OPS", text=f"message {n}") for n in range(3)]

    stamps = [a["ts"] for a in answers]
    assert all(re.fullmatch(r"\d{10}\.\d{6}", ts) for ts in stamps)
    assert stamps == sorted(stamps, key=float) and len(set(stamps)) == 3
    assert [a["channel"] for a in answers] == ["C_OPS"] * 3
    assert answers[0]["message"]["text"] == "message 0"
    assert [m["text"] for m in api.messages("C_OPS")] == ["message 0", "message 1", "message 2"]
    assert api.messages("C_OTHER") == []


def test_blocks_round_trip_as_lists_from_json_and_form_bodies(api: FakeSlackAPI, client: WebClient) -> None:
    client.chat_postMessage(channel="C_OPS", text="deploy", blocks=BLOCKS)
    form = {"channel": "C_OPS", "text": "[WARN] disk full", "blocks": json.dumps(BLOCKS)}
    client.api_call("chat.postMessage", params=form)

    as_json, as_form = api.messages()
    assert as_json["blocks"] == BLOCKS
    assert as_form["blocks"] == BLOCKS
    assert as_form["text"] == "[WARN] disk full"
    assert api.calls("chat.postMessage")[1].headers["content-type"].startswith("application/x-www-form-urlencoded")


def test_get_with_query_params(api: FakeSlackAPI) -> None:
    with urllib.request.urlopen(f"{api.url}users.info?user=U_ALICE") as response:
        answer = json.load(response)

    assert answer["ok"] is True and answer["user"]["id"] == "U_ALICE"
    assert api.calls("users.info")[0].body == {"user": "U_ALICE"}


def test_wait_for_sees_calls_made_from_another_thread(api: FakeSlackAPI, client: WebClient) -> None:
    def post_later() -> None:
        time.sleep(0.1)
        client.chat_postMessage(channel="C_OPS", text="first")
        client.chat_postMessage(channel="C_OPS", text="second")

    worker = threading.Thread(target=post_later)
    worker.start()
    calls = api.wait_for("chat.postMessage", count=2, timeout=5.0)
    worker.join()

    assert [c.body["text"] for c in calls] == ["first", "second"]
    assert all(isinstance(c, Call) and c.ok and c.status == 200 for c in calls)


def test_wait_for_times_out_with_the_methods_it_did_receive(api: FakeSlackAPI, client: WebClient) -> None:
    client.auth_test()
    client.chat_postMessage(channel="C_OPS", text="hello")

    started = time.monotonic()
    with pytest.raises(AssertionError) as failure:
        api.wait_for("chat.postMessage", count=1, timeout=0.3, predicate=lambda c: c.body["channel"] == "C_DEPLOYS")

    assert time.monotonic() - started < 3
    message = str(failure.value)
    assert "expected 1 chat.postMessage call(s) matching the predicate within 0.3s but got 0" in message
    assert "received 2 call(s): auth.test, chat.postMessage" in message


def test_rate_limit_injected_once_is_retried_and_both_attempts_recorded(api: FakeSlackAPI) -> None:
    client = WebClient(base_url=api.url, token=TOKEN, retry_handlers=[RateLimitErrorRetryHandler(max_retry_count=1)])
    api.fail_next("chat.postMessage", status=429, retry_after=0)

    answer = client.chat_postMessage(channel="C_OPS", text="after a pause")

    assert answer["ok"] is True
    attempts = api.calls("chat.postMessage")
    assert [(c.status, c.error) for c in attempts] == [(429, "ratelimited"), (200, None)]
    assert [c.body["text"] for c in attempts] == ["after a pause", "after a pause"]
    assert len(api.messages()) == 1


def test_rate_limit_without_retry_handler_reaches_the_caller(api: FakeSlackAPI, client: WebClient) -> None:
    api.fail_next("chat.postMessage", status=429, retry_after=7)

    with pytest.raises(SlackApiError) as failure:
        client.chat_postMessage(channel="C_OPS", text="hello")

    assert failure.value.response.status_code == 429
    assert failure.value.response["error"] == "ratelimited"
    assert failure.value.response.headers["Retry-After"] == "7"
    assert client.chat_postMessage(channel="C_OPS", text="hello")["ok"] is True


def test_server_errors_and_slack_errors_can_be_injected(api: FakeSlackAPI, client: WebClient) -> None:
    api.fail_next("reactions.add", status=503, times=2)
    api.fail_next("conversations.invite", status=200, error="already_in_channel")

    for _ in range(2):
        with pytest.raises(SlackApiError) as failure:
            client.reactions_add(channel="C_OPS", timestamp="1700000000.000100", name="eyes")
        assert failure.value.response["error"] == "internal_error"
    with pytest.raises(SlackApiError, match="already_in_channel"):
        client.conversations_invite(channel="C_OPS", users="U_ALICE")

    assert client.reactions_add(channel="C_OPS", timestamp="1700000000.000100", name="eyes")["ok"] is True
    assert [c.status for c in api.calls("reactions.add")] == [503, 503, 200]


def test_response_url_posts_are_recorded(api: FakeSlackAPI) -> None:
    url = api.response_url("deploy-cmd")
    answer = WebhookClient(url).send(text="Deploy requested", response_type="ephemeral", blocks=BLOCKS)

    assert answer.status_code == 200
    [call] = api.wait_for("response_url")
    assert call.path == "/response/deploy-cmd"
    assert call.body["text"] == "Deploy requested" and call.body["blocks"] == BLOCKS
    assert api.responses("deploy-cmd") == [call.body]
    assert api.responses("other") == []


def test_apps_connections_open_returns_the_settable_socket_url(api: FakeSlackAPI) -> None:
    api.socket_url = "ws://127.0.0.1:8765/link/?ticket=t1"

    answer = WebClient(base_url=api.url).apps_connections_open(app_token="xapp-1-test")

    assert answer["url"] == "ws://127.0.0.1:8765/link/?ticket=t1"
    [call] = api.calls("apps.connections.open")
    assert call.used_token("xapp-1-test")


def test_tokens_are_never_kept_or_echoed(api: FakeSlackAPI, client: WebClient) -> None:
    answer = client.auth_test()
    form = urllib.parse.urlencode({"token": "xapp-1-secret"}).encode()
    urllib.request.urlopen(urllib.request.Request(f"{api.url}apps.connections.open", data=form)).close()

    calls = api.calls()
    assert TOKEN not in json.dumps(answer.data) + repr(calls)
    assert "xapp-1-secret" not in repr(calls)
    assert calls[0].headers["authorization"] == "Bearer xoxb-(redacted)"
    assert calls[1].body["token"] == "xapp-(redacted)" and calls[1].used_token("xapp-1-secret")
    assert calls[0].used_token(TOKEN) and not calls[0].used_token("xoxb-other")


def test_auth_test_answers_as_the_bot(client: WebClient) -> None:
    answer = client.auth_test()

    assert answer["user_id"] == "UBOT0001" and answer["bot_id"] == "BBOT0001"
    assert answer["team_id"] == "T0000001" and answer["team"] == "Fake"
    assert answer["url"] == "https://fake.slack.com/"


def test_thread_replies_are_those_posted_to_the_thread(client: WebClient) -> None:
    parent = client.chat_postMessage(channel="C_OPS", text="incident opened")["ts"]
    client.chat_postMessage(channel="C_OPS", text="elsewhere")
    client.chat_postMessage(channel="C_OPS", text="update 1", thread_ts=parent)
    client.chat_postMessage(channel="C_OTHER", text="update elsewhere", thread_ts=parent)

    replies = client.conversations_replies(channel="C_OPS", ts=parent)["messages"]

    assert [m["text"] for m in replies] == ["incident opened", "update 1"]


def test_update_ephemeral_and_other_methods_answer_like_slack(api: FakeSlackAPI, client: WebClient) -> None:
    ts = client.chat_postMessage(channel="C_OPS", text="pending")["ts"]
    updated = client.chat_update(channel="C_OPS", ts=ts, text="approved", blocks=BLOCKS)
    ephemeral = client.chat_postEphemeral(channel="C_OPS", user="U_ALICE", text="only you")
    created = client.conversations_create(name="inc-42-payments")
    second = client.conversations_create(name="inc-43-search")
    user = client.users_info(user="U_ALICE")["user"]
    view = client.views_open(trigger_id="T1", view={"type": "modal", "callback_id": "deploy-form"})["view"]
    permalink = client.chat_getPermalink(channel="C_OPS", message_ts=ts)["permalink"]

    assert (updated["channel"], updated["ts"]) == ("C_OPS", ts)
    assert client.conversations_replies(channel="C_OPS", ts=ts)["messages"][0]["text"] == "approved"
    assert ephemeral["message_ts"] > ts
    assert api.ephemerals(user="U_ALICE")[0]["text"] == "only you"
    assert created["channel"]["name"] == "inc-42-payments" and created["channel"]["id"].startswith("C")
    assert created["channel"]["id"] != second["channel"]["id"]
    assert user["id"] == "U_ALICE"
    assert view["callback_id"] == "deploy-form" and view["id"].startswith("V")
    assert permalink == f"https://fake.slack.com/archives/C_OPS/p{ts.replace('.', '')}"
    assert client.conversations_invite(channel=created["channel"]["id"], users="U_ALICE")["ok"] is True
    assert client.reactions_add(channel="C_OPS", timestamp=ts, name="white_check_mark")["ok"] is True
    assert client.api_call("admin.somethingNew").data == {"ok": True}


def test_missing_channel_is_an_error_like_slack(client: WebClient) -> None:
    with pytest.raises(SlackApiError, match="channel_not_found"):
        client.api_call("chat.postMessage", json={"text": "nowhere"})


def test_clear_forgets_calls(api: FakeSlackAPI, client: WebClient) -> None:
    client.auth_test()
    api.clear()

    assert api.calls() == []


def test_stop_releases_the_port() -> None:
    api = FakeSlackAPI().start()
    url = api.url
    api.stop()
    api.stop()

    with pytest.raises(RuntimeError, match="not running"):
        _ = api.url
    with pytest.raises(OSError):
        urllib.request.urlopen(f"{url}auth.test", timeout=1)
