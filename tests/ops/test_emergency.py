"""Rollbacks: only to a version that succeeded there; an emergency rule lowers their approvals while a SEV1 or
SEV2 on the service is open, checked at request, approval and start, and marked in the audit.

web prod needs 2 approvals (web, sre or Erin); here its emergency rule lets a rollback go with 1.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bot.answers.indexer import index_knowledge
from bot.errors import InvalidRequest
from bot.ops.deploys import DeployService
from bot.ops.incidents import IncidentService, LiveIncident
from bot.store import Store
from tests.conftest import FakeEncoder
from tests.fakes import Clock
from tests.ops.fixtures import ALICE, BOB, CAROL, DAVE, ERIN, SERVICES, make_knowledge, start, succeed

EMERGENCY = SERVICES.replace(
    f"        approvers: [web, sre, {ERIN}]\n",
    f"        approvers: [web, sre, {ERIN}]\n"
    "        emergency: {rollback_approvals: 1, while_incident: [SEV1, SEV2]}\n",
)


@pytest.fixture
def ruled(tmp_path: Path, clock: Clock) -> DeployService:
    """web with 1.0.0 then 1.1.0 succeeded in prod, under the emergency rule."""
    store = Store(tmp_path / "emergency.db")
    report = index_knowledge(store, FakeEncoder(), make_knowledge(tmp_path / "knowledge", EMERGENCY))
    assert report.problems == []
    deploys = DeployService.from_store(store, clock=clock)
    for version in ("1.0.0", "1.1.0"):
        succeed(deploys, clock, version, env="prod")
    yield deploys
    store.close()


def declare(deploys: DeployService, severity: int, services: tuple[str, ...] = ("web",)) -> LiveIncident:
    incidents = IncidentService(deploys.store, {"web", "strict"}, deploys.clock)
    return incidents.declare("Web 503s", DAVE, severity, list(services))


def resolve(deploys: DeployService, incident: LiveIncident) -> None:
    incidents = IncidentService(deploys.store, {"web"}, deploys.clock)
    incidents.resolve(incidents.get(incident.id), DAVE, "Rolled back.")


def audit(deploys: DeployService, action: str) -> list[dict]:
    return [row["details"] for row in deploys.store.audit_rows() if row["action"] == action]


# -- only to a version that succeeded ----------------------------------------------------------------------


def test_a_rollback_to_a_version_that_never_succeeded_is_refused_naming_those_that_did(ruled: DeployService) -> None:
    failed = ruled.execute(start(ruled, env="prod", version="1.2.0-bad").id)
    assert failed.status == "failed"
    before = len(ruled.store.all_deploys())

    for never in ("9.9.9", "1.2.0-bad"):
        with pytest.raises(InvalidRequest) as refused:
            ruled.request("rollback", "web", "prod", never, ALICE)
        assert str(refused.value) == (
            f"{never} never succeeded for web in prod, so opsbot will not roll back to it. Versions that did, "
            "newest first: 1.1.0, 1.0.0. For example: `/rollback web prod 1.1.0`."
        )

    assert len(ruled.store.all_deploys()) == before  # nothing recorded
    assert ruled.request("rollback", "web", "prod", "1.0.0", ALICE).version == "1.0.0"


def test_a_rollback_where_nothing_succeeded_yet_is_refused(deploys: DeployService) -> None:
    with pytest.raises(InvalidRequest, match="1.0.0 never succeeded for web in staging, and no version has yet"):
        deploys.request("rollback", "web", "staging", "1.0.0", ALICE)


# -- the emergency rule ----------------------------------------------------------------------------------------


def test_during_a_sev1_a_rollback_needs_one_approval_and_the_audit_says_why(ruled: DeployService) -> None:
    incident = declare(ruled, 1)

    request = ruled.request("rollback", "web", "prod", None, ALICE)
    decision = ruled.approve(request.id, BOB)

    assert request.approvals_needed == 1 and request.emergency == incident.id
    assert decision.start, decision.message
    assert ruled.execute(request.id).status == "succeeded"
    assert audit(ruled, "rollback.emergency") == [{"incident": incident.id, "severity": 1, "approvals": 1, "usual": 2}]
    assert audit(ruled, "rollback.started")[0]["emergency"] == incident.id
    assert audit(ruled, "rollback.requested")[0]["version"] == "1.0.0"


@pytest.mark.parametrize(
    "kind, severity, services",
    [("rollback", 3, ("web",)), ("rollback", 1, ("strict",)), ("deploy", 1, ("web",))],
    ids=["a SEV3", "another service's SEV1", "a deploy"],
)
def test_the_rule_needs_a_rollback_and_an_open_incident_it_names(
    ruled: DeployService, kind: str, severity: int, services: tuple[str, ...]
) -> None:
    declare(ruled, severity, services)

    request = ruled.request(kind, "web", "prod", "1.0.0" if kind == "rollback" else "1.3.0", ALICE)

    assert request.approvals_needed == 2 and request.emergency == ""
    assert "1 more approval(s) needed" in ruled.approve(request.id, BOB).message
    assert audit(ruled, "rollback.emergency") == []


def test_an_incident_resolved_before_the_approval_brings_back_the_usual_approvals(ruled: DeployService) -> None:
    incident = declare(ruled, 2)
    request = ruled.request("rollback", "web", "prod", None, ALICE)
    resolve(ruled, incident)

    first = ruled.approve(request.id, BOB)
    second = ruled.approve(request.id, CAROL)

    assert not first.start and "1 more approval(s) needed" in first.message
    assert first.request.approvals_needed == 2 and first.request.emergency == ""
    assert audit(ruled, "rollback.emergency_ended") == [{"incident": incident.id, "approvals": 2}]
    assert second.start
    assert "emergency" not in audit(ruled, "rollback.started")[0]


def test_an_incident_resolved_between_the_approval_and_the_start_stops_the_run(ruled: DeployService) -> None:
    incident = declare(ruled, 1)
    request = ruled.request("rollback", "web", "prod", None, ALICE)
    assert ruled.approve(request.id, BOB).start
    resolve(ruled, incident)

    done = ruled.execute(request.id)

    assert done.status == "cancelled"
    assert "it has 1 of the 2 approvals web prod needs now" in done.note
    assert "the emergency rule no longer applies" in done.note
    assert ruled.current_version("web", "prod") == "1.1.0"


def test_an_incident_declared_after_the_request_lets_one_approval_start_it(ruled: DeployService) -> None:
    request = ruled.request("rollback", "web", "prod", None, ALICE)
    assert request.approvals_needed == 2
    incident = declare(ruled, 1)

    decision = ruled.approve(request.id, BOB)

    assert decision.start and decision.request.emergency == incident.id
    assert audit(ruled, "rollback.emergency")[0]["incident"] == incident.id


def test_only_an_incident_in_the_rollbacks_environment_lowers_its_approvals(ruled: DeployService) -> None:
    incidents = IncidentService(ruled.store, {"web", "strict"}, ruled.clock)
    staging = incidents.declare("Staging 503s", DAVE, 1, ["web"], env="staging")
    assert staging.env == "staging"

    usual = ruled.request("rollback", "web", "prod", None, ALICE)
    assert usual.approvals_needed == 2 and not usual.emergency  # a SEV1 in staging is not an emergency in prod
    assert ruled.approve(usual.id, BOB).outcome != "approved"
    assert ruled.reject(usual.id, ERIN).outcome == "rejected"

    prod = incidents.declare("Prod 503s", DAVE, 1, ["web"], env="prod")
    urgent = ruled.request("rollback", "web", "prod", None, ALICE)
    assert urgent.approvals_needed == 1 and urgent.emergency == prod.id
