"""Reading /incident commands: the forms people bring from other tools, and clear refusals."""

from __future__ import annotations

import pytest

from bot.errors import InvalidRequest
from bot.slack.incident_commands import IncidentCommand, likely_services, mentioned_services, parse_incident

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


@pytest.mark.parametrize(
    "text",
    [
        'declare "Pager sev1 escalations not delivered --env staging --service checkout-api"',
        "declare “Pager sev1 escalations not delivered --env staging --service checkout-api”",
        "declare ‘Pager sev1 escalations not delivered --env staging --service checkout-api’",
    ],
)
def test_quoted_words_are_the_title_only(text: str) -> None:
    # Before, `sev1` was taken from the title as its severity, and --env/--service from inside the quotes.
    assert parse_incident(text) == IncidentCommand(
        "declare", title="Pager sev1 escalations not delivered --env staging --service checkout-api"
    )
    asked = parse_incident('declare sev3 "Pager sev1 escalations not delivered" --env staging')
    assert (asked.title, asked.severity, asked.env) == ("Pager sev1 escalations not delivered", 3, "staging")
    # An apostrophe is no quote: it opens nothing that does not close at the end of a word.
    assert parse_incident("declare Bob's pool 'til dawn sev2").title == "Bob's pool 'til dawn"
    # Quotes in a title are kept as typed (only a title that is one quoted phrase loses them), and what they hold
    # is still the title's only.
    assert parse_incident('declare Pager "sev1" escalations not delivered "--env staging"') == IncidentCommand(
        "declare", title='Pager "sev1" escalations not delivered "--env staging"'
    )
    asked = parse_incident('declare Login fails with "invalid token" sev2')
    assert (asked.title, asked.severity) == ('Login fails with "invalid token"', 2)
    assert parse_incident("declare 'til the users' sessions expire sev2").title == "'til the users' sessions expire"


def test_a_dash_in_a_title_stays_a_dash_and_a_dashed_option_is_still_an_option() -> None:
    # Before, a dash at the start of any word became `--`: "Checkout -- EU payments failing".
    assert (
        parse_incident("declare Checkout – EU payments failing — —ish").title == "Checkout – EU payments failing — —ish"
    )
    for dash in ("—", "–"):
        assert parse_incident(f"declare Checkout – EU down {dash}sev 2 {dash}env=staging") == IncidentCommand(
            "declare", title="Checkout – EU down", severity=2, env="staging"
        )


def test_a_link_typed_with_a_label_shows_its_address_and_slack_s_references_stay() -> None:
    # Slack escapes a typed `<`; undone, the text below was posted as a link to evil.example labelled as Grafana.
    typed = parse_incident("note &lt;https://evil.example/x|https://grafana.internal/d/checkout&gt; pool &lt; 20")
    assert typed.text == "<https://evil.example/x> pool < 20"
    # What Slack itself sends for a mention, a channel and a link keeps working.
    references = f"<@{DANIEL}|daniel> in <#C0OPS0001|ops> saw <https://grafana.internal/d/checkout>"
    assert parse_incident(f"note {references}").text == references
    assert parse_incident(f"assign <@{DANIEL}|daniel> comms") == IncidentCommand("assign", user=DANIEL, role="comms")


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
    # The option is a word of its own, outside quotes: before, it was found inside any word or phrase.
    typed = "resolve Removed the --rootcause-analysis cron job that filled /var"
    assert parse_incident(typed) == IncidentCommand("resolve", text=typed.removeprefix("resolve "))
    assert parse_incident('resolve "ran it with --root-cause off" --root-cause pool') == IncidentCommand(
        "resolve", text="ran it with --root-cause off", root_cause="pool"
    )
    assert parse_incident('resolve Rolled back --root-cause="pool too small"').root_cause == "pool too small"
    assert parse_incident("resolve Rolled back --root-cause = bad config").root_cause == "bad config"
    assert parse_incident('resolve INC-2026-0001 ""') == IncidentCommand("resolve", "INC-2026-0001")  # the dialog
    with pytest.raises(InvalidRequest, match="--root-cause needs the root cause after it"):
        parse_incident('resolve Rolled back --root-cause ""')


def test_only_a_text_quoted_whole_loses_its_quotes() -> None:
    # Before, the first and last characters went whenever both were quotes, though they closed two phrases.
    two = '"pods restarted" and then "cache flushed"'
    for sub in ("note", "update", "rootcause", "cancel"):
        assert parse_incident(f"{sub} INC-2026-0001 {two}").text == two
        assert parse_incident(f'{sub} INC-2026-0001 "pods restarted"').text == "pods restarted"
    assert parse_incident(f"resolve INC-2026-0001 {two} --root-cause {two}") == IncidentCommand(
        "resolve", "INC-2026-0001", text=two, root_cause=two
    )
    assert parse_incident("note INC-2026-0001 “smart quotes”").text == "smart quotes"


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
        # thousands of digits: Python's int() refuses them (ValueError), which was shown as an error id
        ("severity " + "9" * 5000, f"severity '{'9' * 20}…' must be 1 (worst) to 4."),
        ("declare down --sev " + "1" * 5000, f"severity '{'1' * 20}…' must be 1 (worst) to 4."),
        ("sev" + "2" * 5000, f"severity 'sev{'2' * 17}…' must be 1 (worst) to 4."),
    ],
)
def test_mistakes_are_refused_with_what_to_type(text: str, message: str) -> None:
    with pytest.raises(InvalidRequest) as refused:
        parse_incident(text)
    assert message in str(refused.value)


def test_services_named_in_a_title_are_whole_names_in_any_case() -> None:
    # Before, `storage/remote` in a title attached `remote` too, and a service named with capitals was never found.
    known = {"remote", "storage/remote", "Checkout-API", "checkout"}
    assert mentioned_services("storage/remote write path failing", known) == ["storage/remote"]
    assert mentioned_services("checkout-api 503s after deploy", known) == ["Checkout-API"]
    assert mentioned_services("remote reads slow; checkout fine", known) == ["checkout", "remote"]


def test_a_title_may_mean_a_service_by_the_first_part_of_its_name_when_only_one_starts_so() -> None:
    known = {"checkout-api", "payments-gateway", "payments-ledger", "auth", "storage/remote", "ui"}
    assert likely_services("Checkout p99 above 3s", known) == ["checkout-api"]
    assert likely_services("payments failing", known) == []  # two services start so: neither is offered
    assert likely_services("storage slow; auth fine", known) == ["storage/remote"]  # auth is a whole name
    assert likely_services("checkouts slow", known) == []  # a whole word only
