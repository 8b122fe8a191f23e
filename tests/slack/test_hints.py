"""Usage lines and hints name the user's own services and runbooks, never the sample's (signed Slack requests)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from bot.answers.indexer import index_knowledge
from bot.hints import examples
from bot.ops.deploys import DeployService
from bot.runtime import Runtime
from bot.slack.local.fake_api import FakeSlackAPI
from bot.store import Store
from tests.conftest import FakeEncoder
from tests.ops.fixtures import ALICE, BOB, make_knowledge
from tests.slack.conftest import SlackDriver, make_settings, shown, start_bot

RUNBOOK = """\
---
title: Ledger batch stuck behind a lock
services: [ledger]
---
# Ledger batch stuck behind a lock

The nightly ledger batch waits on a row lock held by a reporting query.
"""
SERVICES = """\
services:
  ledger:
    owners: [UALICE0001]
    version_pattern: '^v\\d+\\.\\d+\\.\\d+$'
    environments:
      qa: {approvals: 1, approvers: [web]}
    deploy: {command: ["true"]}
"""


def their_knowledge(root: Path, services: str = SERVICES, runbook: bool = True) -> Store:
    """Someone else's knowledge folder, indexed: a `ledger` service released as v1.2.3, one runbook."""
    make_knowledge(root, services)
    if runbook:
        (root / "runbooks").mkdir()
        (root / "runbooks" / "ledger-lock.md").write_text(RUNBOOK, encoding="utf-8")
    store = Store(root.parent / f"{root.name}.db")
    assert index_knowledge(store, FakeEncoder(), root).problems == []
    return store


@pytest.fixture
def their_slack(tmp_path: Path, slack_api: FakeSlackAPI) -> Iterator[SlackDriver]:
    store = their_knowledge(tmp_path / "knowledge")
    runtime = Runtime(make_settings(tmp_path, slack_api), encoder=FakeEncoder(), store=store)
    runtime.start_loading()
    server, driver = start_bot(runtime, slack_api)
    yield driver
    server.stop()
    if driver.web is not None:
        driver.web.stop()
    runtime.close()


def test_usage_lines_take_their_examples_from_the_users_knowledge(their_slack: SlackDriver) -> None:
    deploy = their_slack.command("/deploy", "ledger v1.4.2").json()["text"]
    rollback = their_slack.command("/rollback", "").json()["text"]
    ask = str(their_slack.command("/ask", "").json()["blocks"])
    experts = their_slack.command("/experts", "").json()["text"]

    assert deploy == ("Missing ENV.\nUsage: /deploy SERVICE VERSION ENV, for example `/deploy ledger v1.4.2 qa`")
    assert "`/rollback ledger qa` (back to the version that succeeded before the current one)" in rollback
    assert "for example `/ask Ledger batch stuck behind a lock`" in ask
    assert "`/experts Ledger batch stuck behind a lock --service ledger`" in experts
    assert "checkout" not in deploy + rollback + ask + experts and "pgbouncer" not in ask


def test_without_services_or_runbooks_hints_use_placeholders(tmp_path: Path) -> None:
    store = their_knowledge(tmp_path / "bare", services="services: {}\n", runbook=False)
    shown = examples(store)
    store.close()

    assert shown.deploy_usage() == (
        "Usage: /deploy SERVICE VERSION ENV (the services and environments are in services.yaml)"
    )
    assert "/rollback SERVICE ENV [VERSION]" in shown.rollback_usage() and "`" not in shown.rollback_usage()
    assert shown.question() == "what the alert or error says" and shown.experts_usage().startswith("`/experts what")


def test_a_deployed_version_is_the_example_version(tmp_path: Path) -> None:
    store = their_knowledge(tmp_path / "knowledge")
    deploys = DeployService.from_store(store)
    request = deploys.request("deploy", "ledger", "qa", "v7.0.1", ALICE)
    deploys.approve(request.id, BOB)
    deploys.execute(request.id)
    shown = examples(store)
    store.close()

    assert shown.deploy == ("ledger", "v7.0.1", "qa")


def test_nothing_found_suggests_naming_one_of_the_users_services(
    their_slack: SlackDriver, slack_api: FakeSlackAPI
) -> None:
    their_slack.mention("what is a good recipe for sourdough bread")
    (call,) = slack_api.wait_for("chat.postMessage")

    assert "I found nothing relevant" in call.body["text"]
    assert "Try: naming the service (for example `ledger`)" in shown(call.body)
