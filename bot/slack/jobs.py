"""What `opsbot serve` does by itself: sweep deploy requests (expired, abandoned by CI, left by a dead process),
look into alert groups whose silence ended or that went quiet while firing, and post the weekly digest. Each job only
calls the domain; what it shows goes through the outbox."""

from __future__ import annotations

import logging
import threading
import time
from datetime import UTC, datetime

from bot.ops.ci_deploys import abandon_stale
from bot.ops.digest import Figures, post_if_due, weekly_figures
from bot.ops.requests import DeployRequest
from bot.runtime import Runtime
from bot.services import Digest
from bot.slack.alerts import AlertDesk
from bot.slack.blocks.digest import build_digest_blocks
from bot.slack.local.shell_dispatch import COMMAND_CHANNEL, DM_CHANNEL
from bot.slack.web import SlackWeb
from bot.store.base import is_write_failure

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
    for request_id in deploys.show_withdrawn(elsewhere=(COMMAND_CHANNEL, DM_CHANNEL)):  # what `opsbot withdraw` did
        log.info("deploy withdrawn from the command line shown id=%s", request_id)
    runtime.forget_old_events()
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


class Jobs:
    """The running jobs; ``stop`` ends them once the round in progress is done."""

    def __init__(self) -> None:
        self.stopping = threading.Event()
        self.threads: list[threading.Thread] = []

    def stop(self, timeout: float) -> bool:
        """Stop the jobs, waiting up to ``timeout`` seconds for a round in progress; True when all have ended."""
        self.stopping.set()
        deadline = time.monotonic() + timeout
        for thread in self.threads:
            thread.join(max(deadline - time.monotonic(), 0))
        return not any(thread.is_alive() for thread in self.threads)


def start(runtime: Runtime, web: SlackWeb) -> Jobs:
    """Run the jobs in daemon threads until ``stop`` is called on what this returns."""
    jobs = Jobs()

    def every(seconds: float, job: str, run: object) -> None:
        def loop() -> None:
            refused = False  # the database refuses the job's writes (a full disk): said when it starts and ends only
            while not jobs.stopping.wait(seconds):
                try:
                    run()  # type: ignore[operator]
                except Exception as exc:  # keep going: the next round may succeed
                    if not is_write_failure(exc):
                        log.exception("background job failed job=%s", job)
                    elif not refused:
                        refused = True
                        log.warning(
                            "background job failing until the database takes writes again job=%s reason=%s", job, exc
                        )
                    continue
                if refused:
                    refused = False
                    log.info("background job recovered job=%s", job)

        thread = threading.Thread(target=loop, name=f"opsbot-{job}", daemon=True)
        jobs.threads.append(thread)
        thread.start()

    every(SWEEP_EVERY_S, "deploy-sweeper", lambda: sweep_expired(runtime))
    # Alertmanager sends no resolve for alerts silenced when they resolved: asked at each silence's end instead
    desk = AlertDesk(runtime, web)
    every(SWEEP_EVERY_S, "silence-checker", desk.check_silences)
    # nor one that opsbot missed (Alertmanager restarted, or gave up on a refused send): asked after a quiet while
    every(SWEEP_EVERY_S, "quiet-checker", desk.check_quiet)
    every(DIGEST_EVERY_S, "digest", lambda: post_digest_if_due(runtime, web))
    return jobs
