"""One rule for service names: what services.yaml accepts, /deploy, /rollback, CI events and /incident accept too."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bot.answers.indexer import index_knowledge
from bot.errors import InvalidRequest
from bot.ops.ci_deploys import record_ci_event
from bot.ops.ci_events import EventProblem, parse_event
from bot.ops.deploys import DeployService
from bot.ops.incidents import IncidentService
from bot.store import Store
from tests.conftest import FakeEncoder
from tests.fakes import Clock
from tests.ops.fixtures import ALICE, BOB, DEMO, make_knowledge

RULE = "use letters, digits, '.', '_' and '-', with '/' between parts"
SLASHED = f"""\
services:
  storage/remote:
    environments:
      staging: {{approvals: 1, approvers: [web]}}
    deploy: {{command: {DEMO}}}
"""


@pytest.fixture
def slashed(tmp_path: Path, clock: Clock) -> DeployService:
    store = Store(tmp_path / "slash.db")
    report = index_knowledge(store, FakeEncoder(), make_knowledge(tmp_path / "knowledge", SLASHED))
    assert report.problems == []
    yield DeployService.from_store(store, clock=clock)
    store.close()


def test_a_service_with_a_slash_in_services_yaml_can_be_deployed_and_rolled_back(slashed: DeployService) -> None:
    for version in ("1.0.0", "1.1.0"):
        request = slashed.request("deploy", "storage/remote", "staging", version, ALICE)
        assert slashed.approve(request.id, BOB).start
        assert slashed.execute(request.id).status == "succeeded"

    rollback = slashed.request("rollback", "storage/remote", "staging", None, ALICE)

    assert rollback.version == "1.0.0"


def test_a_ci_event_for_a_service_with_a_slash_is_recorded(slashed: DeployService) -> None:
    body = {"event_id": "e1", "service": "storage/remote", "env": "staging", "version": "2.0.0", "status": "succeeded"}

    record_ci_event(slashed, parse_event(json.dumps(body), slashed.ci_services(), slashed.ci_environments()))

    assert slashed.current_version("storage/remote", "staging") == "2.0.0"


@pytest.mark.parametrize("name", ["storage//remote", "/storage", "web;id", "-web", "a" * 101])
def test_a_name_that_cannot_name_a_service_is_refused_alike_everywhere(slashed: DeployService, name: str) -> None:
    with pytest.raises(InvalidRequest, match=RULE):
        slashed.request("deploy", name, "staging", "1.0.0", ALICE)
    with pytest.raises(InvalidRequest, match=RULE):
        slashed.request("rollback", name, "staging", None, ALICE)
    with pytest.raises(InvalidRequest, match=RULE):
        IncidentService(slashed.store, {name, "storage/remote"}).declare("Disk full", ALICE, 2, [name])
    body = {"event_id": "e2", "service": name, "env": "staging", "version": "2.0.0", "status": "succeeded"}
    with pytest.raises(EventProblem, match=RULE):
        parse_event(json.dumps(body), {name, "storage/remote"})
