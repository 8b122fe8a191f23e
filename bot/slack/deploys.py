"""/deploy, /rollback and their Approve/Reject buttons; the sweeper of expired, stale and interrupted deploys.

The state machine is ``bot.deploys.DeployService``; this module only shows its decisions in Slack, through
``SlackWeb`` (the outbox). An approved request is handed to the deploy pool before anything is shown, and
nothing it shows can block it: every post, edit and progress report is written to the outbox and delivered
by SlackWeb's own threads, with retries.
"""

from __future__ import annotations

import logging
import re
import threading
import zlib
from collections.abc import Iterator
from contextlib import contextmanager

from slack_bolt import Ack, App

from bot.deploys import DeployRequest, DeployService
from bot.errors import OpsbotError
from bot.metrics import dora
from bot.redact import scrub
from bot.runtime import Runtime
from bot.slack import ids
from bot.slack.deploy_blocks import (
    INTERRUPTED_TEXT,
    RequestView,
    build_deploy_request_blocks,
    build_deploy_summary_blocks,
    build_progress_text,
    build_refusal_text,
    request_fallback_text,
    summary_fallback_text,
)
from bot.slack.guard import guard
from bot.slack.web import Notify, SlackWeb

log = logging.getLogger(__name__)
USAGE_DEPLOY = "Usage: /deploy SERVICE VERSION ENV, for example `/deploy checkout-api 1.4.2 staging`"
USAGE_ROLLBACK = (
    "Usage: /rollback SERVICE ENV [VERSION], for example `/rollback checkout-api prod` "
    "(back to the version that succeeded before the current one) or `/rollback checkout-api prod 1.4.1`"
)
SWEEP_EVERY_S = 30.0
MESSAGE_HOOK = "deploy-message"  # after-delivery hook: remember where a request's message was posted
# Updates of one request's message are serialised (a striped lock: bounded, whatever the number of requests),
# so the newest state is always the last edit written to the outbox.
_MESSAGE_LOCKS = tuple(threading.Lock() for _ in range(32))


def parse_deploy_args(text: str) -> tuple[str, str, str] | None:
    """`SERVICE VERSION ENV`; the version is kept exactly as typed, so a hostile one is refused by name."""
    match = re.fullmatch(r"(\S+)\s+(.+?)\s+(\S+)", (text or "").strip(), re.S)
    return (match[1], match[2], match[3]) if match else None


def parse_rollback_args(text: str) -> tuple[str, str, str | None] | None:
    """`SERVICE ENV [VERSION]`."""
    match = re.fullmatch(r"(\S+)\s+(\S+)(?:\s+(.+))?", (text or "").strip(), re.S)
    return (match[1], match[2], match[3]) if match else None


def what_is_missing(text: str, needed: tuple[str, ...]) -> str:
    """Which of the needed words a too-short command left out, as the first line of its usage."""
    given = len((text or "").split())
    if not given or given >= len(needed):
        return ""
    return f"Missing {' and '.join(needed[given:])}.\n"


def message_key(request_id: str) -> str:
    """The outbox key of a request's message (its thread holds the progress and the summary)."""
    return f"deploy:{request_id}"


def register(app: App, runtime: Runtime, web: SlackWeb) -> None:
    guarded = guard(web)

    def remember_message(args: dict, channel: str, ts: str) -> None:
        runtime.deploys().set_message(args["request_id"], channel, ts)

    web.on(MESSAGE_HOOK, remember_message)

    def ack_deploy(ack: Ack, command: dict) -> None:
        if parse_deploy_args(command.get("text", "")) is None:
            missing = what_is_missing(command.get("text", ""), ("SERVICE", "VERSION", "ENV"))
            ack(response_type="ephemeral", text=missing + USAGE_DEPLOY)
        else:
            ack(response_type="ephemeral", text="Requesting the deploy…")

    def ack_rollback(ack: Ack, command: dict) -> None:
        if parse_rollback_args(command.get("text", "")) is None:
            missing = what_is_missing(command.get("text", ""), ("SERVICE", "ENV"))
            ack(response_type="ephemeral", text=missing + USAGE_ROLLBACK)
        else:
            ack(response_type="ephemeral", text="Requesting the rollback…")

    @guarded
    def request_deploy(command: dict, body: dict) -> None:
        args = parse_deploy_args(command.get("text", ""))
        if args is None:
            return  # the acknowledgement showed the usage
        service, version, env = args
        submit(runtime.deploys(), web, command, "deploy", service, env, version)

    @guarded
    def request_rollback(command: dict, body: dict) -> None:
        args = parse_rollback_args(command.get("text", ""))
        if args is None:
            return
        service, env, version = args
        submit(runtime.deploys(), web, command, "rollback", service, env, version)

    def just_ack(ack: Ack) -> None:
        ack()

    @guarded
    def approve(body: dict) -> None:
        decide(runtime, web, body, "approve")

    @guarded
    def reject(body: dict) -> None:
        decide(runtime, web, body, "reject")

    app.command("/deploy")(ack=ack_deploy, lazy=[request_deploy])
    app.command("/rollback")(ack=ack_rollback, lazy=[request_rollback])
    app.action(ids.DEPLOY_APPROVE)(ack=just_ack, lazy=[approve])
    app.action(ids.DEPLOY_REJECT)(ack=just_ack, lazy=[reject])


# -- requesting -------------------------------------------------------------------------------------


def submit(
    deploys: DeployService,
    web: SlackWeb,
    command: dict,
    kind: str,
    service: str,
    env: str,
    version: str | None,
) -> DeployRequest:
    """Validate and record through DeployService (which raises on anything wrong), then post the request.

    It goes to the channel the command came from; where opsbot may not post, to the deploys channel, and
    the requester is told where it went (or, with no deploys channel, why it could not be posted).
    """
    user, channel = command.get("user_id", ""), command.get("channel_id", "")
    request = deploys.request(kind, service, env, version, user, channel=channel)
    note = ""
    if kind == "rollback" and version is None:
        note = (
            f":information_source: opsbot chose *{request.version}*: the last version of {service} that succeeded "
            f"in {env} before {request.from_version or 'the current one'}. Name a version to roll back elsewhere: "
            f"`/rollback {service} {env} VERSION`."
        )
    blocks = build_deploy_request_blocks(request, view_of(deploys, request, note))
    fallback = deploys_channel(deploys, request)
    where = channel or fallback
    if not where:
        raise OpsbotError("there is no channel to post the request in: set settings.deploys_channel in services.yaml.")
    web.post(
        where,
        request_fallback_text(request),
        blocks,
        key=message_key(request.id),
        after=(MESSAGE_HOOK, {"request_id": request.id}),
        notify=Notify(response_url=command.get("response_url", ""), channel=channel, user=user),
        fallback_channel=fallback,
    )
    return request


def view_of(deploys: DeployService, request: DeployRequest, note: str = "") -> RequestView:
    """What will run and who may approve, as the current services.yaml says."""
    try:
        command = scrub(deploys.describe(request))  # a token written into services.yaml is not shown either
        environment = deploys.services[request.service].environments[request.env]
        who = [deploys.name(a) if a in deploys.experts else f"{a} team" for a in environment.approvers]
        may_approve = " or ".join(who)
    except (OpsbotError, KeyError):
        command, may_approve = "(no longer in services.yaml)", "nobody (no longer in services.yaml)"
    names = {user: expert.name for user, expert in deploys.experts.items()}
    return RequestView(command, may_approve, names, note)


def deploys_channel(deploys: DeployService, request: DeployRequest) -> str:
    config = deploys.services.get(request.service)
    return (config.channel if config else "") or deploys.settings.channel


# -- deciding and running ---------------------------------------------------------------------------


def decide(runtime: Runtime, web: SlackWeb, body: dict, decision: str) -> None:
    """An Approve or Reject click: tell the clicker if it did not count, else update; an approved run starts
    on the deploy pool at once, before anything is shown."""
    deploys = runtime.deploys()
    request_id = body["actions"][0]["value"]
    user = body["user"]["id"]
    result = deploys.approve(request_id, user) if decision == "approve" else deploys.reject(request_id, user)
    log.info("deploy decision id=%s user=%s decision=%s outcome=%s", request_id, user, decision, result.outcome)
    request = result.request
    note = _note_from(body)
    if result.start:
        runtime.runners.submit(run, deploys, web, request, note)
        return
    clicked_in = (body.get("channel") or {}).get("id") or request.channel
    if result.outcome in ("refused", "closed"):
        web.tell_user(clicked_in, user, build_refusal_text(result))
        if request.status == "expired":  # it expired at this click, before the sweeper got to it
            refresh_message(deploys, web, request.id, note)
        return
    if result.outcome == "recorded":
        web.tell_user(clicked_in, user, f"Noted: {result.message}")
    refresh_message(deploys, web, request.id, note)


def run(deploys: DeployService, web: SlackWeb, request: DeployRequest, note: str = "") -> DeployRequest:
    """Run an approved request, following its output in one thread message, then post the summary."""
    refresh_message(deploys, web, request.id, note)
    command = view_of(deploys, request).command
    progress_key = f"{message_key(request.id)}:progress"
    channel = request.channel or deploys_channel(deploys, request)
    web.post(channel, build_progress_text(request, command, ""), key=progress_key, **_thread(request))

    def show_progress(current: DeployRequest, output: str) -> None:
        web.update(channel, build_progress_text(current, command, output), update_of=progress_key)

    final = deploys.execute(request.id, progress=show_progress)
    text = build_progress_text(final, command, final.log_tail, final=True)
    web.update(channel, text, update_of=progress_key)
    refresh_message(deploys, web, request.id, note)
    post_summary(deploys, web, final)
    return final


def post_summary(deploys: DeployService, web: SlackWeb, request: DeployRequest) -> None:
    """The summary in the request's thread and in the deploys channel (the service's own, if it has one)."""
    figures = dora(
        deploys.store,
        request.service,
        request.env,
        now=deploys.clock(),
        failure_window_hours=deploys.settings.failure_window_hours,
    )
    blocks = build_deploy_summary_blocks(request, view_of(deploys, request), figures.line())
    text = summary_fallback_text(request)
    channel = deploys_channel(deploys, request)
    if request.channel:
        broadcast = channel == request.channel  # one message serves both when they are the same channel
        web.post(request.channel, text, blocks, reply_broadcast=broadcast, **_thread(request))
        if broadcast:
            return
    if channel:
        web.post(channel, text, blocks)


def refresh_message(deploys: DeployService, web: SlackWeb, request_id: str, note: str = "") -> None:
    """Show the request's current state in its message; the newest state is always the last edit queued."""
    with _message_lock(request_id):
        request = deploys.get(request_id)
        if not request.channel and not request.message_ts:
            return  # a CI deploy shows its own message (bot/slack/hooks.py)
        blocks = build_deploy_request_blocks(request, view_of(deploys, request, note))
        text = request_fallback_text(request)
        if request.message_ts:
            web.update(request.channel, text, blocks, ts=request.message_ts)
        else:  # posted, but not yet known where: the outbox finds it by its key
            web.update(request.channel, text, blocks, update_of=message_key(request_id))


def _thread(request: DeployRequest) -> dict:
    """Where a reply to the request's message goes: its ts when known, else its outbox key."""
    return {"thread_ts": request.message_ts} if request.message_ts else {"thread_of": message_key(request.id)}


# -- background work: expiry, stale CI deploys, dead processes ----------------------------------------------


def sweep_expired(runtime: Runtime, web: SlackWeb) -> list[DeployRequest]:
    """Expire pending requests past their time, give up on CI deploys that never ended, and interrupt deploys
    whose process died; say so in their messages."""
    deploys = runtime.deploys()
    expired = deploys.expire_due() + deploys.expire_stale_ci()
    for request in expired:
        log.info("deploy %s id=%s service=%s env=%s", request.status, request.id, request.service, request.env)
        if request.source == "ci":
            from bot.slack.hooks import update_progress

            update_progress(deploys, web, request)
        else:
            refresh_message(deploys, web, request.id)
    report_interrupted(runtime, web)
    return expired


def start_sweeper(runtime: Runtime, web: SlackWeb, every: float = SWEEP_EVERY_S) -> threading.Event:
    """Sweep every ``every`` seconds in a daemon thread; set the returned event to stop."""
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(every):
            try:
                sweep_expired(runtime, web)
            except Exception:  # keep sweeping: the next round may succeed
                log.exception("sweeping deploy requests failed")

    threading.Thread(target=loop, name="opsbot-deploy-sweeper", daemon=True).start()
    return stop


def report_interrupted(runtime: Runtime, web: SlackWeb) -> list[DeployRequest]:
    """Deploys whose opsbot process died (lease expired) are interrupted, never re-run, and said so."""
    deploys = runtime.deploys()
    interrupted = deploys.recover_interrupted()
    for request in interrupted:
        log.warning("deploy interrupted id=%s service=%s env=%s", request.id, request.service, request.env)
        if request.channel:
            web.post(request.channel, INTERRUPTED_TEXT, **_thread(request))
            refresh_message(deploys, web, request.id)
    return interrupted


# -- helpers --------------------------------------------------------------------------------------------


def _note_from(body: dict) -> str:
    """The note of the clicked message (which version opsbot chose), kept when the message is updated."""
    message = body.get("message")
    blocks = message.get("blocks") if isinstance(message, dict) else None
    for block in blocks if isinstance(blocks, list) else []:
        if isinstance(block, dict) and block.get("block_id") == ids.DEPLOY_NOTE_BLOCK:
            elements = block.get("elements")
            texts = [e.get("text") for e in elements if isinstance(e, dict)] if isinstance(elements, list) else []
            return "".join(t for t in texts if isinstance(t, str))
    return ""


@contextmanager
def _message_lock(request_id: str) -> Iterator[None]:
    with _MESSAGE_LOCKS[zlib.crc32(request_id.encode()) % len(_MESSAGE_LOCKS)]:
        yield
