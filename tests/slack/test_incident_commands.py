"""Reading /incident commands: the forms people bring from other tools, and clear refusals."""

from __future__ import annotations

import pytest

from bot.errors import InvalidRequest
from bot.slack.incident_commands import IncidentCommand, parse_incident

DANIEL = "U04C2RN8VD"


@pytest.mark.parametrize(
    "text",
    [
        'declare sev2 "Checkout errors for EU customers"',
        "declare SEV-2 Checkout errors for EU customers",
        "declare Checkout errors for EU customers --sev 2",
        "declare Checkout errors for EU customers --severity=SEV2",
        "declare “Checkout errors for EU customers” Sev2",
    ],
)
def test_declare_reads_every_way_of_writing_the_severity(text: str) -> None:
    assert parse_incident(text) == IncidentCommand("declare", title="Checkout errors for EU customers", severity=2)


def test_declare_reads_services_and_the_environment() -> None:
    asked = parse_incident("declare Search empty --service catalog-search --env staging sev3")

    assert (asked.title, asked.severity, asked.env) == ("Search empty", 3, "staging")
    assert asked.services == ("catalog-search",)


@pytest.mark.parametrize("text", ["severity 1", "severity sev1", "severity SEV-1", "sev 1", "sev1", "SEV-1"])
def test_the_severity_can_be_changed_in_the_same_forms(text: str) -> None:
    assert parse_incident(text) == IncidentCommand("severity", severity=1)


def test_an_incident_id_may_follow_the_subcommand() -> None:
    assert parse_incident("sev1 INC-2026-0042") == IncidentCommand("severity", "INC-2026-0042", severity=1)
    assert parse_incident("note INC-2026-0042 pods restarted").incident_id == "INC-2026-0042"


@pytest.mark.parametrize(
    "text, role",
    [
        (f"assign <@{DANIEL}|daniel> lead", "lead"),
        (f"role comms <@{DANIEL}|daniel>", "comms"),
        (f"role ic <@{DANIEL}>", "lead"),
        (f"role <@{DANIEL}> Commander", "lead"),
    ],
)
def test_role_is_assign_in_either_order(text: str, role: str) -> None:
    assert parse_incident(text) == IncidentCommand("assign", user=DANIEL, role=role)


def test_update_rootcause_and_cancel_keep_their_text() -> None:
    assert parse_incident("update Mitigating: rolled back") == IncidentCommand("update", text="Mitigating: rolled back")
    assert parse_incident("rootcause pool size &lt; 20") == IncidentCommand("rootcause", text="pool size < 20")
    assert parse_incident("root-cause bad config").sub == "rootcause"
    assert parse_incident("cancel") == IncidentCommand("cancel")
    assert parse_incident("cancel INC-2026-0007 test alert") == IncidentCommand("cancel", "INC-2026-0007", "test alert")


def test_resolve_takes_an_optional_root_cause_and_may_be_empty() -> None:
    assert parse_incident('resolve "Rolled back" --root-cause "pool too small"') == IncidentCommand(
        "resolve", text="Rolled back", root_cause="pool too small"
    )
    assert parse_incident("resolve Rolled back --rootcause=pool too small").root_cause == "pool too small"
    assert parse_incident("resolve") == IncidentCommand("resolve")  # opens the dialog
    # A client that turns a typed `--` into a dash: the option is still an option, not part of the resolution.
    for dash in ("—", "–"):
        assert parse_incident(f"resolve Rolled back {dash}root-cause pool size") == IncidentCommand(
            "resolve", text="Rolled back", root_cause="pool size"
        )
    assert parse_incident("resolve rolled back the hot—rootcause fix").root_cause == ""  # a dash inside a word
    # A root cause alone opens the dialog with it filled in (test_incident_forms.py).
    assert parse_incident("resolve --root-cause pool size") == IncidentCommand("resolve", root_cause="pool size")


@pytest.mark.parametrize(
    "text, message",
    [
        ("declar checkout down", "`declar` is not an /incident subcommand; use declare, status, note, update"),
        ("declare --sev 2", "give the incident a title"),
        ("declare down --sev", "--sev needs a value"),
        ("declare down --env=", "--env= needs a value after the ="),  # was declared in the default environment
        ("declare down --service= --env prod", "--service= needs a value after the ="),
        ("declare down sev5", "severity 'sev5' must be 1 (worst) to 4."),
        ("declare down sev1 SEV-2", "two severities given (SEV1 and SEV2)"),
        ("update", "say what to record: /incident update TEXT."),
        ("rootcause INC-2026-0042", "say what to record: /incident rootcause TEXT."),
        (f"role ops <@{DANIEL}>", "role 'ops' is not one opsbot records"),
        ("role comms daniel", "mention the person and name the role"),
        ("severity high", "severity 'high' must be 1 (worst) to 4."),
        ("severity INC-2026-0001 -1", "severity '-1' must be 1 (worst) to 4."),  # was taken as SEV1
        ("severity -4", "severity '-4' must be 1 (worst) to 4."),
    ],
)
def test_mistakes_are_refused_with_what_to_type(text: str, message: str) -> None:
    with pytest.raises(InvalidRequest) as refused:
        parse_incident(text)
    assert message in str(refused.value)
