"""f. A deploy runner that prints secrets in many formats: none may reach the database, a log, or Slack."""

from __future__ import annotations

import json
import random
import string

import pytest

from bot.ops.requests import FINAL
from tests.fault.harness import ALICE, BOB, Cluster, dump_text, scaled, wait_until
from tests.fault.report import COLLECTOR

pytestmark = pytest.mark.fault
PEM_BODY_LINES = 74  # with its BEGIN and END lines, a 76-line key
ALNUM = string.ascii_letters + string.digits


def secret_catalog(rng: random.Random) -> tuple[list[str], list[str], dict[str, str]]:
    """(lines printed at once, PEM lines printed slowly, {format: secret value}), fresh random values each run."""

    def token(n: int, alphabet: str = ALNUM) -> str:
        return "".join(rng.choice(alphabet) for _ in range(n))

    values = {
        "AWS SecretAccessKey": token(40, ALNUM + "/+"),
        "AWS SessionToken": token(320, ALNUM + "/+="),
        "github_pat_": f"github_pat_{token(22)}_{token(59)}",
        "sk_live_": f"sk_live_{token(24)}",
        "--password X": token(16),
        "mysql -pX": token(14),
        "DB_PASS=": token(18),
        'JSON "password"': token(20),
        "xoxb-": f"xoxb-{token(12, string.digits)}-{token(13, string.digits)}-{token(24)}",
        "Bearer": token(40, ALNUM + "._-"),
    }
    lines = [
        "assuming the deploy role:",
        "{",
        '    "Credentials": {',
        f'        "AccessKeyId": "ASIA{token(16, string.ascii_uppercase + string.digits)}",',
        f'        "SecretAccessKey": "{values["AWS SecretAccessKey"]}",',
        f'        "SessionToken": "{values["AWS SessionToken"]}",',
        '        "Expiration": "2026-12-05T14:00:00+00:00"',
        "    },",
        '    "AssumedRoleUser": {"Arn": "arn:aws:sts::123456789012:assumed-role/deploy/opsbot"}',
        "}",
        f"registry login with {values['github_pat_']}",
        f"payments smoke test using {values['sk_live_']}",
        f"running: release-tool --user admin --password {values['--password X']} --apply",
        f"running: mysql -uadmin -p{values['mysql -pX']} -h db.internal larder < migrate.sql",
        f"DB_PASS={values['DB_PASS=']}",
        json.dumps({"user": "admin", "password": values['JSON "password"']}),
        f"notifying with {values['xoxb-']}",
        f"curl -H 'Authorization: Bearer {values['Bearer']}' https://deploy.example/api/v1/rollout",
    ]
    pem = ["-----BEGIN RSA PRIVATE KEY-----"]
    pem += [token(64, ALNUM + "+/") for _ in range(PEM_BODY_LINES)]
    pem.append("-----END RSA PRIVATE KEY-----")
    for n, line in enumerate(pem[1:-1]):
        values[f"PEM line {n + 1}"] = line
    return lines, pem, values


def leaks(text: str, values: dict[str, str]) -> list[str]:
    """Which secrets show in ``text``: whole, or a 24-character start or end of one (a cut-off copy)."""
    found = []
    for name, value in values.items():
        pieces = {value, value[:24], value[-24:]} if len(value) > 24 else {value}
        if any(piece in text for piece in pieces):
            found.append(name)
    return found


def test_secrets_printed_by_a_runner_reach_no_table_log_or_slack_call(cluster: Cluster) -> None:
    rng = random.Random()
    runs = scaled(1, 2)
    serve = cluster.start()
    slack = serve.slack(cluster.proxy)
    with COLLECTOR.scenario("f. secrets in runner output") as s:
        every: dict[str, str] = {}
        for n in range(runs):
            lines, pem, values = secret_catalog(rng)
            every |= values
            # One PEM line per 100 ms at full scale; a small run prints faster (progress updates still see them).
            pace = {"pem_delay": scaled(0.04, 0.1), "line_delay": scaled(0.12, 0.25)}
            catalog = {"lines": lines, "pem": pem, **pace}
            (cluster.root / "secrets.json").write_text(json.dumps(catalog), encoding="utf-8")
            known = {r["id"] for r in cluster.requests("leaky")}
            slack.command_named("/deploy", f"leaky 3.{n}.0 staging", user=ALICE)
            row = cluster.wait_for_request("leaky", known)
            assert row is not None, serve.log()[-2000:]
            slack.approve(row["id"], BOB, message_ts=cluster.wait_for_posted(row["id"]).get("message_ts", ""))
            final = cluster.wait_for_status(row["id"], FINAL, timeout=90)
            s.tried += 1
            s.check("the deploy ran to its end", final is not None and final["status"] == "succeeded", str(final))
            # the summary is the last thing posted; wait for it before looking at what Slack received
            wait_until(lambda: any("succeeded" in (m.get("text") or "") for m in cluster.api.messages()), 30)
        s.note(f"{runs} run(s), {len(every)} secret values of {len(set(k.split(' line')[0] for k in every))} formats")
        stored = leaks(dump_text(cluster.db_path), every)
        s.check("no secret in the database", not stored, f"found {summarise(stored)}")
        logged = leaks(cluster.logs(), every)
        s.check("no secret in the process logs", not logged, f"found {summarise(logged)}")
        for method in sorted({c.method for c in cluster.api.calls()}):
            sent = leaks("\n".join(json.dumps(c.body) for c in cluster.api.calls(method)), every)
            s.check("no secret in any call Slack received", not sent, f"{method}: {summarise(sent)}")
    assert s.ok, s.failure()


def summarise(names: list[str]) -> str:
    """Names of leaked secrets, the PEM lines counted rather than listed."""
    pem = [n for n in names if n.startswith("PEM line")]
    rest = [n for n in names if not n.startswith("PEM line")]
    return ", ".join(rest + ([f"{len(pem)} of {PEM_BODY_LINES} PEM key lines"] if pem else [])) or "nothing"
