"""The one escape for text opsbot did not write, and links whose address could end them early."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from bot.answers.replies import Reply
from bot.models import Answer, SearchHit
from bot.slack.blocks.answers import answer_fallback_text, build_answer_blocks
from bot.slack.blocks.incidents import clock_time
from bot.slack.blocks.mrkdwn import escape, link


def test_markup_is_escaped_and_references_to_people_channels_and_links_stay() -> None:
    assert escape("a<b & <!channel> <@U04C2RN8VD> <#C0OPS0001> <https://x.example/a>") == (
        "a&lt;b &amp; &lt;!channel&gt; <@U04C2RN8VD> <#C0OPS0001> <https://x.example/a>"
    )


def test_bidirectional_overrides_are_dropped_and_right_to_left_text_is_kept() -> None:
    # U+202E shows what follows backwards: "rollback done" would read as "enod kcabllor" and so on
    assert escape("note \u202erollback done\u202c and \u2067isolated\u2069") == "note rollback done and isolated"
    assert escape("שלום עולם، مرحبا") == "שלום עולם، مرحبا"


def test_an_address_that_would_end_a_link_early_is_not_made_a_link() -> None:
    assert link("https://wiki.example.com/disk#fix", "Fix") == "<https://wiki.example.com/disk#fix|Fix>"
    # `|` ends the address and `>` the link: what follows would be mrkdwn of its own, a broadcast among it
    assert link("https://wiki.example.com/d|x> <!channel> <https://y", "Fix") == "Fix"
    assert link("javascript:alert(1)", "Fix") == "Fix"


def test_an_answer_shows_a_runbook_s_words_as_text_in_its_blocks_and_its_notification() -> None:
    # An index made before `opsbot check` refused such addresses (or edited by hand) may still hold one.
    hit = SearchHit(
        "runbooks/<!here>.md",
        "runbook",
        "<!here> Disk full",
        "Fix",
        "Delete old archives <!subteam^S0ONCALL>",
        1.0,
        url="https://wiki.example.com/disk|wiki> <!channel> <https://x",
        anchor="fix",
    )
    reply = Reply("r1", Answer("disk full", "disk full", (hit,), "hybrid"), (hit,), (), "disk full")

    shown = json.dumps(build_answer_blocks(reply)) + answer_fallback_text(reply)

    assert "<!" not in shown and "&lt;!here&gt; Disk full" in shown
    assert "wiki.example.com" not in shown  # not a link, and not shown


def test_a_time_of_another_day_than_the_message_s_shows_its_date() -> None:
    now = datetime(2026, 12, 7, 9, 0, tzinfo=UTC)
    assert clock_time("2026-12-07T08:05:00+00:00", now) == "08:05 UTC"
    assert clock_time("2026-12-05T16:22:38+00:00", now) == "Sat 05 Dec 16:22 UTC"  # an alert firing for two days
    assert clock_time("2026-12-07T01:30:00+02:00", now) == "Sun 06 Dec 23:30 UTC"  # the day is UTC's too
