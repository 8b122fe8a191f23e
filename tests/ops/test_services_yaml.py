"""services.yaml for deploys: problems named with the key and line, the rest still loaded.

Fixtures and helpers are in tests/ops/fixtures.py.
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from bot.answers.indexer import index_knowledge
from bot.knowledge import load_knowledge
from bot.ops.deploys import DeployService
from bot.store import Store
from tests.conftest import FakeEncoder
from tests.fakes import Clock
from tests.ops.fixtures import (
    ALICE,
    BOB,
    SERVICES,
    make_knowledge,
    runner_service,
)

# -- services.yaml validation --------------------------------------------------------------------

BROKEN_SERVICES = f"""\
services:
  good:
    environments:
      prod: {{approvals: 1, approvers: [sre]}}
    deploy: {{command: ["deploy.sh", "{{service}}", "{{version}}"]}}
  zero-approvals:
    environments:
      staging:
        approvals: 1
        approvers: [web]
      prod:
        approvals: 0
        approvers: [web]
    deploy: {{command: ["deploy.sh"]}}
  no-approvers:
    environments:
      staging:
        approvals: 1
        approvers: [web]
      prod:
        approvals: 1
    deploy: {{command: ["deploy.sh"]}}
  bad-placeholder:
    environments:
      prod: {{approvals: 1, approvers: [sre]}}
    deploy:
      timeout: 60
      command: ["deploy.sh", "{{servce}}"]
  backwards-freeze:
    environments:
      prod:
        approvals: 1
        approvers: [sre]
        freeze:
          - start: "2026-12-27T08:00:00Z"
            end: "2026-12-23T18:00:00Z"
  unreadable-freeze:
    environments:
      prod:
        approvals: 1
        approvers: [sre]
        freeze:
          - start: "2026-12-23T18:00:00Z"
            end: "2026-12-20T00:00:00Z"
          - start: next tuesday
            end: "2026-12-27T08:00:00Z"
  bad-pattern:
    version_pattern: '^(\\d+$'
    environments:
      prod: {{approvals: 1, approvers: [sre]}}
    deploy: {{command: ["deploy.sh"]}}
  also-good:
    owners: [{ALICE}]
    environments:
      staging:
        approvals: 1
        approvers: [web]
    deploy: {{command: ["deploy.sh"]}}
"""


def line_of(text: str, needle: str, after: str = "") -> int:
    lines = text.splitlines()
    begin = next(n for n, line in enumerate(lines) if after in line) if after else 0
    return next(n for n in range(begin, len(lines)) if needle in lines[n]) + 1


@pytest.mark.parametrize(
    "key, says, needle, after",
    [
        ("services.zero-approvals.environments.prod.approvals", "0 must be a whole number", "approvals: 0", ""),
        ("services.no-approvers.environments.prod.approvers", "must list roster ids", "prod:", "no-approvers:"),
        ("services.bad-placeholder.deploy.command", "unknown placeholder {servce}", "command:", "bad-placeholder"),
        ("services.backwards-freeze.environments.prod.freeze[0]", "end must be after start", "- start:", ""),
        ("services.unreadable-freeze.environments.prod.freeze[0]", "end must be after start", "- start:", "unread"),
        ("services.bad-pattern.version_pattern", "not a valid regular expression", "version_pattern:", ""),
    ],
)
def test_services_yaml_problems_name_the_key_and_line(
    tmp_path: Path, key: str, says: str, needle: str, after: str
) -> None:
    make_knowledge(tmp_path, BROKEN_SERVICES)

    kb = load_knowledge(tmp_path)

    problems = {p.message.split(":")[0]: p for p in kb.problems}
    problem = problems[key]
    assert problem.path == "services.yaml"
    assert says in problem.message
    assert problem.line == line_of(BROKEN_SERVICES, needle, after), str(problem)


def test_services_yaml_problems_leave_the_other_services_loaded(tmp_path: Path, clock: Clock) -> None:
    make_knowledge(tmp_path, BROKEN_SERVICES)

    kb = load_knowledge(tmp_path)

    assert sorted(kb.services) == ["also-good", "good"]
    assert len(kb.problems) == 9  # every problem of every service, the missing runners of the freezes' services too
    assert "services.yaml" not in kb.failed_paths
    store = Store(tmp_path / "broken.db")
    index_knowledge(store, FakeEncoder(), tmp_path)
    assert sorted(DeployService.from_store(store, clock=clock).services) == ["also-good", "good"]
    store.close()


def test_a_freeze_time_that_is_not_a_time_is_reported(tmp_path: Path) -> None:
    text = BROKEN_SERVICES.replace('end: "2026-12-20T00:00:00Z"', 'end: "2026-12-24T00:00:00Z"')
    make_knowledge(tmp_path, text)

    kb = load_knowledge(tmp_path)

    problem = next(p for p in kb.problems if "unreadable-freeze.environments" in p.message)
    assert problem.message.startswith("services.unreadable-freeze.environments.prod.freeze[1].start: 'next tuesday'")
    assert "is not an ISO 8601 time" in problem.message
    assert problem.line == line_of(text, "- start: next tuesday")


@pytest.mark.parametrize(
    "settings, key",
    [
        ("request_ttl_minutes: 0", "settings.request_ttl_minutes"),
        ("failure_window_hours: soon", "settings.failure_window_hours"),
        ("incident_env: [prod]", "settings.incident_env"),
        ("incident_env: ''", "settings.incident_env"),
    ],
)
def test_bad_settings_are_reported_and_the_defaults_used(tmp_path: Path, settings: str, key: str) -> None:
    text = f"settings:\n  deploys_channel: C0DEPLOYS1\n  {settings}\n" + SERVICES.split("\n", 3)[3]
    make_knowledge(tmp_path, text)

    kb = load_knowledge(tmp_path)

    assert [p.message.split(":")[0] for p in kb.problems] == [key]
    assert kb.problems[0].path == "services.yaml" and kb.problems[0].line == 3
    assert kb.deploy_settings == {"deploys_channel": "C0DEPLOYS1"}  # the wrong one left out, the other still counts
    assert sorted(kb.services) == ["owners-only", "strict", "web"]


def test_shipped_services_yaml_has_deployable_services(tmp_path: Path, clock: Clock) -> None:
    from tests.conftest import SAMPLE_KNOWLEDGE

    store = Store(tmp_path / "sample.db")
    store.replace_services(load_knowledge(SAMPLE_KNOWLEDGE).services)
    store.replace_experts(load_knowledge(SAMPLE_KNOWLEDGE).experts)
    service = DeployService.from_store(store, clock=clock)

    assert {"checkout-api", "payments-gateway", "order-pipeline", "storefront-web"} <= set(service.services)
    assert service.services["checkout-api"].environments["prod"].approvals == 2
    assert service.settings.request_ttl_minutes == 30  # not stored by replace_services: the defaults
    store.close()


def test_a_problem_in_a_merged_runner_points_at_the_shared_definition(tmp_path: Path) -> None:
    text = """\
x-runner: &runner
  deploy:
    command: ["deploy.sh", "{sevice}"]
services:
  api:
    environments:
      staging: {approvals: 1, approvers: [web]}
    <<: *runner
"""
    make_knowledge(tmp_path, text)

    kb = load_knowledge(tmp_path)

    assert [str(p) for p in kb.problems] == [
        "services.yaml:3: services.api.deploy.command: unknown placeholder {sevice}; "
        "use ('service', 'version', 'env', 'request_id', 'python')"
    ]


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


def test_timeout_stops_the_commands_children_too(tmp_path: Path) -> None:
    child = "import subprocess, sys; p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
    child += "print(p.pid, flush=True); p.wait()"
    deploys, store = runner_service(tmp_path, f'["{{python}}", "-c", "{child}"]', timeout=1)
    request = deploys.request("deploy", "job", "staging", "1.0.0", ALICE)
    deploys.approve(request.id, BOB)

    done = deploys.execute(request.id)

    assert done.status == "timed_out"
    grandchild = int(done.log_tail.splitlines()[0])
    deadline = datetime.now(UTC) + timedelta(seconds=3)
    while _running(grandchild) and datetime.now(UTC) < deadline:
        threading.Event().wait(0.05)
    assert not _running(grandchild), "a timed-out deploy must not keep running in the background"
    store.close()


def test_incidents_hit_prod_unless_settings_name_another_environment() -> None:
    from bot.services import parse_settings

    assert parse_settings({}).incident_env == "prod"
    assert parse_settings({"incident_env": "production"}).incident_env == "production"
