"""Running a deploy's command: output, exit codes, timeouts, a limited environment, children stopped.

Fixtures and helpers are in tests/ops/fixtures.py.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from bot.errors import InvalidRequest
from bot.ops.deploys import OWNER_PATIENCE_S, DeployService
from bot.ops.metrics import dora
from bot.store import Store
from tests.fakes import START, Clock
from tests.ops.fixtures import (
    ALICE,
    BOB,
    CAROL,
    actions,
    after_crash,
    ci_row,
    runner_service,
    start,
)

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
    assert "stopped after the 1 s timeout (if it needs longer, raise `timeout:` under job's runner" in done.log_tail
    assert [r for r in store.all_deploys() if r["status"] == "running"] == []
    store.close()


def test_missing_command_fails_with_a_message(tmp_path: Path) -> None:
    deploys, store = runner_service(tmp_path, '["/nonexistent/bin/deploy-tool", "{version}"]')
    request = deploys.request("deploy", "job", "staging", "1.0.0", ALICE)
    deploys.approve(request.id, BOB)

    done = deploys.execute(request.id)

    assert done.status == "failed" and done.exit_code is None and done.never_started
    assert "could not start /nonexistent/bin/deploy-tool" in done.log_tail
    # the lock was released: the next request is possible
    assert deploys.request("deploy", "job", "staging", "1.0.1", ALICE).status == "pending"
    # Nothing ran, so nothing changed: no failed change, and no outage until the next success (before: 1 of 1
    # failed, and a "time to restore" as long as it took to mend services.yaml).
    figures = dora(store, service="job", env="staging")
    assert (figures.changes, figures.failed_changes, figures.time_to_restore_min) == (0, 0, None)
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


def test_a_dead_process_deploys_are_interrupted_once_its_lease_expired(
    deploys: DeployService, store: Store, clock: Clock
) -> None:
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


def test_a_deploy_whose_process_still_runs_here_is_left_alone_though_its_lease_ran_out(
    deploys: DeployService, store: Store, clock: Clock
) -> None:
    # A full disk refused the owner's lease renewals for over 30 s: a second opsbot process took the deploy for
    # an orphan and killed its runner half-way, though its owner was alive and the command healthy.
    running = start(deploys)
    owner = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "opsbot"])  # an opsbot process
    try:
        time.sleep(0.05)
        held = f"{socket.gethostname()}:{owner.pid}:a1b2c3d4"
        with store.transaction():  # the run began once that process ran
            store.update_deploy(running.id, owner=held, started_at=datetime.now(UTC).isoformat(timespec="seconds"))

        assert after_crash(store, clock).recover_interrupted() == []
        assert deploys.get(running.id).status == "running"

        # A process that took a dead owner's pid started after the run began: it is not the owner.
        before = (datetime.now(UTC) - timedelta(hours=1)).isoformat(timespec="seconds")
        with store.transaction():
            store.update_deploy(running.id, started_at=before)
        assert [r.status for r in after_crash(store, clock).recover_interrupted()] == ["interrupted"]
    finally:
        owner.kill()
        owner.wait()


def test_a_deploy_whose_process_renewed_nothing_for_half_an_hour_is_an_orphan_though_it_runs(
    deploys: DeployService, store: Store, clock: Clock
) -> None:
    running = start(deploys)
    owner = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "opsbot"])
    try:
        time.sleep(0.05)
        with store.transaction():
            store.update_deploy(
                running.id,
                owner=f"{socket.gethostname()}:{owner.pid}:a1b2c3d4",
                started_at=datetime.now(UTC).isoformat(timespec="seconds"),
            )
        stuck = DeployService.from_store(
            store, clock=clock, owner="other-process", lease_clock=lambda: time.time() + OWNER_PATIENCE_S + 60
        )
        assert [r.status for r in stuck.recover_interrupted()] == ["interrupted"]
    finally:
        owner.kill()
        owner.wait()


def test_recovery_leaves_ci_deploys_alone(deploys: DeployService, store: Store, clock: Clock) -> None:
    with store.transaction():
        store.insert_deploy(ci_row("ci-1", status="running"))

    assert after_crash(store, clock).recover_interrupted() == []
    assert store.deploy_row("ci-1")["status"] == "running"
