"""Deploy events from CI/CD: signed and validated here; recorded by ``bot.ops.ci_deploys.record_ci_event``.

A pipeline POSTs one JSON event when it starts deploying and one when it ends. Events are signed with
HMAC-SHA256 of ``v1:{timestamp}:{body}`` under OPSBOT_HOOK_SECRET and recorded idempotently by event id
as ``source = 'ci'`` rows of the same deploy_requests table /deploy uses, so `opsbot deploys`, `opsbot dora`
and /rollback see them like any other deploy (``bot.ops.ci_deploys`` has the rules).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import re
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from bot.errors import InvalidRequest
from bot.redact import scrub
from bot.services import SAFE_VALUE
from bot.text import service_name_problem

log = logging.getLogger(__name__)
HOOK_PATH = "/hooks/deploy"
TIMESTAMP_HEADER = "X-Opsbot-Timestamp"
SIGNATURE_HEADER = "X-Opsbot-Signature"
MAX_SKEW_S = 300  # a signed event older (or newer) than five minutes is refused: replays of captured requests
# A commit this much older than its deploy is a zeroed or made-up date (0001-01-01, the epoch), not a lead time:
# one such event would make the lead time of every DORA report about it absurd, with no way to correct it.
MAX_COMMIT_AGE_DAYS = 730
STATUSES = ("started", "succeeded", "failed", "rolled_back", "rollback_failed")
FINISHED = {
    "succeeded": ("deploy", "succeeded"),
    "failed": ("deploy", "failed"),
    "rolled_back": ("rollback", "succeeded"),
    "rollback_failed": ("rollback", "failed"),  # not a failed deploy of the old version: it shipped no change
}
DECIMAL = re.compile(r"[0-9]{1,12}")  # Unix seconds; not int()'s syntax (signs, spaces, underscores, 400 digits)
EVENT_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/+-]{0,127}$")
REQUEST_ID = re.compile(r"^dep-[0-9]{8}-[0-9a-f]{6}$")  # as bot.ops.requests.new_request_id makes them
COMMIT_SHA = re.compile(r"^[0-9a-fA-F]{7,64}$")
URL = re.compile(r"^https?://[^\s<>|\"']{1,500}$")
MAX_CHANGES = 50
MAX_CHANGE_CHARS = 300


class EventProblem(InvalidRequest):
    """A malformed event: what is wrong, and the field at fault (the message quotes the event, so it is scrubbed)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(scrub(message))
        self.field = field


class Unauthorized(InvalidRequest):
    """An event without a valid, fresh signature."""


@dataclass(frozen=True)
class DeployEvent:
    """One event from a pipeline, validated; its free text (actor, pipeline_url, changes) already scrubbed."""

    event_id: str
    service: str
    env: str
    version: str
    status: str
    started_at: str
    finished_at: str
    commit_sha: str
    commit_time: str
    actor: str
    pipeline_url: str
    changes: tuple[str, ...]
    request_id: str = ""  # the /deploy request that triggered the pipeline (a webhook's {request_id}), if any

    @property
    def finished(self) -> bool:
        return self.status != "started"

    @property
    def reported(self) -> str:
        """What the event reports, as its id is remembered with: a retry says the same, another event does not."""
        on = f" for {self.request_id}" if self.request_id else ""
        return f"{self.service} {self.version} to {self.env} {self.status}{on}"


# -- signing -------------------------------------------------------------------------------------------


def sign(secret: str, timestamp: int | str, body: bytes) -> str:
    """The X-Opsbot-Signature header: ``v1=`` HMAC-SHA256 of ``v1:{timestamp}:{body}``."""
    base = f"v1:{timestamp}:".encode() + body
    return "v1=" + hmac.new(secret.encode(), base, hashlib.sha256).hexdigest()


def verify(secret: str, timestamp: str | None, signature: str | None, body: bytes, now: float | None = None) -> None:
    """Raise Unauthorized unless the body carries a fresh, valid signature under ``secret``."""
    check_stamp(timestamp, signature, now)
    assert timestamp is not None and signature is not None
    if not hmac.compare_digest(sign(secret, int(timestamp), body).encode(), signature.strip().encode()):
        raise Unauthorized("bad signature: sign v1:{timestamp}:{body} with OPSBOT_HOOK_SECRET (HMAC-SHA256, hex).")


def check_stamp(timestamp: str | None, signature: str | None, now: float | None = None) -> None:
    """What can be judged of a signed event before its body is read: both headers there, the time fresh. Raises
    Unauthorized, so that an unsigned sender never gets opsbot to take in a body."""
    if not timestamp or not signature:
        raise Unauthorized(f"unsigned event: send the {TIMESTAMP_HEADER} and {SIGNATURE_HEADER} headers.")
    if not DECIMAL.fullmatch(timestamp):
        raise Unauthorized(f"{TIMESTAMP_HEADER} must be Unix seconds: up to 12 digits, such as {int(time.time())}.")
    ts = int(timestamp)
    if abs((time.time() if now is None else now) - ts) > MAX_SKEW_S:
        raise Unauthorized(
            f"stale timestamp: the event was signed more than {MAX_SKEW_S // 60} minutes from now; "
            "sign it when sending it, and check the sender's clock."
        )


# -- parsing -------------------------------------------------------------------------------------------


def parse_event(
    body: bytes | str, known_services: set[str], environments: Mapping[str, frozenset[str]] | None = None
) -> DeployEvent:
    """Validate one JSON event; EventProblem names the first field at fault.

    ``environments`` holds the environments services.yaml configures per service: a service listed
    there is reported only for those (a typo would become a new environment in `deploys` and DORA).
    """
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise EventProblem("body", "the body is not JSON: send one JSON object.") from None
    if not isinstance(data, dict):
        raise EventProblem("body", "the body must be one JSON object.")

    def text(name: str, required: bool = False) -> str:
        value = data.get(name)
        if value is None or value == "":
            if required:
                raise EventProblem(name, f"{name} is missing.")
            return ""
        if not isinstance(value, str):
            raise EventProblem(name, f"{name} must be a string.")
        return value

    event_id = text("event_id", required=True)
    if not EVENT_ID.fullmatch(event_id):
        raise EventProblem("event_id", "event_id: use up to 128 letters, digits and . _ : / + - (unique per event).")
    service = text("service", required=True)
    if problem := service_name_problem(service):
        raise EventProblem("service", f"{problem}.")
    if service not in known_services:
        known = ", ".join(sorted(known_services)) or "none: add services to services.yaml and run `opsbot index`"
        raise EventProblem("service", f"unknown service {service[:64]!r}; known services: {known}.")
    for name in ("env", "version"):
        value = text(name, required=True)
        if not SAFE_VALUE.fullmatch(value):
            raise EventProblem(
                name,
                f"{name} {value[:64]!r} is not allowed: use letters, digits, '.', '_', '+' and '-' only "
                "(up to 64 characters, starting with a letter or digit).",
            )
    configured = (environments or {}).get(service)
    if configured and data["env"] not in configured:
        raise EventProblem(
            "env",
            f"unknown environment {data['env']!r} for {service}; services.yaml has {', '.join(sorted(configured))}.",
        )
    status = text("status", required=True)
    if status not in STATUSES:
        raise EventProblem("status", f"status {status[:32]!r} must be one of {', '.join(STATUSES)}.")
    started_at, finished_at, commit_time = (
        _time(name, text(name)) for name in ("started_at", "finished_at", "commit_time")
    )
    if started_at and finished_at and finished_at < started_at:
        raise EventProblem("finished_at", "finished_at is before started_at.")
    # A commit made after the deploy cannot be in it; taken as is, it would show a negative lead time.
    deployed, deployed_name = (finished_at, "finished_at") if finished_at else (started_at, "started_at")
    if commit_time and deployed and commit_time > deployed:
        raise EventProblem(
            "commit_time",
            f"commit_time {commit_time} is after {deployed_name} {deployed}: send the time of the commit "
            "this deploy shipped.",
        )
    shipped = datetime.fromisoformat(deployed) if deployed else datetime.now(UTC)
    if commit_time and shipped - datetime.fromisoformat(commit_time) > timedelta(days=MAX_COMMIT_AGE_DAYS):
        raise EventProblem(
            "commit_time",
            f"commit_time {commit_time} is over {MAX_COMMIT_AGE_DAYS // 365} years before the deploy: send the time "
            "of the commit this deploy shipped (a zeroed or placeholder date would spoil every lead time).",
        )
    commit_sha = text("commit_sha")
    if commit_sha and not COMMIT_SHA.fullmatch(commit_sha):
        raise EventProblem("commit_sha", "commit_sha must be 7 to 64 hexadecimal characters.")
    actor = text("actor") or "ci"
    if len(actor) > 100 or not actor.isprintable():
        raise EventProblem("actor", "actor must be printable text of up to 100 characters.")
    pipeline_url = text("pipeline_url")
    if pipeline_url and not URL.fullmatch(pipeline_url):
        raise EventProblem("pipeline_url", "pipeline_url must be an http(s) URL without spaces, quotes, < > or |.")
    request_id = text("request_id")
    if request_id and not REQUEST_ID.fullmatch(request_id):
        raise EventProblem(
            "request_id",
            f"request_id {request_id[:40]!r} is not an opsbot request id such as dep-20261120-3f9c2e: send back "
            "the {request_id} that opsbot's webhook filled in, or leave it out.",
        )
    changes = data.get("changes") or []
    if not isinstance(changes, list) or not all(isinstance(c, str) for c in changes):
        raise EventProblem("changes", "changes must be a list of strings.")
    if len(changes) > MAX_CHANGES:
        raise EventProblem("changes", f"at most {MAX_CHANGES} changes per event.")
    # A pipeline copies commit messages and URLs as they are: a token in them must reach neither the row nor
    # Slack nor the log. Scrubbed whole, before a change is cut to length, so no token is cut past recognition.
    actor, pipeline_url = scrub(actor), scrub(pipeline_url)
    clean = tuple(text[:MAX_CHANGE_CHARS] for text in (" ".join(scrub(c).split()) for c in changes) if text)
    return DeployEvent(
        event_id,
        service,
        data["env"],
        data["version"],
        status,
        started_at,
        finished_at,
        commit_sha,
        commit_time,
        actor,
        pipeline_url,
        clean,
        request_id,
    )


def _time(name: str, value: str) -> str:
    """An ISO 8601 time with its offset, as UTC ISO (seconds); a time without an offset is refused.

    A pipeline in UTC+2 that sends local times without an offset would otherwise be read two hours off,
    and /rollback would pick the wrong version as the one running.
    """
    if not value:
        return ""
    try:
        when = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise EventProblem(
            name, f"{name} {value[:40]!r} is not an ISO 8601 time such as 2026-11-20T10:00:00Z."
        ) from None
    if when.tzinfo is None:
        raise EventProblem(
            name,
            f"{name} {value[:40]!r} has no UTC offset: send it with one, such as 2026-11-20T10:00:00Z "
            "or 2026-11-20T12:00:00+02:00.",
        )
    try:
        return when.astimezone(UTC).isoformat(timespec="seconds")
    except OverflowError:  # 0001-01-01T00:00:00+01:00 is in year 0 in UTC, which Python has no date for
        raise EventProblem(
            name,
            f"{name} {value[:40]!r} falls outside the years 0001 to 9999 once in UTC; send when it happened, such "
            "as 2026-11-20T10:00:00Z.",
        ) from None


# -- sending (the `opsbot notify-deploy` side) ---------------------------------------------------------


def build_event(
    service: str,
    env: str,
    version: str,
    status: str,
    event_id: str | None = None,
    **optional: object,
) -> dict:
    """An event as a pipeline sends it; empty optional fields are left out."""
    event = {
        "event_id": event_id or f"evt-{uuid.uuid4().hex}",
        "service": service,
        "env": env,
        "version": version,
        "status": status,
    }
    event.update({k: v for k, v in optional.items() if v not in (None, "", [], ())})
    return event
