"""The deploy policy in one place: what must hold to request, approve and start a deploy or rollback.

The same rules are checked at every transition (request, each approval, the start of the run), against
services.yaml as it is now, not as it was when the request was made: a freeze that began after the
request, an approver who left the team, a service removed from the config or a deploy that CI started
meanwhile stop the request at the next step.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

from bot.services import Environment, ServiceConfig

REQUEST, APPROVE, START = "request", "approve", "start"


@dataclass(frozen=True)
class Facts:
    """What the policy needs to know about one request at one moment."""

    kind: str
    service: str
    env: str
    version: str
    requester: str
    request_id: str = ""  # empty while it is being requested
    approvals_needed: int = 0  # as recorded when it was requested
    approvers: tuple[str, ...] = ()  # who approved it so far, in order
    lock_holder: str | None = None  # the request holding the service/env lock
    running: tuple[str, ...] = ()  # other requests running for this service and environment
    emergency: str = ""  # an open incident that meets the environment's emergency rule now ("" when none)


def approvals_needed(environment: Environment, facts: Facts) -> int:
    """How many approvals the request needs now: the environment's (or more, as recorded when it was requested);
    for a rollback while an incident meets the environment's emergency rule, the rule's number."""
    if facts.kind == "rollback" and facts.emergency and environment.emergency is not None:
        return environment.emergency.rollback_approvals
    return max(facts.approvals_needed, environment.approvals)


def refusal(
    config: ServiceConfig | None,
    facts: Facts,
    stage: str,
    now: datetime,
    allowed: set[str],
    user: str = "",
) -> str | None:
    """Why ``stage`` may not happen now, in words for the person who asked; None when it may."""
    where = f"{facts.service} {facts.env}"
    if config is None:
        return f"{facts.service} is no longer deployable: services.yaml has no deploy settings for it."
    environment = config.environments.get(facts.env)
    if environment is None:
        return f"{facts.service} no longer has an environment {facts.env!r} in services.yaml."
    if not re.fullmatch(config.version_pattern, facts.version):
        return f"version {facts.version!r} does not match {facts.service}'s version_pattern {config.version_pattern}."
    freeze = environment.frozen_at(now)
    if freeze is not None:
        why = f" ({freeze.reason})" if freeze.reason else ""
        return f"{where} is frozen until {freeze.end.isoformat(timespec='minutes')}{why}."
    if stage == REQUEST:
        return None
    if facts.lock_holder != facts.request_id:
        holder = facts.lock_holder or "nobody"
        return f"this request no longer holds the {where} lock (held by {holder})."
    if facts.running:
        return f"{where} is being deployed right now ({', '.join(facts.running)}); approve again once it finished."
    if stage == APPROVE:
        if user == facts.requester:
            return "you requested this; someone else has to approve it."
        if user not in allowed:
            return f"only {', '.join(environment.approvers)} may approve {facts.service} deploys to {facts.env}."
        return None
    valid = [a for a in dict.fromkeys(facts.approvers) if a != facts.requester and a in allowed]
    needed = approvals_needed(environment, facts)
    if len(valid) < needed:
        gone = [a for a in facts.approvers if a not in valid]
        why = f"; no longer allowed to approve: {', '.join(gone)}" if gone else ""
        if facts.kind == "rollback" and environment.emergency is not None and not facts.emergency:
            why += "; the emergency rule no longer applies: no open incident meets it"
        return f"it has {len(valid)} of the {needed} approvals {where} needs now{why}."
    return None
