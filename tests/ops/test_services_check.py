"""services.yaml checked like the other knowledge files: unknown keys named with the closest known one, every
problem of a run at once with its line, approvers resolved against the roster.

The roster is tests/ops/fixtures.py's: teams web (Alice, Bob, Gina), sre (Carol, Frank) and data (Dave, Erin).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bot.alert_config import parse_alert_settings
from bot.knowledge import load_knowledge
from bot.services import Emergency, parse_service, parse_settings
from tests.ops.fixtures import DAVE, DEMO, ROSTER, make_knowledge

RUNNER = f"deploy: {{command: {DEMO}}}"


def problems_of(tmp_path: Path, services: str, roster: str = ROSTER) -> list[str]:
    make_knowledge(tmp_path, services)
    (tmp_path / "experts.yaml").write_text(roster, encoding="utf-8")
    return [str(p) for p in load_knowledge(tmp_path).problems]


def one_service(environments: str, more: str = "") -> str:
    return f"services:\n  api:\n    environments:\n{environments}    {RUNNER}\n{more}"


@pytest.mark.parametrize(
    "text, expected",
    [
        (
            f"services:\n  api:\n    enviroments:\n      prod: {{approvals: 1, approvers: [sre]}}\n    {RUNNER}\n",
            "services.yaml:3: services.api: unknown key `enviroments`; did you mean `environments`?",
        ),
        (
            one_service("      prod: {approvals: 1, approvers: [sre], aprovers: [web]}\n"),
            "services.yaml:4: services.api.environments.prod: unknown key `aprovers`; did you mean `approvers`?",
        ),
        (
            one_service("      prod: {approvals: 1, approvers: [sre]}\n").replace("{command:", "{timout: 5, command:"),
            "services.yaml:5: services.api.deploy: unknown key `timout`; did you mean `timeout`?",
        ),
        (
            "setings: {deploys_channel: C0DEPLOYS1}\n" + one_service("      prod: {approvals: 1, approvers: [sre]}\n"),
            "services.yaml:1: setings: unknown top-level key; did you mean `settings`?",
        ),
        (
            "settings: {deploys_chanel: C0DEPLOYS1}\n" + one_service("      prod: {approvals: 1, approvers: [sre]}\n"),
            "services.yaml:1: settings: unknown key `deploys_chanel`; did you mean `deploys_channel`?",
        ),
        (
            one_service(
                "      prod:\n        approvals: 1\n        approvers: [sre]\n"
                '        freeze: [{start: "2026-12-23T18:00:00Z", end: "2026-12-27T08:00:00Z", reson: peak}]\n'
            ),
            "services.yaml:7: services.api.environments.prod.freeze[0]: unknown key `reson`; did you mean `reason`?",
        ),
        (
            one_service("      prod: {approvals: 2, approvers: [sre], emergency: {rollback_approval: 1}}\n"),
            "services.yaml:4: services.api.environments.prod.emergency: unknown key `rollback_approval`; "
            "did you mean `rollback_approvals`?",
        ),
        (
            "services:\n  api:\n    environments:\n      prod: {approvals: 1, approvers: [sre]}\n"
            "    deploy: {webhook: {url: 'https://ci.example.com/hook', secret_heder: X-Token}}\n",
            "services.yaml:5: services.api.deploy.webhook: unknown key `secret_heder`; did you mean `secret_header`?",
        ),
    ],
    ids=["service", "environment", "runner", "top-level", "settings", "freeze", "emergency", "webhook"],
)
def test_an_unknown_key_is_named_with_the_key_it_resembles(tmp_path: Path, text: str, expected: str) -> None:
    assert problems_of(tmp_path, text) == [expected]


def test_every_problem_of_the_file_is_reported_in_one_run_in_file_order(tmp_path: Path) -> None:
    text = f"""\
settings:
  request_ttl_minutes: 0
  deploys_chanel: C0DEPLOYS1
services:
  api:
    owners: [{DAVE}]
    enviroments:
      prod: {{approvals: 1, approvers: [sre]}}
    {RUNNER}
  web:
    environments:
      prod: {{approvals: 3, approvers: [billing, sre]}}
      staging: {{aprovals: 1, approvers: [web]}}
    deploy: {{command: ["deploy.sh", "{{servce}}"], timout: 5}}
  fine:
    environments:
      staging: {{approvals: 1, approvers: [web]}}
    {RUNNER}
"""
    found = problems_of(tmp_path, text)

    assert found == [
        "services.yaml:2: settings.request_ttl_minutes: 0 must be a whole number of 1 or more",
        "services.yaml:3: settings: unknown key `deploys_chanel`; did you mean `deploys_channel`?",
        "services.yaml:7: services.api: unknown key `enviroments`; did you mean `environments`?",
        "services.yaml:12: services.web.environments.prod.approvers: 'billing' is neither a team nor a person on "
        "the roster (experts.yaml); the roster's teams are data, sre, web",
        "services.yaml:12: services.web.environments.prod.approvers: needs 3 approvals but only 2 people on the "
        "roster may give them (Carol Cruz, Frank Field), so its requests could never run; name more teams or people",
        "services.yaml:13: services.web.environments.staging: unknown key `aprovals`; did you mean `approvals`?",
        "services.yaml:14: services.web.deploy: unknown key `timout`; did you mean `timeout`?",
        "services.yaml:14: services.web.deploy.command: unknown placeholder {servce}; "
        "use ('service', 'version', 'env', 'request_id', 'python')",
    ]
    kb = load_knowledge(tmp_path)
    assert sorted(kb.services) == ["fine"]  # a service with a problem is left out, the others load
    assert kb.deploy_settings == {}  # both settings were wrong: each is left out, the defaults are used


@pytest.mark.parametrize(
    "approvers, says",
    [
        ("[sr]", "'sr' is neither a team nor a person on the roster (experts.yaml); did you mean `sre`?"),
        ("[billing]", "nobody on the roster may approve api in prod, so its requests could never run"),
        ("[UNOBODY0001]", "'UNOBODY0001' is neither a team nor a person on the roster"),
    ],
)
def test_approvers_must_name_a_team_or_a_person_on_the_roster(tmp_path: Path, approvers: str, says: str) -> None:
    found = problems_of(tmp_path, one_service(f"      prod: {{approvals: 1, approvers: {approvers}}}\n"))

    assert any(says in p for p in found), found
    assert all(p.startswith("services.yaml:4: services.api.environments.prod.approvers: ") for p in found)
    assert "api" not in load_knowledge(tmp_path).services  # nobody could approve its requests: not deployable


def test_people_who_left_cannot_approve(tmp_path: Path) -> None:
    roster = ROSTER.replace("team: data}", "team: data, left: 2020-01-01}")

    found = problems_of(tmp_path, one_service("      prod: {approvals: 1, approvers: [data]}\n"), roster)

    assert found == [
        "services.yaml:4: services.api.environments.prod.approvers: nobody on the roster may approve api in prod, "
        "so its requests could never run; name more teams or people"
    ]


def test_approvers_are_not_checked_against_a_roster_that_could_not_be_read(tmp_path: Path) -> None:
    found = problems_of(tmp_path, one_service("      prod: {approvals: 1, approvers: [billing]}\n"), "people: [")

    assert len(found) == 1 and found[0].startswith("experts.yaml:")  # the roster's own problem, once


def test_the_alert_keys_and_anchor_blocks_are_accepted(tmp_path: Path) -> None:
    text = f"""\
settings:
  alerts_channel: C04ALERTS1
  alertmanager_urls: [http://alertmanager:9093]
  alert_silencers: [sre]
x-runner: &runner
  {RUNNER}
services:
  api:
    alerts: {{match: {{app: checkout}}}}
    team: web
    channel: C0API00001
    environments:
      prod: {{approvals: 1, approvers: [sre]}}
    <<: *runner
"""
    assert problems_of(tmp_path, text) == []


def test_two_services_with_the_same_alert_match_are_reported_and_still_deploy(tmp_path: Path) -> None:
    # Before, a match copied from another service passed: routing broke the tie by name, and every alert of
    # one service went to the other's channel.
    entry = f"    environments:\n      prod: {{approvals: 1, approvers: [sre]}}\n    {RUNNER}\n"
    text = (
        f"services:\n  checkout:\n    alerts: {{match: {{app: checkout, tier: web}}}}\n{entry}"
        f"  gateway:\n    alerts: {{match: {{tier: web, app: checkout}}}}\n{entry}"
        f"  search:\n    alerts: {{match: {{app: checkout, tier: api}}}}\n{entry}"
    )

    assert problems_of(tmp_path, text) == [
        "services.yaml:8: services.gateway.alerts.match: {app: checkout, tier: web} is also the match of checkout, so "
        "an alert with these labels goes to checkout (the first by name) and never to gateway; give each service "
        "labels of its own"
    ]
    assert sorted(load_knowledge(tmp_path).services) == ["checkout", "gateway", "search"]


def test_an_emergency_rule_is_read_and_checked(tmp_path: Path) -> None:
    entry = {
        "environments": {"prod": {"approvals": 2, "approvers": ["sre"], "emergency": {"rollback_approvals": 1}}},
        "deploy": {"command": ["deploy.sh"]},
    }
    assert parse_service("api", entry).environments["prod"].emergency == Emergency(1, (1, 2))
    entry["environments"]["prod"]["emergency"] = {"rollback_approvals": 1, "while_incident": ["sev-1", "SEV3"]}
    assert parse_service("api", entry).environments["prod"].emergency == Emergency(1, (1, 3))

    bad = "      prod: {approvals: 2, approvers: [sre], emergency: {rollback_approvals: 2, while_incident: [SEV5]}}\n"
    found = problems_of(tmp_path, one_service(bad))

    assert found == [
        "services.yaml:4: services.api.environments.prod.emergency.rollback_approvals: 2 must be fewer than the "
        "environment's approvals (2), else the rule changes nothing",
        "services.yaml:4: services.api.environments.prod.emergency.while_incident: ['SEV5'] must list severities, "
        "for example [SEV1, SEV2]",
    ]


def test_an_incident_env_that_no_service_has_is_reported_with_what_to_set(tmp_path: Path) -> None:
    text = "settings:\n  deploys_channel: C0DEPLOYS1\n  incident_env: prod\n" + one_service(
        "      production: {approvals: 1, approvers: [sre]}\n      staging: {approvals: 1, approvers: [sre]}\n"
    )
    assert problems_of(tmp_path, text) == [
        "services.yaml:3: settings.incident_env: 'prod' is no service's environment (production, staging); "
        "set it to production, the environment an incident hits when declared without --env"
    ]
    assert problems_of(tmp_path, text.replace("incident_env: prod", "incident_env: production")) == []


def test_a_duration_setting_beyond_a_year_is_a_problem_not_a_crash_of_every_summary(tmp_path: Path) -> None:
    # Before, 20,000,000 hours passed the check, and every DORA figure then failed on a date before year 1.
    one = one_service("      prod: {approvals: 1, approvers: [sre]}\n")
    for key, value, most in (
        ("failure_window_hours", 20_000_000, "8,760"),
        ("stale_ci_hours", 8_761, "8,760"),
        ("request_ttl_minutes", 10**12, "525,600"),
    ):
        text = f"settings:\n  deploys_channel: C0DEPLOYS1\n  {key}: {value}\n" + one
        assert problems_of(tmp_path, text) == [
            f"services.yaml:3: settings.{key}: {value} must be a whole number from 1 to {most} (a year)"
        ]
    text = "settings:\n  deploys_channel: C0DEPLOYS1\n  failure_window_hours: 8760\n" + one
    assert problems_of(tmp_path, text) == []


def test_a_webhook_body_is_checked_for_placeholders_like_a_command(tmp_path: Path) -> None:
    text = """\
services:
  hook:
    environments:
      staging: {approvals: 1, approvers: [web]}
    deploy:
      webhook:
        url: https://ci.example.com/hooks/deploy
        body:
          ref: "{version}"
          inputs:
            message: "deploy {sha}"
            targets: [{name: "{enviroment}"}]
            args: ["--ref", "{versoin}"]
  fine:
    environments:
      staging: {approvals: 1, approvers: [web]}
    deploy: {webhook: {url: "https://ci.example.com/hooks/deploy", body: {ref: "{version}", id: "{request_id}"}}}
"""
    assert problems_of(tmp_path, text) == [
        "services.yaml:11: services.hook.deploy.webhook.body.inputs.message: unknown placeholder {sha}; "
        "use ('service', 'version', 'env', 'request_id')",
        "services.yaml:12: services.hook.deploy.webhook.body.inputs.targets[0].name: unknown placeholder "
        "{enviroment}; use ('service', 'version', 'env', 'request_id')",
        "services.yaml:13: services.hook.deploy.webhook.body.inputs.args[1]: unknown placeholder "
        "{versoin}; use ('service', 'version', 'env', 'request_id')",
    ]
    assert sorted(load_knowledge(tmp_path).services) == ["fine"]  # never loaded, so it never reaches a run


@pytest.mark.parametrize(
    "body, says",
    [
        ('{ref: "{python}"}', "unknown placeholder {python}; use ('service', 'version', 'env', 'request_id')"),
        ('{ref: "{version"}', "'{version' cannot be filled in ("),
        ('{ref: "{version:{x}}"}', "unknown placeholder {x}"),
        ('"just text"', "must be a mapping, sent as JSON"),
        ("{on: 2026-12-24}", "cannot be sent as JSON"),
    ],
    ids=["no-python", "unmatched-brace", "nested-in-spec", "not-a-mapping", "a-yaml-date"],
)
def test_a_webhook_body_that_could_not_be_sent_is_a_problem(tmp_path: Path, body: str, says: str) -> None:
    text = one_service("      prod: {approvals: 1, approvers: [sre]}\n").replace(
        RUNNER, f'deploy: {{webhook: {{url: "https://ci.example.com/hook", body: {body}}}}}'
    )

    [problem] = problems_of(tmp_path, text)

    assert problem.startswith("services.yaml:5: services.api.deploy.webhook.body")
    assert says in problem


@pytest.mark.parametrize(
    "hook, says",
    [
        ('body: {ref: "{version}"}, await_report: true', "the body never sends {request_id}"),
        ('body: {ref: "{{request_id}}"}, await_report: true', "the body never sends {request_id}"),  # a literal
        ('body: {id: "{request_id}"}, await_report: "yes"', "'yes' must be true or false"),
    ],
    ids=["no-request-id", "escaped-braces", "not-a-boolean"],
)
def test_awaiting_a_report_needs_a_body_that_sends_the_request_id(tmp_path: Path, hook: str, says: str) -> None:
    text = one_service("      prod: {approvals: 1, approvers: [sre]}\n").replace(
        RUNNER, f'deploy: {{webhook: {{url: "https://ci.example.com/hook", {hook}}}}}'
    )

    [problem] = problems_of(tmp_path, text)

    assert problem.startswith("services.yaml:5: services.api.deploy.webhook.await_report: ") and says in problem
    assert load_knowledge(tmp_path).services == {}  # never loaded: its deploys would hold the lock for nothing
    fine = 'body: {ref: "{version}", id: "ci-{request_id}"}, await_report: true'
    assert problems_of(tmp_path, text.replace(hook, fine)) == []
    in_a_list = 'body: {args: ["--request", "{request_id}"]}, await_report: true'
    assert problems_of(tmp_path, text.replace(hook, in_a_list)) == []


def test_owners_must_name_a_team_or_a_person_on_the_roster_and_the_service_still_deploys(tmp_path: Path) -> None:
    slip = DAVE[:-1] + "9"  # an id with a slip in it
    owners = f"    owners: [web, {slip}, dta]\n"
    found = problems_of(tmp_path, one_service("      prod: {approvals: 1, approvers: [sre]}\n", owners))

    assert found == [
        f"services.yaml:6: services.api.owners: '{slip}' is neither a team nor a person on the roster (experts.yaml), "
        f"so it owns api for nobody: expert suggestions and rotas leave it out; did you mean `{DAVE}` (Dave Dunn)?",
        "services.yaml:6: services.api.owners: 'dta' is neither a team nor a person on the roster (experts.yaml), "
        "so it owns api for nobody: expert suggestions and rotas leave it out; did you mean `data`?",
    ]
    assert "api" in load_knowledge(tmp_path).services  # who owns it decides suggestions, not who may deploy it


def test_a_list_of_owners_is_reported_at_the_line_of_the_owner(tmp_path: Path) -> None:
    owners = "    owners:\n      - web\n      - wbe\n"
    found = problems_of(tmp_path, one_service("      prod: {approvals: 1, approvers: [sre]}\n", owners))

    assert [p.split(": '")[0] for p in found] == ["services.yaml:8: services.api.owners"], found


@pytest.mark.parametrize(
    "team, says",
    [
        ("sre", None),
        (
            "sr",
            "services.api.team: 'sr' is a team nobody on the roster (experts.yaml) belongs to, so no rota covers "
            "api through it; did you mean `sre`?",
        ),
        (
            "billing",
            "'billing' is a team nobody on the roster (experts.yaml) belongs to, so no rota covers api "
            "through it; the roster's teams are data, sre, web",
        ),
        ("[sre, web]", "services.api.team: ['sre', 'web'] must be one team of the roster, such as data"),
    ],
)
def test_a_service_team_must_be_one_team_of_the_roster(tmp_path: Path, team: str, says: str | None) -> None:
    found = problems_of(tmp_path, one_service("      prod: {approvals: 1, approvers: [sre]}\n", f"    team: {team}\n"))

    if says is None:
        assert found == []
    else:
        assert len(found) == 1 and found[0].startswith("services.yaml:6: ") and says in found[0], found


def test_alert_silencers_must_name_someone_on_the_roster(tmp_path: Path) -> None:
    text = "settings:\n  alert_silencers: [sre, srr]\n" + one_service("      prod: {approvals: 1, approvers: [sre]}\n")

    found = problems_of(tmp_path, text)

    assert found == [
        "services.yaml:2: settings.alert_silencers: 'srr' is neither a team nor a person on the roster (experts.yaml), "
        "so whoever it means cannot silence alerts from Slack; did you mean `sre`?"
    ]
    assert load_knowledge(tmp_path).deploy_settings is not None  # the other settings still count


def test_a_wrong_setting_is_left_out_and_the_other_settings_still_count(tmp_path: Path) -> None:
    # Before, one slip (`stale_ci_hour`) dropped the whole block: alerts of services without a channel of their own
    # had nowhere to go, and the digest and deploy summaries stopped, while `check` named only the slip.
    text = """\
settings:
  deploys_channel: C0DEPLOYS1
  alerts_channel: C04ALERTS1
  stale_ci_hour: 6
  request_ttl_minutes: 0
  alertmanager_urls: [ftp://am:9093]
  alert_silencers: [sre, 7]
  weekly_digest: {channel: C0DEPLOYS1, day: moonday}
""" + one_service("      prod: {approvals: 1, approvers: [sre]}\n")

    found = problems_of(tmp_path, text)

    assert found == [
        "services.yaml:4: settings: unknown key `stale_ci_hour`; did you mean `stale_ci_hours`?",
        "services.yaml:5: settings.request_ttl_minutes: 0 must be a whole number of 1 or more",
        "services.yaml:6: settings.alertmanager_urls[0]: 'ftp://am:9093' must be an http:// or https:// URL with "
        "a host",
        "services.yaml:7: settings.alert_silencers: must list roster ids or team names, for example [sre]",
        "services.yaml:8: settings.weekly_digest.day: 'moonday' must be a day of the week, such as monday",
    ]
    settings = load_knowledge(tmp_path).deploy_settings
    assert settings == {"deploys_channel": "C0DEPLOYS1", "alerts_channel": "C04ALERTS1"}
    assert parse_settings(settings).channel == "C0DEPLOYS1"
    assert parse_alert_settings(settings).channel == "C04ALERTS1"


def test_two_services_that_differ_only_in_case_or_separators_are_reported(tmp_path: Path) -> None:
    # Before, `Checkout-API` beside `checkout-api` passed: two services, each with its own approvals and lock.
    entry = f"    environments:\n      prod: {{approvals: 1, approvers: [sre]}}\n    {RUNNER}\n"
    text = f"services:\n  checkout-api:\n{entry}  checkout-web:\n{entry}  Checkout_API:\n{entry}"

    found = problems_of(tmp_path, text)

    assert found == [
        "services.yaml:10: services.Checkout_API: differs from `checkout-api` (line 2) only in case or separators, "
        "so opsbot takes them for two services, each with its own approvals, deploy lock and figures; write one "
        "name and merge the two entries"
    ]
    assert problems_of(tmp_path, text.replace("Checkout_API", "checkout-api-v2")) == []  # another service


def test_owners_and_teams_are_not_checked_without_a_roster(tmp_path: Path) -> None:
    (tmp_path / "services.yaml").write_text("services:\n  api: {owners: [nobody], team: nobody}\n", encoding="utf-8")

    assert load_knowledge(tmp_path).problems == []  # no experts.yaml: no roster to name anyone
    found = problems_of(tmp_path / "broken", "services:\n  api: {owners: [nobody], team: nobody}\n", "people: [")
    assert len(found) == 1 and found[0].startswith("experts.yaml:"), found  # the roster's own problem, once


def test_a_nul_character_in_a_command_argument_is_a_problem(tmp_path: Path) -> None:
    text = one_service("      prod: {approvals: 1, approvers: [sre]}\n").replace(
        RUNNER, 'deploy: {command: ["./deploy.sh", "--note=a\\0b", "{version}"]}'
    )
    found = problems_of(tmp_path, text)

    assert found == [
        "services.yaml:5: services.api.deploy.command: argument 2 holds a NUL character (\\0), which no command "
        "can be given; remove it"
    ]


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ("services:\n  api:\n    owners: [a, b\n", 3),  # an unclosed [: where it opens, not a line after the file
        ("services:\n  api:\n    team: 'payments\n", 3),  # an unclosed quote
        ("services:\n  api:\n    owners: [a,\n      b,\n      c", 3),  # and no line break at the end
    ],
)
def test_yaml_left_open_at_the_end_is_reported_where_it_opens(tmp_path: Path, text: str, line: int) -> None:
    [problem] = problems_of(tmp_path, text)

    assert problem.startswith(f"services.yaml:{line}: not valid YAML"), problem
