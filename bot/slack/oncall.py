"""/oncall [team|service|@person|me]: who is on call now and who is next, or one person's turns, from experts.yaml."""

from __future__ import annotations

import logging
import re

from slack_bolt import Ack

from bot.errors import InvalidRequest
from bot.runtime import Runtime
from bot.slack.blocks.oncall import build_oncall_blocks, build_turns_blocks, oncall_fallback_text, turns_fallback_text
from bot.slack.listeners import Listeners
from bot.slack.web import SlackWeb

log = logging.getLogger(__name__)
MENTION = re.compile(r"<@([UW][A-Z0-9]+)(?:\|[^>]*)?>")


def person_asked(target: str, user: str) -> str:
    """The person `/oncall` asks about: a mention alone (`/oncall @Daniel`), or `me`; "" for a team or service."""
    if target.lower() == "me":
        return user
    found = MENTION.fullmatch(target)
    return found[1] if found else ""


def register(on: Listeners, runtime: Runtime, web: SlackWeb) -> None:
    """/oncall: answered only to whoever asked, like /experts."""

    def ack_oncall(ack: Ack, command: dict) -> None:
        ack(response_type="ephemeral", text="Looking at the rota…")

    def answer(command: dict, body: dict) -> None:
        target = (command.get("text") or "").strip()
        rota = runtime.rota()
        names = {e.id: e.name for e in rota.experts}
        person = person_asked(target, command.get("user_id", ""))
        answers = []
        if not person:  # a team or a service first; else someone's name (`/oncall Daniel`)
            try:
                answers = rota.answer(target)
            except InvalidRequest:
                person = rota.person_named(target) or ""
                if not person:
                    raise
        if person:  # /oncall @someone or /oncall me: their turns on every rota that has them
            turns = rota.turns(person)
            name = names.get(person, person)
            log.info("oncall answered person=%s user=%s rotas=%d", person, command.get("user_id"), len(turns))
            blocks = build_turns_blocks(name, turns)
            web.respond(body["response_url"], turns_fallback_text(name, turns), blocks, replace_original=True)
            return
        log.info("oncall answered target=%s user=%s rotas=%d", target, command.get("user_id"), len(answers))
        web.respond(
            body["response_url"],
            oncall_fallback_text(answers, names),
            build_oncall_blocks(answers, names),
            replace_original=True,
        )

    on.command("/oncall", answer, ack=ack_oncall)
