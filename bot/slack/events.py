"""Mentions, direct messages and questions in channels that opted in."""

from __future__ import annotations

import logging
import re

from slack_bolt import Ack, App

from bot.runtime import Runtime
from bot.slack.blocks import HELP_REQUEST, HELP_TEXT, answer_fallback_text, build_answer_blocks, build_help_blocks
from bot.slack.guard import guard
from bot.slack.web import SlackWeb

log = logging.getLogger(__name__)
MENTION = re.compile(r"<@[UW][A-Z0-9]+>")
ANSWER_ALL = "all"  # the channel setting that makes opsbot answer questions without a mention


def just_ack(ack: Ack) -> None:
    ack()


def answer_in_thread(runtime: Runtime, web: SlackWeb, event: dict) -> None:
    """Reply in the message's thread with the answer to its text."""
    question = MENTION.sub(" ", event.get("text") or "").strip()
    channel = event["channel"]
    thread_ts = event.get("thread_ts") or event["ts"]
    if not question:
        web.post(
            channel,
            "Ask me a question, or paste an alert or a log line: I'll look in the runbooks and past incidents.",
            thread_ts=thread_ts,
        )
        return
    if HELP_REQUEST.match(question):
        web.post(channel, HELP_TEXT, build_help_blocks(), thread_ts=thread_ts)
        log.info("help shown channel=%s user=%s", channel, event.get("user"))
        return
    reply = runtime.reply(question, channel=channel, user=event.get("user", ""), thread_ts=thread_ts)
    web.post(channel, answer_fallback_text(reply), build_answer_blocks(reply), thread_ts=thread_ts)
    log.info("answered channel=%s user=%s answer_id=%s found=%s", channel, event.get("user"), reply.id, reply.found)


def looks_like_a_question(text: str) -> bool:
    """In channels that opted in, answer questions and pasted alerts, not every chat line."""
    stripped = text.strip()
    if len(stripped) < 8:
        return False
    alertish = re.search(
        r"(?i)\b(error|fail|fatal|alert|firing|exception|timeout|denied|refused|oom|5\d\d)\b", stripped
    )
    return stripped.endswith("?") or bool(alertish) or stripped.lower().startswith(("how ", "what ", "why ", "where "))


def register(app: App, runtime: Runtime, web: SlackWeb) -> None:
    @guard(web)
    def answer_mention(event: dict, body: dict) -> None:
        answer_in_thread(runtime, web, event)

    @guard(web)
    def answer_message(event: dict, body: dict, context: dict) -> None:
        if event.get("bot_id") or event.get("subtype"):
            return  # our own posts, edits, joins: not questions
        text = event.get("text") or ""
        bot_user = context.get("bot_user_id") or ""
        if bot_user and f"<@{bot_user}>" in text:
            return  # the app_mention event answers it
        if event.get("channel_type") == "im":
            answer_in_thread(runtime, web, event)
            return
        mode = runtime.store.channel_answer_modes().get(event.get("channel", ""), "mentions")
        if mode == ANSWER_ALL and (looks_like_a_question(text) or event.get("thread_ts")):
            if event.get("thread_ts") and runtime.store.thread_question(event["channel"], event["thread_ts"]) is None:
                return  # a human thread opsbot was never part of
            answer_in_thread(runtime, web, event)

    app.event("app_mention")(ack=just_ack, lazy=[answer_mention])
    app.event("message")(ack=just_ack, lazy=[answer_message])
