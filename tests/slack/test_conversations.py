"""Conversations with opsbot through signed Slack requests against the fake Slack Web API."""

from __future__ import annotations

import json
import re
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from bot.runtime import Runtime
from bot.slack import ids
from bot.slack.local.fake_api import FakeSlackAPI
from bot.store import Store
from tests.conftest import copy_database
from tests.slack.conftest import GatedEncoder, SlackDriver, make_settings, start_bot


def text_of(blocks: list[dict]) -> str:
    """Everything a person would read in a message's blocks."""
    parts: list[str] = []
    for block in blocks:
        if block.get("text"):
            parts.append(block["text"]["text"])
        for element in block.get("elements", []):
            parts.append(
                element.get("text", {}).get("text", "")
                if isinstance(element.get("text"), dict)
                else element.get("text", "")
            )
    return "\n".join(parts)


def runbook_texts(blocks: list[dict]) -> list[str]:
    """The text of each runbook hit of an answer, in order."""
    return [b["text"]["text"] for b in blocks if "`runbooks/" in b.get("text", {}).get("text", "")]


def answer_to(slack: SlackDriver, slack_api: FakeSlackAPI, question: str) -> dict:
    """Mention opsbot with ``question`` and return the body of the answer it posts."""
    slack.mention(question)
    (call,) = slack_api.wait_for("chat.postMessage")
    return call.body


def buttons(blocks: list[dict]) -> dict[str, str]:
    return {e["action_id"]: e["value"] for b in blocks if b["type"] == "actions" for e in b["elements"]}


def test_a_mention_is_answered_in_its_thread_with_runbook_sections_and_incidents(
    slack: SlackDriver, slack_api: FakeSlackAPI
) -> None:
    response, ts = slack.mention(
        "checkout 503s at the evening peak, pgbouncer pool exhausted: FATAL: sorry, too many clients already"
    )
    assert response.status == 200
    (call,) = slack_api.wait_for("chat.postMessage")
    body = call.body
    assert body["channel"] == "C0OPS0001" and body["thread_ts"] == ts
    shown = text_of(body["blocks"])
    assert "*Runbooks*" in shown and "pgbouncer / Postgres connection pool exhausted" in shown
    assert "`runbooks/postgres/connection-pool-exhausted.md`" in shown
    assert "*Similar past incidents*" in shown and "INC-20" in shown
    assert "Found by meaning and by keywords" in shown
    assert set(buttons(body["blocks"])) == {ids.FEEDBACK_UP, ids.FEEDBACK_DOWN}
    assert "Best match:" in body["text"]


def test_a_pasted_alert_is_answered_with_the_runbook_written_for_it(
    slack: SlackDriver, slack_api: FakeSlackAPI
) -> None:
    body = answer_to(
        slack,
        slack_api,
        "[FIRING:1] PostgresLockWaitsHigh pg-main (pg-main-0 checkout critical) 43 sessions waiting on locks",
    )
    runbooks = runbook_texts(body["blocks"])
    assert "`runbooks/postgres/lock-contention.md`" in runbooks[0]
    assert "runbook for `PostgresLockWaitsHigh`" in runbooks[0]
    assert "Best match: Slow queries from lock contention" in body["text"]


def test_a_pasted_pod_event_shows_its_incident_and_the_runbook_for_it(
    slack: SlackDriver, slack_api: FakeSlackAPI
) -> None:
    # The README's example. The past incident tells this very event and is far closer in meaning than any
    # runbook; the runbook the ranker puts first among runbooks is shown all the same, and first.
    body = answer_to(slack, slack_api, "checkout-api-7d9f8c6b5-x2kqp OOMKilled")
    runbooks = runbook_texts(body["blocks"])
    assert runbooks and "`runbooks/kubernetes/oomkilled-containers.md`" in runbooks[0]
    shown = text_of(body["blocks"])
    assert "*Similar past incidents*" in shown and "INC-2026-0021" in shown


def test_a_quoted_runbook_sentence_is_answered_from_that_section(slack: SlackDriver, slack_api: FakeSlackAPI) -> None:
    body = answer_to(
        slack,
        slack_api,
        "the client certificate payments-gateway presents to Paylane for mutual TLS renews only if a human does it",
    )
    runbooks = runbook_texts(body["blocks"])
    assert "`runbooks/networking/tls-certificate-expiry.md`" in runbooks[0]
    assert "presents to Paylane for mutual TLS" in runbooks[0] and "contains your words" in runbooks[0]
    assert not any("contains your words" in text for text in runbooks[1:])


def test_a_how_to_question_is_answered_from_the_section_with_the_procedure(
    slack: SlackDriver, slack_api: FakeSlackAPI
) -> None:
    body = answer_to(slack, slack_api, "how do I scale out the kafka consumers for orders")
    runbooks = runbook_texts(body["blocks"])
    # The mitigation steps, not the symptoms or the escalation list that mention the same consumers.
    assert "`runbooks/kafka/consumer-lag.md` · _Mitigation_" in runbooks[0], runbooks[0]
    assert "scale out" in runbooks[0]


def test_a_runbook_with_a_url_links_its_title_and_the_cited_section(
    slack: SlackDriver, slack_api: FakeSlackAPI, runtime: Runtime
) -> None:
    page = "https://wiki.larder.example/runbooks/kafka/consumer-lag"  # as front matter `url` would set it
    with runtime.store.transaction():
        runtime.store.db.execute("UPDATE documents SET url = ? WHERE path = 'runbooks/kafka/consumer-lag.md'", [page])
    body = answer_to(slack, slack_api, "how do I scale out the kafka consumers for orders")
    runbooks = runbook_texts(body["blocks"])
    assert runbooks[0].startswith(f"<{page}|Kafka consumer group lag growing>")
    assert f"`runbooks/kafka/consumer-lag.md` · <{page}#mitigation|_Mitigation_>" in runbooks[0]
    assert not any("<https://" in text for text in runbooks[1:])  # the others have no url


def test_a_direct_message_is_answered(slack: SlackDriver, slack_api: FakeSlackAPI) -> None:
    slack.message("how do I rotate the JWT signing keys?", channel="D0DM00001", channel_type="im")
    (call,) = slack_api.wait_for("chat.postMessage")
    assert call.body["channel"] == "D0DM00001"
    assert "Rotating JWT signing keys safely" in text_of(call.body["blocks"])


def test_a_follow_up_in_the_thread_uses_the_first_question(slack: SlackDriver, slack_api: FakeSlackAPI) -> None:
    _, ts = slack.mention("kafka consumer group lag keeps growing on the orders topic")
    slack_api.wait_for("chat.postMessage")
    slack.mention("what if it is only one partition?", thread_ts=ts)
    calls = slack_api.wait_for("chat.postMessage", count=2)
    follow_up = calls[1].body
    assert follow_up["thread_ts"] == ts
    shown = text_of(follow_up["blocks"])
    assert "Kafka consumer group lag growing" in shown
    assert "this thread's first question and yours" in shown


def test_a_follow_up_cites_the_section_its_own_words_point_to(slack: SlackDriver, slack_api: FakeSlackAPI) -> None:
    _, ts = slack.mention("what should I check after a deploy of checkout-api?")
    (first,) = slack_api.wait_for("chat.postMessage")
    slack.mention("and how do I roll it back?", thread_ts=ts)
    follow_up = slack_api.wait_for("chat.postMessage", count=2)[1].body
    cited = [text for text in runbook_texts(follow_up["blocks"]) if "runbooks/checkout-api/5xx-after-deploy.md" in text]
    # the runbook is found with both questions; the section is one the follow-up's words single out (the steps
    # of rolling back), not the first question's (Step 1: is the deploy really the cause?)
    assert cited and re.search(r"· _Step \d: [^_]*roll", cited[0]), cited
    assert "_Step 1: is the deploy really the cause?_" in text_of(first.body["blocks"])


def test_nothing_relevant_says_so_instead_of_listing_weak_matches(slack: SlackDriver, slack_api: FakeSlackAPI) -> None:
    body = answer_to(slack, slack_api, "what is a good recipe for sourdough bread")
    shown = text_of(body["blocks"])
    assert "I found nothing relevant" in shown and "Try: naming the service (for example `storefront-web`)" in shown
    assert "*Runbooks*" not in shown and not buttons(body["blocks"])


def test_ask_answers_ephemerally_with_a_share_button_and_sharing_posts_it(
    slack: SlackDriver, slack_api: FakeSlackAPI
) -> None:
    ack = slack.command("/ask", "Waymark Maps API returns 429 Too Many Requests")
    assert ack.status == 200
    assert ack.json()["response_type"] == "ephemeral" and "Looking for" in ack.json()["text"]
    (reply,) = slack_api.wait_for("response_url")
    assert reply.body["response_type"] == "ephemeral"
    assert "Waymark Maps API rate limiting" in text_of(reply.body["blocks"])
    actions = buttons(reply.body["blocks"])
    assert ids.SHARE_ANSWER in actions and not slack_api.messages()

    slack.click(ids.SHARE_ANSWER, actions[ids.SHARE_ANSWER], user="U04C2RN8VD")  # the asker
    (shared,) = slack_api.wait_for("chat.postMessage")
    assert shared.body["channel"] == "C0OPS0001"
    shown = text_of(shared.body["blocks"])
    assert "Shared by <@U04C2RN8VD>" in shown and "Waymark Maps API rate limiting" in shown
    deleted = slack_api.wait_for("response_url", count=2)[1]
    assert deleted.body.get("delete_original") is True


def test_a_question_is_searched_and_kept_as_typed_not_as_slack_escapes_it(
    slack: SlackDriver, slack_api: FakeSlackAPI, runtime: Runtime
) -> None:
    # Slack escapes a typed `<`, `>` and `&`: before, "&gt;" was searched, stored and shown escaped a second time.
    slack.command("/ask", "qwzx frobnication &gt; 9000 &amp; &lt;vrtx&gt;")
    (reply,) = slack_api.wait_for("response_url")
    shown = text_of(reply.body["blocks"])
    assert "Searched for: qwzx frobnication &gt; 9000 &amp; &lt;vrtx&gt;" in shown, shown
    slack.command("/ask", "Waymark Maps API returns 429 &amp; &lt;retry-after&gt;")
    slack.message("Waymark Maps API 429s &gt; 10 a minute")  # a DM
    slack_api.wait_for("chat.postMessage")
    slack_api.wait_for("response_url", count=2)
    questions = sorted(r[0] for r in runtime.store.db.execute("SELECT query FROM answers"))
    assert questions == ["Waymark Maps API 429s > 10 a minute", "Waymark Maps API returns 429 & <retry-after>"]


def test_a_question_with_the_word_payload_in_it_is_answered(slack: SlackDriver, slack_api: FakeSlackAPI) -> None:
    """Bolt alone reads any form containing "payload" as an empty interaction; this one is a slash command."""
    ack = slack.command("/ask", "why is the payload from the Waymark Maps API rejected with 429")
    assert ack.status == 200 and "Looking for" in ack.json()["text"]
    (reply,) = slack_api.wait_for("response_url")
    assert "Waymark Maps API rate limiting" in text_of(reply.body["blocks"])


def test_empty_ask_shows_usage_at_once(slack: SlackDriver, slack_api: FakeSlackAPI) -> None:
    ack = slack.command("/ask", "   ")
    assert ack.status == 200
    assert "Usage: /ask QUESTION" in ack.json()["text"]
    time.sleep(0.3)
    assert not slack_api.calls("response_url") and not slack_api.messages()


@pytest.mark.parametrize("how", ["mention", "dm"])
def test_help_or_a_bare_hello_explains_opsbot_instead_of_searching(
    slack: SlackDriver, slack_api: FakeSlackAPI, runtime: Runtime, how: str
) -> None:
    if how == "mention":
        slack.mention("help?")
    else:
        slack.message("Hello!")
    (call,) = slack_api.wait_for("chat.postMessage")
    shown = text_of(call.body["blocks"])
    for command in ("/ask", "/experts", "/deploy", "/rollback", "/incident"):
        assert f"`{command} " in shown, command
    assert "resolve [RESOLUTION]" in shown and "mention me in a channel" in shown
    assert "*Runbooks*" not in shown and not buttons(call.body["blocks"])
    assert call.body["thread_ts"]  # in the thread, as answers are
    assert runtime.store.db.execute("SELECT count(*) FROM answers").fetchone()[0] == 0  # not an answer


def test_a_question_that_starts_with_help_is_still_searched(slack: SlackDriver, slack_api: FakeSlackAPI) -> None:
    body = answer_to(slack, slack_api, "help: pgbouncer says too many clients already")
    assert "`runbooks/postgres/connection-pool-exhausted.md`" in text_of(body["blocks"])


def test_ask_help_shows_the_commands_at_once(slack: SlackDriver, slack_api: FakeSlackAPI) -> None:
    ack = slack.command("/ask", "help")
    assert ack.status == 200
    body = ack.json()
    assert body["response_type"] == "ephemeral" and "`/deploy " in text_of(body["blocks"])
    time.sleep(0.3)
    assert not slack_api.calls("response_url") and not slack_api.messages()


def test_feedback_is_stored_and_changes_later_ranking(
    slack: SlackDriver, slack_api: FakeSlackAPI, runtime: Runtime
) -> None:
    question = "orders are stuck and never reach the warehouse"
    slack.mention(question)
    (first,) = slack_api.wait_for("chat.postMessage")
    answer_id = buttons(first.body["blocks"])[ids.FEEDBACK_DOWN]
    before = [h.path for h in runtime.index().search(question, k=10).hits]
    top = runtime.store.get_answer(answer_id)["paths"][0]

    slack.click(ids.FEEDBACK_DOWN, answer_id, user="U05G8VS4QH")
    (ack,) = slack_api.wait_for("response_url")  # the button's response_url: only the voter sees it
    assert ack.body["response_type"] == "ephemeral" and "not helpful" in ack.body["text"]
    (row,) = runtime.store.feedback_rows()
    assert row == {"user": "U05G8VS4QH", "query": question, "path": top, "vote": -1, "at": row["at"]}

    def place(paths: list[str]) -> int:
        return paths.index(top) if top in paths else len(paths)

    after = [h.path for h in runtime.index().search(question, k=10).hits]
    assert place(after) > place(before)  # the voted-down document fell
    similar = [h.path for h in runtime.index().search("orders stuck, not reaching the warehouse", k=10).hits]
    assert place(similar) > place(before)  # and for a similar question too

    slack.click(ids.FEEDBACK_DOWN, answer_id, user="U05G8VS4QH")  # a double click changes nothing
    second = slack_api.wait_for("response_url", count=2)[1]
    assert "already voted" in second.body["text"]
    assert len(runtime.store.feedback_rows()) == 1


def test_a_retried_event_is_answered_once(slack: SlackDriver, slack_api: FakeSlackAPI) -> None:
    event = {
        "type": "app_mention",
        "user": "U04C2RN8VD",
        "text": "<@UBOT0001> redis evictions",
        "channel": "C0OPS0001",
        "ts": "1700000100.000200",
    }
    assert slack.event(event, event_id="EvRETRY01").status == 200
    assert slack.event(event, event_id="EvRETRY01", retry=1).status == 200
    assert slack.event(event, event_id="EvRETRY01", retry=2).status == 200
    slack_api.wait_for("chat.postMessage")
    time.sleep(1.0)
    assert len(slack_api.messages()) == 1


def test_event_ids_are_forgotten_once_no_retry_can_come_and_shares_are_kept(
    slack: SlackDriver, slack_api: FakeSlackAPI, runtime: Runtime
) -> None:
    event = {"type": "app_mention", "user": "U04C2RN8VD", "text": "<@UBOT0001> redis evictions", "channel": "C0OPS0001"}
    assert slack.event(event | {"ts": "1700000100.000300"}, event_id="EvKEPT0001").status == 200
    slack_api.wait_for("chat.postMessage")
    with runtime.store.transaction():
        assert runtime.store.claim_event("share:a1b2c3") and runtime.store.claim_event("hook:gh-1-finished")
    now = datetime.now(UTC)

    assert runtime.forget_old_events(now + timedelta(hours=2)) == 0  # a retry may still come
    assert runtime.forget_old_events(now + timedelta(days=2)) == 1  # Slack's event: forgotten
    assert runtime.store.event_claimed("share:a1b2c3") and runtime.store.event_claimed("hook:gh-1-finished")
    assert runtime.forget_old_events(now + timedelta(days=31)) == 1  # the CI event's id, a month on
    assert runtime.store.event_claimed("share:a1b2c3")  # an answer is shared once, however old


def test_a_bad_signature_gets_401_and_does_nothing(
    slack: SlackDriver, slack_api: FakeSlackAPI, runtime: Runtime
) -> None:
    response, _ = slack.mention("redis evictions", secret="not-the-secret")
    assert response.status == 401
    assert slack.command.__self__.post("payload=x", "application/x-www-form-urlencoded", secret="wrong").status == 401
    time.sleep(0.5)
    assert not slack_api.messages() and not slack_api.calls("response_url")


def test_a_stale_timestamp_gets_401_even_when_correctly_signed(slack: SlackDriver, slack_api: FakeSlackAPI) -> None:
    response, _ = slack.mention("redis evictions", timestamp=int(time.time()) - 6 * 60)
    assert response.status == 401
    time.sleep(0.5)
    assert not slack_api.messages()


def test_a_rate_limited_web_api_call_is_retried(slack: SlackDriver, slack_api: FakeSlackAPI) -> None:
    slack_api.fail_next("chat.postMessage", status=429, times=1, retry_after=0)
    slack.mention("node disk pressure, pods evicted")
    calls = slack_api.wait_for("chat.postMessage", count=2, timeout=10)
    assert [c.status for c in calls] == [429, 200]
    assert len(slack_api.messages()) == 1


def test_a_server_error_from_the_web_api_is_retried(slack: SlackDriver, slack_api: FakeSlackAPI) -> None:
    slack_api.fail_next("chat.postMessage", status=503, times=1)
    slack.mention("node disk pressure, pods evicted")
    calls = slack_api.wait_for("chat.postMessage", count=2, timeout=10)
    assert [c.status for c in calls] == [503, 200]


def test_a_question_before_the_model_is_loaded_is_answered_once_it_is(
    tmp_path: Path,
    slack_api: FakeSlackAPI,
    sample_index: Store,
    minilm,  # noqa: ANN001
) -> None:
    encoder = GatedEncoder(minilm)
    runtime = Runtime(
        make_settings(tmp_path, slack_api), encoder=encoder, store=copy_database(sample_index, tmp_path / "gated.db")
    )
    runtime.start_loading()
    server, slack = start_bot(runtime, slack_api)
    try:
        response, ts = slack.mention("x509: certificate has expired")
        assert response.status == 200 and response.seconds < 2.5
        time.sleep(0.5)
        assert not slack_api.messages()  # still loading: no error, no answer yet
        encoder.gate.set()
        (call,) = slack_api.wait_for("chat.postMessage", timeout=10)
        assert call.body["thread_ts"] == ts
        assert "TLS certificate expiring or expired" in text_of(call.body["blocks"])
    finally:
        server.stop()
        runtime.store.close()


def test_an_exception_in_a_handler_gives_an_apology_with_an_error_id(
    slack: SlackDriver,
    slack_api: FakeSlackAPI,
    runtime: Runtime,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(runtime.answers, "reply", broken)
    slack.mention("anything at all")
    (call,) = slack_api.wait_for("chat.postEphemeral")
    assert call.body["user"] == "U04C2RN8VD" and call.body["channel"] == "C0OPS0001"
    text = call.body["text"]
    assert text.startswith("Sorry, something went wrong") and "error id `" in text
    error_id = text.split("error id `")[1].split("`")[0]
    logged = [r for r in caplog.records if error_id in r.getMessage()]
    assert logged and logged[0].exc_info and "disk on fire" in str(logged[0].exc_info[1])
    assert "user=U04C2RN8VD" in logged[0].getMessage()


def test_a_channel_that_opted_in_gets_answers_without_a_mention(
    slack: SlackDriver, slack_api: FakeSlackAPI, runtime: Runtime
) -> None:
    slack.message("ERROR: SMS delivery failing for all customers", channel="C0ALERTS1", channel_type="channel")
    time.sleep(0.8)
    assert not slack_api.messages()  # mentions only, by default
    runtime.store.set_channel_answer_mode("C0ALERTS1", "all", "test")
    slack.message("ERROR: SMS delivery failing for all customers", channel="C0ALERTS1", channel_type="channel")
    (call,) = slack_api.wait_for("chat.postMessage")
    assert call.body["channel"] == "C0ALERTS1"
    slack.message("lunch anyone", channel="C0ALERTS1", channel_type="channel")  # chat, not a question
    time.sleep(0.8)
    assert len(slack_api.messages()) == 1


def test_tokens_never_reach_the_logs(
    slack: SlackDriver, slack_api: FakeSlackAPI, caplog: pytest.LogCaptureFixture, runtime: Runtime
) -> None:
    caplog.set_level("DEBUG")
    slack.mention("pgbouncer too many clients")
    slack_api.wait_for("chat.postMessage")
    deadline = time.time() + 5
    while "answered channel=C0OPS0001" not in (logged := "\n".join(r.getMessage() for r in caplog.records)):
        assert time.time() < deadline, "the answer was never logged"
        time.sleep(0.05)
    assert runtime.settings.slack_bot_token not in logged
    assert json.dumps(runtime.settings.slack_signing_secret) not in logged
