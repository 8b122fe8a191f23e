"""The weekly DORA digest: when it is due, and the figures it shows (no Slack here)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from zoneinfo import ZoneInfo

from bot.ops.deploys import DeployService
from bot.ops.metrics import Dora
from bot.services import Digest

WEEK_KEY = "digest_week"  # meta: the ISO week the digest was last posted for
Figures = tuple[Dora, list[tuple[str, Dora]]]


def digest_due(digest: Digest, now: datetime, last_posted_week: str) -> str | None:
    """The ISO week to post for when the digest is due now and not yet posted for it, else None.

    Due from the week's day and time until the week ends: opsbot down at that moment posts it when it is back,
    later that week, rather than losing it."""
    local = now.astimezone(ZoneInfo(digest.timezone))
    week = f"{local.isocalendar().year}-W{local.isocalendar().week:02d}"
    passed = (local.weekday(), local.strftime("%H:%M")) >= (digest.day, digest.time)
    if passed and week != last_posted_week:
        return week
    return None


def weekly_figures(deploys: DeployService, env: str, days: int = 30) -> Figures:
    """All services together, then each service deployable to ``env`` or deployed there (CI may deploy a service
    that services.yaml lists with its owners only), over the last ``days``."""
    configured = {name for name, config in deploys.services.items() if env in config.environments}
    names = sorted(configured | {name for name, where in deploys.store.deployed_names() if where == env})
    each = [(name, deploys.figures(name, env, days)) for name in names]
    return deploys.figures(None, env, days), each


def post_if_due(deploys: DeployService, now: datetime, post: Callable[[Digest, Figures], None]) -> str | None:
    """Claim this week's digest and ``post`` it, in one transaction: posted once, whatever the number of
    processes; the week posted for, or None when nothing is due."""
    digest = deploys.settings.digest
    if digest is None:
        return None
    store = deploys.store
    with store.transaction():
        week = digest_due(digest, now, store.get_meta(WEEK_KEY))
        if week:
            store.set_meta(WEEK_KEY, week)
            post(digest, weekly_figures(deploys, digest.env))
    return week
