"""DORA figures on a constructed deploy and incident history."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bot.answers.indexer import index_knowledge
from bot.models import Incident
from bot.ops.deploys import DeployService
from bot.ops.metrics import Dora, Outage, dora, merged_outages
from bot.store import Store
from tests.conftest import FakeEncoder
from tests.fakes import Clock
from tests.ops.fixtures import ALICE, BOB, make_knowledge

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
_ids = iter(range(1, 100000))


@pytest.fixture
def store(tmp_path: Path) -> Store:
    store = Store(tmp_path / "metrics.db")
    yield store
    store.close()


def deploy(
    finished: datetime | None,
    *,
    service: str = "web",
    env: str = "prod",
    kind: str = "deploy",
    status: str = "succeeded",
    version: str = "1.0.0",
    commit_time: str = "",
    ran: bool = True,
) -> dict:
    """One row of deploy_requests as CI or a Slack request would leave it."""
    created = (finished or NOW) - timedelta(minutes=20)
    return {
        "id": f"dep-{next(_ids):05d}",
        "kind": kind,
        "service": service,
        "env": env,
        "version": version,
        "from_version": "",
        "requester": "github-actions",
        "status": status,
        "approvals_needed": 0,
        "created_at": created.isoformat(timespec="seconds"),
        "expires_at": "",
        "started_at": (created + timedelta(minutes=10)).isoformat(timespec="seconds") if ran else None,
        "finished_at": finished.isoformat(timespec="seconds") if finished else None,
        "channel": "",
        "message_ts": "",
        "exit_code": None,
        "log_tail": "",
        "source": "ci",
        "commit_sha": "",
        "commit_time": commit_time,
        "pipeline_url": "",
        "changes": "[]",
    }


def insert(store: Store, *rows: dict) -> None:
    with store.transaction():
        for row in rows:
            store.insert_deploy(row)


def incident(at: datetime, service: str, minutes: int | None = 30) -> Incident:
    number = next(_ids)
    return Incident(
        id=f"INC-2026-{number:04d}",
        title=f"{service} is down",
        date=at,
        severity=2,
        services=(service,),
        responders=(ALICE,),
        summary="It broke.",
        root_cause="A change.",
        resolution="Rolled back.",
        path=f"incidents/INC-2026-{number:04d}.yaml",
        duration_minutes=minutes,
    )


def ago(**delta: float) -> datetime:
    return NOW - timedelta(**delta)


# -- deployment frequency ------------------------------------------------------------------------


def test_deployment_frequency_counts_successful_prod_deploys_in_7_and_30_days(store: Store) -> None:
    insert(
        store,
        *(deploy(ago(days=d)) for d in (1, 3, 6.9, 10, 20, 29.9, 40)),
        deploy(ago(days=2), status="failed"),
        deploy(ago(days=2), status="rejected", ran=False),
        deploy(ago(days=2), status="expired", ran=False),
        deploy(None, status="running"),
        deploy(ago(days=1), env="staging"),
        deploy(ago(days=1), service="api"),
    )

    figures = dora(store, service="web", now=NOW)

    assert (figures.deploys_7d, figures.deploys_30d, figures.deploys_period) == (3, 6, 6)
    assert figures.per_week == pytest.approx(6 / (30 / 7))
    assert dora(store, now=NOW).deploys_7d == 4  # every service
    assert dora(store, env="staging", now=NOW).deploys_7d == 1
    assert dora(store, service="web", days=7, now=NOW).deploys_period == 3
    assert dora(store, service="web", days=90, now=NOW).deploys_period == 7


def test_figures_as_of_a_past_date_ignore_what_came_after(store: Store) -> None:
    insert(store, *(deploy(ago(days=d)) for d in (1, 12, 15)), deploy(ago(days=11), status="failed"))
    insert(store, deploy(ago(days=9), kind="rollback"))

    figures = dora(store, now=ago(days=10))

    assert (figures.deploys_7d, figures.deploys_30d) == (2, 2)
    assert (figures.failed_changes, figures.changes) == (1, 3)


# -- change failure rate -------------------------------------------------------------------------


def test_change_failure_rate_counts_failures_rollbacks_and_incidents_within_the_window(store: Store) -> None:
    t = ago(days=5)
    insert(
        store,
        deploy(t, service="clean"),
        deploy(t, service="failed", status="failed"),
        deploy(t, service="slow", status="timed_out"),
        deploy(t, service="rolled"),
        deploy(t + timedelta(hours=2), service="rolled", kind="rollback"),
        deploy(t, service="rolled-late"),
        deploy(t + timedelta(hours=30), service="rolled-late", kind="rollback"),
        deploy(t, service="hurt"),
        deploy(t, service="hurt-late"),
        deploy(t, service="refused"),
        deploy(t + timedelta(hours=1), service="refused", kind="rollback", status="rejected", ran=False),
        deploy(t, service="interrupted", status="interrupted"),
        deploy(ago(days=40), service="old", status="failed"),
    )
    store.replace_incidents(
        [
            incident(t + timedelta(hours=5), "hurt"),
            incident(t + timedelta(hours=30), "hurt-late"),
            incident(t - timedelta(hours=1), "clean"),  # before the deploy: not its fault
            incident(t + timedelta(hours=1), "unrelated"),
        ]
    )

    figures = dora(store, now=NOW, failure_window_hours=24)

    # changes: clean, failed, slow, rolled, rolled-late, hurt, hurt-late, refused (rollbacks and interrupted are not)
    assert figures.changes == 8
    # failed: failed, slow, rolled (rollback 2 h later), hurt (incident 5 h later)
    assert figures.failed_changes == 4
    assert figures.change_failure_rate == pytest.approx(0.5)
    assert dora(store, now=NOW, failure_window_hours=48).failed_changes == 6  # the late ones count too
    assert dora(store, service="hurt", now=NOW).failed_changes == 1
    assert dora(store, service="hurt-late", now=NOW).failed_changes == 0
    assert dora(store, service="refused", now=NOW).failed_changes == 0


def test_a_rollback_counts_against_the_deploy_it_undid_not_the_one_before(store: Store) -> None:
    t = ago(days=3)
    good = deploy(t, version="1.0.0")
    bad = deploy(t + timedelta(hours=1), version="1.1.0")
    rollback = deploy(t + timedelta(hours=2), version="1.0.0", kind="rollback")
    insert(store, good, bad, rollback)

    figures = dora(store, now=NOW)

    assert (figures.failed_changes, figures.changes) == (1, 2)


def test_a_second_rollback_counts_against_the_deploy_before_the_one_the_first_undid(store: Store) -> None:
    """As `/rollback` itself goes: the second one moves away from 1.0.0, so 1.1.0 and 1.0.0 both failed."""
    t = ago(days=3)
    insert(
        store,
        deploy(t - timedelta(days=1), version="0.9.0"),
        deploy(t, version="1.0.0"),
        deploy(t + timedelta(hours=1), version="1.1.0"),
        deploy(t + timedelta(hours=2), version="1.0.0", kind="rollback"),
        deploy(t + timedelta(hours=3), version="0.9.0", kind="rollback"),
    )

    figures = dora(store, now=NOW)

    assert (figures.failed_changes, figures.changes) == (2, 3)


def test_the_figures_read_history_from_a_failure_window_before_the_period_and_match_the_whole_of_it(
    store: Store,
) -> None:
    """Deploys long before the period are not read (a year of history cost 40 s a deploy summary), and the
    figures are those of the whole history: rollbacks across the period's start, failures, an incident."""
    t = ago(days=30)
    insert(
        store,
        deploy(ago(days=400), version="0.1.0"),
        deploy(t - timedelta(hours=5), version="0.9.0"),
        deploy(t - timedelta(hours=2), version="1.0.0"),
        deploy(t + timedelta(hours=1), version="0.9.0", kind="rollback"),
        deploy(t + timedelta(hours=2), version="1.1.0"),
        deploy(t + timedelta(hours=3), version="1.2.0", status="failed"),
        deploy(t + timedelta(hours=4), version="1.1.0", kind="rollback"),
        deploy(t + timedelta(hours=5), version="0.9.0", kind="rollback"),
        deploy(t + timedelta(days=2), version="1.3.0"),
    )
    store.replace_incidents([incident(t + timedelta(days=2, hours=1), "web", 40)])
    read: list[str] = []
    finished = store.finished_deploys

    def cut(env: str, service: str | None = None, since_day: str | None = None) -> list[dict]:
        rows = finished(env, service, since_day)
        read.extend(r["version"] for r in rows)
        return rows

    store.finished_deploys = cut  # type: ignore[method-assign]
    figures = [dora(store, now=NOW, days=days) for days in (7, 30, 31)]
    assert "0.1.0" not in read and "0.9.0" in read
    store.finished_deploys = lambda env, service=None, since_day=None: finished(env, service)  # type: ignore[method-assign]

    assert figures == [dora(store, now=NOW, days=days) for days in (7, 30, 31)]
    # 30 days: 1.1.0 undone (by the second rollback after the failed 1.2.0), 1.2.0 failed, 1.3.0 blamed for the
    # incident; 31 days: also 1.0.0, undone by the first rollback, and 0.9.0, which stood
    assert [(f.failed_changes, f.changes) for f in figures[1:]] == [(3, 3), (4, 5)]


def test_a_rollback_after_a_failed_deploy_does_not_blame_the_good_one_before(store: Store) -> None:
    t = ago(days=3)
    insert(
        store,
        deploy(t, version="1.4.2"),
        deploy(t + timedelta(hours=2), version="1.5.0", status="failed"),
        deploy(t + timedelta(hours=3), version="1.4.2", kind="rollback"),
    )

    figures = dora(store, now=NOW)

    assert (figures.failed_changes, figures.changes) == (1, 2)
    assert figures.time_to_restore_min == 60  # the rollback's success restored the service


def test_a_failed_deploy_and_its_rollback_finished_in_one_second_are_taken_in_the_order_they_ran(store: Store) -> None:
    # A pipeline's automatic rollback step, reported in whole minutes: the failed deploy and the rollback finish in
    # the same second, and the rollback (reported with its finish only) was recorded after the deploy began.
    t = ago(days=3)
    failed = deploy(t + timedelta(hours=2), version="1.5.0", status="failed")
    rollback = deploy(t + timedelta(hours=2), version="1.4.2", kind="rollback") | {
        "created_at": (t + timedelta(hours=2)).isoformat(timespec="seconds"),
        "started_at": None,
    }
    insert(store, deploy(t, version="1.4.2"), failed, rollback)

    figures = dora(store, now=NOW)

    # Before, the rollback came first: it undid the good 1.4.2, and the failure stayed an outage with no end.
    assert (figures.failed_changes, figures.changes) == (1, 2)
    assert figures.time_to_restore_min == 0
    insert(store, deploy(t + timedelta(days=1), version="1.6.0"))
    figures = dora(store, now=NOW)
    assert (figures.failed_changes, figures.changes, figures.time_to_restore_min) == (1, 3, 0)


@pytest.mark.parametrize("status", ["cancelled", "failed", "timed_out", "interrupted"])
def test_a_rollback_that_did_not_succeed_undid_nothing(store: Store, status: str) -> None:
    t = ago(days=3)
    # started_at is set at approval, so a rollback cancelled before it ran has one too
    insert(
        store,
        deploy(t, version="1.1.0"),
        deploy(t + timedelta(hours=1), version="1.0.0", kind="rollback", status=status),
    )

    figures = dora(store, now=NOW)

    assert (figures.failed_changes, figures.changes) == (0, 1)


def test_a_deploy_that_never_ran_does_not_hide_the_one_a_rollback_undid(store: Store) -> None:
    t = ago(days=3)
    insert(
        store,
        deploy(t, version="1.1.0"),
        deploy(t + timedelta(minutes=30), version="1.2.0", status="cancelled"),  # approved, stopped by a freeze
        deploy(t + timedelta(hours=1), version="1.0.0", kind="rollback"),
    )

    figures = dora(store, now=NOW)

    assert (figures.failed_changes, figures.changes) == (1, 1)  # 1.1.0 was rolled back


def test_an_interrupted_deploy_is_the_one_a_later_rollback_undid(store: Store) -> None:
    t = ago(days=3)
    insert(
        store,
        deploy(t, version="1.1.0"),
        deploy(t + timedelta(minutes=30), version="1.2.0", status="interrupted"),  # may be half rolled out
        deploy(t + timedelta(hours=1), version="1.1.0", kind="rollback"),
    )

    figures = dora(store, now=NOW)

    assert (figures.failed_changes, figures.changes) == (0, 1)


def test_change_failure_rate_is_none_without_changes(store: Store) -> None:
    figures = dora(store, now=NOW)

    assert figures.changes == 0 and figures.change_failure_rate is None


# -- time to restore and lead time ---------------------------------------------------------------


def test_time_to_restore_is_the_median_of_incidents_and_failed_to_next_success(store: Store) -> None:
    t = ago(days=4)
    insert(
        store,
        deploy(t, status="failed"),
        deploy(t + timedelta(minutes=60)),  # the next success: restored after 60 min
        deploy(t + timedelta(hours=5)),
        deploy(ago(days=1), service="api", status="timed_out"),  # never restored: no figure
    )
    store.replace_incidents(
        [
            incident(ago(days=2), "web", 30),
            incident(ago(days=3), "web", 90),
            incident(ago(days=3), "web", None),
            incident(ago(days=45), "web", 600),  # before the period
        ]
    )

    figures = dora(store, now=NOW)

    assert figures.time_to_restore_min == pytest.approx(60)  # median of 30, 60, 90
    assert dora(store, service="api", now=NOW).time_to_restore_min is None


def test_an_outage_left_going_since_before_the_reach_withholds_nothing_whatever_the_period(store: Store) -> None:
    # Before, a longer period read further back: a deploy that failed 40 days ago, with nothing succeeding after,
    # became an outage still going that withheld every later one on its service (--days 60 gave no figure, 7 gave 30).
    insert(store, deploy(ago(days=40), status="failed"), deploy(ago(days=39), status="failed"))
    store.replace_incidents([incident(ago(days=5), "web", 30)])

    assert [dora(store, days=d, now=NOW).time_to_restore_min for d in (7, 30, 60, 90)] == [30, 30, 30, 30]

    # A failure within the reach is still going, for every period: it withholds the incident it overlaps.
    insert(store, deploy(ago(days=6), status="failed"))
    assert [dora(store, days=d, now=NOW).time_to_restore_min for d in (7, 60)] == [None, None]


def test_a_failed_deploy_retried_until_it_is_rolled_back_is_one_outage(store: Store) -> None:
    t = ago(days=3)
    insert(
        store,
        deploy(t - timedelta(hours=1), version="1.0.0"),
        deploy(t, version="1.1.0", status="failed"),
        deploy(t + timedelta(minutes=10), version="1.1.0", status="failed"),  # retried twice
        deploy(t + timedelta(minutes=20), version="1.1.0", status="timed_out"),
        deploy(t + timedelta(minutes=60), version="1.0.0", kind="rollback"),
    )

    figures = dora(store, now=NOW)

    assert figures.time_to_restore_min == 60  # from the first failure, once: not the median of 60, 50 and 40


def test_a_failed_rollback_does_not_start_a_second_outage(store: Store) -> None:
    t = ago(days=2)
    insert(
        store,
        deploy(t, version="1.1.0", status="failed"),
        deploy(t + timedelta(minutes=10), version="1.0.0", kind="rollback", status="failed"),
        deploy(t + timedelta(minutes=30), version="1.0.0", kind="rollback"),
    )

    figures = dora(store, now=NOW)

    assert figures.time_to_restore_min == pytest.approx(30)  # from the failed deploy to the rollback that worked


def test_a_failed_deploy_with_an_incident_declared_about_it_is_one_outage(store: Store) -> None:
    t = ago(days=3)
    insert(
        store,
        deploy(t - timedelta(hours=2), version="1.0.0"),
        deploy(t, version="1.1.0", status="failed"),
        deploy(t + timedelta(minutes=60), version="1.0.0", kind="rollback"),  # the deploy's outage: 60 min
        deploy(t + timedelta(hours=1), service="api", status="failed"),
        deploy(t + timedelta(hours=3), service="api"),  # another service's: 120 min, on its own
    )
    # declared 10 minutes after the failure, resolved 90 minutes later: it ends 100 minutes after the failure
    store.replace_incidents([incident(t + timedelta(minutes=10), "web", 90)])

    figures = dora(store, now=NOW)

    assert figures.time_to_restore_min == pytest.approx(110)  # median of 100 (web, once) and 120 (api)
    assert dora(store, service="web", now=NOW).time_to_restore_min == pytest.approx(100)


def test_an_outage_still_going_has_no_time_to_restore_nor_has_what_overlaps_it(store: Store) -> None:
    t = ago(days=3)
    insert(store, deploy(t - timedelta(hours=2), version="1.0.0"), deploy(t, version="1.1.0", status="failed"))
    store.replace_incidents([incident(t + timedelta(minutes=10), "web", 30)])  # resolved; web still failed
    with store.transaction():  # an incident on api, declared in Slack and still open
        store.insert_live_incident(
            {
                "id": "INC-2026-9001",
                "title": "api is slow",
                "severity": 2,
                "services": '["api"]',
                "status": "open",
                "declared_by": ALICE,
                "declared_at": (t + timedelta(hours=1)).isoformat(timespec="seconds"),
                "channel": "",
                "origin_channel": "",
                "roles": "{}",
                "resolved_at": "",
                "resolution": "",
                "env": "prod",
                "root_cause": "",
            }
        )
    insert(store, deploy(t + timedelta(hours=1, minutes=10), service="api", status="failed"))
    insert(store, deploy(t + timedelta(hours=1, minutes=40), service="api"))  # restored while the incident is open

    assert dora(store, now=NOW).time_to_restore_min is None

    insert(store, deploy(t + timedelta(hours=3), version="1.0.0", kind="rollback"))  # web restored
    with store.transaction():  # and an incident on web that nobody resolved, declared 200 days ago
        store.insert_live_incident(
            {
                **store.live_incident("INC-2026-9001"),
                "id": "INC-2026-9002",
                "services": '["web"]',
                "declared_at": ago(days=200).isoformat(timespec="seconds"),
            }
        )

    assert dora(store, service="web", now=NOW).time_to_restore_min == pytest.approx(180)
    assert dora(store, service="api", now=NOW).time_to_restore_min is None


@given(
    st.lists(
        st.tuples(st.integers(0, 300), st.integers(0, 120), st.sets(st.sampled_from("abcd"), min_size=1)),
        max_size=25,
    )
)
def test_merged_outages_are_the_groups_that_overlap_on_a_shared_service(raw: list) -> None:
    spans = [Outage(NOW + timedelta(minutes=a), NOW + timedelta(minutes=a + n), frozenset(s)) for a, n, s in raw]
    # the same grouping, the slow way: join two spans while they overlap in time and share a service
    groups = [[o] for o in spans]
    joined = True
    while joined:
        joined = False
        for x in range(len(groups)):
            for y in range(x + 1, len(groups)):
                if any(
                    a.services & b.services and a.began <= b.ended and b.began <= a.ended
                    for a in groups[x]
                    for b in groups[y]
                ):
                    groups[x] += groups.pop(y)
                    joined = True
                    break
            if joined:
                break
    expected = sorted(
        (min(o.began for o in g), max(o.ended for o in g), sorted(frozenset().union(*(o.services for o in g))))
        for g in groups
    )

    got = sorted((o.began, o.ended, sorted(o.services)) for o in merged_outages(spans))

    assert got == expected


def test_lead_time_is_the_median_from_commit_to_finished_deploy(store: Store) -> None:
    insert(
        store,
        deploy(ago(days=1), commit_time=ago(days=1, hours=2).isoformat()),
        deploy(ago(days=2), commit_time=ago(days=2, hours=4).strftime("%Y-%m-%dT%H:%M:%SZ")),
        deploy(ago(days=3), commit_time=ago(days=3, hours=6).replace(tzinfo=None).isoformat()),
        deploy(ago(days=4)),  # no commit time: not counted
        deploy(ago(days=5), status="failed", commit_time=ago(days=9).isoformat()),  # failed: not counted
    )

    figures = dora(store, now=NOW)

    assert figures.lead_time_h == pytest.approx(4)
    assert "lead time 4.0 h" in figures.line()


def test_a_rollback_is_neither_a_deploy_counted_nor_a_lead_time_but_it_restores(store: Store) -> None:
    t = ago(days=3)
    insert(
        store,
        deploy(t, version="1.0.0", commit_time=(t - timedelta(hours=2)).isoformat()),
        deploy(t + timedelta(hours=1), version="1.1.0", status="failed", commit_time=t.isoformat()),
        # CI reports the rollback to 1.0.0 a day later, with 1.0.0's commit time
        deploy(t + timedelta(days=1), kind="rollback", commit_time=(t - timedelta(hours=2)).isoformat()),
    )

    figures = dora(store, now=NOW)

    assert (figures.deploys_7d, figures.deploys_30d, figures.deploys_period) == (1, 1, 1)
    assert (figures.failed_changes, figures.changes) == (1, 2)
    assert figures.lead_time_h == pytest.approx(2)  # the rollback's "commit to deploy" of 3 days is no lead time
    assert figures.time_to_restore_min == pytest.approx(23 * 60)  # the failed deploy to the rollback


def test_service_filter_keeps_other_services_out(store: Store) -> None:
    t = ago(days=2)
    insert(
        store,
        deploy(t, service="web"),
        deploy(t, service="api", status="failed"),
        deploy(t + timedelta(hours=1), service="api"),
    )
    store.replace_incidents([incident(t + timedelta(hours=2), "web", 20), incident(t, "api", 200)])

    web = dora(store, service="web", now=NOW)
    api = dora(store, service="api", now=NOW)

    assert (web.service, web.deploys_7d, web.changes, web.failed_changes) == ("web", 1, 1, 1)
    assert web.time_to_restore_min == 20
    assert (api.deploys_7d, api.changes, api.failed_changes) == (1, 2, 1)
    # the failed deploy (60 min until the next success) is part of the incident declared with it: one outage
    assert api.time_to_restore_min == pytest.approx(200)


def test_incidents_from_knowledge_files_count(tmp_path: Path, store: Store) -> None:
    root = make_knowledge(tmp_path / "knowledge")
    (root / "incidents").mkdir()
    (root / "incidents" / "INC-2026-0100.yaml").write_text(
        f"""\
id: INC-2026-0100
title: Web 500s after the release
date: {ago(days=2, hours=-3).isoformat()}
severity: 2
services: [web]
responders: [{ALICE}]
summary: Errors after the deploy.
root_cause: A bad migration.
resolution: Rolled back.
duration_minutes: 42
""",
        encoding="utf-8",
    )
    index_knowledge(store, FakeEncoder(), root)
    insert(store, deploy(ago(days=2)))

    figures = dora(store, service="web", now=NOW)

    assert (figures.failed_changes, figures.changes) == (1, 1)
    assert figures.time_to_restore_min == 42


def test_slack_deploys_count_like_ci_ones(tmp_path: Path, store: Store) -> None:
    index_knowledge(store, FakeEncoder(), make_knowledge(tmp_path / "knowledge"))
    clock = Clock(ago(days=1))
    deploys = DeployService.from_store(store, clock=clock)
    request = deploys.request("deploy", "web", "staging", "1.0.0", ALICE)
    deploys.approve(request.id, BOB)
    deploys.execute(request.id)
    insert(store, deploy(ago(days=2), env="staging"))

    figures = dora(store, env="staging", now=NOW)

    assert (figures.deploys_7d, figures.changes, figures.failed_changes) == (2, 2, 0)


# -- the one-line summary ------------------------------------------------------------------------


def test_line_reads_well() -> None:
    figures = Dora("web", "prod", 30, 3, 6, 6, 8, 2, 45.0, 26.0)

    assert figures.line() == (
        "Deploys: 3 in 7 days, 6 in 30 · change failure rate 25% (2/8) · time to restore 45 min · lead time 26.0 h"
    )


def test_line_without_data_says_n_a() -> None:
    figures = Dora(None, "prod", 30, 0, 0, 0, 0, 0, None, None)

    assert figures.line() == (
        "Deploys: 0 in 7 days, 0 in 30 · change failure rate n/a · time to restore n/a · lead time n/a"
    )


@pytest.mark.parametrize(
    "minutes, shown", [(0.4, "0 min"), (89, "89 min"), (90, "1.5 h"), (47 * 60, "47.0 h"), (3 * 1440, "3.0 d")]
)
def test_durations_use_a_readable_unit(minutes: float, shown: str) -> None:
    assert f"time to restore {shown} ·" in Dora(None, "prod", 30, 0, 0, 0, 0, 0, minutes, None).line()


def test_every_deploy_of_the_period_counts_past_a_hundred_thousand(store: Store) -> None:
    # Before, the history was read 100,000 rows at most: a longer period lost its oldest deploys without a word.
    count = 100_050
    template = deploy(NOW)
    rows = []
    for n in range(count):
        finished = NOW - timedelta(minutes=5 * n)  # about 347 days
        rows.append(
            template
            | {
                "id": f"bulk-{n:06d}",
                "created_at": (finished - timedelta(minutes=2)).isoformat(timespec="seconds"),
                "started_at": (finished - timedelta(minutes=1)).isoformat(timespec="seconds"),
                "finished_at": finished.isoformat(timespec="seconds"),
            }
        )
    names = list(template)
    with store.transaction():
        store.db.conn.executemany(
            f"INSERT INTO deploy_requests ({', '.join(names)}) VALUES ({', '.join('?' * len(names))})",
            [[r[k] for k in names] for r in rows],
        )
    figures = dora(store, days=365, now=NOW)
    assert figures.deploys_period == count and figures.changes == count
