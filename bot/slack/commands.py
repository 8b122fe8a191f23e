"""Slash commands: /ask."""

from __future__ import annotations

from slack_bolt import Ack, App, Respond
from slack_sdk import WebClient

from bot.runtime import Runtime
from bot.slack.blocks import answer_fallback_text, build_answer_blocks, build_usage_blocks
from bot.slack.guard import guarded


def register(app: App, runtime: Runtime) -> None:
    def ack_ask(ack: Ack, command: dict) -> None:
        if not (command.get("text") or "").strip():
            ack(response_type="ephemeral", text="Usage: /ask QUESTION", blocks=build_usage_blocks())
        else:
            ack(response_type="ephemeral", text=f"Looking for: {command['text'].strip()[:150]}")

    @guarded
    def answer_ask(command: dict, body: dict, client: WebClient, respond: Respond) -> None:
        question = (command.get("text") or "").strip()
        if not question:
            return  # usage was shown by the acknowledgement
        reply = runtime.reply(question, channel=command.get("channel_id", ""), user=command.get("user_id", ""))
        respond(
            response_type="ephemeral",
            replace_original=True,
            text=answer_fallback_text(reply),
            blocks=build_answer_blocks(reply, with_share=True),
        )

    app.command("/ask")(ack=ack_ask, lazy=[answer_ask])
