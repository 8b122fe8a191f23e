"""The weekly digest message (a pure function of the figures)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from bot.slack.blocks.mrkdwn import context, section

if TYPE_CHECKING:  # types only: building blocks needs neither the store nor a service
    from bot.ops.digest import Figures


def build_digest_blocks(env: str, figures: Figures) -> list[dict]:
    overall, each = figures
    lines = [f"*{name}*: {dora.line()}" for name, dora in each]
    return [
        {"type": "header", "text": {"type": "plain_text", "text": f"Weekly delivery figures ({env})"}},
        section(f"*All services*: {overall.line()}"),
        section("\n".join(lines) or "No deployable services."),
        context("DORA figures of Slack and CI/CD deploys; `opsbot dora` shows them too."),
    ]
