"""POST /hooks/deploy: deploy events from CI/CD, recorded by ``bot.hooks`` and shown in Slack.

A `started` event posts a progress message in the deploys channel (the service's own, if it has one); the
matching finish updates that message and posts the usual summary in its thread, DORA line included.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from bot.deploy_ci import CiOutcome
from bot.deploys import DeployRequest, DeployService
from bot.hooks import SIGNATURE_HEADER, TIMESTAMP_HEADER, EventProblem, Unauthorized, parse_event, verify
from bot.runtime import Runtime
from bot.slack.deploy_blocks import build_ci_deploy_blocks, request_fallback_text
from bot.slack.deploys import MESSAGE_HOOK, deploys_channel, message_key, post_summary, view_of
from bot.slack.web import SlackWeb

log = logging.getLogger(__name__)
DISABLED = (
    "deploy hooks are disabled: set OPSBOT_HOOK_SECRET on the opsbot server (and the same value in the pipeline) "
    "to accept deploy events."
)


def handle_deploy_hook(runtime: Runtime, web: SlackWeb, headers: Mapping[str, str], body: bytes) -> tuple[int, dict]:
    """Answer one POST: (HTTP status, JSON body). Nothing is recorded unless the event is signed and valid."""
    secret = str(runtime.settings.hook_secret)
    if not secret:
        return 503, {"error": DISABLED}
    lowered = {k.lower(): v for k, v in headers.items()}
    try:
        verify(secret, lowered.get(TIMESTAMP_HEADER.lower()), lowered.get(SIGNATURE_HEADER.lower()), body)
    except Unauthorized as exc:
        log.warning("deploy hook refused: %s", exc)
        return 401, {"error": str(exc)}
    deploys = runtime.deploys()
    try:
        event = parse_event(body, deploys.ci_services(), deploys.ci_environments())
    except EventProblem as exc:
        log.warning("deploy hook malformed field=%s: %s", exc.field, exc)
        return 400, {"error": str(exc), "field": exc.field}
    outcome = deploys.record_ci_event(event)
    if outcome.action != "duplicate":
        try:
            show(deploys, web, outcome)
        except Exception:  # the event is recorded; showing it must not turn into a failure the pipeline retries
            log.exception("could not show deploy hook id=%s", outcome.request.id if outcome.request else "")
    return 200, outcome.as_json()


def show(deploys: DeployService, web: SlackWeb, outcome: CiOutcome) -> None:
    """Post or update the deploy's message; post the summary once it finished. Posts go through the outbox."""
    request = outcome.request
    assert request is not None
    if outcome.action == "started":
        post_progress(deploys, web, request)
        return
    if outcome.action == "finished":
        update_progress(deploys, web, request)
    post_summary(deploys, web, request)


def post_progress(deploys: DeployService, web: SlackWeb, request: DeployRequest) -> None:
    channel = deploys_channel(deploys, request)
    if not channel:
        log.info("no deploys channel for id=%s: set settings.deploys_channel in services.yaml", request.id)
        return
    blocks = build_ci_deploy_blocks(request, view_of(deploys, request))
    web.post(
        channel,
        request_fallback_text(request),
        blocks,
        key=message_key(request.id),
        after=(MESSAGE_HOOK, {"request_id": request.id}),
    )


def update_progress(deploys: DeployService, web: SlackWeb, request: DeployRequest) -> None:
    """Show how a CI deploy that has a message of its own ended (or that no end came)."""
    channel = request.channel or deploys_channel(deploys, request)
    if not channel:
        return
    blocks = build_ci_deploy_blocks(request, view_of(deploys, request))
    text = request_fallback_text(request)
    if request.message_ts:
        web.update(channel, text, blocks, ts=request.message_ts)
    else:
        web.update(channel, text, blocks, update_of=message_key(request.id))
