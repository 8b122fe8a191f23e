"""Deploy events from CI/CD, recorded by the deploy service under the rules /deploy follows.

opsbot cannot stop a pipeline, so it records what the pipeline did, truthfully, and flags what broke the
rules: a deploy while another holds the service/env lock or runs, a deploy into a frozen environment.
A CI deploy that starts while another holds the lock is never made a second running deploy: it is
recorded as ``overlapping`` (it does not take the lock; at most one deploy of a service and environment is
``running``, the lock holder), the flag is stored with the row, audited, and shown where the deploy is
shown, and until it ends no pending request can be approved. The actor is
recorded as ``ci:<actor>``, so a pipeline can never act as opsbot or as a person on the roster.

An event that names the /deploy request which triggered its pipeline (``request_id``: a webhook runner's
``{request_id}``, sent back) reports on that request instead of adding a deploy: the pipeline's outcome
becomes the request's, so one change is counted once and a pipeline that failed after accepting the
trigger shows as failed.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from bot.ops.ci_events import FINISHED, DeployEvent, EventProblem
from bot.ops.deploys import DeployService
from bot.ops.requests import DeployRequest, new_request_id, new_row, parse_time
from bot.store import Store

log = logging.getLogger(__name__)
RETRY_WINDOW = timedelta(minutes=10)  # a second report of the same finished deploy, with a new event id
ENDED = ("succeeded", "failed", "timed_out", "interrupted")  # a /deploy request whose run ended (or was lost)


@dataclass(frozen=True)
class CiOutcome:
    """What recording an event did: ``started``, ``finished`` (a started row), ``recorded``, ``reported`` (on the
    /deploy request it names) or ``duplicate``."""

    action: str
    request: DeployRequest | None = None
    duplicate_of: str = ""

    @property
    def flags(self) -> tuple[str, ...]:
        return self.request.flags if self.request else ()

    def as_json(self) -> dict:
        if self.action == "duplicate":
            answer: dict = {"ok": True, "duplicate": True}
            if self.duplicate_of:
                answer["id"] = self.duplicate_of
            return answer
        assert self.request is not None
        r = self.request
        return {
            "ok": True,
            "duplicate": False,
            "action": self.action,
            "id": r.id,
            "kind": r.kind,
            "status": r.status,
            "service": r.service,
            "env": r.env,
            "from_version": r.from_version,
            "version": r.version,
            "flags": list(r.flags),
        }


def record_ci_event(deploys: DeployService, event: DeployEvent) -> CiOutcome:
    """Record an event once: `started` opens a running row (unless it repeats a run already recorded); a finish
    closes it, or records a finished row."""
    store = deploys.store
    now = deploys.clock()
    actor = f"ci:{event.actor}"
    with store.transaction():
        new, first = store.claim_hook_event(event.event_id, event.reported)
        if not new and first and first != event.reported:
            # A pipeline that reuses an id (its pipeline's, for the start and the finish, or for a retried job)
            # would have its later events taken for repeats: a finish dropped, a run left holding the lock.
            raise EventProblem(
                "event_id",
                f"event_id {event.event_id} was already used for another event ({first}), so this one "
                f"({event.reported}) was not recorded: give each event an id of its own, such as the run's id and "
                "attempt with started or finished (gh-8842113-1-finished), and send it again.",
            )
        if not new:
            log.info("deploy hook duplicate event_id=%s", event.event_id)
            return CiOutcome("duplicate")
        if event.request_id:
            request_id, action = _report(deploys, event, actor, now)
            if action == "duplicate":
                return CiOutcome(action, duplicate_of=request_id)
            return CiOutcome(action, deploys.get(request_id))
        open_run = _open_run(deploys, event) if event.finished else None
        if open_run is not None:
            request_id, action = _close(deploys, event, open_run, actor), "finished"
        else:
            earlier = _same_report(deploys, event) if event.finished else _same_run(deploys, event, now)
            if earlier is not None:
                log.info("deploy hook repeats id=%s event_id=%s", earlier["id"], event.event_id)
                return CiOutcome("duplicate", duplicate_of=earlier["id"])
            request_id, action = _open(deploys, event, actor, now)
    outcome = CiOutcome(action, deploys.get(request_id))
    log.info(
        "deploy hook %s id=%s service=%s env=%s version=%s status=%s flags=%d",
        action,
        request_id,
        event.service,
        event.env,
        event.version,
        event.status,
        len(outcome.flags),
    )
    return outcome


def _flags(deploys: DeployService, event: DeployEvent, when: datetime, exclude: str = "") -> list[str]:
    """What this deploy broke: a freeze at the time it ran, a lock or a run of someone else's."""
    flags = []
    config = deploys.services.get(event.service)
    environment = config.environments.get(event.env) if config else None
    freeze = environment.frozen_at(when) if environment else None
    if freeze is not None:
        why = f" ({freeze.reason})" if freeze.reason else ""
        flags.append(f"deployed during the freeze{why} until {freeze.end.isoformat(timespec='minutes')}")
    holder = deploys.store.lock_holder(event.service, event.env)
    if holder and holder != exclude:
        held = deploys.store.deploy_row(holder)
        who = deploys.name(held["requester"]) if held else "someone"
        state = held["status"].replace("_", " ") if held else "active"
        flags.append(f"deployed while {who}'s {holder} ({state}) held the {event.service} {event.env} lock")
    else:
        others = [r["id"] for r in deploys.store.running_for(event.service, event.env) if r["id"] != exclude]
        if others:
            flags.append(f"deployed while {', '.join(others)} was running")
    return flags


def _open(deploys: DeployService, event: DeployEvent, actor: str, now: datetime) -> tuple[str, str]:
    """A new row: running (holding the lock when it is free) for `started`, else the finished deploy."""
    store = deploys.store
    deploys._expire_locked_if_due(event.service, event.env)
    kind, status = FINISHED.get(event.status, ("deploy", "running"))
    stamp = _iso(now)
    finished_at = _no_later(event.finished_at or stamp, now) if event.finished else None
    started_at = _no_later(event.started_at or finished_at or stamp, parse_time(finished_at) if finished_at else now)
    flags = _flags(deploys, event, parse_time(started_at))
    free = store.lock_holder(event.service, event.env) is None and not store.running_for(event.service, event.env)
    if status == "running" and not free:
        status = "overlapping"
    from_version = deploys.current_version(event.service, event.env) or ""
    if kind == "rollback":  # after a failed run, what is rolled back is that half-deployed version
        from_version = deploys.failed_version(event.service, event.env) or from_version
    request_id = new_request_id(now)
    row = new_row(
        request_id,
        kind=kind,
        service=event.service,
        env=event.env,
        version=event.version,
        from_version=from_version,
        requester=actor,
        status=status,
        created_at=started_at,
        started_at=started_at,
        finished_at=finished_at,
        source="ci",
        commit_sha=event.commit_sha,
        commit_time=event.commit_time,
        pipeline_url=event.pipeline_url,
        changes=json.dumps(list(event.changes)),
        flags=json.dumps(flags),
        start_reported=int(bool(event.started_at) or not event.finished),
    )
    store.insert_deploy(row)
    if status == "running" and free:
        store.take_lock(event.service, event.env, request_id, actor)
    action = "started" if status in ("running", "overlapping") else "recorded"
    store.audit(
        actor,
        f"{kind}.{'started' if action == 'started' else 'finished'}",
        request_id,
        status=status,
        service=event.service,
        env=event.env,
        version=event.version,
        source="ci",
        event=event.event_id,
    )
    if flags:
        store.audit(actor, f"{kind}.flagged", request_id, flags=flags, source="ci", event=event.event_id)
    deploys.announce("ci-started" if action == "started" else "ci-recorded", request_id)
    return request_id, action


def _close(deploys: DeployService, event: DeployEvent, run: dict, actor: str) -> str:
    """A finish for a running (or abandoned) CI row: its outcome, the lock released."""
    store = deploys.store
    kind, status = FINISHED[event.status]
    extra: dict = {k: v for k, v in _event_fields(event).items() if v}
    if kind == "rollback":
        extra["kind"] = "rollback"
    finished_at = _finish_time(event, run, deploys.clock(), f"the run it ends ({run['id']})")
    store.transition(run["id"], run["status"], status, finished_at=finished_at, **extra)
    store.release_lock(run["id"])
    store.audit(actor, f"{kind}.finished", run["id"], status=status, source="ci", event=event.event_id)
    deploys.announce("ci-finished", run["id"])
    return run["id"]


def _report(deploys: DeployService, event: DeployEvent, actor: str, now: datetime) -> tuple[str, str]:
    """The pipeline that a /deploy request triggered reports on it: a start is noted; a finish settles the request
    with the pipeline's outcome, time and commit, and Slack shows the new outcome when it changed. Returns the
    request's id and ``reported``, or ``duplicate`` for a finish that tells nothing new."""
    store = deploys.store
    rid = event.request_id
    row = store.deploy_row(rid)
    if row is None or row["source"] == "ci":
        raise EventProblem(
            "request_id",
            f"request_id {rid} names no deploy requested through opsbot: send back the {{request_id}} its webhook "
            "filled in, or leave request_id out to record the pipeline's deploy on its own.",
        )
    if (row["service"], row["env"], row["version"]) != (event.service, event.env, event.version):
        raise EventProblem(
            "request_id",
            f"{rid} is {row['service']} {row['version']} to {row['env']}, not {event.service} {event.version} to "
            f"{event.env}: report the request this pipeline ran for.",
        )
    if FINISHED.get(event.status, ("deploy",))[0] == "rollback" and row["kind"] != "rollback":
        raise EventProblem("status", f"{rid} is a deploy, not a rollback: report it as succeeded or failed.")
    if row["status"] not in (*ENDED, "running", "awaiting_ci", "abandoned"):
        raise EventProblem(
            "request_id", f"{rid} is {row['status']}: it never ran in opsbot, so there is nothing to report on."
        )
    kind = row["kind"]
    if not event.finished:
        store.audit(actor, f"{kind}.ci_started", rid, source="ci", event=event.event_id, pipeline=event.pipeline_url)
        return rid, "reported"
    # A pipeline that reports back settles its request: after the trigger was taken, or before opsbot recorded the
    # answer to it (a fast pipeline, or a process that stopped meanwhile); the run's own finish, if it still comes,
    # then finds the request settled and leaves it so. What runs the request was recorded at its approval;
    # services.yaml now only speaks for a request that an older opsbot approved.
    awaited = (
        row["runner_kind"] == "webhook-report" if row["runner_kind"] else deploys.awaits_report(kind, row["service"])
    )
    unrecorded = row["status"] in ("running", "interrupted") and awaited
    if row["status"] in ("awaiting_ci", "abandoned") or unrecorded:
        if row["status"] in ("interrupted", "abandoned"):  # its lock was released: others may have run since
            _refuse_after_later_run(store, row)
        return _settle(deploys, event, row, actor, now)
    if row["status"] in ("running", "interrupted"):
        # opsbot's own outcome of the run is still to be recorded (an interrupted run's process may yet record it)
        raise EventProblem(
            "request_id",
            f"{rid} is {row['status']} in opsbot: its own run's outcome is not recorded yet, and a report now "
            "would hide it. Report the end once opsbot's run of it has ended (a webhook's trigger, or the command "
            "that called the pipeline); for an interrupted one, leave request_id out to record the pipeline's "
            "deploy on its own.",
        )
    status = FINISHED[event.status][1]  # rollback_failed fails a rollback request, as failed does
    fields: dict = {k: v for k, v in _event_fields(event).items() if v and row[k] in (None, "", "[]")}
    if status == row["status"]:  # what the run showed: fill in what the request lacks, and keep its finish
        if not fields:
            log.info("deploy hook report repeats id=%s event_id=%s", rid, event.event_id)
            return rid, "duplicate"
        store.update_deploy(rid, **fields)
    else:
        _refuse_after_later_run(store, row)
        finished_at = _finish_time(event, row, now, rid)
        fields.update({k: v for k, v in _event_fields(event).items() if v})
        # the run's exit code (0 for an accepted trigger) no longer tells the outcome
        store.transition(rid, row["status"], status, finished_at=finished_at, exit_code=None, **fields)
    store.audit(
        actor,
        f"{kind}.reported",
        rid,
        status=status,
        was=row["status"],
        exit_code=row["exit_code"],
        source="ci",
        event=event.event_id,
    )
    if status != row["status"]:
        deploys.announce("reported", rid)
    return rid, "reported"


def _refuse_after_later_run(store: Store, row: dict) -> None:
    """EventProblem when another run of the service has started in the environment since ``row`` did."""
    began = row["started_at"] or row["finished_at"] or row["created_at"]
    later = store.runs_started_after(row["service"], row["env"], began, row["id"])
    if later:
        raise EventProblem(
            "request_id",
            f"{later[0]['id']} ({later[0]['kind']} of {later[0]['version']}) ran in {row['service']} "
            f"{row['env']} after {row['id']}: another outcome for the earlier one would rewrite what runs there now, "
            "so it is not taken.",
        )


def _settle(deploys: DeployService, event: DeployEvent, row: dict, actor: str, now: datetime) -> tuple[str, str]:
    """The report a request waited for (holding the lock, or given up on): the pipeline's outcome, time and commit
    become the request's, and the service and environment are free again."""
    store = deploys.store
    rid = row["id"]
    status = FINISHED[event.status][1]
    finished_at = _finish_time(event, row, now, rid)
    fields = {k: v for k, v in _event_fields(event).items() if v}
    store.transition(rid, row["status"], status, finished_at=finished_at, exit_code=None, lease_until=None, **fields)
    store.release_lock(rid)
    kind, was = row["kind"], row["status"]
    store.audit(actor, f"{kind}.reported", rid, status=status, was=was, source="ci", event=event.event_id)
    deploys.announce("settled", rid)
    return rid, "reported"


def _open_run(deploys: DeployService, event: DeployEvent) -> dict | None:
    """The running CI row this finish closes: same service, env and version, the same pipeline when both say."""
    rows = deploys.store.open_ci_runs(event.service, event.env, event.version)
    same = [
        r for r in rows if not (event.pipeline_url and r["pipeline_url"]) or r["pipeline_url"] == event.pipeline_url
    ]
    return same[0] if same else None  # newest first


def _same_run(deploys: DeployService, event: DeployEvent, now: datetime) -> dict | None:
    """The CI run a `started` event reports again: a start retried under a new event id while its run is open
    (the same pipeline_url, or the same started_at when either has no URL), or one that arrived after its own
    finish (the same started_at, and the same pipeline_url when both have one). A finished run is matched by its
    start time only: a re-run of a pipeline ("Re-run failed jobs") keeps its URL and is a new run, which must
    take the lock. Without a URL or a start time, a second start cannot be told from a new run."""
    if not (event.pipeline_url or event.started_at):
        return None
    store = deploys.store
    for row in store.open_ci_runs(event.service, event.env, event.version):
        if event.pipeline_url and row["pipeline_url"]:
            if event.pipeline_url == row["pipeline_url"]:
                return row
        elif _same_start(event, row, now):
            return row
    for row in store.finished_ci_runs(event.service, event.env, event.version):
        same_pipeline = not (event.pipeline_url and row["pipeline_url"]) or event.pipeline_url == row["pipeline_url"]
        if same_pipeline and _same_start(event, row, now):
            return row
    return None


def _same_start(event: DeployEvent, row: dict, now: datetime) -> bool:
    """Whether both give a start time and it is the same, as stored (no later than opsbot's clock: _no_later)."""
    if not (event.started_at and row["started_at"]):
        return False
    stored = parse_time(row["started_at"])
    return stored in (parse_time(event.started_at), parse_time(_no_later(event.started_at, now)))


def _same_report(deploys: DeployService, event: DeployEvent) -> dict | None:
    """A finished row this event reports again under a new event id (a pipeline's retry), if there is one."""
    kind, status = FINISHED[event.status]
    for row in deploys.store.finished_ci_runs(event.service, event.env, event.version):
        if row["status"] != status or row["kind"] != kind:
            continue
        if event.pipeline_url and row["pipeline_url"]:
            if event.pipeline_url == row["pipeline_url"]:
                return row
            continue
        if event.started_at and row["started_at"] and not event.pipeline_url:
            # compared as it was stored: no later than the finish (see _no_later)
            if parse_time(_no_later(event.started_at, parse_time(row["finished_at"]))) == parse_time(row["started_at"]):
                return row
            continue
        finished = parse_time(event.finished_at) if event.finished_at else deploys.clock()
        if abs(parse_time(row["finished_at"]) - finished) <= RETRY_WINDOW:
            return row
    return None


def abandon_stale(deploys: DeployService) -> list[DeployRequest]:
    """CI deploys that started and never reported an end within the configured hours, and requests whose pipeline
    never reported back within them: abandoned, lock released. A late report still settles them."""
    cutoff = _iso(deploys.clock() - timedelta(hours=deploys.settings.stale_ci_hours))
    with deploys.store.transaction():
        stale = deploys.store.running_ci_started_before(cutoff) + deploys.store.awaiting_reports_started_before(cutoff)
        abandoned = [row["id"] for row in stale if deploys.abandon(row)]
    return [deploys.get(i) for i in abandoned]


def _finish_time(event: DeployEvent, row: dict, now: datetime, what: str) -> str:
    """When the deploy ``row`` ended, as the finish ``event`` says (no later than ``now``); EventProblem when that is
    before it started."""
    finished_at = _no_later(event.finished_at or _iso(now), now)
    if row["started_at"] and parse_time(finished_at) < parse_time(row["started_at"]):
        raise EventProblem(
            "finished_at",
            f"finished_at {finished_at} is before {row['started_at']}, when {what} started: send the time the "
            "deploy ended.",
        )
    return finished_at


def _event_fields(event: DeployEvent) -> dict:
    return {
        "commit_sha": event.commit_sha,
        "commit_time": event.commit_time,
        "pipeline_url": event.pipeline_url,
        "changes": json.dumps(list(event.changes)) if event.changes else "",
    }


def _no_later(value: str, limit: datetime) -> str:
    """A pipeline's time, or ``limit`` (opsbot's now, or the finish) when it is later.

    The signature allows a pipeline's clock to run minutes ahead of opsbot's; a finish stored ahead of now would
    be left out of the figures the summary posts at that finish.
    """
    return value if parse_time(value) <= limit else _iso(limit)


def _iso(when: datetime) -> str:
    return when.astimezone(UTC).isoformat(timespec="seconds")
