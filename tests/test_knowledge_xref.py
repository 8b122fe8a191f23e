"""Service names across knowledge files: what incidents, runbooks and the roster name, checked against services.yaml.

A slip of a defined service is a problem with its file, line and the service meant; a name close to none is
another service (retired, or not deployed through opsbot), only noted.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

import bot.cli.knowledge as knowledge_cli
from bot.knowledge import load_knowledge
from bot.knowledge_xref import near_service
from bot.store import Store
from tests.conftest import SAMPLE_KNOWLEDGE, FakeEncoder, invoke
from tests.test_knowledge import INCIDENT_MD, INCIDENT_YAML, ROSTER, write

SERVICES = """\
services:
  checkout-api: {owners: [payments]}
  payments-gateway: {owners: [payments]}
  auth-service: {owners: [platform]}
  storefront-web: {owners: [platform]}
  shard-1: {owners: [platform]}
"""

RUNBOOK = """\
---
title: Checkout latency
services:
  - payments-gateway
  - {service}
---
Checkout is slow; look at the pool first.
"""


def knowledge(root: Path, files: dict[str, str], services: str | None = SERVICES, roster: str = ROSTER) -> list[str]:
    """The problems of a folder holding ``roster``, ``services`` as services.yaml and ``files`` (path: text)."""
    write(root, "experts.yaml", roster)
    if services is not None:
        write(root, "services.yaml", services)
    for rel, text in files.items():
        write(root, rel, text)
    return [str(p) for p in load_knowledge(root).problems]


def test_a_runbook_naming_a_slip_of_a_service_is_a_problem_with_its_line_and_the_service_meant(tmp_path: Path) -> None:
    found = knowledge(tmp_path, {"runbooks/checkout/latency.md": RUNBOOK.format(service="chekout-api")})

    assert len(found) == 1, found
    assert found[0].startswith(
        "runbooks/checkout/latency.md:5: services: `chekout-api` is not a service of services.yaml; "
        "did you mean `checkout-api`? As written, this runbook is not labelled checkout-api"
    )
    assert "Correct the name, or, if `chekout-api` is another service, add it to services.yaml" in found[0]


def test_a_file_that_does_not_load_still_has_its_service_and_responder_slips_reported_at_once(tmp_path: Path) -> None:
    # Before, `check` showed the severity only, and the slips after it was fixed: one run per problem.
    incident = (
        INCIDENT_YAML.replace("severity: 2", "severity: 9")
        .replace("services: [checkout-api, payments-gateway]", "services: [chekout-api]")
        .replace("responders: [U03F8K2LQ1, U04C2RN8VD]", "responders: [Daniel Okafor]")
    )
    runbook = RUNBOOK.format(service="chekout-api").replace("title: Checkout latency", "title: [not, text]")

    found = knowledge(tmp_path, {"incidents/INC-2025-0042.yaml": incident, "runbooks/latency.md": runbook})

    mine = [p for p in found if p.startswith("incidents/INC-2025-0042.yaml:")]
    assert any(":4: severity 9 must be 1 (worst) to 4" in p for p in mine), found
    assert any(p.startswith("incidents/INC-2025-0042.yaml:5: services: `chekout-api`") for p in mine), found
    assert any(":6: responder 'Daniel Okafor' is Daniel Okafor on the roster" in p for p in mine), found
    assert any(p.startswith("runbooks/latency.md:5: services: `chekout-api`") for p in found), found


def test_an_incident_naming_a_slip_of_a_service_is_a_problem_in_yaml_and_in_markdown(tmp_path: Path) -> None:
    yaml_incident = INCIDENT_YAML.replace("[checkout-api, payments-gateway]", "[checkout-api, payments-gatway]")
    md_incident = INCIDENT_MD.replace("services: auth-service,", "services: Auth_Service,")

    found = knowledge(
        tmp_path, {"incidents/2025/INC-2025-0042.yaml": yaml_incident, "incidents/2026/INC-2026-0007.md": md_incident}
    )

    assert [p.split(" As written")[0] for p in found] == [
        "incidents/2025/INC-2025-0042.yaml:5: services: `payments-gatway` is not a service of services.yaml; "
        "did you mean `payments-gateway`?",
        "incidents/2026/INC-2026-0007.md:6: services: `Auth_Service` is not a service of services.yaml; "
        "did you mean `auth-service`?",
    ] or found
    assert "this incident counts for none of payments-gateway's figures" in found[0]


@pytest.mark.parametrize(
    "name",
    [
        "ledger-etl",  # close to nothing: a service opsbot does not deploy
        "checkout-api-v2",  # a defined name with a word more: its own service
        "legacy-checkout-api",
        "shard-2",  # only the number differs from shard-1
        "checkout-web",  # a whole word differs
    ],
)
def test_a_name_unlike_every_defined_service_is_no_problem_but_is_noted(tmp_path: Path, name: str) -> None:
    assert knowledge(tmp_path, {"runbooks/checkout/latency.md": RUNBOOK.format(service=name)}) == []
    assert near_service(name, ["checkout-api", "shard-1"]) is None
    notes = load_knowledge(tmp_path).notes
    assert len(notes) == 1 and f"{name} (1 file)" in notes[0], notes


@pytest.mark.parametrize(
    "name, meant",
    [
        ("chekout-api", "checkout-api"),  # a letter missing
        ("checkuot-api", "checkout-api"),  # two swapped
        ("checkout-apii", "checkout-api"),  # one added
        ("CheckoutAPI", "checkout-api"),  # case and separators only
        ("checkout_api", "checkout-api"),
        ("payments/gateway", "payments-gateway"),
        ("checkout-apl", None),  # in a word of three letters a slip cannot be told from another word (app)
        ("discovery/ec2", None),  # a shared prefix is not a slip: a whole word differs
    ],
)
def test_a_slip_is_one_close_word_or_only_case_and_separators(name: str, meant: str | None) -> None:
    assert near_service(name, ["checkout-api", "payments-gateway", "discovery/file"]) == meant


ROSTER_SERVICES = """\
people:
  - id: U03F8K2LQ1
    name: Priya Raman
    team: payments
    services:
      - checkout-api
      - {first}
  - id: U0BR0KEN1
    nme: Nobody
    team: payments
  - id: U03H1M9TZ4
    name: Marcus Oyelaran
    team: payments
    services: {second}
  - id: U04C2RN8VD
    name: Daniel Okafor
    team: platform
rotations:
  payments:
    members: [U03F8K2LQ1, U03H1M9TZ4]
    handoff: monday 09:00
    start: 2026-01-05
    services: [payments-gateway, {third}]
"""


def roster(first: str = "payments-gateway", second: str = "checkout-api", third: str = "checkout-api") -> str:
    """A roster whose people and rota name ``first``, ``second`` and ``third``; its second person does not load."""
    return ROSTER_SERVICES.format(first=first, second=second, third=third)


def test_the_roster_with_defined_services_only_is_clean(tmp_path: Path) -> None:
    assert knowledge(tmp_path, {}, roster=roster()) == ["experts.yaml:8: person #2: missing name"]
    assert load_knowledge(tmp_path).notes == []


def test_a_slip_in_a_persons_services_is_a_problem_with_their_line_and_what_it_breaks(tmp_path: Path) -> None:
    found = knowledge(tmp_path, {}, roster=roster(first="payments-gatway", second="Checkout_API"))[1:]

    assert [p.split(" As written")[0] for p in found] == [
        "experts.yaml:7: person #1 (U03F8K2LQ1): services: `payments-gatway` is not a service of services.yaml; "
        "did you mean `payments-gateway`?",
        "experts.yaml:14: person #3 (U03H1M9TZ4): services: `Checkout_API` is not a service of services.yaml; "
        "did you mean `checkout-api`?",  # one name, not a list: the key's line
    ], found
    assert (
        "As written, Priya Raman is not an owner of payments-gateway, so expert suggestions for payments-gateway "
        "miss their ownership signal. Correct the name, or, if `payments-gatway` is another service, add it to "
        "services.yaml"
    ) in found[0]


def test_a_roster_that_is_only_the_list_of_people_has_its_lines_too(tmp_path: Path) -> None:
    people = roster(second="payments-gatway").split("rotations:")[0].removeprefix("people:\n")

    found = knowledge(tmp_path, {}, roster=people)[1:]

    assert len(found) == 1 and found[0].startswith("experts.yaml:13: person #3 (U03H1M9TZ4): services: "), found


def test_a_slip_in_a_rotas_services_is_a_problem_with_its_line_and_what_it_breaks(tmp_path: Path) -> None:
    found = knowledge(tmp_path, {}, roster=roster(third="chekout-api"))[1:]

    assert len(found) == 1, found
    assert found[0].startswith(
        "experts.yaml:23: rotations.payments.services: `chekout-api` is not a service of services.yaml; "
        "did you mean `checkout-api`? As written, the payments rota does not cover checkout-api, so /oncall "
        "checkout-api and the on-call signal of expert suggestions find a rota for checkout-api only through "
        "services.yaml `team:` or its owners' teams. Correct the name"
    ), found


def test_a_name_in_the_roster_unlike_every_defined_service_is_only_noted(tmp_path: Path) -> None:
    assert len(knowledge(tmp_path / "roster", {}, roster=roster(first="ledger-etl", third="ledger-etl"))) == 1
    runbook = {"runbooks/a.md": RUNBOOK.format(service="legacy-checkout-api")}
    assert len(knowledge(tmp_path / "both", runbook, roster=roster(second="shard-2"))) == 1

    assert load_knowledge(tmp_path / "roster").notes == [
        "the roster names 1 service(s) services.yaml does not define, taken as services opsbot does not deploy: "
        "ledger-etl (1 file). Add any that opsbot should know to services.yaml."
    ]
    both = load_knowledge(tmp_path / "both").notes
    assert both[0].startswith(
        "runbooks or the roster name 2 service(s) services.yaml does not define, taken as services opsbot does not "
        "deploy: legacy-checkout-api (1 file), shard-2 (1 file)."
    ), both


def test_without_services_in_services_yaml_no_name_is_checked(tmp_path: Path) -> None:
    runbook = RUNBOOK.format(service="chekout-api")
    slips = roster(first="chekout-api", second="ledger-etl", third="payments-gatway")
    assert knowledge(tmp_path / "none", {"runbooks/a.md": runbook}, None, slips)[1:] == []
    assert knowledge(tmp_path / "empty", {"runbooks/a.md": runbook}, "services: {}\n", slips)[1:] == []
    failed = knowledge(tmp_path / "failed", {}, "services: [\n", slips)[1:]
    assert [p.split(":")[0] for p in failed] == ["services.yaml"], failed
    assert [load_knowledge(tmp_path / name).notes for name in ("none", "empty", "failed")] == [[], [], []]


def test_a_service_whose_entry_has_a_problem_is_still_defined(tmp_path: Path) -> None:
    services = SERVICES.replace("checkout-api: {owners: [payments]}", "checkout-api: {owners: [payments], chanel: C1}")

    found = knowledge(tmp_path, {"runbooks/a.md": RUNBOOK.format(service="checkout-api")}, services)

    assert len(found) == 1 and "unknown key `chanel`" in found[0], found  # the runbook's name is not a second one


def test_the_sample_names_only_services_it_defines_and_a_slip_in_it_is_caught(tmp_path: Path) -> None:
    assert load_knowledge(SAMPLE_KNOWLEDGE).notes == []
    root = tmp_path / "knowledge"
    shutil.copytree(SAMPLE_KNOWLEDGE, root)
    path = root / "runbooks" / "checkout-api" / "high-latency.md"
    text = path.read_text(encoding="utf-8")
    assert "services: [checkout-api" in text
    path.write_text(text.replace("services: [checkout-api", "services: [chekout-api", 1), encoding="utf-8")
    roster_text = (root / "experts.yaml").read_text(encoding="utf-8")
    assert "services: [inventory-service]" in roster_text
    roster_text = roster_text.replace("[inventory-service]", "[inventory-servce]")
    (root / "experts.yaml").write_text(roster_text, encoding="utf-8")

    result = invoke("check", str(root))

    assert result.exit_code == 1
    assert "runbooks/checkout-api/high-latency.md:3: services: `chekout-api`" in result.stdout
    assert "did you mean `checkout-api`?" in result.stdout
    assert "experts.yaml:44: person #6 (U05E4TY6MF): services: `inventory-servce`" in result.stdout
    assert "did you mean `inventory-service`?" in result.stdout


def test_check_prints_the_note_and_still_exits_0(tmp_path: Path) -> None:
    runbook = RUNBOOK.format(service="ledger-etl")
    knowledge(tmp_path, {"runbooks/a.md": runbook, "runbooks/b.md": runbook})

    result = invoke("check", str(tmp_path))
    as_json = invoke("check", "--json", str(tmp_path))

    assert result.exit_code == 0, result.output
    assert "Note: runbooks name 1 service(s) services.yaml does not define" in result.stdout
    assert "ledger-etl (2 files)" in result.stdout
    assert as_json.exit_code == 0 and '"notes": [' in as_json.stdout


def test_index_reports_the_slip_too_and_strict_fails_on_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(knowledge_cli, "_open", lambda settings: (Store(tmp_path / "index.db"), FakeEncoder()))
    root = tmp_path / "knowledge"
    knowledge(root, {"runbooks/a.md": RUNBOOK.format(service="chekout-api")})

    result = invoke("index", "--nice", "0", "--strict", str(root))

    assert result.exit_code == 1
    assert "Warning: runbooks/a.md:5: services: `chekout-api` is not a service of services.yaml" in result.stderr
