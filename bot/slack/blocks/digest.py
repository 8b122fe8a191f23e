"""The weekly digest message (a pure function of the figures)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from bot.slack.blocks.mrkdwn import MAX_TEXT, context, section

if TYPE_CHECKING:  # types only: building blocks needs neither the store nor a service
    from bot.ops.digest import Figures

MAX_SERVICE_SECTIONS = 45  # Slack takes 50 blocks a message; the header, the total and the footer take three


def build_digest_blocks(env: str, figures: Figures) -> list[dict]:
    """Every service's line, in as many sections as their length needs; past Slack's block limit, how many more."""
    overall, each = figures
    lines = [f"*{name}*: {dora.line()}"[:MAX_TEXT] for name, dora in each]
    pages: list[list[str]] = []
    for line in lines:
        if pages and len("\n".join([*pages[-1], line])) <= MAX_TEXT:
            pages[-1].append(line)
        else:
            pages.append([line])
    shown = pages[:MAX_SERVICE_SECTIONS]
    more = len(lines) - sum(len(page) for page in shown)
    if more:  # the last section gives up lines for the note, so no service is dropped without a word
        note = f"… and {more} more services: `opsbot dora --env {env} --service NAME` shows each."
        while shown[-1] and len("\n".join([*shown[-1], note])) > MAX_TEXT:
            shown[-1].pop()
            more += 1
            note = f"… and {more} more services: `opsbot dora --env {env} --service NAME` shows each."
        shown[-1].append(note)
    body = [section("\n".join(page)) for page in shown] or [section("No deployable services.")]
    return [
        {"type": "header", "text": {"type": "plain_text", "text": f"Weekly delivery figures ({env})"}},
        section(f"*All services*: {overall.line()}"),
        *body,
        context("DORA figures of Slack and CI/CD deploys; `opsbot dora` shows them too."),
    ]
