"""`opsbot incidents list` and `opsbot incidents export`: incidents declared in Slack, on the command line."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from bot.knowledge import load_knowledge
from bot.ops.incidents import IncidentService
from bot.store import Store
from tests.cli.test_database import unprivileged
from tests.conftest import ROOT, SAMPLE_KNOWLEDGE, assert_clean_failure, invoke
from tests.fakes import Clock

PRIYA = "U03F8K2LQ1"
DANIEL = "U04C2RN8VD"


@pytest.fixture
def knowledge(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A knowledge directory with the sample roster, so responders are checked against it."""
    root = tmp_path / "knowledge"
    root.mkdir()
    shutil.copy(SAMPLE_KNOWLEDGE / "experts.yaml", root / "experts.yaml")
    monkeypatch.setenv("OPSBOT_KNOWLEDGE", str(root))
    return root


@pytest.fixture
def incidents(tmp_path: Path) -> Iterator[IncidentService]:
    """The database that the CLI opens (OPSBOT_DB points at tmp_path), with one resolved and one open incident."""
    store = Store(tmp_path / "opsbot.db")
    clock = Clock(datetime(2026, 3, 4, 9, 0, tzinfo=UTC), step=timedelta(minutes=1))  # each reading a minute on
    service = IncidentService(store, {"checkout-api", "order-pipeline"}, clock=clock)
    resolved = service.declare("Checkout 503s: pgbouncer pool exhausted", PRIYA, 2, ["checkout-api"], "C0OPS0001")
    service.note(resolved, PRIYA, "pg-main at max_client_conn 400")
    service.assign(resolved, PRIYA, DANIEL, "lead")
    service.pin(resolved, DANIEL, "Raised default_pool_size to 40; 503s stopped")
    service.resolve(resolved, DANIEL, "Raised the pgbouncer pool and restarted checkout-api pods")
    service.declare("Kafka consumer lag on orders", PRIYA, 3, ["order-pipeline"], "C0OPS0001")
    yield service
    store.close()


def test_list_shows_open_incidents_or_all(incidents: IncidentService) -> None:
    result = invoke("incidents", "list")
    assert result.exit_code == 0, result.output
    assert "INC-2026-0002  SEV3  open  Kafka consumer lag on orders  [order-pipeline]" in result.stdout
    assert "INC-2026-0001" not in result.stdout

    result = invoke("incidents", "list", "--all")
    assert (
        "INC-2026-0001  SEV2  resolved after 4 min  Checkout 503s" in result.stdout and "INC-2026-0002" in result.stdout
    )

    listed = json.loads(invoke("incidents", "list", "--all", "--json").stdout)
    assert [i["id"] for i in listed] == ["INC-2026-0002", "INC-2026-0001"]
    first = listed[1]
    assert first["responders"] == [DANIEL, PRIYA] and first["minutes_to_restore"] == 4
    assert [e["kind"] for e in first["timeline"]] == ["declared", "note", "assigned", "pinned", "resolved"]


def test_list_without_incidents_says_so(tmp_path: Path) -> None:
    Store(tmp_path / "opsbot.db").close()
    assert invoke("incidents", "list").stdout == "No open incidents.\n"
    assert invoke("incidents", "list", "--all").stdout == "No incidents declared in Slack yet.\n"


def test_export_writes_a_knowledge_file_that_loads_without_problems(
    incidents: IncidentService, knowledge: Path
) -> None:
    result = invoke("incidents", "export")
    assert result.exit_code == 0, result.output
    path = knowledge / "incidents" / "2026" / "INC-2026-0001.yaml"
    assert result.stdout == f"wrote {path}\n"  # only the resolved one

    kb = load_knowledge(knowledge)
    assert kb.problems == []
    (incident,) = kb.incidents
    assert (incident.id, incident.severity, incident.services) == ("INC-2026-0001", 2, ("checkout-api",))
    assert incident.responders == (DANIEL, PRIYA) and incident.duration_minutes == 4
    assert incident.resolution == "Raised the pgbouncer pool and restarted checkout-api pods"
    # the title and the notes as sentences, not run together ("… exhausted pg-main at …")
    assert incident.summary == (
        "Checkout 503s: pgbouncer pool exhausted. pg-main at max_client_conn 400. "
        "Raised default_pool_size to 40; 503s stopped."
    )
    assert incident.date == datetime(2026, 3, 4, 9, 1, tzinfo=UTC)
    assert [t.event for t in incident.timeline][-1].startswith("Resolved: Raised the pgbouncer pool")

    again = invoke("incidents", "export", "INC-2026-0001")
    assert again.exit_code == 0 and again.stdout == f"{path}: unchanged\n"


def test_an_incident_worked_in_a_private_channel_is_exported_only_when_named_and_listed_as_private(
    incidents: IncidentService, knowledge: Path
) -> None:
    secret = incidents.declare("Signing key in a public gist", PRIYA, 1, ["checkout-api"], "C0SECURE1", private=True)
    incidents.resolve(secret, PRIYA, "Rotated the key")

    result = invoke("incidents", "export")
    assert result.exit_code == 0, result.output
    folder = knowledge / "incidents" / "2026"
    assert result.stdout == (
        f"wrote {folder / 'INC-2026-0001.yaml'}\n"
        f"left out 1 incident(s) worked in a private channel ({secret.id}): a file in the knowledge directory is "
        "searchable from every channel; name one to export it.\n"
    )
    assert not (folder / f"{secret.id}.yaml").exists()
    named = invoke("incidents", "export", secret.id)
    assert named.exit_code == 0 and named.stdout == f"wrote {folder / f'{secret.id}.yaml'}\n"

    listed = invoke("incidents", "list", "--all").stdout.splitlines()
    assert [line.endswith("  private") for line in listed] == [True, False, False]
    assert [i["private"] for i in json.loads(invoke("incidents", "list", "--all", "--json").stdout)] == [
        True,
        False,
        False,
    ]


def test_export_refuses_to_overwrite_a_changed_file_unless_forced(
    incidents: IncidentService, knowledge: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    assert invoke("incidents", "export", "inc-2026-0001", "--out", str(out)).exit_code == 0
    path = out / "INC-2026-0001.yaml"
    path.write_text(path.read_text() + "# edited by hand\n")

    refused = invoke("incidents", "export", "INC-2026-0001", "--out", str(out))
    assert refused.exit_code == 1 and "exists with other content; pass --force to overwrite it" in refused.stderr
    assert path.read_text().endswith("# edited by hand\n")

    forced = invoke("incidents", "export", "INC-2026-0001", "--out", str(out), "--force")
    assert forced.exit_code == 0 and forced.stdout == f"wrote {path}\n"
    assert "# edited by hand" not in path.read_text()


def test_export_over_a_file_that_is_not_utf8_is_refused_then_forced_and_keeps_its_mode(
    incidents: IncidentService, knowledge: Path, tmp_path: Path
) -> None:
    # Before, a file in another encoding ended the export in a traceback, --force or not; and a forced export (or a
    # new file) was readable by its owner alone, though the bot may run as another user.
    out = tmp_path / "out"
    out.mkdir()
    path = out / "INC-2026-0001.yaml"
    path.write_bytes(b"title: caf\xe9\n")
    path.chmod(0o644)

    refused = invoke("incidents", "export", "INC-2026-0001", "--out", str(out))
    assert refused.exit_code == 1 and "exists with other content; pass --force to overwrite it" in refused.stderr
    assert "Traceback" not in refused.output and path.read_bytes() == b"title: caf\xe9\n"

    forced = invoke("incidents", "export", "INC-2026-0001", "--out", str(out), "--force")
    assert forced.exit_code == 0 and forced.stdout == f"wrote {path}\n"
    assert path.stat().st_mode & 0o777 == 0o644
    path.unlink()
    fresh = invoke("incidents", "export", "INC-2026-0001", "--out", str(out))
    assert fresh.exit_code == 0, fresh.output
    assert path.stat().st_mode & 0o044 == 0o044  # a new file: group and others may read it, as the umask allows


def test_export_of_an_open_or_unknown_incident_is_refused(incidents: IncidentService, knowledge: Path) -> None:
    result = invoke("incidents", "export", "INC-2026-0002")
    assert result.exit_code == 1 and "INC-2026-0002 is still open: resolve it first" in result.stderr
    result = invoke("incidents", "export", "INC-2026-0042")
    assert result.exit_code == 1 and "no incident INC-2026-0042 was declared with `/incident`" in result.stderr
    assert "`opsbot incidents list --all`" in result.stderr
    result = invoke("incidents", "export", "INC-42")
    assert result.exit_code == 1 and "'INC-42' is not an incident id" in result.stderr
    assert not (knowledge / "incidents").exists()


def test_a_past_incident_of_the_knowledge_files_is_named_as_such_not_as_unknown(
    incidents: IncidentService, knowledge: Path
) -> None:
    """Its id is one people know, from the knowledge files: "no incident" would send them looking for a typo."""
    [past] = load_knowledge(SAMPLE_KNOWLEDGE).incidents[:1]
    incidents.store.upsert_incident(past, "")
    result = invoke("incidents", "export", past.id)
    assert result.exit_code == 1
    assert f"{past.id} is a past incident from the knowledge files ({past.path})" in result.stderr
    assert "Traceback" not in result.output


def test_an_incident_without_a_service_needs_one_named(incidents: IncidentService, tmp_path: Path) -> None:
    bare = incidents.declare("Something odd", PRIYA)
    incidents.resolve(bare, PRIYA, "Went away")
    result = invoke("incidents", "export", bare.id, "--out", str(tmp_path / "out"))
    assert result.exit_code == 1 and "names no service" in result.stderr and "--service NAME" in result.stderr
    result = invoke("incidents", "export", bare.id, "--out", str(tmp_path / "out"), "--service", "checkout-api")
    assert result.exit_code == 0, result.output
    assert "- checkout-api" in (tmp_path / "out" / f"{bare.id}.yaml").read_text()


def test_help_has_examples() -> None:
    for args in (["incidents"], ["incidents", "list"], ["incidents", "show"], ["incidents", "export"]):
        result = invoke(*args, "--help")
        assert result.exit_code == 0 and "Example" in result.stdout and "opsbot incidents" in result.stdout


def test_export_refuses_an_empty_id_or_option(incidents: IncidentService, knowledge: Path) -> None:
    assert_clean_failure(invoke("incidents", "export", ""), "an incident id is empty", "INC-2026-0042")
    assert_clean_failure(invoke("incidents", "export", "--out", ""), "--out is empty")
    assert_clean_failure(invoke("incidents", "export", "--service", " "), "--service is empty")
    assert not (knowledge / "incidents").exists()


def test_export_refuses_a_service_it_would_not_use_or_does_not_know(incidents: IncidentService, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = invoke("incidents", "export", "INC-2026-0001", "--out", str(out), "--service", "order-pipeline")
    assert_clean_failure(result, "--service is for incidents declared without a service", "INC-2026-0001 names one")
    bare = incidents.declare("Something odd", PRIYA)
    incidents.resolve(bare, PRIYA, "Went away")
    result = invoke("incidents", "export", bare.id, "--out", str(out), "--service", "chekout-api")
    assert_clean_failure(result, "unknown service 'chekout-api'", "known services: checkout-api, order-pipeline")
    assert not out.exists()


def test_export_to_a_folder_that_cannot_be_made_is_a_clean_error(incidents: IncidentService, tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("")
    result = invoke("incidents", "export", "INC-2026-0001", "--out", str(tmp_path / "a-file" / "sub"))
    assert_clean_failure(result, "INC-2026-0001.yaml could not be written", "choose another --out folder")


def test_a_forced_export_that_fails_midway_leaves_the_file_as_it_was(
    incidents: IncidentService, knowledge: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    path = out / "INC-2026-0001.yaml"
    path.write_text("# written by hand: keep me\n", encoding="utf-8")

    def disk_full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)  # the new text is written, not yet on disk: the disk fills up
    result = invoke("incidents", "export", "INC-2026-0001", "--out", str(out), "--force")

    assert_clean_failure(result, "INC-2026-0001.yaml could not be written (No space left on device)")
    assert path.read_text(encoding="utf-8") == "# written by hand: keep me\n"
    assert [p.name for p in out.iterdir()] == ["INC-2026-0001.yaml"]  # no half-written file left beside it


def test_export_to_a_read_only_folder_is_a_clean_error_and_writes_nothing(
    incidents: IncidentService, knowledge: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    out.chmod(0o555)
    try:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SLACK_", "OPSBOT_"))}
        env |= {"OPSBOT_DB": str(tmp_path / "opsbot.db"), "OPSBOT_KNOWLEDGE": str(knowledge), "PYTHONPATH": str(ROOT)}
        result = subprocess.run(
            [*unprivileged(), sys.executable, "-m", "bot", "incidents", "export", "--out", str(out)],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
        )
        assert result.returncode == 1, result.stderr
        assert "INC-2026-0001.yaml could not be written (Permission denied); choose another --out folder" in (
            result.stderr
        )
        assert "Traceback" not in result.stdout + result.stderr and list(out.iterdir()) == []
    finally:
        out.chmod(0o755)


def test_export_writes_the_recorded_root_cause_and_environment_and_skips_cancelled_ones(
    incidents: IncidentService, knowledge: Path
) -> None:
    cause = "default_pool_size 20 left from the 1.4.2 rollout"
    resolved = incidents.declare("Search empty in staging", PRIYA, 3, ["checkout-api"], "C0OPS0001", env="staging")
    incidents.set_root_cause(resolved, DANIEL, cause)
    incidents.resolve(resolved, DANIEL, "Restored the index")
    mistake = incidents.declare("Test alert", PRIYA, 4, ["order-pipeline"], "C0OPS0001")
    incidents.cancel(mistake, PRIYA, "a drill")

    result = invoke("incidents", "export")
    assert result.exit_code == 0, result.output
    assert "INC-2026-0003.yaml" in result.stdout and "INC-2026-0004" not in result.stdout
    kb = load_knowledge(knowledge)
    assert kb.problems == []
    written = {i.id: i for i in kb.incidents}
    assert (written["INC-2026-0003"].root_cause, written["INC-2026-0003"].env) == (cause, "staging")
    assert written["INC-2026-0001"].root_cause == "Not recorded in Slack; see the timeline."

    refused = invoke("incidents", "export", "INC-2026-0004")
    assert refused.exit_code == 1 and "INC-2026-0004 was cancelled (declared by mistake)" in refused.stderr
    listed = invoke("incidents", "list", "--all").stdout
    assert "INC-2026-0004  SEV4  cancelled  Test alert  [order-pipeline]  prod" in listed


def test_index_makes_an_incident_resolved_in_slack_but_never_indexed_searchable(
    incidents: IncidentService, knowledge: Path
) -> None:
    # The fixture resolved INC-2026-0001 without indexing it, as a bot killed right after the resolve leaves it.
    store = incidents.store
    assert [i.id for i in incidents.unlearned()] == ["INC-2026-0001"]

    result = invoke("index", "--nice", "0", str(knowledge))

    assert result.exit_code == 0, result.output
    assert "Indexed 1 incident(s) resolved in Slack that the bot had not indexed: INC-2026-0001." in result.stdout
    assert {i.id for i in store.load_incidents()} == {"INC-2026-0001"}
    assert "slack:INC-2026-0001" in store.document_hashes()
    assert incidents.unlearned() == []
    again = json.loads(invoke("index", "--nice", "0", "--json", str(knowledge)).stdout)
    assert again["resolved_incidents_indexed"] == []


def test_the_command_line_reads_an_incident_without_an_environment_as_services_yaml_says(
    incidents: IncidentService,
) -> None:
    # Declared before incidents had an environment: the one services.yaml's settings.incident_env names, as in Slack.
    store = incidents.store
    with store.transaction():
        store.update_live_incident("INC-2026-0002", env="")
    store.set_meta("deploy_settings", json.dumps({"incident_env": "production"}))
    listed = invoke("incidents", "list").stdout
    assert "INC-2026-0002  SEV3  open  Kafka consumer lag on orders  [order-pipeline]  production" in listed


def test_an_incident_whose_exported_file_was_deleted_stays_out_of_the_index(
    incidents: IncidentService, knowledge: Path
) -> None:
    assert invoke("index", "--nice", "0", str(knowledge)).exit_code == 0  # indexed late, as the bot's start does
    assert invoke("incidents", "export", "INC-2026-0001").exit_code == 0
    written = knowledge / "incidents" / "2026" / "INC-2026-0001.yaml"
    assert written.is_file() and invoke("index", "--nice", "0", str(knowledge)).exit_code == 0

    written.unlink()  # the team decided this incident should not be searched
    result = invoke("index", "--nice", "0", str(knowledge))

    assert result.exit_code == 0, result.output
    assert "INC-2026-0001" not in result.stdout and "removed" in result.stdout
    assert incidents.unlearned() == [] and "INC-2026-0001" not in {i.id for i in incidents.store.load_incidents()}


def test_show_gives_one_incident_whole_with_people_by_name(incidents: IncidentService) -> None:
    from bot.knowledge import load_knowledge

    incidents.store.replace_experts(load_knowledge(SAMPLE_KNOWLEDGE).experts)  # the roster, as `opsbot index` keeps it
    incidents.note(incidents.get("INC-2026-0002"), DANIEL, "lag \x1b]0;owned\x07 at 40k \u202eon orders")
    result = invoke("incidents", "show", "inc-2026-0001")  # in any capitals, as /incident takes it
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[:3] == [
        "INC-2026-0001 · SEV2 · Checkout 503s: pgbouncer pool exhausted",
        "Status: resolved at 2026-03-04 09:05 UTC, after 4 min · Environment: prod · Services: checkout-api",
        "Declared by Priya Raman at 2026-03-04 09:01 UTC · Roles: lead Daniel Okafor",
    ]
    assert "Resolution: Raised the pgbouncer pool and restarted checkout-api pods" in lines
    timeline = lines[lines.index("Timeline") + 1 :]
    assert timeline[0].startswith("  2026-03-04 09:01 UTC  Priya Raman: Declared SEV2")
    assert any(t.endswith("Priya Raman: Daniel Okafor is lead") for t in timeline), timeline  # the mention, by name
    assert any(t.endswith("Daniel Okafor: Raised default_pool_size to 40; 503s stopped") for t in timeline)
    as_json = json.loads(invoke("incidents", "show", "INC-2026-0001", "--json").stdout)
    assert as_json["id"] == "INC-2026-0001" and as_json["roles"] == {"lead": DANIEL}

    # what a terminal would act on, typed into a note, is shown as codes (the list does the same for titles)
    shown = invoke("incidents", "show", "INC-2026-0002").stdout
    assert "lag <U+001B>]0;owned<U+0007> at 40k <U+202E>on orders" in shown and "\x1b" not in shown
    incidents.declare("Search down \x1b[2J\x1b[H after reindex", PRIYA, 2, ["checkout-api"], "C0OPS0001")
    listed = invoke("incidents", "list").stdout
    assert "Search down <U+001B>[2J<U+001B>[H after reindex" in listed and "\x1b" not in listed

    assert_clean_failure(invoke("incidents", "show", "INC-2026-0099"), "no incident INC-2026-0099 was declared")
    assert_clean_failure(invoke("incidents", "show", "nonsense id"), "is not an incident id like INC-2026-0042")
    assert_clean_failure(invoke("incidents", "show", " "), "the incident id is empty")
