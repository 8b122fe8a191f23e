"""/oncall [team|service]: who is on call now and who is next, from the rotations in experts.yaml."""

from __future__ import annotations

import logging

from slack_bolt import Ack, App

from bot.rota import OnCall, describe
from bot.runtime import Runtime
from bot.slack.guard import guard
from bot.slack.web import SlackWeb

log = logging.getLogger(__name__)
MAX_TEXT = 2900


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def build_oncall_blocks(answers: list[OnCall] | tuple[OnCall, ...], names: dict[str, str]) -> list[dict]:
    """One line per rota: who is on call until when, and who is next from when (in the rota's time zone)."""
    lines = []
    for answer in answers:
        now, following = describe(answer, {k: _escape(v) for k, v in names.items()}, mention=True)
        line = f"*{_escape(answer.team)}*: " + (now or "nobody on call from the rota now")
        if following:
            line += f"\n    next: {following}"
        lines.append(line)
    text = "\n".join(lines)[:MAX_TEXT]
    context = "From the rotations in experts.yaml; times are each rota's own time zone."
    return [
        {"type": "section", "text": {"type": "mrkdwn", "text": f":pager: *On call*\n{text}"}},
        {"type": "context", "elements": [{"type": "mrkdwn", "text": context}]},
    ]


def oncall_fallback_text(answers: list[OnCall] | tuple[OnCall, ...], names: dict[str, str]) -> str:
    """Plain text for notifications: "On call: payments: Priya Raman; platform: Daniel Okafor"."""
    parts = [f"{a.team}: {names.get(a.now.person, a.now.person) if a.now else 'nobody'}" for a in answers]
    return "On call: " + "; ".join(parts)


def register(app: App, runtime: Runtime, web: SlackWeb) -> None:
    """/oncall: answered only to whoever asked, like /experts."""

    def ack_oncall(ack: Ack, command: dict) -> None:
        ack(response_type="ephemeral", text="Looking at the rota…")

    @guard(web)
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

    app.command("/oncall")(ack=ack_oncall, lazy=[answer])
