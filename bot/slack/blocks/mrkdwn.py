"""Slack's mrkdwn: the one escape for text opsbot did not write, and the two block shapes every builder uses."""

from __future__ import annotations

import re

from bot.knowledge_fields import WEB_ADDRESS  # the one rule for an address a link can hold

MAX_TEXT = 2900  # Slack refuses section text over 3000 characters
# A reference to a person or a channel, or a link, stays clickable; a broadcast (<!here>, <!channel>) does not:
# opsbot never amplifies a mention that pings everyone.
SLACK_REFERENCE = re.compile(r"(<(?:[@#][A-Z0-9][^<>\s]*|https?://[^<>\s]+)>)")
# Unicode's bidirectional embeddings, overrides and isolates: typed into a note, an override shows the rest of the
# message backwards ("Rollback to 1.4.1" read as something else). Shown text never carries them.
BIDI_CONTROLS = re.compile("[\u202a-\u202e\u2066-\u2069]")


def escape(text: str) -> str:
    """Escape &, < and > for mrkdwn, keeping references to people and channels (<@U123>, <#C123>) and links;
    bidirectional override characters are dropped."""
    parts = SLACK_REFERENCE.split(BIDI_CONTROLS.sub("", text))
    return "".join(part if i % 2 else escape_text(part) for i, part in enumerate(parts))


def escape_text(text: str) -> str:
    """Escape &, < and > for mrkdwn, every one: for text that no person typed to Slack (an alert's labels and
    annotations, filled in by rule templates from scraped metrics), where `<@U123>` would ping someone and
    `<https://…|Runbook>` would show a made-up label. Bidirectional override characters are dropped."""
    return BIDI_CONTROLS.sub("", text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def as_typed(text: str) -> str:
    """Slack's three escapes in a message's or a command's text undone (`&amp;` last, so `&amp;lt;` stays `&lt;`):
    what is searched, stored and shown again is what the person typed, `p99 > 2s`, not `p99 &gt; 2s`."""
    return text.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")


def link(url: str, label: str) -> str:
    """``label`` (mrkdwn already) linked to ``url``; the label alone when the address is not a plain web address: a
    `|` or `>` in it would end the link early and the rest (`<!channel>`) would be read as mrkdwn of its own."""
    return f"<{url}|{label}>" if WEB_ADDRESS.fullmatch(url) else label


def section(text: str, block_id: str | None = None) -> dict:
    block: dict = {"type": "section", "text": {"type": "mrkdwn", "text": text[:MAX_TEXT]}}
    if block_id:
        block["block_id"] = block_id
    return block


def context(text: str, block_id: str | None = None) -> dict:
    block: dict = {"type": "context", "elements": [{"type": "mrkdwn", "text": text[:MAX_TEXT]}]}
    if block_id:
        block["block_id"] = block_id
    return block


def confirm(title: str, text: str, yes: str) -> dict:
    """The dialog Slack shows before a button's click counts (``text`` in mrkdwn, cut to Slack's 300)."""
    return {
        "title": {"type": "plain_text", "text": title},
        "text": {"type": "mrkdwn", "text": text[:300]},
        "confirm": {"type": "plain_text", "text": yes},
        "deny": {"type": "plain_text", "text": "Cancel"},
    }
