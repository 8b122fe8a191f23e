"""A deploy's state change and the Slack post that shows it are stored in one transaction: neither without the
other, so a process killed between them loses no message and shows no change that did not happen."""

from __future__ import annotations

import json
import sqlite3

import pytest
from slack_sdk import WebClient

from bot.ops.deploys import DeployService
from bot.slack.deploy_posts import SlackAnnouncer, message_key, progress_key
from bot.slack.web import SlackWeb
from bot.store import Store
from tests.fakes import Clock
from tests.ops.fixtures import ALICE, BOB


@pytest.fixture
def unsent(store: Store) -> SlackWeb:
    """An outbox whose delivery threads never start: what it holds is exactly what was stored."""
    return SlackWeb(WebClient(base_url="http://127.0.0.1:9/api/", token="xoxb-test"), store)


def service(store: Store, web: SlackWeb) -> DeployService:
    return DeployService.from_store(store, clock=Clock(), announcer=SlackAnnouncer(web))


def keys(store: Store) -> list[str]:
    """The keys and references of the outbox rows, in the order written."""
    rows = [store.outbox_row(n) for n in range(1, 200)]
    return [r["key"] or r["update_of"] or r["thread_of"] or r["method"] for r in rows if r]


def test_a_request_is_stored_with_its_message(store: Store, unsent: SlackWeb) -> None:
    request = service(store, unsent).request("deploy", "web", "staging", "1.0.0", ALICE, channel="C0OPS0001")

    assert keys(store) == [message_key(request.id)]


def test_when_its_message_cannot_be_stored_the_request_is_not_recorded(
    store: Store, unsent: SlackWeb, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full(self: Store, row: object) -> int:
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(Store, "add_outbox", full)

    with pytest.raises(sqlite3.OperationalError, match="disk is full"):
        service(store, unsent).request("deploy", "web", "staging", "1.0.0", ALICE, channel="C0OPS0001")

    assert store.recent_deploys() == [] and store.lock_holder("web", "staging") is None
    assert unsent._memory.busy() == 0  # nothing kept aside for a change that did not happen


def test_an_approval_and_a_finish_are_stored_with_what_they_show(store: Store, unsent: SlackWeb) -> None:
    deploys = service(store, unsent)
    request = deploys.request("deploy", "web", "staging", "1.0.0", ALICE, channel="C0OPS0001")
    assert deploys.approve(request.id, BOB).start
    after_approval = keys(store)

    done = deploys.execute(request.id)

    assert done.status == "succeeded"
    assert after_approval == [message_key(request.id), message_key(request.id), progress_key(request.id)]
    finished = keys(store)[len(after_approval) :]
    assert finished[:2] == [message_key(request.id), progress_key(request.id)]  # the request, the final log
    assert len(finished) == 3  # and the summary, posted in the thread and broadcast to the deploys channel


def test_a_progress_edit_that_arrives_after_the_run_ended_does_not_replace_the_final_log(
    store: Store, unsent: SlackWeb
) -> None:
    announcer = SlackAnnouncer(unsent)
    deploys = DeployService.from_store(store, clock=Clock(), announcer=announcer)
    request = deploys.request("deploy", "web", "staging", "1.0.0", ALICE, channel="C0OPS0001")
    assert deploys.approve(request.id, BOB).start
    running = deploys.get(request.id)
    assert deploys.execute(request.id).status == "succeeded"

    # the progress reporter's last edit, underway when the command ended, is stored after the final one
    announcer.show_progress(running, deploys, "late output")

    rows = [store.outbox_row(n) for n in range(1, 200)]
    edits = [r for r in rows if r and r["update_of"] == progress_key(request.id)]
    [live] = [r for r in edits if r["status"] == "pending"]
    shown = json.loads(live["payload"])["text"]
    assert "Succeeded" in shown and "late output" not in shown


def test_a_failure_of_the_dora_figures_costs_the_summary_only_its_dora_line(
    store: Store, unsent: SlackWeb, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(self: DeployService, *args: object) -> object:
        raise OverflowError("date value out of range")

    deploys = service(store, unsent)
    request = deploys.request("deploy", "web", "staging", "1.0.0", ALICE, channel="C0OPS0001")
    deploys.approve(request.id, BOB)
    monkeypatch.setattr(DeployService, "figures", broken)

    assert deploys.execute(request.id).status == "succeeded"

    rows = [store.outbox_row(n) for n in range(1, 200)]
    summary = [json.loads(r["payload"]) for r in rows if r and "DORA" in (r["payload"] or "")]
    assert summary and all("DORA: unavailable (opsbot's log says why)" in json.dumps(p) for p in summary)
