"""Answers in Slack: mentions, direct messages, channels that opted in, /ask, /experts, and the answer buttons
(feedback, share, invite)."""

from __future__ import annotations

import logging
import re
import unicodedata
from datetime import UTC, datetime

from slack_bolt import Ack

from bot.errors import InvalidRequest, NotFound
from bot.runtime import Runtime
from bot.slack import ids
from bot.slack.blocks.answers import (
    HELP_REQUEST,
    HELP_TEXT,
    answer_fallback_text,
    build_answer_blocks,
    build_experts_blocks,
    build_help_blocks,
    build_shared_answer_blocks,
    build_usage_blocks,
    build_vote_ack_text,
    experts_fallback_text,
    shown_answer,
)
from bot.slack.blocks.mrkdwn import as_typed, escape
from bot.slack.listeners import ACK_WAIT_S, Listeners, clicked_channel, tell_requester
from bot.slack.web import Notify, SlackWeb

log = logging.getLogger(__name__)
MENTION = re.compile(r"<@[UW][A-Z0-9]+>")
EXPERTS_USAGE = "/experts TEXT [--service NAME]"
ANSWER_ALL = "all"  # the channel setting that makes opsbot answer questions without a mention
INVITE_ERRORS = {
    "already_in_channel": "{name} is already in this channel.",
    "not_in_channel": "I need to be in this channel to invite people: type `/invite @opsbot` first.",
    "method_not_supported_for_channel_type": "Invites work in channels, not in direct messages.",
    "cant_invite_self": "That is me.",
    "user_is_restricted": "{name} is a guest account and can't be invited here.",
}


# Messages a person typed: plain (no subtype), sent to the channel as well from a thread, with a file attached,
# or /me. Slack's own subtypes (edits, deletions, joins, bot posts) are not questions.
TYPED = frozenset({None, "thread_broadcast", "file_share", "me_message"})

SHARED_HOOK = "answer-shared"  # after-delivery hook: the private answer, shared, is taken away


def answer_in_thread(runtime: Runtime, web: SlackWeb, event: dict) -> None:
    """Reply in the message's thread with the answer to its text."""
    question = as_typed(MENTION.sub(" ", event.get("text") or "")).strip()
    channel = event["channel"]
    thread_ts = event.get("thread_ts") or event["ts"]
    if not question:
        web.post(
            channel,
            "I read a message's text, not the files attached to it: paste the alert or the log lines as text."
            if event.get("files")
            else "Ask me a question, or paste an alert or a log line: I'll look in the runbooks and past incidents.",
            thread_ts=thread_ts,
        )
        return
    if HELP_REQUEST.match(question):
        web.post(channel, HELP_TEXT, build_help_blocks(), thread_ts=thread_ts)
        log.info("help shown channel=%s user=%s", channel, event.get("user"))
        return
    reply = runtime.answers.reply(question, channel=channel, user=event.get("user", ""), thread_ts=thread_ts)
    web.post(channel, answer_fallback_text(reply), build_answer_blocks(reply), thread_ts=thread_ts)
    log.info("answered channel=%s user=%s answer_id=%s found=%s", channel, event.get("user"), reply.id, reply.found)


# What people write under an answer to close a conversation, not to ask again. In a DM every message is answered
# (a pasted alert name or log line in a thread too), but these alone are not.
ACKNOWLEDGEMENTS = frozenset(
    "thanks thank thx ty you ok okay k cool great nice perfect awesome got it will do sure yes no np cheers "
    # the words a thanks is said with: "thanks a lot", "many thanks", "that worked", "perfect, that fixed it", "lgtm"
    "a lot so much many very that this worked works fixed helped helps lgtm try all good".split()
)


EMOJI_CODE = re.compile(r":[a-z0-9_+'-]+:")


def is_acknowledgement(text: str) -> bool:
    """Whether a message is only a thanks or an ok (mentions aside), at most a few words, or only emoji. A question
    mark, a link, a number or a word of any other script makes it a message to answer."""
    lowered = text.lower()
    if "?" in lowered or "<http" in lowered:
        return False
    rest = re.sub(r"<[^>]*>", " ", lowered)  # mentions of opsbot or anyone
    words = re.findall(r"\w+(?:'\w+)?", EMOJI_CODE.sub(" ", rest))
    if not words:  # :+1: or :pray: alone, as Slack sends emoji; or the emoji themselves (🙏), as a client may
        return bool(EMOJI_CODE.search(rest)) or _only_emoji(EMOJI_CODE.sub(" ", rest))
    return len(words) <= 4 and all(w in ACKNOWLEDGEMENTS for w in words)


def _only_emoji(text: str) -> bool:
    """Whether ``text`` holds symbols, and nothing else but spaces and what joins or styles them (👍🏽, 👩‍💻, ❤️)."""
    marks = [unicodedata.category(c) for c in text if not c.isspace()]
    return "So" in marks and all(m in ("So", "Sk", "Mn", "Me", "Cf") for m in marks)


def looks_like_a_question(text: str) -> bool:
    """In channels that opted in, answer questions and pasted alerts, not every chat line."""
    stripped = text.strip()
    if len(stripped) < 8:
        return False
    alertish = re.search(
        r"(?i)\b(error|fail|fatal|alert|firing|exception|timeout|denied|refused|oom|5\d\d)\b", stripped
    )
    return stripped.endswith("?") or bool(alertish) or stripped.lower().startswith(("how ", "what ", "why ", "where "))


def split_service_options(raw: str) -> tuple[str, list[str]]:
    """`checkout slow --service checkout-api` -> ("checkout slow", ["checkout-api"]); an option without a name
    is refused (it would be searched as text, or asked about as a service called '')."""
    words, services = [], []
    parts = raw.split()
    i = 0
    while i < len(parts):
        part = parts[i]
        if part.startswith("--service="):
            option, value = "--service=", part.split("=", 1)[1]
        elif part in ("--service", "-s"):
            option, value = part, parts[i + 1] if i + 1 < len(parts) else ""
            i += 1
        else:
            words.append(part)
            i += 1
            continue
        if not value:
            raise InvalidRequest(f"{option} needs a service name after it: {EXPERTS_USAGE}.")
        services.append(value)
        i += 1
    return " ".join(words), services


def register(on: Listeners, runtime: Runtime, web: SlackWeb) -> None:
    # A shared answer replaces the private one only once Slack took it: a share refused (a private channel or a
    # DM opsbot is not in) leaves the private answer where it was, with a note saying why.
    # A share refused for good gives the answer back: once opsbot is invited, Share can be pressed again.
    def take_private_answer_away(args: dict, channel: str, ts: str) -> None:
        if args.get("response_url"):
            web.respond(args["response_url"], delete_original=True)

    def release_share(args: dict, error: str) -> None:
        if args.get("answer_id"):  # rows queued before the id was recorded keep their claim
            runtime.answers.unshare(str(args["answer_id"]))

    web.on(SHARED_HOOK, take_private_answer_away, failed=release_share)

    # -- messages ---------------------------------------------------------------------------------------

    def answer_mention(event: dict) -> None:
        if event.get("bot_id") or event.get("subtype") not in TYPED:
            return  # another bot's post or an edit: answering bots is how bot-to-bot loops start
        thread = event.get("thread_ts")
        if (
            thread not in (None, event.get("ts"))
            and is_acknowledgement(event.get("text") or "")
            and runtime.answered_in(event.get("channel", ""), thread)
        ):
            return  # "@opsbot thanks!" under its answer: the whole answer again, for the channel, helps nobody
        answer_in_thread(runtime, web, event)

    def answer_message(event: dict, context: dict) -> None:
        if event.get("bot_id") or event.get("subtype") not in TYPED:
            return  # our own posts, edits, joins: not questions
        text = event.get("text") or ""
        if event.get("channel_type") == "im":  # Slack sends no app_mention for a DM, mention or not
            in_thread = event.get("thread_ts") not in (None, event.get("ts"))
            if not (in_thread and is_acknowledgement(text)):  # "thanks" under an answer is not a new question
                answer_in_thread(runtime, web, event)
            return
        bot_user = context.get("bot_user_id") or ""
        if bot_user and f"<@{bot_user}>" in text:
            return  # the app_mention event answers it
        if runtime.answer_mode(event.get("channel", "")) != ANSWER_ALL or not looks_like_a_question(text):
            return  # chat ("ok", "thanks"), in a thread or not, is not a question
        if event.get("thread_ts") and not runtime.answered_in(event["channel"], event["thread_ts"]):
            return  # a human thread opsbot was never part of
        answer_in_thread(runtime, web, event)

    on.event("app_mention", answer_mention)
    on.event("message", answer_message)

    # -- /ask and /experts --------------------------------------------------------------------------------

    def ack_ask(ack: Ack, command: dict) -> None:
        if not (command.get("text") or "").strip():
            blocks = build_usage_blocks(runtime.examples(ACK_WAIT_S).question())
            ack(response_type="ephemeral", text="Usage: /ask QUESTION", blocks=blocks)
        elif HELP_REQUEST.match(command["text"]):
            ack(response_type="ephemeral", text=HELP_TEXT, blocks=build_help_blocks())
        else:
            ack(response_type="ephemeral", text=f"Looking for: {command['text'].strip()[:150]}")

    def answer_ask(command: dict, body: dict) -> None:
        question = as_typed(command.get("text") or "").strip()
        if not question or HELP_REQUEST.match(question):
            return  # usage or help was shown by the acknowledgement
        channel, user = command.get("channel_id", ""), command.get("user_id", "")
        reply = runtime.answers.reply(question, channel=channel, user=user, shown=shown_answer)  # Share posts it
        web.respond(
            body["response_url"],
            answer_fallback_text(reply),
            build_answer_blocks(reply, with_share=True),
            replace_original=True,
        )

    def ack_experts(ack: Ack, command: dict) -> None:
        if not (command.get("text") or "").strip():
            ack(
                response_type="ephemeral",
                text=f"Usage: {EXPERTS_USAGE}, for example {runtime.examples(ACK_WAIT_S).experts_usage()}",
            )
        else:
            ack(response_type="ephemeral", text="Looking for the right people…")

    def suggest(command: dict, body: dict) -> None:
        raw = as_typed(command.get("text") or "").strip()
        if not raw:
            return
        text, services = split_service_options(raw)
        suggestions = runtime.answers.suggest_experts(text, services or None, asker=command.get("user_id", ""))
        channel = command.get("channel_id", "")
        web.respond(
            body["response_url"],
            experts_fallback_text(suggestions),
            build_experts_blocks(text, suggestions, can_invite=not channel.startswith("D")),
            replace_original=True,
        )

    on.command("/ask", answer_ask, ack=ack_ask)
    on.command("/experts", suggest, ack=ack_experts)

    # -- buttons on answers ---------------------------------------------------------------------------------

    def vote(body: dict, value: int) -> None:
        action = body["actions"][0]
        user = body["user"]["id"]
        changed, path = runtime.answers.vote(action["value"], user, value)
        log.info("feedback answer_id=%s user=%s vote=%d path=%s", action["value"], user, value, path)
        # Through the button's response_url: chat.postEphemeral fails where opsbot is not a member (/ask).
        tell_requester(web, body, build_vote_ack_text(value, changed, path))

    def record_helpful(body: dict) -> None:
        vote(body, 1)

    def record_unhelpful(body: dict) -> None:
        vote(body, -1)

    def share_answer(body: dict) -> None:
        user = body["user"]["id"]
        channel = clicked_channel(body)
        answer_id = body["actions"][0]["value"]
        saved = runtime.answers.shareable(answer_id, user, channel)
        already = f"This answer was already shared in <#{saved['channel'] or channel}>."
        if runtime.answers.shared(answer_id):  # the claim below decides; this spares a second press the search
            tell_requester(web, body, already)
            return
        shown = saved["shown"]
        if shown is None:  # saved before answers kept what they showed: searched again, shared only if unchanged
            reply = runtime.answers.ask_again(saved, user)  # before the claim
            text, blocks = answer_fallback_text(reply), build_answer_blocks(reply, shared_by=user)
        else:
            text, blocks = shown["text"], build_shared_answer_blocks(shown, user)

        url = body.get("response_url", "")

        def post() -> None:  # the private answer goes once the shared one is in the channel, not before
            web.post(
                saved["channel"] or channel,
                text,
                blocks,
                notify=Notify(response_url=url),
                after=(SHARED_HOOK, {"response_url": url, "answer_id": answer_id}),
            )

        if not runtime.answers.claim_share(answer_id, post):
            tell_requester(web, body, already)

    def invite_expert(body: dict) -> None:
        person = body["actions"][0]["value"]
        channel = clicked_channel(body)
        user = body["user"]["id"]
        expert = runtime.roster().get(person)
        if expert is None:
            raise NotFound(f"{person} is no longer on the roster; run /experts again.")
        if expert.has_left(datetime.now(UTC)):  # suggested before they left
            raise NotFound(f"{escape(expert.name)} left on {expert.left}; run /experts again to find someone else.")
        invited, error = web.try_call("conversations.invite", channel=channel, users=person)
        name = escape(expert.name)  # the roster's words, shown as text
        if invited is not None:
            text = f"Invited {name} (<@{person}>) to this channel."
            log.info("invited expert=%s channel=%s by=%s", person, channel, user)
        else:
            text = INVITE_ERRORS.get(error, f"Slack refused the invite ({error}).").format(name=name)
        web.tell_user(channel, user, text)

    on.action(ids.INVITE_EXPERT, invite_expert)
    on.action(ids.FEEDBACK_UP, record_helpful)
    on.action(ids.FEEDBACK_DOWN, record_unhelpful)
    on.action(ids.SHARE_ANSWER, share_answer)
