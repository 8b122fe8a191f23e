"""/oncall and "who is on call" questions, through signed requests against the fake Slack Web API."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import yaml

from bot.rota import shift_at
from bot.runtime import Runtime
from bot.slack.blocks.answers import build_help_blocks
from bot.slack.local.fake_api import FakeSlackAPI
from bot.slack.manifest import build_manifest
from tests.slack.conftest import SlackDriver
from tests.slack.test_conversations import text_of

OLIVER = "U07L2ZG4UM"


def holders(runtime: Runtime, team: str, ask: object) -> tuple[set[str], object]:
    """Who holds a rota's pager around a request (a handoff may fall between the two looks), and its answer."""
    (rota,) = [r for r in runtime.rota().rotations if r.team == team]
    before = shift_at(rota, datetime.now(UTC))
    answer = ask()
    after = shift_at(rota, datetime.now(UTC))
    return {s.person for s in (before, after) if s is not None}, answer


def test_oncall_names_who_is_on_call_now_and_next_for_every_rota(
    slack: SlackDriver, slack_api: FakeSlackAPI, runtime: Runtime
) -> None:
    ack = slack.command("/oncall", "", user=OLIVER)
    assert ack.status == 200 and ack.json()["response_type"] == "ephemeral"
    (reply,) = slack_api.wait_for("response_url", timeout=15)
    shown = text_of(reply.body["blocks"])
    assert shown.startswith(":pager: *On call now*")  # whatever time the question named: it says which it answers
    assert "For another time: `/oncall TEAM --at" in shown
    for team in ("payments", "platform", "commerce"):
        assert f"*{team}*: <@U" in shown
    assert shown.count("next: <@") == 3 and " until " in shown
    assert reply.body["text"].startswith("On call: payments: ")


def test_oncall_for_a_service_answers_with_the_rota_that_covers_it(
    slack: SlackDriver, slack_api: FakeSlackAPI, runtime: Runtime
) -> None:
    def ask() -> dict:
        slack.command("/oncall", "checkout-api", user=OLIVER)  # services.yaml: team payments
        (reply,) = slack_api.wait_for("response_url", timeout=15)
        return reply.body

    people, body = holders(runtime, "payments", ask)
    shown = text_of(body["blocks"])
    assert shown.count("*payments*") == 1 and "*platform*" not in shown
    assert any(f"*payments*: <@{p}>" in shown for p in people)


def test_oncall_for_something_unknown_says_what_exists(slack: SlackDriver, slack_api: FakeSlackAPI) -> None:
    slack.command("/oncall", "paymnts", user=OLIVER)
    (reply,) = slack_api.wait_for("response_url", timeout=15)
    assert reply.body["text"] == (
        "Sorry: no rota or service called 'paymnts'; the rotas are payments, platform, commerce, or name a service."
    )


def test_oncall_for_a_service_no_rota_covers_names_its_owners(slack: SlackDriver, slack_api: FakeSlackAPI) -> None:
    """The sample's ledger-etl belongs to the data team, which has no rota: who owns it is who to reach."""
    slack.command("/oncall", "ledger-etl", user=OLIVER)
    (reply,) = slack_api.wait_for("response_url", timeout=15)
    assert reply.body["text"] == (
        "Sorry: no rota covers ledger-etl. Its owner is Jonas Becker (data team): reach them directly, "
        "or add it to a rota's `services:` in experts.yaml."
    )


def test_who_is_on_call_is_answered_from_the_rota_not_the_runbooks(
    slack: SlackDriver, slack_api: FakeSlackAPI, runtime: Runtime
) -> None:
    def ask() -> dict:
        slack.mention("who is on call for payments right now?", user=OLIVER)
        (call,) = slack_api.wait_for("chat.postMessage", timeout=15)
        return call.body

    people, body = holders(runtime, "payments", ask)
    shown = text_of(body["blocks"])
    assert any(f"*payments*: <@{p}> ({name})" in shown for p in people for name in ("Priya Raman", "Marcus Oyelaran"))
    assert "*platform*" not in shown and "Runbooks" not in shown and "Similar past incidents" not in shown


def test_oncall_is_in_the_manifest_and_the_help() -> None:
    commands = {c["command"]: c for c in build_manifest()["features"]["slash_commands"]}
    assert commands["/oncall"]["usage_hint"] == "[TEAM, SERVICE, @person or me] [--at WHEN]"
    assert "`/oncall [TEAM, SERVICE, @person or me] [--at WHEN]`" in text_of(build_help_blocks())
    assert "/oncall" in yaml.safe_dump(build_manifest())


def test_who_is_on_call_for_a_misspelt_rota_says_so_and_other_words_ask_about_every_rota(
    slack: SlackDriver, slack_api: FakeSlackAPI
) -> None:
    """A word close to a rota's name ("paymnts") is a typo the asker should hear about; any other ("for the
    outage", "on Saturday") is not a name at all, and every rota answers."""
    slack.mention("who is on call for paymnts?", user=OLIVER)
    (told,) = slack_api.wait_for("chat.postEphemeral", timeout=15)
    assert (told.body["user"], told.body["text"]) == (
        OLIVER,
        "Sorry: no rota or service called 'paymnts'; the rotas are payments, platform, commerce, or name a service.",
    )
    for question in ("who is on call for the outage?", "who is on call on Saturday?"):
        slack.mention(question, user=OLIVER)
    answers = slack_api.wait_for("chat.postMessage", count=2, timeout=15)
    for answer in answers:
        assert answer.body["text"].startswith("On call: payments: ") and "; platform: " in answer.body["text"]
    assert len(slack_api.calls("chat.postEphemeral")) == 1


def test_many_rotas_are_shown_whole_in_as_many_sections_as_they_need() -> None:
    # Before, one section held every rota and was cut at Slack's limit: rotas past it were lost without a word.
    from datetime import timedelta

    from bot.rota import OnCall, Shift
    from bot.slack.blocks.oncall import build_oncall_blocks

    start = datetime(2026, 12, 7, 9, tzinfo=UTC)
    answers = [
        OnCall(
            f"team-{n:02d}-" + "x" * 60,
            Shift(f"team-{n:02d}", f"U0PERSON{n:02d}", start, start + timedelta(days=7)),
            Shift(f"team-{n:02d}", f"U0NEXT00{n:02d}", start + timedelta(days=7), start + timedelta(days=14)),
            "Europe/London",
        )
        for n in range(40)
    ]
    blocks = build_oncall_blocks(answers, {})
    texts = [b["text"]["text"] for b in blocks if b["type"] == "section"]
    assert len(texts) > 1 and all(len(t) <= 2900 for t in texts) and len(blocks) <= 50
    shown = "\n".join(texts)
    assert all(f"*team-{n:02d}-" in shown and f"<@U0PERSON{n:02d}>" in shown for n in range(40))
    assert all(t.count("<@") == t.count(">") for t in texts)  # no mention cut in two


DANIEL, PRIYA, HANNAH = "U04C2RN8VD", "U03F8K2LQ1", "U04D9XK3PE"


def test_oncall_for_a_person_or_me_gives_their_turns_on_every_rota_that_has_them(
    slack: SlackDriver, slack_api: FakeSlackAPI, runtime: Runtime
) -> None:
    # Before, `/oncall @Daniel` was read as the name of a rota or a service, and refused.
    asked = [
        (f"<@{DANIEL}|daniel>", OLIVER),
        ("me", PRIYA),
        (f"<@{HANNAH}>", OLIVER),
        ("<@U0NOBODY1>", OLIVER),
        ("daniel", OLIVER),  # a name that is no team or service is someone's
    ]
    for n, (text, user) in enumerate(asked, start=1):  # one at a time: the answers would come in any order
        slack.command("/oncall", text, user=user)
        slack_api.wait_for("response_url", count=n, timeout=15)
    daniel, priya, hannah, told, by_name = slack_api.calls("response_url")
    assert text_of(by_name.body["blocks"]) == text_of(daniel.body["blocks"])

    (platform,) = [r for r in runtime.rota().rotations if r.team == "platform"]
    (payments,) = [r for r in runtime.rota().rotations if r.team == "payments"]
    for body, person, rota in ((daniel.body, DANIEL, platform), (priya.body, PRIYA, payments)):
        shown = text_of(body["blocks"])
        assert shown.startswith(":pager: *Turns on call: ") and f"*{rota.team}*: " in shown
        now = shift_at(rota, datetime.now(UTC))
        on_now = now is not None and now.person == person
        assert ("on call now until " in shown) == on_now and ("not on call now" in shown) != on_now
        assert "; next from " in shown and " until " in shown
    assert text_of(hannah.body["blocks"]) == ":pager: Hannah Weiss is on no on-call rota in experts.yaml."
    assert told.body["text"] == "Sorry: <@U0NOBODY1> is not on the roster (experts.yaml), so on no rota."


def test_oncall_at_another_time_answers_for_that_time_and_says_which(
    slack: SlackDriver, slack_api: FakeSlackAPI, runtime: Runtime
) -> None:
    # Before, `/oncall payments --at 2026-12-24T20:00Z` was taken for a rota named "payments --at 2026-…", and only
    # `opsbot oncall` could look ahead. Three weeks on: another week of the payments rota than this one.
    later = datetime.now(UTC).replace(microsecond=0, second=0) + timedelta(days=21, hours=5)
    stamp = later.strftime("%Y-%m-%dT%H:%MZ")
    (payments,) = [r for r in runtime.rota().rotations if r.team == "payments"]
    then = shift_at(payments, later)
    assert then is not None
    asked = [f"payments --at {stamp}", f"--at={stamp} <@{then.person}>", "payments --at yesterday", "--at"]
    for n, text in enumerate(asked, start=1):
        slack.command("/oncall", text, user=OLIVER)
        slack_api.wait_for("response_url", count=n, timeout=15)
    team, person, bad, bare = slack_api.calls("response_url")

    shown = text_of(team.body["blocks"])
    assert shown.startswith(f":pager: *On call at {later:%a %d %b %H:%M} UTC*"), shown
    assert team.body["text"].startswith(f"On call at {later:%a %d %b %H:%M} UTC: payments: ")
    assert f"*payments*: <@{then.person}>" in shown and "*platform*" not in shown
    turns = text_of(person.body["blocks"])
    assert f"*payments*: on call at {later:%a %d %b %H:%M} UTC until " in turns, turns
    assert bad.body["text"] == "Sorry: --at 'yesterday' is not a date and time; write it like 2026-12-24T20:00Z."
    assert bare.body["text"].startswith("Sorry: --at needs a time after it, like `/oncall payments --at ")
