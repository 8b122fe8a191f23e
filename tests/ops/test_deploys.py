"""The deploy state machine: validation, policy, approvals, locks, expiry, rollback targets and runners.

Fixtures and helpers are in tests/deploy_fixtures.py.
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from bot.errors import InvalidRequest, NotFound, PermissionDenied
from bot.indexer import index_knowledge
from bot.knowledge import load_knowledge
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
    SERVICES,
    actions,
    after_crash,
    make_knowledge,
    runner_service,
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
    assert f"only web, sre, {ERIN} may approve web deploys to prod" in refused.message
    assert stranger.outcome == "refused"
    assert deploys.approvers_for(deploys.services["web"].environments["prod"]) == {ALICE, BOB, GINA, CAROL, FRANK, ERIN}
    assert deploys.approve(request.id, ERIN).outcome == "recorded"  # listed by id, though team data is not
    assert deploys.approve(request.id, FRANK).outcome == "approved"  # a member of team sre


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


# -- rollback ------------------------------------------------------------------------------------


def test_rollback_without_a_version_targets_the_previous_success(
    deploys: DeployService, clock: Clock, store: Store
) -> None:
    succeed(deploys, clock, "1.0.0")
    succeed(deploys, clock, "1.1.0")

    assert deploys.current_version("web", "staging") == "1.1.0"
    request = deploys.request("rollback", "web", "staging", None, ALICE)

    assert request.kind == "rollback"
    assert request.version == "1.0.0" and request.from_version == "1.1.0"
    assert request.title == "Rollback web 1.1.0 → 1.0.0 to staging"
    assert deploys.describe(request).endswith("rollback")
    deploys.approve(request.id, BOB)
    done = deploys.execute(request.id)
    assert done.status == "succeeded"
    assert "rollback web 1.0.0 to staging" in done.log_tail
    assert deploys.current_version("web", "staging") == "1.0.0"
    assert actions(store).count("rollback.requested") == 1
    assert actions(store).count("rollback.finished") == 1


def test_rollback_after_a_failed_deploy_goes_back_to_the_last_good_version(
    deploys: DeployService, clock: Clock
) -> None:
    succeed(deploys, clock, "1.0.0")
    succeed(deploys, clock, "1.1.0")
    failed = deploys.execute(start(deploys, version="1.2.0-bad").id)
    assert failed.status == "failed" and failed.from_version == "1.1.0"
    clock.advance(hours=1)

    assert deploys.current_version("web", "staging") == "1.1.0"
    assert deploys.failed_version("web", "staging") == "1.2.0-bad"
    request = deploys.request("rollback", "web", "staging", None, ALICE)

    assert (request.from_version, request.version) == ("1.2.0-bad", "1.1.0")
    deploys.reject(request.id, BOB)
    named = deploys.request("rollback", "web", "staging", "1.1.0", ALICE)  # naming the last good one works too
    assert named.version == "1.1.0"
    deploys.approve(named.id, BOB)
    assert deploys.execute(named.id).status == "succeeded"
    clock.advance(hours=1)

    assert deploys.failed_version("web", "staging") is None
    assert deploys.request("rollback", "web", "staging", None, ALICE).version == "1.0.0"


@pytest.mark.parametrize("ending", ["timed_out", "interrupted"])
def test_rollback_after_a_run_that_did_not_finish(
    deploys: DeployService, clock: Clock, store: Store, ending: str
) -> None:
    succeed(deploys, clock, "1.0.0")
    running = start(deploys, version="1.1.0")
    if ending == "interrupted":
        after_crash(store, clock).recover_interrupted()
    else:
        with store.transaction():
            store.transition(running.id, "running", "timed_out", finished_at=clock().isoformat())
            store.release_lock(running.id)
    clock.advance(minutes=5)

    request = deploys.request("rollback", "web", "staging", None, ALICE)

    assert (request.from_version, request.version) == ("1.1.0", "1.0.0")


def test_rollback_with_no_history_is_a_clear_error(deploys: DeployService, clock: Clock, store: Store) -> None:
    with pytest.raises(InvalidRequest, match="web has no successful deploy in staging yet; nothing to roll back"):
        deploys.request("rollback", "web", "staging", None, ALICE)

    succeed(deploys, clock, "1.0.0")
    with pytest.raises(InvalidRequest, match="no version of web succeeded in staging before 1.0.0"):
        deploys.request("rollback", "web", "staging", None, ALICE)
    with pytest.raises(InvalidRequest, match="is what web already runs"):
        deploys.request("rollback", "web", "staging", "1.0.0", ALICE)
    assert len(store.all_deploys()) == 1


def test_rollback_to_a_named_version(deploys: DeployService, clock: Clock) -> None:
    succeed(deploys, clock, "1.0.0")
    succeed(deploys, clock, "1.1.0")
    succeed(deploys, clock, "1.2.0")

    assert deploys.request("rollback", "web", "staging", "1.0.0", ALICE).version == "1.0.0"


# -- running -------------------------------------------------------------------------------------


def test_demo_runner_succeeds_with_secrets_scrubbed_from_the_log(deploys: DeployService, store: Store) -> None:
    running = start(deploys)
    progress: list[str] = []

    done = deploys.execute(running.id, progress=lambda request, text: progress.append(text))

    assert done.status == "succeeded" and done.exit_code == 0
    assert done.finished_at is not None and done.duration_s == 0.0  # the test clock did not move
    assert "rolling out: 3/3 pods on 1.0.0" in done.log_tail
    assert "health checks passed" in done.log_tail
    assert "token=***" in done.log_tail
    assert "demo-not-a-real-token" not in done.log_tail
    assert [r for r in store.all_deploys() if r["status"] == "running"] == []
    assert deploys.describe(done).startswith("python -m bot.demo_deploy web 1.0.0 staging dep-")


def test_failing_command_is_failed_with_its_exit_code(deploys: DeployService, store: Store) -> None:
    done = deploys.execute(start(deploys, version="1.0.0-bad").id)

    assert done.status == "failed" and done.exit_code == 1
    assert "health check failed" in done.log_tail
    finished = [r for r in store.audit_rows() if r["action"] == "deploy.finished"]
    assert finished[-1]["details"] == {"status": "failed", "exit_code": 1}


def test_execute_only_runs_a_running_request(deploys: DeployService) -> None:
    request = deploys.request("deploy", "web", "prod", "1.0.0", ALICE)

    with pytest.raises(InvalidRequest, match="is pending, not running"):
        deploys.execute(request.id)
    deploys.approve(request.id, BOB)
    deploys.approve(request.id, CAROL)
    deploys.execute(request.id)
    with pytest.raises(InvalidRequest, match="is succeeded, not running"):
        deploys.execute(request.id)  # a second click never runs it twice


def test_slow_command_times_out(tmp_path: Path) -> None:
    deploys, store = runner_service(tmp_path, '["{python}", "-c", "import time; time.sleep(30)"]', timeout=1)
    request = deploys.request("deploy", "job", "staging", "1.0.0", ALICE)
    deploys.approve(request.id, BOB)

    started = datetime.now(UTC)
    done = deploys.execute(request.id)

    assert (datetime.now(UTC) - started).total_seconds() < 10
    assert done.status == "timed_out" and done.exit_code is None
    assert "stopped after the 1 s timeout" in done.log_tail
    assert [r for r in store.all_deploys() if r["status"] == "running"] == []
    store.close()


def test_missing_command_fails_with_a_message(tmp_path: Path) -> None:
    deploys, store = runner_service(tmp_path, '["/nonexistent/bin/deploy-tool", "{version}"]')
    request = deploys.request("deploy", "job", "staging", "1.0.0", ALICE)
    deploys.approve(request.id, BOB)

    done = deploys.execute(request.id)

    assert done.status == "failed" and done.exit_code is None
    assert "could not start /nonexistent/bin/deploy-tool" in done.log_tail
    # the lock was released: the next request is possible
    assert deploys.request("deploy", "job", "staging", "1.0.1", ALICE).status == "pending"
    store.close()


def test_runner_gets_a_limited_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    canary = "canary-value-7f3e9a51"
    monkeypatch.setenv("SLACK_BOT_TOKEN", canary)
    monkeypatch.setenv("SLACK_SIGNING_SECRET", canary)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", canary)
    script = "import os; print(sorted(os.environ)); print(list(os.environ.values()))"
    deploys, store = runner_service(tmp_path, f'["{{python}}", "-c", "{script}"]')
    request = deploys.request("deploy", "job", "staging", "1.2.3", ALICE)
    deploys.approve(request.id, BOB)

    done = deploys.execute(request.id)

    assert done.status == "succeeded", done.log_tail
    keys = set(eval(done.log_tail.splitlines()[0]))  # noqa: S307 - the child printed a list literal
    assert {"PATH", "OPSBOT_REQUEST_ID", "OPSBOT_SERVICE", "OPSBOT_ENV", "OPSBOT_VERSION"} <= keys
    assert keys <= {"PATH", "LANG", "LC_CTYPE", "OPSBOT_REQUEST_ID", "OPSBOT_SERVICE", "OPSBOT_ENV", "OPSBOT_VERSION"}
    for leaked in ("HOME", "USER", "SLACK_BOT_TOKEN", "SLACK_SIGNING_SECRET", "OPSBOT_DB", "AWS_SECRET_ACCESS_KEY"):
        assert leaked not in done.log_tail
    assert canary not in done.log_tail
    assert f"'{request.id}'" in done.log_tail and "'job'" in done.log_tail
    store.close()


def test_a_dead_process_deploys_are_interrupted_once_its_lease_expired(deploys: DeployService, store: Store,
                                                                       clock: Clock) -> None:
    running = start(deploys)
    pending = deploys.request("deploy", "web", "prod", "1.0.0", ALICE)
    other = DeployService.from_store(store, clock=clock, owner="other-process")

    assert other.recover_interrupted() == []  # the lease is fresh: its process may still be running it

    interrupted = after_crash(store, clock).recover_interrupted()

    assert [r.id for r in interrupted] == [running.id]
    assert interrupted[0].status == "interrupted"
    assert interrupted[0].finished_at == START.isoformat()
    assert deploys.get(pending.id).status == "pending"
    with pytest.raises(InvalidRequest, match="is interrupted, not running"):
        deploys.execute(running.id)
    assert after_crash(store, clock).recover_interrupted() == []
    assert deploys.request("deploy", "web", "staging", "1.0.1", ALICE).status == "pending"  # lock released
    assert actions(store).count("deploy.interrupted") == 1


def test_recovery_leaves_ci_deploys_alone(deploys: DeployService, store: Store, clock: Clock) -> None:
    with store.transaction():
        store.insert_deploy(ci_row("ci-1", status="running"))

    assert after_crash(store, clock).recover_interrupted() == []
    assert store.deploy_row("ci-1")["status"] == "running"


def ci_row(request_id: str, status: str) -> dict:
    return {
        "id": request_id,
        "kind": "deploy",
        "service": "web",
        "env": "prod",
        "version": "2.0.0",
        "from_version": "",
        "requester": "github-actions",
        "status": status,
        "approvals_needed": 0,
        "created_at": START.isoformat(),
        "expires_at": "",
        "started_at": START.isoformat(),
        "finished_at": None,
        "channel": "",
        "message_ts": "",
        "exit_code": None,
        "log_tail": "",
        "source": "ci",
        "commit_sha": "abc1234",
        "commit_time": "",
        "pipeline_url": "",
        "changes": "[]",
    }


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
    assert rows[-1]["details"] == {"reason": "its opsbot process stopped while it was running", "owner": deploys.owner}


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


# -- services.yaml validation --------------------------------------------------------------------

BROKEN_SERVICES = f"""\
services:
  good:
    environments:
      prod: {{approvals: 1, approvers: [sre]}}
    deploy: {{command: ["deploy.sh", "{{service}}", "{{version}}"]}}
  zero-approvals:
    environments:
      staging:
        approvals: 1
        approvers: [web]
      prod:
        approvals: 0
        approvers: [web]
    deploy: {{command: ["deploy.sh"]}}
  no-approvers:
    environments:
      staging:
        approvals: 1
        approvers: [web]
      prod:
        approvals: 1
    deploy: {{command: ["deploy.sh"]}}
  bad-placeholder:
    environments:
      prod: {{approvals: 1, approvers: [sre]}}
    deploy:
      timeout: 60
      command: ["deploy.sh", "{{servce}}"]
  backwards-freeze:
    environments:
      prod:
        approvals: 1
        approvers: [sre]
        freeze:
          - start: "2026-12-27T08:00:00Z"
            end: "2026-12-23T18:00:00Z"
  unreadable-freeze:
    environments:
      prod:
        approvals: 1
        approvers: [sre]
        freeze:
          - start: "2026-12-23T18:00:00Z"
            end: "2026-12-20T00:00:00Z"
          - start: next tuesday
            end: "2026-12-27T08:00:00Z"
  bad-pattern:
    version_pattern: '^(\\d+$'
    environments:
      prod: {{approvals: 1, approvers: [sre]}}
    deploy: {{command: ["deploy.sh"]}}
  also-good:
    owners: [{ALICE}]
    environments:
      staging:
        approvals: 1
        approvers: [web]
    deploy: {{command: ["deploy.sh"]}}
"""


def line_of(text: str, needle: str, after: str = "") -> int:
    lines = text.splitlines()
    begin = next(n for n, line in enumerate(lines) if after in line) if after else 0
    return next(n for n in range(begin, len(lines)) if needle in lines[n]) + 1


@pytest.mark.parametrize(
    "key, says, needle, after",
    [
        ("services.zero-approvals.environments.prod.approvals", "0 must be a whole number", "approvals: 0", ""),
        ("services.no-approvers.environments.prod.approvers", "must list roster ids", "prod:", "no-approvers:"),
        ("services.bad-placeholder.deploy.command", "unknown placeholder {servce}", "command:", "bad-placeholder"),
        ("services.backwards-freeze.environments.prod.freeze[0]", "end must be after start", "- start:", ""),
        ("services.unreadable-freeze.environments.prod.freeze[0]", "end must be after start", "- start:", "unread"),
        ("services.bad-pattern.version_pattern", "not a valid regular expression", "version_pattern:", ""),
    ],
)
def test_services_yaml_problems_name_the_key_and_line(
    tmp_path: Path, key: str, says: str, needle: str, after: str
) -> None:
    make_knowledge(tmp_path, BROKEN_SERVICES)

    kb = load_knowledge(tmp_path)

    problems = {p.message.split(":")[0]: p for p in kb.problems}
    problem = problems[key]
    assert problem.path == "services.yaml"
    assert says in problem.message
    assert problem.line == line_of(BROKEN_SERVICES, needle, after), str(problem)


def test_services_yaml_problems_leave_the_other_services_loaded(tmp_path: Path, clock: Clock) -> None:
    make_knowledge(tmp_path, BROKEN_SERVICES)

    kb = load_knowledge(tmp_path)

    assert sorted(kb.services) == ["also-good", "good"]
    assert len(kb.problems) == 6
    assert "services.yaml" not in kb.failed_paths
    store = Store(tmp_path / "broken.db")
    index_knowledge(store, FakeEncoder(), tmp_path)
    assert sorted(DeployService.from_store(store, clock=clock).services) == ["also-good", "good"]
    store.close()


def test_a_freeze_time_that_is_not_a_time_is_reported(tmp_path: Path) -> None:
    text = BROKEN_SERVICES.replace('end: "2026-12-20T00:00:00Z"', 'end: "2026-12-24T00:00:00Z"')
    make_knowledge(tmp_path, text)

    kb = load_knowledge(tmp_path)

    problem = next(p for p in kb.problems if "unreadable-freeze" in p.message)
    assert problem.message.startswith("services.unreadable-freeze.environments.prod.freeze[1].start: 'next tuesday'")
    assert "is not an ISO 8601 time" in problem.message
    assert problem.line == line_of(text, "- start: next tuesday")


@pytest.mark.parametrize(
    "settings, key",
    [
        ("request_ttl_minutes: 0", "settings.request_ttl_minutes"),
        ("failure_window_hours: soon", "settings.failure_window_hours"),
    ],
)
def test_bad_settings_are_reported_and_the_defaults_used(tmp_path: Path, settings: str, key: str) -> None:
    text = f"settings:\n  deploys_channel: C0DEPLOYS1\n  {settings}\n" + SERVICES.split("\n", 3)[3]
    make_knowledge(tmp_path, text)

    kb = load_knowledge(tmp_path)

    assert [p.message.split(":")[0] for p in kb.problems] == [key]
    assert kb.problems[0].path == "services.yaml" and kb.problems[0].line == 3
    assert kb.deploy_settings is None
    assert sorted(kb.services) == ["owners-only", "strict", "web"]


def test_shipped_services_yaml_has_deployable_services(tmp_path: Path, clock: Clock) -> None:
    from tests.conftest import SAMPLE_KNOWLEDGE

    store = Store(tmp_path / "sample.db")
    store.replace_services(load_knowledge(SAMPLE_KNOWLEDGE).services)
    store.replace_experts(load_knowledge(SAMPLE_KNOWLEDGE).experts)
    service = DeployService.from_store(store, clock=clock)

    assert {"checkout-api", "payments-gateway", "order-pipeline", "storefront-web"} <= set(service.services)
    assert service.services["checkout-api"].environments["prod"].approvals == 2
    assert service.settings.request_ttl_minutes == 30  # not stored by replace_services: the defaults
    store.close()


def test_a_problem_in_a_merged_runner_points_at_the_shared_definition(tmp_path: Path) -> None:
    text = """\
x-runner: &runner
  deploy:
    command: ["deploy.sh", "{sevice}"]
services:
  api:
    environments:
      staging: {approvals: 1, approvers: [web]}
    <<: *runner
"""
    make_knowledge(tmp_path, text)

    kb = load_knowledge(tmp_path)

    assert [str(p) for p in kb.problems] == [
        "services.yaml:3: services.api.deploy.command: unknown placeholder {sevice}; "
        "use ('service', 'version', 'env', 'request_id', 'python')"
    ]


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


def test_timeout_stops_the_commands_children_too(tmp_path: Path) -> None:
    child = "import subprocess, sys; p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
    child += "print(p.pid, flush=True); p.wait()"
    deploys, store = runner_service(tmp_path, f'["{{python}}", "-c", "{child}"]', timeout=1)
    request = deploys.request("deploy", "job", "staging", "1.0.0", ALICE)
    deploys.approve(request.id, BOB)

    done = deploys.execute(request.id)

    assert done.status == "timed_out"
    grandchild = int(done.log_tail.splitlines()[0])
    deadline = datetime.now(UTC) + timedelta(seconds=3)
    while _running(grandchild) and datetime.now(UTC) < deadline:
        threading.Event().wait(0.05)
    assert not _running(grandchild), "a timed-out deploy must not keep running in the background"
    store.close()
