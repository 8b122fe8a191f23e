"""/oncall [team|service|@person|me] [--at WHEN]: who is on call now (or then) and who is next, or one person's turns,
from experts.yaml."""

from __future__ import annotations

import logging
import re
from datetime import UTC, datetime

from slack_bolt import Ack

from bot.errors import InvalidRequest
from bot.rota import asked_time, parse_at
from bot.runtime import Runtime
from bot.slack.blocks.oncall import build_oncall_blocks, build_turns_blocks, oncall_fallback_text, turns_fallback_text
from bot.slack.listeners import Listeners
from bot.slack.web import SlackWeb
from bot.text import SLACK_MENTION

log = logging.getLogger(__name__)
AT = re.compile(r"(?:^|\s)--at(?:[\s=]+(\S+)|\s*$)")  # `--at WHEN` anywhere; a bare `--at` has no group


def split_at(text: str) -> tuple[str, datetime | None]:
    """`/oncall payments --at 2026-12-24T20:00Z`: (the rest, the time asked about); None when no `--at` is given."""
    found = AT.search(text)
    if found is None:
        return text.strip(), None
    if not found[1]:
        raise InvalidRequest("--at needs a time after it, like `/oncall payments --at 2026-12-24T20:00Z` (UTC).")
    rest = (text[: found.start()] + " " + text[found.end() :]).strip()
    if AT.search(rest):
        raise InvalidRequest("give --at once: `/oncall [TEAM, SERVICE, @person or me] [--at 2026-12-24T20:00Z]`.")
    return rest, parse_at(found[1])


def person_asked(target: str, user: str) -> str:
    """The person `/oncall` asks about: a mention alone (`/oncall @Daniel`), or `me`; "" for a team or service."""
    if target.lower() == "me":
        return user
    found = SLACK_MENTION.fullmatch(target)
    return found[1] if found else ""


def register(on: Listeners, runtime: Runtime, web: SlackWeb) -> None:
    """/oncall: answered only to whoever asked, like /experts."""

    def ack_oncall(ack: Ack, command: dict) -> None:
        ack(response_type="ephemeral", text="Looking at the rota…")

    def answer(command: dict, body: dict) -> None:
        target, at = split_at(command.get("text") or "")
        when = at or datetime.now(UTC)
        then = asked_time(at)
        rota = runtime.rota()
        names = {e.id: e.name for e in rota.experts}
        person = person_asked(target, command.get("user_id", ""))
        answers = []
        if not person:  # a team or a service first; else someone's name (`/oncall Daniel`)
            try:
                answers = rota.answer(target, when)
            except InvalidRequest:
                person = rota.person_named(target) or ""
                if not person:
                    raise
        if person:  # /oncall @someone or /oncall me: their turns on every rota that has them
            turns = rota.turns(person, when)
            name = names.get(person, person)
            log.info("oncall answered person=%s user=%s rotas=%d", person, command.get("user_id"), len(turns))
            blocks = build_turns_blocks(name, turns, then)
            web.respond(body["response_url"], turns_fallback_text(name, turns, then), blocks, replace_original=True)
            return
        log.info("oncall answered target=%s user=%s rotas=%d", target, command.get("user_id"), len(answers))
        web.respond(
            body["response_url"],
            oncall_fallback_text(answers, names, then),
            build_oncall_blocks(answers, names, then),
            replace_original=True,
        )

    on.command("/oncall", answer, ack=ack_oncall)
