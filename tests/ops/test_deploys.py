"""The deploy service: validation, approvals, expiry, locks and the audit trail.

Fixtures and helpers are in tests/ops/fixtures.py.
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from bot.answers.indexer import index_knowledge
from bot.errors import InvalidRequest, NotFound, PermissionDenied
from bot.ops.deploys import DeployService
from bot.store import Store
from tests.conftest import FakeEncoder
from tests.fakes import START, Clock
from tests.ops.fixtures import (
    ALICE,
    BOB,
    CAROL,
    DAVE,
    ERIN,
    FRANK,
    GINA,
    ROSTER,
    actions,
    after_crash,
    ci_row,
    make_knowledge,
    start,
    succeed,
)

# -- validation: nothing is recorded for a request that is refused ------------------------------


@pytest.mark.parametrize(
    "service, env, version, error, says",
    [
        ("billing", "prod", "1.0.0", NotFound, "deployable services: strict, web"),
        ("owners-only", "prod", "1.0.0", NotFound, "deployable services: strict, web"),
        ("web", "production", "1.0.0", NotFound, "use one of staging, prod"),
        ("strict", "staging", "1.0.0-rc1", InvalidRequest, r"version_pattern ^\d+\.\d+\.\d+$"),
        ("web", "prod", "latest", InvalidRequest, "does not match web's version_pattern"),
        # slips a tired engineer makes: said back with what was meant
        ("wbe", "prod", "1.0.0", NotFound, "deployable services: strict, web. Did you mean web?"),
        ("Web", "prod", "1.0.0", NotFound, "Did you mean web?"),
        ("web", "stagin", "1.0.0", NotFound, "use one of staging, prod. Did you mean staging?"),
        ("web", "1.0.0", "staging", NotFound, "The order is /deploy SERVICE VERSION ENV: `/deploy web 1.0.0 staging`"),
        ("web", "extra", "1.0.0 staging", NotFound, "That is a word too many: /deploy takes SERVICE VERSION ENV."),
        ("web", "prdo", "1.0.0 now", NotFound, "Did you mean prod? That is a word too many"),
    ],
)
def test_unknown_names_and_wrong_versions_are_refused_before_anything_is_recorded(
    deploys: DeployService, store: Store, service: str, env: str, version: str, error: type, says: str
) -> None:
    with pytest.raises(error) as caught:
        deploys.request("deploy", service, env, version, ALICE)

    assert says in str(caught.value)
    assert store.all_deploys() == []
    assert store.audit_rows() == []


def test_a_rollback_typed_in_the_order_of_a_deploy_is_refused_with_its_own_order(
    deploys: DeployService, store: Store
) -> None:
    with pytest.raises(
        NotFound, match=r"The order is /rollback SERVICE ENV \[VERSION\]: `/rollback web staging 1.0.0`"
    ):
        deploys.request("rollback", "web", "1.0.0", "staging", ALICE)
    assert store.all_deploys() == []


@pytest.mark.parametrize(
    "field, value",
    [
        ("version", "1.2.3; rm -rf /"),
        ("version", "$(id)"),
        ("version", "1.2.3\nrm"),
        ("version", "1.2.3\n"),
        ("version", "1.2.3 --force"),
        ("version", "`id`"),
        ("version", "-1.2.3"),
        ("version", "../../etc/passwd"),
        ("version", ""),
        ("service", "web;id"),
        ("service", "$(id)"),
        ("service", "../web"),
        ("service", "web\nid"),
        ("env", "prod && id"),
        ("env", "prod\n"),
    ],
)
def test_hostile_values_are_refused_naming_what_is_allowed(
    deploys: DeployService, store: Store, field: str, value: str
) -> None:
    args = {"service": "web", "env": "staging", "version": "1.0.0"} | {field: value}

    with pytest.raises(InvalidRequest) as caught:
        deploys.request("deploy", args["service"], args["env"], args["version"], ALICE)

    message = str(caught.value)
    if field == "service":  # the one rule for service names, as in services.yaml, incidents and the roster
        assert "use letters, digits, '.', '_' and '-', with '/' between parts" in message
    else:
        assert "use letters, digits, '.', '_', '+' and '-' only" in message
    assert "\n" not in message  # a newline in the value is shown escaped, never echoed raw
    assert store.all_deploys() == []
    assert store.audit_rows() == []


def test_hostile_rollback_version_is_refused(deploys: DeployService, clock: Clock, store: Store) -> None:
    succeed(deploys, clock, "1.0.0")

    with pytest.raises(InvalidRequest, match="not allowed"):
        deploys.request("rollback", "web", "staging", "1.0.0;reboot", ALICE)

    assert len(store.all_deploys()) == 1


def test_deploy_needs_a_version(deploys: DeployService, store: Store) -> None:
    with pytest.raises(InvalidRequest, match="give the version"):
        deploys.request("deploy", "web", "staging", None, ALICE)
    assert store.all_deploys() == []


def test_freeze_window_refuses_with_its_end_time(deploys: DeployService, clock: Clock, store: Store) -> None:
    clock.now = datetime(2026, 12, 24, 12, 0, tzinfo=UTC)

    with pytest.raises(PermissionDenied) as caught:
        deploys.request("deploy", "web", "prod", "1.0.0", ALICE)

    assert "frozen until 2026-12-27T08:00+00:00 (Christmas peak)" in str(caught.value)
    assert store.all_deploys() == []
    # staging has no freeze, and prod opens again at the end of the window
    assert deploys.request("deploy", "web", "staging", "1.0.0", ALICE).status == "pending"
    clock.now = datetime(2026, 12, 27, 8, 0, tzinfo=UTC)
    assert deploys.request("deploy", "web", "prod", "1.0.0", ALICE).status == "pending"


# -- approvals -----------------------------------------------------------------------------------


def test_requester_cannot_approve_their_own_request(deploys: DeployService, store: Store) -> None:
    request = deploys.request("deploy", "web", "staging", "1.0.0", ALICE)

    decision = deploys.approve(request.id, ALICE)

    assert decision.outcome == "refused" and not decision.start
    assert "someone else has to approve" in decision.message
    assert deploys.get(request.id).approvers == ()
    assert deploys.get(request.id).status == "pending"
    assert actions(store)[-1] == "deploy.approve.refused"


def test_only_listed_people_and_team_members_may_approve(deploys: DeployService) -> None:
    request = deploys.request("deploy", "web", "prod", "1.0.0", ALICE)

    refused = deploys.approve(request.id, DAVE)  # team data is not listed
    stranger = deploys.approve(request.id, "UNKNOWN001")  # not on the roster at all

    assert refused.outcome == "refused"
    assert "only the web team, the sre team or Erin Ekberg may approve web deploys to prod." in refused.message
    assert stranger.outcome == "refused"
    assert deploys.approvers_for(deploys.services["web"].environments["prod"]) == {ALICE, BOB, GINA, CAROL, FRANK, ERIN}
    assert deploys.approve(request.id, ERIN).outcome == "recorded"  # listed by id, though team data is not
    assert deploys.approve(request.id, FRANK).outcome == "approved"  # a member of team sre


def test_people_who_have_left_approve_nothing_and_an_approval_given_before_they_left_lapses(
    tmp_path: Path, clock: Clock
) -> None:
    # Frank (team sre) leaves at the start of the next day; Erin, listed by id, left last year.
    roster = ROSTER.replace("Frank Field, team: sre}", "Frank Field, team: sre, left: 2026-11-03}").replace(
        "Erin Ekberg, team: data}", "Erin Ekberg, team: data, left: 2025-06-30}"
    )
    assert roster.count("left:") == 2
    root = make_knowledge(tmp_path / "knowledge")
    (root / "experts.yaml").write_text(roster, encoding="utf-8")
    store = Store(tmp_path / "deploys.db")
    assert index_knowledge(store, FakeEncoder(), root).problems == []
    deploys = DeployService.from_store(store, clock=clock)
    clock.now = START.replace(hour=23, minute=45)  # Frank's last quarter of an hour
    request = deploys.request("deploy", "web", "prod", "1.0.0", ALICE)

    by_erin = deploys.approve(request.id, ERIN)
    assert by_erin.outcome == "refused" and by_erin.message.startswith("the roster (experts.yaml) says you have left")
    assert "Erin Ekberg" not in " ".join(deploys.who_may_approve(deploys.get(request.id)))
    assert deploys.approve(request.id, FRANK).outcome == "recorded"  # still with us today

    clock.advance(minutes=20)  # past midnight: Frank has left, the request has not expired
    assert FRANK not in deploys.approvers_for(deploys.services["web"].environments["prod"])
    second = deploys.approve(request.id, BOB)

    assert second.outcome == "recorded"  # Frank's approval no longer counts towards the two prod needs
    assert deploys.valid_approvers(deploys.get(request.id)) == [BOB]
    assert deploys.approve(request.id, FRANK).outcome in ("refused", "closed")
    assert deploys.approve(request.id, CAROL).outcome == "approved"


def test_prod_needs_two_distinct_approvals(deploys: DeployService, store: Store) -> None:
    request = deploys.request("deploy", "web", "prod", "1.0.0", ALICE)
    assert request.approvals_needed == 2

    first = deploys.approve(request.id, BOB)
    again = deploys.approve(request.id, BOB)

    assert first.outcome == "recorded" and "1 more approval(s) needed" in first.message
    assert again.outcome == "recorded" and not again.start
    assert "you already decided" in again.message
    assert deploys.get(request.id).approvers == (BOB,)
    assert deploys.get(request.id).status == "pending"

    second = deploys.approve(request.id, CAROL)

    assert second.start and second.outcome == "approved"
    assert second.request.status == "running"
    assert set(second.request.approvers) == {BOB, CAROL}
    assert second.request.started_at == START.isoformat()
    assert deploys.approve(request.id, GINA).outcome == "closed"
    assert actions(store).count("deploy.started") == 1


def test_staging_starts_on_one_approval(deploys: DeployService) -> None:
    request = deploys.request("deploy", "web", "staging", "1.0.0", ALICE)

    assert deploys.approve(request.id, BOB).start


def test_rejection_ends_the_request_and_releases_the_lock(deploys: DeployService, store: Store) -> None:
    request = deploys.request("deploy", "web", "prod", "1.0.0", ALICE)
    deploys.approve(request.id, BOB)

    decision = deploys.reject(request.id, CAROL)

    assert decision.outcome == "rejected" and not decision.start
    assert decision.request.status == "rejected"
    assert decision.request.rejected_by == CAROL
    assert decision.request.finished_at == START.isoformat()
    assert deploys.approve(request.id, GINA).outcome == "closed"
    with pytest.raises(InvalidRequest, match="is rejected, not running"):
        deploys.execute(request.id)
    assert deploys.request("deploy", "web", "prod", "1.0.1", ALICE).status == "pending"


def test_rejection_needs_an_approver_but_the_requester_may_withdraw(deploys: DeployService) -> None:
    request = deploys.request("deploy", "web", "prod", "1.0.0", ALICE)

    assert deploys.reject(request.id, DAVE).outcome == "refused"
    assert deploys.get(request.id).status == "pending"
    withdrawn = deploys.reject(request.id, ALICE)
    assert withdrawn.outcome == "rejected" and withdrawn.request.rejected_by == ALICE
    assert deploys.get(request.id).status == "rejected"
    assert deploys.request("deploy", "web", "prod", "1.0.1", ALICE).status == "pending"  # the lock was released


def test_a_secret_pasted_in_a_withdraw_reason_is_scrubbed_from_the_note_and_the_audit(
    deploys: DeployService, store: Store
) -> None:
    token = "ghp_" + "Zx8vQ2pL5mN9rT3wY6bC1dF4gH7jK0aS1a2B"  # made up, of a GitHub token's shape
    request = deploys.request("deploy", "web", "prod", "1.0.0", ALICE)

    withdrawn = deploys.withdraw(request.id, "cli:admin", f"pasted by mistake: export GITHUB_TOKEN={token}")

    assert withdrawn.note == "pasted by mistake: export GITHUB_TOKEN=***"  # the note Slack shows
    assert store.audit_rows()[-1]["details"]["reason"] == "pasted by mistake: export GITHUB_TOKEN=***"


def test_an_approver_who_then_rejects_is_the_rejecter(deploys: DeployService, store: Store) -> None:
    request = deploys.request("deploy", "web", "prod", "1.0.0", ALICE)
    assert deploys.approve(request.id, BOB).outcome == "recorded"

    changed = deploys.reject(request.id, BOB)

    assert changed.outcome == "rejected"
    assert (changed.request.rejected_by, changed.request.approvers) == (BOB, ())
    decided = [a for a in actions(store) if a in ("deploy.approved", "deploy.rejected")]
    assert decided == ["deploy.approved", "deploy.rejected"]  # the audit keeps both, in order


def test_deciding_on_an_unknown_request_is_not_found(deploys: DeployService) -> None:
    with pytest.raises(NotFound, match="no deploy request 'dep-nope'"):
        deploys.approve("dep-nope", BOB)


# -- expiry and locks ----------------------------------------------------------------------------


def test_pending_request_expires_after_the_ttl(deploys: DeployService, clock: Clock, store: Store) -> None:
    request = deploys.request("deploy", "web", "prod", "1.0.0", ALICE)
    assert request.expires_at == (START + timedelta(minutes=30)).isoformat()

    clock.advance(minutes=29)
    assert deploys.expire_due() == []
    assert deploys.approve(request.id, BOB).outcome == "recorded"

    clock.advance(minutes=1)
    late = deploys.approve(request.id, CAROL)

    assert late.outcome == "closed" and "already expired" in late.message
    assert deploys.get(request.id).status == "expired"
    assert actions(store).count("deploy.expired") == 1
    again = deploys.request("deploy", "web", "prod", "1.0.0", ALICE)
    assert again.status == "pending" and again.id != request.id


def test_expire_due_returns_the_expired_requests(deploys: DeployService, clock: Clock) -> None:
    web = deploys.request("deploy", "web", "prod", "1.0.0", ALICE)
    strict = deploys.request("deploy", "strict", "staging", "1.0.0", ALICE)

    clock.advance(minutes=31)
    expired = deploys.expire_due()

    assert sorted(r.id for r in expired) == sorted([web.id, strict.id])
    assert {r.status for r in expired} == {"expired"}
    assert deploys.expire_due() == []


def test_a_new_request_expires_the_stale_one_holding_the_lock(deploys: DeployService, clock: Clock) -> None:
    stale = deploys.request("deploy", "web", "prod", "1.0.0", ALICE)
    clock.advance(hours=2)

    fresh = deploys.request("deploy", "web", "prod", "1.0.1", BOB)

    assert deploys.get(stale.id).status == "expired"
    assert fresh.status == "pending"


def test_lock_held_refuses_a_second_request_naming_the_holder(deploys: DeployService, store: Store) -> None:
    held = deploys.request("deploy", "web", "prod", "1.0.0", ALICE)

    with pytest.raises(PermissionDenied) as caught:
        deploys.request("deploy", "web", "prod", "1.0.1", BOB)

    assert f"locked by Alice Archer's deploy {held.id} (pending)" in str(caught.value)
    assert len(store.all_deploys()) == 1
    # other environments and services have their own locks
    assert deploys.request("deploy", "web", "staging", "1.0.1", BOB).status == "pending"
    assert deploys.request("deploy", "strict", "staging", "1.0.1", BOB).status == "pending"


def test_lock_is_held_while_running_and_released_when_finished(deploys: DeployService) -> None:
    running = start(deploys)

    with pytest.raises(PermissionDenied, match="(running)"):
        deploys.request("deploy", "web", "staging", "1.0.1", BOB)

    deploys.execute(running.id)
    assert deploys.request("deploy", "web", "staging", "1.0.1", BOB).status == "pending"


# -- concurrency ---------------------------------------------------------------------------------


def test_fifty_concurrent_approvals_from_two_processes_start_once(
    tmp_path: Path, store: Store, clock: Clock, deploys: DeployService
) -> None:
    other_process = Store(store.path)  # a second connection to the same file, as another opsbot would have
    elsewhere = DeployService.from_store(other_process, clock=clock)
    request = deploys.request("deploy", "web", "prod", "1.0.0", ALICE)
    approvers = [BOB, CAROL, FRANK, GINA, ERIN]
    barrier = threading.Barrier(50)
    decisions = []
    errors: list[BaseException] = []
    guard = threading.Lock()

    def click(n: int) -> None:
        service = deploys if n % 2 else elsewhere
        try:
            barrier.wait()
            decision = service.approve(request.id, approvers[n % len(approvers)])
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            with guard:
                errors.append(exc)
            return
        with guard:
            decisions.append(decision)

    threads = [threading.Thread(target=click, args=(n,)) for n in range(50)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    assert errors == []
    assert len(decisions) == 50
    assert sum(d.start for d in decisions) == 1
    assert actions(store).count("deploy.started") == 1
    assert actions(store).count("deploy.approved") == 2
    final = deploys.get(request.id)
    assert final.status == "running" and len(final.approvers) == 2
    assert {d.outcome for d in decisions} <= {"recorded", "approved", "closed"}
    other_process.close()


# -- the audit trail -----------------------------------------------------------------------------


def test_audit_records_every_step_with_actor_and_time(deploys: DeployService, clock: Clock, store: Store) -> None:
    rejected = deploys.request("deploy", "web", "prod", "1.0.0", ALICE)
    deploys.approve(rejected.id, BOB)
    deploys.reject(rejected.id, CAROL)
    expired = deploys.request("deploy", "web", "prod", "1.0.1", ALICE)
    clock.advance(hours=1)
    deploys.expire_due()
    done = deploys.execute(start(deploys, "staging", "1.0.2").id)
    interrupted = start(deploys, "prod", "1.0.3")
    after_crash(store, clock).recover_interrupted()

    rows = store.audit_rows()
    trail = [(r["actor"], r["action"], r["request_id"]) for r in rows]

    assert trail == [
        (ALICE, "deploy.requested", rejected.id),
        (BOB, "deploy.approved", rejected.id),
        (CAROL, "deploy.rejected", rejected.id),
        (ALICE, "deploy.requested", expired.id),
        ("opsbot", "deploy.expired", expired.id),
        (ALICE, "deploy.requested", done.id),
        (BOB, "deploy.approved", done.id),
        ("opsbot", "deploy.started", done.id),
        ("opsbot", "deploy.finished", done.id),
        (ALICE, "deploy.requested", interrupted.id),
        (BOB, "deploy.approved", interrupted.id),
        (CAROL, "deploy.approved", interrupted.id),
        ("opsbot", "deploy.started", interrupted.id),
        ("opsbot", "deploy.interrupted", interrupted.id),
    ]
    for row in rows:
        assert datetime.fromisoformat(row["at"]).tzinfo is not None
    assert rows[0]["details"] == {"service": "web", "env": "prod", "version": "1.0.0"}
    assert rows[7]["details"] == {"approvers": [BOB]}
    assert rows[8]["details"] == {"status": "succeeded", "exit_code": 0}
    assert rows[-1]["details"] == {
        "reason": "its opsbot process stopped before it finished (queued or running)",
        "owner": deploys.owner,
    }


def test_state_changes_outside_a_transaction_are_refused(store: Store) -> None:
    with pytest.raises(RuntimeError, match="store.transaction"):
        store.audit("someone", "deploy.requested")
    with pytest.raises(RuntimeError, match="store.transaction"):
        store.insert_deploy(ci_row("x", "running"))


def test_a_failed_step_rolls_back_the_whole_transaction(store: Store) -> None:
    with pytest.raises(ValueError), store.transaction():
        store.insert_deploy(ci_row("half", "running"))
        store.audit("ci", "deploy.requested", "half")
        raise ValueError("boom")

    assert store.all_deploys() == [] and store.audit_rows() == []


def test_a_rollback_that_expires_is_audited_as_a_rollback(deploys: DeployService, store: Store, clock: Clock) -> None:
    succeed(deploys, clock, "1.0.0")
    succeed(deploys, clock, "1.1.0")
    rollback = deploys.request("rollback", "web", "staging", None, ALICE)
    clock.advance(hours=1)
    deploys.expire_due()
    actions_of = [r["action"] for r in store.audit_rows() if r["request_id"] == rollback.id]
    assert actions_of == ["rollback.requested", "rollback.expired"]  # before, "deploy.expired"


def test_the_start_is_audited_with_the_approvals_it_ran_on_and_one_that_no_longer_counts_apart(
    deploys: DeployService, store: Store
) -> None:
    import dataclasses

    request = deploys.request("deploy", "web", "prod", "1.0.0", ALICE)
    assert not deploys.approve(request.id, BOB).start
    web = deploys.services["web"]  # services.yaml re-indexed: Bob's team no longer approves prod
    prod = dataclasses.replace(web.environments["prod"], approvers=("sre", ERIN))
    deploys.services["web"] = dataclasses.replace(web, environments={**web.environments, "prod": prod})
    assert not deploys.approve(request.id, CAROL).start
    assert deploys.approve(request.id, FRANK).start

    (started,) = [r for r in store.audit_rows() if r["action"] == "deploy.started"]
    assert started["details"] == {"approvers": [CAROL, FRANK], "discounted": [BOB]}  # before, Bob was an approver


def test_a_request_whose_service_left_services_yaml_may_be_closed_by_anyone_on_the_roster(
    deploys: DeployService, store: Store
) -> None:
    # Before, every approver's Reject failed (NotFound) and the request held the lock until it expired.
    request = deploys.request("deploy", "web", "staging", "1.0.0", ALICE)
    del deploys.services["web"]  # services.yaml indexed again without it

    refused = deploys.reject(request.id, "U0STRANGER1")
    assert refused.outcome == "refused" and "only someone on the roster" in refused.message
    closed = deploys.reject(request.id, BOB)
    assert closed.outcome == "rejected" and store.lock_holder("web", "staging") is None
    assert not deploys.approve(request.id, CAROL).start  # approving it was never possible, and is not now
