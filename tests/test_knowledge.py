"""load_knowledge: runbooks, incidents and the roster, and a clear Problem for every broken file."""

from __future__ import annotations

import json
import shutil
from datetime import UTC, date, datetime
from pathlib import Path

import pytest
import yaml

from bot.knowledge import load_knowledge, root_problem
from bot.models import KnowledgeBase, Problem, Section, TimelineEntry
from bot.text import content_hash
from tests.conftest import SAMPLE_KNOWLEDGE

SAMPLE = Path(__file__).resolve().parent.parent / "knowledge"

GOOD_RUNBOOK = """---
title: Redis memory and evictions
services: [checkout-api]
---
Redis is evicting keys; check maxmemory and the biggest keys first.
"""

INCIDENT_YAML = """id: INC-2025-0042
title: Checkout 5xx after payments-gateway deploy
date: 2025-04-12T19:42:00Z
severity: 2
services: [checkout-api, payments-gateway]
responders: [U03F8K2LQ1, U04C2RN8VD]
duration_minutes: 38
summary: >
  Checkout returned 502s for 38 minutes.
root_cause: >
  The new gateway build exhausted its connection pool.
resolution: >
  Rolled back to 1.4.1 and raised the pool size.
timeline:
  - at: "19:42"
    event: CheckoutApiErrorRateHigh fired
  - at: "20:20"
    event: Error rate back to baseline
"""

INCIDENT_MD = """---
id: INC-2026-0007
title: Login failures after JWT key rotation
date: 2026-03-01T08:15:00+01:00
severity: 1
services: auth-service, storefront-web
responders: [U04C2RN8VD]
---
# Login failures after JWT key rotation

## Summary
Nobody could log in for 20 minutes.

## Root cause
The new signing key was published after it was used.

## Resolution
Re-published the JWKS and restarted auth-service.

## Timeline
- 08:15 AuthLoginFailureRateHigh fired
- 08:35 Logins recovered
"""

ROSTER = """people:
  - id: U03F8K2LQ1
    name: Priya Raman
    team: payments
    skills: [payments, postgres]
    services: [checkout-api]
    timezone: Europe/London
    hours: "08:30-17:30"
  - id: U04C2RN8VD
    name: Daniel Okafor
    team: platform
    skills: postgres, pgbouncer
    timezone: Africa/Lagos
    away: true
"""


def write(root: Path, rel: str, text: str | bytes) -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def knowledge_with(root: Path, roster: str = ROSTER) -> KnowledgeBase:
    """Load ``root`` after adding one good runbook, one good incident and a roster to what is there."""
    write(root, "runbooks/redis/memory.md", GOOD_RUNBOOK)
    write(root, "incidents/2025/INC-2025-0042.yaml", INCIDENT_YAML)
    write(root, "experts.yaml", roster)
    return load_knowledge(root)


def only_problem(kb: KnowledgeBase, path: str) -> Problem:
    assert [p.path for p in kb.problems] == [path], kb.problems
    return kb.problems[0]


def assert_good_files_loaded(kb: KnowledgeBase) -> None:
    paths = {d.path for d in kb.documents}
    assert {"runbooks/redis/memory.md", "incidents/2025/INC-2025-0042.yaml"} <= paths
    assert "INC-2025-0042" in {i.id for i in kb.incidents}
    assert {e.id for e in kb.experts} >= {"U03F8K2LQ1", "U04C2RN8VD"}


def incident_yaml(**changes: object) -> str:
    data = yaml.safe_load(INCIDENT_YAML)
    data.update(changes)
    data = {k: v for k, v in data.items() if v is not None}
    return yaml.safe_dump(data, sort_keys=False)


def line_of(text: str, start: str) -> int:
    return next(n for n, line in enumerate(text.splitlines(), 1) if line.lstrip().startswith(start))


# -- runbooks ----------------------------------------------------------------


def test_runbook_title_and_labels_from_front_matter(tmp_path: Path) -> None:
    text = (
        "---\ntitle: Connection pool exhausted\nservices: [checkout-api, payments-gateway]\n"
        "tags: postgres, pgbouncer\nowners: [U03F8K2LQ1]\nurl: https://wiki.example.com/pool\n---\n"
        "# PgBouncer pool exhausted\n\nClients wait for a server connection.\n\n## Fix\n\nRaise default_pool_size.\n"
    )
    write(tmp_path, "runbooks/postgres/pool.md", text)

    kb = load_knowledge(tmp_path)

    assert kb.problems == []
    (doc,) = kb.documents
    assert doc.path == "runbooks/postgres/pool.md"
    assert doc.kind == "runbook"
    assert doc.title == "Connection pool exhausted"
    assert doc.aliases == ("PgBouncer pool exhausted",)
    assert doc.services == ("checkout-api", "payments-gateway")
    assert doc.tags == ("postgres", "pgbouncer")
    assert doc.owners == ("U03F8K2LQ1",)
    assert doc.url == "https://wiki.example.com/pool"
    assert doc.content_hash == content_hash(text)
    assert doc.sections == (
        Section("", "Clients wait for a server connection.", "pgbouncer-pool-exhausted"),
        Section("Fix", "Raise default_pool_size.", "fix"),
    )


def test_runbook_title_from_first_heading(tmp_path: Path) -> None:
    write(tmp_path, "runbooks/kafka/lag.md", "Intro line.\n\n## Consumer lag growing\n\nScale the consumers.\n")

    (doc,) = load_knowledge(tmp_path).documents

    assert doc.title == "Consumer lag growing"
    assert doc.aliases == ()
    assert doc.services == doc.tags == doc.owners == ()


def test_runbook_title_from_file_name(tmp_path: Path) -> None:
    write(tmp_path, "runbooks/node_disk-pressure.md", "Free space under /var/lib/containerd.\n")

    (doc,) = load_knowledge(tmp_path).documents

    assert doc.title == "Node disk pressure"
    assert doc.sections == (Section("", "Free space under /var/lib/containerd.", ""),)


def test_runbook_without_text_is_a_problem(tmp_path: Path) -> None:
    write(tmp_path, "runbooks/empty.md", "---\ntitle: Empty\n---\n\n")

    kb = knowledge_with(tmp_path)

    problem = only_problem(kb, "runbooks/empty.md")
    assert problem.line == 4
    assert "no text to index" in problem.message
    assert_good_files_loaded(kb)


def test_runbook_with_services_as_a_mapping_is_a_problem(tmp_path: Path) -> None:
    write(tmp_path, "runbooks/bad.md", "---\nservices: {checkout-api: true}\n---\nText.\n")

    kb = knowledge_with(tmp_path)

    problem = only_problem(kb, "runbooks/bad.md")
    assert "`services` must be a list of names" in problem.message
    assert "runbooks/bad.md" in kb.failed_paths
    assert_good_files_loaded(kb)


def test_a_list_of_names_that_is_wrong_gets_an_example_of_its_own_kind_and_a_number_in_one_is_its_text(
    tmp_path: Path,
) -> None:
    # Before, every such message showed service names ("tags: [checkout-api, payments-gateway]"), and a tag
    # written as a number (1.5) left the whole runbook out.
    write(tmp_path, "runbooks/tags.md", "---\ntags: {latency: true}\n---\nText.\n")
    write(tmp_path, "runbooks/numbers.md", "---\ntags: [latency, 1.5]\n---\nText about latency.\n")

    kb = knowledge_with(tmp_path)

    assert "`tags` must be a list of names, for example tags: [latency, database]" in str(
        only_problem(kb, "runbooks/tags.md")
    )
    assert "runbooks/numbers.md" not in kb.failed_paths
    assert next(d for d in kb.documents if d.path == "runbooks/numbers.md").tags == ("latency", "1.5")


def test_broken_front_matter_yaml_gives_path_and_line(tmp_path: Path) -> None:
    write(tmp_path, "runbooks/broken.md", "---\ntitle: Broken\nservices: [checkout-api]\ntags: db: pg\n---\nText.\n")

    kb = knowledge_with(tmp_path)

    problem = only_problem(kb, "runbooks/broken.md")
    assert problem.line == 4
    assert problem.message == "front matter is not valid YAML: mapping values are not allowed here"
    assert str(problem) == f"runbooks/broken.md:4: {problem.message}"
    assert "runbooks/broken.md" not in {d.path for d in kb.documents}
    assert_good_files_loaded(kb)


def test_non_utf8_runbook_is_a_problem(tmp_path: Path) -> None:
    write(tmp_path, "runbooks/latin1.md", "# Caf\xe9 outage\n\nRestart the caf\xe9 service.\n".encode("latin-1"))

    kb = knowledge_with(tmp_path)

    problem = only_problem(kb, "runbooks/latin1.md")
    assert problem.message == "is not UTF-8 text; save it as UTF-8."
    assert problem.line is None
    assert kb.failed_paths == {"runbooks/latin1.md"}
    assert_good_files_loaded(kb)


def test_runbook_with_byte_order_mark_keeps_its_front_matter(tmp_path: Path) -> None:
    write(tmp_path, "runbooks/bom.md", ("\ufeff" + GOOD_RUNBOOK).encode("utf-8"))

    (doc,) = load_knowledge(tmp_path).documents

    assert doc.title == "Redis memory and evictions"
    assert doc.services == ("checkout-api",)


# -- incidents ---------------------------------------------------------------


def test_yaml_incident_is_loaded(tmp_path: Path) -> None:
    kb = knowledge_with(tmp_path)

    assert kb.problems == []
    (incident,) = kb.incidents
    assert incident.id == "INC-2025-0042"
    assert incident.date == datetime(2025, 4, 12, 19, 42, tzinfo=UTC)
    assert incident.severity == 2
    assert incident.services == ("checkout-api", "payments-gateway")
    assert incident.responders == ("U03F8K2LQ1", "U04C2RN8VD")
    assert incident.duration_minutes == 38
    assert incident.summary == "Checkout returned 502s for 38 minutes."
    assert incident.timeline == (
        TimelineEntry("19:42", "CheckoutApiErrorRateHigh fired"),
        TimelineEntry("20:20", "Error rate back to baseline"),
    )
    doc = next(d for d in kb.documents if d.kind == "incident")
    assert doc.incident_id == "INC-2025-0042"
    assert doc.owners == incident.responders
    assert [s.heading for s in doc.sections] == ["Summary", "Root cause", "Resolution", "Timeline"]
    assert doc.sections[3].text == "19:42 CheckoutApiErrorRateHigh fired\n20:20 Error rate back to baseline"


def test_markdown_incident_is_loaded(tmp_path: Path) -> None:
    write(tmp_path, "incidents/2026/INC-2026-0007.md", INCIDENT_MD)

    kb = knowledge_with(tmp_path)

    assert kb.problems == []
    incident = next(i for i in kb.incidents if i.id == "INC-2026-0007")
    assert incident.path == "incidents/2026/INC-2026-0007.md"
    assert incident.title == "Login failures after JWT key rotation"
    assert incident.date == datetime(2026, 3, 1, 7, 15, tzinfo=UTC)
    assert incident.severity == 1
    assert incident.services == ("auth-service", "storefront-web")
    assert incident.summary == "Nobody could log in for 20 minutes."
    assert incident.root_cause == "The new signing key was published after it was used."
    assert incident.resolution == "Re-published the JWKS and restarted auth-service."
    assert incident.timeline == (
        TimelineEntry("08:15", "AuthLoginFailureRateHigh fired"),
        TimelineEntry("08:35", "Logins recovered"),
    )


def test_incidents_in_both_formats_become_documents(tmp_path: Path) -> None:
    write(tmp_path, "incidents/2026/INC-2026-0007.md", INCIDENT_MD)
    write(tmp_path, "incidents/2026/notes.txt", "not an incident")

    kb = knowledge_with(tmp_path)

    assert kb.problems == []
    assert sorted(i.id for i in kb.incidents) == ["INC-2025-0042", "INC-2026-0007"]
    assert {d.path for d in kb.documents if d.kind == "incident"} == {
        "incidents/2025/INC-2025-0042.yaml",
        "incidents/2026/INC-2026-0007.md",
    }


def test_broken_incident_yaml_gives_line(tmp_path: Path) -> None:
    text = INCIDENT_YAML.replace("title: Checkout", "title: Checkout: down")
    write(tmp_path, "incidents/INC-2025-0050.yaml", text)

    kb = knowledge_with(tmp_path)

    problem = only_problem(kb, "incidents/INC-2025-0050.yaml")
    assert problem.line == 2
    assert problem.message == "not valid YAML: mapping values are not allowed here"
    assert_good_files_loaded(kb)


def test_incident_missing_required_fields(tmp_path: Path) -> None:
    write(tmp_path, "incidents/INC-2025-0051.yaml", incident_yaml(id="INC-2025-0051", root_cause=None, resolution=""))

    kb = knowledge_with(tmp_path)

    problem = only_problem(kb, "incidents/INC-2025-0051.yaml")
    assert problem.message.startswith("missing root_cause, resolution; every incident needs id, title, date")
    assert_good_files_loaded(kb)


def test_every_problem_of_an_incident_file_is_reported_in_one_run_each_with_its_line(tmp_path: Path) -> None:
    text = incident_yaml(id="INC-2025-0053", date="yesterday", severity=9, summary=["a", "b"], resolution=None)
    write(tmp_path, "incidents/INC-2025-0053.yaml", text)

    kb = knowledge_with(tmp_path)

    found = [p for p in kb.problems if p.path == "incidents/INC-2025-0053.yaml"]
    lines = text.splitlines()
    said = {p.message.split(" ")[0]: p.line for p in found}
    assert set(said) == {"missing", "date", "severity", "summary"}, [p.message for p in found]
    for key in ("date", "severity", "summary"):
        assert lines[said[key] - 1].startswith(f"{key}:"), (key, said[key])
    assert_good_files_loaded(kb)


@pytest.mark.parametrize(("field", "value", "says"), [("summary", {}, "a mapping"), ("resolution", False, "yes/no")])
def test_a_text_field_that_yaml_reads_as_an_empty_mapping_or_no_is_a_problem_not_an_empty_text(
    tmp_path: Path, field: str, value: object, says: str
) -> None:
    write(tmp_path, "incidents/INC-2025-0054.yaml", incident_yaml(id="INC-2025-0054", **{field: value}))

    problem = only_problem(knowledge_with(tmp_path), "incidents/INC-2025-0054.yaml")

    assert problem.message.startswith(f"{field} must be text, not {says}")


@pytest.mark.parametrize("severity", ["high", 0, 5, True, 2.9])
def test_incident_with_bad_severity(tmp_path: Path, severity: object) -> None:
    text = incident_yaml(id="INC-2025-0052", severity=severity)
    write(tmp_path, "incidents/INC-2025-0052.yaml", text)

    kb = knowledge_with(tmp_path)

    problem = only_problem(kb, "incidents/INC-2025-0052.yaml")
    assert problem.message == f"severity {severity!r} must be 1 (worst) to 4"
    assert problem.line == line_of(text, "severity:")
    assert_good_files_loaded(kb)


@pytest.mark.parametrize(
    ("changes", "field", "says"),
    [
        ({"timeline": "18:20 paged the on-call"}, "timeline:", "timeline must be a list of entries"),
        ({"timeline": {"at": "18:20", "event": "paged"}}, "timeline:", "timeline must be a list of entries"),
        ({"timeline": [{"at": "18:20", "evnt": "paged"}]}, "timeline:", "must have at: and event: (and nothing else)"),
        ({"timeline": 5}, "timeline:", "timeline must be a list of entries"),
        ({"title": ["a", "b"]}, "title:", "title ['a', 'b'] must be text"),
        ({"duration_minutes": True}, "duration_minutes:", "duration_minutes must be a whole number of minutes"),
        (
            {"resolution": [{"step": "flushed the cache"}, {"step": "raised ttl"}]},
            "resolution:",
            "resolution must be text",
        ),
        ({"summary": ["stale", "results"]}, "summary:", "summary must be text, not a list"),
        ({"root_cause": {"cache": "stale"}}, "root_cause:", "root_cause must be text, not a mapping"),
    ],
    ids=[
        "timeline-text",
        "timeline-mapping",
        "timeline-misspelt",
        "timeline-number",
        "title-list",
        "duration-yes",
        "resolution-list",
        "summary-list",
        "root-cause-mapping",
    ],
)
def test_an_incident_value_of_the_wrong_shape_is_a_problem_not_a_guess(
    tmp_path: Path, changes: dict, field: str, says: str
) -> None:
    text = incident_yaml(id="INC-2025-0055", **changes)
    write(tmp_path, "incidents/INC-2025-0055.yaml", text)

    kb = knowledge_with(tmp_path)

    problem = only_problem(kb, "incidents/INC-2025-0055.yaml")
    assert says in problem.message and problem.line == line_of(text, field)
    assert_good_files_loaded(kb)


def test_incident_with_bad_date(tmp_path: Path) -> None:
    text = incident_yaml(id="INC-2025-0053", date="last tuesday")
    write(tmp_path, "incidents/INC-2025-0053.yaml", text)

    kb = knowledge_with(tmp_path)

    problem = only_problem(kb, "incidents/INC-2025-0053.yaml")
    assert problem.message == "date 'last tuesday' is not an ISO date such as 2025-04-12T19:42:00Z"
    assert problem.line == 3
    assert_good_files_loaded(kb)


def test_incident_with_impossible_date_is_a_problem(tmp_path: Path) -> None:
    write(tmp_path, "incidents/INC-2025-0054.yaml", INCIDENT_YAML.replace("2025-04-12T19:42:00Z", "2025-02-30"))
    write(tmp_path, "experts.yaml", ROSTER)

    kb = load_knowledge(tmp_path)

    problem = only_problem(kb, "incidents/INC-2025-0054.yaml")
    assert problem.line == 3


def test_markdown_incident_problem_points_at_the_field(tmp_path: Path) -> None:
    text = INCIDENT_MD.replace("severity: 1", "severity: urgent")
    write(tmp_path, "incidents/INC-2026-0007.md", text)

    kb = knowledge_with(tmp_path)

    problem = only_problem(kb, "incidents/INC-2026-0007.md")
    assert problem.message == "severity 'urgent' must be 1 (worst) to 4"
    assert problem.line == line_of(text, "severity:") == 5


def test_incident_with_unknown_field_suggests_the_right_one(tmp_path: Path) -> None:
    text = INCIDENT_YAML.replace("duration_minutes:", "duration_minute:").replace("INC-2025-0042", "INC-2025-0055")
    write(tmp_path, "incidents/INC-2025-0055.yaml", text)

    kb = knowledge_with(tmp_path)

    problem = only_problem(kb, "incidents/INC-2025-0055.yaml")
    assert problem.message == "unknown field `duration_minute`; did you mean `duration_minutes`?"
    assert problem.line == line_of(text, "duration_minute:") == 7
    assert_good_files_loaded(kb)


def test_incident_with_unknown_field_and_no_close_match(tmp_path: Path) -> None:
    write(tmp_path, "incidents/INC-2025-0056.yaml", incident_yaml(id="INC-2025-0056", pager="pd-123"))

    problem = only_problem(knowledge_with(tmp_path), "incidents/INC-2025-0056.yaml")

    assert problem.message == "unknown field `pager`"


def test_incident_with_malformed_id(tmp_path: Path) -> None:
    write(tmp_path, "incidents/bad-id.yaml", incident_yaml(id="incident 42"))

    problem = only_problem(knowledge_with(tmp_path), "incidents/bad-id.yaml")

    assert problem.message == "id 'incident 42' should look like INC-2025-0042"
    assert problem.line == 1


def test_duplicate_incident_id_keeps_the_first(tmp_path: Path) -> None:
    write(tmp_path, "incidents/2025/INC-2025-0042-copy.yaml", incident_yaml(title="A copy"))

    kb = knowledge_with(tmp_path)

    problem = only_problem(kb, "incidents/2025/INC-2025-0042.yaml")
    assert problem.message == (
        "incident id INC-2025-0042 is also used by incidents/2025/INC-2025-0042-copy.yaml; ids must be unique."
    )
    assert [i.path for i in kb.incidents] == ["incidents/2025/INC-2025-0042-copy.yaml"]
    assert "incidents/2025/INC-2025-0042.yaml" in kb.failed_paths


def test_responders_missing_from_the_roster_are_summarised_once(tmp_path: Path) -> None:
    for n in range(7):  # real history names people who left: one line, not one a file
        responders = [f"U09ZZZZZZ{n}"] + (["U09ZZZZZZ0"] if n else [])
        write(tmp_path, f"incidents/INC-2025-005{n}.yaml", incident_yaml(id=f"INC-2025-005{n}", responders=responders))

    kb = knowledge_with(tmp_path)

    problem = only_problem(kb, "experts.yaml")
    assert problem.message == (
        "7 responder(s) in 7 incident(s) are not on the roster (U09ZZZZZZ0, U09ZZZZZZ1, U09ZZZZZZ2, U09ZZZZZZ3, "
        "U09ZZZZZZ4, ...); their incidents still count, but they are never suggested. Add whoever still helps "
        "to experts.yaml."
    )
    assert {f"INC-2025-005{n}" for n in range(7)} <= {i.id for i in kb.incidents}
    assert_good_files_loaded(kb)


def test_a_responder_written_by_name_or_another_spelling_of_an_id_is_told_which_slack_id_to_use(
    tmp_path: Path,
) -> None:
    spellings = ["Daniel Okafor", "u04c2rn8vd", "<@U04C2RN8VD>", "@daniel okafor"]
    for n, who in enumerate(spellings):
        write(tmp_path, f"incidents/INC-2025-006{n}.yaml", incident_yaml(id=f"INC-2025-006{n}", responders=[who]))

    kb = knowledge_with(tmp_path)

    found = sorted((p.path, p.message, p.line) for p in kb.problems)
    assert found == [
        (
            f"incidents/INC-2025-006{n}.yaml",
            f"responder {who!r} is Daniel Okafor on the roster: write their Slack id U04C2RN8VD, "
            "or they get no credit for this incident",
            line_of(incident_yaml(id=f"INC-2025-006{n}", responders=[who]), "responders:") + 1,
        )
        for n, who in enumerate(spellings)
    ]
    assert_good_files_loaded(kb)


def test_responders_are_not_checked_without_a_roster(tmp_path: Path) -> None:
    write(tmp_path, "incidents/INC-2025-0042.yaml", incident_yaml(responders=["U09ZZZZZZZ"]))

    kb = load_knowledge(tmp_path)

    assert kb.problems == []
    assert kb.experts == []


# -- roster ------------------------------------------------------------------


def test_roster_is_loaded(tmp_path: Path) -> None:
    kb = knowledge_with(tmp_path)

    priya, daniel = kb.experts
    assert priya.name == "Priya Raman"
    assert priya.team == "payments"
    assert priya.skills == ("payments", "postgres")
    assert priya.services == ("checkout-api",)
    assert priya.timezone == "Europe/London"
    assert priya.hours == "08:30-17:30"
    assert not priya.away
    assert daniel.skills == ("postgres", "pgbouncer")
    assert daniel.away


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        (
            "  - id: u05e4ty6mf\n    name: Tomás\n    team: commerce\n",
            "person #3: id 'u05e4ty6mf' is not a Slack user id (like U04C2RN8VD: U or W, then capitals and digits)",
        ),
        (
            "  - id: '@tomas'\n    name: Tomás\n    team: commerce\n",
            "person #3: id '@tomas' is not a Slack user id (like U04C2RN8VD: U or W, then capitals and digits)",
        ),
        ("  - id: U05E4TY6MF\n    name: Tomás\n", "person #3: missing team"),
        (
            "  - id: U05E4TY6MF\n    name: Tomás\n    team: [commerce, sre]\n",
            "person #3: team ['commerce', 'sre'] must be one team name, such as payments",
        ),
        (  # it did not say which of the two counts
            "  - id: U03F8K2LQ1\n    name: Priya again\n    team: payments\n",
            "person #3: id U03F8K2LQ1 appears twice; person #1 at line 2 is the one in effect and this entry is left "
            "out: merge the two into one",
        ),
    ],
    ids=["lower-case-id", "handle-not-id", "missing-team", "team-list", "duplicate"],
)
def test_bad_roster_entry_is_reported_and_others_load(tmp_path: Path, entry: str, message: str) -> None:
    kb = knowledge_with(tmp_path, roster=ROSTER + entry)

    problem = only_problem(kb, "experts.yaml")
    assert problem.message == message
    assert problem.line == len(ROSTER.splitlines()) + 1 == 15
    assert [e.id for e in kb.experts] == ["U03F8K2LQ1", "U04C2RN8VD"]
    assert_good_files_loaded(kb)


@pytest.mark.parametrize(
    ("field", "message", "kept"),
    [
        ("timezon: Europe/Madrid", "unknown field `timezon` (left out); did you mean `timezone`?", ("UTC", "", False)),
        (
            "timezone: Europe/Barcelona",
            "timezone 'Europe/Barcelona' is not an IANA time zone such as Europe/London (UTC is used)",
            ("UTC", "", False),
        ),
        (  # a folder of the time zone database, not a zone: was an IsADirectoryError traceback
            "timezone: America",
            "timezone 'America' is not an IANA time zone such as Europe/London (UTC is used)",
            ("UTC", "", False),
        ),
        ("hours: 9-5", "hours '9-5' must look like 09:00-17:30 (left out)", ("UTC", "", False)),
        ("away: 'no'", "away 'no' must be true or false (false is used)", ("UTC", "", False)),
    ],
    ids=["misspelt-field", "bad-timezone", "region-folder", "bad-hours", "away-text"],
)
def test_a_bad_field_is_reported_and_the_person_kept_on_the_roster_without_it(
    tmp_path: Path, field: str, message: str, kept: tuple[str, str, bool]
) -> None:
    """One typo must not take someone off the rota and the approvers (and make every file that names them wrong)."""
    kb = knowledge_with(
        tmp_path, roster=ROSTER + f"  - id: U05E4TY6MF\n    name: Tomás\n    team: commerce\n    {field}\n"
    )

    problem = only_problem(kb, "experts.yaml")
    assert problem.message == f"person #3 (U05E4TY6MF): {message}"
    assert problem.line == 15
    tomas = next(e for e in kb.experts if e.id == "U05E4TY6MF")
    assert (tomas.team, (tomas.timezone, tomas.hours, tomas.away)) == ("commerce", kept)
    assert_good_files_loaded(kb)


@pytest.mark.parametrize(
    ("team", "services", "says"),
    [
        ("Payments", "", "team `Payments` differs from `payments` only in case or separators"),
        ("paymnets", "approvers: [payments]", "team `paymnets` looks like a slip of `payments`"),
        ("platfrom", "approvers: [platfrom]", None),  # services.yaml relies on both: two teams
    ],
    ids=["case", "slip", "both-relied-on"],
)
def test_a_team_that_looks_like_a_slip_of_another_is_reported_on_its_line(
    tmp_path: Path, team: str, services: str, says: str | None
) -> None:
    # Before, `team: Payments` beside `payments` passed: teams are compared exactly, so the person silently left
    # the team's approvers, its rota and who may silence its alerts.
    roster = ROSTER + f"  - id: U05E4TY6MF\n    name: Tomás\n    team: {team}\n"
    if services:
        entry = f"{{environments: {{prod: {{approvals: 1, {services}}}}}, deploy: {{command: [deploy.sh]}}}}"
        write(
            tmp_path, "services.yaml", f"services:\n  checkout-api: {entry}\n  web: {entry.replace(team, 'platform')}\n"
        )

    kb = knowledge_with(tmp_path, roster)

    if says is None:
        assert kb.problems == []
        return
    problem = only_problem(kb, "experts.yaml")
    assert problem.line == 17  # the team's own line
    assert problem.message == (
        f"person #3 (U05E4TY6MF): {says}; teams are compared exactly, so Tomás is not in payments: they approve, "
        "are on call and silence alerts for none of its services. Write `payments`"
    )
    assert "U05E4TY6MF" in {e.id for e in kb.experts}  # reported, and still on the roster as written


def test_broken_roster_yaml_gives_line(tmp_path: Path) -> None:
    write(tmp_path, "runbooks/redis/memory.md", GOOD_RUNBOOK)
    write(tmp_path, "experts.yaml", "people:\n  - id: U03F8K2LQ1\n    name: Priya: R\n    team: payments\n")

    kb = load_knowledge(tmp_path)

    problem = only_problem(kb, "experts.yaml")
    assert problem.message == "not valid YAML: mapping values are not allowed here"
    assert problem.line == 3
    assert kb.experts == []
    assert [d.path for d in kb.documents] == ["runbooks/redis/memory.md"]


def test_roster_without_people_list(tmp_path: Path) -> None:
    write(tmp_path, "experts.yaml", "people: Priya and Daniel\n")

    problem = only_problem(load_knowledge(tmp_path), "experts.yaml")

    assert "list of people under `people:`" in problem.message


def test_roster_line_numbers_do_not_depend_on_key_order(tmp_path: Path) -> None:
    roster = (
        "people:\n"
        "  - name: Priya Raman\n"
        "    id: U03F8K2LQ1\n"
        "    team: payments\n"
        "  - id: U04C2RN8VD\n"
        "    name: Daniel Okafor\n"
        "    team: platform\n"
        "  - id: U05E4TY6MF\n"
        "    name: Tomás\n"
        "    team: commerce\n"
        "    timezone: Mars/Olympus\n"
    )
    write(tmp_path, "experts.yaml", roster)

    problem = only_problem(load_knowledge(tmp_path), "experts.yaml")

    assert problem.message.startswith("person #3 (U05E4TY6MF): timezone 'Mars/Olympus'")
    assert problem.line == 8


def test_non_utf8_roster_is_a_problem(tmp_path: Path) -> None:
    write(tmp_path, "runbooks/redis/memory.md", GOOD_RUNBOOK)
    write(tmp_path, "experts.yaml", "people:\n  - id: U03F8K2LQ1\n    name: Andr\xe9\n    team: x\n".encode("latin-1"))

    kb = load_knowledge(tmp_path)

    problem = only_problem(kb, "experts.yaml")
    assert "UTF-8" in problem.message
    assert [d.path for d in kb.documents] == ["runbooks/redis/memory.md"]


def test_broken_services_yaml_is_reported(tmp_path: Path) -> None:
    write(tmp_path, "services.yaml", "services:\n  checkout-api: {owners: [U03F8K2LQ1]\n  redis: {}\n")

    kb = knowledge_with(tmp_path)

    problem = only_problem(kb, "services.yaml")
    assert problem.message.startswith("not valid YAML: ")
    assert problem.line == 3
    assert_good_files_loaded(kb)


SERVICE_RULE = (
    "use letters, digits, '.', '_' and '-', with '/' between parts (like checkout-api or storage/remote), "
    "up to 100 characters"
)


def test_one_rule_for_service_names_in_every_file(tmp_path: Path) -> None:
    write(tmp_path, "services.yaml", "services:\n  storage/remote: {owners: [U03F8K2LQ1]}\n  web_ui.v2: {}\n")
    write(tmp_path, "incidents/INC-2025-0070.yaml", incident_yaml(id="INC-2025-0070", services=["storage/remote"]))
    roster = ROSTER.replace("services: [checkout-api]", "services: [checkout-api, storage/remote]")

    kb = knowledge_with(tmp_path, roster=roster)

    assert kb.problems == []
    assert set(kb.services) == {"storage/remote", "web_ui.v2"}
    assert "storage/remote" in kb.experts[0].services
    assert next(i for i in kb.incidents if i.id == "INC-2025-0070").services == ("storage/remote",)


@pytest.mark.parametrize("name", ["storage remote", "/storage", "storage//remote", "storage/", "-api", "a" * 101])
def test_a_bad_service_name_is_refused_alike_in_every_file(tmp_path: Path, name: str) -> None:
    write(tmp_path, "services.yaml", yaml.safe_dump({"services": {name: {"owners": ["U03F8K2LQ1"]}}}))
    write(tmp_path, "incidents/INC-2025-0071.yaml", incident_yaml(id="INC-2025-0071", services=[name]))
    roster = ROSTER.replace("services: [checkout-api]", f"services: [checkout-api, {json.dumps(name)}]")

    kb = knowledge_with(tmp_path, roster=roster)

    expected = f"service name {name[:100]!r}: {SERVICE_RULE}"
    found = sorted((p.path, p.message) for p in kb.problems if "service name" in p.message)
    assert found == [
        ("experts.yaml", f"person #1 (U03F8K2LQ1): {expected} (`services` left out)"),
        ("incidents/INC-2025-0071.yaml", expected),
        ("services.yaml", expected),
    ]
    assert kb.services == {}


def test_left_is_a_date(tmp_path: Path) -> None:
    roster = ROSTER.replace('    hours: "08:30-17:30"\n', '    hours: "08:30-17:30"\n    left: 2025-06-30\n')
    kb = knowledge_with(tmp_path, roster=roster)
    assert kb.problems == []
    assert kb.experts[0].left == date(2025, 6, 30) and kb.experts[1].left is None
    assert kb.experts[0].has_left(datetime(2025, 6, 29, 23, 30, tzinfo=UTC))  # 00:30 on the 30th in London
    assert not kb.experts[0].has_left(datetime(2025, 6, 29, 22, 30, tzinfo=UTC))

    broken = knowledge_with(tmp_path, roster=ROSTER.replace("    hours:", "    left: last summer\n    hours:"))
    assert broken.problems[0].message == "person #1: left 'last summer' must be the day they left, such as 2025-06-30"


def test_many_broken_files_are_all_reported_together(tmp_path: Path) -> None:
    write(tmp_path, "runbooks/broken.md", "---\ntitle: [Broken\n---\nText.\n")
    write(tmp_path, "runbooks/latin1.md", "caf\xe9".encode("latin-1"))
    write(tmp_path, "incidents/INC-2025-0060.yaml", incident_yaml(id="INC-2025-0060", severity=9))
    write(tmp_path, "incidents/INC-2025-0061.yaml", incident_yaml(id="INC-2025-0061", date="soon"))

    kb = knowledge_with(tmp_path)

    assert sorted(p.path for p in kb.problems) == [
        "incidents/INC-2025-0060.yaml",
        "incidents/INC-2025-0061.yaml",
        "runbooks/broken.md",
        "runbooks/latin1.md",
    ]
    assert kb.failed_paths == {p.path for p in kb.problems}
    assert_good_files_loaded(kb)


# -- the shipped sample ------------------------------------------------------


def test_sample_knowledge_loads_without_problems() -> None:
    kb = load_knowledge(SAMPLE)

    assert kb.problems == []
    assert kb.failed_paths == set()
    runbooks = [d for d in kb.documents if d.kind == "runbook"]
    assert len(runbooks) >= 25
    assert len(kb.incidents) >= 40
    assert len({i.id for i in kb.incidents}) == len(kb.incidents)
    assert len(kb.experts) >= 15
    services = yaml.safe_load((SAMPLE / "services.yaml").read_text(encoding="utf-8"))["services"]
    assert 8 <= len(services) <= 12
    used = {s for d in kb.documents for s in d.services}
    assert used <= set(services)
    assert len(used) >= 8
    assert all(d.sections for d in kb.documents)


def test_runbook_alerts_from_front_matter_and_an_alert_name_heading(tmp_path: Path) -> None:
    write(
        tmp_path,
        "runbooks/pg/pool.md",
        "---\ntitle: Pool exhausted\nalerts: [PgbouncerPoolExhausted, pg_pool_waiting]\n---\n# Pool\n\nRaise it.\n",
    )
    write(tmp_path, "runbooks/kube/job.md", "---\ntitle: Kube Job Failed\n---\n# KubeJobFailed\n\nCheck the job.\n")
    write(tmp_path, "runbooks/general/overview.md", "# Overview\n\nHow we run things.\n")
    write(tmp_path, "runbooks/old/mac.md", "# KubeMacPoolDown [Deprecated]\n\nReplaced by KubemacpoolDown.\n")
    write(tmp_path, "runbooks/old/node.md", "# NodeDown (legacy)\n\nSee the new runbook.\n")
    write(tmp_path, "runbooks/ssp.md", "# SSPDown\n\nAll SSP operator pods are down.\n")
    write(tmp_path, "runbooks/readme.md", "# README\n\nWhat is here.\n")

    docs = {d.path: d for d in load_knowledge(tmp_path).documents}

    assert docs["runbooks/pg/pool.md"].alerts == ("PgbouncerPoolExhausted", "pg_pool_waiting")
    assert docs["runbooks/kube/job.md"].alerts == ("KubeJobFailed",)
    assert docs["runbooks/general/overview.md"].alerts == ()  # a plain word is a heading, not an alert name
    assert docs["runbooks/old/mac.md"].alerts == ("KubeMacPoolDown",)  # a note in brackets after the name
    assert docs["runbooks/old/node.md"].alerts == ("NodeDown",)
    assert docs["runbooks/ssp.md"].alerts == ("SSPDown",)  # an acronym, then a word
    assert docs["runbooks/readme.md"].alerts == ()  # capitals only: a heading


def test_a_runbook_that_writes_its_alerts_names_them_all_and_alerts_none_names_none(tmp_path: Path) -> None:
    # Before, an overview page headed `# PgBouncer` answered an alert of that name whatever its front matter said,
    # and was cited first for every pasted pgbouncer alert.
    write(tmp_path, "runbooks/pg/overview.md", "---\nalerts: []\n---\n# PgBouncer\n\nWhat pgbouncer does.\n")
    write(tmp_path, "runbooks/pg/pool.md", "---\nalerts: [PgbouncerPoolExhausted]\n---\n# PgBouncerPool\n\nRaise it.\n")
    write(tmp_path, "runbooks/pg/undeclared.md", "# PgBouncer\n\nWhat pgbouncer does.\n")

    docs = {d.path: d for d in load_knowledge(tmp_path).documents}

    assert docs["runbooks/pg/overview.md"].alerts == ()
    assert docs["runbooks/pg/pool.md"].alerts == ("PgbouncerPoolExhausted",)
    assert docs["runbooks/pg/undeclared.md"].alerts == ("PgBouncer",)  # as before, when the file says nothing


def test_runbook_alert_that_is_not_a_name_is_a_problem_with_its_line(tmp_path: Path) -> None:
    write(tmp_path, "runbooks/bad.md", "---\ntitle: Bad\nservices: [pg]\nalerts: [Pool is exhausted]\n---\nText.\n")

    kb = knowledge_with(tmp_path)

    problem = only_problem(kb, "runbooks/bad.md")
    assert problem.line == 4
    assert "'Pool is exhausted' is not an alert name" in problem.message
    assert "alerts: [PgbouncerPoolExhausted]" in problem.message
    assert_good_files_loaded(kb)


def test_a_key_given_twice_is_a_problem_with_both_lines_wherever_yaml_is_read(tmp_path: Path) -> None:
    """YAML keeps the last of two equal keys: a second `checkout-api:` would drop the first one's
    environments and freeze without a word, so each file says where."""
    root = tmp_path / "knowledge"
    shutil.copytree(SAMPLE_KNOWLEDGE, root)

    def edit(rel: str, old: str, new: str) -> None:
        path = root / rel
        text = path.read_text(encoding="utf-8")
        assert old in text
        path.write_text(text.replace(old, new, 1), encoding="utf-8")

    edit("services.yaml", "services:\n", "services:\n  checkout-api: {owners: [U05E4TY6MF]}\n")
    edit("incidents/2025/INC-2025-0001.yaml", "severity: 2\n", "severity: 2\nseverity: 4\n")
    runbook = "runbooks/auth-service/jwt-key-rotation.md"
    edit(runbook, "services: [auth-service]\n", "services: [auth-service]\ntitle: Keys\n")
    clean = load_knowledge(SAMPLE_KNOWLEDGE)
    assert clean.problems == []

    kb = load_knowledge(root)

    twice = {(p.path, p.line): p.message for p in kb.problems if "given twice" in p.message}
    services_text = (root / "services.yaml").read_text(encoding="utf-8").splitlines()
    first, second = [n for n, line in enumerate(services_text, 1) if line.startswith("  checkout-api:")]
    assert set(twice) == {
        ("services.yaml", second),
        ("incidents/2025/INC-2025-0001.yaml", 5),
        (runbook, 4),
    }
    assert twice[("services.yaml", second)].startswith(f"services.checkout-api: given twice (also at line {first})")
    assert twice[(runbook, 4)].startswith("title: given twice (also at line 2)")


def test_upper_case_extensions_are_read_and_a_broken_link_is_reported(tmp_path: Path) -> None:
    write(tmp_path, "runbooks/redis/MEMORY.MD", GOOD_RUNBOOK)
    write(tmp_path, "incidents/INC-2025-0056.YAML", incident_yaml(id="INC-2025-0056"))
    (tmp_path / "incidents" / "INC-2025-0057.yaml").symlink_to(tmp_path / "nowhere.yaml")

    kb = load_knowledge(tmp_path)

    assert [d.path for d in kb.documents if d.kind == "runbook"] == ["runbooks/redis/MEMORY.MD"]
    assert [i.id for i in kb.incidents] == ["INC-2025-0056"]
    (problem,) = kb.problems
    assert problem.path == "incidents/INC-2025-0057.yaml" and "cannot be read" in problem.message


def test_a_runbook_name_on_something_that_is_not_a_file_is_a_problem_never_read(tmp_path: Path) -> None:
    # Before, a FIFO named like a runbook was opened and read: `opsbot index` and `check` waited for ever.
    import os
    import signal

    write(tmp_path, "runbooks/redis/memory.md", GOOD_RUNBOOK)
    os.mkfifo(tmp_path / "runbooks" / "pipe.md")

    def hung(*_: object) -> None:
        raise TimeoutError("loading the knowledge waited on the FIFO")

    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(10)  # a hang guard: loading takes milliseconds
    try:
        kb = load_knowledge(tmp_path)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)

    assert [d.path for d in kb.documents if d.kind == "runbook"] == ["runbooks/redis/memory.md"]
    (problem,) = kb.problems
    assert problem.path == "runbooks/pipe.md" and "it is not a file" in problem.message


def test_a_markdown_incident_keeps_subsections_and_says_which_section_it_does_not_read(tmp_path: Path) -> None:
    text = INCIDENT_MD.replace(
        "## Resolution\n",
        "### Contributing factors\nThe JWKS cache lived for a day.\n\n## Impact\nCheckout was down too.\n\n"
        "## Resolution\n",
    )
    write(tmp_path, "incidents/INC-2026-0007.md", text)

    kb = knowledge_with(tmp_path)

    incident = next(i for i in kb.incidents if i.id == "INC-2026-0007")
    assert incident.root_cause == (
        "The new signing key was published after it was used.\n\nThe JWKS cache lived for a day."
    )
    problem = only_problem(kb, "incidents/INC-2026-0007.md")
    assert problem.message.startswith("section `Impact` is not read: an incident's sections are Summary, Root cause")
    assert [t.event for t in incident.timeline] == ["AuthLoginFailureRateHigh fired", "Logins recovered"]


def test_a_markdown_incident_part_in_both_front_matter_and_a_section_says_which_is_read(tmp_path: Path) -> None:
    text = INCIDENT_MD.replace("responders: [U04C2RN8VD]\n", "responders: [U04C2RN8VD]\nroot_cause: see below\n")
    write(tmp_path, "incidents/INC-2026-0007.md", text)

    kb = knowledge_with(tmp_path)

    incident = next(i for i in kb.incidents if i.id == "INC-2026-0007")
    assert incident.root_cause == "see below"  # the front matter's, as before; the section is no longer lost unsaid
    problem = only_problem(kb, "incidents/INC-2026-0007.md")
    assert problem.message == (
        "section `Root cause` is not read: the front matter has `root_cause:` too, and it is the one used; "
        "keep one of the two"
    )


def test_a_linked_runbook_folder_is_read_like_a_linked_file_and_a_link_loop_once(tmp_path: Path) -> None:
    shared = tmp_path / "team-payments-runbooks"
    write(shared, "queue.md", "# Payments refunds stuck\n\nReplay the refund queue.\n")
    write(tmp_path / "knowledge", "runbooks/own.md", "# Own runbook\n\nRestart it.\n")
    (tmp_path / "knowledge" / "runbooks" / "payments").symlink_to(shared)  # a team's repository linked in
    (shared / "again").symlink_to(shared)  # a loop

    kb = load_knowledge(tmp_path / "knowledge")

    assert sorted(d.path for d in kb.documents) == ["runbooks/own.md", "runbooks/payments/queue.md"]
    assert kb.problems == []


def test_a_misspelt_runbook_front_matter_key_is_reported_and_a_site_generators_key_is_not(tmp_path: Path) -> None:
    front = "---\ntitle: Redis memory\nweight: 20\nalert: [RedisMemoryHigh]\nservice: [cache]\n---\n"
    text = front + "# Redis\n\nFree memory.\n"
    write(tmp_path, "runbooks/redis/memory.md", text)

    kb = load_knowledge(tmp_path)

    (doc,) = kb.documents
    assert doc.title == "Redis memory" and doc.alerts == ()  # read all the same, without the misspelt keys
    assert [(p.line, p.message) for p in kb.problems] == [
        (4, "front matter key `alert` is not read; did you mean `alerts`?"),
        (5, "front matter key `service` is not read; did you mean `services`?"),
    ]


def test_a_runbook_url_that_is_not_text_is_a_problem_and_the_runbook_loads_unlinked(tmp_path: Path) -> None:
    write(tmp_path, "runbooks/cache.md", "---\ntitle: Cache\nurl: [https://wiki/x, https://wiki/y]\n---\nFlush it.\n")

    kb = load_knowledge(tmp_path)

    problem = only_problem(kb, "runbooks/cache.md")
    assert problem.line == 3 and "url must be text, not a list" in problem.message
    assert [(d.path, d.url) for d in kb.documents] == [("runbooks/cache.md", "")]  # indexed, without a link


def alias_bomb(levels: int) -> str:
    """A few hundred bytes of YAML that aliases make into 10 ** levels values."""
    rows = ["&a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    rows += [f"&a{n} [{', '.join([f'*a{n - 1}'] * 10)}]" for n in range(1, levels)]
    return "\n".join(f"  - {row}" for row in rows)


@pytest.mark.parametrize(
    ("rel", "text"),
    [
        (
            "incidents/INC-2025-0099.yaml",
            incident_yaml(id="INC-2025-0099") + "tags:\n{bomb}\n",
        ),
        ("runbooks/bomb.md", "---\ntitle: Bomb\ntags:\n{bomb}\n---\nText.\n"),
        ("experts.yaml", ROSTER + "bomb:\n{bomb}\n"),
    ],
    ids=["incident", "runbook", "roster"],
)
def test_yaml_aliases_that_expand_to_millions_of_values_are_refused(tmp_path: Path, rel: str, text: str) -> None:
    """Nine levels of aliases would be a billion values (gigabytes, once turned into text): refused at once."""
    write(tmp_path, rel, text.format(bomb=alias_bomb(9)))

    kb = load_knowledge(tmp_path)

    problem = only_problem(kb, rel)
    assert "aliases" in problem.message and "expand to more than" in problem.message
    assert problem.line is not None


@pytest.mark.parametrize(
    ("rel", "text"),
    [
        ("incidents/INC-2025-0098.yaml", incident_yaml(id="INC-2025-0098") + "tags: {deep}\n"),
        ("runbooks/deep.md", "---\ntitle: Deep\ntags: {deep}\n---\nText.\n"),
        ("experts.yaml", ROSTER + "deep: {deep}\n"),
        ("services.yaml", "services: {deep}\n"),
        ("channels.yaml", "channels: {deep}\n"),
    ],
    ids=["incident", "runbook", "roster", "services", "channels"],
)
def test_yaml_nested_hundreds_of_levels_deep_is_a_problem_not_a_crash(tmp_path: Path, rel: str, text: str) -> None:
    """1.2 KB of `[` is deeper than Python's recursion: its file is reported, and the others are read."""
    write(tmp_path, rel, text.format(deep="[" * 600 + "]" * 600))

    kb = load_knowledge(tmp_path)

    assert "nests lists or mappings hundreds of levels deep" in only_problem(kb, rel).message


@pytest.mark.parametrize(("key", "shown"), [("2025", "2025"), ("on", "on"), ("Yes", "Yes")])
def test_an_incident_key_that_is_not_text_is_named_with_its_line(tmp_path: Path, key: str, shown: str) -> None:
    """A stray `2025: ...` line, or `on:` (YAML's true), is an unknown field like any other, not Python's TypeError."""
    text = incident_yaml(id="INC-2025-0058") + f"{key}: stray line\n"
    write(tmp_path, "incidents/INC-2025-0058.yaml", text)

    kb = knowledge_with(tmp_path)

    problem = only_problem(kb, "incidents/INC-2025-0058.yaml")
    assert problem.message.startswith(f"unknown field `{shown}`") and problem.line == line_of(text, f"{key}:")


@pytest.mark.parametrize(
    "url",
    ["https://wiki.example.com/disk|wiki> <!channel>", "wiki.example.com/disk", "https://wiki.example.com/a page"],
)
def test_a_runbook_url_that_is_not_a_plain_web_address_is_a_problem_and_the_runbook_loads_unlinked(
    tmp_path: Path, url: str
) -> None:
    write(tmp_path, "runbooks/disk.md", f'---\ntitle: Disk\nurl: "{url}"\n---\nDelete old archives.\n')

    kb = load_knowledge(tmp_path)

    problem = only_problem(kb, "runbooks/disk.md")
    assert problem.line == 3 and "url must be a web address starting with https://" in problem.message
    assert "indexed without its link" in problem.message
    assert [(d.path, d.url) for d in kb.documents] == [("runbooks/disk.md", "")]  # its text is still searched


TAGGED_INCIDENT = (
    "id: INC-2025-0001\ntitle: t\ndate: 2025-01-01\nseverity: 2\nservices: [a]\nresponders: [U04C2RN8VD]\n"
    "summary: s\nroot_cause: r\nresolution: x\n"
)


@pytest.mark.parametrize("tag", ["!!bool maybe", "!!int abc", "!!timestamp foo", "!!float x"])
@pytest.mark.parametrize(
    ("rel", "text"),
    [
        ("runbooks/a.md", "---\nowner: {tag}\n---\n# A\n\nbody\n"),
        ("incidents/a.yaml", TAGGED_INCIDENT + "tags: {tag}\n"),
        ("experts.yaml", "people:\n  - id: U04C2RN8VD\n    name: Dan\n    team: platform\n    hours: {tag}\n"),
        ("services.yaml", "services:\n  a:\n    owners: {tag}\n"),
        ("channels.yaml", "channels:\n  C0123456: {tag}\n"),
    ],
)
def test_a_yaml_tag_with_a_value_it_cannot_take_is_a_problem_of_its_file_not_a_crash(
    tmp_path: Path, tag: str, rel: str, text: str
) -> None:
    # Before, `!!bool maybe` ended every load (check, index, eval) in a KeyError traceback, and the bot never started.
    (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / rel).write_text(text.format(tag=tag), encoding="utf-8")
    kb = load_knowledge(tmp_path)
    assert any(p.path == rel and "cannot be read as its tag says" in p.message for p in kb.problems), kb.problems


@pytest.mark.parametrize(
    ("written", "why"),
    [
        ("2062-04-12T19:42:00Z", "it is in the future; write when it began, such as 2025-04-12T19:42:00Z"),
        ("0001-01-01T00:00:00+05:00", "it is before 1970"),
    ],
)
def test_an_incident_dated_in_the_future_or_before_1970_is_a_problem_not_a_silent_skip_or_a_crash(
    tmp_path: Path, written: str, why: str
) -> None:
    # Before, a typo's 2062 passed check and the expert suggestions passed the incident over without a word, and
    # year 1 with an offset made `opsbot experts` crash.
    kb = knowledge_with(tmp_path)
    write(
        tmp_path,
        "incidents/2025/INC-2025-0043.yaml",
        INCIDENT_YAML.replace("0042", "0043").replace("2025-04-12T19:42:00Z", written),
    )
    kb = load_knowledge(tmp_path)
    problem = only_problem(kb, "incidents/2025/INC-2025-0043.yaml")
    assert problem.message == f"date {written!r} is not a time an incident began: {why}" and problem.line == 3
    assert_good_files_loaded(kb)


@pytest.mark.parametrize("minutes", [1765102320000, 5_000_000])  # an epoch in milliseconds; ten years
def test_a_duration_that_would_end_after_now_is_reported_on_its_line_and_left_out(tmp_path: Path, minutes: int) -> None:
    # Before, check passed it: the first made `opsbot dora` fail with an OverflowError, the second made the
    # incident's outage swallow every later one of its services.
    write(
        tmp_path,
        "incidents/2025/INC-2025-0043.yaml",
        INCIDENT_YAML.replace("0042", "0043").replace("38", str(minutes), 1),
    )
    kb = knowledge_with(tmp_path)

    problem = only_problem(kb, "incidents/2025/INC-2025-0043.yaml")
    assert problem.message == (
        f"duration_minutes {minutes} would end this incident after now; write how many minutes it lasted, such as 45 "
        "(it is left out until then)"
    )
    assert problem.line == line_of(INCIDENT_YAML, "duration_minutes")
    incident = next(i for i in kb.incidents if i.id == "INC-2025-0043")
    assert incident.duration_minutes is None and incident.summary  # the rest of the incident still counts
    assert next(i for i in kb.incidents if i.id == "INC-2025-0042").duration_minutes == 38


def test_yml_files_and_markdown_runbooks_are_reported_not_passed_over(tmp_path: Path) -> None:
    # Before, services.yml, experts.yml and runbooks/*.markdown were skipped: `check` said "No problems, 0 services".
    write(tmp_path, "services.yml", "services:\n  api: {owners: [payments]}\n")
    write(tmp_path, "experts.yml", ROSTER)
    write(tmp_path, "runbooks/kafka/Lag.markdown", GOOD_RUNBOOK)
    kb = knowledge_with(tmp_path)  # experts.yaml too: experts.yml is a stray copy

    assert [(p.path, p.message) for p in kb.problems] == [
        ("runbooks/kafka/Lag.markdown", "is not read: opsbot reads Markdown files ending in .md; rename it to Lag.md."),
        (
            "experts.yml",
            "found experts.yml; opsbot reads experts.yaml: move what it holds there and remove it (it is not read).",
        ),
        (
            "services.yml",
            "found services.yml; opsbot reads services.yaml: rename it (it is not read; what was "
            "indexed from services.yaml is kept).",
        ),
    ]
    assert kb.failed_paths == {"services.yaml"}  # a running bot keeps the services it had, not none
    assert_good_files_loaded(kb)


def test_a_folder_with_only_yml_files_is_refused_with_what_to_rename(tmp_path: Path) -> None:
    write(tmp_path, "services.yml", "services:\n  api: {owners: [payments]}\n")

    assert root_problem(tmp_path) == (
        f"{str(tmp_path)!r} holds services.yml, and opsbot reads only experts.yaml, services.yaml, channels.yaml: "
        "rename them (.yaml, not .yml); nothing was changed."
    )
