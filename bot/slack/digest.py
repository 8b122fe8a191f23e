"""The weekly DORA digest: every deployable service's figures, posted on a schedule."""

from __future__ import annotations

import logging
import threading
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from bot.ops.metrics import dora
from bot.runtime import Runtime
from bot.services import Digest
from bot.slack.web import SlackWeb

log = logging.getLogger(__name__)


def digest_due(digest: Digest, now: datetime, last_posted_week: str) -> str | None:
    """The ISO week to post for when the digest is due now and not yet posted for it, else None."""
    local = now.astimezone(ZoneInfo(digest.timezone))
    week = f"{local.isocalendar().year}-W{local.isocalendar().week:02d}"
    if local.weekday() == digest.day and local.strftime("%H:%M") >= digest.time and week != last_posted_week:
        return week
    return None


def build_digest_blocks(runtime: Runtime, env: str, days: int = 30, now: datetime | None = None) -> list[dict]:
    deploys = runtime.deploys()
    window = deploys.settings.failure_window_hours
    lines = [
        f"*{name}*: {dora(runtime.store, name, env, days, now, window).line()}" for name in sorted(deploys.services)
    ]
    overall = dora(runtime.store, None, env, days, now, window).line()
    return [
        {"type": "header", "text": {"type": "plain_text", "text": f"Weekly delivery figures ({env})"}},
        {"type": "section", "text": {"type": "mrkdwn", "text": f"*All services*: {overall}"}},
        {"type": "section", "text": {"type": "mrkdwn", "text": "\n".join(lines) or "No deployable services."}},
        {
            "type": "context",
            "elements": [
                {
                    "type": "mrkdwn",
                    "text": ("DORA figures of Slack and CI/CD deploys; `opsbot dora` shows them too."),
                }
            ],
        },
    ]


def post_digest(runtime: Runtime, web: SlackWeb, channel: str | None = None) -> str:
    """Post the digest now (through the outbox); returns the channel it goes to."""
    digest = runtime.deploys().settings.digest
    target = channel or (digest.channel if digest else "")
    if not target:
        raise ValueError("no digest channel: set settings.weekly_digest.channel in services.yaml")
    env = digest.env if digest else "prod"
    web.post(target, f"Weekly delivery figures ({env})", build_digest_blocks(runtime, env))
    return target


def start_digest_scheduler(runtime: Runtime, web: SlackWeb, every: float = 60.0) -> threading.Thread:
    """Check once a minute whether the weekly digest is due; post it once per week."""

    def loop() -> None:
        stop = threading.Event()
        while not stop.wait(every):
            try:
                digest = runtime.deploys().settings.digest
                if digest is None:
                    continue
                week = digest_due(digest, datetime.now(UTC), runtime.store.get_meta("digest_week"))
                if week:
                    runtime.store.set_meta("digest_week", week)
                    post_digest(runtime, web)
                    log.info("weekly digest posted week=%s channel=%s", week, digest.channel)
            except Exception:
                log.exception("weekly digest failed")

    thread = threading.Thread(target=loop, name="opsbot-digest", daemon=True)
    thread.start()
    return thread
