"""What a rollback may target, and when an environment's emergency rule lets it go with fewer approvals.

A rollback goes back to a version that succeeded in that service and environment (from Slack or CI), never
to one that was only ever requested or failed. An emergency rule in services.yaml (``emergency:`` of an
environment) lowers the approvals of a rollback while an incident of the named severities is open on the
service; the deploy service checks it again at every step, so a rollback whose incident was resolved
meanwhile needs the environment's usual approvals.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING

from bot.errors import InvalidRequest
from bot.ops.requests import DeployRequest
from bot.services import Environment
from bot.store import Store

if TYPE_CHECKING:
    from bot.ops.deploys import DeployService

SHOWN_VERSIONS = 8  # the versions a refused rollback lists, newest first


@dataclass(frozen=True)
class EmergencyUse:
    """An open incident that meets an environment's emergency rule: a rollback needs ``approvals`` of ``usual``."""

    incident: str
    severity: int
    approvals: int
    usual: int
    private: bool = False  # the incident is worked in a private channel: the request's post does not name it


def current_version(store: Store, service: str, env: str) -> str | None:
    """The version of the last deploy or rollback that succeeded."""
    rows = store.succeeded_for(service, env, limit=1)
    return rows[0]["version"] if rows else None


def failed_version(store: Store, service: str, env: str) -> str | None:
    """The version of the newest run when it failed, timed out, was interrupted or was abandoned while its pipeline
    deployed (no report came): it may be half rolled out."""
    newest = failed_run(store, service, env)
    return newest["version"] if newest else None


def failed_run(store: Store, service: str, env: str) -> dict | None:
    """The newest run's row when it is ``failed_version``'s, else None."""
    newest = store.newest_finished_run(service, env)
    broken = ("failed", "timed_out", "interrupted", "abandoned")
    return newest if newest and newest["status"] in broken else None


def succeeded_versions(store: Store, service: str, env: str, limit: int = -1) -> list[str]:
    """Every version that succeeded in ``env`` (the newest ``limit``), newest first, each once."""
    return store.succeeded_versions(service, env, limit)


def rollback_target(store: Store, service: str, env: str) -> str:
    """The last good version: the current one after a failed run, else the newest other one that succeeded and that
    no later rollback undid (a version a rollback moved away from counts again once it succeeds again)."""
    rows = store.succeeded_for(service, env)
    if not rows:
        raise InvalidRequest(f"{service} has no successful deploy in {env} yet; nothing to roll back to.")
    current = rows[0]["version"]
    if failed_version(store, service, env) is not None:
        return current
    undone: set[str] = set()
    for row in rows:  # newest first: a rollback is seen before the successes of the version it moved away from
        if row["version"] != current and row["version"] not in undone:
            return row["version"]
        if row["kind"] == "rollback" and row["from_version"]:
            undone.add(row["from_version"])
    undid = " that a rollback has not since undone" if undone else ""
    raise InvalidRequest(
        f"no version of {service} succeeded in {env} before {current}{undid}; "
        f"name the version: /rollback {service} {env} VERSION."
    )


def check_target(store: Store, service: str, env: str, version: str) -> None:
    """Refuse a rollback to a version that never succeeded in ``env``, naming the ones that did."""
    if store.version_succeeded(service, env, version):  # however long ago: the history is not cut
        return
    versions = succeeded_versions(store, service, env, SHOWN_VERSIONS + 1)
    if not versions:
        raise InvalidRequest(
            f"{version} never succeeded for {service} in {env}, and no version has yet; nothing to roll back to."
        )
    shown = ", ".join(versions[:SHOWN_VERSIONS]) + (", ..." if len(versions) > SHOWN_VERSIONS else "")
    raise InvalidRequest(
        f"{version} never succeeded for {service} in {env}, so opsbot will not roll back to it. "
        f"Versions that did, newest first: {shown}. For example: `/rollback {service} {env} {versions[0]}`."
    )


def check_offer_stands(store: Store, failed_id: str, service: str, env: str, version: str) -> None:
    """Refuse a failed deploy's Rollback button (to ``version``) once a later run of the service ended in ``env``."""
    failed = store.deploy_row(failed_id)
    if failed is not None and failed["never_started"]:  # nothing ran, so nothing is to be undone
        raise InvalidRequest(
            f"the deploy {failed_id} failed before anything ran, so {service} {env} still runs what it ran before; "
            "nothing was requested."
        )
    newest = store.newest_finished_run(service, env)
    if newest is None or newest["id"] == failed_id:
        return
    ran = f"{newest['kind']} {newest['id']} of {newest['version']} ({newest['status'].replace('_', ' ')})"
    raise InvalidRequest(
        f"this button was for the failed deploy {failed_id}, and {service} {env} has run the {ran} since, so "
        f"{version} may no longer be the last good version; nothing was requested. To roll back to it all the "
        f"same: `/rollback {service} {env} {version}`."
    )


def emergency_use(
    store: Store, environment: Environment | None, kind: str, service: str, incident_env: str
) -> EmergencyUse | None:
    """The open incident that lets a rollback of ``service`` use the environment's emergency rule now, if any.

    Only an incident in that environment counts: a SEV1 in staging must not lower the approvals of a rollback in
    prod. An incident declared without an environment counts in ``incident_env`` (settings.incident_env), as it
    does in the DORA figures.
    """
    rule = environment.emergency if environment is not None else None
    if kind != "rollback" or rule is None:
        return None
    for row in reversed(store.live_incidents("open")):  # the earliest declared first: it started the emergency
        if (row.get("env") or incident_env) != environment.name:
            continue
        if row["severity"] in rule.severities and service in json.loads(row["services"] or "[]"):
            private = bool(row.get("private"))
            return EmergencyUse(row["id"], row["severity"], rule.rollback_approvals, environment.approvals, private)
    return None


def recorded_emergency(store: Store, environment: Environment | None, request: DeployRequest) -> EmergencyUse | None:
    """The emergency rule a rollback went (or goes) under, as recorded at its last step; None when it did not."""
    if not request.emergency:
        return None
    row = store.live_incident(request.emergency)
    usual = environment.approvals if environment is not None else request.approvals_needed
    private = bool(row.get("private")) if row else False
    return EmergencyUse(request.emergency, row["severity"] if row else 0, request.approvals_needed, usual, private)


def track_emergency(deploys: DeployService, request: DeployRequest) -> DeployRequest:
    """Record whether the emergency rule applies at this step (in the step's transaction): an incident that meets
    it may have been declared or resolved since the last one. Returns the request as it is now."""
    config = deploys.services.get(request.service)
    environment = config.environments.get(request.env) if config else None
    if request.kind != "rollback" or environment is None:
        return request
    use = deploys.emergency_of(request)
    if (use.incident if use else "") == request.emergency:
        return request
    if use is not None:
        deploys.store.update_deploy(request.id, emergency=use.incident, approvals_needed=use.approvals)
        audit_emergency(deploys.store, request.id, use)
    else:
        deploys.store.update_deploy(request.id, emergency="", approvals_needed=environment.approvals)
        ended = {"incident": request.emergency, "approvals": environment.approvals}
        deploys.store.audit("opsbot", "rollback.emergency_ended", request.id, **ended)
    return deploys.get(request.id)


def audit_emergency(store: Store, request_id: str, use: EmergencyUse) -> None:
    """Mark in the audit that a rollback needs fewer approvals, and because of which incident."""
    store.audit(
        "opsbot",
        "rollback.emergency",
        request_id,
        incident=use.incident,
        severity=use.severity,
        approvals=use.approvals,
        usual=use.usual,
    )
