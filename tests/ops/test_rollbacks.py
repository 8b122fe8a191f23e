"""Rollbacks: which version a rollback targets, after successes, failures and runs that did not finish.

Fixtures and helpers are in tests/ops/fixtures.py.
"""

from __future__ import annotations

import pytest

from bot.errors import InvalidRequest
from bot.ops.deploys import DeployService
from bot.store import Store
from tests.fakes import Clock
from tests.ops.fixtures import (
    ALICE,
    BOB,
    actions,
    after_crash,
    start,
    succeed,
)

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


@pytest.mark.parametrize("versions", [("2.0.0", "2.0.1"), ("2.0.1", "2.0.0")])
def test_of_two_deploys_that_ended_in_the_same_second_the_later_one_runs(
    deploys: DeployService, clock: Clock, versions: tuple[str, str]
) -> None:
    """Times are kept to the second: which ran last was once told by the versions' order or by random ids."""
    first, second = versions
    for version in versions:  # the clock stands still: both end in the same second
        assert deploys.execute(start(deploys, version=version).id).status == "succeeded"
    assert deploys.current_version("web", "staging") == second
    request = deploys.request("rollback", "web", "staging", None, ALICE)
    assert (request.from_version, request.version) == (second, first)
    deploys.reject(request.id, BOB)
    failed = deploys.execute(start(deploys, version="2.0.2-bad").id)  # and a failure in that second too
    assert failed.status == "failed"
    assert deploys.failed_version("web", "staging") == "2.0.2-bad"


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


def test_a_deploy_cancelled_before_it_ran_does_not_hide_the_failed_one_before_it(
    deploys: DeployService, clock: Clock, store: Store
) -> None:
    succeed(deploys, clock, "1.0.0")
    succeed(deploys, clock, "1.1.0")
    assert deploys.execute(start(deploys, version="1.2.0-bad").id).status == "failed"
    clock.advance(minutes=5)
    # approved a moment before a freeze began: it ends cancelled when its run would start, and nothing ran
    cancelled = start(deploys, version="1.3.0")
    with store.transaction():
        store.transition(cancelled.id, "running", "cancelled", finished_at=clock().isoformat(), note="not started")
        store.release_lock(cancelled.id)
    clock.advance(minutes=5)

    assert deploys.failed_version("web", "staging") == "1.2.0-bad"
    request = deploys.request("rollback", "web", "staging", None, ALICE)
    assert (request.from_version, request.version) == ("1.2.0-bad", "1.1.0")


def test_a_second_rollback_goes_further_back_not_to_the_version_the_first_one_undid(
    deploys: DeployService, clock: Clock
) -> None:
    succeed(deploys, clock, "0.9.0")
    succeed(deploys, clock, "1.0.0")
    succeed(deploys, clock, "1.1.0")
    first = deploys.request("rollback", "web", "staging", None, ALICE)
    assert (first.from_version, first.version) == ("1.1.0", "1.0.0")
    deploys.approve(first.id, BOB)
    assert deploys.execute(first.id).status == "succeeded"
    clock.advance(hours=1)

    second = deploys.request("rollback", "web", "staging", None, ALICE)

    assert (second.from_version, second.version) == ("1.0.0", "0.9.0")
    deploys.reject(second.id, BOB)
    clock.advance(hours=1)
    # deployed again after the rollback, 1.1.0 is good again: a rollback from 1.2.0 goes back to it
    succeed(deploys, clock, "1.1.0")
    succeed(deploys, clock, "1.2.0")
    assert deploys.request("rollback", "web", "staging", None, ALICE).version == "1.1.0"


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
