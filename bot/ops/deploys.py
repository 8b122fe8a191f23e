"""Deploys and rollbacks: request -> approve -> run -> summarise, with separation of duties.

``DeployService`` is the only writer of deploy rows, whatever their source: /deploy, /rollback, a rollback
button or a CI/CD event. Every state change is an atomic transition in SQLite (``store.transaction()`` takes
the write lock), so double clicks and concurrent approvals from several users or processes run a deploy
once, and ``bot.ops.policy`` is checked at every step. Running is in ``bot.ops.runner``; CI events
in ``bot.ops.ci_deploys``.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta

from bot.errors import InvalidRequest, NotFound, OpsbotError, PermissionDenied
from bot.models import Expert
from bot.ops import rollbacks
from bot.ops import runner as deploy_runner
from bot.ops.metrics import Dora, dora
from bot.ops.policy import APPROVE, REQUEST, START, Facts, approvals_needed, refusal
from bot.ops.requests import (
    AUTO_ROLLBACK_NOTE,
    Announcer,
    Decision,
    DeployRequest,
    Progress,
    _now,
    check_service,
    check_value,
    new_request_id,
    new_row,
)
from bot.redact import scrub
from bot.services import (
    ConfigProblem,
    DeploySettings,
    Environment,
    ServiceConfig,
    parse_service,
    parse_settings,
)
from bot.store import Store

log = logging.getLogger(__name__)


class DeployService:
    """The deploy state machine over the store, for one services.yaml."""

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
    ) -> DeployService:
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

    def _service_env(self, service: str, env: str) -> tuple[ServiceConfig, Environment]:
        check_service(service)
        check_value("environment", env)
        config = self.services.get(service)
        if config is None:
            known = ", ".join(sorted(self.services)) or "none: add environments and a deploy runner in services.yaml"
            raise NotFound(f"no deployable service {service!r}; deployable services: {known}.")
        environment = config.environments.get(env)
        if environment is None:
            raise NotFound(f"{service} has no environment {env!r}; use one of {', '.join(config.environments)}.")
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
        return refusal(config, facts, stage, self.clock(), allowed, user)

    def approvers_for(self, environment: Environment) -> set[str]:
        allowed = set()
        for entry in environment.approvers:
            if entry in self.experts:
                allowed.add(entry)
            allowed.update(e.id for e in self.experts.values() if e.team == entry)
        return allowed

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
        return rollbacks.emergency_use(self.store, environment, request.kind, request.service)

    def emergency_recorded(self, request: DeployRequest) -> rollbacks.EmergencyUse | None:
        """The emergency rule this rollback went (or goes) under, as its last step recorded it."""
        config = self.services.get(request.service)
        environment = config.environments.get(request.env) if config else None
        return rollbacks.recorded_emergency(self.store, environment, request)

    def who_may_approve(self, request: DeployRequest) -> list[str]:
        """Who may approve ``request`` now, in words (people by name, teams as "payments team"); [] when its
        service or environment left services.yaml."""
        config = self.services.get(request.service)
        environment = config.environments.get(request.env) if config else None
        if environment is None:
            return []
        return [self.name(a) if a in self.experts else f"{a} team" for a in environment.approvers]

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
            who = ", ".join(environment.approvers)
            return f"only {who} may approve {request.service} deploys to {request.env}."
        return None

    # -- requesting -----------------------------------------------------------------------------------

    def request(
        self, kind: str, service: str, env: str, version: str | None, requester: str, channel: str = ""
    ) -> DeployRequest:
        """Validate everything, then record a pending request holding the service/env lock."""
        config, environment = self._service_env(service, env)
        note = ""
        if kind == "rollback":
            if config.rollback is None and config.deploy is None:
                raise InvalidRequest(f"{service} has no rollback runner in services.yaml.")
            current = self.current_version(service, env)
            broken = self.failed_version(service, env)
            if version is None:
                version, note = self.rollback_target(service, env), AUTO_ROLLBACK_NOTE
            if current is not None and version == current and broken is None:
                raise InvalidRequest(f"{version} is what {service} already runs in {env}; name an earlier version.")
        elif version is None:
            raise InvalidRequest("give the version to deploy: /deploy SERVICE VERSION ENV.")
        check_value("version", version)
        if kind == "rollback":
            rollbacks.check_target(self.store, service, env, version)
        now = self.clock()
        facts = Facts(kind, service, env, version, requester)
        why = refusal(config, facts, REQUEST, now, self.approvers_for(environment))
        if why is not None:
            error = PermissionDenied if "frozen" in why else InvalidRequest
            raise error(why + (" Nothing was requested." if error is PermissionDenied else ""))
        from_version = self.current_version(service, env) or ""
        if kind == "rollback":  # after a failed run, what is rolled back is that half-deployed version
            from_version = self.failed_version(service, env) or from_version
        request_id = new_request_id(now)
        use = rollbacks.emergency_use(self.store, environment, kind, service)
        row = new_row(
            request_id,
            kind=kind,
            service=service,
            env=env,
            version=version,
            from_version=from_version,
            requester=requester,
            approvals_needed=use.approvals if use else environment.approvals,
            emergency=use.incident if use else "",
            created_at=_iso(now),
            expires_at=_iso(now + timedelta(minutes=self.settings.request_ttl_minutes)),
            channel=channel,
            note=note,
        )
        with self.store.transaction():
            self._expire_locked_if_due(service, env)
            holder = self.store.take_lock(service, env, request_id, requester)
            if holder is not None:
                held = self.store.deploy_row(holder)
                who = self.name(held["requester"]) if held else "someone"
                raise PermissionDenied(
                    f"{service} {env} is locked by {who}'s {held['kind'] if held else 'request'} {holder} "
                    f"({held['status'] if held else 'active'}); wait for it to finish or expire."
                )
            self.store.insert_deploy(row)
            self.store.audit(requester, f"{kind}.requested", request_id, service=service, env=env, version=version)
            if use is not None:
                rollbacks.audit_emergency(self.store, request_id, use)
            self.announce("requested", request_id)
        log.info(
            "deploy requested id=%s service=%s env=%s version=%s by=%s", request_id, service, env, version, requester
        )
        return self.get(request_id)

    def _expire_locked_if_due(self, service: str, env: str) -> None:
        for row in self.store.pending_for(service, env):
            if row["expires_at"] and datetime.fromisoformat(row["expires_at"]) <= self.clock():
                self._expire(row["id"])

    def current_version(self, service: str, env: str) -> str | None:
        """The version of the last deploy or rollback that succeeded."""
        return rollbacks.current_version(self.store, service, env)

    def failed_version(self, service: str, env: str) -> str | None:
        """The version of the newest run when it failed, timed out or was interrupted: it may be half rolled out."""
        return rollbacks.failed_version(self.store, service, env)

    def rollback_target(self, service: str, env: str) -> str:
        """The last good version: the current one after a failed run, else the one that succeeded before it."""
        return rollbacks.rollback_target(self.store, service, env)

    # -- deciding ---------------------------------------------------------------------------------------

    def approve(self, request_id: str, user: str) -> Decision:
        return self._decide(request_id, user, "approve")

    def reject(self, request_id: str, user: str) -> Decision:
        return self._decide(request_id, user, "reject")

    def _decide(self, request_id: str, user: str, decision: str) -> Decision:
        with self.store.transaction():
            request = self._get_locked(request_id)
            if request.status == "pending" and self._is_due(request):
                self._expire(request_id)
                request = self._get_locked(request_id)
            if request.status != "pending":
                return Decision(request, "closed", f"this request is already {request.status}.")
            if decision == "reject":
                return self._reject(request, user)
            request = rollbacks.track_emergency(self, request)
            why = self._refusal(request, APPROVE, user)
            if why:
                self.store.audit(user, f"{request.kind}.approve.refused", request_id, reason=why)
                return Decision(request, "refused", why)
            if not self.store.record_decision(request_id, user, decision):
                more = self.approvals_needed(request) - len(request.approvers)
                return Decision(request, "recorded", f"you already decided; {more} more approval(s) needed.")
            self.store.audit(user, f"{request.kind}.approved", request_id)
            request = self._get_locked(request_id)
            missing = self.approvals_needed(request) - len(self.valid_approvers(request))
            if missing > 0:
                self.announce("approved", request_id)
                return Decision(request, "recorded", f"approved; {missing} more approval(s) needed.")
            why = self._refusal(request, START)
            if why:
                self.announce("approved", request_id)
                return Decision(request, "recorded", f"approved, but it cannot start: {why}")
            lease = self.lease_clock() + deploy_runner.LEASE_S
            started = self.store.transition(
                request_id, "pending", "running", started_at=_iso(self.clock()), owner=self.owner, lease_until=lease
            )
            if not started:
                return Decision(self._get_locked(request_id), "closed", "this request was already started.")
            under = {"emergency": request.emergency} if request.emergency else {}  # fewer approvals: say why
            approvers = list(request.approvers)
            self.store.audit("opsbot", f"{request.kind}.started", request_id, approvers=approvers, **under)
            self.announce("started", request_id)
            return Decision(self._get_locked(request_id), "approved", "approved; starting now.")

    def _reject(self, request: DeployRequest, user: str) -> Decision:
        # The requester may withdraw (reject) their own request, never approve it.
        why = None if user == request.requester else self.may_decide(request, user)
        if why:
            self.store.audit(user, f"{request.kind}.reject.refused", request.id, reason=why)
            return Decision(request, "refused", why)
        self.store.record_decision(request.id, user, "reject")
        self.store.audit(user, f"{request.kind}.rejected", request.id)
        self.store.transition(request.id, "pending", "rejected", finished_at=_iso(self.clock()))
        self.store.release_lock(request.id)
        self.announce("rejected", request.id)
        return Decision(self._get_locked(request.id), "rejected", "rejected; nothing will run.")

    def _is_due(self, request: DeployRequest) -> bool:
        return bool(request.expires_at) and datetime.fromisoformat(request.expires_at) <= self.clock()

    def _expire(self, request_id: str) -> None:
        if self.store.transition(request_id, "pending", "expired", finished_at=_iso(self.clock())):
            self.store.release_lock(request_id)
            self.store.audit("opsbot", "deploy.expired", request_id)
            self.announce("expired", request_id)

    def expire_due(self) -> list[DeployRequest]:
        """Expire every pending request past its time; returns them so their messages can say so."""
        expired = []
        with self.store.transaction():
            for row in self.store.pending_deploys():
                if row["expires_at"] and datetime.fromisoformat(row["expires_at"]) <= self.clock():
                    self._expire(row["id"])
                    expired.append(row["id"])
        return [self.get(i) for i in expired]

    def recover_interrupted(self) -> list[DeployRequest]:
        """Deploys whose process stopped (their lease ran out) are interrupted, never re-run; their runner is stopped.

        A deploy this process is running is never touched, nor one whose owner still renews its lease: a
        second opsbot process on the same database leaves the first one's deploys alone.
        """
        interrupted = []
        with self.store.transaction():
            for row in self.store.expired_leases(self.lease_clock()):
                if deploy_runner.is_live(row["id"]):
                    continue
                deploy_runner.stop_orphan(row["id"], row["runner_pid"])
                reason = "its opsbot process stopped while it was running"
                if self.store.transition(
                    row["id"], "running", "interrupted", finished_at=_iso(self.clock()), note=reason
                ):
                    self.store.release_lock(row["id"])
                    self.store.audit("opsbot", "deploy.interrupted", row["id"], reason=reason, owner=row["owner"])
                    self.announce("interrupted", row["id"])
                    interrupted.append(row["id"])
        return [self.get(i) for i in interrupted]

    def announce(self, event: str, request_id: str) -> None:
        """Tell the announcer, inside the current transaction; only a database error may undo the change."""
        if self.announcer is None:
            return
        self.store._require_transaction()
        try:
            self.announcer.announce(event, self._get_locked(request_id), self)
        except sqlite3.Error:
            raise  # the post could not be stored with the change: neither happens
        except Exception:  # a rendering bug must never block a deploy's state change
            log.exception("announcing a deploy failed event=%s id=%s", event, request_id)

    def set_message(self, request_id: str, channel: str, ts: str) -> None:
        with self.store.transaction():
            self.store.update_deploy(request_id, channel=channel, message_ts=ts)

    def get(self, request_id: str) -> DeployRequest:
        with self.store.lock:
            return self._get_locked(request_id)

    def _get_locked(self, request_id: str) -> DeployRequest:
        row = self.store.deploy_row(request_id)
        if row is None:
            raise NotFound(f"no deploy request {request_id!r}.")
        return DeployRequest.from_row(row, self.store.decisions(request_id))

    # -- running ------------------------------------------------------------------------------------------

    def execute(self, request_id: str, progress: Progress | None = None) -> DeployRequest:
        """Run a request that ``approve`` moved to running: policy checked again, then its runner; final state."""
        return deploy_runner.execute(self, request_id, progress)

    def describe(self, request: DeployRequest) -> str:
        return deploy_runner.describe(self, request)

    def start_check(self, request: DeployRequest) -> str | None:
        """The policy at the start of the run, in its own transaction: why it may not start, or None."""
        with self.store.transaction():
            return self._refusal(rollbacks.track_emergency(self, self._get_locked(request.id)), START)

    # -- CI/CD events: recorded by bot.ops.ci_deploys under this service's rules ------------------------------

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


def _iso(when: datetime) -> str:
    return when.astimezone(UTC).isoformat(timespec="seconds")
