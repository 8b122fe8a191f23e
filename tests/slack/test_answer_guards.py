"""What opsbot answers, keeps and shares, and what it refuses: signed Slack requests against the fake Web API.

None of these judge ranking, so the sample knowledge is indexed once with the deterministic fake encoder.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bot.answers import indexer
from bot.answers.indexer import index_knowledge
from bot.runtime import NotReady, Runtime
from bot.slack import ids
from bot.slack.local.fake_api import FakeSlackAPI
from bot.store import Store
from tests.conftest import SAMPLE_KNOWLEDGE, FakeEncoder, copy_database
from tests.slack.conftest import SlackDriver, make_settings

BROADCAST = {"subtype": "thread_broadcast"}
WITH_A_FILE = {"subtype": "file_share", "files": [{"id": "F0LOG0001", "name": "checkout.log"}]}
TOKEN = "xoxb-123456789012-123456789012-abcdefghijABCDEFGHIJ1234"
ASKER = "U04C2RN8VD"
QUESTION = "Waymark Maps API returns 429 Too Many Requests"


@pytest.fixture(scope="module")
def fake_index(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    store = Store(tmp_path_factory.mktemp("fake-sample") / "sample.db")
    with pytest.MonkeyPatch.context() as patch:  # no ranker: fusion ranks, and nothing here is about ranking
        patch.setattr(indexer, "fit_ranker", lambda *args, **kwargs: {"skipped": "not measured here"})
        assert index_knowledge(store, FakeEncoder(), SAMPLE_KNOWLEDGE).problems == []
    yield store
    store.close()


@pytest.fixture
def runtime(tmp_path: Path, slack_api: FakeSlackAPI, fake_index: Store) -> Iterator[Runtime]:
    store = copy_database(fake_index, tmp_path / "opsbot.db")
    rt = Runtime(make_settings(tmp_path, slack_api), encoder=FakeEncoder(), store=store)
    rt.start_loading()
    yield rt
    rt.close()


def buttons(blocks: list[dict]) -> dict[str, str]:
    return {e["action_id"]: e["value"] for b in blocks or [] if b["type"] == "actions" for e in b["elements"]}


def settle(slack: SlackDriver, seconds: float = 1.0) -> None:
    """Give the lazy listeners time to run, then wait until what they sent was delivered."""
    time.sleep(seconds)
    assert slack.web is not None and slack.web.wait_idle(10)


def stored_text(runtime: Runtime) -> str:
    """Every question-like column opsbot keeps."""
    columns = [("answers", "query"), ("answers", "shown"), ("conversations", "question"), ("feedback", "query")]
    columns.append(("suggestions", "text"))
    db = runtime.store.db
    return "\n".join(str(row[0]) for table, col in columns for row in db.execute(f"SELECT {col} FROM {table}"))


def ask(slack: SlackDriver, slack_api: FakeSlackAPI, channel: str = "C0OPS0001") -> str:
    """/ask as ASKER in ``channel``; the answer's Share value."""
    slack.command("/ask", QUESTION, user=ASKER, channel=channel)
    (reply,) = slack_api.wait_for("response_url")
    slack_api.clear()
    return buttons(reply.body["blocks"])[ids.SHARE_ANSWER]


# -- secrets in questions --------------------------------------------------------------------------------------


def test_a_secret_in_a_question_is_never_stored(slack: SlackDriver, slack_api: FakeSlackAPI, runtime: Runtime) -> None:
    slack.mention(f"checkout login failed token={TOKEN} FATAL: sorry, too many clients already")
    (call,) = slack_api.wait_for("chat.postMessage")
    answer_id = buttons(call.body["blocks"])[ids.FEEDBACK_UP]
    slack.click(ids.FEEDBACK_UP, answer_id, user="U05G8VS4QH")
    settle(slack, 1.5)
    kept = stored_text(runtime)
    assert "too many clients already" in kept and "token=***" in kept  # the question is kept, the token is not
    assert TOKEN not in kept and TOKEN not in str(call.body)
    assert len(runtime.store.feedback_rows()) == 1
    slack.command("/ask", f"checkout login failed token={TOKEN} FATAL: sorry, too many clients already")
    (private,) = slack_api.wait_for("response_url", predicate=lambda c: ids.SHARE_ANSWER in str(c.body))
    assert runtime.store.get_answer(buttons(private.body["blocks"])[ids.SHARE_ANSWER])["shown"]  # what Share posts
    assert TOKEN not in stored_text(runtime)


def test_a_secret_in_experts_text_is_never_stored(
    slack: SlackDriver, slack_api: FakeSlackAPI, runtime: Runtime
) -> None:
    slack.command("/experts", f"checkout postgres too many clients password=Hunter2SecretValue9 token={TOKEN}")
    slack_api.wait_for("response_url")
    kept = stored_text(runtime)
    assert "checkout postgres too many clients" in kept
    assert TOKEN not in kept and "Hunter2SecretValue9" not in kept


# -- which messages are answered -------------------------------------------------------------------------------


def test_a_direct_message_that_mentions_opsbot_is_answered(slack: SlackDriver, slack_api: FakeSlackAPI) -> None:
    slack.message("<@UBOT0001> how do I rotate the JWT signing keys?", channel="D0DM00001", channel_type="im")
    (call,) = slack_api.wait_for("chat.postMessage")
    assert call.body["channel"] == "D0DM00001"
    settle(slack)
    assert len(slack_api.messages()) == 1


def test_thanks_under_an_answer_in_a_direct_message_is_not_answered_again(
    slack: SlackDriver, slack_api: FakeSlackAPI
) -> None:
    _, ts = slack.message("pgbouncer sorry too many clients already")  # a DM needs no question mark
    slack_api.wait_for("chat.postMessage")
    # the emoji themselves too (a client, or the shell, sends 🙏 rather than :pray:): they were searched
    # and the words a thanks is said with ("thanks a lot", "that worked, thanks"): they re-posted the answer
    for chat in (
        *("thanks", "ok", "Thank you! :pray:", "<@UBOT0001> thx", ":+1:", "🙏", "👍🏽 ❤️", "👩‍💻"),
        *("thanks a lot", "many thanks", "that worked, thanks", "perfect, that fixed it", "lgtm", "ok will try"),
    ):
        slack.message(chat, thread_ts=ts)
    # whatever else is typed in the thread is still answered: a question, a pasted alert name, log line or link
    for more in ("what if it is only the replica?", "PgBouncerPoolExhausted on pg-main", "503", "will it?"):
        slack.message(more, thread_ts=ts)
    slack.message("<https://grafana.example/d/pg|pool dashboard>", thread_ts=ts)
    calls = slack_api.wait_for("chat.postMessage", count=6)
    settle(slack)
    assert len(slack_api.messages()) == 6 and all(c.body["thread_ts"] == ts for c in calls[1:])


def test_a_thanks_to_opsbot_under_its_answer_in_a_channel_is_not_answered_again(
    slack: SlackDriver, slack_api: FakeSlackAPI
) -> None:
    _, ts = slack.mention("pgbouncer sorry too many clients already")
    slack_api.wait_for("chat.postMessage")
    # Before, each re-posted the whole answer in the channel's thread.
    for chat in ("thanks!", "ok :+1:", "thank you so much"):
        slack.mention(chat, thread_ts=ts)
    slack.mention("and if it is only the replica?", thread_ts=ts)  # a question there still is one
    slack.mention("thanks")  # not under an answer: what it asks is not known, so it is answered as ever
    calls = slack_api.wait_for("chat.postMessage", count=3)
    settle(slack)
    assert len(slack_api.messages()) == 3
    assert sorted(c.body["thread_ts"] == ts for c in calls) == [False, True, True]  # the answer and the question


def test_a_mention_also_sent_to_the_channel_is_answered(slack: SlackDriver, slack_api: FakeSlackAPI) -> None:
    # "Also send to #ops" from a thread: Slack marks the reply thread_broadcast, in its app_mention too
    slack.mention("how do I rotate the JWT signing keys?", thread_ts="1700000000.000100", more=BROADCAST)
    (call,) = slack_api.wait_for("chat.postMessage")
    assert call.body["thread_ts"] == "1700000000.000100" and call.body["blocks"]


def test_a_direct_message_with_a_file_attached_is_answered_from_its_text(
    slack: SlackDriver, slack_api: FakeSlackAPI
) -> None:
    slack.message("how do I rotate the JWT signing keys? log attached", more=WITH_A_FILE)
    (call,) = slack_api.wait_for("chat.postMessage")
    assert call.body["channel"] == "D0DM00001" and call.body["blocks"]
    slack_api.clear()

    slack.message("", more=WITH_A_FILE)  # the file alone
    (call,) = slack_api.wait_for("chat.postMessage")
    assert call.body["text"].startswith("I read a message's text, not the files attached to it")


def test_a_mention_from_another_bot_is_not_answered(slack: SlackDriver, slack_api: FakeSlackAPI) -> None:
    event = {
        "type": "app_mention",
        "user": "UOTHERBOT",
        "bot_id": "B0OTHER",
        "text": "<@UBOT0001> [FIRING:1] PostgresLockWaitsHigh pg-main",
        "channel": "C0OPS0001",
        "ts": f"{time.time():.6f}",
    }
    assert slack.event(event).status == 200
    edited = {**event, "bot_id": None, "subtype": "message_changed", "ts": f"{time.time():.6f}"}
    assert slack.event(edited).status == 200
    settle(slack, 1.5)
    assert not slack_api.messages()
    slack.mention("[FIRING:1] PostgresLockWaitsHigh pg-main")  # a person's mention still is
    slack_api.wait_for("chat.postMessage")


def test_chat_in_an_answered_thread_of_an_opted_in_channel_is_not_answered(
    slack: SlackDriver, slack_api: FakeSlackAPI, runtime: Runtime
) -> None:
    runtime.store.set_channel_answer_mode("C0ALERTS1", "all", "test")
    _, ts = slack.message("ERROR: SMS delivery failing for all customers", channel="C0ALERTS1", channel_type="channel")
    slack_api.wait_for("chat.postMessage")
    slack.message("thanks, that fixed it", channel="C0ALERTS1", channel_type="channel", thread_ts=ts)
    slack.message("ok", user="U0CAROL01", channel="C0ALERTS1", channel_type="channel", thread_ts=ts)
    settle(slack, 1.5)
    assert len(slack_api.messages()) == 1
    slack.message("what if only one carrier fails?", channel="C0ALERTS1", channel_type="channel", thread_ts=ts)
    calls = slack_api.wait_for("chat.postMessage", count=2)
    assert calls[1].body["thread_ts"] == ts  # a question in the thread still is answered
    slack.message("why is this failing?", channel="C0ALERTS1", channel_type="channel", thread_ts="1700000000.000001")
    settle(slack, 1.5)
    assert len(slack_api.messages()) == 2  # a human thread opsbot was never part of is still left alone


# -- sharing an /ask answer ------------------------------------------------------------------------------------


def test_an_answer_is_shared_once_however_often_share_is_pressed(
    slack: SlackDriver, slack_api: FakeSlackAPI, runtime: Runtime
) -> None:
    value = ask(slack, slack_api)
    slack.click(ids.SHARE_ANSWER, value, user=ASKER)
    slack.click(ids.SHARE_ANSWER, value, user=ASKER)
    settle(slack, 2)
    (shared,) = slack_api.messages()
    assert shared["channel"] == "C0OPS0001"
    said = " ".join(r.get("text", "") for r in slack_api.responses())
    assert "already shared" in said
    answers = runtime.store.db.execute("SELECT count(*) FROM answers").fetchone()[0]
    slack.click(ids.SHARE_ANSWER, value, user=ASKER)  # once shared, a press searches nothing and saves nothing
    settle(slack)
    assert runtime.store.db.execute("SELECT count(*) FROM answers").fetchone()[0] == answers


def share_refused(slack: SlackDriver, slack_api: FakeSlackAPI) -> str:
    """An /ask answer whose Share Slack refused (opsbot not in the channel): the asker told why, nothing posted."""
    value = ask(slack, slack_api)
    slack_api.fail_next("chat.postMessage", status=200, error="not_in_channel")
    slack.click(ids.SHARE_ANSWER, value, user=ASKER)
    slack_api.wait_for("response_url", predicate=lambda c: "not_in_channel" in str(c.body), timeout=15)
    settle(slack, 1.5)
    assert not slack_api.messages()
    return value


def test_a_share_slack_refuses_leaves_the_private_answer_and_says_why(
    slack: SlackDriver, slack_api: FakeSlackAPI
) -> None:
    # Before, the private answer was deleted as soon as the share was queued: in a private channel or a DM opsbot
    # is not in, Slack refused the post and the answer was gone from both places.
    share_refused(slack, slack_api)
    assert not [r for r in slack_api.responses() if r.get("delete_original")]

    slack_api.clear()
    value = ask(slack, slack_api)  # a share Slack takes replaces the private answer, once it is in the channel
    slack.click(ids.SHARE_ANSWER, value, user=ASKER)
    slack_api.wait_for("response_url", predicate=lambda c: bool(c.body.get("delete_original")), timeout=15)
    assert len(slack_api.messages()) == 1


def test_a_share_slack_refused_can_be_pressed_again_once_opsbot_is_invited(
    slack: SlackDriver, slack_api: FakeSlackAPI
) -> None:
    # Before, the claim stayed with the refused post: every later press said "already shared", and the only way
    # to share the answer was to ask again.
    value = share_refused(slack, slack_api)

    slack_api.clear()
    slack.click(ids.SHARE_ANSWER, value, user=ASKER)  # opsbot invited meanwhile: Slack takes the post now
    (shared,) = slack_api.wait_for("chat.postMessage", timeout=15)
    assert shared.body["channel"] == "C0OPS0001" and f"<@{ASKER}>" in str(shared.body["blocks"])
    slack_api.wait_for("response_url", predicate=lambda c: bool(c.body.get("delete_original")), timeout=15)
    said = " ".join(str(r.get("text", "")) for r in slack_api.responses())
    assert "already shared" not in said

    slack.click(ids.SHARE_ANSWER, value, user=ASKER)  # and once it is in the channel, it is shared once
    slack_api.wait_for("response_url", predicate=lambda c: "already shared" in str(c.body), timeout=15)
    settle(slack, 1)
    assert len(slack_api.messages()) == 1


def voted_down_elsewhere(slack: SlackDriver, slack_api: FakeSlackAPI) -> None:
    """Meanwhile, in another channel, three people find the same question's leading document unhelpful."""
    slack.mention(QUESTION, channel="C0OTHER01", user="U0OTHER01")
    (other,) = slack_api.wait_for("chat.postMessage")
    down = buttons(other.body["blocks"])[ids.FEEDBACK_DOWN]
    for voter in ("U0VOTER01", "U0VOTER02", "U0VOTER03"):
        slack.click(ids.FEEDBACK_DOWN, down, user=voter, channel="C0OTHER01")
    slack_api.wait_for("response_url", count=3)
    slack_api.clear()


def saved_before_answers_kept_what_they_showed(runtime: Runtime, answer_id: str) -> None:
    runtime.store.db.execute("UPDATE answers SET shown = '' WHERE id = ?", [answer_id])


def test_a_share_posts_the_answer_that_was_shown(slack: SlackDriver, slack_api: FakeSlackAPI, runtime: Runtime) -> None:
    # Before, Share searched again and posted that: votes since (or a ranker refit, an index run) put another
    # answer in the channel, one the asker never saw, and the one they chose to share was deleted.
    slack.command("/ask", QUESTION, user=ASKER, channel="C0OPS0001")
    (private,) = slack_api.wait_for("response_url")
    value = buttons(private.body["blocks"])[ids.SHARE_ANSWER]
    slack_api.clear()
    voted_down_elsewhere(slack, slack_api)
    assert runtime.answers.reply(QUESTION).top.path != runtime.store.get_answer(value)["paths"][0]  # it changed

    slack.click(ids.SHARE_ANSWER, value, user=ASKER)
    (shared,) = slack_api.wait_for("chat.postMessage")
    slack_api.wait_for("response_url", predicate=lambda c: bool(c.body.get("delete_original")), timeout=15)
    assert shared.body["text"] == private.body["text"]
    said_by, *rest = shared.body["blocks"]
    assert said_by["elements"][0]["text"] == f"Shared by <@{ASKER}>"
    without_share = [b for b in private.body["blocks"] if b["type"] != "actions"]
    assert [b for b in rest if b["type"] != "actions"] == without_share  # the same documents and sections
    # the votes in the channel count on the answer that was shown
    assert buttons(rest) == {ids.FEEDBACK_UP: value, ids.FEEDBACK_DOWN: value}
    slack.click(ids.FEEDBACK_UP, buttons(rest)[ids.FEEDBACK_UP], user="U0BOB0001")
    (thanks,) = slack_api.wait_for("response_url", predicate=lambda c: "Thanks" in str(c.body.get("text")))
    assert runtime.store.get_answer(value)["paths"][0] in thanks.body["text"]


def test_an_answer_saved_before_answers_kept_what_they_showed_is_shared_when_unchanged(
    slack: SlackDriver, slack_api: FakeSlackAPI, runtime: Runtime
) -> None:
    value = ask(slack, slack_api)
    saved_before_answers_kept_what_they_showed(runtime, value)
    slack.click(ids.SHARE_ANSWER, value, user=ASKER)  # searched again: the same documents, so it is shared
    (shared,) = slack_api.wait_for("chat.postMessage")
    assert shared.body["channel"] == "C0OPS0001" and f"<@{ASKER}>" in str(shared.body["blocks"])
    assert "Waymark Maps API rate limiting" in str(shared.body["blocks"])


def test_an_answer_saved_before_answers_kept_what_they_showed_is_not_shared_once_it_changed(
    slack: SlackDriver, slack_api: FakeSlackAPI, runtime: Runtime
) -> None:
    value = ask(slack, slack_api)
    saved_before_answers_kept_what_they_showed(runtime, value)
    voted_down_elsewhere(slack, slack_api)
    slack.click(ids.SHARE_ANSWER, value, user=ASKER)
    (told,) = slack_api.wait_for("response_url")
    assert "changed since it was shown" in told.body["text"] and "/ask again" in told.body["text"]
    assert told.body["response_type"] == "ephemeral"
    settle(slack)
    assert not slack_api.messages() and not [r for r in slack_api.responses() if r.get("delete_original")]
    assert not runtime.answers.shared(value)


def test_a_share_that_failed_before_its_post_can_be_pressed_again(
    slack: SlackDriver, slack_api: FakeSlackAPI, runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The claim is stored with the post: a share whose search failed (an answer from before answers kept what
    they showed, searched again while the index reloads) did not use the answer up."""
    value = ask(slack, slack_api)
    saved_before_answers_kept_what_they_showed(runtime, value)
    reply = runtime.answers.reply

    def not_ready(*args: object, **kwargs: object) -> object:
        raise NotReady("the index is reloading; try again in a minute.")

    monkeypatch.setattr(runtime.answers, "reply", not_ready)
    slack.click(ids.SHARE_ANSWER, value, user=ASKER)
    (told,) = slack_api.wait_for("response_url")
    assert "try again" in told.body["text"]
    settle(slack)
    assert not slack_api.messages()

    monkeypatch.setattr(runtime.answers, "reply", reply)
    slack.click(ids.SHARE_ANSWER, value, user=ASKER)
    (shared,) = slack_api.wait_for("chat.postMessage")
    assert shared.body["channel"] == "C0OPS0001" and f"<@{ASKER}>" in str(shared.body["blocks"])


def test_only_the_asker_can_share_an_answer(slack: SlackDriver, slack_api: FakeSlackAPI) -> None:
    value = ask(slack, slack_api)
    slack.click(ids.SHARE_ANSWER, value, user="U0BOB0001")
    (refusal,) = slack_api.wait_for("response_url")
    assert "only the person who asked" in refusal.body["text"] and refusal.body["response_type"] == "ephemeral"
    settle(slack)
    assert not slack_api.messages()
    slack.click(ids.SHARE_ANSWER, value, user=ASKER)  # the refusal did not use the answer up
    (shared,) = slack_api.wait_for("chat.postMessage")
    assert f"<@{ASKER}>" in str(shared.body["blocks"])


def test_an_answer_is_shared_only_from_the_channel_it_was_asked_in(slack: SlackDriver, slack_api: FakeSlackAPI) -> None:
    value = ask(slack, slack_api)
    slack.click(ids.SHARE_ANSWER, value, user=ASKER, channel="C0OTHER01")
    (refusal,) = slack_api.wait_for("response_url")
    assert "<#C0OPS0001>" in refusal.body["text"]
    settle(slack)
    assert not slack_api.messages()


# -- the vote acknowledgement ----------------------------------------------------------------------------------


def test_a_vote_where_opsbot_is_not_a_member_is_acknowledged(
    slack: SlackDriver, slack_api: FakeSlackAPI, runtime: Runtime
) -> None:
    slack.command("/ask", "Waymark Maps API returns 429 Too Many Requests", user=ASKER, channel="C0NOTMEMB")
    (reply,) = slack_api.wait_for("response_url")
    slack_api.clear()
    slack_api.fail_next("chat.postEphemeral", status=200, error="not_in_channel", times=5)
    slack.click(ids.FEEDBACK_UP, buttons(reply.body["blocks"])[ids.FEEDBACK_UP], user=ASKER, channel="C0NOTMEMB")
    (ack,) = slack_api.wait_for("response_url")
    assert "helpful" in ack.body["text"] and ack.body.get("replace_original") is not True
    assert runtime.store.feedback_rows()[-1]["vote"] == 1


def test_a_vote_on_an_answer_whose_runbook_was_removed_since_is_refused_not_thanked(
    slack: SlackDriver, slack_api: FakeSlackAPI, runtime: Runtime
) -> None:
    slack.mention(QUESTION)
    (answer,) = slack_api.wait_for("chat.postMessage")
    slack_api.clear()
    answer_id = buttons(answer.body["blocks"])[ids.FEEDBACK_UP]
    (path, *_) = runtime.store.get_answer(answer_id)["paths"]
    runtime.store.delete_documents([path])  # the runbook was deleted, and `opsbot index` run
    runtime.index().refresh()

    slack.click(ids.FEEDBACK_UP, answer_id, user=ASKER)
    (told,) = slack_api.wait_for("response_url")

    assert f"{path} is no longer in the knowledge index" in told.body["text"]
    assert "not recorded" in told.body["text"] and "helpful" not in told.body["text"]
    assert runtime.store.feedback_rows() == []


def test_a_vote_changed_on_an_older_answer_is_the_one_that_counts(
    slack: SlackDriver, slack_api: FakeSlackAPI, runtime: Runtime
) -> None:
    question = "Waymark Maps API returns 429 Too Many Requests"
    slack.mention(question)
    (first,) = slack_api.wait_for("chat.postMessage")
    slack_api.clear()
    slack.mention(question)
    (second,) = slack_api.wait_for("chat.postMessage")
    older, newer = (buttons(a.body["blocks"])[ids.FEEDBACK_UP] for a in (first, second))
    voter = "U0VOTER01"
    slack.click(ids.FEEDBACK_UP, older, user=voter)
    slack_api.wait_for("response_url")
    slack.click(ids.FEEDBACK_UP, newer, user=voter)
    slack_api.wait_for("response_url", count=2)

    slack.click(ids.FEEDBACK_DOWN, older, user=voter)  # a change of mind, on the first answer
    acks = slack_api.wait_for("response_url", count=3)

    assert "not helpful" in acks[-1].body["text"]
    # Before, the change was made in place and kept its older row, so the 👍 on the second answer counted instead.
    _, paths, votes = runtime.store.feedback_vectors(runtime.index().encoder.model_id)
    assert list(votes) == [-1.0] and len(paths) == 1
    assert [(q, v) for q, _, v, _ in runtime.store.votes_for_training(runtime.index().encoder.model_id)] == [
        (question, -1)
    ]
