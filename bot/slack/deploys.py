"""/deploy, /rollback and their Approve/Reject buttons; the expiry sweeper and the start-up report.

The state machine is ``bot.deploys.DeployService``; this module only shows its decisions in Slack. Once a
request is approved it always runs to its end: a Slack failure while reporting is logged, never raised.
"""

from __future__ import annotations

import logging
import re
import threading
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from slack_bolt import Ack, App, Respond
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError

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
from bot.slack.guard import guarded

log = logging.getLogger(__name__)
USAGE_DEPLOY = "Usage: /deploy SERVICE VERSION ENV, for example `/deploy checkout-api 1.4.2 staging`"
USAGE_ROLLBACK = (
    "Usage: /rollback SERVICE ENV [VERSION], for example `/rollback checkout-api prod` "
    "(back to the version that succeeded before the current one) or `/rollback checkout-api prod 1.4.1`"
)
SWEEP_EVERY_S = 30.0
# Updates of one request's message are serialised (a striped lock: bounded, whatever the number of requests).
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


def register(app: App, runtime: Runtime) -> None:
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
    def request_deploy(command: dict, body: dict, client: WebClient, respond: Respond) -> None:
        args = parse_deploy_args(command.get("text", ""))
        if args is None:
            return  # the acknowledgement showed the usage
        service, version, env = args
        submit(runtime.deploys(), client, respond, command, "deploy", service, env, version)

    @guarded
    def request_rollback(command: dict, body: dict, client: WebClient, respond: Respond) -> None:
        args = parse_rollback_args(command.get("text", ""))
        if args is None:
            return
        service, env, version = args
        submit(runtime.deploys(), client, respond, command, "rollback", service, env, version)

    def just_ack(ack: Ack) -> None:
        ack()

    @guarded
    def approve(body: dict, client: WebClient, respond: Respond) -> None:
        decide(runtime, client, body, "approve")

    @guarded
    def reject(body: dict, client: WebClient, respond: Respond) -> None:
        decide(runtime, client, body, "reject")

    app.command("/deploy")(ack=ack_deploy, lazy=[request_deploy])
    app.command("/rollback")(ack=ack_rollback, lazy=[request_rollback])
    app.action(ids.DEPLOY_APPROVE)(ack=just_ack, lazy=[approve])
    app.action(ids.DEPLOY_REJECT)(ack=just_ack, lazy=[reject])


# -- requesting -------------------------------------------------------------------------------------


def submit(
    deploys: DeployService,
    client: WebClient,
    respond: Respond,
    command: dict,
    kind: str,
    service: str,
    env: str,
    version: str | None,
) -> DeployRequest:
    """Validate and record through DeployService (which raises on anything wrong), then post the request."""
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
    text = request_fallback_text(request)
    fallback = deploys_channel(deploys, request)
    for where in dict.fromkeys(c for c in (channel, fallback) if c):
        try:
            posted = client.chat_postMessage(channel=where, text=text, blocks=blocks)
        except SlackApiError as exc:
            log.warning("could not post deploy request id=%s channel=%s error=%s", request.id, where, _error(exc))
            continue
        deploys.set_message(request.id, posted["channel"], posted["ts"])
        if where != channel:
            respond(
                response_type="ephemeral",
                text=f"I can't post in this channel, so {request.id} is waiting for approval in <#{where}>.",
            )
        return deploys.get(request.id)
    respond(
        response_type="ephemeral",
        text=(
            f"{request.id} is recorded but I could not post it for approval here: invite me (`/invite @opsbot`). "
            f"It holds the {service} {env} lock until it expires in {deploys.settings.request_ttl_minutes} minutes."
        ),
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


def decide(runtime: Runtime, client: WebClient, body: dict, decision: str) -> None:
    """An Approve or Reject click: tell the clicker if it did not count, else update; an approved run starts
    on the deploy pool at once, before anything is shown, so no Slack failure can hold it back."""
    deploys = runtime.deploys()
    request_id = body["actions"][0]["value"]
    user = body["user"]["id"]
    result = deploys.approve(request_id, user) if decision == "approve" else deploys.reject(request_id, user)
    log.info("deploy decision id=%s user=%s decision=%s outcome=%s", request_id, user, decision, result.outcome)
    request = result.request
    note = _note_from(body)
    channel = request.channel or (body.get("channel") or {}).get("id", "")
    ts = request.message_ts or (body.get("container") or {}).get("message_ts", "")
    clicked_in = (body.get("channel") or {}).get("id") or channel
    if result.outcome in ("refused", "closed"):
        _slack(client.chat_postEphemeral, channel=clicked_in, user=user, text=build_refusal_text(result))
        if request.status == "expired":  # it expired at this click, before the sweeper got to it
            refresh_message(deploys, client, request.id, channel, ts, note)
        return
    if result.start:
        runtime.runners.submit(run, deploys, client, request, channel, ts, note)
        return
    if result.outcome == "recorded":
        _slack(client.chat_postEphemeral, channel=clicked_in, user=user, text=f"Noted: {result.message}")
    refresh_message(deploys, client, request.id, channel, ts, note)


def run(deploys: DeployService, client: WebClient, request: DeployRequest, channel: str, ts: str, note: str) -> None:
    """Run an approved request, following its output in one thread message, then post the summary."""
    refresh_message(deploys, client, request.id, channel, ts, note)
    command = view_of(deploys, request).command
    posted = _slack(
        client.chat_postMessage, channel=channel, thread_ts=ts, text=build_progress_text(request, command, "")
    )
    progress_ts = posted["ts"] if posted else ""

    def show_progress(current: DeployRequest, output: str) -> None:
        # Called from inside the run: anything raised here would abandon the running command, so nothing is.
        if not progress_ts:
            return
        try:
            client.chat_update(channel=channel, ts=progress_ts, text=build_progress_text(current, command, output))
        except Exception:
            log.warning("could not show deploy progress id=%s", current.id, exc_info=True)

    final = deploys.execute(request.id, progress=show_progress)
    if progress_ts:
        text = build_progress_text(final, command, final.log_tail, final=True)
        _slack(client.chat_update, channel=channel, ts=progress_ts, text=text)
    refresh_message(deploys, client, request.id, channel, ts, note)
    post_summary(deploys, client, final)


def post_summary(deploys: DeployService, client: WebClient, request: DeployRequest) -> None:
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
    if request.channel and request.message_ts:
        broadcast = channel == request.channel  # one message serves both when they are the same channel
        _slack(
            client.chat_postMessage,
            channel=request.channel,
            thread_ts=request.message_ts,
            reply_broadcast=broadcast,
            text=text,
            blocks=blocks,
        )
        if broadcast:
            return
    if channel:
        _slack(client.chat_postMessage, channel=channel, text=text, blocks=blocks)


def refresh_message(
    deploys: DeployService, client: WebClient, request_id: str, channel: str, ts: str, note: str = ""
) -> None:
    """Show the request's current state in its message; one update at a time per request, newest state wins."""
    if not (channel and ts):
        return
    with _message_lock(request_id):
        request = deploys.get(request_id)
        blocks = build_deploy_request_blocks(request, view_of(deploys, request, note))
        _slack(client.chat_update, channel=channel, ts=ts, text=request_fallback_text(request), blocks=blocks)


# -- background work: expiry and start-up -----------------------------------------------------------


def sweep_expired(runtime: Runtime, client: WebClient) -> list[DeployRequest]:
    """Expire pending requests past their time, give up on CI deploys that never ended, and interrupt deploys
    whose process died; say so in their messages."""
    deploys = runtime.deploys()
    expired = deploys.expire_due() + deploys.expire_stale_ci()
    for request in expired:
        log.info("deploy %s id=%s service=%s env=%s", request.status, request.id, request.service, request.env)
        refresh_message(deploys, client, request.id, request.channel, request.message_ts)
    report_interrupted(runtime, client)
    return expired


def start_sweeper(runtime: Runtime, client: WebClient, every: float = SWEEP_EVERY_S) -> threading.Event:
    """Sweep expired requests every ``every`` seconds in a daemon thread; set the returned event to stop."""
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(every):
            try:
                sweep_expired(runtime, client)
            except Exception:  # keep sweeping: the next round may succeed
                log.exception("sweeping expired deploy requests failed")

    threading.Thread(target=loop, name="opsbot-deploy-sweeper", daemon=True).start()
    return stop


def report_interrupted(runtime: Runtime, client: WebClient) -> list[DeployRequest]:
    """Deploys whose opsbot process died (lease expired) are interrupted, never re-run, and said so."""
    deploys = runtime.deploys()
    interrupted = deploys.recover_interrupted()
    for request in interrupted:
        log.warning("deploy interrupted id=%s service=%s env=%s", request.id, request.service, request.env)
        if request.channel and request.message_ts:
            _slack(
                client.chat_postMessage, channel=request.channel, thread_ts=request.message_ts, text=INTERRUPTED_TEXT
            )
            refresh_message(deploys, client, request.id, request.channel, request.message_ts)
    return interrupted


# -- helpers --------------------------------------------------------------------------------------------


def _slack(method: Callable[..., Any], **kwargs: Any) -> Any:
    """Call the Web API; a failure is logged and None returned, so a running deploy is never cut short."""
    try:
        return method(**kwargs)
    except SlackApiError as exc:
        log.warning("slack call failed method=%s error=%s", getattr(method, "__name__", method), _error(exc))
    except Exception as exc:  # noqa: BLE001 - e.g. a 429 whose Retry-After the client cannot parse
        log.warning("slack call failed method=%s error=%r", getattr(method, "__name__", method), exc)
    return None


def _error(exc: SlackApiError) -> str:
    return str(exc.response.get("error", "")) if exc.response is not None else str(exc)


def _note_from(body: dict) -> str:
    """The note of the clicked message (which version opsbot chose), kept when the message is updated."""
    for block in (body.get("message") or {}).get("blocks") or []:
        if block.get("block_id") == ids.DEPLOY_NOTE_BLOCK:
            return "".join(e.get("text", "") for e in block.get("elements", []))
    return ""


@contextmanager
def _message_lock(request_id: str) -> Iterator[None]:
    with _MESSAGE_LOCKS[zlib.crc32(request_id.encode()) % len(_MESSAGE_LOCKS)]:
        yield
