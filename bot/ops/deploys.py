"""Deploys and rollbacks: request -> approve -> run -> summarise, with separation of duties.

``DeployService`` is the only writer of deploy rows, whatever their source: /deploy, /rollback, a rollback
button or a CI/CD event. Every state change is an atomic transition in SQLite (``store.transaction()`` takes
the write lock), so double clicks and concurrent approvals from several users or processes run a deploy
once, and ``bot.ops.policy`` is checked at every step. What it reads without changing anything (who may
approve, what will run, names, figures) is in ``bot.ops.deploy_rules``, the class it extends; running is in
``bot.ops.runner``; CI events in ``bot.ops.ci_deploys``.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from bot.errors import InvalidRequest, PermissionDenied
from bot.ops import rollbacks
from bot.ops import runner as deploy_runner
from bot.ops.deploy_rules import DeployRules, EnvState
from bot.ops.metrics import moment
from bot.ops.policy import APPROVE, REQUEST, START, Facts, refusal
from bot.ops.requests import (
    AUTO_ROLLBACK_NOTE,
    Decision,
    DeployRequest,
    Progress,
    check_value,
    new_request_id,
    new_row,
)
from bot.redact import scrub

log = logging.getLogger(__name__)
# How long a deploy whose lease ran out is left to its process while that process still runs here: a full disk or a
# pause may outlast a lease, not half an hour of renewing nothing (it is stuck; its deploy is taken for an orphan).
OWNER_PATIENCE_S = 1800


class DeployService(DeployRules):
    """The deploy state machine over the store, for one services.yaml."""

    # -- requesting -----------------------------------------------------------------------------------

    def request(
        self, kind: str, service: str, env: str, version: str | None, requester: str, channel: str = ""
    ) -> DeployRequest:
        """Validate everything, then record a pending request holding the service/env lock."""
        config, environment = self._service_env(service, env, version, kind, typed=True)
        with self.store.transaction():  # first: what it ends (a pipeline that never reported) decides the versions
            self._expire_locked_if_due(service, env)
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
        why = refusal(config, facts, REQUEST, now, self.approvers_for(environment), names=self.names())
        if why is not None:
            error = PermissionDenied if "frozen" in why else InvalidRequest
            raise error(why + (" Nothing was requested." if error is PermissionDenied else ""))
        from_version = self.current_version(service, env) or ""
        if kind == "rollback":  # after a failed run, what is rolled back is that half-deployed version
            from_version = self.failed_version(service, env) or from_version
        request_id = new_request_id(now)
        use = rollbacks.emergency_use(self.store, environment, kind, service, self.settings.incident_env)
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
            self._expire_locked_if_due(service, env)  # again: time went on
            holder = self.store.take_lock(service, env, request_id, requester)
            if holder is not None:
                held = self.store.deploy_row(holder)
                who = self.name(held["requester"]) if held else "someone"
                raise PermissionDenied(_locked_by(service, env, who, holder, held))
            self.store.insert_deploy(row)
            self.store.audit(requester, f"{kind}.requested", request_id, service=service, env=env, version=version)
            if use is not None:
                rollbacks.audit_emergency(self.store, request_id, use)
            self.announce("requested", request_id)
        log.info(
            "deploy requested id=%s service=%s env=%s version=%s by=%s", request_id, service, env, version, requester
        )
        return self.get(request_id)

    def where_things_stand(self, service: str, settle: bool = True) -> list[EnvState]:
        """``DeployRules.where_things_stand``; with ``settle``, once what held a lock past its time has ended (as a
        request would). Without, it only reads (`opsbot deploys --now`)."""
        config = self.services.get(service)
        if settle and config is not None:
            with self.store.transaction():
                for env in config.environments:
                    self._expire_locked_if_due(service, env)
        return super().where_things_stand(service)

    def _expire_locked_if_due(self, service: str, env: str) -> None:
        """End what holds the lock past its time, without waiting for the sweep (which only `opsbot serve` runs): a
        pending request that expired, a pipeline that never reported."""
        for row in self.store.pending_for(service, env):
            if row["expires_at"] and datetime.fromisoformat(row["expires_at"]) <= self.clock():
                self._expire(row["id"], row["kind"])
        cutoff = _iso(self.clock() - timedelta(hours=self.settings.stale_ci_hours))
        for row in self.store.awaiting_reports_started_before(cutoff):
            if (row["service"], row["env"]) == (service, env):
                self.abandon(row)

    def abandon(self, row: dict, note: str = "", actor: str = "opsbot") -> bool:
        """Stop waiting for the end of a deploy: a CI deploy that sent no finish, or a request whose pipeline sent
        no report (within ``stale_ci_hours``, unless ``note`` says otherwise). Its outcome is unknown; the lock is
        released; a late finish or report still settles it. In the caller's transaction; False if it ended meanwhile."""
        hours = self.settings.stale_ci_hours
        if not note:
            note = f"no end of this CI deploy arrived within {hours} hours"
            if row["status"] == "awaiting_ci":
                note = f"its pipeline took the trigger and sent no report within {hours} hours"
        if not self.store.transition(row["id"], row["status"], "abandoned", finished_at=_iso(self.clock()), note=note):
            return False
        self.store.release_lock(row["id"])
        action = "withdrawn" if actor != "opsbot" else "abandoned"
        self.store.audit(actor, f"{row['kind']}.{action}", row["id"], reason=note, was=row["status"])
        self.announce("abandoned", row["id"])
        return True

    # -- deciding ---------------------------------------------------------------------------------------

    def approve(self, request_id: str, user: str) -> Decision:
        return self._decide(request_id, user, "approve")

    def reject(self, request_id: str, user: str) -> Decision:
        return self._decide(request_id, user, "reject")

    def _decide(self, request_id: str, user: str, decision: str) -> Decision:
        with self.store.transaction():
            request = self._current(request_id)
            if request.status != "pending":
                return Decision(request, "closed", f"this request is already {request.status}.")
            if decision == "reject":
                return self._reject(request, user)
            request = rollbacks.track_emergency(self, request)
            why = self._refusal(request, APPROVE, user) or self._same_login(request, user)
            if why:
                self.store.audit(user, f"{request.kind}.approve.refused", request_id, reason=why)
                return Decision(request, "refused", why)
            # A second click by who already approved still starts a request whose approvals became enough since (an
            # incident that meets the emergency rule was declared): else it would wait, approved, until it expires.
            fresh = self.store.record_decision(request_id, user, decision)
            if fresh:
                self.store.audit(user, f"{request.kind}.approved", request_id)
            request = self._get_locked(request_id)
            missing = self.approvals_needed(request) - len(self.valid_approvers(request))
            if missing > 0 and not fresh:
                return Decision(request, "recorded", f"you already decided; {missing} more approval(s) needed.")
            if missing > 0:
                self.announce("approved", request_id)
                return Decision(request, "recorded", f"approved; {missing} more approval(s) needed.")
            why = self._refusal(request, START)
            if why:
                self.announce("approved", request_id)
                return Decision(request, "recorded", f"approved, but it cannot start: {why}")
            lease = self.lease_clock() + deploy_runner.LEASE_S
            started = self.store.transition(
                request_id,
                "pending",
                "running",
                started_at=_iso(self.clock()),
                owner=self.owner,
                lease_until=lease,
                runner_kind=self.runner_kind(request.kind, request.service),
            )
            if not started:
                return Decision(self._get_locked(request_id), "closed", "this request was already started.")
            under = {"emergency": request.emergency} if request.emergency else {}  # fewer approvals: say why
            # the approvals it ran on; one that no longer counts (its giver removed from the approvers since) apart
            approvers = self.valid_approvers(request)
            discounted = [a for a in request.approvers if a not in approvers]
            under |= {"discounted": discounted} if discounted else {}
            self.store.audit("opsbot", f"{request.kind}.started", request_id, approvers=approvers, **under)
            self.announce("started", request_id)
            return Decision(self._get_locked(request_id), "approved", "approved; starting now.")

    def _same_login(self, request: DeployRequest, user: str) -> str | None:
        """Why an approval typed in `opsbot shell` does not count: its login already requested or approved the request.

        /user acts as anyone on the roster, so one login is one person, whichever names it typed under: else one
        person at a terminal could request as one name and approve as another (or two others, for prod).
        """
        via = self.store.audit_via
        if not via:
            return None
        kind = request.kind
        acted = self.store.acted_via(request.id, via, (f"{kind}.requested", f"{kind}.approved"))
        # their own approval a second time is answered as "you already decided" below
        others = [(actor, action) for actor, action in acted if (actor, action) != (user, f"{kind}.approved")]
        if not others:
            return None
        actor, action = others[0]
        did = "requested" if action.endswith(".requested") else "approved"
        name = self.name(actor)
        return (
            f"this login already {did} {request.id} in opsbot shell, as {name}: whatever name /user gives, one "
            "login is one person, so the approval must come from someone else (in Slack, or their own login)."
        )

    def _reject(self, request: DeployRequest, user: str) -> Decision:
        # The requester may withdraw (reject) their own request, never approve it. One whose service or environment
        # left services.yaml can never run: anyone on the roster may close it, rather than it hold the lock.
        config = self.services.get(request.service)
        gone = config is None or request.env not in config.environments
        if user == request.requester:
            why = None
        elif gone:
            present = user in self.experts and user not in self.departed()
            why = None if present else "only someone on the roster may close this request."
        else:
            why = self.may_decide(request, user)
        if why:
            self.store.audit(user, f"{request.kind}.reject.refused", request.id, reason=why)
            return Decision(request, "refused", why)
        self.store.record_decision(request.id, user, "reject", replace=True)  # an approver may change their mind
        self.store.audit(user, f"{request.kind}.rejected", request.id)
        self.store.transition(request.id, "pending", "rejected", finished_at=_iso(self.clock()))
        self.store.release_lock(request.id)
        self.announce("rejected", request.id)
        return Decision(self._get_locked(request.id), "rejected", "rejected; nothing will run.")

    def withdraw(self, request_id: str, actor: str, reason: str = "") -> DeployRequest:
        """A pending request withdrawn by an admin from the command line (its message lost with a closed
        `opsbot shell`, or its requester away while it holds the lock): rejected, its lock released, audited as
        ``withdrawn`` by ``actor``. A request whose pipeline has not reported (``awaiting_ci``) is given up on
        instead: abandoned, its lock released; the pipeline goes on, and its report, if it comes, still settles
        it. Nothing else can be withdrawn: this never starts or stops a deploy."""
        reason = scrub(reason).strip()  # typed by hand: a token pasted in it is stored and shown in Slack
        with self.store.transaction():
            request = self._current(request_id)  # one whose time ran out is expired, and stays so
            if request.status == "awaiting_ci":
                who = actor.removeprefix("cli:")
                note = f"given up on from the command line by {who}" + (f": {reason}" if reason else "")
                self.abandon({"id": request_id, "kind": request.kind, "status": "awaiting_ci"}, note, actor)
                return self._get_locked(request_id)
            if request.status == "pending":
                self.store.record_decision(request_id, actor, "reject", replace=True)
                self.store.audit(actor, f"{request.kind}.withdrawn", request_id, reason=reason)
                because = {"note": reason} if reason else {}
                self.store.transition(request_id, "pending", "rejected", finished_at=_iso(self.clock()), **because)
                self.store.release_lock(request_id)
                self.announce("rejected", request_id)
                return self._get_locked(request_id)
        raise InvalidRequest(
            f"{request_id} is {request.status.replace('_', ' ')}, not pending: only a request that waits for "
            "approval, or for the report of the pipeline it triggered, can be withdrawn."
        )

    def show_withdrawn(self, elsewhere: tuple[str, ...] = ()) -> list[str]:
        """Show in Slack the requests `opsbot withdraw` changed (it writes to the database alone): a withdrawn request's
        message loses its buttons, an abandoned one says its outcome is unknown. Each once (audited as ``shown``);
        their ids. Requests made in the ``elsewhere`` channels (`opsbot shell`'s) have no message here to show."""
        with self.store.transaction():
            shown = []
            for request_id in self.store.withdrawn_unshown():
                request = self._get_locked(request_id)
                if request.channel in elsewhere:  # marked all the same, so it is not read again at every sweep
                    self.store.audit(
                        "opsbot", f"{request.kind}.shown", request_id, status=request.status, elsewhere=True
                    )
                    continue
                shown.append(request_id)
                self.announce("abandoned" if request.status == "abandoned" else "current", request_id)
                self.store.audit("opsbot", f"{request.kind}.shown", request_id, status=request.status)
        return shown

    def show_as_it_stands(self, request_id: str) -> None:
        """Have the announcer show the request as it stands now (a message that missed a change made elsewhere)."""
        with self.store.transaction():
            self.announce("current", request_id)

    def _current(self, request_id: str) -> DeployRequest:
        """The request as it stands, expired first when its time ran out (in the caller's transaction)."""
        request = self._get_locked(request_id)
        if request.status == "pending" and self._is_due(request):
            self._expire(request_id, request.kind)
            request = self._get_locked(request_id)
        return request

    def _is_due(self, request: DeployRequest) -> bool:
        return self._due(request.expires_at)

    def _due(self, expires_at: str | None) -> bool:
        """Whether a pending request that expires then has run out of time."""
        return bool(expires_at) and datetime.fromisoformat(expires_at) <= self.clock()

    def _expire(self, request_id: str, kind: str) -> None:
        if self.store.transition(request_id, "pending", "expired", finished_at=_iso(self.clock())):
            self.store.release_lock(request_id)
            self.store.audit("opsbot", f"{kind}.expired", request_id)  # a rollback's as a rollback's
            self.announce("expired", request_id)

    def expire_due(self) -> list[DeployRequest]:
        """Expire every pending request past its time; returns them so their messages can say so."""
        expired = []
        with self.store.transaction():
            for row in self.store.pending_deploys():
                if self._due(row["expires_at"]):
                    self._expire(row["id"], row["kind"])
                    expired.append(row["id"])
        return [self.get(i) for i in expired]

    def announce_pending_again(self, channels: tuple[str, ...]) -> list[str]:
        """Announce the requests made in ``channels`` that still wait for approval as if just requested (not those
        whose time ran out: the expiry sweep ends them); their ids. For `opsbot shell`, whose messages of an earlier
        session went with its stand-in Slack: each gets a new message with its buttons instead of holding its lock
        unseen. Requests made in a real workspace (other channels) are not touched."""
        if not any(row["channel"] in channels for row in self.store.pending_deploys()):
            return []  # read first: a shell starting while another process writes must not wait on it for nothing
        with self.store.transaction():
            pending = [
                row["id"]
                for row in self.store.pending_deploys()
                if row["channel"] in channels and not self._due(row["expires_at"])
            ]
            for request_id in pending:
                self.store.update_deploy(request_id, message_ts="")  # the old message is gone: edits find the new one
                self.announce("requested", request_id)
        return pending

    def recover_interrupted(self) -> list[DeployRequest]:
        """Deploys whose process stopped (their lease ran out) are interrupted, never re-run; their runner is stopped.

        A deploy this process is running is never touched, nor one whose owner still renews its lease: a
        second opsbot process on the same database leaves the first one's deploys alone. Nor one whose owner still
        runs on this host though its lease ran out: the database refused the renewals (a full disk) or the process
        was paused; its deploy runs, and is settled when it ends.
        """
        interrupted = []
        with self.store.transaction():
            expired = [r for r in self.store.expired_leases(self.lease_clock()) if not deploy_runner.is_live(r["id"])]
            orphaned = [r for r in expired if not self._owner_still_runs(r)]
            for row in expired:
                if row not in orphaned:
                    log.info("deploy lease ran out but its process still runs id=%s owner=%s", row["id"], row["owner"])
            deploy_runner.stop_orphans([(row["id"], row["runner_pid"]) for row in orphaned])  # before they are marked
            for row in orphaned:
                # what the row says it runs, not services.yaml now; "" (an older opsbot's): interrupted, as before
                webhook = row["runner_kind"] in ("webhook", "webhook-report")
                if webhook and not row["triggered_at"]:
                    self._cancel_untriggered(row)
                    continue
                if row["runner_kind"] == "webhook-report":
                    self._hand_off_unknown(row)
                    continue
                reason = "its opsbot process stopped before it finished (queued or running)"
                if self.store.transition(
                    row["id"], "running", "interrupted", finished_at=_iso(self.clock()), note=reason
                ):
                    self.store.release_lock(row["id"])
                    audit = f"{row['kind']}.interrupted"  # a rollback's as a rollback's
                    self.store.audit("opsbot", audit, row["id"], reason=reason, owner=row["owner"])
                    self.announce("interrupted", row["id"])
                    interrupted.append(row["id"])
        return [self.get(i) for i in interrupted]

    def _owner_still_runs(self, row: dict) -> bool:
        """Whether the process that holds ``row`` still runs here, and its lease ran out less than OWNER_PATIENCE_S
        ago: past that, a process that renews nothing is stuck, and its deploy is taken for an orphan."""
        lease_until = float(row["lease_until"] or 0)
        if self.lease_clock() - lease_until > OWNER_PATIENCE_S:
            return False
        held_since = moment(row["started_at"] or row["created_at"])
        return held_since is not None and deploy_runner.owner_alive(row["owner"] or "", held_since.timestamp())

    def _cancel_untriggered(self, row: dict) -> None:
        """A webhook request whose process stopped before its trigger went out: nothing can have started, so it is
        cancelled, not interrupted (which says it may be half rolled out); a stalled process will not send it."""
        note = "not started: its opsbot process stopped before it sent the trigger, so nothing was sent."
        if self.store.transition(row["id"], "running", "cancelled", finished_at=_iso(self.clock()), note=note):
            self.store.release_lock(row["id"])
            self.store.audit("opsbot", f"{row['kind']}.finished", row["id"], status="cancelled", reason=note)
            self.announce("finished", row["id"])

    def _hand_off_unknown(self, row: dict) -> None:
        """A request whose process stopped after it sent the trigger of a pipeline that reports back: it waits for that
        report, holding its lock, as if the trigger was taken. The pipeline may be deploying: ending the request
        would let another deploy start beside it. If no report comes, the stale sweep or `opsbot withdraw` ends it.
        (One whose process stopped before the trigger went out is cancelled: nothing can have started.)"""
        unknown = deploy_runner.unknown_start(row["id"])
        note = f"its opsbot process stopped while it triggered the pipeline, so {unknown}"
        if self.store.transition(row["id"], "running", "awaiting_ci", note=note, lease_until=None):
            self.store.audit("opsbot", f"{row['kind']}.handed_off", row["id"], reason=note, owner=row["owner"])
            self.announce("handed-off", row["id"])

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

    # -- running ------------------------------------------------------------------------------------------

    def while_running(self, request_id: str, show: Callable[[], None]) -> bool:
        """Call ``show`` (a progress post) in a transaction, only if the request still runs; True if it did.

        The finish stores the final log edit in its own transaction: a progress edit stored after it would replace it.
        """
        with self.store.transaction():
            row = self.store.deploy_row(request_id)
            if row is None or row["status"] != "running":
                return False
            show()
            return True

    def execute(self, request_id: str, progress: Progress | None = None) -> DeployRequest:
        """Run a request that ``approve`` moved to running: policy checked again, then its runner; final state."""
        return deploy_runner.execute(self, request_id, progress)

    def start_check(self, request: DeployRequest) -> str | None:
        """The policy at the start of the run, in its own transaction: why it may not start, or None."""
        with self.store.transaction():
            return self._refusal(rollbacks.track_emergency(self, self._get_locked(request.id)), START)


def _locked_by(service: str, env: str, who: str, holder: str, held: dict | None) -> str:
    """Why a request cannot be made: the lock's holder, and what ends it."""
    what = f"{service} {env} is locked by {who}'s {held['kind'] if held else 'request'} {holder}"
    status = held["status"] if held else "active"
    if status == "awaiting_ci":
        return (
            f"{what}, whose pipeline is deploying it and has not reported how it went; wait for its report (an admin "
            f"can run `opsbot withdraw {holder}` to stop waiting for it)."
        )
    if status == "pending":
        return (
            f"{what} (pending); wait for it to finish or expire (its requester may Reject it; an admin can run "
            f"`opsbot withdraw {holder}`)."
        )
    return f"{what} ({status.replace('_', ' ')}); wait for it to finish or expire."


def _iso(when: datetime) -> str:
    return when.astimezone(UTC).isoformat(timespec="seconds")
