"""The incident briefing's view of deploys: recent deploys of the incident's services and a possible cause."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from bot.models import SearchHit
from bot.ops.incident_writeup import NO_ROOT_CAUSE
from bot.ops.incidents import IncidentService, LiveIncident, deploys_since, possible_cause
from bot.ops.requests import DeployRequest
from bot.slack.blocks.incidents import (
    build_declared_blocks,
    build_knowledge_blocks,
    build_recent_deploys_blocks,
    build_status_blocks,
)
from bot.store import Store
from tests.conftest import database_text
from tests.ops.test_metrics import NOW, deploy, insert

DECLARED = NOW  # deploy(None) rows of test_metrics are requested 20 minutes before NOW
PRIYA, DANIEL = "U03F8K2LQ1", "U04C2RN8VD"
MESSAGE = "C0OPS0001:1764496800.000100"  # a pinned message: its channel and ts


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    store = Store(tmp_path / "incidents.db")
    yield store
    store.close()


def declared(store: Store, services: list[str]) -> LiveIncident:
    return IncidentService(store, set(services), clock=lambda: DECLARED).declare("Checkout 503s", PRIYA, 2, services)


def before(**delta: float) -> datetime:
    return DECLARED - timedelta(**delta)


def text_of(blocks: list[dict]) -> str:
    return "\n".join(b["text"]["text"] for b in blocks if b.get("text"))


def test_deploys_since_are_deploy_requests_of_the_services_newest_first(store: Store) -> None:
    old = deploy(before(days=2), service="checkout-api")
    recent = deploy(before(minutes=40), service="checkout-api", version="1.4.2")
    pending = deploy(None, service="checkout-api", status="pending", ran=False)  # requested 20 min before
    other = deploy(before(minutes=10), service="search-api")
    insert(store, old, recent, pending, other)
    with store.transaction():
        store.record_decision(recent["id"], DANIEL, "approve")

    found = deploys_since(store, ("checkout-api",), before(hours=24))

    assert all(isinstance(d, DeployRequest) for d in found)
    assert [d.id for d in found] == [pending["id"], recent["id"]]
    assert [d.latest_at for d in found] == [before(minutes=20), before(minutes=40)]
    assert [d.completed for d in found] == [False, True]
    assert found[1].approvers == (DANIEL,)  # a whole request, decisions included


def test_latest_at_reads_ci_times_with_z_or_without_an_offset_as_utc(store: Store) -> None:
    zulu = deploy(None, service="checkout-api") | {"finished_at": "2026-11-30T11:20:00Z"}
    naive = deploy(None, service="checkout-api", status="pending", ran=False) | {"created_at": "2026-11-30T11:30:00"}
    insert(store, zulu, naive)

    found = deploys_since(store, ["checkout-api"], before(hours=1))

    assert [(d.id, d.latest_at) for d in found] == [(naive["id"], before(minutes=30)), (zulu["id"], before(minutes=40))]


def test_possible_cause_is_the_last_successful_deploy_in_the_window_before_the_declaration(store: Store) -> None:
    cause = deploy(before(minutes=40), service="checkout-api", version="1.4.2")
    insert(
        store,
        deploy(before(hours=5), service="checkout-api", version="1.4.0"),  # outside a 2 h window
        deploy(before(hours=1), service="checkout-api", version="1.4.1"),  # older than the cause
        cause,
        deploy(before(minutes=5), service="checkout-api", status="failed", version="1.4.3"),  # did not succeed
        deploy(before(minutes=15), service="checkout-api", kind="rollback", version="1.4.1"),  # not a deploy
        deploy(DECLARED + timedelta(minutes=5), service="checkout-api", version="1.4.4"),  # after the declaration
    )
    incident = declared(store, ["checkout-api"])

    found = possible_cause(incident, store, window_hours=2)

    assert found is not None
    request, minutes, since_alert = found
    assert (request.id, request.version, minutes, since_alert) == (cause["id"], "1.4.2", 40, False)
    assert "*Possible cause:* deploy 1.4.2 of checkout-api to prod" in text_of(build_declared_blocks(incident, found))
    assert possible_cause(incident, store, window_hours=0) is None


def test_recent_deploys_blocks_show_deploy_requests_with_rollback_only_on_successes(store: Store) -> None:
    ran = deploy(before(minutes=40), service="checkout-api", version="1.4.2") | {"from_version": "1.4.1"}
    waiting = deploy(None, service="checkout-api", status="pending", version="1.4.3", ran=False)
    insert(store, ran, waiting)
    incident = declared(store, ["checkout-api"])

    blocks = build_recent_deploys_blocks(incident, deploys_since(store, incident.services, before(hours=24)))

    text = text_of(blocks)
    # 30 November, not the day this runs: each time carries its date
    assert f"*1.4.3* to prod · pending requested at Mon 30 Nov 11:40 UTC · `{waiting['id']}`" in text
    assert f"1.4.1 → *1.4.2* to prod · succeeded at Mon 30 Nov 11:20 UTC · `{ran['id']}`" in text
    buttons = [b["accessory"]["value"] for b in blocks if "accessory" in b]
    assert len(buttons) == 1 and ran["id"] in buttons[0]


def test_the_briefing_links_a_runbook_section_when_the_runbook_has_a_url() -> None:
    linked = SearchHit(
        "runbooks/a.md",
        "runbook",
        "Disk full",
        "Free space",
        "prune",
        1.0,
        url="https://w.example/a",
        anchor="free-space",
    )
    plain = SearchHit("runbooks/b.md", "runbook", "DNS", "Checks", "dig", 0.9, anchor="checks")
    blocks = build_knowledge_blocks([linked, plain], [])
    first, second = blocks[1]["text"]["text"], blocks[2]["text"]["text"]
    assert first.startswith("<https://w.example/a|Disk full> · <https://w.example/a#free-space|_Free space_>")
    assert second.startswith("*DNS* · _Checks_\n")


def test_everyone_given_a_role_is_a_responder_when_it_is_resolved(store: Store) -> None:
    comms, first_lead = "U05G8VS4QH", "U06H3WD7RJ"
    incidents = IncidentService(store, {"checkout-api"}, clock=lambda: DECLARED)
    live = incidents.declare("Checkout 503s", PRIYA, 2, ["checkout-api"])
    live = incidents.assign(live, PRIYA, first_lead, "lead")
    live = incidents.assign(live, PRIYA, comms, "comms")
    live = incidents.assign(live, PRIYA, DANIEL, "lead")  # the first lead handed over: they worked it too
    _, past = incidents.resolve(live, DANIEL, "Raised the pool size.")
    # Neither the comms person nor the first lead typed anything, and both get the credit.
    assert past.responders == (DANIEL, first_lead, comms, PRIYA)


def test_resolve_announces_inside_its_transaction_and_a_failed_announcement_changes_nothing(store: Store) -> None:
    incidents = IncidentService(store, {"checkout-api"}, clock=lambda: DECLARED)
    live = incidents.declare("Checkout 503s", PRIYA, 2, ["checkout-api"])
    seen: list[tuple[str, str, bool]] = []

    def announce(resolved: LiveIncident) -> None:
        seen.append((resolved.status, resolved.resolution, store.in_transaction_here()))

    def refused(resolved: LiveIncident) -> None:
        raise OSError("disk full")

    with pytest.raises(OSError):
        incidents.resolve(live, DANIEL, "Raised the pool size.", "pool too small", announce=refused)
    after = incidents.get(live.id)
    assert after.is_open and after.root_cause == "" and [e["kind"] for e in after.events] == ["declared"]

    resolved, _ = incidents.resolve(live, DANIEL, "Raised the pool size.", announce=announce)
    assert seen == [("resolved", "Raised the pool size.", True)] and resolved.status == "resolved"
    assert [i.id for i in incidents.unlearned()] == [live.id]  # resolved, not yet a past incident


def test_notes_are_never_written_up_as_the_root_cause(store: Store) -> None:
    incidents = IncidentService(store, {"checkout-api"}, clock=lambda: DECLARED)
    live = incidents.declare("Checkout 503s", PRIYA, 2, ["checkout-api"])
    for n in range(5):
        incidents.note(live, PRIYA, f"note {n}: customers notified")
    _, past = incidents.resolve(incidents.get(live.id), PRIYA, "Rolled back checkout-api")
    assert past.root_cause == NO_ROOT_CAUSE  # before, notes 4 and 5 stood in for it
    assert "note 4: customers notified" in "\n".join(t.event for t in past.timeline)


def test_free_text_is_scrubbed_of_secrets_before_it_is_stored(store: Store) -> None:
    token = "ghp_" + "Zq3vR8tLw2Xy5Kp9Mn4Bc7Df1Gh6Jk0Ls2Ab"
    incidents = IncidentService(store, {"checkout-api"}, clock=lambda: DECLARED)
    live = incidents.declare(f"login fails with token={token}", PRIYA, 2, ["checkout-api"])
    incidents.pin(live, PRIYA, f"export GITHUB_TOKEN={token}")
    incidents.record_action(live, PRIYA, f"curl -H 'Authorization: token {token}'")
    incidents.cancel(incidents.get(live.id), PRIYA, f"dup; token {token}")
    rows = database_text(store)
    assert token not in rows and "token=***" in rows


def test_a_long_timeline_shows_its_newest_entries_and_counts_the_ones_left_out(store: Store) -> None:
    incidents = IncidentService(store, {"checkout-api"}, clock=lambda: DECLARED)
    live = incidents.declare("Checkout 503s", PRIYA, 2, ["checkout-api"])
    for n in range(3):
        assert incidents.pin(live, PRIYA, f"pinned log {n}: " + "x" * 1_200)
    live = incidents.note(live, PRIYA, "LATEST: the pool is back to normal")
    text = text_of(build_status_blocks(live))
    assert "LATEST: the pool is back to normal" in text  # before, the section's cut took it off the end
    assert "earlier entries" not in text and text.count("pinned log") == 3 and len(text) < 3000
    for n in range(30):
        live = incidents.note(live, PRIYA, f"update {n}")
    timeline = text_of(build_status_blocks(live)).split("*Timeline*\n")[1]
    assert timeline.startswith(f"… {len(live.events) - 25} earlier entries") and timeline.endswith("update 29")


@pytest.mark.parametrize("change", ["declare", "note", "assign", "severity", "rootcause", "cancel"])
def test_a_change_whose_announcement_fails_is_not_stored(store: Store, change: str) -> None:
    """Each change runs its announcement inside its transaction: when the post cannot be stored, nor is the change."""
    incidents = IncidentService(store, {"checkout-api"}, clock=lambda: DECLARED)
    live = incidents.declare("Checkout 503s", PRIYA, 2, ["checkout-api"])
    seen: list[bool] = []

    def refused(changed: LiveIncident) -> None:
        seen.append(store.in_transaction_here())
        raise OSError("disk full")

    run = {
        "declare": lambda: incidents.declare("Search is slow", PRIYA, 3, announce=refused),
        "note": lambda: incidents.note(live, PRIYA, "pool at 100%", announce=refused),
        "assign": lambda: incidents.assign(live, PRIYA, DANIEL, "comms", announce=refused),
        "severity": lambda: incidents.set_severity(live, PRIYA, 1, announce=refused),
        "rootcause": lambda: incidents.set_root_cause(live, PRIYA, "pool too small", announce=refused),
        "cancel": lambda: incidents.cancel(live, PRIYA, "typo", announce=refused),
    }
    with pytest.raises(OSError):
        run[change]()
    assert seen == [True]
    assert [(i.id, i.status, i.severity, i.roles, i.root_cause) for i in incidents.list_all()] == [
        (live.id, "open", 2, {"lead": PRIYA}, "")
    ]
    assert [e["kind"] for e in incidents.get(live.id).events] == ["declared"]


def test_a_message_pinned_by_two_people_at_once_is_added_once(store: Store) -> None:
    """The check for an entry already pinned and the write are one transaction: two reactions racing each other
    (two Slack events handled at once, or two processes) add the message once."""
    incidents = IncidentService(store, {"checkout-api"}, clock=lambda: DECLARED)
    live = incidents.declare("Checkout 503s", PRIYA, 2, ["checkout-api"])
    start = threading.Barrier(2)
    added: list[bool] = []

    def react(user: str) -> None:
        start.wait()
        added.append(incidents.pin(live, user, "Raised default_pool_size to 40; 503s stopped", MESSAGE))

    threads = [threading.Thread(target=react, args=(user,)) for user in (PRIYA, DANIEL)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [e["kind"] for e in incidents.get(live.id).events] == ["declared", "pinned"]
    assert sorted(added) == [False, True]


def test_two_messages_with_the_same_words_are_two_entries_and_each_is_added_once(store: Store) -> None:
    """A pinned entry is the message (its channel and ts), not its words: the same words posted again an hour later
    (the error rate back up after a mitigation) are pinned too, and a second reaction to either adds nothing."""
    incidents = IncidentService(store, {"checkout-api"}, clock=lambda: DECLARED)
    live = incidents.declare("Checkout 503s", PRIYA, 2, ["checkout-api"])
    later = "C0OPS0001:1764500400.000200"

    assert incidents.pin(live, PRIYA, "error rate back above 5%", MESSAGE) is True
    assert incidents.pin(live, DANIEL, "error rate back above 5%", later) is True
    assert incidents.pin(live, DANIEL, "error rate back above 5%", MESSAGE) is False

    pinned = [(e["actor"], e["text"]) for e in incidents.get(live.id).events if e["kind"] == "pinned"]
    assert pinned == [(PRIYA, "error rate back above 5%"), (DANIEL, "error rate back above 5%")]


def test_a_message_pinned_before_pins_recorded_their_message_is_not_added_again(store: Store) -> None:
    """Pins kept before m021 have no message: a reaction to the same message after the upgrade is told by its words."""
    incidents = IncidentService(store, {"checkout-api"}, clock=lambda: DECLARED)
    live = incidents.declare("Checkout 503s", PRIYA, 2, ["checkout-api"])
    assert incidents.pin(live, PRIYA, "pool size 20 reached") is True  # as an older opsbot stored it

    assert incidents.pin(live, DANIEL, "pool size 20 reached", MESSAGE) is False
    assert incidents.pin(live, DANIEL, "pool size 40 reached", MESSAGE) is True
