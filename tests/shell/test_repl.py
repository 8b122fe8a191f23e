"""`opsbot shell`: typed lines go through the real Bolt handlers, answers come back as terminal text."""

from __future__ import annotations

import ast
import json
import re
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from slack_bolt import BoltRequest

from bot.errors import InvalidRequest
from bot.runtime import Runtime
from bot.shell.mentions import resolve_mentions
from bot.shell.render import EMOJI, Button, Post, render_blocks, render_mrkdwn, render_post, terminal_safe
from bot.shell.repl import COMMAND_CHANNEL, DEFAULT_USER, DM_CHANNEL, Shell, check_user
from bot.slack import ids
from bot.slack.local.shell_dispatch import sign
from bot.store import Store
from tests.conftest import ROOT, Chat, make_runtime
from tests.slack.conftest import GatedEncoder

ALERT_FIXTURES = ROOT / "tests" / "fixtures" / "alertmanager"

PRIYA, DANIEL = "U03F8K2LQ1", "U04C2RN8VD"  # the first roster member, and another one


# -- conversations through the Bolt app -------------------------------------------------------------------


def test_a_typed_question_is_answered_in_its_dm_thread_with_numbered_buttons(chat: Chat) -> None:
    shown = chat.say(
        "checkout 503s at the evening peak, pgbouncer pool exhausted: FATAL: sorry, too many clients already"
    )
    assert "opsbot · reply in thread" in shown
    assert "pgbouncer / Postgres connection pool exhausted" in shown
    assert "`runbooks/postgres/connection-pool-exhausted.md`" in shown
    assert "Similar past incidents" in shown and "*Runbooks*" not in shown  # mrkdwn rendered, not shown raw
    assert "[1] 👍 Helpful  [2] 👎 Not helpful" in shown
    (posted,) = chat.shell.slack.fake.messages(DM_CHANNEL)  # it really went through Bolt to the Web API
    assert posted["thread_ts"] and {b["type"] for b in posted["blocks"]} >= {"section", "actions"}


def test_pressing_helpful_records_the_vote_and_says_thanks(chat: Chat, runtime: Runtime) -> None:
    chat.say("kafka consumer group lag keeps growing on the orders topic")
    shown = chat.say("1")
    assert "(you pressed [1] 👍 Helpful)" in shown
    assert "opsbot · only visible to you" in shown and "Thanks: noted `runbooks/kafka/consumer-lag.md`" in shown
    (row,) = runtime.store.feedback_rows()
    assert (row["user"], row["vote"], row["path"]) == (PRIYA, 1, "runbooks/kafka/consumer-lag.md")
    assert "You already voted that way" in chat.say("/press 1")  # the buttons stay while their message does


def test_ask_answers_only_you_and_share_posts_it_in_the_channel(chat: Chat) -> None:
    shown = chat.say("/ask Waymark Maps API returns 429 Too Many Requests")
    assert shown.index("Looking for: Waymark Maps API") < shown.index("Waymark Maps API rate limiting")
    assert "opsbot · only visible to you · updated · in #shell" in shown
    assert "[1] Share in channel  [2] 👍 Helpful  [3] 👎 Not helpful" in shown
    assert not chat.shell.slack.fake.messages()

    shared = chat.say("1")
    assert "opsbot · in #shell\n  Shared by @Priya Raman" in shared
    assert "Waymark Maps API rate limiting" in shared
    assert "(opsbot removed the message only you could see)" in shared
    assert "[4] 👍 Helpful  [5] 👎 Not helpful" in shared and "Share" not in shared.split("Shared by")[1]
    (posted,) = chat.shell.slack.fake.messages(COMMAND_CHANNEL)
    assert "Shared by <@U03F8K2LQ1>" in json.dumps(posted["blocks"])


def test_ask_without_text_shows_usage_at_once(chat: Chat) -> None:
    started = time.monotonic()
    shown = chat.say("/ask")
    assert time.monotonic() - started < 3
    assert "Usage: `/ask QUESTION`, for example `/ask CDN cache purge overloading the origin`" in shown
    assert not chat.shell.slack.fake.calls("response_url")


def test_an_unknown_command_is_explained_and_a_path_is_just_text(chat: Chat) -> None:
    shown = chat.say("/foo bar")
    assert "Unknown command /foo. opsbot's Slack commands: /ask" in shown and "/help" in shown
    assert not chat.shell.slack.fake.calls()  # nothing was sent to the app
    shown = chat.say("/var/lib/postgresql/data: No space left on device")
    assert "Unknown command" not in shown and "opsbot · reply in thread" in shown


def test_user_switches_only_to_roster_members_and_changes_who_votes(chat: Chat, runtime: Runtime) -> None:
    refused = chat.say("/user UNOBODY")
    assert "UNOBODY is not on the roster" in refused and f"Priya Raman ({PRIYA})" in refused
    assert chat.shell.user == PRIYA
    assert chat.say(f"/user {DANIEL}") == f"You are now Daniel Okafor ({DANIEL})."
    assert chat.shell.prompt == "Daniel Okafor> "
    chat.say("pgbouncer says too many clients")
    chat.say("2")
    (row,) = runtime.store.feedback_rows()
    assert (row["user"], row["vote"]) == (DANIEL, -1)


def test_a_follow_up_goes_to_the_thread_of_the_last_question(chat: Chat) -> None:
    assert "Nothing to follow up on yet" in chat.say("/reply what about one partition?")
    chat.say("/ask kafka consumer group lag")  # answered to you alone, with no thread: as in Slack
    assert "not /ask, whose answer has no thread" in chat.say("/reply what about one partition?")
    chat.say("kafka consumer group lag keeps growing on the orders topic")
    shown = chat.say("/reply what if it is only one partition?")
    assert "Kafka consumer group lag growing" in shown and "this thread's first question and yours" in shown
    first, follow_up = chat.shell.slack.fake.messages(DM_CHANNEL)
    assert follow_up["thread_ts"] == first["thread_ts"]


def test_a_newly_registered_command_works_and_updated_messages_lose_their_buttons(
    chat: Chat, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A command the app did not ship with (like /deploy once was): a message with a button, then chat.update."""
    monkeypatch.setattr("bot.shell.repl.SLASH_COMMANDS", [("/ask", "Ask", "Q"), ("/standin", "Stand-in", "SERVICE")])
    app = chat.shell.slack.app
    assert app is not None

    def post_request(ack: Any, command: dict, client: Any) -> None:
        ack()
        blocks = [
            {
                "type": "section",
                "text": {"type": "mrkdwn", "text": f"*{command['text']}* requested by <@{command['user_id']}>"},
            },
            {
                "type": "actions",
                "elements": [
                    {
                        "type": "button",
                        "action_id": "demo-approve",
                        "value": "d1",
                        "style": "primary",
                        "text": {"type": "plain_text", "text": "Approve"},
                    }
                ],
            },
        ]
        client.chat_postMessage(channel=command["channel_id"], text="deploy requested", blocks=blocks)

    def approve(ack: Any, body: dict, client: Any) -> None:
        ack()
        text = f"Approved by <@{body['user']['id']}>"
        client.chat_update(channel=body["channel"]["id"], ts=body["message"]["ts"], text=text, blocks=[])

    app.command("/standin")(post_request)
    app.action("demo-approve")(approve)

    shown = chat.say("/standin payments-api 1.4.2")
    assert "opsbot · in #shell\n  payments-api 1.4.2 requested by @Priya Raman\n  [1] Approve" in shown
    (posted,) = chat.shell.slack.fake.calls("chat.postMessage")
    shown = chat.say("1")
    assert "opsbot · updated · in #shell\n  Approved by @Priya Raman" in shown
    (updated,) = chat.shell.slack.fake.calls("chat.update")
    assert updated.body["ts"] == posted.answer["ts"]  # the click carried the real message ts
    assert "Button [1] is gone: opsbot updated or removed its message. No button is on screen now." in chat.say("1")


def test_buttons_are_explained_when_there_is_nothing_to_press(chat: Chat) -> None:
    assert "There is no button to press" in chat.say("1")
    chat.say("pgbouncer says too many clients")
    missing = chat.say("7")
    assert missing.startswith("There is no button [7]. Buttons on screen: [1] 👍 Helpful (on Best match: ")
    assert "[2] 👎 Not helpful (on " in missing
    assert "Usage: /press N" in chat.say("/press x")
    # "²" is a digit to str.isdigit and no number to int: it failed with a ValueError
    assert "Usage: /press N" in chat.say("/press ²")
    assert "failed" not in chat.say("²")


def test_help_lists_what_can_be_typed_and_who_you_are(chat: Chat) -> None:
    shown = chat.say("/help")
    assert "/ask QUESTION" in shown and "/user [NAME or ID]" in shown and "/quit" in shown
    assert f"now: Priya Raman ({PRIYA})" in shown
    # A usage too long for the column puts its description on the next line, in the column.
    lines = shown.splitlines()
    long = next(i for i, line in enumerate(lines) if line.startswith("  /incident declare TITLE"))
    assert lines[long + 1] == " " * 37 + "Declare and work an incident"
    assert all(len(line) < 120 for line in lines if not line.startswith("  /incident"))


def test_run_reads_scripted_lines_until_quit(runtime: Runtime) -> None:
    out: list[str] = []
    with Shell(runtime, write=out.append, user=DANIEL, echo=True) as shell:
        shell.run(["", "pgbouncer says too many clients", "/quit", "never read"])
    shown = "\n".join(out)
    assert shown.startswith(f"opsbot shell: you are Daniel Okafor ({DANIEL}).")
    assert f"What you do here is kept in {runtime.settings.db_path}, as from Slack" in out[1]
    assert "Daniel Okafor> pgbouncer says too many clients" in shown
    assert "pgbouncer / Postgres connection pool exhausted" in shown
    assert "never read" not in shown


def test_an_unexpected_error_in_one_line_is_told_in_one_line_and_the_shell_goes_on(
    runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    out: list[str] = []
    with Shell(runtime, write=out.append, user=DANIEL) as shell:
        real, failures = shell._show_late, [RuntimeError("a bug nobody foresaw\n  on two lines")]

        def show_late() -> None:  # fails once, as a bug would, then works
            if failures:
                raise failures.pop()
            real()

        monkeypatch.setattr(shell, "_show_late", show_late)
        shell.run(["first line", "pgbouncer says too many clients"])
    (told,) = [line for line in out if "a bug nobody foresaw" in line]
    assert told == "(that line failed: RuntimeError: a bug nobody foresaw on two lines; the shell goes on)"
    assert "pgbouncer / Postgres connection pool exhausted" in "\n".join(out)


def test_text_with_the_renderers_private_use_characters_is_shown_as_typed(chat: Chat) -> None:
    # A Nerd-Font glyph pair around digits was read as the renderer's placeholder: IndexError, the shell ended.
    shown = chat.say("/incident declare checkout down \ue0007\ue001 since 10:02")
    assert "checkout down \ue0007\ue001 since 10:02" in shown


def test_the_first_answer_waits_for_the_model_and_says_so(tmp_path: Path, sample_index: Store, minilm: object) -> None:
    encoder = GatedEncoder(minilm)
    rt = make_runtime(tmp_path, sample_index, encoder)
    rt.start_loading()
    out: list[str] = []
    opener = threading.Timer(1.5, encoder.gate.set)
    opener.start()
    try:
        with Shell(rt, write=out.append) as shell:
            shell.handle("/ask pgbouncer says too many clients")
    finally:
        opener.cancel()
        encoder.gate.set()
        rt.close()
    shown = "\n".join(out)
    assert shown.count("(loading the model…)") == 1
    assert shown.index("Looking for") < shown.index("(loading the model…)") < shown.index("pgbouncer / Postgres")


def test_leaving_while_opsbot_still_works_waits_for_it_and_shows_it(
    tmp_path: Path, sample_index: Store, minilm: object
) -> None:
    # Ctrl-D while an incident's briefing waited for the model: the shell left after 2 s, the briefing was lost and
    # each of its parts printed a traceback (the store had been closed under it).
    encoder = GatedEncoder(minilm)
    rt = make_runtime(tmp_path, sample_index, encoder)
    rt.start_loading()
    out: list[str] = []
    opener = threading.Timer(3.0, encoder.gate.set)  # later than the old 2 s the shell gave work in flight
    opener.start()
    try:
        with Shell(rt, write=out.append, reply_timeout=0.5) as shell:
            shell.run(["/incident declare checkout 503s sev2 --service checkout-api"])
            assert not rt.ready  # the end of input came while the briefing still waited for the model
    finally:
        opener.cancel()
        encoder.gate.set()
        rt.close()
    shown = "\n".join(out)
    assert "Who could help with: checkout 503s" in shown and "Deploys of checkout-api in the last 24 h" in shown
    assert "(opsbot is still working on what you typed: leaving once it is done; Ctrl-C leaves now)" in shown
    assert shown.index("leaving once it is done") < shown.index("Who could help with: checkout 503s")
    assert "left before opsbot was done" not in shown and not shell.unfinished


def test_a_shell_closed_twice_leaves_once_and_the_second_close_does_nothing(runtime: Runtime) -> None:
    # A session closed, then another on the same database: the first one's second close waited out the minute
    # for posts the other session had left in the outbox, which its stopped delivery would never send.
    first = Shell(runtime, write=lambda _: None).start()
    first.close()
    with Shell(runtime, write=lambda _: None) as other:
        other.handle("/deploy checkout-api 1.4.2 staging")
    closed_again: list[bool] = []
    first.slack.close = lambda: closed_again.append(True)  # type: ignore[method-assign]
    first.slack.wait_idle = lambda timeout: closed_again.append(False) or False  # type: ignore[method-assign]

    first.close()

    assert closed_again == []


def test_requests_are_signed_with_a_fresh_secret_per_session(runtime: Runtime) -> None:
    with Shell(runtime, write=lambda _: None) as shell:
        secret = str(runtime.settings.slack_signing_secret)
        assert secret != "configured" and len(secret) == 64
        assert runtime.settings.slack_bot_token == "xoxb-local-shell"
        body, now = "token=x&command=%2Fask&text=hi", int(time.time())
        forged = {"x-slack-request-timestamp": [str(now)], "x-slack-signature": [sign(body, now, "configured")]}
        assert shell.slack.app is not None
        assert shell.slack.app.dispatch(BoltRequest(body=body, headers=forged)).status == 401
    with Shell(runtime, write=lambda _: None):
        assert str(runtime.settings.slack_signing_secret) != secret


def test_check_user_accepts_roster_ids_and_names_only() -> None:
    roster = {PRIYA: "Priya Raman", DANIEL: "Daniel Okafor"}
    assert check_user(DANIEL.lower(), roster) == DANIEL
    assert check_user("priya", roster) == PRIYA
    assert check_user("@Daniel", roster) == check_user("<@U04C2RN8VD>", roster) == DANIEL
    with pytest.raises(InvalidRequest, match=r"U999 is not on the roster\. .*Priya Raman \(U03F8K2LQ1\)"):
        check_user("U999", roster)
    with pytest.raises(InvalidRequest, match="the roster is empty"):
        check_user(DEFAULT_USER, {})


def test_a_shell_refuses_a_user_off_the_roster(runtime: Runtime) -> None:
    with pytest.raises(InvalidRequest, match="UNOBODY is not on the roster"):
        Shell(runtime, user="UNOBODY")


# -- rendering (pure functions) --------------------------------------------------------------------------


def test_render_mrkdwn_turns_slack_markup_into_terminal_text() -> None:
    names = {PRIYA: "Priya Raman"}
    text = (
        "*INC-2025-0001* · <https://wiki.example.com/pg_pool|Pool &amp; limits> by <@U03F8K2LQ1> and <@U0NEW>\n"
        ">FATAL: too many clients &lt;pgbouncer&gt;\n"
        "`runbooks/db/connection_pool_limits.md` · _Symptoms_ ~old~ :white_check_mark: <#C123|ops> <!here>"
    )
    assert render_mrkdwn(text, names).split("\n") == [
        "INC-2025-0001 · Pool & limits (https://wiki.example.com/pg_pool) by @Priya Raman and @U0NEW",
        "  │ FATAL: too many clients <pgbouncer>",
        "`runbooks/db/connection_pool_limits.md` · Symptoms old ✅ #ops @here",
    ]


def test_render_mrkdwn_styles_without_touching_code_links_or_snake_case() -> None:
    def tag(text: str, **kw: object) -> str:
        return "{" + ",".join(sorted(kw)) + ":" + text + "}"

    shown = render_mrkdwn("*bold* a_b_c `x*y*z` <https://a.b/c_d_e>", style=tag)
    assert shown == "{bold:bold} a_b_c {fg:`x*y*z`} {fg:https://a.b/c_d_e}"


def test_render_mrkdwn_shows_private_use_characters_as_they_are_in_text_code_and_links() -> None:
    text = "<https://a|docs \ue0001\ue001> x \ue0000\ue001 `\ue0009\ue001` \ue000 *\ue001*"
    assert render_mrkdwn(text) == "docs \ue0001\ue001 (https://a) x \ue0000\ue001 `\ue0009\ue001` \ue000 \ue001"


def test_render_blocks_numbers_buttons_and_dims_context() -> None:
    blocks = [
        {"type": "header", "text": {"type": "plain_text", "text": "Deploy :rocket:"}},
        {"type": "section", "text": {"type": "mrkdwn", "text": "*payments-api* 1.4.2\nto prod"}},
        {"type": "divider"},
        {"type": "context", "elements": [{"type": "mrkdwn", "text": "Requested by <@U1>"}]},
        {
            "type": "actions",
            "block_id": "deploy-actions",
            "elements": [
                {"type": "button", "action_id": "approve", "value": "d1", "text": {"type": "plain_text", "text": "Go"}},
                {"type": "static_select", "placeholder": {"type": "plain_text", "text": "Pick a window"}},
            ],
        },
        {
            "type": "section",
            "text": {"type": "mrkdwn", "text": "Runbook"},
            "accessory": {"type": "button", "action_id": "open", "text": {"type": "plain_text", "text": "Open"}},
        },
    ]
    text, buttons = render_blocks(blocks, {"U1": "Ana"}, first=3)
    assert text.split("\n") == [
        "Deploy 🚀",
        "payments-api 1.4.2",
        "to prod",
        "",
        "─" * 40,
        "Requested by @Ana",
        "[3] Go  (Pick a window: not available in the shell)",
        "Runbook",
        "[4] Open",
    ]
    assert buttons == [Button("Go", "approve", "d1", "deploy-actions"), Button("Open", "open")]


def test_render_post_says_who_sees_it_and_where() -> None:
    ephemeral = Post(text="Looking for: *x*", channel="C1", ephemeral=True)
    assert render_post(ephemeral, channel_names={"C1": "ops"}) == (
        "opsbot · only visible to you · in #ops\n  Looking for: x",
        [],
    )
    reply = Post(text="hi", channel="D1", thread_ts="1.2")
    assert render_post(reply, home="D1")[0] == "opsbot · reply in thread\n  hi"
    assert render_post(Post(note="opsbot deleted a message"))[0] == "(opsbot deleted a message)"


def test_render_blocks_of_a_real_answer_keeps_the_vote_buttons(chat: Chat) -> None:
    chat.say("pgbouncer says too many clients")
    (posted,) = chat.shell.slack.fake.messages(DM_CHANNEL)
    _, buttons = render_blocks(posted["blocks"])
    assert [(b.label, b.action_id) for b in buttons] == [
        ("👍 Helpful", ids.FEEDBACK_UP),
        ("👎 Not helpful", ids.FEEDBACK_DOWN),
    ]
    assert buttons[0].value and buttons[0].block_id == ids.ANSWER_ACTIONS_BLOCK


# -- names, buttons of earlier messages, emoji and channels ----------------------------------------------------


def test_people_are_mentioned_by_name_or_id_and_a_wrong_name_sends_nothing(chat: Chat) -> None:
    chat.as_("Marcus").say("/incident declare checkout 503s --service checkout-api")

    by_name = chat.say("/incident assign @daniel comms")
    by_id = chat.say(f"/incident assign @{DANIEL} lead")
    calls = len(chat.shell.slack.fake.calls())
    unknown = chat.say("/incident assign @Dan comms")

    assert "@Daniel Okafor is comms of INC-" in by_name and "@Daniel Okafor is lead of INC-" in by_id
    assert "Sorry: @Dan is not on the roster. Did you mean @Daniel?" in unknown and "Nothing was sent." in unknown
    assert len(chat.shell.slack.fake.calls()) == calls  # nothing reached opsbot
    assert "Channel: #shell" in chat.say("/incident status")  # the channel's name, not its id
    # The resolve form cannot be filled in here: the note says how to type it instead (it said only "not yet").
    form = chat.say("/incident resolve")
    assert "forms can't be filled in the shell yet; type it on one line instead: /incident resolve INC-ID" in form


def test_help_says_how_to_mention_people_and_press_earlier_buttons(chat: Chat) -> None:
    shown = chat.say("/help")
    assert "@Daniel (first name), @Daniel Okafor (full name) or @U04C2RN8VD (Slack id)" in shown
    assert "<@U04C2RN8VD> works too" in shown and "any earlier one still on screen" in shown


def test_resolve_mentions_names_one_person_or_says_why_not() -> None:
    roster = {PRIYA: "Priya Raman", DANIEL: "Daniel Okafor", "U1SAM00001": "Sam Archer", "U2SAM00002": "Sam Brook"}
    bot = ("UBOT0001", "opsbot")

    assert resolve_mentions("page @Daniel Okafor now", roster, bot) == f"page <@{DANIEL}> now"
    typed = "@priya, @u04c2rn8vd and @opsbot"
    assert resolve_mentions(typed, roster, bot) == f"<@{PRIYA}>, <@{DANIEL}> and <@UBOT0001>"
    assert resolve_mentions(f"<@{DANIEL}> and mail ops@example.com @here", roster) == (
        f"<@{DANIEL}> and mail ops@example.com <!here>"
    )
    with pytest.raises(InvalidRequest, match=r"@Sam could be Sam Archer \(U1SAM00001\) or Sam Brook \(U2SAM00002\)"):
        resolve_mentions("ask @Sam", roster)
    assert resolve_mentions("ask @Sam Brook", roster) == "ask <@U2SAM00002>"
    with pytest.raises(InvalidRequest, match="@Danial is not on the roster. Did you mean @Daniel?.*leave out the @"):
        resolve_mentions("page @Danial", roster)
    with pytest.raises(InvalidRequest, match="@U04C2RN8VX is not on the roster"):
        resolve_mentions("page @U04C2RN8VX", roster)
    # An @word that is no one's name, nor close to one, is text, as Slack sends it when not picked from its menu.
    assert resolve_mentions("the @Timeout annotation", roster) == "the @Timeout annotation"


def test_a_pasted_log_line_with_an_at_word_is_asked_as_slack_would_send_it(chat: Chat) -> None:
    # An ECS log line's "@timestamp" was taken for a person not on the roster: "Nothing was sent."
    line = '{"@timestamp":"2026-12-07T10:00:00Z","log.level":"error","message":"FATAL: too many clients already"}'
    shown = chat.say(line)
    assert "Nothing was sent" not in shown and "pgbouncer / Postgres connection pool exhausted" in shown
    (posted,) = chat.shell.slack.fake.messages(DM_CHANNEL)  # answered in the thread of the pasted line
    assert posted["thread_ts"]
    # A misspelt name still sends nothing: it would reach opsbot as text, and nobody would be asked.
    assert "Did you mean @Daniel? " in chat.say("/experts kafka lag, ask @Danial")


def test_what_a_terminal_would_act_on_is_shown_as_a_code_and_colours_are_kept() -> None:
    text = "kill \x1b]0;pwned\x07 \x1b[2J done \u202eevil\u202c\tok\nnext " + "\x1b[1mbold\x1b[0m"
    assert terminal_safe(text) == (
        "kill <U+001B>]0;pwned<U+0007> <U+001B>[2J done <U+202E>evil<U+202C>\tok\nnext \x1b[1mbold\x1b[0m"
    )


def test_an_alert_payload_s_escape_sequences_never_reach_the_terminal(chat: Chat, tmp_path: Path) -> None:
    payload = json.loads((ALERT_FIXTURES / "pgbouncer-firing.json").read_text(encoding="utf-8"))
    payload["commonAnnotations"]["summary"] = "pool full \x1b]0;owned\x07\x1b[2J \u202eright-to-left"
    for alert in payload["alerts"]:
        alert["annotations"]["summary"] = payload["commonAnnotations"]["summary"]
    path = tmp_path / "alert.json"
    path.write_text(json.dumps(payload), encoding="utf-8")
    shown = chat.say(f"/alert {path}")
    assert "PgBouncerPoolExhausted" in shown
    assert "\x1b" not in shown and "\u202e" not in shown and "\x07" not in shown


def test_a_button_of_an_earlier_answer_can_still_be_pressed(chat: Chat, runtime: Runtime) -> None:
    first = chat.say("kafka consumer group lag keeps growing on the orders topic")
    second = chat.say("pgbouncer says too many clients")
    assert "[1] 👍 Helpful  [2] 👎 Not helpful" in first and "[3] 👍 Helpful  [4] 👎 Not helpful" in second

    pressed = chat.say("1")

    assert "(you pressed [1] 👍 Helpful)" in pressed and "runbooks/kafka/consumer-lag.md" in pressed
    (row,) = runtime.store.feedback_rows()
    assert row["path"] == "runbooks/kafka/consumer-lag.md"  # the first answer's, not the newest
    listed = chat.say("/buttons")
    assert listed.startswith("Buttons on screen: [1] 👍 Helpful (on ") and "[4] 👎 Not helpful" in listed


def test_every_emoji_code_opsbot_writes_is_drawn() -> None:
    """The codes in opsbot's own message strings (not docstrings): each one has an emoji in the shell."""
    used = set()
    for path in (ROOT / "bot").rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        docstrings = {
            id(node.body[0].value)
            for node in ast.walk(tree)
            if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef)
            and node.body
            and isinstance(node.body[0], ast.Expr)
            and isinstance(node.body[0].value, ast.Constant)
        }
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
                used.update(re.findall(r"(?<![\w:]):([a-z][a-z_]+):(?![\w:])", node.value))
    assert {"rewind", "rocket", "alarm_clock", "information_source", "memo"} <= used  # the scan sees them
    assert sorted(used - set(EMOJI) - {"memory"}) == []  # sqlite's ":memory:" is no emoji
    assert render_mrkdwn(":rewind: *Rollback* :rocket: :not_an_emoji:") == "⏪ Rollback 🚀 :not_an_emoji:"


def test_the_shell_never_vouches_for_a_real_channel_so_an_older_incident_stays_private(
    chat: Chat, runtime: Runtime
) -> None:
    # Before, the stand-in called every channel public: one `/incident list` in the shell settled an incident of a
    # real private channel as public, and the next start indexed it for every channel to search.
    incidents = runtime.incidents()
    older = incidents.declare("Signing key leaked", PRIYA, 1, origin_channel="C0SECURITY1")
    with runtime.store.transaction():  # as the migration left incidents declared before opsbot asked Slack
        runtime.store.db.execute("UPDATE live_incidents SET private = -1")
    chat.say("/incident list")
    assert incidents.get(older.id).private and incidents.unsettled_channels() == ["C0SECURITY1"]
    assert incidents.unlearned() == []

    declared = chat.say("/incident declare checkout 503s --service checkout-api")  # its own channel: known, public
    incident_id = re.search(r"INC-\d{4}-\d{4}", declared)[0]  # type: ignore[index]
    assert not incidents.get(incident_id).private and "could not ask Slack" not in declared
