"""/deploy, /rollback and their Approve/Reject buttons; the sweeper of expired, stale and interrupted deploys.

The state machine is ``bot.ops.deploys.DeployService``; what each of its changes shows in Slack is
``bot.slack.deploy_posts.SlackAnnouncer``, written to the outbox in the change's own transaction. This
module turns commands and clicks into domain calls, tells the clicker privately when a click did not
count, and hands an approved request to the deploy pool at once.
"""

from __future__ import annotations

import json
import logging
import re
from typing import Any

from slack_bolt import Ack

from bot.errors import InvalidRequest, OpsbotError
from bot.ops import runner as deploy_runner
from bot.ops.deploys import DeployService
from bot.ops.requests import DeployRequest
from bot.runtime import Runtime
from bot.slack import ids
from bot.slack.blocks.deploys import build_refusal_text, build_standing_blocks
from bot.slack.deploy_posts import MESSAGE_HOOK, SlackAnnouncer
from bot.slack.listeners import ACK_WAIT_S, Listeners, clicked_channel, tell_requester
from bot.slack.web import SlackWeb
from bot.text import SERVICE_NAME

log = logging.getLogger(__name__)


def parse_deploy_args(text: str) -> tuple[str, str, str] | None:
    """`SERVICE VERSION ENV`; the version is kept exactly as typed, so a hostile one is refused by name."""
    match = re.fullmatch(r"(\S+)\s+(.+?)\s+(\S+)", (text or "").strip(), re.S)
    return (match[1], match[2], match[3]) if match else None


def asks_where_it_stands(text: str) -> bool:
    """`/deploy SERVICE` alone: where the service stands in each environment (one word that can be a service;
    `help` asks for the usage)."""
    words = (text or "").split()
    return len(words) == 1 and words[0].lower() != "help" and SERVICE_NAME.fullmatch(words[0]) is not None


def parse_rollback_args(text: str) -> tuple[str, str, str | None] | None:
    """`SERVICE ENV [VERSION]`."""
    match = re.fullmatch(r"(\S+)\s+(\S+)(?:\s+(.+))?", (text or "").strip(), re.S)
    return (match[1], match[2], match[3]) if match else None


def what_is_missing(text: str, needed: tuple[str, ...]) -> str:
    """Which of the needed words a too-short command left out, as the first line of its usage."""
    given = len((text or "").split())
    if not given or given >= len(needed) or (text or "").strip().lower() == "help":
        return ""
    return f"Missing {' and '.join(needed[given:])}.\n"


def register(on: Listeners, runtime: Runtime, web: SlackWeb) -> None:

    def remember_message(args: dict, channel: str, ts: str) -> None:
        runtime.deploys().set_message(args["request_id"], channel, ts)

    web.on(MESSAGE_HOOK, remember_message)
    runtime.announcer = SlackAnnouncer(web)  # every deploy state change shows in Slack through this app's outbox

    def ack_deploy(ack: Ack, command: dict) -> None:
        if asks_where_it_stands(command.get("text", "")):
            ack(response_type="ephemeral", text=f"Looking at {command['text'].strip()}…")
        elif parse_deploy_args(command.get("text", "")) is None:
            missing = what_is_missing(command.get("text", ""), ("SERVICE", "VERSION", "ENV"))
            ack(response_type="ephemeral", text=missing + runtime.examples(ACK_WAIT_S).deploy_usage())
        else:
            ack(response_type="ephemeral", text="Requesting the deploy…")

    def ack_rollback(ack: Ack, command: dict) -> None:
        if parse_rollback_args(command.get("text", "")) is None:
            missing = what_is_missing(command.get("text", ""), ("SERVICE", "ENV"))
            ack(response_type="ephemeral", text=missing + runtime.examples(ACK_WAIT_S).rollback_usage())
        else:
            ack(response_type="ephemeral", text="Requesting the rollback…")

    def request_deploy(command: dict, body: dict) -> None:
        if asks_where_it_stands(command.get("text", "")):  # `/deploy SERVICE`: what runs where, before choosing
            service, deploys = command["text"].strip(), runtime.deploys()
            states = deploys.where_things_stand(service)
            usage = f"To deploy: `/deploy {service} VERSION ENV` · to roll back: `/rollback {service} ENV`."
            names = deploys.names()
            text = f"{service}: " + "; ".join(
                f"{s.env} {s.current.version if s.current else 'nothing deployed yet'}" for s in states
            )
            web.respond(
                body["response_url"], text, build_standing_blocks(service, states, names, usage), replace_original=True
            )
            return
        args = parse_deploy_args(command.get("text", ""))
        if args is None:
            return  # the acknowledgement showed the usage
        service, version, env = args
        tell_where_posted(web, body, command, submit(runtime.deploys(), command, "deploy", service, env, version))

    def request_rollback(command: dict, body: dict) -> None:
        args = parse_rollback_args(command.get("text", ""))
        if args is None:
            return
        service, env, version = args
        tell_where_posted(web, body, command, submit(runtime.deploys(), command, "rollback", service, env, version))

    def approve(body: dict) -> None:
        decide(runtime, web, body, "approve")

    def reject(body: dict) -> None:
        decide(runtime, web, body, "reject")

    on.command("/deploy", request_deploy, ack=ack_deploy)
    on.command("/rollback", request_rollback, ack=ack_rollback)

    def rollback_failed(body: dict) -> None:
        rollback_after_failure(runtime, body)

    on.action(ids.DEPLOY_APPROVE, approve)
    on.action(ids.DEPLOY_REJECT, reject)
    on.action(ids.DEPLOY_ROLLBACK, rollback_failed)


# -- requesting -------------------------------------------------------------------------------------


def submit(
    deploys: DeployService, command: dict, kind: str, service: str, env: str, version: str | None
) -> DeployRequest:
    """Validate and record through DeployService (which raises on anything wrong); its announcer posts it."""
    user, channel = command.get("user_id", ""), command.get("channel_id", "")
    config = deploys.services.get(service)
    fallback = (config.channel if config else "") or deploys.settings.channel
    if is_direct_message(channel):  # only the requester sees it there: nobody could approve it, and it holds the lock
        if not fallback:
            raise OpsbotError(
                f"nobody who may approve it would see a request in a direct message: type /{kind} in a channel "
                "your approvers are in (or set settings.deploys_channel in services.yaml)."
            )
        channel = fallback
    if not channel and not fallback:
        raise OpsbotError("there is no channel to post the request in: set settings.deploys_channel in services.yaml.")
    return deploys.request(kind, service, env, version, user, channel=channel)


def is_direct_message(channel: str) -> bool:
    """Whether a channel id is a direct message (with opsbot, or between two people)."""
    return channel.startswith("D")


def tell_where_posted(web: SlackWeb, body: dict, command: dict, request: DeployRequest) -> None:
    """A request typed in a direct message is posted in the deploys channel: the requester is told where."""
    if is_direct_message(command.get("channel_id", "")) and request.channel:
        tell_requester(
            web,
            body,
            f"Your {request.kind} request `{request.id}` is in <#{request.channel}>: in a direct message nobody who "
            "may approve it would see it.",
        )


def read_rollback_button(raw: str) -> dict[str, str]:
    """What the Rollback button of a failed deploy carries (see rollback_button_value); else it is not opsbot's."""
    try:
        value: Any = json.loads(raw)
    except ValueError:
        value = None
    names = ("service", "env", "version")
    if not isinstance(value, dict) or not all(isinstance(value.get(n), str) for n in names):
        raise InvalidRequest("that Rollback button is not one opsbot posted: use `/rollback SERVICE ENV` instead.")
    return value


def rollback_after_failure(runtime: Runtime, body: dict) -> DeployRequest:
    """The Rollback button under a failed deploy's summary: a rollback request through the approval flow."""
    value = read_rollback_button(body["actions"][0]["value"])
    user = body["user"]["id"]
    channel = clicked_channel(body)
    command = {"user_id": user, "channel_id": channel}
    deploys = runtime.deploys()
    if value.get("deploy"):
        deploys.check_offer_stands(str(value["deploy"]), value["service"], value["env"], value["version"])
    request = submit(deploys, command, "rollback", value["service"], value["env"], value["version"])
    log.info("rollback requested after a failed deploy=%s request=%s by=%s", value.get("deploy"), request.id, user)
    return request


# -- deciding and running ---------------------------------------------------------------------------


def decide(runtime: Runtime, web: SlackWeb, body: dict, decision: str) -> None:
    """An Approve or Reject click: the clicker is told privately when it did not count; an approved run is
    handed to the deploy pool at once (what the message shows was queued with the decision)."""
    deploys = runtime.deploys()
    request_id = body["actions"][0]["value"]
    user = body["user"]["id"]
    result = deploys.approve(request_id, user) if decision == "approve" else deploys.reject(request_id, user)
    log.info("deploy decision id=%s user=%s decision=%s outcome=%s", request_id, user, decision, result.outcome)
    if result.start:
        # Queued with its lease kept meanwhile; run against services.yaml as it is when a worker is free.
        approved = result.request
        deploy_runner.queue(runtime.runners, deploys, approved.id, lambda: run(runtime.deploys(), approved))
        return
    request = result.request
    clicked_in = (body.get("channel") or {}).get("id") or request.channel
    if result.outcome == "closed":  # the message still had buttons: it missed a change (from the command line, say)
        deploys.show_as_it_stands(request.id)
    if result.outcome in ("refused", "closed"):
        web.tell_user(clicked_in, user, build_refusal_text(result))
    elif result.outcome == "recorded":
        web.tell_user(clicked_in, user, f"Noted: {result.message}")


def run(deploys: DeployService, request: DeployRequest) -> DeployRequest:
    """Run an approved request; its output is followed in the thread when the service has an announcer."""
    announcer = deploys.announcer

    def show_progress(current: DeployRequest, output: str) -> None:
        if isinstance(announcer, SlackAnnouncer):
            announcer.show_progress(current, deploys, output)

    return deploys.execute(request.id, progress=show_progress)
