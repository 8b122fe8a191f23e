"""Property-based approval sequences: whatever people click, whenever freezes start and end and processes die,
nothing runs without its approvals or inside a freeze, and nothing runs twice.

Hypothesis drives the deploy service through random sequences of requests, approvals (double clicks,
requesters, people who may not approve), rejections, clock jumps across the freeze window, expiries, runs,
and process restarts. The runner is replaced by a recorder, so the sequences test the rules, not processes
(tests/test_deploy_runner.py runs real ones). OPSBOT_FAULT_SCALE=full (make fault) runs 1,000 sequences.
"""

from __future__ import annotations

import os
import sqlite3
import tempfile
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from bot.answers.indexer import index_knowledge
from bot.errors import OpsbotError
from bot.ops import runner as deploy_runner
from bot.ops.deploys import DeployService
from bot.ops.requests import DeployRequest
from bot.store import Store
from tests.conftest import FakeEncoder
from tests.fakes import Clock
from tests.fault.report import record
from tests.ops.fixtures import ALICE, BOB, CAROL, DAVE, ERIN, FRANK, GINA, make_knowledge

FULL = os.environ.get("OPSBOT_FAULT_SCALE") == "full"
CHECKS: Counter[str] = Counter()  # invariant -> times checked, for the fault suite's report
SEQUENCES = 1000 if FULL else 200
PEOPLE = (ALICE, BOB, CAROL, DAVE, ERIN, FRANK, GINA, "UNOTONROSTER")
START = datetime(2026, 12, 23, 12, 0, tzinfo=UTC)  # six hours before the prod freeze of deploy_fixtures
FREEZE = (datetime(2026, 12, 23, 18, 0, tzinfo=UTC), datetime(2026, 12, 27, 8, 0, tzinfo=UTC))
ALLOWED = {"staging": {ALICE, BOB, GINA}, "prod": {ALICE, BOB, GINA, CAROL, FRANK, ERIN}}
NEEDED = {"staging": 1, "prod": 2}


def _template() -> Path:
    """One indexed database, copied for every sequence (indexing each time would dominate)."""
    folder = Path(tempfile.mkdtemp(prefix="opsbot-properties-"))
    store = Store(folder / "template.db")
    assert index_knowledge(store, FakeEncoder(), make_knowledge(folder / "knowledge")).problems == []
    store.close()
    return folder / "template.db"


TEMPLATE = None


class ApprovalSequences(RuleBasedStateMachine):
    """One opsbot database, one or more processes over its life, and people clicking."""

    current: ApprovalSequences | None = None  # the sequence running now, for the recording runner

    @initialize()
    def setup(self) -> None:
        global TEMPLATE
        TEMPLATE = TEMPLATE or _template()
        self.folder = Path(tempfile.mkdtemp(prefix="opsbot-sequence-"))
        with sqlite3.connect(TEMPLATE) as source, sqlite3.connect(self.folder / "opsbot.db") as target:
            source.backup(target)
        self.store = Store(self.folder / "opsbot.db")
        self.clock = Clock(START)
        self.wall = 1_800_000_000.0  # the lease clock, moved with the test clock
        self.process = 0
        self.deploys = self._new_process()
        self.requests: list[str] = []
        self.runs: list[tuple[str, datetime]] = []
        ApprovalSequences.current = self

    def _new_process(self) -> DeployService:
        self.process += 1
        return DeployService.from_store(
            self.store, clock=self.clock, owner=f"process-{self.process}", lease_clock=lambda: self.wall
        )

    def teardown(self) -> None:
        if hasattr(self, "store"):
            self.store.close()

    # -- what people and processes do --------------------------------------------------------------------

    @rule(env=st.sampled_from(["staging", "prod"]), who=st.sampled_from(PEOPLE), rollback=st.booleans())
    def request(self, env: str, who: str, rollback: bool) -> None:
        version = f"1.{len(self.requests)}.0"
        try:
            request = self.deploys.request("rollback" if rollback else "deploy", "web", env, version, who)
        except OpsbotError:
            return
        assert request.status == "pending"
        self.requests.append(request.id)

    @precondition(lambda self: self.requests)
    @rule(data=st.data(), who=st.sampled_from(PEOPLE), twice=st.booleans())
    def approve(self, data: st.DataObject, who: str, twice: bool) -> None:
        request_id = data.draw(st.sampled_from(self.requests[-2:]))  # people mostly act on recent requests
        for _ in range(2 if twice else 1):
            self.deploys.approve(request_id, who)

    @precondition(lambda self: self.requests)
    @rule(data=st.data(), who=st.sampled_from(PEOPLE))
    def reject(self, data: st.DataObject, who: str) -> None:
        self.deploys.reject(data.draw(st.sampled_from(self.requests)), who)

    @rule(minutes=st.sampled_from([1, 2, 3, 5, 8, 13, 31, 120, 600, 2000]))  # mostly minutes, sometimes days
    def time_passes(self, minutes: int) -> None:
        self.clock.advance(minutes=minutes)
        self.wall += minutes * 60
        self.deploys.expire_due()

    @precondition(lambda self: self.requests)
    @rule(data=st.data())
    def an_approver_approves(self, data: st.DataObject) -> None:
        """Most clicks come from people who may approve (otherwise few sequences would get anywhere)."""
        request_id = self.requests[-1]
        row = self.store.deploy_row(request_id)
        who = data.draw(st.sampled_from(sorted(ALLOWED[row["env"]] - {row["requester"]})))
        self.deploys.approve(request_id, who)

    @rule()
    def runner_picks_up(self) -> None:
        """The deploy pool gets to the oldest approved request (possibly much later, after the clock moved)."""
        running = [r for r in self.requests if self.store.deploy_row(r)["status"] == "running"]
        if not running:
            return
        try:
            self.deploys.execute(running[0])
        except OpsbotError:
            assert self.store.deploy_row(running[0])["owner"] != self.deploys.owner  # another process's deploy

    @rule()
    def process_dies_and_another_starts(self) -> None:
        """SIGKILL: what was approved but not yet run is never run; the next process finds it once leases ran out."""
        self.deploys = self._new_process()
        self.wall += deploy_runner.LEASE_S + 1
        self.deploys.recover_interrupted()

    # -- what must always hold ------------------------------------------------------------------------------

    @invariant()
    def nothing_ran_twice(self) -> None:
        CHECKS["each approved request runs at most once"] += 1
        ids = [request_id for request_id, _ in self.runs]
        assert len(ids) == len(set(ids))

    @invariant()
    def every_run_had_its_approvals_and_no_freeze(self) -> None:
        CHECKS["no run without its approvals or inside a freeze"] += 1
        for request_id, when in self.runs:
            row = self.store.deploy_row(request_id)
            approvers = {u for u, d, _ in self.store.decisions(request_id) if d == "approve"}
            valid = approvers & ALLOWED[row["env"]] - {row["requester"]}
            assert len(valid) >= NEEDED[row["env"]], (request_id, approvers, row["requester"])
            assert not (row["env"] == "prod" and FREEZE[0] <= when < FREEZE[1]), (request_id, when)

    @invariant()
    def one_active_request_per_environment(self) -> None:
        CHECKS["one active request per service and environment"] += 1
        for env in ("staging", "prod"):
            active = [
                r["id"]
                for r in self.store.recent_deploys("web", env, limit=10_000)
                if r["status"] in ("pending", "running")
            ]
            assert len(active) <= 1, active
            assert self.store.lock_holder("web", env) == (active[0] if active else None)

    @invariant()
    def interrupted_and_cancelled_never_ran(self) -> None:
        CHECKS["nothing interrupted, cancelled, rejected or expired ran"] += 1
        ran = {request_id for request_id, _ in self.runs}
        for request_id in self.requests:
            status = self.store.deploy_row(request_id)["status"]
            if status in ("pending", "rejected", "expired", "interrupted", "cancelled"):
                assert request_id not in ran, (request_id, status)


@pytest.fixture
def recorded_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    """Replace the command by a recorder of (request id, time it ran) on the running sequence."""

    def run(deploys: DeployService, runner: object, argv: list, request: DeployRequest, *rest: object) -> tuple:
        machine = ApprovalSequences.current
        assert machine is not None
        machine.runs.append((request.id, machine.clock()))
        return "succeeded", 0, ["ran"]

    monkeypatch.setattr(deploy_runner, "_run_command", run)


@pytest.mark.fault
def test_random_approval_sequences_keep_the_rules(recorded_runs: None) -> None:
    CHECKS.clear()
    started = time.perf_counter()
    violations: list[str] = []
    try:
        run_sequences()
    except AssertionError as exc:
        violations.append(f"invariant broken: {str(exc).splitlines()[0][:300]}")
        raise
    finally:
        record(
            "property: approval sequences",
            tried=SEQUENCES,
            invariants=dict(CHECKS),
            violations=violations,
            seconds=time.perf_counter() - started,
            notes=[f"{SEQUENCES} hypothesis sequences of up to 40 steps"],
        )


def run_sequences() -> None:
    run_state_machine_as_test(
        ApprovalSequences,
        settings=settings(
            max_examples=SEQUENCES,
            stateful_step_count=40,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
            derandomize=not FULL,  # the fast subset is the same every run; make fault explores
        ),
    )


def test_a_week_of_clock_jumps_covers_the_freeze() -> None:
    """The sequences can reach the freeze: the longest steps from START cross both of its edges."""
    assert START + timedelta(minutes=2000 * 3) > FREEZE[1] > FREEZE[0] > START
