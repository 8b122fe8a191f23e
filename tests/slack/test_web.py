"""SlackWeb and its outbox against the fake Slack API: faults, ordering, restarts, two processes, a full disk."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from slack_sdk import WebClient

from bot.runtime import Runtime
from bot.slack.app import create_client
from bot.slack.delivery import RetryPolicy
from bot.slack.local.fake_api import FakeSlackAPI
from bot.slack.web import Notify, SlackWeb
from bot.store import Store
from tests.conftest import FakeEncoder
from tests.slack.conftest import SlackDriver, make_settings, start_bot

FAST = RetryPolicy(timeout_s=1.0, base_s=0.05, cap_s=0.2)  # the real policy's shape, in test time
MakeWeb = Callable[..., SlackWeb]


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    opened = Store(tmp_path / "opsbot.db")
    yield opened
    opened.close()


@pytest.fixture
def make_web(store: Store, slack_api: FakeSlackAPI) -> Iterator[MakeWeb]:
    """SlackWebs on ``store`` (or another connection), stopped before any store is closed."""
    made: list[SlackWeb] = []

    def make(on: Store | None = None, start: bool = True, **options: object) -> SlackWeb:
        options.setdefault("policy", FAST)
        web = SlackWeb(WebClient(base_url=slack_api.url, token="xoxb-test"), on or store, **options)  # type: ignore[arg-type]
        made.append(web)
        return web.start() if start else web

    yield make
    for web in made:
        web.stop()


@pytest.fixture
def bot(tmp_path: Path, slack_api: FakeSlackAPI) -> Iterator[SlackDriver]:
    """A running opsbot whose outbox retries on the test's time scale."""
    runtime = Runtime(make_settings(tmp_path, slack_api), encoder=FakeEncoder())
    runtime.start_loading()
    web = SlackWeb(create_client(runtime), runtime.store, policy=FAST)
    server, driver = start_bot(runtime, slack_api, web=web)
    yield driver
    server.stop()
    web.stop()
    runtime.close()


def wait_until(check: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "the condition never held"
        time.sleep(0.02)


# -- faults, through a running opsbot --------------------------------------------------------------------------


def test_a_mention_answer_survives_502_504_an_html_page_a_hang_and_a_reset(
    bot: SlackDriver, slack_api: FakeSlackAPI
) -> None:
    for fault in (
        {"status": 502},
        {"status": 504},
        {"status": 500, "html": True},
        {"status": 504, "hang": 30},
        {"reset": True},
    ):
        slack_api.fail_next("chat.postMessage", **fault)  # type: ignore[arg-type]
    _, ts = bot.mention("disk full on node 7")
    calls = slack_api.wait_for("chat.postMessage", count=6, timeout=30)
    assert [c.status for c in calls] == [502, 504, 500, 504, 0, 200]  # the hang was given up after the timeout
    (answer,) = slack_api.messages()
    assert answer["thread_ts"] == ts


def test_an_ask_answer_to_the_response_url_survives_a_500(bot: SlackDriver, slack_api: FakeSlackAPI) -> None:
    slack_api.fail_next("response_url", 500)
    bot.command("/ask", "disk full on node 7")
    calls = slack_api.wait_for("response_url", count=2, timeout=20)
    assert [c.status for c in calls] == [500, 200]
    assert calls[1].body["replace_original"] is True and calls[1].body["response_type"] == "ephemeral"


def test_a_502_page_that_is_not_utf8_is_retried_and_every_delivery_thread_lives_on(
    bot: SlackDriver, slack_api: FakeSlackAPI
) -> None:
    # A proxy's Latin-1 page without a charset made the SDK raise UnicodeDecodeError, which ended each thread
    # that met it: four such answers, one more than there are threads, stopped all delivery until a restart.
    slack_api.fail_next("chat.postMessage", 502, times=4, html="latin-1")
    slack_api.fail_next("response_url", 502, html="latin-1")
    _, ts = bot.mention("disk full on node 7")
    bot.command("/ask", "disk full on node 7")
    assert [c.status for c in slack_api.wait_for("chat.postMessage", count=5, timeout=20)] == [502] * 4 + [200]
    assert [c.status for c in slack_api.wait_for("response_url", count=2, timeout=20)] == [502, 200]
    assert bot.web is not None and bot.web.wait_idle(10)
    assert slack_api.messages()[0]["thread_ts"] == ts
    assert len(bot.web._threads) == 3 and all(thread.is_alive() for thread in bot.web._threads)


def test_an_unexpected_error_is_retried_then_given_up_like_a_5xx_with_one_line_each_and_no_token(
    make_web: MakeWeb,
    store: Store,
    slack_api: FakeSlackAPI,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    web = make_web(start=False, policy=replace(FAST, max_age_s=1.0))
    real_call, raised = web.client.api_call, []

    def api_call(method: str, **kwargs: object) -> object:
        channel = kwargs["json"]["channel"]  # type: ignore[index]
        raised.append(channel)
        if channel == "C2" or raised.count("C1") == 1:  # C1 once, C2 every time
            raise RuntimeError(f"a bug nobody foresaw in {channel}")
        return real_call(method, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(web.client, "api_call", api_call)
    with caplog.at_level(logging.WARNING, logger="bot.slack"):
        once, always = web.post("C1", "summary"), web.post("C2", "answer")
        web.start()
        assert web.wait_idle(10)
    assert [m["text"] for m in slack_api.messages()] == ["summary"]
    assert (store.outbox_row(once)["status"], store.outbox_row(once)["attempts"]) == ("sent", 2)
    failed = store.outbox_row(always)
    assert failed["status"] == "failed" and failed["last_error"].endswith("a bug nobody foresaw in C2; given up")
    told = [r for r in caplog.records if "a bug nobody foresaw in C1" in r.getMessage()]
    assert len(told) == 1 and "method=chat.postMessage lane=C1" in told[0].getMessage() and told[0].exc_info
    assert "xoxb-test" not in caplog.text
    assert len(web._threads) == 3 and all(thread.is_alive() for thread in web._threads)


def test_rate_limited_answers_in_two_channels_do_not_hold_up_an_answer_in_a_third(
    bot: SlackDriver, slack_api: FakeSlackAPI
) -> None:
    # Before the outbox, each Retry-After slept in one of the two listener threads: the third answer waited 44 s.
    for n, channel in enumerate(("C0DEPLOYS1", "C0DEPLOYS2"), start=1):
        slack_api.fail_next("chat.postMessage", 429, retry_after=45)
        bot.mention(f"deploy summary {n}", channel=channel)
        slack_api.wait_for("chat.postMessage", count=n, timeout=20)
    started = time.monotonic()
    bot.mention("disk full on node 7", channel="C0OPS0001")
    slack_api.wait_for("chat.postMessage", predicate=lambda c: c.ok and c.body["channel"] == "C0OPS0001", timeout=20)
    assert time.monotonic() - started < 5  # measured ~0.1 s; the rate-limited channels wait up to 30 s


# -- retries and give-up ----------------------------------------------------------------------------------------


def test_nine_500s_in_a_row_and_both_summaries_still_arrive_in_order(
    make_web: MakeWeb, store: Store, slack_api: FakeSlackAPI
) -> None:
    slack_api.fail_next("chat.postMessage", 500, times=9)
    web = make_web()
    first, second = web.post("C0DEPLOYS1", "summary 1"), web.post("C0DEPLOYS1", "summary 2")
    assert web.wait_idle(30)
    assert [m["text"] for m in slack_api.messages()] == ["summary 1", "summary 2"]
    assert [c.status for c in slack_api.calls("chat.postMessage")] == [500] * 9 + [200, 200]
    assert [store.outbox_row(r)["attempts"] for r in (first, second)] == [10, 1]


def test_retry_after_is_honoured_up_to_the_cap_and_a_malformed_one_gets_the_usual_backoff() -> None:
    policy = RetryPolicy(base_s=1.0)
    assert policy.retry_after({"Retry-After": "2"}, 1) == 2.0
    assert policy.retry_after({"retry-after": "45"}, 1) == 30.0
    for malformed in ({"Retry-After": "soon"}, {"Retry-After": "-3"}, {"Retry-After": "nan"}, {}):
        assert 0.5 <= policy.retry_after(malformed, 1) <= 1.0
    assert 8 <= policy.backoff(5) <= 16 and 10 <= policy.backoff(20) <= 20


def test_a_429_with_a_retry_after_that_is_not_a_number_is_retried(make_web: MakeWeb, slack_api: FakeSlackAPI) -> None:
    slack_api.fail_next("chat.postMessage", 429, retry_after="soon")
    web = make_web()
    web.post("C1", "answer")
    assert [c.status for c in slack_api.wait_for("chat.postMessage", count=2)] == [429, 200]


def test_a_rate_limited_channel_waits_at_most_the_cap_and_another_channel_not_at_all(
    make_web: MakeWeb, store: Store, slack_api: FakeSlackAPI
) -> None:
    web = make_web(policy=replace(FAST, retry_after_cap_s=30.0))
    slack_api.fail_next("chat.postMessage", 429, retry_after=45)
    held = web.post("C0DEPLOYS1", "deploy summary")
    (limited,) = slack_api.wait_for("chat.postMessage")
    started = time.monotonic()
    web.post("C0OPS0001", "an answer")
    slack_api.wait_for("chat.postMessage", predicate=lambda c: c.ok and c.body["channel"] == "C0OPS0001")
    assert time.monotonic() - started < 10  # the other channel waits 30 s: not waiting at all is far below
    # Another delivery thread may post the second channel's message before the first has written down its 429.
    wait_until(lambda: store.outbox_row(held)["status"] == "pending")
    row = store.outbox_row(held)
    assert (row["status"], row["last_error"]) == ("pending", "ratelimited")
    assert 29 <= row["next_at"] - limited.at <= 35  # Retry-After 45, capped at 30 (and a loaded machine's delay)


def test_a_post_is_given_up_after_its_maximum_age_with_an_error_line(
    make_web: MakeWeb, store: Store, slack_api: FakeSlackAPI, caplog: pytest.LogCaptureFixture
) -> None:
    slack_api.fail_next("chat.postMessage", 503, times=1000)
    web = make_web(policy=replace(FAST, max_age_s=1.0))
    with caplog.at_level(logging.ERROR, logger="bot.slack.web"):
        row = web.post("C1", "summary", notify=Notify(channel="C1", user="U1"))
        wait_until(lambda: store.outbox_row(row)["status"] == "failed")
        (told,) = slack_api.wait_for("chat.postEphemeral")
    assert "given up" in store.outbox_row(row)["last_error"]
    assert "slack delivery failed" in caplog.text and f"id={row}" in caplog.text
    assert told.body["user"] == "U1" and "summary" in told.body["text"]


def test_a_refused_post_is_not_retried_and_the_person_is_told_why(
    make_web: MakeWeb, store: Store, slack_api: FakeSlackAPI
) -> None:
    web = make_web()
    section = {"type": "section", "text": {"type": "mrkdwn", "text": "*INC-2026-0042* checkout 503s"}}
    slack_api.fail_next("chat.postMessage", 200, error="not_in_channel")
    first = web.post(
        "C0PRIVATE1", "INC-2026-0042 declared", [section], notify=Notify(response_url=slack_api.response_url("d"))
    )
    (response,) = slack_api.wait_for("response_url")
    assert "<#C0PRIVATE1> (not_in_channel): invite me with `/invite @opsbot`" in response.body["text"]
    assert response.body["blocks"][0] == section  # the message itself, shown privately

    slack_api.fail_next("chat.postMessage", 200, error="is_archived")
    second = web.post("C0OLD00001", "resolved", notify=Notify(channel="C0OPS0001", user="U1"))
    (ephemeral,) = slack_api.wait_for("chat.postEphemeral")
    assert (ephemeral.body["channel"], ephemeral.body["user"]) == ("C0OPS0001", "U1")
    assert "(is_archived): the channel is archived" in ephemeral.body["text"]
    assert web.wait_idle(10)
    assert len(slack_api.calls("chat.postMessage")) == 2  # each refused once, never again
    assert [store.outbox_row(r)["last_error"] for r in (first, second)] == ["not_in_channel", "is_archived"]


# -- ordering, coalescing, references, hooks ---------------------------------------------------------------------


def test_a_lane_is_delivered_in_the_order_written_even_when_its_first_post_is_retried(
    make_web: MakeWeb, slack_api: FakeSlackAPI
) -> None:
    slack_api.fail_next("chat.postMessage", 500, times=2)
    web = make_web(start=False)
    for n in range(5):
        web.post("C1", f"line {n}")
    web.start()
    assert web.wait_idle(15)
    assert [m["text"] for m in slack_api.messages("C1")] == [f"line {n}" for n in range(5)]


def test_updates_of_one_message_coalesce_to_the_newest(
    make_web: MakeWeb, store: Store, slack_api: FakeSlackAPI
) -> None:
    web = make_web(start=False)
    web.post("C1", "deploying", key="deploy:dep-20261102-ab12cd")
    edits = [web.update("C1", f"deploying {p}%", update_of="deploy:dep-20261102-ab12cd") for p in (20, 40, 60, 80)]
    by_ts = [web.update("C1", f"old message {n}", ts="1700000000.000900") for n in range(3)]
    web.start()
    assert web.wait_idle(10)
    (posted,) = slack_api.calls("chat.postMessage")
    updates = [(c.body["ts"], c.body["text"]) for c in slack_api.calls("chat.update")]
    assert updates == [(posted.answer["ts"], "deploying 80%"), ("1700000000.000900", "old message 2")]
    assert [store.outbox_row(r)["status"] for r in edits + by_ts] == ["superseded"] * 3 + ["sent"] + [
        "superseded"
    ] * 2 + ["sent"]


def test_a_reply_in_the_thread_of_a_post_that_failed_fails_with_the_reason(
    make_web: MakeWeb, store: Store, slack_api: FakeSlackAPI
) -> None:
    slack_api.fail_next("chat.postMessage", 200, error="channel_not_found")
    web = make_web()
    web.post("C0GONE0001", "deploy request", key="deploy:dep-1")
    reply = web.post("C0GONE0001", "summary", thread_of="deploy:dep-1")
    unknown = web.update("C1", "edit", update_of="deploy:never-posted")
    assert web.wait_idle(10)
    assert store.outbox_row(reply)["last_error"] == "the message it refers to (deploy:dep-1) was not posted (failed)"
    assert store.outbox_row(unknown)["last_error"] == "the message it refers to (deploy:never-posted) is unknown"
    assert len(slack_api.calls("chat.postMessage")) == 1 and not slack_api.calls("chat.update")


def test_edits_and_replies_written_before_a_post_moved_to_its_fallback_channel_follow_it_there(
    make_web: MakeWeb, store: Store, slack_api: FakeSlackAPI
) -> None:
    # They used to resolve the key to the refused original and fail: the moved message never got its briefing.
    slack_api.fail_next("chat.postMessage", 200, error="not_in_channel")
    web = make_web(start=False)
    seen: list[tuple[str, str]] = []
    web.on("alert-message", lambda args, channel, ts: seen.append((channel, ts)))
    first = web.post(
        "C0SERVICE1", "checkout 5xx", key="alert:g1", after=("alert-message", {}), fallback_channel="C0ALERTS01"
    )
    edit = web.update("C0SERVICE1", "checkout 5xx, briefed", update_of="alert:g1")
    reply = web.post("C0SERVICE1", "2 more alerts", thread_of="alert:g1")
    web.start()
    assert web.wait_idle(10)
    refused, moved, note = slack_api.calls("chat.postMessage")
    assert (refused.body["channel"], refused.error) == ("C0SERVICE1", "not_in_channel")
    assert moved.ok and moved.body["channel"] == "C0ALERTS01" and seen == [("C0ALERTS01", moved.answer["ts"])]
    (update,) = slack_api.calls("chat.update")
    assert update.ok and (update.body["channel"], update.body["ts"]) == ("C0ALERTS01", moved.answer["ts"])
    assert note.ok and (note.body["channel"], note.body["thread_ts"]) == ("C0ALERTS01", moved.answer["ts"])
    assert [store.outbox_row(r)["status"] for r in (first, edit, reply)] == ["sent"] * 3


@pytest.mark.parametrize("durable", [True, False])
def test_an_older_edit_of_a_moved_post_never_overwrites_a_newer_one(
    make_web: MakeWeb, store: Store, slack_api: FakeSlackAPI, durable: bool
) -> None:
    # Before, an edit written before the move stayed in the original channel's lane: retried after a 429, it went
    # after the newer edit (written by ts, in the fallback's lane), and a resolved alert showed as firing again.
    web = make_web(on=store if durable else None)
    slack_api.fail_next("chat.postMessage", 200, error="not_in_channel")
    slack_api.fail_next("chat.update", 429, retry_after=1)
    web.post("C0SERVICE1", "v0 firing", key="alert:g1", fallback_channel="C0ALERTS01")
    web.update("C0SERVICE1", "v1 firing, 2 alerts", update_of="alert:g1")  # before opsbot knew where it went
    (moved,) = slack_api.wait_for("chat.postMessage", predicate=lambda c: c.ok)
    slack_api.wait_for("chat.update")  # v1's first attempt: rate limited
    web.update("C0ALERTS01", "v2 resolved", ts=moved.answer["ts"])
    web.post("C0SERVICE1", "resolved at 10:02", thread_of="alert:g1")  # written after the move, by key
    assert web.wait_idle(15)
    edits = [(c.body["channel"], c.body["ts"], c.body["text"]) for c in slack_api.calls("chat.update") if c.ok]
    where = ("C0ALERTS01", moved.answer["ts"])
    assert edits == [(*where, "v1 firing, 2 alerts"), (*where, "v2 resolved")]  # the newest shown last
    (reply,) = slack_api.messages("C0ALERTS01")[1:]
    assert (reply["text"], reply["thread_ts"]) == ("resolved at 10:02", moved.answer["ts"])


# -- durability: restarts, two processes, a full disk -------------------------------------------------------------


def test_rows_are_written_before_the_call_and_a_restarted_process_delivers_them(
    make_web: MakeWeb, store: Store, slack_api: FakeSlackAPI
) -> None:
    stopped = make_web(start=False)  # the process that wrote these stopped (or died) before sending them
    stopped.post("C1", "deploy request", key="deploy:dep-1", after=("deploy-message", {"request_id": "dep-1"}))
    stopped.post("C1", "summary", thread_of="deploy:dep-1")
    stopped.respond(slack_api.response_url("ask"), "the answer")
    crashed = stopped.post("C2", "was being sent when the process died")
    assert store.claim_outbox("dead-process", time.time(), claim_s=0.5) is not None  # C1's first row, say
    assert slack_api.calls() == [] and store.outbox_busy() == 4

    restarted_store = Store(store.path)
    seen: list[tuple[dict, str, str]] = []
    restarted = make_web(on=restarted_store, start=False, poll_s=0.1)
    restarted.on("deploy-message", lambda args, channel, ts: seen.append((args, channel, ts)))
    restarted.start()
    try:
        assert restarted.wait_idle(15)
        top, reply, other = _by_text(slack_api)
        assert reply.body["thread_ts"] == top.answer["ts"]
        assert seen == [({"request_id": "dep-1"}, "C1", top.answer["ts"])]
        assert slack_api.responses("ask")[0]["text"] == "the answer"
        assert store.outbox_row(crashed)["status"] == "sent" and other.ok
    finally:
        restarted.stop()
        restarted_store.close()


def _by_text(api: FakeSlackAPI) -> tuple:
    calls = {c.body["text"]: c for c in api.calls("chat.postMessage") if c.ok}
    return calls["deploy request"], calls["summary"], calls["was being sent when the process died"]


def test_two_processes_on_one_database_deliver_each_post_exactly_once(
    make_web: MakeWeb, store: Store, slack_api: FakeSlackAPI
) -> None:
    other_store = Store(store.path)
    try:
        one, two = make_web(poll_s=0.05), make_web(on=other_store, poll_s=0.05)
        for n in range(40):
            (one if n % 2 else two).post(f"C{n % 4}", f"message {n}")
        assert one.wait_idle(30) and two.wait_idle(30)
        texts = [m["text"] for m in slack_api.messages()]
        assert sorted(texts) == sorted(f"message {n}" for n in range(40))  # each once: no loss, no double
        for lane in range(4):
            assert [m["text"] for m in slack_api.messages(f"C{lane}")] == [f"message {n}" for n in range(lane, 40, 4)]
        one.stop()
        two.stop()
    finally:
        other_store.close()


def test_when_the_database_is_full_posts_are_kept_in_memory_and_still_delivered(
    make_web: MakeWeb, store: Store, slack_api: FakeSlackAPI, caplog: pytest.LogCaptureFixture
) -> None:
    web = make_web(start=False)
    pages = store.db.execute("PRAGMA page_count").fetchone()[0]
    store.db.execute(f"PRAGMA max_page_count = {pages + 1}")
    with caplog.at_level(logging.ERROR, logger="bot.slack.web"):
        ids = [web.post("C1", f"answer {n} " + "x" * 3000) for n in range(3)]
    assert any(i < 0 for i in ids)  # kept in memory
    assert "outbox not durable" in caplog.text and "database or disk is full" in caplog.text
    web.start()
    assert web.wait_idle(10)
    assert sorted(m["text"][:8] for m in slack_api.messages("C1")) == ["answer 0", "answer 1", "answer 2"]


def test_posts_queued_before_the_database_refused_writes_are_still_sent_once_and_recorded_after(
    make_web: MakeWeb, store: Store, slack_api: FakeSlackAPI, caplog: pytest.LogCaptureFixture
) -> None:
    web = make_web(start=False, poll_s=0.05)
    first = web.post("C1", "incident declared", key="incident:1")
    reply = web.post("C1", "who to pull in", thread_of="incident:1")
    other = web.post("C2", "an answer elsewhere")
    store.db.execute("PRAGMA query_only = ON")  # reads work, every write fails: claiming a row is a write
    slack_api.fail_next("chat.postMessage", status=500)  # one retry, kept in memory too
    caplog.set_level(logging.INFO, logger="bot.slack.outbox_worker")
    web.start()

    wait_until(lambda: len(slack_api.messages()) == 3)
    time.sleep(0.3)  # a second copy would show by now
    top, thread = [c for c in slack_api.calls("chat.postMessage") if c.ok and c.body["channel"] == "C1"]
    assert (top.body["text"], thread.body["text"]) == ("incident declared", "who to pull in")
    assert thread.body["thread_ts"] == top.answer["ts"]  # found through the outcome kept in memory
    assert [m["text"] for m in slack_api.messages("C2")] == ["an answer elsewhere"]
    assert [store.outbox_row(i)["status"] for i in (first, reply, other)] == ["pending"] * 3  # nothing written

    store.db.execute("PRAGMA query_only = OFF")
    wait_until(lambda: store.outbox_busy() == 0)
    assert [store.outbox_row(i)["status"] for i in (first, reply, other)] == ["sent"] * 3
    assert store.outbox_row(first)["result_ts"] == top.answer["ts"]
    time.sleep(0.3)
    assert len(slack_api.messages()) == 3  # recorded, so never sent again
    said = [(r.levelname, r.getMessage().split(";")[0]) for r in caplog.records if "outbox: the database" in r.msg]
    assert said == [  # once each way, whatever the number of threads and polls
        ("WARNING", "outbox: the database refuses writes (attempt to write a readonly database)"),
        ("INFO", "outbox: the database takes writes again"),
    ]
    assert not [r for r in caplog.records if r.exc_info]


def test_while_the_database_refuses_writes_no_queued_post_is_sent_twice_or_out_of_order(
    make_web: MakeWeb, store: Store, slack_api: FakeSlackAPI
) -> None:
    web = make_web(start=False, poll_s=0.01)
    for n in range(30):
        web.post(f"C{n % 3}", f"message {n}")
    store.db.execute("PRAGMA query_only = ON")
    web.start()

    wait_until(lambda: len(slack_api.messages()) >= 30)
    time.sleep(0.3)
    for lane in range(3):  # three threads claiming in memory: each post once, in the order written
        assert [m["text"] for m in slack_api.messages(f"C{lane}")] == [f"message {n}" for n in range(lane, 30, 3)]
    store.db.execute("PRAGMA query_only = OFF")
    wait_until(lambda: store.outbox_busy() == 0)


def test_a_sent_row_keeps_where_it_went_but_not_its_payload_or_response_url(
    make_web: MakeWeb, store: Store, slack_api: FakeSlackAPI
) -> None:
    web = make_web()
    url = slack_api.response_url("ask")
    row = web.respond(url, "the answer", replace_original=True)
    # A hook's arguments may hold a response_url too (Share takes the private answer away through it): before,
    # they stayed a day on a sent row, a week on a failed one.
    hooked: list[dict] = []
    web.on("shared", lambda args, channel, ts: hooked.append(args), failed=lambda args, error: hooked.append(args))
    slack_api.fail_next("chat.postMessage", status=200, error="not_in_channel")  # one of the two is refused
    posted = web.post("C0OPS0001", "shared answer", after=("shared", {"response_url": url}))
    refused = web.post("C0OPS0002", "another", after=("shared", {"response_url": url}))
    assert web.wait_idle(10)
    stored = store.outbox_row(row)
    assert stored["status"] == "sent" and stored["payload"] is None and stored["url"] is None
    assert url not in str(stored)
    assert hooked == [{"response_url": url}] * 2
    assert sorted(store.outbox_row(r)["status"] for r in (posted, refused)) == ["failed", "sent"]
    assert url not in str(store.outbox_row(posted)) and url not in str(store.outbox_row(refused))
    assert store.prune_outbox(time.time() + 1, 0) == 2 and store.outbox_row(row) is None


def test_a_call_slower_than_the_claim_is_not_sent_a_second_time_alongside(
    make_web: MakeWeb, store: Store, slack_api: FakeSlackAPI
) -> None:
    # Each read within the timeout, the whole call longer than the claim: before, another delivery thread took the
    # row for abandoned and posted it again while the first call was still under way, and its hook ran twice.
    web = make_web(claim_s=0.6, workers=2, poll_s=0.05)
    hooked: list[str] = []
    web.on("posted", lambda args, channel, ts: hooked.append(ts))
    slack_api.slow_next("chat.postMessage", 1.6)
    row = web.post("C0DEPLOYS1", "Deploy checkout-api 1.4.2 to prod: approve?", after=("posted", {}))
    assert web.wait_idle(10)
    time.sleep(0.5)
    assert [m["text"] for m in slack_api.messages()] == ["Deploy checkout-api 1.4.2 to prod: approve?"]
    assert len(hooked) == 1 and store.outbox_row(row)["result_ts"] == hooked[0]


# -- the synchronous call, and the client -------------------------------------------------------------------------


def test_call_is_fail_soft_and_try_call_says_what_went_wrong(make_web: MakeWeb, slack_api: FakeSlackAPI) -> None:
    web = make_web()
    slack_api.fail_next("conversations.create", 500, html=True)
    slack_api.fail_next("conversations.history", reset=True)
    slack_api.fail_next("conversations.create", 200, error="name_taken")
    assert web.call("conversations.create", name="inc-x") is None
    assert web.call("conversations.history", channel="C1") is None
    assert web.try_call("conversations.create", name="inc-x") == (None, "name_taken")
    created, error = web.try_call("conversations.create", name="inc-x")
    assert error == "" and created is not None and created["channel"]["name"] == "inc-x"


def test_no_client_retries_inline_and_a_call_times_out_after_ten_seconds(
    runtime_settings_client: WebClient, make_web: MakeWeb
) -> None:
    web = make_web(policy=RetryPolicy())
    for client in (runtime_settings_client, web.client):
        assert client.retry_handlers == [] and client.timeout == 10.0
    assert RetryPolicy().retry_after_cap_s == 30 and RetryPolicy().response_url_max_age_s == 30 * 60


@pytest.fixture
def runtime_settings_client(tmp_path: Path, slack_api: FakeSlackAPI) -> Iterator[WebClient]:
    runtime = Runtime(make_settings(tmp_path, slack_api), encoder=FakeEncoder())
    yield create_client(runtime)
    runtime.close()
