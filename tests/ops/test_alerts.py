"""Alert groups from Alertmanager: payloads captured from the real Alertmanager 0.25, routing, idempotent
recording, what changed between deliveries, who may silence, incidents declared from an alert, DORA."""

from __future__ import annotations

import copy
import json
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from bot.answers.indexer import index_knowledge
from bot.errors import InvalidRequest, PermissionDenied
from bot.ops.alert_groups import AlertGroup, Change, incident_severity
from bot.ops.alert_payload import (
    MAX_ALERTS,
    PayloadProblem,
    Unauthorized,
    group_id,
    parse_notification,
    verify_bearer,
)
from bot.ops.alert_routing import AlertRouting, NoChannel
from bot.ops.alertmanager import AlertmanagerError, alerts_url
from bot.ops.alerts import AlertService
from bot.ops.deploys import DeployService
from bot.ops.incidents import IncidentService, LiveIncident
from bot.ops.metrics import dora
from bot.ops.requests import new_row
from bot.slack import ids
from bot.slack.blocks.alerts import AlertView, action_buttons, status_line
from bot.store import Store
from tests.conftest import FakeEncoder
from tests.fakes import Clock
from tests.ops.fixtures import ALICE, CAROL, DAVE, ERIN, ROSTER

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "alertmanager"
FIRED = datetime(2026, 12, 5, 16, 22, 39, tzinfo=UTC)  # the captured payloads' alerts started at 16:22:38
SERVICES = f"""\
settings:
  alerts_channel: CALERTS001
  alertmanager_urls: ["http://127.0.0.1:19093/", "https://am.example.com"]
  alert_silencers: [data]
services:
  checkout-api:
    owners: [{ALICE}]
    channel: CCHECKOUT1
    environments:
      prod: {{approvals: 1, approvers: [web]}}
    deploy: {{command: ["true"]}}
  order-pipeline:
    owners: [{DAVE}]
    alerts: {{match: {{team: fulfilment, tier: backend}}, channel: CORDERS001}}
  search: {{owners: [{DAVE}], alerts: {{match: {{team: fulfilment}}}}}}
  ledger: {{owners: [{DAVE}]}}
"""


def payload(name: str, **changes: object) -> bytes:
    data = json.loads((FIXTURES / f"{name}.json").read_text(encoding="utf-8"))
    return json.dumps(data | changes).encode()


class Recorder:
    """An announcer that keeps what it was told, as the Slack one would show it."""

    def __init__(self) -> None:
        self.changes: list[Change] = []

    def announce(self, change: Change) -> None:
        self.changes.append(change)

    @property
    def kinds(self) -> list[str]:
        return [c.kind for c in self.changes]


@pytest.fixture
def alert_store(tmp_path: Path) -> Store:
    root = tmp_path / "knowledge"
    root.mkdir()
    (root / "services.yaml").write_text(SERVICES, encoding="utf-8")
    (root / "experts.yaml").write_text(ROSTER, encoding="utf-8")
    store = Store(tmp_path / "alerts.db")
    assert index_knowledge(store, FakeEncoder(), root).problems == []
    yield store
    store.close()


@pytest.fixture
def alert_clock() -> Clock:
    return Clock(FIRED + timedelta(seconds=5))


@pytest.fixture
def alerts(alert_store: Store, alert_clock: Clock) -> AlertService:
    deploys = DeployService.from_store(alert_store, clock=alert_clock)
    return AlertService.from_store(alert_store, deploys, set(alert_store.service_configs()), clock=alert_clock)


def receive(alerts: AlertService, name: str, announcer: Recorder | None = None, **changes: object) -> Change:
    return alerts.receive(parse_notification(payload(name, **changes)), announcer)


def fire_again(alerts: AlertService, clock: Clock, announcer: Recorder | None = None) -> Change:
    """The pgbouncer alerts firing anew: Prometheus gives a firing after a resolve a new startsAt."""
    data = json.loads(payload("pgbouncer-firing"))
    data["alerts"] = [a | {"startsAt": clock.now.isoformat()} for a in data["alerts"]]
    return alerts.receive(parse_notification(json.dumps(data).encode()), announcer)


# -- the payload ------------------------------------------------------------------------------------------------


def test_captured_payloads_parse_into_one_group_with_a_digest_per_state() -> None:
    parsed = {name: parse_notification(payload(name)) for name in (p.stem for p in FIXTURES.glob("*.json"))}
    pgbouncer = [parsed[n] for n in ("pgbouncer-firing", "pgbouncer-grown", "pgbouncer-one-resolved")]
    pgbouncer.append(parsed["pgbouncer-resolved"])
    assert len({n.group_id for n in pgbouncer}) == 1 and parsed["crashloop-firing"].group_id != pgbouncer[0].group_id
    assert len({n.digest for n in pgbouncer}) == 4
    first = parsed["pgbouncer-firing"]
    assert (first.status, first.receiver, first.external_url) == ("firing", "opsbot", "http://127.0.0.1:19093")
    assert [a.labels["instance"] for a in first.alerts] == ["pgbouncer-0", "pgbouncer-1"]
    assert first.alerts[0].ends_at is None and first.alerts[0].starts_at.tzinfo is not None
    assert parsed["pgbouncer-resolved"].alerts[0].ends_at == datetime(2026, 12, 5, 16, 22, 57, tzinfo=UTC)
    amtool = parsed["amtool-firing"]  # `amtool alert add` sends no generatorURL; the group is still checkout-api's
    assert amtool.alerts[0].generator_url == "" and amtool.group_labels["service"] == "checkout-api"
    # annotations (whose values change at every evaluation) do not make a delivery new
    changed = json.loads(payload("pgbouncer-firing"))
    changed["alerts"][0]["annotations"]["description"] = "cl_waiting is 42"
    assert parse_notification(json.dumps(changed).encode()).digest == first.digest


@pytest.mark.parametrize(
    ("body", "field", "says"),
    [
        (b"\xff\xfe", "body", "UTF-8"),
        (b'{"version": "4",', "body", "not JSON"),
        (b"[]", "body", "JSON object"),
        (payload("pgbouncer-firing", version="3"), "version", '"4"'),
        (payload("pgbouncer-firing", status="burning"), "status", "firing or resolved"),
        (payload("pgbouncer-firing", groupKey=""), "groupKey", "missing or empty"),
        (payload("pgbouncer-firing", alerts=[]), "alerts", "non-empty"),
        (payload("pgbouncer-firing", commonLabels={"team": 7}), "commonLabels.team", "string"),
        (payload("pgbouncer-firing", truncatedAlerts=-1), "truncatedAlerts", "from 0 to"),
        (payload("pgbouncer-firing", truncatedAlerts=2**70), "truncatedAlerts", "from 0 to"),  # SQLite's limit
        (payload("pgbouncer-firing", groupKey='{}:{alertname="\ud800"}'), "groupKey", "surrogate"),
        (payload("pgbouncer-firing", commonAnnotations={"summary": "x\udfff"}), "commonAnnotations.summary", "\\udfff"),
        (payload("pgbouncer-firing", groupLabels={"\ud800": "x"}), "groupLabels", "the name '\\ud800'"),
        (payload("pgbouncer-firing", receiver="\ud800"), "receiver", "surrogate"),
        (payload("pgbouncer-firing", externalURL=["x"]), "externalURL", "string"),
    ],
)
def test_malformed_payloads_name_the_field_that_is_wrong(body: bytes, field: str, says: str) -> None:
    with pytest.raises(PayloadProblem) as caught:
        parse_notification(body)
    assert caught.value.field == field and says in str(caught.value)


@pytest.mark.parametrize(
    ("change", "field", "says"),
    [
        ({"fingerprint": "../../etc"}, "alerts[0].fingerprint", "hex"),
        ({"startsAt": "yesterday"}, "alerts[0].startsAt", "RFC 3339"),
        ({"startsAt": "2026-12-05T16:22:38"}, "alerts[0].startsAt", "UTC offset"),
        ({"labels": {}}, "alerts[0].labels", "alertname"),
        ({"status": None}, "alerts[0].status", "firing or resolved"),
        ({"annotations": {"summary": "x" * 9000}}, "alerts[0].annotations.summary", "at most"),
        ({"endsAt": "9999-12-31T23:59:59-05:00"}, "alerts[0].endsAt", "out of range"),  # the year 10000 in UTC
        ({"startsAt": "9999-12-31T23:59:59-00:01"}, "alerts[0].startsAt", "out of range"),
        ({"labels": {"alertname": "X", "instance": "pg-\ud800"}}, "alerts[0].labels.instance", "surrogate"),
        ({"generatorURL": "http://\udc80"}, "alerts[0].generatorURL", "surrogate"),
    ],
)
def test_a_malformed_alert_is_named_by_its_place(change: dict, field: str, says: str) -> None:
    data = json.loads(payload("pgbouncer-firing"))
    data["alerts"][0] |= change
    with pytest.raises(PayloadProblem) as caught:
        parse_notification(json.dumps(data).encode())
    assert caught.value.field == field and says in str(caught.value)


def storm(size: int, **changes: object) -> bytes:
    """The firing pgbouncer payload with ``size`` alerts, one per instance."""
    data = json.loads(payload("pgbouncer-firing", **changes))
    template = data["alerts"][0]
    data["alerts"] = [
        template | {"fingerprint": f"{n:016x}", "labels": template["labels"] | {"instance": f"pgbouncer-{n}"}}
        for n in range(size)
    ]
    return json.dumps(data).encode()


def test_a_group_of_more_alerts_than_opsbot_keeps_is_read_with_the_rest_counted_as_truncated() -> None:
    # Before, it was refused with 400, which Alertmanager never retries: the largest outage never reached Slack.
    cut = parse_notification(storm(MAX_ALERTS + 250))
    assert len(cut.alerts) == MAX_ALERTS and cut.truncated == 250
    assert cut.alerts[-1].labels["instance"] == f"pgbouncer-{MAX_ALERTS - 1}"  # the first ones, as Alertmanager cuts
    assert parse_notification(storm(MAX_ALERTS + 1, truncatedAlerts=40)).truncated == 41
    assert parse_notification(storm(MAX_ALERTS)).truncated == 0


def test_the_same_fingerprint_twice_is_refused() -> None:
    data = json.loads(payload("pgbouncer-firing"))
    data["alerts"][1]["fingerprint"] = data["alerts"][0]["fingerprint"]
    with pytest.raises(PayloadProblem, match="appears twice"):
        parse_notification(json.dumps(data).encode())


@pytest.mark.parametrize(
    ("header", "says"),
    [
        (None, "no Authorization header"),
        ("", "no Authorization header"),
        ("Basic dXNlcjpwYXNz", "Bearer <token>"),
        ("Bearer ", "Bearer <token>"),
        ("Bearer not-the-token-at-all", "wrong token"),
        ("Bearer the-token-0123456789-and-more", "wrong token"),
    ],
)
def test_only_the_configured_bearer_token_passes(header: str | None, says: str) -> None:
    with pytest.raises(Unauthorized, match=says):
        verify_bearer("the-token-0123456789", header)
    verify_bearer("the-token-0123456789", "Bearer the-token-0123456789")
    verify_bearer("the-token-0123456789", "bearer  the-token-0123456789 ")


ODD_VALUES = (
    None,
    True,
    -1,
    2**70,
    1.5,
    [],
    {},
    "",
    "\ud800",
    "\x00",
    "a" * 9000,
    {"\udc80": "x"},
    {"instance": "\ud800"},
    "9999-12-31T23:59:59-05:00",
    "9999-12-31T23:59:59Z",
    "0001-01-01T00:00:00-05:00",
    "0002-01-01T00:00:00+14:00",
)


def test_seeded_mutations_of_real_payloads_are_refused_by_field_or_recorded(
    alerts: AlertService, alert_store: Store, alert_clock: Clock
) -> None:
    """Whatever an authenticated sender posts is either refused with a PayloadProblem, storing nothing, or
    recorded and usable (briefing inputs, declaring an incident): never another exception (an HTTP 500)."""
    rng = random.Random(20261205)
    bases = [json.loads(p.read_text(encoding="utf-8")) for p in sorted(FIXTURES.glob("*.json"))]
    incidents = IncidentService(alert_store, set(alert_store.service_configs()), clock=alert_clock)
    refused = recorded = 0
    for n in range(600):
        data = copy.deepcopy(rng.choice(bases))
        for _ in range(rng.randint(1, 3)):
            parent, key = rng.choice(list(_places(data)))
            parent[key] = rng.choice(ODD_VALUES)
        body = json.dumps(data).encode()
        before = alert_store.alert_groups()
        try:
            notification = parse_notification(body)
        except PayloadProblem as exc:
            assert exc.field and str(exc).startswith(exc.field), exc
            assert alert_store.alert_groups() == before
            refused += 1
            continue
        alert_clock.advance(minutes=rng.choice([0, 1, 90]))
        group = alerts.receive(notification).group
        alerts.possible_cause(group, 24)
        alerts.recent_deploys(group, 24)
        assert group.title and (group.minutes is None or group.minutes >= 0), (n, body[:300])
        if n % 5 == 0:
            alerts.declare_incident(group.id, CAROL, incidents, None)
        recorded += 1
    assert refused > 100 and recorded > 40, (refused, recorded)  # both sides were exercised


def _places(data: object) -> list[tuple[dict | list, str | int]]:
    """Every (container, key) of a JSON value."""
    found: list[tuple[dict | list, str | int]] = []
    stack = [data]
    while stack:
        item = stack.pop()
        keys = list(item) if isinstance(item, dict) else range(len(item)) if isinstance(item, list) else []
        for key in keys:
            found.append((item, key))
            stack.append(item[key])
    return found


# -- routing ------------------------------------------------------------------------------------------------


def test_routing_by_label_then_match_then_channel(alerts: AlertService) -> None:
    def routed(**labels: str) -> tuple[str, str]:
        data = json.loads(payload("crashloop-firing"))
        data["groupLabels"] = {"alertname": "X"}
        data["commonLabels"] = {"alertname": "X", **labels}
        data["alerts"][0]["labels"] = {"alertname": "X", **labels}
        route = alerts.routing.route(parse_notification(json.dumps(data).encode()))
        return route.service, route.channel

    assert routed(service="checkout-api") == ("checkout-api", "CCHECKOUT1")  # the service's channel
    assert routed(app="ledger") == ("ledger", "CALERTS001")  # no channel of its own: settings.alerts_channel
    assert routed(job="checkout-api", namespace="ledger") == ("checkout-api", "CCHECKOUT1")  # job before namespace
    assert routed(team="fulfilment", tier="backend") == ("order-pipeline", "CORDERS001")  # the most specific match
    assert routed(team="fulfilment") == ("search", "CALERTS001")
    assert routed(team="fulfilment", service="ledger") == ("search", "CALERTS001")  # a match wins over labels
    assert routed(service="unknown-thing") == ("", "CALERTS001")


def test_without_any_channel_nothing_is_stored(alerts: AlertService, alert_store: Store) -> None:
    bare = AlertService(alert_store, AlertRouting((), frozenset(), {}, ""), alerts.settings, {})
    with pytest.raises(NoChannel, match="settings.alerts_channel"):
        receive(bare, "crashloop-firing")
    assert alert_store.alert_groups() == []


# -- recording --------------------------------------------------------------------------------------------------


def test_a_group_is_opened_once_and_a_redelivery_changes_nothing(alerts: AlertService, alert_store: Store) -> None:
    shown = Recorder()
    first = receive(alerts, "pgbouncer-firing", shown)
    again = receive(alerts, "pgbouncer-firing", shown)

    assert (first.kind, again.kind) == ("opened", "unchanged")
    assert shown.kinds == ["opened"]  # a redelivery shows nothing
    group = alerts.get(first.group.id)
    assert (group.status, group.service, group.channel, group.episode) == ("firing", "checkout-api", "CCHECKOUT1", 1)
    assert (group.alertname, group.severity, group.summary) == (
        "PgBouncerPoolExhausted",
        "critical",
        "PgBouncer pool exhausted on pg-main",
    )
    assert group.runbook_url == "https://wiki.larder.io/runbooks/postgres/connection-pool-exhausted"
    assert group.started_at == "2026-12-05T16:22:38+00:00" and len(group.firing) == 2
    assert [e["kind"] for e in group.events] == ["opened"]
    assert group.message_key == f"alert:{group.id}:1"


def test_changes_between_deliveries_are_described_and_resolution_has_its_duration(
    alerts: AlertService, alert_clock: Clock
) -> None:
    shown = Recorder()
    receive(alerts, "pgbouncer-firing", shown)
    grown = receive(alerts, "pgbouncer-grown", shown)
    shrunk = receive(alerts, "pgbouncer-one-resolved", shown)
    alert_clock.advance(seconds=20)
    resolved = receive(alerts, "pgbouncer-resolved", shown)
    receive(alerts, "pgbouncer-resolved", shown)  # redelivered

    assert shown.kinds == ["opened", "changed", "changed", "resolved"]
    assert grown.note == "1 started firing: instance=pgbouncer-2; now 3 firing"
    assert shrunk.note == "1 resolved: instance=pgbouncer-0; now 2 firing"
    assert resolved.note == "2 resolved: instance=pgbouncer-1, instance=pgbouncer-2; All resolved"
    group = resolved.group
    assert group.status == "resolved" and group.resolved_at == "2026-12-05T16:22:57+00:00"
    assert group.minutes == 0 and all(not a.firing for a in group.alerts) and len(group.alerts) == 3
    assert [e["kind"] for e in group.events] == ["opened", "changed", "changed", "resolved"]


def test_an_alert_alertmanager_stops_sending_has_ended(alerts: AlertService) -> None:
    receive(alerts, "pgbouncer-grown")
    data = json.loads(payload("pgbouncer-grown"))
    data["alerts"] = data["alerts"][1:]  # pgbouncer-0 resolved and was flushed from the group
    change = alerts.receive(parse_notification(json.dumps(data).encode()))
    assert change.kind == "changed" and change.note == "1 resolved: instance=pgbouncer-0; now 2 firing"
    assert [a.status for a in change.group.shown_alerts] == ["firing", "firing", "resolved"]


def test_two_alertmanagers_sending_the_same_group_key_are_two_groups(alerts: AlertService, alert_store: Store) -> None:
    # Two clusters whose Alertmanagers share a configuration send the same groupKey. Before, they were one group:
    # each delivery of one cluster resolved the other's alerts, which it does not hold.
    eu = receive(alerts, "pgbouncer-grown")
    data = json.loads(payload("pgbouncer-firing"))
    data["externalURL"] = "https://alertmanager.us-east.example.com"
    data["alerts"] = data["alerts"][:1]
    us = alerts.receive(parse_notification(json.dumps(data).encode()))
    assert us.kind == "opened" and us.group.id != eu.group.id
    assert len(alerts.get(eu.group.id).firing) == 3 and len(us.group.firing) == 1
    # A replica of the same Alertmanager (its external URL spelled with another case and a slash) is the same group.
    data["externalURL"] = "HTTPS://Alertmanager.us-east.example.com/"
    again = alerts.receive(parse_notification(json.dumps(data).encode()))
    assert again.kind == "unchanged" and again.group.id == us.group.id


def test_a_group_recorded_under_its_group_key_alone_keeps_its_id(alerts: AlertService, alert_store: Store) -> None:
    first = receive(alerts, "pgbouncer-firing")
    legacy = group_id(first.group.group_key)
    with alert_store.transaction():  # as an earlier opsbot recorded it (and its buttons carry)
        for table, column in (("alert_groups", "id"), ("alert_instances", "group_id"), ("alert_events", "group_id")):
            alert_store.db.execute(f"UPDATE {table} SET {column} = ? WHERE {column} = ?", [legacy, first.group.id])
    grown = receive(alerts, "pgbouncer-grown")
    assert grown.kind == "changed" and grown.group.id == legacy and len(grown.group.firing) == 3


def test_an_alert_already_shown_resolved_and_then_left_out_changes_nothing(alerts: AlertService) -> None:
    shown = Recorder()
    receive(alerts, "pgbouncer-firing", shown)
    receive(alerts, "pgbouncer-one-resolved", shown)
    data = json.loads(payload("pgbouncer-one-resolved"))
    data["alerts"] = [a for a in data["alerts"] if a["status"] == "firing"]  # Alertmanager flushed the resolved one
    flushed = [alerts.receive(parse_notification(json.dumps(data).encode()), shown) for _ in range(2)]

    assert [c.kind for c in flushed] == ["unchanged", "unchanged"] and shown.kinds == ["opened", "changed"]
    group = flushed[-1].group
    assert [a.status for a in group.shown_alerts] == ["firing", "firing", "resolved"]  # as the message shows it
    assert [e["kind"] for e in group.events] == ["opened", "changed"]
    data["alerts"][0]["status"] = "resolved"  # a real change after it is still told
    assert alerts.receive(parse_notification(json.dumps(data).encode()), shown).kind == "changed"


def test_firing_again_soon_keeps_the_message_and_later_opens_a_new_one(
    alerts: AlertService, alert_clock: Clock
) -> None:
    shown = Recorder()
    receive(alerts, "pgbouncer-firing", shown)
    receive(alerts, "pgbouncer-resolved", shown)
    alert_clock.advance(minutes=30)
    soon = fire_again(alerts, alert_clock, shown)
    assert (soon.kind, soon.group.episode) == ("refired", 1) and soon.note.startswith("Firing again")

    receive(alerts, "pgbouncer-resolved", shown)
    alert_clock.advance(hours=3)
    later = fire_again(alerts, alert_clock, shown)
    assert (later.kind, later.group.episode, later.group.briefing) == ("opened", 2, "")
    assert later.group.message_key.endswith(":2") and shown.kinds == [
        "opened",
        "resolved",
        "refired",
        "resolved",
        "opened",
    ]


def test_a_firing_whose_resolve_never_reached_opsbot_is_a_new_firing_all_the_same(
    alerts: AlertService, alert_clock: Clock
) -> None:
    # Before, the same fingerprints firing again (send_resolved: false, or opsbot down when the resolve was sent)
    # matched the stored state: nothing was posted, and the group kept its first start.
    shown = Recorder()
    first = receive(alerts, "pgbouncer-firing", shown).group
    assert receive(alerts, "pgbouncer-firing", shown).kind == "unchanged"  # a plain repeat stays quiet
    alert_clock.advance(hours=6)

    later = fire_again(alerts, alert_clock, shown)

    assert (later.kind, later.group.episode) == ("opened", 2) and later.group.started_at > first.started_at
    alert_clock.advance(minutes=20)
    soon = fire_again(alerts, alert_clock, shown)
    assert (soon.kind, soon.group.episode) == ("refired", 2)
    assert soon.note.startswith("Firing again (its resolve never reached opsbot)")
    assert soon.group.started_at > later.group.started_at
    assert shown.kinds == ["opened", "opened", "refired"]


def test_alerts_left_out_of_a_list_alertmanager_cut_short_are_not_taken_for_resolved(
    alerts: AlertService, alert_clock: Clock
) -> None:
    # With max_alerts, Alertmanager sends the first alerts in label order and counts the rest in truncatedAlerts:
    # a new alert that sorts first pushes a firing one out of the list. Before, opsbot said it resolved.
    shown = Recorder()
    receive(alerts, "pgbouncer-firing", shown)
    alert_clock.advance(minutes=5)
    data = json.loads(payload("pgbouncer-firing"))
    new = copy.deepcopy(data["alerts"][0])
    new["labels"]["instance"], new["fingerprint"] = "pgbouncer-00", "aaaa000000000001"
    data["alerts"], data["truncatedAlerts"] = [new, data["alerts"][0]], 1

    change = alerts.receive(parse_notification(json.dumps(data).encode()), shown)

    assert change.kind == "changed" and "resolved" not in change.note and "1 started firing" in change.note
    assert len(change.group.firing) == 3
    data["alerts"] = data["alerts"][1:]  # the next cut leaves out the new one instead: nothing said
    assert alerts.receive(parse_notification(json.dumps(data).encode()), shown).kind == "unchanged"
    assert len(alerts.get(change.group.id).firing) == 3


def test_a_change_in_how_many_alerts_alertmanager_left_out_is_a_change(
    alerts: AlertService, alert_store: Store
) -> None:
    # Before, truncatedAlerts was not part of what makes a delivery new: a storm growing past max_alerts (or
    # shrinking back) changed nothing, and the message kept its count.
    shown = Recorder()
    receive(alerts, "pgbouncer-firing", shown)
    grown = receive(alerts, "pgbouncer-firing", shown, truncatedAlerts=8)
    assert grown.kind == "changed" and grown.group.truncated == 8
    assert grown.note == "8 more alert(s) not sent (max_alerts); now 2 firing"
    assert "8 more alert(s) not sent" in status_line(grown.group, AlertView())
    assert receive(alerts, "pgbouncer-firing", shown, truncatedAlerts=8).kind == "unchanged"
    with alert_store.transaction():  # as stored before the count was part of the digest: a repeat stays quiet
        alert_store.update_alert_group(grown.group.id, digest=parse_notification(payload("pgbouncer-firing")).digest)
    assert receive(alerts, "pgbouncer-firing", shown, truncatedAlerts=8).kind == "unchanged"
    assert receive(alerts, "pgbouncer-firing", shown, truncatedAlerts=12).note.startswith("12 more alert(s) not sent")

    back = receive(alerts, "pgbouncer-firing", shown)
    assert back.kind == "changed" and back.group.truncated == 0
    assert back.note == "every alert sent again (before, 12 were left out); now 2 firing"
    assert "not sent" not in status_line(back.group, AlertView())
    assert shown.kinds == ["opened", "changed", "changed", "changed"]


def test_a_late_copy_of_the_firing_after_its_resolve_is_not_a_new_firing(
    alerts: AlertService, alert_clock: Clock
) -> None:
    shown = Recorder()
    receive(alerts, "pgbouncer-firing", shown)
    resolved = receive(alerts, "pgbouncer-resolved", shown).group
    alert_clock.advance(seconds=10)

    late = receive(alerts, "pgbouncer-firing", shown)  # the other Alertmanager replica's older notification

    assert late.kind == "unchanged" and late.group.status == "resolved"
    assert late.group.resolved_at == resolved.resolved_at and shown.kinds == ["opened", "resolved"]
    assert fire_again(alerts, alert_clock, shown).kind == "refired"  # a firing that started since is one


def test_the_same_alerts_firing_again_minutes_after_their_resolve_are_a_real_firing(
    alerts: AlertService, alert_clock: Clock
) -> None:
    """Prometheus keeps an alert's startsAt across its own restart, and an alert it could not send for a while was
    resolved by its endsAt while it kept firing: the same fingerprints and startsAt minutes later are no late copy."""
    shown = Recorder()
    receive(alerts, "pgbouncer-firing", shown)
    receive(alerts, "pgbouncer-resolved", shown)
    alert_clock.advance(minutes=5)

    again = receive(alerts, "pgbouncer-firing", shown)

    assert again.kind == "refired" and again.group.status == "firing"
    assert shown.kinds == ["opened", "resolved", "refired"]


def test_the_minute_of_a_late_copy_runs_from_when_the_resolve_arrived_not_from_the_alerts_end(
    alerts: AlertService, alert_clock: Clock
) -> None:
    """Alertmanager sends a resolve at the group's next flush, up to group_interval (5 min by default) after the
    alerts' endsAt: the other replica's firing a peer_timeout after that resolve arrived is still a late copy."""
    shown = Recorder()
    receive(alerts, "pgbouncer-firing", shown)
    ended = datetime(2026, 12, 5, 16, 22, 57, tzinfo=UTC)  # the captured resolve's endsAt
    alert_clock.set(ended + timedelta(minutes=3))
    resolved = receive(alerts, "pgbouncer-resolved", shown).group
    assert (resolved.resolved_at, resolved.resolve_received_at) == (ended.isoformat(), alert_clock.now.isoformat())
    alert_clock.advance(seconds=15)

    late = receive(alerts, "pgbouncer-firing", shown)  # before, 3 min 15 s after endsAt: taken for a new firing

    assert (late.kind, late.group.status) == ("unchanged", "resolved") and shown.kinds == ["opened", "resolved"]
    alert_clock.advance(minutes=5)
    assert receive(alerts, "pgbouncer-firing", shown).kind == "refired"  # minutes later, a real firing


def test_a_briefing_is_kept_once_and_only_for_its_episode(alerts: AlertService) -> None:
    group = receive(alerts, "pgbouncer-firing").group
    shown = Recorder()
    assert alerts.set_briefing(group.id, 2, "[]", shown) is False  # built for another episode
    assert alerts.set_briefing(group.id, 1, '[{"type": "divider"}]', shown) is True
    assert alerts.set_briefing(group.id, 1, "[]", shown) is False  # built twice: the first one stays
    assert shown.kinds == ["briefed"] and alerts.get(group.id).briefing == '[{"type": "divider"}]'
    assert alerts.unbriefed() == []


# -- silences ---------------------------------------------------------------------------------------------------


def test_silences_are_allowed_to_approvers_and_silencers_at_a_configured_alertmanager(alerts: AlertService) -> None:
    checkout = receive(alerts, "pgbouncer-firing").group  # from http://127.0.0.1:19093
    plan = alerts.plan_silence(checkout.id, ALICE)  # web team: approves checkout-api deploys
    assert plan.url == "http://127.0.0.1:19093"  # the configured URL, not the payload's string
    assert plan.matchers == (("alertname", "PgBouncerPoolExhausted"), ("service", "checkout-api"))
    assert plan.ends_at - plan.starts_at == timedelta(hours=1)
    assert plan.created_by == f"Alice Archer ({ALICE})" and "PgBouncerPoolExhausted" in plan.comment
    assert alerts.plan_silence(checkout.id, DAVE).url  # data team: settings.alert_silencers
    with pytest.raises(PermissionDenied, match=r"only checkout-api's approvers or data \(settings.alert_silencers\)"):
        alerts.plan_silence(checkout.id, CAROL)


def by_alertname(alerts: AlertService, services: tuple[str | None, ...]) -> AlertGroup:
    """A group as Alertmanager makes it with `group_by: [alertname]`: one alert per service (None: an alert with
    no service label), routed by the first."""
    data = json.loads(payload("pgbouncer-firing"))
    data["groupKey"] = '{}:{alertname="HighErrorRate"}'
    data["groupLabels"] = {"alertname": "HighErrorRate"}
    data["commonLabels"] = {"alertname": "HighErrorRate", "severity": "critical"}
    labels = [{"alertname": "HighErrorRate", "severity": "critical"} | ({"service": s} if s else {}) for s in services]
    data["alerts"] = [a | {"labels": ls} for a, ls in zip(data["alerts"], labels, strict=False)]
    return alerts.receive(parse_notification(json.dumps(data).encode())).group


def test_a_silence_is_scoped_to_the_service_that_routed_the_group(alerts: AlertService) -> None:
    group = by_alertname(alerts, ("checkout-api", "checkout-api"))
    assert group.service == "checkout-api" and "service" not in group.group_labels | group.common_labels
    plan = alerts.plan_silence(group.id, ALICE)  # without service=, it would silence every HighErrorRate
    assert plan.matchers == (("alertname", "HighErrorRate"), ("service", "checkout-api"))


def test_a_group_holding_alerts_of_a_service_the_clicker_may_not_silence_is_refused(alerts: AlertService) -> None:
    mixed = by_alertname(alerts, ("checkout-api", "ledger"))
    assert mixed.service == "checkout-api"
    with pytest.raises(PermissionDenied) as refused:
        alerts.plan_silence(mixed.id, ALICE)  # approves checkout-api deploys, not ledger's
    assert "holds alerts of ledger too" in str(refused.value) and "group_by: [alertname, service]" in str(refused.value)
    # data (settings.alert_silencers) may silence both, but no silence covers this group alone: by alertname it
    # would reach every service's HighErrorRate, with service=checkout-api it would leave ledger's notifying.
    with pytest.raises(InvalidRequest, match=r"1 alert\(s\) of this group lack the labels that tie it to checkout-api"):
        alerts.plan_silence(mixed.id, DAVE)


def test_an_alert_of_another_service_that_resolved_no_longer_stops_a_silence(
    alerts: AlertService, alert_clock: Clock
) -> None:
    # Before, every alert the group ever held counted: ledger's resolved alert refused Silence for the whole firing.
    mixed = by_alertname(alerts, ("checkout-api", "ledger"))
    alert_clock.advance(minutes=5)
    data = json.loads(payload("pgbouncer-firing"))
    data["groupKey"], data["groupLabels"] = mixed.group_key, {"alertname": "HighErrorRate"}
    labels = {"alertname": "HighErrorRate", "severity": "critical", "service": "checkout-api"}
    data["commonLabels"], data["alerts"] = labels, [data["alerts"][0] | {"labels": labels}]  # ledger's was flushed
    group = alerts.receive(parse_notification(json.dumps(data).encode())).group
    assert [(a.labels["service"], a.status) for a in group.shown_alerts] == [
        ("checkout-api", "firing"),
        ("ledger", "resolved"),
    ]
    plan = alerts.plan_silence(group.id, ALICE)  # approves checkout-api deploys, not ledger's
    assert plan.matchers == (("alertname", "HighErrorRate"), ("service", "checkout-api"))


def test_a_group_with_an_alert_no_label_ties_to_its_service_is_not_silenced_in_part(alerts: AlertService) -> None:
    """One alert routed the group to checkout-api; another of the same name carries no service label. A silence
    with service=checkout-api would leave that one notifying while Slack shows the group silenced."""
    group = by_alertname(alerts, ("checkout-api", None))
    with pytest.raises(InvalidRequest, match="silence it in Alertmanager, or label those alerts with their service"):
        alerts.plan_silence(group.id, ALICE)


def test_someone_who_leaves_while_opsbot_runs_may_no_longer_silence(tmp_path: Path, alert_clock: Clock) -> None:
    root = tmp_path / "knowledge"
    root.mkdir()
    (root / "services.yaml").write_text(SERVICES, encoding="utf-8")
    roster = ROSTER.replace("Erin Ekberg, team: data}", "Erin Ekberg, team: data, left: 2026-12-06}")
    assert roster != ROSTER
    (root / "experts.yaml").write_text(roster, encoding="utf-8")
    store = Store(tmp_path / "left.db")
    assert index_knowledge(store, FakeEncoder(), root).problems == []
    deploys = DeployService.from_store(store, clock=alert_clock)
    alerts = AlertService.from_store(store, deploys, set(store.service_configs()), clock=alert_clock)
    group = receive(alerts, "pgbouncer-firing").group
    assert alerts.plan_silence(group.id, ERIN).matchers  # team data: settings.alert_silencers
    alert_clock.advance(days=2)  # her `left:` date passes; the same AlertService is still in use
    with pytest.raises(PermissionDenied, match="only checkout-api's approvers or data"):
        alerts.plan_silence(group.id, ERIN)
    store.close()


def unknown_service(alerts: AlertService) -> str:
    """The id of a group whose labels name no service (routed to settings.alerts_channel)."""
    data = json.loads(payload("crashloop-firing"))
    labels = {"alertname": "DiskFull", "service": "unknown-thing"}
    data |= {"groupLabels": {"alertname": "DiskFull"}, "commonLabels": labels}
    data["alerts"][0]["labels"] = labels
    group = alerts.receive(parse_notification(json.dumps(data).encode())).group
    assert group.service == ""
    return group.id


def test_who_may_silence_an_alert_of_no_service_is_said_plainly(
    alerts: AlertService, tmp_path: Path, alert_clock: Clock
) -> None:
    with pytest.raises(PermissionDenied) as refused:
        alerts.plan_silence(unknown_service(alerts), CAROL)
    assert str(refused.value) == "only data (settings.alert_silencers) may silence alerts of no known service."
    assert alerts.plan_silence(unknown_service(alerts), DAVE).matchers  # data may

    root = tmp_path / "without-silencers"
    root.mkdir()
    (root / "services.yaml").write_text(SERVICES.replace("  alert_silencers: [data]\n", ""), encoding="utf-8")
    (root / "experts.yaml").write_text(ROSTER, encoding="utf-8")
    store = Store(tmp_path / "without.db")
    assert index_knowledge(store, FakeEncoder(), root).problems == []
    deploys = DeployService.from_store(store, clock=alert_clock)
    bare = AlertService.from_store(store, deploys, set(store.service_configs()), clock=alert_clock)
    with pytest.raises(PermissionDenied) as nobody:
        bare.plan_silence(unknown_service(bare), DAVE)
    assert str(nobody.value) == (
        "nobody may silence alerts of no known service from Slack: "
        "add a team to settings.alert_silencers in services.yaml."
    )
    store.close()


@pytest.mark.parametrize(
    ("external_url", "allowed"),
    [
        ("http://127.0.0.1:19093", True),
        ("HTTP://127.0.0.1:19093/", True),
        ("https://am.example.com:443", True),
        ("http://127.0.0.1:19094", False),
        ("http://169.254.169.254/latest/meta-data", False),
        ("http://user:pw@127.0.0.1:19093", False),
        ("file:///etc/passwd", False),
        ("", False),
    ],
)
def test_only_a_configured_alertmanager_is_ever_called(alerts: AlertService, external_url: str, allowed: bool) -> None:
    group = receive(alerts, "pgbouncer-firing", externalURL=external_url).group
    assert alerts.can_silence_here(group) is allowed
    if not allowed:
        with pytest.raises(InvalidRequest, match="settings.alertmanager_urls"):
            alerts.plan_silence(group.id, ALICE)


def test_recording_a_silence_shows_it(alerts: AlertService, alert_clock: Clock) -> None:
    group = receive(alerts, "pgbouncer-firing").group
    shown = Recorder()
    until = alert_clock.now + timedelta(hours=1)
    silenced = alerts.record_silence(group.id, ALICE, "ea7eb532", until, shown)
    assert (silenced.silence_id, silenced.silenced_by) == ("ea7eb532", ALICE)
    assert shown.kinds == ["silenced"] and "Silenced for 1 h by Alice Archer" in shown.changes[0].note


def test_a_silence_is_claimed_once_and_a_failed_one_may_be_retried(alerts: AlertService, alert_clock: Clock) -> None:
    group = receive(alerts, "pgbouncer-firing").group
    until = alert_clock.now + timedelta(hours=1)
    alerts.claim_silence(group.id, ALICE, until)
    with pytest.raises(InvalidRequest, match=r"already silenced until 17:22 UTC \(by Alice Archer\)"):
        alerts.claim_silence(group.id, DAVE, until)  # a second click, before Alertmanager has answered the first
    alerts.release_silence(group.id, ALICE, until)  # Alertmanager refused: the button works again
    alerts.claim_silence(group.id, DAVE, until)
    alerts.record_silence(group.id, DAVE, "ea7eb532", until, None)
    with pytest.raises(InvalidRequest, match="already silenced until 17:22 UTC"):
        alerts.claim_silence(group.id, ALICE, until)
    alert_clock.advance(hours=1, seconds=1)  # the silence has ended
    alerts.claim_silence(group.id, ALICE, alert_clock.now + timedelta(hours=1))


class AskedAlertmanager:
    """Stands in for Alertmanager's GET /api/v2/alerts: answers how many alerts fire, or fails, and keeps each call."""

    def __init__(self, firing: int | Exception) -> None:
        self.firing = firing
        self.calls: list[tuple[str, tuple[tuple[str, str], ...]]] = []

    def __call__(self, url: str, matchers: tuple[tuple[str, str], ...]) -> int:
        self.calls.append((url, matchers))
        if isinstance(self.firing, Exception):
            raise self.firing
        return self.firing


def silenced(alerts: AlertService, clock: Clock) -> AlertGroup:
    """The pgbouncer group silenced from Slack for the hour."""
    group = receive(alerts, "pgbouncer-firing", externalURL="http://127.0.0.1:19093").group
    return alerts.record_silence(group.id, ALICE, "ea7eb532", clock.now + timedelta(hours=1), None)


def test_a_group_that_resolved_during_its_silence_is_resolved_at_the_silence_s_end(
    alerts: AlertService, alert_clock: Clock
) -> None:
    """Alertmanager sends no resolve for a silenced alert: at the silence's end opsbot asks it, and none firing
    resolves the group as a resolve would, saying how it knows."""
    group = silenced(alerts, alert_clock)
    until = datetime.fromisoformat(group.silenced_until)
    asked, shown = AskedAlertmanager(0), Recorder()
    alert_clock.advance(minutes=59)
    assert alerts.ended_silences() == []  # not before the silence ends
    alert_clock.advance(minutes=1, seconds=30)
    assert alerts.ended_silences() == [group.id]
    assert alerts.check_silence_end(group.id, shown, asked) == "resolved"
    assert asked.calls == [
        ("http://127.0.0.1:19093", (("alertname", "PgBouncerPoolExhausted"), ("service", "checkout-api")))
    ]
    resolved = alerts.get(group.id)
    assert (resolved.status, resolved.firing, resolved.silence_id) == ("resolved", (), "")
    assert datetime.fromisoformat(resolved.resolved_at) == until  # by the silence's end at the latest
    assert shown.kinds == ["resolved"] and "resolved during the silence" in shown.changes[0].note
    assert "Alertmanager sends no resolve for silenced alerts" in shown.changes[0].note
    assert alerts.ended_silences() == [] and alerts.recent(status="firing") == []
    fired = fire_again(alerts, alert_clock)  # a later firing is news, not a repeat of the stored one
    assert fired.kind == "refired" and fired.group.status == "firing"


def test_the_alerts_query_asks_for_every_unresolved_alert_the_silence_s_labels_select() -> None:
    url = alerts_url("http://am:9093/", [("alertname", 'Disk "full"'), ("service", "checkout-api")])
    assert url == (
        "http://am:9093/api/v2/alerts?filter=alertname%3D%22Disk+%5C%22full%5C%22%22"
        "&filter=service%3D%22checkout-api%22&active=true&silenced=true&inhibited=true&unprocessed=true"
    )


def test_a_group_still_firing_at_its_silence_s_end_is_left_to_alertmanager(
    alerts: AlertService, alert_clock: Clock
) -> None:
    group = silenced(alerts, alert_clock)
    alert_clock.advance(hours=1, seconds=1)
    asked, shown = AskedAlertmanager(2), Recorder()
    assert alerts.check_silence_end(group.id, shown, asked) == "firing"
    assert alerts.get(group.id).status == "firing" and shown.changes == []
    assert alerts.ended_silences() == []  # asked once: Alertmanager notifies them again itself


def test_an_alertmanager_out_of_reach_is_asked_again_for_a_day_then_the_state_is_said_to_be_unknown(
    alerts: AlertService, alert_clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    group = silenced(alerts, alert_clock)
    alert_clock.advance(hours=1, seconds=1)
    down = AskedAlertmanager(AlertmanagerError("could not reach Alertmanager at http://127.0.0.1:19093/ (refused)"))
    shown = Recorder()
    assert alerts.check_silence_end(group.id, shown, down) == "retry"
    assert shown.changes == [] and alerts.ended_silences() == [group.id]  # the next sweep asks again
    assert "alert silence end not checked" in caplog.text and "(refused)" in caplog.text
    alert_clock.advance(hours=23)
    assert alerts.check_silence_end(group.id, shown, down) == "retry"
    assert caplog.text.count("alert silence end not checked") == 1  # every sweep for a day, said once
    alert_clock.advance(hours=1)
    assert alerts.check_silence_end(group.id, shown, down) == "unknown"
    [note] = shown.changes
    assert "whether these alerts still fire is not known: could not reach Alertmanager" in note.note
    assert "check them in Alertmanager" in note.note
    assert alerts.get(group.id).status == "firing" and alerts.ended_silences() == []


def test_a_group_that_moved_on_while_alertmanager_was_asked_is_left_as_it_is(
    alerts: AlertService, alert_clock: Clock
) -> None:
    group = silenced(alerts, alert_clock)
    alert_clock.advance(hours=1, seconds=1)

    def resolve_meanwhile(url: str, matchers: tuple[tuple[str, str], ...]) -> int:
        receive(alerts, "pgbouncer-resolved", externalURL="http://127.0.0.1:19093")  # the resolve got through
        return 0

    shown = Recorder()
    assert alerts.check_silence_end(group.id, shown, resolve_meanwhile) == ""
    assert shown.changes == [] and [e["kind"] for e in alerts.get(group.id).events].count("resolved") == 1


def quiet(alerts: AlertService, clock: Clock) -> AlertGroup:
    """The pgbouncer group firing, then nothing heard of it for half an hour."""
    group = receive(alerts, "pgbouncer-firing", externalURL="http://127.0.0.1:19093").group
    assert alerts.quiet_groups() == []
    clock.advance(minutes=29)
    assert alerts.quiet_groups() == []  # a delivery within the half hour is news enough
    clock.advance(minutes=1, seconds=1)
    assert alerts.quiet_groups() == [group.id]
    return group


def test_a_firing_group_alertmanager_no_longer_lists_is_resolved_and_the_thread_says_how_opsbot_knows(
    alerts: AlertService, alert_clock: Clock
) -> None:
    """The resolve was lost (Alertmanager restarted, or gave up on a send opsbot refused): nothing else would ever
    show the message resolved. The group is looked up by its own labels, which every alert of it carries."""
    group = quiet(alerts, alert_clock)
    asked, shown = AskedAlertmanager(0), Recorder()
    assert alerts.check_quiet(group.id, shown, asked) == "missing"  # looked at again before it is believed
    assert shown.changes == [] and alerts.get(group.id).status == "firing"
    alert_clock.advance(minutes=4)
    assert alerts.quiet_groups() == []
    alert_clock.advance(minutes=1)
    assert alerts.quiet_groups() == [group.id]
    assert alerts.check_quiet(group.id, shown, asked) == "resolved"
    assert asked.calls == [("http://127.0.0.1:19093", tuple(sorted(group.group_labels.items())))] * 2
    resolved = alerts.get(group.id)
    assert (resolved.status, resolved.firing) == ("resolved", ())
    assert datetime.fromisoformat(resolved.resolved_at) == alert_clock.now  # by the time it was found, at the latest
    [change] = shown.changes
    assert change.kind == "resolved" and "the resolve never reached opsbot" in change.note
    assert "after 35 min without news of them" in change.note
    assert alerts.quiet_groups() == []
    fired = fire_again(alerts, alert_clock)  # its next firing is news, not a repeat of the stored one
    assert fired.kind == "refired" and fired.group.status == "firing"


def test_a_quiet_group_still_firing_is_asked_about_again_only_after_another_quiet_half_hour(
    alerts: AlertService, alert_clock: Clock
) -> None:
    group = quiet(alerts, alert_clock)
    asked, shown = AskedAlertmanager(3), Recorder()
    assert alerts.check_quiet(group.id, shown, asked) == "firing"
    assert alerts.get(group.id).status == "firing" and shown.changes == []
    assert alerts.quiet_groups() == []
    alert_clock.advance(minutes=29)
    assert alerts.quiet_groups() == []
    alert_clock.advance(minutes=1, seconds=1)
    assert alerts.quiet_groups() == [group.id]


def test_a_group_alertmanager_lists_again_at_the_second_look_stays_firing(
    alerts: AlertService, alert_clock: Clock
) -> None:
    """A restarted Alertmanager lists nothing until Prometheus sends its alerts again: one look is not enough."""
    group = quiet(alerts, alert_clock)
    shown = Recorder()
    assert alerts.check_quiet(group.id, shown, AskedAlertmanager(0)) == "missing"
    alert_clock.advance(minutes=5)
    assert alerts.check_quiet(group.id, shown, AskedAlertmanager(2)) == "firing"
    assert shown.changes == [] and alerts.get(group.id).status == "firing"
    alert_clock.advance(minutes=5)
    assert alerts.quiet_groups() == []  # and the next look is a quiet half hour away, not five minutes
    alert_clock.advance(minutes=25, seconds=1)
    assert alerts.quiet_groups() == [group.id]
    assert alerts.check_quiet(group.id, shown, AskedAlertmanager(0)) == "missing"  # a first look once more


def test_a_delivery_after_a_look_that_found_nothing_ends_the_doubt(alerts: AlertService, alert_clock: Clock) -> None:
    group = quiet(alerts, alert_clock)
    assert alerts.check_quiet(group.id, Recorder(), AskedAlertmanager(0)) == "missing"
    alert_clock.advance(minutes=1)
    assert receive(alerts, "pgbouncer-grown", externalURL="http://127.0.0.1:19093").kind == "changed"
    alert_clock.advance(minutes=10)
    assert alerts.quiet_groups() == []  # heard of eleven minutes ago: quiet again only after half an hour


def test_an_alertmanager_that_cannot_be_asked_leaves_the_group_firing_and_says_so_in_the_log_only(
    alerts: AlertService, alert_clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    """Not knowing is not news for the channel: the message shows what opsbot last heard. Asked again later."""
    group = quiet(alerts, alert_clock)
    down = AskedAlertmanager(AlertmanagerError("could not reach Alertmanager at http://127.0.0.1:19093/ (refused)"))
    shown = Recorder()
    assert alerts.check_quiet(group.id, shown, down) == "retry"
    assert shown.changes == [] and alerts.get(group.id).status == "firing"
    assert "alert group not checked" in caplog.text and "(refused)" in caplog.text
    assert alerts.quiet_groups() == []
    alert_clock.advance(minutes=30, seconds=1)
    assert alerts.quiet_groups() == [group.id]


def test_a_group_under_a_silence_from_opsbot_is_left_to_the_silence_s_end(
    alerts: AlertService, alert_clock: Clock
) -> None:
    group = silenced(alerts, alert_clock)
    alert_clock.advance(minutes=45)
    assert alerts.quiet_groups() == [] and alerts.ended_silences() == []
    assert group.silence_id


def test_a_quiet_group_that_moved_on_while_alertmanager_was_asked_is_left_as_it_is(
    alerts: AlertService, alert_clock: Clock
) -> None:
    group = quiet(alerts, alert_clock)

    def resolve_meanwhile(url: str, matchers: tuple[tuple[str, str], ...]) -> int:
        receive(alerts, "pgbouncer-resolved", externalURL="http://127.0.0.1:19093")  # the resolve got through
        return 0

    shown = Recorder()
    assert alerts.check_quiet(group.id, shown, resolve_meanwhile) == ""
    assert shown.changes == [] and [e["kind"] for e in alerts.get(group.id).events].count("resolved") == 1


def test_a_silence_claim_whose_process_stopped_is_taken_over_after_a_minute(
    alerts: AlertService, alert_clock: Clock
) -> None:
    """Claimed, then neither recorded nor released (the process was killed while Alertmanager was called): the
    button is not dead for the hour the claim names, only for as long as an Alertmanager call can take."""
    group = receive(alerts, "pgbouncer-firing").group
    alerts.claim_silence(group.id, ALICE, alert_clock.now + timedelta(hours=1))
    alert_clock.advance(seconds=30)
    with pytest.raises(InvalidRequest, match="already silenced"):  # the call may still be under way
        alerts.claim_silence(group.id, DAVE, alert_clock.now + timedelta(hours=1))
    alert_clock.advance(seconds=45)
    until = alert_clock.now + timedelta(hours=1)
    alerts.claim_silence(group.id, DAVE, until)
    alerts.record_silence(group.id, DAVE, "ea7eb532", until, None)
    assert (alerts.get(group.id).silenced_by, alerts.get(group.id).silence_id) == (DAVE, "ea7eb532")


# -- incidents and DORA -------------------------------------------------------------------------------------------


def test_an_incident_is_declared_once_per_episode_with_the_alerts_title_severity_and_service(
    alerts: AlertService, alert_store: Store, alert_clock: Clock
) -> None:
    group = receive(alerts, "pgbouncer-firing").group
    incidents = IncidentService(alert_store, set(alert_store.service_configs()), clock=alert_clock)
    shown = Recorder()
    incident, created = alerts.declare_incident(group.id, CAROL, incidents, shown)
    again, twice = alerts.declare_incident(group.id, ALICE, incidents, shown)

    assert created and not twice and again.id == incident.id
    assert incident.title == "PgBouncerPoolExhausted: PgBouncer pool exhausted on pg-main"
    assert (incident.severity, incident.services, incident.declared_by) == (1, ("checkout-api",), CAROL)
    assert shown.kinds == ["incident"] and alerts.get(group.id).incident_id == incident.id
    [linked] = alert_store.alert_incidents()
    assert (linked["incident_id"], linked["service"], linked["fired_at"]) == (
        incident.id,
        "checkout-api",
        "2026-12-05T16:22:38+00:00",
    )


def test_an_alert_with_a_blank_alertname_is_named_alert_and_declares_an_incident(
    alerts: AlertService, alert_store: Store, alert_clock: Clock
) -> None:
    # Before, "  " was kept as the name, and Declare failed with "give the incident a title: /incident declare ...".
    data = json.loads(payload("pgbouncer-firing"))
    for labels in [data["groupLabels"], data["commonLabels"], *(a["labels"] for a in data["alerts"])]:
        labels["alertname"] = "  "
    group = alerts.receive(parse_notification(json.dumps(data).encode())).group
    assert group.alertname == "alert"
    incidents = IncidentService(alert_store, set(alert_store.service_configs()), clock=alert_clock)
    incident, created = alerts.declare_incident(group.id, CAROL, incidents, None)
    assert created and incident.title == "alert: PgBouncer pool exhausted on pg-main"


def test_a_button_of_an_earlier_firings_message_does_not_act_on_the_current_firing(
    alerts: AlertService, alert_store: Store, alert_clock: Clock
) -> None:
    # Before, the buttons carried the group alone: Declare on yesterday's message declared for today's firing.
    receive(alerts, "pgbouncer-firing")
    receive(alerts, "pgbouncer-resolved")
    alert_clock.advance(minutes=30)
    fire_again(alerts, alert_clock)
    receive(alerts, "pgbouncer-resolved")  # the first message's firing resolved for good at 16:52
    alert_clock.advance(hours=3)
    group = fire_again(alerts, alert_clock).group  # a new message
    assert group.episode == 2
    incidents = IncidentService(alert_store, set(alert_store.service_configs()), clock=alert_clock)
    earlier = (
        r"this message is of an earlier firing of PgBouncerPoolExhausted, resolved at Sat 05 Dec 16:52 UTC; "
        r"it fired again at Sat 05 Dec 19:52 UTC with a new message: use the newer message"
    )
    with pytest.raises(InvalidRequest, match=earlier):
        alerts.declare_incident(group.id, CAROL, incidents, None, episode=1)
    with pytest.raises(InvalidRequest, match=earlier):
        alerts.claim_silence(group.id, ALICE, alert_clock.now + timedelta(hours=1), episode=1)
    with pytest.raises(InvalidRequest, match="not one opsbot posted"):
        alerts.declare_incident(group.id, CAROL, incidents, None, episode=3)
    assert incidents.list_open() == [] and not alerts.get(group.id).silenced_by

    incident, created = alerts.declare_incident(group.id, CAROL, incidents, None, episode=2)
    assert created and alerts.get(group.id).incident_id == incident.id
    # a button posted before buttons carried their firing acts on the current one, as it did
    assert alerts.declare_incident(group.id, CAROL, incidents, None) == (incident, False)


def declared_then_resolved(
    alerts: AlertService, store: Store, clock: Clock
) -> tuple[AlertGroup, IncidentService, LiveIncident]:
    """The pgbouncer group fired, an incident was declared from it, and the alerts resolved (the incident is open)."""
    group = receive(alerts, "pgbouncer-firing").group
    incidents = IncidentService(store, set(store.service_configs()), clock=clock)
    first, _ = alerts.declare_incident(group.id, CAROL, incidents, None)
    receive(alerts, "pgbouncer-resolved")
    return group, incidents, first


def test_a_firing_after_its_incident_closed_declares_a_new_one_and_a_refire_during_it_keeps_it(
    alerts: AlertService, alert_store: Store, alert_clock: Clock
) -> None:
    group, incidents, first = declared_then_resolved(alerts, alert_store, alert_clock)
    alert_clock.advance(minutes=20)
    during = fire_again(alerts, alert_clock)  # the incident is still being worked: this firing is part of it
    assert (during.kind, during.group.incident_id) == ("refired", first.id)
    assert alerts.declare_incident(group.id, ALICE, incidents, None) == (incidents.get(first.id), False)

    incidents.resolve(incidents.get(first.id), CAROL, "raised the pool size")
    receive(alerts, "pgbouncer-resolved")
    alert_clock.advance(minutes=30)
    after = fire_again(alerts, alert_clock)  # within the hour: a new firing
    assert (after.kind, after.group.episode, after.group.incident_id) == ("refired", 1, "")
    assert after.note.endswith(f"{first.id} is closed: Declare incident declares a new one")
    second, created = alerts.declare_incident(group.id, ALICE, incidents, None)
    assert created and second.id != first.id and second.status == "open"
    assert alerts.get(group.id).incident_id == second.id
    fired = {r["incident_id"]: r["fired_at"] for r in alert_store.alert_incidents()}
    assert fired == {first.id: group.started_at, second.id: after.group.started_at}  # DORA: each from its firing
    assert after.group.started_at > group.started_at


def test_a_firing_long_after_the_last_one_stays_with_its_incident_while_that_is_open(
    alerts: AlertService, alert_store: Store, alert_clock: Clock
) -> None:
    group, incidents, first = declared_then_resolved(alerts, alert_store, alert_clock)
    alert_clock.advance(minutes=90)  # quiet for longer than an hour: a new message, but the incident is still open

    after = fire_again(alerts, alert_clock)

    assert (after.kind, after.group.episode, after.group.incident_id) == ("opened", 2, first.id)
    assert after.note.endswith(f"{first.id} is still open: this firing stays with it")
    assert alerts.declare_incident(group.id, ALICE, incidents, None) == (incidents.get(first.id), False)
    assert [i.id for i in incidents.list_open()] == [first.id]


def test_an_incident_cancelled_as_declared_by_mistake_frees_its_alert_to_declare_the_real_one(
    alerts: AlertService, alert_store: Store, alert_clock: Clock
) -> None:
    group, incidents, mistake = cancelled_after_declaring(alerts, alert_store, alert_clock)
    shown = Recorder()

    freed = alerts.incident_cancelled(mistake.id, CAROL, shown)

    note = f"{mistake.id} was cancelled (declared by mistake): Declare incident declares a new one"
    assert [g.id for g in freed] == [group.id] and [(c.kind, c.note, c.actor) for c in shown.changes] == [
        ("incident", note, CAROL)
    ]
    assert alerts.get(group.id).incident_id == "" and action_ids(alerts.get(group.id)) == [
        ids.ALERT_DECLARE,
        ids.ALERT_SILENCE,
    ]
    real, created = alerts.declare_incident(group.id, ALICE, incidents, None)
    assert created and real.id != mistake.id and alerts.get(group.id).incident_id == real.id


def test_an_alert_still_holding_an_incident_cancelled_before_the_groups_were_freed_declares_anew(
    alerts: AlertService, alert_store: Store, alert_clock: Clock
) -> None:
    group, incidents, mistake = cancelled_after_declaring(alerts, alert_store, alert_clock)  # the group still names it

    again, created = alerts.declare_incident(group.id, ALICE, incidents, None)

    assert created and again.id != mistake.id and again.is_open  # before: "declared for this alert already"


def cancelled_after_declaring(
    alerts: AlertService, alert_store: Store, alert_clock: Clock
) -> tuple[AlertGroup, IncidentService, LiveIncident]:
    """Carol declares an incident from the pgbouncer alert, which hides its Declare button, then cancels it; the
    group is not freed here (incident_cancelled is what frees it)."""
    group = receive(alerts, "pgbouncer-firing").group
    incidents = IncidentService(alert_store, set(alert_store.service_configs()), clock=alert_clock)
    mistake, _ = alerts.declare_incident(group.id, CAROL, incidents, None)
    assert action_ids(alerts.get(group.id)) == [ids.ALERT_SILENCE]
    incidents.cancel(mistake, CAROL, "clicked the wrong alert")
    return group, incidents, mistake


def action_ids(group: AlertGroup) -> list[str]:
    return [b["action_id"] for b in action_buttons(group, AlertView(can_silence=True))]


@pytest.mark.parametrize(
    ("environments", "incident_env"),
    [("production", "production"), ("prod-eu: {approvals: 1, approvers: [web]}\n      prod-us", "")],
    ids=["one production environment", "two: none named"],
)
def test_without_incident_env_and_no_prod_environment_an_incident_is_still_declared(
    tmp_path: Path, alert_clock: Clock, environments: str, incident_env: str
) -> None:
    root = tmp_path / "knowledge"
    root.mkdir()
    (root / "services.yaml").write_text(SERVICES.replace("      prod:", f"      {environments}:"), encoding="utf-8")
    (root / "experts.yaml").write_text(ROSTER, encoding="utf-8")
    store = Store(tmp_path / "envs.db")
    assert index_knowledge(store, FakeEncoder(), root).problems == []  # left at its default: nothing to report
    deploys = DeployService.from_store(store, clock=alert_clock)
    assert deploys.settings.incident_env == (incident_env or "prod")
    known = set(store.service_configs())
    envs = {env for config in deploys.services.values() for env in config.environments}
    incidents = IncidentService(store, known, alert_clock, deploys.settings.incident_env, envs)  # as runtime does
    alerts = AlertService.from_store(store, deploys, known, clock=alert_clock)
    group = alerts.receive(parse_notification(payload("pgbouncer-firing"))).group

    incident, created = alerts.declare_incident(group.id, CAROL, incidents, None)  # the alert's Declare button
    typed = incidents.declare("checkout 503s", CAROL)  # /incident declare TITLE without --env
    assert created and incident.env == typed.env == incident_env
    with pytest.raises(InvalidRequest, match="unknown environment 'prod' for --env"):
        incidents.declare("checkout 503s", CAROL, env="prod")  # named on purpose: still checked
    store.close()


@pytest.mark.parametrize(
    ("label", "severity"), [("critical", 1), ("Page", 1), ("error", 2), ("warning", 3), ("info", 4), ("odd", None)]
)
def test_severity_labels_map_to_incident_severities(label: str, severity: int | None) -> None:
    assert incident_severity(label) == severity


def test_an_alert_counts_against_a_deploy_only_when_it_led_to_an_incident(
    alerts: AlertService, alert_store: Store, alert_clock: Clock
) -> None:
    finished = (FIRED - timedelta(hours=2)).isoformat()
    row = new_row(
        "dep-1",
        service="checkout-api",
        env="prod",
        version="1.4.2",
        status="succeeded",
        created_at=finished,
        started_at=finished,
        finished_at=finished,
    )
    with alert_store.transaction():
        alert_store.insert_deploy(row)
    now = FIRED + timedelta(hours=1)
    group = receive(alerts, "pgbouncer-firing").group
    assert dora(alert_store, "checkout-api", "prod", now=now).failed_changes == 0  # an alert alone is not a failure

    incidents = IncidentService(alert_store, {"checkout-api"}, clock=lambda: FIRED + timedelta(days=3))
    alerts.declare_incident(group.id, CAROL, incidents, None)  # declared days later: the firing time counts
    figures = dora(alert_store, "checkout-api", "prod", now=now)
    assert (figures.changes, figures.failed_changes) == (1, 1)
