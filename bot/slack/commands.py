"""Slash commands: /ask."""

from __future__ import annotations

from slack_bolt import Ack, App

from bot.runtime import Runtime
from bot.slack.blocks import (
    HELP_REQUEST,
    HELP_TEXT,
    answer_fallback_text,
    build_answer_blocks,
    build_experts_blocks,
    build_help_blocks,
    build_usage_blocks,
)
from bot.slack.guard import guard
from bot.slack.web import SlackWeb


def register(app: App, runtime: Runtime, web: SlackWeb) -> None:
    def ack_ask(ack: Ack, command: dict) -> None:
        if not (command.get("text") or "").strip():
            ack(response_type="ephemeral", text="Usage: /ask QUESTION", blocks=build_usage_blocks())
        elif HELP_REQUEST.match(command["text"]):
            ack(response_type="ephemeral", text=HELP_TEXT, blocks=build_help_blocks())
        else:
            ack(response_type="ephemeral", text=f"Looking for: {command['text'].strip()[:150]}")

    @guard(web)
    def answer_ask(command: dict, body: dict) -> None:
        question = (command.get("text") or "").strip()
        if not question or HELP_REQUEST.match(question):
            return  # usage or help was shown by the acknowledgement
        reply = runtime.reply(question, channel=command.get("channel_id", ""), user=command.get("user_id", ""))
        web.respond(
            body["response_url"],
            answer_fallback_text(reply),
            build_answer_blocks(reply, with_share=True),
            replace_original=True,
        )

    app.command("/ask")(ack=ack_ask, lazy=[answer_ask])
    register_experts(app, runtime, web)


def register_experts(app: App, runtime: Runtime, web: SlackWeb) -> None:
    """/experts TEXT [--service S]: who to pull in, with Invite buttons."""

    def ack_experts(ack: Ack, command: dict) -> None:
        if not (command.get("text") or "").strip():
            ack(
                response_type="ephemeral",
                text="Usage: /experts TEXT [--service NAME], for example "
                "`/experts checkout 503s after deploy --service checkout-api`",
            )
        else:
            ack(response_type="ephemeral", text="Looking for the right people…")

    @guard(web)
    def suggest(command: dict, body: dict) -> None:
        raw = (command.get("text") or "").strip()
        if not raw:
            return
        text, services = split_service_options(raw)
        suggestions = runtime.suggest_experts(text, services or None, asker=command.get("user_id", ""))
        channel = command.get("channel_id", "")
        web.respond(
            body["response_url"],
            f"Suggested: {', '.join(s.expert.name for s in suggestions) or 'nobody'}",
            build_experts_blocks(text, suggestions, can_invite=not channel.startswith("D")),
            replace_original=True,
        )

    app.command("/experts")(ack=ack_experts, lazy=[suggest])


def split_service_options(raw: str) -> tuple[str, list[str]]:
    """`checkout slow --service checkout-api` -> ("checkout slow", ["checkout-api"])."""
    words, services = [], []
    parts = raw.split()
    i = 0
    while i < len(parts):
        if parts[i] in ("--service", "-s") and i + 1 < len(parts):
            services.append(parts[i + 1])
            i += 2
            continue
        if parts[i].startswith("--service="):
            services.append(parts[i].split("=", 1)[1])
        else:
            words.append(parts[i])
        i += 1
    return " ".join(words), services
