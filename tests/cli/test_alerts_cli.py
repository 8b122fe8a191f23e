"""`opsbot alerts [--firing] [--json]`: the alert groups Alertmanager sent, as recorded."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from bot.alert_config import AlertSettings
from bot.ops.alert_payload import parse_notification
from bot.ops.alert_routing import AlertRouting
from bot.ops.alerts import AlertService
from bot.store import Store
from tests.conftest import invoke
from tests.fakes import Clock

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "alertmanager"


def received(tmp_path: Path, *names: str) -> AlertService:
    """The database the CLI opens, with the captured deliveries ``names`` received in that order, in one second."""
    store = Store(tmp_path / "opsbot.db")
    routing = AlertRouting((), frozenset({"checkout-api", "order-pipeline"}), {}, "CALERTS001")
    clock = Clock(datetime(2026, 12, 5, 16, 23, tzinfo=UTC))
    service = AlertService(store, routing, AlertSettings(), {}, clock=clock)
    for name in names:
        service.receive(parse_notification((FIXTURES / f"{name}.json").read_bytes()))
    return service


@pytest.fixture
def alerts(tmp_path: Path) -> Iterator[AlertService]:
    """The pgbouncer group fired and resolved, and the crash loop firing."""
    service = received(tmp_path, "pgbouncer-firing", "pgbouncer-resolved", "crashloop-firing")
    yield service
    service.store.close()


def test_alerts_lists_every_group_the_latest_first_or_only_the_firing_ones(alerts: AlertService) -> None:
    result = invoke("alerts")
    assert result.exit_code == 0, result.output
    crashloop, pgbouncer = result.stdout.splitlines()
    assert "FIRING 1/1  KubePodCrashLooping  order-pipeline  #CALERTS001" in crashloop
    assert "resolved after 0 min  PgBouncerPoolExhausted  checkout-api" in pgbouncer
    firing = invoke("alerts", "--firing").stdout.splitlines()
    assert len(firing) == 1 and "KubePodCrashLooping" in firing[0]


def test_groups_changed_in_one_second_are_listed_by_their_latest_change(tmp_path: Path) -> None:
    # Alertmanager sends bursts: the group changed last is listed first, though recorded first.
    received(tmp_path, "pgbouncer-firing", "crashloop-firing", "pgbouncer-resolved").store.close()
    listed = invoke("alerts").stdout.splitlines()
    assert "PgBouncerPoolExhausted" in listed[0] and "KubePodCrashLooping" in listed[1]


def test_alerts_json_holds_the_groups_with_their_alerts_and_events(alerts: AlertService) -> None:
    result = invoke("alerts", "--json")
    assert result.exit_code == 0, result.output
    groups = {g["alertname"]: g for g in json.loads(result.stdout)}
    pgbouncer = groups["PgBouncerPoolExhausted"]
    assert (pgbouncer["status"], pgbouncer["service"], pgbouncer["minutes"]) == ("resolved", "checkout-api", 0)
    assert [e["kind"] for e in pgbouncer["events"]] == ["opened", "resolved"]
    assert {a["status"] for a in pgbouncer["alerts"]} == {"resolved"} and pgbouncer["message"] is None
    assert groups["KubePodCrashLooping"]["severity"] == "warning"


def test_without_alerts_it_says_where_they_come_from(tmp_path: Path) -> None:
    Store(tmp_path / "opsbot.db").close()
    assert "No alerts received yet" in invoke("alerts").stdout
    assert "No alert groups firing." in invoke("alerts", "--firing").stdout
    assert json.loads(invoke("alerts", "--json").stdout) == []
