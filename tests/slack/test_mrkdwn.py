"""The one escape for text opsbot did not write."""

from __future__ import annotations

from bot.slack.blocks.mrkdwn import escape


def test_markup_is_escaped_and_references_to_people_channels_and_links_stay() -> None:
    assert escape("a<b & <!channel> <@U04C2RN8VD> <#C0OPS0001> <https://x.example/a>") == (
        "a&lt;b &amp; &lt;!channel&gt; <@U04C2RN8VD> <#C0OPS0001> <https://x.example/a>"
    )


def test_bidirectional_overrides_are_dropped_and_right_to_left_text_is_kept() -> None:
    # U+202E shows what follows backwards: "rollback done" would read as "enod kcabllor" and so on
    assert escape("note \u202erollback done\u202c and \u2067isolated\u2069") == "note rollback done and isolated"
    assert escape("שלום עולם، مرحبا") == "שלום עולם، مرحبا"
