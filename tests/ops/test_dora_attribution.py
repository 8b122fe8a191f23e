"""Which deploy an incident counts against: the last successful one of its services in its environment."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pytest

from bot.answers.indexer import index_knowledge
from bot.ops.deploys import DeployService
from bot.ops.digest import weekly_figures
from bot.ops.incidents import IncidentService, possible_cause
from bot.ops.metrics import dora
from bot.store import Store
from tests.conftest import FakeEncoder
from tests.fakes import Clock
from tests.ops.fixtures import ALICE, make_knowledge
from tests.ops.test_metrics import NOW, ago, deploy, incident, insert


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    store = Store(tmp_path / "dora.db")
    yield store
    store.close()


def test_one_incident_after_two_successful_deploys_fails_only_the_last(store: Store) -> None:
    t = ago(days=2)
    first, second = deploy(t, version="1.0.0"), deploy(t + timedelta(hours=1), version="1.1.0")
    insert(store, first, second)
    store.replace_incidents([incident(t + timedelta(hours=3), "web")])

    figures = dora(store, now=NOW)

    assert (figures.failed_changes, figures.changes) == (1, 2)
    assert figures.change_failure_rate == pytest.approx(0.5)
    assert "change failure rate 50% (1/2)" in figures.line()


def test_a_production_incident_does_not_count_against_staging_deploys(store: Store) -> None:
    t = ago(days=2)
    insert(store, deploy(t, env="staging"), deploy(t - timedelta(hours=2), env="prod"))
    store.replace_incidents([incident(t + timedelta(hours=1), "web")])  # names no env: the default, prod

    assert (dora(store, env="staging", now=NOW).failed_changes, dora(store, env="prod", now=NOW).failed_changes) == (
        0,
        1,
    )


def test_a_staging_incident_counts_against_staging_only(store: Store) -> None:
    t = ago(days=2)
    insert(store, deploy(t, env="staging"), deploy(t, env="prod"))
    store.replace_incidents([replace(incident(t + timedelta(hours=1), "web", 15), env="staging")])

    staging, prod = dora(store, env="staging", now=NOW), dora(store, env="prod", now=NOW)

    assert (staging.failed_changes, prod.failed_changes) == (1, 0)
    assert (staging.time_to_restore_min, prod.time_to_restore_min) == (15, None)  # restored in staging


def test_an_incident_without_env_hits_the_configured_incident_environment(store: Store) -> None:
    t = ago(days=2)
    insert(store, deploy(t, env="production"))
    store.replace_incidents([incident(t + timedelta(hours=1), "web")])

    assert dora(store, env="production", now=NOW).failed_changes == 0  # default incident env is prod
    assert dora(store, env="production", now=NOW, incident_env="production").failed_changes == 1


def test_an_incident_of_two_services_counts_against_one_deploy_the_latest(store: Store) -> None:
    t = ago(days=2)
    insert(store, deploy(t, service="web"), deploy(t + timedelta(hours=1), service="api"))
    both = replace(incident(t + timedelta(hours=2), "web"), services=("web", "api"))
    store.replace_incidents([both])

    assert dora(store, now=NOW).failed_changes == 1
    assert dora(store, service="api", now=NOW).failed_changes == 1
    assert dora(store, service="web", now=NOW).failed_changes == 0


def test_a_deploy_outside_the_window_is_not_blamed_even_if_it_is_the_last(store: Store) -> None:
    t = ago(days=5)
    insert(store, deploy(t))
    store.replace_incidents([incident(t + timedelta(hours=30), "web")])

    assert dora(store, now=NOW, failure_window_hours=24).failed_changes == 0
    assert dora(store, now=NOW, failure_window_hours=48).failed_changes == 1


def test_a_failed_deploy_does_not_shield_the_running_one_and_is_counted_once(store: Store) -> None:
    t = ago(days=2)
    insert(store, deploy(t, version="1.0.0"), deploy(t + timedelta(hours=1), version="1.1.0", status="failed"))
    store.replace_incidents([incident(t + timedelta(hours=2), "web")])

    assert (dora(store, now=NOW).failed_changes, dora(store, now=NOW).changes) == (2, 2)


def test_open_incidents_count_and_cancelled_ones_never_do(store: Store) -> None:
    t = ago(days=2)
    insert(store, deploy(t, service="web"), deploy(t, service="api"))
    clock = Clock(t + timedelta(hours=1))
    incidents = IncidentService(store, {"web", "api"}, clock=clock)
    incidents.declare("web 500s", ALICE, 2, ["web"])
    mistake = incidents.declare("api looked slow", ALICE, 3, ["api"])
    incidents.cancel(mistake, ALICE, "a test alert")

    assert dora(store, service="web", now=NOW).failed_changes == 1
    assert dora(store, service="api", now=NOW).failed_changes == 0
    assert [a["action"] for a in store.audit_rows()] == ["incident.cancelled"]


def test_an_incident_file_names_its_environment(tmp_path: Path, store: Store) -> None:
    root = make_knowledge(tmp_path / "knowledge")
    (root / "incidents").mkdir()
    (root / "incidents" / "INC-2026-0100.yaml").write_text(
        f"""\
id: INC-2026-0100
title: Web 500s in staging
date: {ago(days=2, hours=-3).isoformat()}
severity: 3
services: [web]
env: staging
responders: [{ALICE}]
summary: Errors after the deploy.
root_cause: A bad migration.
resolution: Rolled back.
""",
        encoding="utf-8",
    )
    index_knowledge(store, FakeEncoder(), root)
    insert(store, deploy(ago(days=2), env="staging"), deploy(ago(days=2), env="prod"))

    assert dora(store, env="staging", now=NOW).failed_changes == 1
    assert dora(store, env="prod", now=NOW).failed_changes == 0


def test_summaries_the_digest_and_the_briefing_use_the_one_rule(tmp_path: Path, store: Store) -> None:
    index_knowledge(store, FakeEncoder(), make_knowledge(tmp_path / "knowledge"))
    t = ago(days=2)
    first, second = deploy(t, version="1.0.0"), deploy(t + timedelta(hours=1), version="1.1.0")
    insert(store, first, second)
    live = IncidentService(store, {"web"}, clock=Clock(t + timedelta(hours=3))).declare("web down", ALICE, 2, ["web"])
    deploys = DeployService.from_store(store, clock=Clock(NOW))

    summary = deploys.figures("web", "prod")
    total, each = weekly_figures(deploys, "prod")

    assert (summary.failed_changes, summary.changes) == (1, 2)
    assert (total.failed_changes, dict(each)["web"].failed_changes) == (1, 1)
    cause = possible_cause(live, store, deploys.settings.failure_window_hours)
    assert cause is not None and cause[0].id == second["id"]
