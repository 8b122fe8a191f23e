"""The deploy policy holds at every step: a freeze, a config change or a running CI deploy stops a request
at its next approval or at the start of its run, not only when it was made."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml

from bot.answers.indexer import index_knowledge
from bot.ops.ci_deploys import record_ci_event
from bot.ops.ci_events import parse_event
from bot.ops.deploys import DeployService
from bot.ops.policy import APPROVE, REQUEST, START, Facts, refusal
from bot.services import parse_service
from bot.store import Store
from tests.conftest import FakeEncoder
from tests.fakes import Clock
from tests.ops.fixtures import ALICE, BOB, CAROL, DAVE, ERIN, GINA, ROSTER, SERVICES, actions, make_knowledge

BEFORE_FREEZE = datetime(2026, 12, 23, 17, 50, tzinfo=UTC)  # prod freezes at 18:00 (tests/deploy_fixtures.py)


def reindex(store: Store, tmp_path: Path, services: str, roster: str = ROSTER) -> None:
    """services.yaml or the roster changed and `opsbot index` ran again."""
    root = make_knowledge(tmp_path / "changed", services)
    (root / "experts.yaml").write_text(roster, encoding="utf-8")
    assert index_knowledge(store, FakeEncoder(), root).problems == []


def test_a_request_made_before_a_freeze_cannot_be_approved_inside_it(store: Store) -> None:
    clock = Clock(BEFORE_FREEZE)
    deploys = DeployService.from_store(store, clock=clock)
    request = deploys.request("deploy", "web", "prod", "1.0.0", ALICE)
    deploys.approve(request.id, BOB)
    clock.advance(minutes=15)  # 18:05, inside the freeze; the request expires at 18:20

    decision = deploys.approve(request.id, CAROL)

    assert decision.outcome == "refused" and not decision.start
    assert "web prod is frozen until 2026-12-27T08:00+00:00 (Christmas peak)" in decision.message
    assert deploys.get(request.id).status == "pending"
    assert deploys.get(request.id).approvers == (BOB,)  # the refused click recorded nothing
    assert "deploy.approve.refused" in actions(store)


def test_a_deploy_approved_before_a_freeze_does_not_start_inside_it(store: Store, tmp_path: Path) -> None:
    clock = Clock(BEFORE_FREEZE)
    deploys = DeployService.from_store(store, clock=clock)
    request = deploys.request("deploy", "web", "prod", "1.0.0", ALICE)
    deploys.approve(request.id, BOB)
    assert deploys.approve(request.id, CAROL).start
    clock.advance(minutes=15)  # the run was queued and starts inside the freeze

    done = deploys.execute(request.id)

    assert done.status == "cancelled" and done.started_at and done.exit_code is None
    assert done.note.startswith("not started: web prod is frozen until")
    assert done.log_tail == ""  # the runner never ran
    assert store.lock_holder("web", "prod") is None
    assert [r["details"].get("status") for r in store.audit_rows() if r["action"] == "deploy.finished"] == ["cancelled"]


def test_raised_approvals_count_at_the_next_approval(store: Store, tmp_path: Path, clock: Clock) -> None:
    deploys = DeployService.from_store(store, clock=clock)
    request = deploys.request("deploy", "web", "staging", "1.0.0", ALICE)  # staging needs one approval
    raised = SERVICES.replace("approvals: 1\n        approvers: [web]", "approvals: 2\n        approvers: [web]")
    assert raised != SERVICES
    reindex(store, tmp_path, raised)
    deploys = DeployService.from_store(store, clock=clock)

    first = deploys.approve(request.id, BOB)

    assert first.outcome == "recorded" and "1 more approval(s) needed" in first.message
    assert deploys.approve(request.id, CAROL).outcome == "refused"  # sre may not approve staging
    second = deploys.approve(request.id, GINA)
    assert second.start


def test_an_approver_who_left_the_approving_team_no_longer_counts(store: Store, tmp_path: Path, clock: Clock) -> None:
    deploys = DeployService.from_store(store, clock=clock)
    request = deploys.request("deploy", "web", "prod", "1.0.0", ALICE)  # prod: two of web, sre or Erin
    deploys.approve(request.id, BOB)
    reindex(store, tmp_path, SERVICES, ROSTER.replace("Bob Baker, team: web", "Bob Baker, team: data"))
    deploys = DeployService.from_store(store, clock=clock)

    decision = deploys.approve(request.id, CAROL)

    assert decision.outcome == "recorded" and "1 more approval(s) needed" in decision.message
    assert deploys.get(request.id).status == "pending"
    assert deploys.approve(request.id, ERIN).start


def test_a_service_removed_from_services_yaml_cannot_be_approved(store: Store, tmp_path: Path, clock: Clock) -> None:
    deploys = DeployService.from_store(store, clock=clock)
    request = deploys.request("deploy", "strict", "staging", "1.0.0", ALICE)
    without = SERVICES[: SERVICES.index("  strict:")] + SERVICES[SERVICES.index("  owners-only:") :]
    reindex(store, tmp_path, without)
    deploys = DeployService.from_store(store, clock=clock)

    decision = deploys.approve(request.id, BOB)

    assert decision.outcome == "refused"
    assert "strict is no longer deployable" in decision.message


def test_a_ci_deploy_running_blocks_the_approval_of_a_pending_one(deploys: DeployService, store: Store) -> None:
    request = deploys.request("deploy", "web", "staging", "1.0.0", ALICE)
    event = parse_event(
        b'{"event_id": "e1", "service": "web", "env": "staging", "version": "0.9.0", "status": "started"}',
        deploys.ci_services(),
        deploys.ci_environments(),
    )
    ci = record_ci_event(deploys, event).request
    assert ci is not None and ci.status == "overlapping"

    decision = deploys.approve(request.id, BOB)

    assert decision.outcome == "refused"
    assert f"web staging is being deployed right now ({ci.id})" in decision.message
    assert deploys.get(request.id).approvers == ()


def facts(**changes: object) -> Facts:
    base = {"kind": "deploy", "service": "web", "env": "prod", "version": "1.0.0", "requester": ALICE}
    return Facts(**{**base, **changes})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "stage, given, user, says",
    [
        (APPROVE, {"request_id": "r1", "lock_holder": "r2"}, BOB, "no longer holds the web prod lock (held by r2)"),
        (APPROVE, {"request_id": "r1", "lock_holder": "r1"}, ALICE, "you requested this"),
        (APPROVE, {"request_id": "r1", "lock_holder": "r1"}, DAVE, "only web, sre, UERIN00005 may approve"),
        (
            START,
            {"request_id": "r1", "lock_holder": "r1", "approvals_needed": 2, "approvers": (BOB, BOB)},
            "",
            "it has 1 of the 2 approvals web prod needs now",
        ),
        (
            START,
            {"request_id": "r1", "lock_holder": "r1", "approvals_needed": 2, "approvers": (ALICE, BOB)},
            "",
            "it has 1 of the 2 approvals",
        ),
        (
            START,
            {"request_id": "r1", "lock_holder": "r1", "approvals_needed": 2, "approvers": (BOB, DAVE)},
            "",
            "no longer allowed to approve: UDAVE00004",
        ),
        (REQUEST, {"version": "1.0"}, "", "does not match web's version_pattern"),
    ],
)
def test_the_policy_names_what_is_missing(stage: str, given: dict, user: str, says: str) -> None:
    config = parse_service("web", _web_entry())
    allowed = {BOB, CAROL, ERIN, ALICE}

    why = refusal(config, facts(**given), stage, datetime(2026, 11, 2, tzinfo=UTC), allowed, user)

    assert why is not None and says in why


def test_the_policy_lets_a_complete_request_start() -> None:
    config = parse_service("web", _web_entry())
    done = facts(request_id="r1", lock_holder="r1", approvals_needed=2, approvers=(BOB, CAROL))

    assert refusal(config, done, START, datetime(2026, 11, 2, tzinfo=UTC), {BOB, CAROL}) is None


def _web_entry() -> dict:
    return yaml.safe_load(SERVICES)["services"]["web"]
