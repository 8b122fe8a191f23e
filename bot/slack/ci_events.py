"""POST /hooks/deploy: deploy events from CI/CD, recorded by ``bot.ops.ci_events`` and shown in Slack.

A `started` event posts a progress message in the deploys channel (the service's own, if it has one); the
matching finish updates that message and posts the usual summary in its thread, DORA line included.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from bot.ops.ci_deploys import record_ci_event
from bot.ops.ci_events import (
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    EventProblem,
    Unauthorized,
    check_stamp,
    parse_event,
    verify,
)
from bot.runtime import Runtime

log = logging.getLogger(__name__)
DISABLED = (
    "deploy hooks are disabled: set OPSBOT_HOOK_SECRET on the opsbot server (and the same value in the pipeline) "
    "to accept deploy events."
)


def admit_deploy_hook(runtime: Runtime, headers: Mapping[str, str]) -> tuple[int, dict] | None:
    """Refuse before the body is read what its headers already condemn (the hook off, a signature missing, a stale
    time): (HTTP status, JSON body), or None to read the body and judge it whole."""
    if not str(runtime.settings.hook_secret):
        return 503, {"error": DISABLED}
    lowered = {k.lower(): v for k, v in headers.items()}
    try:
        check_stamp(lowered.get(TIMESTAMP_HEADER.lower()), lowered.get(SIGNATURE_HEADER.lower()))
    except Unauthorized as exc:
        log.warning("deploy hook refused: %s", exc)
        return 401, {"error": str(exc)}
    return None


def handle_deploy_hook(runtime: Runtime, headers: Mapping[str, str], body: bytes) -> tuple[int, dict]:
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
        # a finish is also checked against the run it closes (it may not end before that run started)
        outcome = record_ci_event(deploys, event)  # its announcer queues the Slack messages with the record
    except EventProblem as exc:
        log.warning("deploy hook malformed field=%s: %s", exc.field, exc)
        return 400, {"error": str(exc), "field": exc.field}
    return 200, outcome.as_json()
