"""CI/CD deploy events go through the deploy service's rules: the lock, freezes, the audit actor, time zones,
stale starts and reports sent twice."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from bot.errors import InvalidRequest, PermissionDenied
from bot.ops.ci_deploys import abandon_stale, record_ci_event
from bot.ops.ci_events import EventProblem, parse_event
from bot.ops.deploys import DeployService
from bot.ops.metrics import dora
from bot.store import Store
from tests.fakes import START, Clock
from tests.ops.fixtures import ALICE, BOB, actions

PIPELINE = "https://ci.example.com/runs/1"


def send(deploys: DeployService, event_id: str, status: str, version: str = "2.0.0", env: str = "staging", **more):  # noqa: ANN003, ANN201
    body = {"event_id": event_id, "service": "web", "env": env, "version": version, "status": status, **more}
    return record_ci_event(deploys, parse_event(json.dumps(body), deploys.ci_services(), deploys.ci_environments()))


def iso(when: datetime) -> str:
    return when.isoformat(timespec="seconds")


def test_a_ci_start_while_a_deploy_request_holds_the_lock_is_flagged_not_a_second_holder(
    deploys: DeployService, store: Store
) -> None:
    pending = deploys.request("deploy", "web", "staging", "1.0.0", ALICE)

    started = send(deploys, "e1", "started", actor="octocat").request

    assert started is not None and started.status == "overlapping"  # never a second "running" deploy
    assert started.flags and f"Alice Archer's {pending.id} (pending) held the web staging lock" in started.flags[0]
    assert store.lock_holder("web", "staging") == pending.id  # the lock stays with the request that took it
    assert "deploy.flagged" in actions(store)
    refused = deploys.approve(pending.id, BOB)
    assert refused.outcome == "refused" and "being deployed right now" in refused.message

    finished = send(deploys, "e2", "succeeded").request

    assert finished is not None and finished.id == started.id and finished.status == "succeeded"
    assert deploys.approve(pending.id, BOB).start  # the pending request may go ahead once CI is done


def test_a_ci_start_on_a_free_lock_holds_it_until_it_ends(deploys: DeployService, store: Store) -> None:
    started = send(deploys, "e1", "started", actor="octocat").request
    assert started is not None and started.flags == ()

    with pytest.raises(PermissionDenied, match=r"locked by CI \(octocat\)'s deploy"):
        deploys.request("deploy", "web", "staging", "1.0.0", ALICE)

    send(deploys, "e2", "failed")
    assert store.lock_holder("web", "staging") is None
    assert deploys.request("deploy", "web", "staging", "1.0.0", ALICE).status == "pending"


def test_a_ci_deploy_into_a_frozen_environment_is_recorded_and_flagged(store: Store) -> None:
    deploys = DeployService.from_store(store, clock=Clock(datetime(2026, 12, 24, 9, 0, tzinfo=UTC)))

    outcome = send(deploys, "e1", "succeeded", env="prod", finished_at="2026-12-24T08:55:00Z")

    request = outcome.request
    assert request is not None and request.status == "succeeded"
    assert request.flags == ("deployed during the freeze (Christmas peak) until 2026-12-27T08:00+00:00",)
    flagged = [r for r in store.audit_rows() if r["action"] == "deploy.flagged"]
    assert flagged and flagged[0]["details"]["flags"] == list(request.flags)
    assert outcome.as_json()["flags"] == list(request.flags)


def test_the_actor_is_recorded_as_ci_so_a_pipeline_cannot_act_as_opsbot_or_a_person(
    deploys: DeployService, store: Store
) -> None:
    for n, claimed in enumerate(("opsbot", ALICE)):
        request = send(deploys, f"e{n}", "succeeded", version=f"2.0.{n}", actor=claimed).request
        assert request is not None and request.requester == f"ci:{claimed}"
    assert {r["actor"] for r in store.audit_rows()} == {"ci:opsbot", f"ci:{ALICE}"}
    assert deploys.name(f"ci:{ALICE}") == f"CI ({ALICE})"


@pytest.mark.parametrize("field", ["started_at", "finished_at", "commit_time"])
def test_a_time_without_an_offset_is_refused(deploys: DeployService, field: str) -> None:
    body = {
        "event_id": "e1",
        "service": "web",
        "env": "staging",
        "version": "2.0.0",
        "status": "succeeded",
        field: "2026-11-02T12:00:00",
    }
    with pytest.raises(EventProblem, match="has no UTC offset") as caught:
        parse_event(json.dumps(body), deploys.ci_services(), deploys.ci_environments())
    assert caught.value.field == field


@pytest.mark.parametrize("field", ["started_at", "finished_at", "commit_time"])
@pytest.mark.parametrize("value", ["0001-01-01T00:00:00+01:00", "9999-12-31T23:30:00-01:00"])
def test_a_time_outside_the_calendar_once_in_utc_is_refused_not_an_overflow(
    deploys: DeployService, field: str, value: str
) -> None:
    """Valid ISO 8601 with its offset, but in year 0 or 10000 in UTC: a field problem (400), not a 500."""
    body = {"event_id": "e1", "service": "web", "env": "staging", "version": "2.0.0", "status": "succeeded"}
    with pytest.raises(EventProblem, match="falls outside the years 0001 to 9999 once in UTC") as caught:
        parse_event(json.dumps(body | {field: value}), deploys.ci_services(), deploys.ci_environments())
    assert caught.value.field == field


@pytest.mark.parametrize(
    ("status", "times"),
    [
        ("succeeded", {"started_at": "2026-11-02T09:50:00Z", "finished_at": "2026-11-02T10:00:00Z"}),
        ("failed", {"finished_at": "2026-11-02T10:00:00Z"}),
        ("started", {"started_at": "2026-11-02T10:00:00Z"}),
    ],
)
def test_a_commit_time_after_the_deploy_is_refused(
    deploys: DeployService, store: Store, status: str, times: dict
) -> None:
    with pytest.raises(EventProblem, match="commit_time 2026-11-02T10:25:00") as caught:
        send(deploys, "e1", status, commit_time="2026-11-02T10:25:00Z", **times)

    assert caught.value.field == "commit_time"
    assert store.audit_rows() == []


@pytest.mark.parametrize("commit_time", ["0001-01-01T00:00:00Z", "1970-01-01T00:00:00Z", "2024-10-01T00:00:00Z"])
def test_a_commit_time_years_before_the_deploy_is_refused(
    deploys: DeployService, store: Store, commit_time: str
) -> None:
    # Before, a zeroed date was taken: DORA showed a lead time of 739,956 days, for good.
    with pytest.raises(EventProblem, match="is over 2 years before the deploy") as caught:
        send(deploys, "e1", "succeeded", commit_time=commit_time, finished_at="2026-11-02T10:00:00Z")
    assert caught.value.field == "commit_time" and store.audit_rows() == []
    send(deploys, "e2", "succeeded", commit_time="2025-11-20T10:00:00Z", finished_at="2026-11-02T10:00:00Z")


def test_a_commit_time_after_the_finish_that_closed_a_run_gives_no_negative_lead_time(
    deploys: DeployService, clock: Clock, store: Store
) -> None:
    send(deploys, "e1", "started", started_at=iso(START - timedelta(minutes=10)))
    # the finish carries no times (opsbot's now is the finish) and a commit time 25 minutes later than that
    closed = send(deploys, "e2", "succeeded", commit_time=iso(START + timedelta(minutes=25))).request
    assert closed is not None and closed.status == "succeeded"
    clock.advance(hours=1)

    figures = dora(store, "web", "staging", now=clock())

    assert figures.deploys_period == 1
    assert figures.lead_time_h is None and "lead time n/a" in figures.line()


def test_a_finish_stamped_ahead_of_opsbots_clock_counts_in_its_own_summary(
    deploys: DeployService, clock: Clock, store: Store
) -> None:
    ahead = iso(START + timedelta(seconds=20))  # the pipeline's clock runs 20 s fast: the signature allows it

    done = send(deploys, "e1", "succeeded", started_at=iso(START - timedelta(minutes=5)), finished_at=ahead).request

    assert done is not None and done.finished_at == iso(START)  # no later than opsbot's now
    assert deploys.figures("web", "staging").deploys_7d == 1  # the summary posted now includes it
    clock.advance(minutes=1)
    again = send(deploys, "e2", "succeeded", started_at=iso(START - timedelta(minutes=5)), finished_at=ahead)
    assert again.action == "duplicate"  # the pipeline's retry is still recognised
    assert deploys.figures("web", "staging").deploys_7d == 1


def test_a_run_started_and_finished_ahead_of_opsbots_clock_counts_when_it_finishes(
    deploys: DeployService, clock: Clock
) -> None:
    started = send(deploys, "e1", "started", started_at=iso(START + timedelta(seconds=30))).request
    assert started is not None and started.started_at == iso(START)
    clock.advance(minutes=3)

    done = send(deploys, "e2", "succeeded", finished_at=iso(clock() + timedelta(seconds=30))).request

    assert done is not None and done.id == started.id and done.finished_at == iso(clock())
    assert deploys.figures("web", "staging").deploys_7d == 1


def test_a_whole_run_ahead_of_opsbots_clock_does_not_end_before_it_started(deploys: DeployService) -> None:
    started_at, finished_at = START + timedelta(seconds=10), START + timedelta(seconds=40)

    done = send(deploys, "e1", "failed", started_at=iso(started_at), finished_at=iso(finished_at)).request

    assert done is not None and done.started_at == done.finished_at == iso(START)
    assert deploys.figures("web", "staging").changes == 1


def test_a_local_time_with_its_offset_decides_the_rollback_target(deploys: DeployService, clock: Clock) -> None:
    send(deploys, "e1", "succeeded", version="1.0.0", finished_at="2026-11-02T11:00:00+02:00")  # 09:00 UTC
    send(deploys, "e2", "succeeded", version="1.1.0", finished_at="2026-11-02T09:30:00Z")

    assert deploys.current_version("web", "staging") == "1.1.0"
    assert deploys.rollback_target("web", "staging") == "1.0.0"


def test_a_rollback_reaches_a_version_however_many_successes_came_after_it(
    deploys: DeployService, clock: Clock
) -> None:
    # Before, the history was cut at the newest 200 successes: an older good version was "never succeeded", and 200
    # redeploys of the current one left no target at all.
    start = START - timedelta(days=30)
    send(deploys, "good", "succeeded", version="1.0.0", finished_at=iso(start))
    for n in range(1, 202):
        send(deploys, f"again-{n}", "succeeded", version="2.0.0", finished_at=iso(start + timedelta(hours=n)))
    assert deploys.rollback_target("web", "staging") == "1.0.0"
    assert deploys.request("rollback", "web", "staging", "1.0.0", ALICE).version == "1.0.0"
    with pytest.raises(InvalidRequest, match=r"0\.9\.0 never succeeded .* newest first: 2\.0\.0, 1\.0\.0\."):
        deploys.request("rollback", "web", "staging", "0.9.0", ALICE)


def test_a_start_without_an_end_is_abandoned_and_a_late_end_still_closes_it(
    deploys: DeployService, clock: Clock, store: Store
) -> None:
    started = send(deploys, "e1", "started", pipeline_url=PIPELINE).request
    assert started is not None
    clock.advance(hours=5)
    assert abandon_stale(deploys) == []
    clock.advance(hours=2)

    [abandoned] = abandon_stale(deploys)

    assert abandoned.id == started.id and abandoned.status == "abandoned"
    assert "within 6 hours" in abandoned.note
    assert store.lock_holder("web", "staging") is None
    late = send(deploys, "e2", "succeeded", pipeline_url=PIPELINE).request
    assert late is not None and late.id == started.id and late.status == "succeeded"


def test_the_same_finished_deploy_reported_under_a_new_event_id_counts_once(
    deploys: DeployService, clock: Clock, store: Store
) -> None:
    finished = iso(START - timedelta(minutes=5))
    first = send(deploys, "e1", "succeeded", pipeline_url=PIPELINE, finished_at=finished)
    again = send(deploys, "e2", "succeeded", pipeline_url=PIPELINE, finished_at=finished)
    bare = send(deploys, "e3", "succeeded", version="3.0.0", finished_at=finished)
    bare_again = send(deploys, "e4", "succeeded", version="3.0.0", finished_at=iso(START - timedelta(minutes=2)))
    other_pipeline = send(deploys, "e5", "succeeded", pipeline_url=PIPELINE + "0", finished_at=finished)

    assert first.action == "recorded" and again.action == "duplicate"
    assert again.as_json() == {"ok": True, "duplicate": True, "id": first.request.id}
    assert bare.action == "recorded" and bare_again.action == "duplicate"
    assert other_pipeline.action == "recorded"
    figures = dora(store, "web", "staging", now=clock())
    assert figures.deploys_period == 3 and figures.changes == 3


def test_a_finish_before_the_start_of_the_run_it_closes_is_refused(deploys: DeployService, clock: Clock) -> None:
    started = send(deploys, "s1", "started", started_at=iso(START)).request
    clock.advance(minutes=10)

    with pytest.raises(EventProblem, match="finished_at 2026-11-02T09:30:00[+]00:00 is before") as caught:
        send(deploys, "f1", "succeeded", finished_at=iso(START - timedelta(minutes=30)))

    assert caught.value.field == "finished_at"
    assert deploys.get(started.id).status == "running"  # nothing recorded; the event may be sent again, fixed
    done = send(deploys, "f1", "succeeded", finished_at=iso(START + timedelta(minutes=9))).request
    assert done.id == started.id and done.finished_at > done.started_at


def test_a_start_that_arrives_after_its_own_finish_takes_no_lock(
    deploys: DeployService, clock: Clock, store: Store
) -> None:
    began = iso(START - timedelta(minutes=5))
    done = send(deploys, "run-finished", "succeeded", pipeline_url=PIPELINE, started_at=began, finished_at=iso(START))
    clock.advance(seconds=20)

    late = send(deploys, "run-started", "started", pipeline_url=PIPELINE, started_at=began)
    late_bare = send(deploys, "run-started-2", "started", started_at=began)  # no pipeline_url: same started_at

    assert late.action == late_bare.action == "duplicate" and late.as_json()["id"] == done.request.id
    assert store.lock_holder("web", "staging") is None and store.running_for("web", "staging") == []
    assert deploys.request("deploy", "web", "staging", "2.0.1", ALICE).status == "pending"


def test_a_rerun_of_a_finished_pipeline_is_a_new_run_that_takes_the_lock(
    deploys: DeployService, clock: Clock, store: Store
) -> None:
    """GitHub's "Re-run failed jobs" keeps the run's URL: a start with that URL after the run finished, and with
    another start time (or none), is the re-run, not a late copy of the first start."""
    began = iso(START - timedelta(minutes=5))
    send(deploys, "gh-1-started", "started", pipeline_url=PIPELINE, started_at=began)
    send(deploys, "gh-1-finished", "failed", pipeline_url=PIPELINE, started_at=began, finished_at=iso(START))
    clock.advance(minutes=10)

    rerun = send(
        deploys, "gh-2-started", "started", pipeline_url=PIPELINE, started_at=iso(START + timedelta(minutes=9))
    )

    assert rerun.action == "started" and store.lock_holder("web", "staging") == rerun.request.id
    with pytest.raises(PermissionDenied, match="locked by CI"):  # CI holds the lock while its re-run deploys
        deploys.request("deploy", "web", "staging", "2.0.1", ALICE)


def test_a_start_retried_under_a_new_event_id_is_one_run_that_one_finish_closes(
    deploys: DeployService, clock: Clock, store: Store
) -> None:
    first = send(deploys, "evt-aaaa", "started", pipeline_url=PIPELINE)
    retry = send(deploys, "evt-bbbb", "started", pipeline_url=PIPELINE)  # notify-deploy without --event-id
    other = send(deploys, "evt-cccc", "started", version="2.0.1", pipeline_url=PIPELINE + "0")

    assert first.action == "started" and retry.action == "duplicate" and retry.as_json()["id"] == first.request.id
    assert other.action == "started" and other.request.status == "overlapping"  # another run is still flagged
    clock.advance(minutes=3)
    send(deploys, "evt-dddd", "succeeded", pipeline_url=PIPELINE)
    send(deploys, "evt-eeee", "succeeded", version="2.0.1", pipeline_url=PIPELINE + "0")

    assert store.lock_holder("web", "staging") is None and store.running_for("web", "staging") == []
    pending = deploys.request("deploy", "web", "staging", "2.0.2", ALICE)
    assert deploys.approve(pending.id, BOB).start


def test_secrets_in_an_events_free_text_are_scrubbed_before_it_is_recorded(
    deploys: DeployService, store: Store
) -> None:
    token = "ghp_" + "A1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q7r8"
    long_change = "x" * 280 + f" {token}"  # the token straddles the 300 characters a change is cut to

    done = send(
        deploys,
        "e1",
        "succeeded",
        actor=f"bot {token}",
        pipeline_url=f"{PIPELINE}?access_token={token}",
        changes=[f"Revert: accidentally committed token {token}", long_change],
    ).request

    assert done is not None
    assert done.pipeline_url == f"{PIPELINE}?access_token=***"
    assert done.changes == ("Revert: accidentally committed token ***", "x" * 280 + " ***")
    assert done.requester == "ci:bot ***"
    assert token[:12] not in json.dumps(store.deploy_row(done.id)) + json.dumps(store.audit_rows())


# -- a pipeline reporting on the /deploy request that triggered it (request_id) -------------------------


def requested_row(store: Store, rid: str, version: str, status: str, started: datetime, kind: str = "deploy") -> None:
    """A /deploy (or /rollback) request of web in staging as opsbot leaves it once its run got that far."""
    ended = status not in ("running", "pending")
    with store.transaction():
        store.insert_deploy(
            {
                **{k: "" for k in store.DEPLOY_COLUMNS.split(", ")},
                "id": rid,
                "kind": kind,
                "service": "web",
                "env": "staging",
                "version": version,
                "requester": ALICE,
                "status": status,
                "approvals_needed": 1,
                "created_at": iso(started - timedelta(minutes=5)),
                "started_at": None if status == "pending" else iso(started),
                "finished_at": iso(started + timedelta(minutes=1)) if ended else None,
                "exit_code": 0 if status == "succeeded" else None,
                "source": "slack",
                "changes": "[]",
            }
        )


def test_a_finish_for_a_request_whose_own_outcome_is_not_recorded_is_refused(
    deploys: DeployService, store: Store
) -> None:
    requested_row(store, "dep-20261102-00000a", "2.0.0", "running", START - timedelta(minutes=3))
    requested_row(store, "dep-20261102-00000b", "2.0.0", "interrupted", START - timedelta(hours=2))
    with store.transaction():
        store.update_deploy("dep-20261102-00000b", env="prod")  # another environment: no later run of this one

    started = send(deploys, "e1", "started", request_id="dep-20261102-00000a")
    with pytest.raises(EventProblem, match="is running in opsbot: its own run's outcome is not recorded yet"):
        send(deploys, "e2", "failed", request_id="dep-20261102-00000a")
    with pytest.raises(EventProblem, match="is interrupted in opsbot") as interrupted:
        send(deploys, "e3", "failed", env="prod", request_id="dep-20261102-00000b")

    assert started.action == "reported" and interrupted.value.field == "request_id"
    assert "leave request_id out" in str(interrupted.value)
    assert sorted(r["status"] for r in store.all_deploys()) == ["interrupted", "running"]
    assert actions(store) == ["deploy.ci_started"]


def test_a_report_on_a_request_of_another_environment_or_before_its_start_is_refused(
    deploys: DeployService, store: Store
) -> None:
    requested_row(store, "dep-20261102-00000c", "2.0.0", "succeeded", START - timedelta(minutes=30))

    with pytest.raises(EventProblem, match="is web 2.0.0 to staging, not web 2.0.0 to prod") as other_env:
        send(deploys, "e1", "failed", env="prod", request_id="dep-20261102-00000c")
    with pytest.raises(EventProblem, match="before .* when dep-20261102-00000c started") as early:
        send(deploys, "e2", "failed", request_id="dep-20261102-00000c", finished_at=iso(START - timedelta(hours=1)))

    assert other_env.value.field == "request_id" and early.value.field == "finished_at"
    assert store.deploy_row("dep-20261102-00000c")["status"] == "succeeded" and actions(store) == []


def test_a_late_report_after_a_later_run_is_refused_so_what_runs_now_stays_true(
    deploys: DeployService, store: Store
) -> None:
    requested_row(store, "dep-20261102-00000d", "1.0.0", "succeeded", START - timedelta(hours=3))
    requested_row(store, "dep-20261102-00000e", "2.0.0", "succeeded", START - timedelta(minutes=50))
    # the on-call rolled back before the pipeline of 2.0.0 reported
    requested_row(store, "dep-20261102-00000f", "1.0.0", "succeeded", START - timedelta(minutes=40), kind="rollback")
    assert deploys.current_version("web", "staging") == "1.0.0"

    with pytest.raises(EventProblem, match=r"dep-20261102-00000f \(rollback of 1.0.0\) ran in web staging after"):
        send(deploys, "e1", "failed", request_id="dep-20261102-00000e")
    # the pipeline retrying its report of the outcome the request shows is no change: a duplicate, not a refusal
    retried = send(deploys, "e2", "succeeded", request_id="dep-20261102-00000e")
    assert retried.action == "duplicate"

    assert deploys.current_version("web", "staging") == "1.0.0"
    assert store.deploy_row("dep-20261102-00000e")["finished_at"] == iso(START - timedelta(minutes=49))
    assert actions(store) == []


def test_a_report_of_the_outcome_shown_keeps_the_finish_and_a_repeat_of_it_is_a_duplicate(
    deploys: DeployService, store: Store
) -> None:
    requested_row(store, "dep-20261102-000010", "2.0.0", "succeeded", START - timedelta(minutes=30))
    commit = iso(START - timedelta(hours=2))

    first = send(deploys, "e1", "succeeded", request_id="dep-20261102-000010", commit_time=commit)
    again = send(deploys, "e2", "succeeded", request_id="dep-20261102-000010", commit_time=commit)

    row = store.deploy_row("dep-20261102-000010")
    assert first.action == "reported" and (again.action, again.duplicate_of) == ("duplicate", "dep-20261102-000010")
    assert (row["status"], row["finished_at"], row["commit_time"]) == (
        "succeeded",
        iso(START - timedelta(minutes=29)),  # opsbot's finish, not the moment the report came
        commit,
    )
    assert actions(store) == ["deploy.reported"]


def test_a_failure_then_a_rerun_that_succeeds_settles_the_request_each_time(
    deploys: DeployService, store: Store, clock: Clock
) -> None:
    requested_row(store, "dep-20261102-000011", "2.0.0", "succeeded", START - timedelta(minutes=30))

    failed = send(deploys, "e1", "failed", request_id="dep-20261102-000011")
    clock.advance(minutes=5)
    rerun = send(deploys, "e2", "succeeded", request_id="dep-20261102-000011")

    assert (failed.request.status, rerun.request.status) == ("failed", "succeeded")
    assert rerun.request.exit_code is None and rerun.request.finished_at == iso(clock.now)
    assert actions(store) == ["deploy.reported", "deploy.reported"]
    assert [r["status"] for r in store.all_deploys() if r["source"] == "ci"] == []
    figures = dora(store, "web", "staging", now=clock.now)
    assert (figures.changes, figures.failed_changes) == (1, 0)


def test_a_rollback_that_failed_in_ci_is_a_failed_rollback_not_a_failed_deploy_of_the_old_version(
    deploys: DeployService, store: Store, clock: Clock
) -> None:
    send(deploys, "e1", "succeeded", version="1.0.0", finished_at=iso(clock() - timedelta(hours=3)))
    send(deploys, "e2", "succeeded", version="1.1.0", finished_at=iso(clock() - timedelta(hours=2)))

    rollback = send(deploys, "e3", "rollback_failed", version="1.0.0", finished_at=iso(clock() - timedelta(hours=1)))

    assert rollback.request is not None
    assert (rollback.request.kind, rollback.request.status) == ("rollback", "failed")
    assert (rollback.request.version, rollback.request.from_version) == ("1.0.0", "1.1.0")
    figures = dora(store, "web", "staging", now=clock())
    assert (figures.changes, figures.failed_changes) == (2, 0)  # two deploys shipped, neither failed
