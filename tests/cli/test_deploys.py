"""`opsbot deploys`, `opsbot audit` and `opsbot dora`, driven through click's CliRunner."""

from __future__ import annotations

import csv
import io
import json
import os
import threading
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest
from click.testing import Result

from bot.answers.indexer import index_knowledge
from bot.cli import notify as notify_cli
from bot.errors import PermissionDenied
from bot.ops.ci_deploys import record_ci_event
from bot.ops.ci_events import parse_event
from bot.ops.deploys import DeployService
from bot.store import Store
from tests.conftest import FakeEncoder, assert_clean_failure, invoke
from tests.fakes import Clock
from tests.ops.fixtures import ALICE, BOB, CAROL, SERVICES, make_knowledge
from tests.ops.test_metrics import deploy, incident, insert

COMMANDS = ("deploys", "audit", "dora")


@dataclass(frozen=True)
class History:
    staging: str  # succeeded, from Slack
    prod: str  # succeeded after two approvals, from Slack
    rejected: str
    ci: str  # succeeded, from CI, 5 minutes long
    started: datetime


@pytest.fixture
def history(tmp_path: Path) -> History:
    """A few days of deploys in the database `opsbot` opens ($OPSBOT_DB, set by the autouse fixture)."""
    store = Store(os.environ["OPSBOT_DB"])
    quick = SERVICES.replace('"-m", "bot.demo_deploy"', '"-c", "print(1)"')  # the demo's sleeps add up
    index_knowledge(store, FakeEncoder(), make_knowledge(tmp_path / "knowledge", quick))
    started = (datetime.now(UTC) - timedelta(days=3)).replace(microsecond=0)
    clock = Clock(started)
    deploys = DeployService.from_store(store, clock=clock)

    staging = deploys.request("deploy", "web", "staging", "1.0.0", ALICE)
    deploys.approve(staging.id, BOB)
    deploys.execute(staging.id)
    clock.advance(hours=1)
    prod = deploys.request("deploy", "web", "prod", "1.0.0", ALICE)
    deploys.approve(prod.id, BOB)
    deploys.approve(prod.id, CAROL)
    deploys.execute(prod.id)
    clock.advance(hours=1)
    rejected = deploys.request("deploy", "web", "prod", "1.1.0", ALICE)
    deploys.reject(rejected.id, CAROL)
    clock.advance(hours=1)
    ci = deploy(
        clock(), service="web", env="prod", version="1.2.0", commit_time=(clock() - timedelta(hours=2)).isoformat()
    )
    ci["started_at"] = (clock() - timedelta(minutes=5)).isoformat()
    ci["created_at"] = ci["started_at"]
    ci["from_version"] = "1.0.0"
    insert(store, ci)
    store.close()
    return History(staging.id, prod.id, rejected.id, ci["id"], started)


@pytest.mark.parametrize("command", COMMANDS)
def test_help_has_an_example(command: str) -> None:
    result = invoke(command, "--help")

    assert result.exit_code == 0, result.output
    assert "Example" in result.stdout and f"opsbot {command}" in result.stdout


# -- opsbot deploys ------------------------------------------------------------------------------


def test_deploys_lists_slack_and_ci_requests_newest_first(history: History) -> None:
    result = invoke("deploys")

    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split() == [
        "ID", "KIND", "SERVICE", "ENV", "FROM", "→", "TO", "STATUS", "REQUESTER", "APPROVERS", "STARTED", "DURATION"
    ]  # fmt: skip
    ids = [line.split()[0] for line in lines[1:]]
    assert ids == [history.ci, history.rejected, history.prod, history.staging]
    ci, rejected, prod, staging = lines[1:]
    assert "1.0.0 → 1.2.0" in ci and "succeeded" in ci and "github-actions" in ci and ci.endswith("5.0 min")
    assert "rejected" in rejected and rejected.split()[-3:] == ["-", "-", "-"]  # no approvers, never started
    assert "Alice Archer" in prod and "Bob Baker, Carol Cruz" in prod and "? → 1.0.0" in prod
    assert history.started.strftime("%Y-%m-%d %H:%M") in staging and staging.endswith("0 s")


def test_deploys_shows_what_a_ci_deploy_broke(tmp_path: Path) -> None:
    store = Store(os.environ["OPSBOT_DB"])
    index_knowledge(store, FakeEncoder(), make_knowledge(tmp_path / "knowledge"))
    deploys = DeployService.from_store(store)
    pending = deploys.request("deploy", "web", "staging", "1.0.0", ALICE)
    body = '{"event_id": "e1", "service": "web", "env": "staging", "version": "2.0.0", "status": "started"}'
    ci = record_ci_event(deploys, parse_event(body, deploys.ci_services(), deploys.ci_environments())).request
    store.close()

    result = invoke("deploys")

    assert result.exit_code == 0, result.output
    [row] = [line for line in result.stdout.splitlines() if line.startswith(ci.id) and "flagged:" not in line]
    assert "overlapping (flagged)" in row and "ci:ci" in row
    assert f"{ci.id} flagged: deployed while Alice Archer's {pending.id} (pending) held the web staging lock" in (
        result.stdout
    )


def test_deploys_says_when_a_waiting_request_is_past_its_expiry(tmp_path: Path) -> None:
    # Before, a request that had expired with no `opsbot serve` to sweep it was listed as pending, holding the lock.
    store = Store(os.environ["OPSBOT_DB"])
    index_knowledge(store, FakeEncoder(), make_knowledge(tmp_path / "knowledge"))
    deploys = DeployService.from_store(store)
    fresh = deploys.request("deploy", "web", "staging", "1.0.0", ALICE)
    stale = deploys.request("deploy", "web", "prod", "1.0.0", ALICE)
    with store.transaction():
        store.update_deploy(stale.id, expires_at="2020-01-01T00:00:00+00:00")
    store.close()

    lines = invoke("deploys").stdout.splitlines()

    [fresh_row] = [line for line in lines if line.startswith(fresh.id)]
    [stale_row] = [line for line in lines if line.startswith(stale.id)]
    assert " pending " in fresh_row and "past its expiry" not in fresh_row
    assert " pending, past its expiry " in stale_row


def test_deploys_now_says_what_runs_where_as_deploy_service_does_in_slack(history: History) -> None:
    result = invoke("deploys", "--now", "--service", "web")

    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == "web, by opsbot's record"
    assert lines[1].startswith(f"  staging: runs 1.0.0 ({history.staging}, finished ")
    assert lines[2].startswith("  prod: runs 1.2.0 (")  # the CI deploy, after opsbot's 1.0.0
    (prod,) = json.loads(invoke("deploys", "--now", "--service", "web", "--env", "prod", "--json").stdout)[
        "environments"
    ]
    assert prod["current"]["version"] == "1.2.0" and prod["failed"] is None and prod["active"] is None
    assert_clean_failure(invoke("deploys", "--now"), "--now needs --service NAME")
    assert_clean_failure(
        invoke("deploys", "--now", "--service", "wbe"), "no deployable service 'wbe'", "Did you mean web?"
    )


def test_deploys_filters_by_service_env_and_limit(history: History) -> None:
    staging = invoke("deploys", "--env", "staging")
    newest = invoke("deploys", "--service", "web", "--env", "prod", "--limit", "1")

    assert [line.split()[0] for line in staging.stdout.splitlines()[1:]] == [history.staging]
    assert [line.split()[0] for line in newest.stdout.splitlines()[1:]] == [history.ci]


def test_deploys_json(history: History) -> None:
    result = invoke("deploys", "--json", "--env", "prod")

    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert [r["id"] for r in rows] == [history.ci, history.rejected, history.prod]
    prod = rows[2]
    assert prod["approvers"] == [BOB, CAROL] and prod["requester"] == ALICE
    assert prod["status"] == "succeeded" and prod["duration_s"] == 0
    assert rows[0]["source"] == "ci" and rows[0]["duration_s"] == 300
    assert rows[1]["rejected_by"] == CAROL and rows[1]["duration_s"] is None


def test_deploys_with_no_history() -> None:
    Store(os.environ["OPSBOT_DB"]).close()  # made by `opsbot index`, nothing recorded yet
    result = invoke("deploys")

    assert result.exit_code == 0, result.output
    assert result.stdout == "No deploy requests yet.\n"
    assert json.loads(invoke("deploys", "--json").stdout) == []


def test_deploys_refuses_unknown_names(history: History) -> None:
    assert_clean_failure(
        invoke("deploys", "--service", "wbe"), "no service 'wbe'", "known services: owners-only, strict, web"
    )
    assert_clean_failure(invoke("deploys", "--env", "prdo"), "no environment 'prdo'", "prod, staging")
    assert invoke("deploys", "--limit", "0").exit_code == 2  # click's own usage error


def test_deploys_on_an_empty_database_names_the_next_step() -> None:
    Store(os.environ["OPSBOT_DB"]).close()  # made by `opsbot index`, nothing recorded yet
    assert_clean_failure(invoke("deploys", "--service", "web"), "none yet", "opsbot index")


@pytest.mark.parametrize("command", ["deploys", "dora"])
def test_an_empty_service_or_env_is_refused_not_read_as_all(command: str) -> None:
    assert_clean_failure(invoke(command, "--service", ""), "--service is empty", "leave the option out")
    assert_clean_failure(invoke(command, "--env", " "), "--env is empty")


@pytest.mark.parametrize(
    "command",
    [
        ("deploys",),
        ("audit",),
        ("dora",),
        ("alerts",),
        ("incidents", "list"),
        ("oncall",),
        ("feedback",),
        ("channels", "list"),
        ("channels", "set", "C04ALERTS1", "all"),
        ("withdraw", "dep-20261206-7273cf"),
        ("ask", "pgbouncer pool exhausted"),
        ("experts", "pgbouncer pool exhausted"),
        ("incidents", "export", "INC-2026-0001"),
    ],
)
def test_a_database_that_does_not_exist_is_refused_not_made_empty(command: tuple[str, ...]) -> None:
    result = invoke(*command)  # as in a folder where opsbot never ran

    assert_clean_failure(result, "does not exist: opsbot's database is made by `opsbot index`", "set OPSBOT_DB")
    assert not Path(os.environ["OPSBOT_DB"]).exists()


def test_a_file_that_is_not_a_database_is_a_clear_error(tmp_path: Path) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("not sqlite\n")
    for command in COMMANDS:
        result = invoke(command, env={"OPSBOT_DB": str(notes)})
        assert_clean_failure(result, "is not an opsbot database", "point OPSBOT_DB at the file `opsbot index` writes")


# -- opsbot audit --------------------------------------------------------------------------------


def test_audit_prints_the_trail_with_people_by_name(history: History) -> None:
    result = invoke("audit")

    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert len(lines) == 11
    assert f"Alice Archer  deploy.requested  {history.staging}  service=web env=staging version=1.0.0" in lines[0]
    assert any(f"Carol Cruz  deploy.rejected  {history.rejected}" in line for line in lines)
    assert f"opsbot  deploy.finished  {history.prod}  status=succeeded exit_code=0" in lines[8]
    assert lines[-1].endswith(f"Carol Cruz  deploy.rejected  {history.rejected}")
    assert lines[7].endswith(f"opsbot  deploy.started  {history.prod}  approvers=Bob Baker, Carol Cruz")
    assert not any(uid in result.stdout for uid in (ALICE, BOB, CAROL))


def test_audit_json(history: History) -> None:
    rows = json.loads(invoke("audit", "--json").stdout)

    assert [r["action"] for r in rows][:4] == [
        "deploy.requested",
        "deploy.approved",
        "deploy.started",
        "deploy.finished",
    ]
    assert rows[2]["details"] == {"approvers": [BOB]}  # ids, for scripts
    assert rows[0]["actor"] == ALICE
    assert all(datetime.fromisoformat(r["at"]).tzinfo for r in rows)


def test_audit_csv(history: History) -> None:
    result = invoke("audit", "--csv")

    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert list(rows[0]) == ["at", "actor", "actor_name", "action", "request_id", "details"]
    assert len(rows) == 11
    assert rows[0]["actor"] == ALICE and rows[0]["request_id"] == history.staging
    assert rows[0]["actor_name"] == "Alice Archer"
    assert json.loads(rows[0]["details"]) == {"env": "staging", "service": "web", "version": "1.0.0"}
    started = next(r for r in rows if r["action"] == "deploy.started" and r["request_id"] == history.prod)
    assert json.loads(started["details"]) == {"approvers": [BOB, CAROL]}  # a list with a comma, quoted by csv


def test_audit_empty_and_both_formats() -> None:
    Store(os.environ["OPSBOT_DB"]).close()  # made by `opsbot index`, nothing recorded yet
    assert invoke("audit").stdout == "The audit trail is empty: no deploy has been requested yet.\n"
    assert invoke("audit", "--csv").stdout == "at,actor,actor_name,action,request_id,details\n"
    assert_clean_failure(invoke("audit", "--json", "--csv"), "choose one of --json and --csv")


def test_audit_prints_every_row_however_many_there_are(history: History) -> None:
    store = Store(os.environ["OPSBOT_DB"])
    with store.transaction():
        for n in range(10_050):
            store.audit(ALICE, "deploy.requested", f"dep-bulk-{n:05d}", service="web", env="staging")
    store.close()

    for args in ((), ("--csv",), ("--json",)):
        result = invoke("audit", *args)
        assert result.exit_code == 0, result.output
        assert result.stderr == ""
        text = result.stdout
        assert history.staging in text and "dep-bulk-00000" in text and "dep-bulk-10049" in text, args
        if args == ("--json",):
            assert len(json.loads(text)) == 11 + 10_050
        else:
            assert len(text.splitlines()) == 11 + 10_050 + (1 if args else 0), args


# -- opsbot dora ---------------------------------------------------------------------------------


def test_dora_and_the_digest_default_to_the_environment_incidents_hit(tmp_path: Path) -> None:
    """With `production` and `staging` and no `prod`, the figures default to production, not to nothing."""
    store = Store(os.environ["OPSBOT_DB"])
    renamed = SERVICES.replace("      prod:", "      production:")
    assert renamed != SERVICES and "prod:" not in renamed.replace("production:", "")
    renamed = renamed.replace("settings:\n", "settings:\n  weekly_digest: {channel: C0DEPLOYS1}\n", 1)
    assert "weekly_digest" in renamed
    index_knowledge(store, FakeEncoder(), make_knowledge(tmp_path / "knowledge", renamed))
    insert(store, deploy(datetime.now(UTC) - timedelta(days=1), env="production"))

    result = invoke("dora")

    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[0] == "All services in production, last 30 days"
    assert "Deploys: 1 in 7 days" in result.stdout
    assert DeployService.from_store(store).settings.digest.env == "production"


def test_dora_prints_the_line_and_details(history: History) -> None:
    result = invoke("dora")

    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == "All services in prod, last 30 days"
    assert lines[1] == (
        "Deploys: 2 in 7 days, 2 in 30 · change failure rate 0% (0/2) · time to restore n/a · lead time 2.0 h"
    )
    assert "deploys in the period: 2 (0.5 a week)" in result.stdout
    assert "within 24 h" in result.stdout


def test_dora_over_another_period_says_which_the_failure_rate_covers_and_reads_durations_alike(
    history: History,
) -> None:
    result = invoke("dora", "--days", "7")

    assert result.exit_code == 0, result.output
    # the deploy counts are of 7 and 30 days whatever the period; the rate is of the period, and says so
    assert "change failure rate 0% (0/2) over 7 days" in result.stdout
    assert "lead time 2.0 h" in result.stdout.splitlines()[1]
    assert "lead time (median, commit to deploy): 2.0 h" in result.stdout
    one_day = invoke("dora", "--days", "1").stdout
    assert one_day.splitlines()[0] == "All services in prod, last 1 day"  # not "last 1 days"
    assert " over 1 day ·" in one_day


def test_dora_json_and_filters(history: History) -> None:
    figures = json.loads(invoke("dora", "--json", "--service", "web", "--env", "staging", "--days", "7").stdout)

    assert figures["service"] == "web" and figures["env"] == "staging" and figures["days"] == 7
    assert figures["deploys_7d"] == 1 and figures["changes"] == 1
    assert figures["change_failure_rate"] == 0 and figures["failure_window_hours"] == 24
    assert figures["per_week"] == 1
    assert figures["line"].startswith("Deploys: 1 in 7 days")


def test_dora_uses_the_failure_window_from_services_yaml(history: History) -> None:
    store = Store(os.environ["OPSBOT_DB"])
    ci_finished = history.started + timedelta(hours=3)
    store.replace_incidents([incident(ci_finished + timedelta(hours=5), "web", 25)])
    store.close()

    wide = json.loads(invoke("dora", "--json").stdout)  # 5 h after the CI deploy, 7 h after the Slack one
    # only the last deploy before the incident is blamed: the Slack one had been replaced by the CI one
    assert (wide["failed_changes"], wide["changes"], wide["time_to_restore_min"]) == (1, 2, 25)

    store = Store(os.environ["OPSBOT_DB"])
    store.set_meta("deploy_settings", json.dumps({"failure_window_hours": 2}))
    store.close()
    narrow = invoke("dora")

    assert "change failure rate 0% (0/2)" in narrow.stdout
    assert "within 2 h" in narrow.stdout


def test_dora_on_an_empty_database() -> None:
    Store(os.environ["OPSBOT_DB"]).close()  # made by `opsbot index`, nothing recorded yet
    result = invoke("dora")

    assert result.exit_code == 0, result.output
    assert "Deploys: 0 in 7 days, 0 in 30 · change failure rate n/a" in result.stdout


def test_dora_errors_are_clean(history: History) -> None:
    assert_clean_failure(invoke("dora", "--service", "nope"), "no service 'nope'", "known services")
    assert_clean_failure(invoke("dora", "--env", "production"), "no environment 'production'")
    store = Store(os.environ["OPSBOT_DB"])
    store.set_meta("deploy_settings", json.dumps({"failure_window_hours": 0}))
    store.close()
    assert_clean_failure(invoke("dora"), "settings.failure_window_hours", "run `opsbot index`")
    assert invoke("dora", "--days", "0").exit_code == 2


# -- opsbot notify-deploy ------------------------------------------------------------------------

NOTIFY = ("notify-deploy", "--service", "web", "--env", "prod", "--version", "2.0.0")
HOOK_ENV = {"OPSBOT_HOOK_SECRET": "0123456789abcdef0123456789abcdef"}


def test_notify_deploy_refuses_what_it_would_ignore(history: History) -> None:
    db = os.environ["OPSBOT_DB"]
    url = ("--url", "http://opsbot.internal:3000/hooks/deploy")
    assert_clean_failure(invoke(*NOTIFY, "--db", db, *url), "--db records into a database instead", "give one")
    finished = ("--status", "started", "--finished-at", "2026-11-20T10:00:00Z")
    assert_clean_failure(invoke(*NOTIFY, "--db", db, *finished), "--finished-at is for the event that ends")
    assert_clean_failure(invoke(*NOTIFY, "--db", db, "--event-id", ""), "--event-id is empty")
    ancient = invoke(*NOTIFY, "--db", db, "--commit-time", "0001-01-01T00:00:00+01:00")  # year 0 in UTC
    assert_clean_failure(ancient, "--commit-time", "falls outside the years 0001 to 9999")
    assert_clean_failure(invoke(*NOTIFY, "--db", ""), "--db is empty")
    assert_clean_failure(invoke(*NOTIFY, "--url", "", env=HOOK_ENV), "--url is empty")
    assert json.loads(invoke("deploys", "--json", "--limit", "1").stdout)[0]["id"] == history.ci  # nothing recorded
    # Empty metadata means "not known": pipelines pass variables that are sometimes unset.
    unknown = invoke(*NOTIFY, "--db", db, "--commit-sha", "", "--commit-time", "", "--change", "")
    assert unknown.exit_code == 0, unknown.output


def test_notify_deploy_says_an_empty_required_option_may_be_an_unset_ci_variable(history: History) -> None:
    # GitLab's $CI_ENVIRONMENT_NAME is empty in a job without `environment:`; "or leave the option out" was wrong.
    empty = invoke(
        "notify-deploy", "--service", "web", "--env", "", "--version", "2.0.0", "--db", os.environ["OPSBOT_DB"]
    )
    assert_clean_failure(empty, "--env is empty: give a value (from a CI variable: check it is set in this job)")
    assert "leave the option out" not in empty.stderr


def test_notify_deploy_says_a_repeated_report_under_another_event_id_repeats_the_run_recorded(history: History) -> None:
    db = os.environ["OPSBOT_DB"]
    finished = ("--status", "succeeded", "--finished-at", datetime.now(UTC).isoformat(timespec="seconds"))
    first = invoke(*NOTIFY, "--db", db, "--event-id", "run-101", *finished)
    run_id = json.loads(invoke("deploys", "--json", "--limit", "1").stdout)[0]["id"]

    again = invoke(*NOTIFY, "--db", db, "--event-id", "run-101-finished", *finished)

    assert first.exit_code == 0 and again.exit_code == 0, again.output
    # Before: "event run-101-finished was already recorded", an id never seen.
    assert f"this run is already recorded, as {run_id} (a repeat of its report)" in again.output
    assert "run-101-finished was already recorded" not in again.output


def test_notify_deploy_refuses_an_environment_services_yaml_does_not_configure(history: History) -> None:
    db = os.environ["OPSBOT_DB"]
    typo = ("notify-deploy", "--service", "web", "--env", "production", "--version", "2.0.0", "--db", db)
    assert_clean_failure(invoke(*typo), "unknown environment 'production' for web; services.yaml has prod, staging")
    assert "production" not in invoke("deploys", "--json").stdout
    # A service on the roster without environments in services.yaml may report any environment.
    other = invoke("notify-deploy", "--service", "owners-only", "--env", "eu-canary", "--version", "1.0.0", "--db", db)
    assert other.exit_code == 0, other.output


def test_notify_deploy_into_a_database_on_a_full_disk_says_so_and_records_nothing(
    history: History, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Before, the write failed at its COMMIT, after the checks on opening: a traceback, "database or disk is full".
    db = os.environ["OPSBOT_DB"]

    def open_on_a_full_disk(path: Path, source: str) -> Store:
        store = Store(path)
        store.db.execute("VACUUM")  # no free pages left inside the file either
        pages = store.db.execute("PRAGMA page_count").fetchone()[0]
        store.db.execute(f"PRAGMA max_page_count = {pages}")  # not one page more
        return store

    monkeypatch.setattr(notify_cli, "open_db", open_on_a_full_disk)
    changes = [a for n in range(40) for a in ("--change", f"change {n} " + "x" * 280)]  # more than a page holds
    full = invoke(*NOTIFY, "--db", db, "--event-id", "run-full", "--status", "succeeded", *changes)

    assert_clean_failure(full, f"the disk holding the database {db} is full", "set --db to a path on another disk")
    assert "The event was not recorded; send it again once the database can be written." in full.stderr
    assert json.loads(invoke("deploys", "--json", "--limit", "1").stdout)[0]["id"] == history.ci  # nothing recorded


def test_notify_deploy_into_a_file_that_is_not_a_database(tmp_path: Path) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("not sqlite\n")
    assert_clean_failure(invoke(*NOTIFY, "--db", str(notes)), "is not an opsbot database", "point --db at")
    assert notes.read_text() == "not sqlite\n"


@pytest.mark.parametrize("url", ["http://[::1", "http://127.0.0.1:abc/hooks/deploy", "http://127.0.0.1/hooks deploy"])
def test_notify_deploy_to_a_malformed_url(url: str) -> None:
    assert_clean_failure(invoke(*NOTIFY, "--url", url, env=HOOK_ENV), f"--url {url!r} is not a valid URL")
    from_env = invoke(*NOTIFY, env=HOOK_ENV | {"OPSBOT_HOOK_URL": url})
    assert_clean_failure(from_env, f"OPSBOT_HOOK_URL {url!r} is not a valid URL")


class QuietHandler(BaseHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


def notify_to(handler: type[BaseHTTPRequestHandler], path: str = "/hooks/deploy") -> Result:
    """`opsbot notify-deploy` against a local server answering with ``handler``."""
    server = HTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        return invoke(*NOTIFY, "--url", f"http://127.0.0.1:{server.server_port}{path}", env=HOOK_ENV)
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize(
    "url",
    ["https://ci-bot:hunter2-S3cret@127.0.0.1:1/hooks/deploy", "https://127.0.0.1:1/hooks/deploy?token=hunter2-S3cret"],
)
def test_notify_deploy_never_prints_credentials_in_the_url(url: str) -> None:
    # Before, "could not reach https://ci-bot:hunter2-S3cret@…" went to the CI log.
    from_env = invoke(*NOTIFY, env=HOOK_ENV | {"OPSBOT_HOOK_URL": url})
    for result in (invoke(*NOTIFY, "--url", url, env=HOOK_ENV), from_env):
        assert_clean_failure(result, "holds a user, password or query string (https://127.0.0.1:1/hooks/deploy")
        assert "hunter2" not in result.output


def test_notify_deploy_never_prints_credentials_in_a_url_without_its_scheme() -> None:
    # Without http://, "ci-bot:pw@host" reads as a path: the check for a user and password passed it, and the
    # "must start with http://" errors (of notify-deploy and of the configuration) printed it whole.
    url = "ci-bot:hunter2-S3cret@127.0.0.1:1/hooks/deploy"
    given = invoke(*NOTIFY, "--url", url, env=HOOK_ENV)
    assert_clean_failure(given, "--url holds a user, password or query string")
    from_env = invoke(*NOTIFY, env=HOOK_ENV | {"OPSBOT_HOOK_URL": url})
    assert_clean_failure(from_env, "OPSBOT_HOOK_URL=(not shown: it holds an @ or a ?) must start with http://")
    for result in (given, from_env):
        assert "hunter2" not in result.output


def test_notify_deploy_to_a_server_whose_error_answer_is_cut_short() -> None:
    # A proxy's 502 that closed before its body ended: the read of the body raised, and a traceback was printed.
    class Cut(QuietHandler):
        def do_POST(self) -> None:  # noqa: N802 - the name http.server calls
            self.rfile.read(int(self.headers["Content-Length"]))
            self.send_response(502)
            self.send_header("Content-Length", "1000")
            self.end_headers()
            self.wfile.write(b"Bad G")
            self.close_connection = True

    result = notify_to(Cut)
    assert_clean_failure(result, "opsbot refused the event (HTTP 502): Bad Gateway")


def test_notify_deploy_to_something_that_is_not_opsbot() -> None:
    class WebPage(QuietHandler):
        def do_POST(self) -> None:  # noqa: N802 - the name http.server calls
            self.rfile.read(int(self.headers["Content-Length"]))
            body = b"<html>Welcome</html>"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    result = notify_to(WebPage, "/")
    assert_clean_failure(result, "answered, but not as opsbot does", "/hooks/deploy")


@pytest.mark.parametrize(
    ("status", "body", "told"),
    [
        (502, b"null", "opsbot refused the event (HTTP 502): Bad Gateway"),
        (400, b'["bad request"]', "opsbot refused the event (HTTP 400): Bad Request"),
        (400, b'{"error": "bad field", "field": 7}', "opsbot refused the event (HTTP 400): bad field"),
        (200, b'{"status": "ok"}', "answered, but not as opsbot does"),
        (200, b'{"id": 7, "action": ["started"]}', "answered, but not as opsbot does"),
    ],
)
def test_notify_deploy_to_json_that_is_not_opsbots_answer(status: int, body: bytes, told: str) -> None:
    # These printed a traceback, or (the 200s) "sent as None" with exit code 0.
    class Proxy(QuietHandler):
        def do_POST(self) -> None:  # noqa: N802 - the name http.server calls
            self.rfile.read(int(self.headers["Content-Length"]))
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    result = notify_to(Proxy)
    assert_clean_failure(result, told)


# -- opsbot withdraw ----------------------------------------------------------------------------------


def test_withdraw_releases_a_pending_requests_lock_and_refuses_anything_else(history: History) -> None:
    store = Store(os.environ["OPSBOT_DB"])
    deploys = DeployService.from_store(store)
    waiting = deploys.request("deploy", "web", "staging", "1.1.0", ALICE)  # its message lost with a closed shell
    with pytest.raises(PermissionDenied, match=f"an admin can run `opsbot withdraw {waiting.id}`"):
        deploys.request("deploy", "web", "staging", "1.2.0", BOB)
    store.close()

    result = invoke("withdraw", waiting.id, "--reason", "typed in a closed shell")
    again = invoke("withdraw", waiting.id)
    done = invoke("withdraw", history.staging)

    assert result.exit_code == 0, result.output
    assert f"Withdrew {waiting.id} (deploy web 1.1.0 to staging)" in result.stdout
    assert_clean_failure(again, f"{waiting.id} is rejected, not pending")
    assert_clean_failure(done, f"{history.staging} is succeeded, not pending")
    assert_clean_failure(invoke("withdraw", "dep-20990101-000000"), "no deploy request 'dep-20990101-000000'")
    store = Store(os.environ["OPSBOT_DB"])
    try:
        row = store.deploy_row(waiting.id)
        assert (row["status"], store.lock_holder("web", "staging")) == ("rejected", None)
        [audited] = [r for r in store.audit_rows() if r["action"] == "deploy.withdrawn"]
        assert audited["actor"].startswith("cli:") and audited["details"]["reason"] == "typed in a closed shell"
        assert DeployService.from_store(store).request("deploy", "web", "staging", "1.2.0", BOB).status == "pending"
    finally:
        store.close()


def test_withdraw_stops_waiting_for_a_pipelines_report_and_says_the_pipeline_goes_on(history: History) -> None:
    store = Store(os.environ["OPSBOT_DB"])
    waiting = DeployService.from_store(store).request("deploy", "web", "staging", "1.1.0", ALICE)
    with store.transaction():  # as a webhook with await_report leaves it once its pipeline took the trigger
        store.update_deploy(waiting.id, status="awaiting_ci", started_at=datetime.now(UTC).isoformat())
    store.close()

    result = invoke("withdraw", waiting.id, "--reason", "pipeline hung")

    assert result.exit_code == 0, result.output
    assert f"Stopped waiting for the pipeline of {waiting.id}" in result.stdout and "was not stopped" in result.stdout
    store = Store(os.environ["OPSBOT_DB"])
    try:
        row = store.deploy_row(waiting.id)
        assert (row["status"], store.lock_holder("web", "staging")) == ("abandoned", None)
        assert row["note"].endswith(": pipeline hung") and row["note"].startswith("given up on from the command line")
    finally:
        store.close()


def test_withdrawing_a_request_whose_time_ran_out_leaves_it_expired_and_its_lock_released(history: History) -> None:
    store = Store(os.environ["OPSBOT_DB"])
    clock = Clock(datetime.now(UTC) - timedelta(hours=2))
    waiting = DeployService.from_store(store, clock=clock).request("deploy", "web", "staging", "1.1.0", ALICE)
    store.close()

    result = invoke("withdraw", waiting.id)  # two hours later: past its 30 minutes

    assert_clean_failure(result, f"{waiting.id} is expired, not pending")
    store = Store(os.environ["OPSBOT_DB"])
    try:
        assert (store.deploy_row(waiting.id)["status"], store.lock_holder("web", "staging")) == ("expired", None)
    finally:
        store.close()


def test_the_login_recorded_is_the_systems_and_holds_no_markup(monkeypatch: pytest.MonkeyPatch) -> None:
    import pwd

    from bot.cli.deploys import login

    monkeypatch.setenv("USER", "someone-else")  # what anyone can set: not read
    assert login() == pwd.getpwuid(os.geteuid()).pw_name.translate({ord(c): "_" for c in "*<>!`\n "})
    monkeypatch.setattr(pwd, "getpwuid", lambda uid: type("P", (), {"pw_name": "ops*admin <!channel>\n`x"})())
    assert login() == "ops_admin___channel___x"
    monkeypatch.setattr(pwd, "getpwuid", lambda uid: (_ for _ in ()).throw(KeyError(uid)))  # no passwd entry
    assert login() == f"uid-{os.geteuid()}"
