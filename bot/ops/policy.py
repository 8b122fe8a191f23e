"""The deploy policy in one place: what must hold to request, approve and start a deploy or rollback.

The same rules are checked at every transition (request, each approval, the start of the run), against
services.yaml as it is now, not as it was when the request was made: a freeze that began after the
request, an approver who left the team, a service removed from the config or a deploy that CI started
meanwhile stop the request at the next step.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

from bot.models import Expert
from bot.services import Environment, ServiceConfig

REQUEST, APPROVE, START = "request", "approve", "start"
SLACK_USER_ID = re.compile(r"[UW][A-Z0-9]{6,}")
FEW_LEFT = 3  # a team with at most this many members left who may approve is named by its people


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


def describe_approvers(entries: tuple[str, ...] | list[str], names: Mapping[str, str]) -> str:
    """services.yaml's approvers in words: people by their roster name, anything else as a team."""
    # An id that is not on the roster stays an id: calling it a team would mislead.
    words = [names.get(e) or (e if SLACK_USER_ID.fullmatch(e) else f"the {e} team") for e in entries]
    return " or ".join([", ".join(words[:-1]), words[-1]]) if len(words) > 1 else "".join(words) or "nobody"


def still_may_approve(entries: tuple[str, ...] | list[str], roster: list[Expert], request: Facts) -> list[str]:
    """Who may still approve ``request``, in words: never its requester nor who already approved; a team as
    "the payments team", or by its members' names once some of it no longer may and only a few are left."""
    people = {e.id: e for e in roster}
    done = {request.requester, *request.approvers}
    words: list[str] = []
    for entry in entries:
        if entry in people:
            words += [] if entry in done else [people[entry].name]
            continue
        team = [e for e in roster if e.team == entry]
        left = [e for e in team if e.id not in done]
        if len(left) < len(team) and len(left) <= FEW_LEFT:
            words += [f"{e.name} ({entry})" for e in left]
        elif left:
            words.append(f"the {entry} team")
    return list(dict.fromkeys(words))


def refusal(
    config: ServiceConfig | None,
    facts: Facts,
    stage: str,
    now: datetime,
    allowed: set[str],
    user: str = "",
    names: Mapping[str, str] | None = None,
    departed: frozenset[str] = frozenset(),
) -> str | None:
    """Why ``stage`` may not happen now, in words for the person who asked; None when it may.

    ``names`` (roster id -> name) puts people in the message by name, never by id; ``departed`` are the
    roster's people who have left (never in ``allowed``).
    """
    names = names or {}
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
            who = describe_approvers(environment.approvers, names)
            if user in departed:
                return f"the roster (experts.yaml) says you have left; only {who} may approve {where} deploys."
            return f"only {who} may approve {facts.service} deploys to {facts.env}."
        return None
    valid = [a for a in dict.fromkeys(facts.approvers) if a != facts.requester and a in allowed]
    needed = approvals_needed(environment, facts)
    if len(valid) < needed:
        gone = [a for a in facts.approvers if a not in valid]
        why = f"; no longer allowed to approve: {', '.join(names.get(g, g) for g in gone)}" if gone else ""
        if facts.kind == "rollback" and environment.emergency is not None and not facts.emergency:
            why += "; the emergency rule no longer applies: no open incident meets it"
        return f"it has {len(valid)} of the {needed} approvals {where} needs now{why}."
    return None
