"""Buttons: feedback on answers, and sharing an ephemeral answer in the channel."""

from __future__ import annotations

import logging

from slack_bolt import Ack, App

from bot.errors import NotFound
from bot.runtime import Runtime
from bot.slack import ids
from bot.slack.blocks import answer_fallback_text, build_answer_blocks, build_vote_ack_text
from bot.slack.guard import guard
from bot.slack.web import Notify, SlackWeb

log = logging.getLogger(__name__)
INVITE_ERRORS = {
    "already_in_channel": "{name} is already in this channel.",
    "not_in_channel": "I need to be in this channel to invite people: type `/invite @opsbot` first.",
    "method_not_supported_for_channel_type": "Invites work in channels, not in direct messages.",
    "cant_invite_self": "That is me.",
    "user_is_restricted": "{name} is a guest account and can't be invited here.",
}


def register(app: App, runtime: Runtime, web: SlackWeb) -> None:
    def just_ack(ack: Ack) -> None:
        ack()

    def vote(body: dict, value: int) -> None:
        action = body["actions"][0]
        user = body["user"]["id"]
        changed, path = runtime.vote(action["value"], user, value)
        log.info("feedback answer_id=%s user=%s vote=%d path=%s", action["value"], user, value, path)
        channel = (body.get("channel") or {}).get("id")
        text = build_vote_ack_text(value, changed, path)
        if channel:
            web.tell_user(channel, user, text)
        else:
            web.respond(body.get("response_url", ""), text)

    @guard(web)
    def record_helpful(body: dict) -> None:
        vote(body, 1)

    @guard(web)
    def record_unhelpful(body: dict) -> None:
        vote(body, -1)

    @guard(web)
    def share_answer(body: dict) -> None:
        saved = runtime.store.get_answer(body["actions"][0]["value"])
        if saved is None:
            raise NotFound("that answer is no longer known; ask again and share the new one.")
        user = body["user"]["id"]
        reply = runtime.reply(saved["query"], channel=saved["channel"], user=user)
        web.post(
            saved["channel"] or body["channel"]["id"],
            answer_fallback_text(reply),
            build_answer_blocks(reply, shared_by=user),
            notify=Notify(response_url=body.get("response_url", "")),
        )
        web.respond(body.get("response_url", ""), delete_original=True)

    @guard(web)
    def invite_expert(body: dict) -> None:
        person = body["actions"][0]["value"]
        channel = (body.get("channel") or {}).get("id") or (body.get("container") or {}).get("channel_id", "")
        user = body["user"]["id"]
        known = {e.id: e.name for e in runtime.store.load_experts()}
        if person not in known:
            raise NotFound(f"{person} is no longer on the roster; run /experts again.")
        invited, error = web.try_call("conversations.invite", channel=channel, users=person)
        if invited is not None:
            text = f"Invited {known[person]} (<@{person}>) to this channel."
            log.info("invited expert=%s channel=%s by=%s", person, channel, user)
        else:
            text = INVITE_ERRORS.get(error, f"Slack refused the invite ({error}).").format(name=known[person])
        web.tell_user(channel, user, text)

    app.action(ids.INVITE_EXPERT)(ack=just_ack, lazy=[invite_expert])
    app.action(ids.FEEDBACK_UP)(ack=just_ack, lazy=[record_helpful])
    app.action(ids.FEEDBACK_DOWN)(ack=just_ack, lazy=[record_unhelpful])
    app.action(ids.SHARE_ANSWER)(ack=just_ack, lazy=[share_answer])
