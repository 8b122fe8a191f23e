"""Deploy fixtures shared by the deploy tests: a roster, services.yaml, a clock the test moves, helpers.

Each test indexes a small knowledge directory (services.yaml and a roster) with the fake encoder and
drives ``DeployService`` with a clock it controls. Registered in tests/conftest.py (``pytest_plugins``).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from bot.answers.indexer import index_knowledge
from bot.ops.deploys import DeployService
from bot.ops.requests import DeployRequest, new_row
from bot.ops.runner import LEASE_S
from bot.store import Store
from tests.conftest import FakeEncoder
from tests.fakes import START, Clock

ALICE, BOB, CAROL, DAVE, ERIN, FRANK, GINA = (
    "UALICE0001",
    "UBOB000002",
    "UCAROL0003",
    "UDAVE00004",
    "UERIN00005",
    "UFRANK0006",
    "UGINA00007",
)

ROSTER = f"""\
people:
  - {{id: {ALICE}, name: Alice Archer, team: web}}
  - {{id: {BOB}, name: Bob Baker, team: web}}
  - {{id: {CAROL}, name: Carol Cruz, team: sre}}
  - {{id: {DAVE}, name: Dave Dunn, team: data}}
  - {{id: {ERIN}, name: Erin Ekberg, team: data}}
  - {{id: {FRANK}, name: Frank Field, team: sre}}
  - {{id: {GINA}, name: Gina Gould, team: web}}
"""
DEMO = '["{python}", "-m", "bot.demo_deploy", "{service}", "{version}", "{env}", "{request_id}"]'
DEMO_ROLLBACK = '["{python}", "-m", "bot.demo_deploy", "{service}", "{version}", "{env}", "{request_id}", "rollback"]'
SERVICES = f"""\
settings:
  request_ttl_minutes: 30
  failure_window_hours: 24
services:
  web:
    owners: [{ALICE}]
    environments:
      staging:
        approvals: 1
        approvers: [web]
      prod:
        approvals: 2
        approvers: [web, sre, {ERIN}]
        freeze:
          - start: "2026-12-23T18:00:00Z"
            end: "2026-12-27T08:00:00Z"
            reason: Christmas peak
    deploy: {{command: {DEMO}, timeout: 60}}
    rollback: {{command: {DEMO_ROLLBACK}, timeout: 60}}
  strict:
    owners: [{ALICE}]
    version_pattern: '^\\d+\\.\\d+\\.\\d+$'
    environments:
      staging: {{approvals: 1, approvers: [web]}}
    deploy: {{command: {DEMO}}}
  owners-only: {{owners: [{DAVE}]}}
"""


def make_knowledge(root: Path, services: str = SERVICES) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "services.yaml").write_text(services, encoding="utf-8")
    (root / "experts.yaml").write_text(ROSTER, encoding="utf-8")
    return root


@pytest.fixture
def store(tmp_path: Path) -> Store:
    store = Store(tmp_path / "deploys.db")
    report = index_knowledge(store, FakeEncoder(), make_knowledge(tmp_path / "knowledge"))
    assert report.problems == []
    yield store
    store.close()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def deploys(store: Store, clock: Clock) -> DeployService:
    return DeployService.from_store(store, clock=clock)


def runner_service(tmp_path: Path, command: str, timeout: int = 60) -> tuple[DeployService, Store]:
    """A deploy service whose only service `job` runs ``command`` in staging after one approval."""
    services = f"""\
services:
  job:
    environments:
      staging: {{approvals: 1, approvers: [web]}}
    deploy: {{command: {command}, timeout: {timeout}}}
"""
    store = Store(tmp_path / "runner.db")
    index_knowledge(store, FakeEncoder(), make_knowledge(tmp_path / "runner-knowledge", services))
    return DeployService.from_store(store, clock=Clock()), store


def start(deploys: DeployService, env: str = "staging", version: str = "1.0.0", service: str = "web") -> DeployRequest:
    """Request and approve until the request is running."""
    request = deploys.request("deploy", service, env, version, ALICE)
    decision = deploys.approve(request.id, BOB)
    if not decision.start:
        decision = deploys.approve(request.id, CAROL)
    assert decision.start, decision.message
    return decision.request


def succeed(deploys: DeployService, clock: Clock, version: str, env: str = "staging") -> DeployRequest:
    done = deploys.execute(start(deploys, env, version).id)
    assert done.status == "succeeded", done.log_tail
    clock.advance(hours=1)
    return done


def actions(store: Store) -> list[str]:
    return [row["action"] for row in store.audit_rows()]


def after_crash(store: Store, clock: Clock) -> DeployService:
    """The deploy service of another opsbot process, once this one's leases ran out (it died)."""
    later = time.time() + LEASE_S + 1
    return DeployService.from_store(store, clock=clock, owner="other-process", lease_clock=lambda: later)


def ci_row(request_id: str, status: str) -> dict:
    """A deploy row as a pipeline's event leaves it (written straight to the store by tests of the store)."""
    return new_row(
        request_id,
        service="web",
        env="prod",
        version="2.0.0",
        requester="ci:github-actions",
        status=status,
        created_at=START.isoformat(),
        started_at=START.isoformat(),
        source="ci",
        commit_sha="abc1234",
    )


class Received(BaseHTTPRequestHandler):
    """Keeps every request (method, path, headers, body); answers what the server's ``answer`` says."""

    def do_POST(self) -> None:  # noqa: N802 - the name http.server calls
        length = int(self.headers.get("Content-Length", "0"))
        body = self.rfile.read(length)
        self.server.seen.append((self.command, self.path, dict(self.headers)))  # type: ignore[attr-defined]
        self.server.bodies.append(json.loads(body))  # type: ignore[attr-defined]
        status, headers, text = self.server.answer  # type: ignore[attr-defined]
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(text.encode())

    def do_GET(self) -> None:  # noqa: N802
        self.server.seen.append((self.command, self.path, dict(self.headers)))  # type: ignore[attr-defined]
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"<html>Please sign in</html>")

    def log_message(self, *args: object) -> None:  # quiet
        pass


def serve() -> ThreadingHTTPServer:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Received)
    server.bodies = []  # type: ignore[attr-defined]
    server.seen = []  # type: ignore[attr-defined]
    server.answer = (202, {}, "queued")  # type: ignore[attr-defined]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture
def ci() -> Iterator[ThreadingHTTPServer]:
    """A CI system's trigger endpoint on loopback, keeping every request it was sent."""
    server = serve()
    yield server
    server.shutdown()
    server.server_close()
