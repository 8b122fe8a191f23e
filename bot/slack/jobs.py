"""What `opsbot serve` does by itself: sweep deploy requests (expired, abandoned by CI, left by a dead process)
and post the weekly digest. Each job only calls the domain; what it shows goes through the outbox."""

from __future__ import annotations

import logging
import threading
from datetime import UTC, datetime

from bot.ops.ci_deploys import abandon_stale
from bot.ops.digest import Figures, post_if_due, weekly_figures
from bot.ops.requests import DeployRequest
from bot.runtime import Runtime
from bot.services import Digest
from bot.slack.blocks.digest import build_digest_blocks
from bot.slack.web import SlackWeb

log = logging.getLogger(__name__)
SWEEP_EVERY_S = 30.0
DIGEST_EVERY_S = 60.0


def sweep_expired(runtime: Runtime) -> list[DeployRequest]:
    """Expire pending requests past their time, give up on CI deploys that never ended, and interrupt deploys
    whose process died; their messages say so (the deploy service announces each)."""
    deploys = runtime.deploys()
    swept = deploys.expire_due() + abandon_stale(deploys) + deploys.recover_interrupted()
    for request in swept:
        log.info("deploy %s id=%s service=%s env=%s", request.status, request.id, request.service, request.env)
    return swept


def report_interrupted(runtime: Runtime) -> list[DeployRequest]:
    """Deploys whose opsbot process died (lease expired) are interrupted, never re-run, and said so."""
    interrupted = runtime.deploys().recover_interrupted()
    for request in interrupted:
        log.warning("deploy interrupted id=%s service=%s env=%s", request.id, request.service, request.env)
    return interrupted


def post_digest(runtime: Runtime, web: SlackWeb, channel: str | None = None) -> str:
    """Post the digest now (through the outbox); returns the channel it goes to."""
    deploys = runtime.deploys()
    digest = deploys.settings.digest
    target = channel or (digest.channel if digest else "")
    if not target:
        raise ValueError("no digest channel: set settings.weekly_digest.channel in services.yaml")
    env = digest.env if digest else "prod"
    web.post(target, f"Weekly delivery figures ({env})", build_digest_blocks(env, weekly_figures(deploys, env)))
    return target


def post_digest_if_due(runtime: Runtime, web: SlackWeb, now: datetime | None = None) -> str | None:
    """The weekly digest, once a week whatever the number of processes; the ISO week posted, or None."""

    def post(digest: Digest, figures: Figures) -> None:
        blocks = build_digest_blocks(digest.env, figures)
        web.post(digest.channel, f"Weekly delivery figures ({digest.env})", blocks)

    week = post_if_due(runtime.deploys(), now or datetime.now(UTC), post)
    if week:
        log.info("weekly digest posted week=%s", week)
    return week


def start(runtime: Runtime, web: SlackWeb) -> threading.Event:
    """Run the jobs in daemon threads until the returned event is set."""
    stop = threading.Event()

    def every(seconds: float, job: str, run: object) -> None:
        def loop() -> None:
            while not stop.wait(seconds):
                try:
                    run()  # type: ignore[operator]
                except Exception:  # keep going: the next round may succeed
                    log.exception("background job failed job=%s", job)

        threading.Thread(target=loop, name=f"opsbot-{job}", daemon=True).start()

    every(SWEEP_EVERY_S, "deploy-sweeper", lambda: sweep_expired(runtime))
    every(DIGEST_EVERY_S, "digest", lambda: post_digest_if_due(runtime, web))
    return stop
