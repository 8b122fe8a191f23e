"""/oncall [team|service]: who is on call now and who is next, from the rotations in experts.yaml."""

from __future__ import annotations

import logging

from slack_bolt import Ack

from bot.runtime import Runtime
from bot.slack.blocks.oncall import build_oncall_blocks, oncall_fallback_text
from bot.slack.listeners import Listeners
from bot.slack.web import SlackWeb

log = logging.getLogger(__name__)


def register(on: Listeners, runtime: Runtime, web: SlackWeb) -> None:
    """/oncall: answered only to whoever asked, like /experts."""

    def ack_oncall(ack: Ack, command: dict) -> None:
        ack(response_type="ephemeral", text="Looking at the rota…")

    def answer(command: dict, body: dict) -> None:
        target = (command.get("text") or "").strip()
        rota = runtime.rota()
        answers = rota.answer(target)
        names = {e.id: e.name for e in rota.experts}
        log.info("oncall answered target=%s user=%s rotas=%d", target, command.get("user_id"), len(answers))
        web.respond(
            body["response_url"],
            oncall_fallback_text(answers, names),
            build_oncall_blocks(answers, names),
            replace_original=True,
        )

    on.command("/oncall", answer, ack=ack_oncall)
