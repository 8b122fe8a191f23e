"""What the deploy service reads: services.yaml and the roster, and the answers built on them.

``DeployRules`` holds one services.yaml, the roster and the store, and answers without changing anything:
who may approve (``who_may_approve``, ``may_decide``), how many approvals a request needs, what will run
(``shown_command``), people's names, versions, DORA figures and what a pipeline may report. ``DeployService``
(``bot.ops.deploys``) is the state machine built on it.
"""

from __future__ import annotations

import difflib
import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Self

from bot.errors import NotFound, OpsbotError
from bot.models import Expert
from bot.ops import rollbacks
from bot.ops import runner as deploy_runner
from bot.ops.metrics import Dora, dora
from bot.ops.policy import approvals_needed, describe_approvers, refusal, still_may_approve
from bot.ops.requests import Announcer, DeployRequest, _now, check_service, check_value
from bot.redact import scrub
from bot.services import (
    ConfigProblem,
    DeploySettings,
    Environment,
    Runner,
    ServiceConfig,
    parse_service,
    parse_settings,
)
from bot.store import Store


@dataclass(frozen=True)
class EnvState:
    """Where a service stands in one environment (``DeployRules.where_things_stand``)."""

    env: str
    current: DeployRequest | None  # the last run that succeeded: what runs there, by opsbot's record
    failed: DeployRequest | None  # the newest run, when it failed after that (it may be partly rolled out)
    active: DeployRequest | None  # the request holding the lock: waiting for approval, running, or with CI


class DeployRules:
    """services.yaml, the roster and the store, read: who may approve, what a request needs, what will run."""

    def __init__(
        self,
        store: Store,
        services: dict[str, ServiceConfig],
        settings: DeploySettings,
        experts: list[Expert],
        clock: Callable[[], datetime] = _now,
        workdir: str | None = None,
        owner: str | None = None,
        lease_clock: Callable[[], float] = time.time,
        announcer: Announcer | None = None,
    ) -> None:
        self.store = store
        self.services = services
        self.settings = settings
        self.experts = {e.id: e for e in experts}
        self.clock = clock
        self.workdir = workdir
        self.owner = owner or deploy_runner.process_owner()
        self.lease_clock = lease_clock  # wall-clock seconds, shared by every process on the database
        self.announcer = announcer

    @classmethod
    def from_store(
        cls,
        store: Store,
        clock: Callable[[], datetime] = _now,
        workdir: str | None = None,
        owner: str | None = None,
        lease_clock: Callable[[], float] = time.time,
        announcer: Announcer | None = None,
    ) -> Self:
        """Build from the services.yaml stored by `opsbot index` (invalid entries were reported there)."""
        services = {}
        for name, config in store.service_configs().items():
            try:
                parsed = parse_service(name, config)
            except ConfigProblem:
                continue
            if parsed is not None:
                services[name] = parsed
        try:
            settings = parse_settings(json.loads(store.get_meta("deploy_settings") or "null"))
        except ConfigProblem:
            settings = DeploySettings()
        return cls(store, services, settings, store.load_experts(), clock, workdir, owner, lease_clock, announcer)

    # -- the policy ---------------------------------------------------------------------------------

    def _deployable(self, service: str, typed: bool = False) -> ServiceConfig:
        """The service's config; NotFound names the deployable ones (and, for a name just ``typed``, the closest)."""
        check_service(service)
        config = self.services.get(service)
        if config is None:
            known = ", ".join(sorted(self.services)) or "none: add environments and a deploy runner in services.yaml"
            close = closest(service, self.services) if typed else ""
            hint = f" Did you mean {close}?" if close else ""
            raise NotFound(f"no deployable service {service!r}; deployable services: {known}.{hint}")
        return config

    def _service_env(
        self, service: str, env: str, version: str | None = None, kind: str = "deploy", typed: bool = False
    ) -> tuple[ServiceConfig, Environment]:
        """The service's config and environment. For names just ``typed`` (a new request), NotFound says what was
        meant when it can tell: a slip of the keyboard, the version and environment the other way round, a word
        too many. A stored request whose service or environment left services.yaml gets no such guess."""
        check_value("environment", env)
        config = self._deployable(service, typed)
        environment = config.environments.get(env)
        if environment is None:
            hint = ""
            order = "SERVICE VERSION ENV" if kind == "deploy" else "SERVICE ENV [VERSION]"
            if typed and version is not None and version in config.environments:  # SERVICE ENV VERSION, say
                fixed = f"{service} {env} {version}" if kind == "deploy" else f"{service} {version} {env}"
                hint = f" The order is /{kind} {order}: `/{kind} {fixed}`."
            elif typed:
                if close := closest(env, config.environments):
                    hint = f" Did you mean {close}?"
                if version is not None and len(version.split()) > 1:
                    hint += f" That is a word too many: /{kind} takes {order}."
            raise NotFound(f"{service} has no environment {env!r}; use one of {', '.join(config.environments)}.{hint}")
        return config, environment

    def _refusal(self, request: DeployRequest, stage: str, user: str = "") -> str | None:
        """``bot.ops.policy`` for this request as the store and services.yaml stand now (in a transaction)."""
        config = self.services.get(request.service)
        environment = config.environments.get(request.env) if config else None
        others = self.store.running_for(request.service, request.env)
        use = self.emergency_of(request)
        facts = replace(
            request.facts,
            lock_holder=self.store.lock_holder(request.service, request.env),
            running=tuple(r["id"] for r in others if r["id"] != request.id),
            emergency=use.incident if use else "",
        )
        allowed = self.approvers_for(environment) if environment else set()
        return refusal(config, facts, stage, self.clock(), allowed, user, self.names(), self.departed())

    def approvers_for(self, environment: Environment) -> set[str]:
        return self.members(environment.approvers)

    def departed(self) -> frozenset[str]:
        """The roster's people who have left by now: they approve nothing, whatever team or list names them."""
        now = self.clock()
        return frozenset(i for i, e in self.experts.items() if e.has_left(now))

    def members(self, entries: tuple[str, ...]) -> set[str]:
        """Roster ids named by ``entries``: ids themselves, and everyone in a team named; not people who have left."""
        departed = self.departed()
        present = {i: e for i, e in self.experts.items() if i not in departed}
        allowed = set()
        for entry in entries:
            if entry in present:
                allowed.add(entry)
            allowed.update(e.id for e in present.values() if e.team == entry)
        return allowed

    def service_approvers(self) -> dict[str, set[str]]:
        """Per deployable service, everyone who may approve its deploys to any environment."""
        return {
            name: set().union(*(self.approvers_for(env) for env in config.environments.values()))
            for name, config in self.services.items()
        }

    def valid_approvers(self, request: DeployRequest) -> list[str]:
        """Who approved it and may still approve it under services.yaml as it is now (never the requester)."""
        config = self.services.get(request.service)
        environment = config.environments.get(request.env) if config else None
        allowed = self.approvers_for(environment) if environment else set()
        return [a for a in dict.fromkeys(request.approvers) if a != request.requester and a in allowed]

    def approvals_needed(self, request: DeployRequest) -> int:
        """What the request needs now: as recorded, or more if services.yaml was raised since; a rollback under
        its environment's emergency rule (an incident that meets it is open), the rule's number."""
        config = self.services.get(request.service)
        environment = config.environments.get(request.env) if config else None
        if environment is None:
            return request.approvals_needed
        use = self.emergency_of(request)
        return approvals_needed(environment, replace(request.facts, emergency=use.incident if use else ""))

    def emergency_of(self, request: DeployRequest) -> rollbacks.EmergencyUse | None:
        """The open incident that lets this rollback use its environment's emergency rule now, if any."""
        config = self.services.get(request.service)
        environment = config.environments.get(request.env) if config else None
        return rollbacks.emergency_use(
            self.store, environment, request.kind, request.service, self.settings.incident_env
        )

    def emergency_recorded(self, request: DeployRequest) -> rollbacks.EmergencyUse | None:
        """The emergency rule this rollback went (or goes) under, as its last step recorded it."""
        config = self.services.get(request.service)
        environment = config.environments.get(request.env) if config else None
        return rollbacks.recorded_emergency(self.store, environment, request)

    def who_may_approve(self, request: DeployRequest) -> list[str]:
        """Who may still approve ``request`` under services.yaml as it is now, in words: people by name, a team
        as "the payments team" (as its members when only a few of them may still approve); never the requester
        nor who already approved. [] when nobody may, or its service or environment left services.yaml."""
        config = self.services.get(request.service)
        environment = config.environments.get(request.env) if config else None
        if environment is None:
            return []
        departed = self.departed()
        roster = [e for e in self.experts.values() if e.id not in departed]
        return still_may_approve(environment.approvers, roster, request.facts)

    def runner_of(self, kind: str, service: str) -> Runner | None:
        """What runs a request of this kind for the service now (a rollback with no runner of its own: the deploy's)."""
        config = self.services.get(service)
        if config is None:
            return None
        return config.rollback if kind == "rollback" and config.rollback else config.deploy

    def runner_kind(self, kind: str, service: str) -> str:
        """What runs such a request now, as recorded at its approval: command, webhook or webhook-report."""
        runner = self.runner_of(kind, service)
        if runner is None:
            return ""
        return "webhook-report" if runner.kind == "webhook" and runner.await_report else runner.kind

    def awaits_report(self, kind: str, service: str) -> bool:
        """Whether such a request runs a webhook whose pipeline reports its outcome back (``await_report``)."""
        return self.runner_kind(kind, service) == "webhook-report"

    def shown_command(self, request: DeployRequest) -> str:
        """What will run, as people read it, secrets written into services.yaml masked; "" when it no longer can."""
        try:
            return scrub(self.describe(request))
        except (OpsbotError, KeyError):
            return ""

    def names(self) -> dict[str, str]:
        """Roster ids to names."""
        return {user: expert.name for user, expert in self.experts.items()}

    def name(self, user: str) -> str:
        if user.startswith("ci:"):
            return f"CI ({user[3:]})"
        return self.experts[user].name if user in self.experts else f"<@{user}>"

    def may_decide(self, request: DeployRequest, user: str) -> str | None:
        """Why ``user`` may not approve or reject ``request``, or None when they may."""
        if user == request.requester:
            return "you requested this; someone else has to approve it."
        config, environment = self._service_env(request.service, request.env)
        if user not in self.approvers_for(environment):
            who = describe_approvers(environment.approvers, self.names())
            return f"only {who} may approve {request.service} deploys to {request.env}."
        return None

    # -- versions -------------------------------------------------------------------------------------------

    def current_version(self, service: str, env: str) -> str | None:
        """The version of the last deploy or rollback that succeeded."""
        return rollbacks.current_version(self.store, service, env)

    def failed_version(self, service: str, env: str) -> str | None:
        """The version of the newest run when it failed, timed out or was interrupted: it may be half rolled out."""
        return rollbacks.failed_version(self.store, service, env)

    def failed_run(self, service: str, env: str) -> tuple[str, str] | None:
        """(version, status) of the newest run when it may be half rolled out (see ``failed_version``)."""
        row = rollbacks.failed_run(self.store, service, env)
        return (row["version"], row["status"]) if row else None

    def where_things_stand(self, service: str) -> list[EnvState]:
        """Per environment of a deployable service (in services.yaml's order): what runs there by opsbot's record,
        the newest run when it failed after that, and the request holding its lock (waiting or running)."""
        config = self._deployable(service, typed=True)
        states = []
        with self.store.lock:
            for env in config.environments:
                last = self.store.succeeded_for(service, env, limit=1)
                current = self._get_locked(last[0]["id"]) if last else None
                failed = rollbacks.failed_run(self.store, service, env)
                holder = self.store.lock_holder(service, env)
                active = self._get_locked(holder) if holder and self.store.deploy_row(holder) else None
                states.append(EnvState(env, current, self._get_locked(failed["id"]) if failed else None, active))
        return states

    def rollback_target(self, service: str, env: str) -> str:
        """The last good version: the current one after a failed run, else the one that succeeded before it."""
        return rollbacks.rollback_target(self.store, service, env)

    def check_offer_stands(self, failed_id: str, service: str, env: str, version: str) -> None:
        """Refuse the Rollback button of failed deploy ``failed_id`` once another run of the service has ended there
        since: it offered the version that was the last good one then, and a newer one may run now."""
        rollbacks.check_offer_stands(self.store, failed_id, service, env, version)

    # -- a request as stored, and what it will run ------------------------------------------------------------

    def get(self, request_id: str) -> DeployRequest:
        with self.store.lock:
            return self._get_locked(request_id)

    def _get_locked(self, request_id: str) -> DeployRequest:
        row = self.store.deploy_row(request_id)
        if row is None:
            raise NotFound(f"no deploy request {request_id!r}.")
        return DeployRequest.from_row(row, self.store.decisions(request_id))

    def describe(self, request: DeployRequest) -> str:
        return deploy_runner.describe(self, request)

    # -- figures --------------------------------------------------------------------------------------------

    def figures(self, service: str | None, env: str, days: int = 30) -> Dora:
        """The DORA figures of a service (or all) in an environment, as every deploy summary shows them."""
        window, incident_env = self.settings.failure_window_hours, self.settings.incident_env
        return dora(self.store, service, env, days, self.clock(), window, incident_env)

    # -- CI/CD events: recorded by bot.ops.ci_deploys under this service's rules ---------------------------

    def ci_services(self) -> set[str]:
        """Services a pipeline may report: every one in services.yaml or on the roster."""
        services = set(self.store.service_configs()) | set(self.services)
        for expert in self.experts.values():
            services.update(expert.services)
        return services

    def ci_environments(self) -> dict[str, frozenset[str]]:
        """Per service that services.yaml configures environments for, those environments."""
        return {name: frozenset(c.environments) for name, c in self.services.items() if c.environments}


def closest(word: str, names: Iterable[str]) -> str:
    """The one of ``names`` that ``word`` was most likely meant to be (case aside, or a slip or two); "" if none."""
    lowered = {name.lower(): name for name in names}
    if word.lower() in lowered:
        return lowered[word.lower()]
    found = difflib.get_close_matches(word.lower(), list(lowered), n=1, cutoff=0.6)
    return lowered[found[0]] if found else ""
