"""POST /hooks/alertmanager on the real HTTP server with payloads captured from Alertmanager 0.25, against the fake
Slack Web API: one message per group with its briefing, edits and thread notes on repeats, the buttons."""

from __future__ import annotations

import json
import threading
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from bot.config import Secret
from bot.ops.alerts import AlertService
from bot.ops.incidents import LiveIncident
from bot.ops.requests import new_row
from bot.runtime import Runtime
from bot.slack import ids
from bot.slack.local.fake_api import Call, FakeSlackAPI
from tests.conftest import database_text
from tests.fakes import eventually
from tests.slack.conftest import Response, SlackDriver, send, shown, start_bot

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "alertmanager"
TOKEN = "am-token-0123456789abcdef"
ALERTS = "C04ALERTS1"  # settings.alerts_channel of the sample
PRIYA = "U03F8K2LQ1"  # payments: approves checkout-api
SAM = "U08P1CK3XQ"  # sre: settings.alert_silencers
LENA = "U07L2ZG4UM"  # frontend: may not silence checkout-api's alerts
RUNBOOK = "runbooks/postgres/connection-pool-exhausted.md"


def payload(name: str, **changes: object) -> dict:
    return json.loads((FIXTURES / f"{name}.json").read_text(encoding="utf-8")) | changes


def with_alert(**changes: object) -> dict:
    """The firing pgbouncer payload with ``changes`` to its first alert."""
    data = payload("pgbouncer-firing")
    data["alerts"][0] |= changes
    return data


class FakeAlertmanager:
    """Alertmanager's POST /api/v2/silences on loopback: records each silence and answers with its id."""

    def __init__(self) -> None:
        self.silences: list[dict] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                fake.silences.append({"path": self.path, **body})
                answer = json.dumps({"silenceID": f"silence-{len(fake.silences)}"}).encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def alertmanager() -> Iterator[FakeAlertmanager]:
    fake = FakeAlertmanager()
    yield fake
    fake.stop()


@pytest.fixture
def bot(runtime: Runtime, slack_api: FakeSlackAPI, alertmanager: FakeAlertmanager) -> Iterator[SlackDriver]:
    """The bot with OPSBOT_ALERTMANAGER_TOKEN set and the fake Alertmanager in settings.alertmanager_urls."""
    runtime.settings = replace(runtime.settings, alertmanager_token=Secret(TOKEN))
    runtime.index()  # loaded: the loader thread no longer reads while the test writes
    settings = json.loads(runtime.store.get_meta("deploy_settings"))
    runtime.store.set_meta("deploy_settings", json.dumps(settings | {"alertmanager_urls": [alertmanager.url]}))
    server, driver = start_bot(runtime, slack_api)
    yield driver
    server.stop()
    if driver.web is not None:
        driver.web.stop()


def deliver(bot: SlackDriver, body: dict | bytes, token: str | None = TOKEN, wait: bool = True) -> Response:
    """POST to /hooks/alertmanager as Alertmanager does; then wait until what opsbot posts is delivered."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = {"Content-Type": "application/json", "User-Agent": "Alertmanager/0.25.0"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    response = send(urllib.request.Request(f"{bot.base_url}/hooks/alertmanager", data, headers, method="POST"))
    if wait:
        settle(bot)
    return response


def settle(bot: SlackDriver) -> None:
    """Wait for the briefings being built and for every post to reach the fake Slack."""
    runtime_pools_idle = bot.web is not None and bot.web.wait_idle(20)
    assert runtime_pools_idle, "opsbot's posts were not delivered within 20 s"


def top_level(api: FakeSlackAPI, channel: str = ALERTS) -> list[Call]:
    return [c for c in api.calls("chat.postMessage") if c.body["channel"] == channel and not c.body.get("thread_ts")]


def thread_notes(api: FakeSlackAPI) -> list[str]:
    return [c.body["text"] for c in api.calls("chat.postMessage") if c.body.get("thread_ts")]


def briefed(api: FakeSlackAPI, count: int = 1) -> list[Call]:
    """The edits that added a briefing (the related runbooks) to alert messages."""
    return api.wait_for("chat.update", count, timeout=30, predicate=lambda c: "Related runbook" in shown(c.body))


def buttons(body: dict) -> dict[str, dict]:
    found = {}
    for block in body.get("blocks") or []:
        for element in block.get("elements", []) if block.get("type") == "actions" else []:
            found[element["action_id"]] = element
        if "accessory" in block:
            found.setdefault(block["accessory"]["action_id"], block["accessory"])
    return found


def groups(runtime: Runtime) -> list[dict]:
    return runtime.store.alert_groups()


# -- the endpoint ----------------------------------------------------------------------------------------------


def test_without_the_token_configured_the_endpoint_is_off(
    runtime: Runtime, slack: SlackDriver, slack_api: FakeSlackAPI
) -> None:
    answer = deliver(slack, payload("pgbouncer-firing"))
    assert answer.status == 503 and "OPSBOT_ALERTMANAGER_TOKEN" in answer.json()["error"]
    assert groups(runtime) == [] and slack_api.calls("chat.postMessage") == []


@pytest.mark.parametrize(
    ("token", "body", "status", "says"),
    [
        (None, payload("pgbouncer-firing"), 401, "no Authorization header"),
        ("not-the-token-0123456789", payload("pgbouncer-firing"), 401, "wrong token"),
        (TOKEN, b"{not json", 400, "body: is not JSON"),
        (TOKEN, payload("pgbouncer-firing", version="3"), 400, "version"),
        (TOKEN, payload("pgbouncer-firing", alerts=[{"status": "firing", "labels": {"a": "b"}}]), 400, "fingerprint"),
        # Answered 500 before (and Alertmanager retries a 5xx for ever): a time past the year 9999 in UTC,
        # half a surrogate pair in the groupKey or a label value (valid JSON, not storable text).
        (TOKEN, with_alert(endsAt="9999-12-31T23:59:59-05:00"), 400, "alerts[0].endsAt: '9999-12-31T23:59:59-05:00'"),
        (TOKEN, payload("pgbouncer-firing", groupKey='{}:{alertname="\ud800"}'), 400, "groupKey: "),
        (TOKEN, with_alert(labels={"alertname": "X", "instance": "\ud800"}), 400, "alerts[0].labels.instance: "),
        # Answered 500 before too: an integer longer than Python reads, and JSON nested past its recursion limit.
        (TOKEN, b'{"version": "4", "truncatedAlerts": 1' + b"0" * 5000 + b"}", 400, "body: is JSON opsbot cannot read"),
        (TOKEN, b"[" * 100_000 + b"]" * 100_000, 400, "body: is nested too deeply"),
    ],
)
def test_a_bad_token_or_payload_is_refused_with_why_and_nothing_is_stored_or_posted(
    runtime: Runtime,
    bot: SlackDriver,
    slack_api: FakeSlackAPI,
    token: str | None,
    body: dict | bytes,
    status: int,
    says: str,
) -> None:
    answer = deliver(bot, body, token=token)
    assert answer.status == status and says in answer.json()["error"], answer.body
    assert groups(runtime) == [] and slack_api.calls("chat.postMessage") == []
    assert TOKEN not in answer.body


def test_a_huge_bad_value_is_named_in_a_short_answer_and_a_short_log_line(
    runtime: Runtime, bot: SlackDriver, caplog: pytest.LogCaptureFixture
) -> None:
    answer = deliver(bot, payload("pgbouncer-firing", version="x" * 900_000))
    assert answer.status == 400 and answer.json()["error"].startswith("version: 'xxxx")
    assert len(answer.body) < 500 and all(len(r.getMessage()) < 1000 for r in caplog.records)


def test_alerts_the_full_database_refuses_are_503_with_retry_after_and_one_log_line(
    runtime: Runtime, bot: SlackDriver, caplog: pytest.LogCaptureFixture
) -> None:
    # Before: 500, "see its log", and a traceback in the log for what is an outage, not a bug.
    import urllib.error

    from tests.slack.test_health import FULL, refused_while_full

    body = with_alert(annotations={"summary": "PgBouncer pool exhausted " + "x" * 5000, "description": "y" * 5000})
    data = json.dumps(body).encode()
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {TOKEN}"}
    request = urllib.request.Request(f"{bot.base_url}/hooks/alertmanager", data, headers, method="POST")

    refused = refused_while_full(runtime.store, request)

    assert refused.code == 503 and refused.headers["Retry-After"] == "30"
    assert json.loads(refused.read())["error"] == (
        f"opsbot's database refuses writes ({FULL}); the alerts were not recorded; Alertmanager sends them again."
    )
    assert groups(runtime) == []
    (line,) = [r for r in caplog.records if r.name == "bot.slack.serve"]
    assert line.exc_info is None and FULL in line.getMessage()


def test_secrets_quoted_by_an_alert_reach_neither_its_row_nor_slack(
    runtime: Runtime, bot: SlackDriver, slack_api: FakeSlackAPI
) -> None:
    secret = "ghp_" + "Zq3vR8tLw2Xy5Kp9Mn4Bc7Df1Gh6Jk0Ls2Ab"
    leak = f"git clone https://x-access-token:{secret}@github.com/larder/payments failed"
    body = with_alert(annotations={"summary": "PgBouncer pool exhausted on pg-main", "description": leak})
    body["commonAnnotations"] = {"description": leak}
    body["alerts"][0]["generatorURL"] = f"https://ci.larder.io/job?token={secret}"
    assert deliver(bot, body).status == 200
    settle(bot)
    assert slack_api.calls("chat.postMessage") and secret not in json.dumps([c.body for c in slack_api.calls()])
    dump = database_text(runtime.store)
    assert "git clone https://x-access-token:*** failed" in dump and secret not in dump


# -- one message per group, with the briefing --------------------------------------------------------------------


def test_a_firing_group_gets_one_message_with_the_incident_briefing(
    runtime: Runtime, bot: SlackDriver, slack_api: FakeSlackAPI, alertmanager: FakeAlertmanager
) -> None:
    answer = deliver(bot, payload("pgbouncer-firing", externalURL=alertmanager.url))
    assert answer.status == 200, answer.body
    assert answer.json() | {"group": "-"} == {
        "ok": True,
        "group": "-",
        "change": "opened",
        "status": "firing",
        "service": "checkout-api",
        "channel": ALERTS,
    }
    [message] = top_level(slack_api)
    [edit] = briefed(slack_api)
    text = shown(edit.body)
    assert message.body["text"].startswith("[FIRING:2] PgBouncerPoolExhausted (checkout-api)")
    assert edit.body["ts"] == message.answer["ts"]
    # the alert: summary, severity, labels, links
    assert "PgBouncer pool exhausted on pg-main" in text and "critical" in text and "`namespace=payments`" in text
    assert "<https://wiki.larder.io/runbooks/postgres/connection-pool-exhausted|Runbook>" in text
    # the alert began firing on another day than this message's (the fixture's 5 December): its date is shown
    assert "&amp;g0.tab=1|Source>" in text and "`instance=pgbouncer-0` since Sat 05 Dec 16:22 UTC" in text
    # the briefing of /incident declare: runbook, similar incidents with resolutions, people, deploys
    assert text.index("Related runbook sections") < text.index(RUNBOOK) < text.index("Similar past incidents")
    assert "*Resolved by:*" in text and "Who could help with:" in text
    assert "Deploys of checkout-api in the last 24 h" in text
    assert set(buttons(edit.body)) >= {ids.ALERT_DECLARE, ids.ALERT_SILENCE, ids.INVITE_EXPERT}
    assert ids.ALERT_SILENCE not in buttons(message.body | {"blocks": []})
    [group] = groups(runtime)
    assert (group["message_channel"], group["message_ts"]) == (ALERTS, message.answer["ts"])
    # who it suggests is no first place for spreading the load: nobody asked (an alert storm would push them down)
    assert runtime.store.recent_first_suggestions() == []


def test_redeliveries_and_plain_repeats_post_nothing_more(
    runtime: Runtime, bot: SlackDriver, slack_api: FakeSlackAPI
) -> None:
    deliver(bot, payload("pgbouncer-firing"))
    briefed(slack_api)
    calls = len(slack_api.calls())
    for _ in range(3):
        assert deliver(bot, payload("pgbouncer-firing")).json()["change"] == "unchanged"
    assert len(slack_api.calls()) == calls and len(top_level(slack_api)) == 1
    assert len(runtime.store.alert_events(groups(runtime)[0]["id"])) == 1


def test_changes_edit_the_message_and_are_noted_in_its_thread_and_resolution_shows_the_duration(
    runtime: Runtime, bot: SlackDriver, slack_api: FakeSlackAPI
) -> None:
    deliver(bot, payload("pgbouncer-firing"))
    briefed(slack_api)
    for name in ("pgbouncer-grown", "pgbouncer-one-resolved", "pgbouncer-resolved"):
        assert deliver(bot, payload(name)).status == 200

    assert len(top_level(slack_api)) == 1  # never a new post
    edits = [c.body for c in slack_api.calls("chat.update")]
    assert [e["text"].split(" (")[0] for e in edits] == [
        "[FIRING:2] PgBouncerPoolExhausted",  # the briefing added
        "[FIRING:3] PgBouncerPoolExhausted",
        "[FIRING:2] PgBouncerPoolExhausted",
        "[RESOLVED] PgBouncerPoolExhausted",
    ]
    last = shown(edits[-1])
    assert "Resolved at Sat 05 Dec 16:22 UTC after 0 min" in last and RUNBOOK in last  # the briefing stays
    assert ids.ALERT_SILENCE not in buttons(edits[-1])  # nothing fires: nothing to silence
    assert thread_notes(slack_api) == [
        ":arrows_counterclockwise: 1 started firing: instance=pgbouncer-2; now 3 firing",
        ":arrows_counterclockwise: 1 resolved: instance=pgbouncer-0; now 2 firing",
        ":white_check_mark: Resolved after 0 min. 2 resolved: instance=pgbouncer-1, instance=pgbouncer-2; All resolved",
    ]


def test_a_storm_of_200_alerts_in_20_groups_makes_20_messages_through_slack_rate_limits(
    runtime: Runtime, bot: SlackDriver, slack_api: FakeSlackAPI
) -> None:
    template = payload("crashloop-firing")
    storm = []
    for g in range(20):
        alerts = [
            template["alerts"][0]
            | {
                "fingerprint": f"{g:04x}{n:012x}",
                "labels": {"alertname": f"Storm{g}", "pod": f"p-{n}", "service": "order-pipeline"},
            }
            for n in range(10)
        ]
        labels = {"alertname": f"Storm{g}", "service": "order-pipeline"}
        key = f'{{}}:{{alertname="Storm{g}"}}'
        storm.append(template | {"groupKey": key, "groupLabels": labels, "commonLabels": labels, "alerts": alerts})
    slack_api.fail_next("chat.postMessage", status=429, times=3, retry_after=1)
    with ThreadPoolExecutor(8) as pool:  # Alertmanager sends groups in parallel, and sends some twice
        answers = list(pool.map(lambda body: deliver(bot, body, wait=False), storm + storm[:5]))
    settle(bot)
    assert [a.status for a in answers] == [200] * 25
    posted = [c for c in top_level(slack_api) if c.ok]
    assert sorted(c.body["text"].split()[1] for c in posted) == sorted(f"Storm{g}" for g in range(20))
    assert len(groups(runtime)) == 20 and not [c for c in slack_api.calls() if not c.ok and c.status != 429]


# -- the buttons ----------------------------------------------------------------------------------------------------


def test_declare_incident_declares_once_with_the_alerts_title_severity_and_service(
    runtime: Runtime, bot: SlackDriver, slack_api: FakeSlackAPI
) -> None:
    deliver(bot, payload("pgbouncer-firing"))
    [edit] = briefed(slack_api)
    value = buttons(edit.body)[ids.ALERT_DECLARE]["value"]
    assert bot.click(ids.ALERT_DECLARE, value, user=PRIYA, channel=ALERTS, message_ts=edit.body["ts"]).status == 200
    declared = slack_api.wait_for("chat.postMessage", predicate=lambda c: "SEV1" in c.body["text"], timeout=20)
    settle(bot)
    [incident] = runtime.incidents().list_open()
    assert incident.title == "PgBouncerPoolExhausted: PgBouncer pool exhausted on pg-main"
    assert (incident.severity, incident.services, incident.declared_by) == (1, ("checkout-api",), PRIYA)
    assert declared[0].body["channel"] == ALERTS
    assert not incident.private  # the sample's alerts channel is public
    assert f"incident *{incident.id}*" in shown(slack_api.calls("chat.update")[-1].body)
    # The thread note comes after the declaration's post, from the click's own handler: wait for it.
    slack_api.wait_for(
        "chat.postMessage", predicate=lambda c: bool(c.body.get("thread_ts")) and "declared by" in c.body["text"]
    )
    assert f":rotating_light: <@{PRIYA}>: {incident.id} declared by Priya" in thread_notes(slack_api)[-1]

    bot.click(ids.ALERT_DECLARE, value, user=SAM, channel=ALERTS)
    [told] = slack_api.wait_for("chat.postEphemeral", timeout=20)
    assert told.body["text"] == f"{incident.id} was declared for this alert already."
    assert len(runtime.incidents().list_open()) == 1


def test_mentions_and_links_in_an_alert_s_text_are_shown_as_text_never_as_pings_or_disguised_links(
    runtime: Runtime, bot: SlackDriver, slack_api: FakeSlackAPI
) -> None:
    # A rule template fills annotations and labels from scraped metrics: nobody typed them to Slack.
    hostile = "<@U0BOSS0001> <#C0GENERAL1> <https://evil.example/login|Open_the_runbook> <!channel>"
    data = with_alert(annotations={"summary": hostile, "description": hostile})
    data["alerts"][0]["labels"] = data["alerts"][0]["labels"] | {"pod": "<@U0BOSS0002>"}
    data["commonAnnotations"] = {"summary": hostile, "description": hostile}
    deliver(bot, data)
    settle(bot)
    posted = json.dumps([c.body for c in slack_api.calls("chat.postMessage") + slack_api.calls("chat.update")])
    for reference in ("<@U0BOSS0001>", "<#C0GENERAL1>", "<https://evil.example", "<!channel>", "<@U0BOSS0002>"):
        assert reference not in posted
    assert "&lt;@U0BOSS0001&gt;" in posted and "&lt;https://evil.example/login|Open_the_runbook&gt;" in posted


def test_a_group_of_many_alerts_is_read_and_one_past_a_thousand_is_posted_with_the_rest_counted(
    runtime: Runtime, bot: SlackDriver, slack_api: FakeSlackAPI
) -> None:
    # Before, every body over 1 MiB was refused with 413, so a group of 800 to 1,000 real alerts was never shown;
    # and a group of more than 1,000 was refused with 400, which Alertmanager does not retry.
    data = payload("pgbouncer-firing")
    template = data["alerts"][0]
    padding = "x" * 900  # an alert of about 1.5 kB, as real ones with a few annotations are
    data["alerts"] = [
        template
        | {"fingerprint": f"{n:016x}", "labels": template["labels"] | {"instance": f"pgbouncer-{n}"}}
        | {"annotations": template["annotations"] | {"description": padding}}
        for n in range(1000)
    ]
    body = json.dumps(data).encode()
    assert len(body) > 1 << 20
    assert deliver(bot, body).status == 200
    assert len(runtime.alerts().get(runtime.store.alert_groups()[0]["id"]).firing) == 1000

    data["groupKey"] = '{}:{alertname="PgBouncerPoolExhausted",service="ledger"}'  # another group, of 1,003
    data["alerts"] += [data["alerts"][0] | {"fingerprint": f"f{n:015x}"} for n in range(3)]
    taken = deliver(bot, json.dumps(data).encode())
    assert taken.status == 200 and taken.json()["change"] == "opened"
    group = runtime.alerts().get(taken.json()["group"])
    assert len(group.firing) == 1000 and group.truncated == 3
    assert "3 more alert(s) not sent" in shown(top_level(slack_api)[-1].body)


def test_an_incident_declared_from_an_alert_in_a_private_channel_is_private(
    runtime: Runtime, bot: SlackDriver, slack_api: FakeSlackAPI
) -> None:
    slack_api.add_channel(ALERTS, "alerts", private=True)
    deliver(bot, payload("pgbouncer-firing"))
    [edit] = briefed(slack_api)
    value = buttons(edit.body)[ids.ALERT_DECLARE]["value"]
    assert bot.click(ids.ALERT_DECLARE, value, user=PRIYA, channel=ALERTS, message_ts=edit.body["ts"]).status == 200
    slack_api.wait_for("chat.postMessage", predicate=lambda c: "SEV1" in c.body["text"], timeout=20)
    settle(bot)
    [incident] = runtime.incidents().list_open()
    assert incident.private and incident.channel == ALERTS
    assert [c.body["channel"] for c in slack_api.calls("conversations.info")] == [ALERTS]


def timed(name: str, start: datetime, end: datetime | None = None) -> dict:
    """A captured payload whose alerts started at ``start`` (and, resolved, ended at ``end``)."""
    data = payload(name)
    times = {"startsAt": start.isoformat()} | ({"endsAt": end.isoformat()} if end else {})
    data["alerts"] = [a | times for a in data["alerts"]]
    return data


def test_a_firing_after_its_incident_was_resolved_offers_declare_again_and_declares_a_new_one(
    runtime: Runtime, bot: SlackDriver, slack_api: FakeSlackAPI
) -> None:
    now = datetime.now(UTC)
    deliver(bot, timed("pgbouncer-firing", now - timedelta(minutes=40)))
    [edit] = briefed(slack_api)
    bot.click(ids.ALERT_DECLARE, buttons(edit.body)[ids.ALERT_DECLARE]["value"], user=PRIYA, channel=ALERTS)
    slack_api.wait_for("chat.postMessage", predicate=lambda c: "SEV1" in c.body["text"], timeout=20)
    settle(bot)
    [first] = runtime.incidents().list_open()
    runtime.incidents().resolve(first, PRIYA, "raised the pool size")
    deliver(bot, timed("pgbouncer-resolved", now - timedelta(minutes=40), now - timedelta(minutes=10)))

    assert deliver(bot, timed("pgbouncer-firing", now)).json()["change"] == "refired"  # the same message
    refired = slack_api.calls("chat.update")[-1].body
    assert refired["text"].startswith("[FIRING:2]") and ids.ALERT_DECLARE in buttons(refired)
    assert f"{first.id} is closed: Declare incident declares a new one" in thread_notes(slack_api)[-1]
    declared_before = len([c for c in slack_api.calls("chat.postMessage") if "SEV1" in c.body["text"]])
    bot.click(ids.ALERT_DECLARE, buttons(refired)[ids.ALERT_DECLARE]["value"], user=SAM, channel=ALERTS)
    # The click is answered at once and the incident declared in the background: wait for its own post.
    slack_api.wait_for(
        "chat.postMessage", declared_before + 1, predicate=lambda c: "SEV1" in c.body["text"], timeout=20
    )
    settle(bot)
    [second] = runtime.incidents().list_open()
    assert second.id != first.id and second.declared_by == SAM
    assert slack_api.calls("chat.postEphemeral") == []  # not "was declared for this alert already"
    assert f"incident *{second.id}*" in shown(slack_api.calls("chat.update")[-1].body)


def test_declare_on_an_earlier_firings_message_says_so_and_declares_nothing(
    runtime: Runtime, bot: SlackDriver, slack_api: FakeSlackAPI
) -> None:
    now = datetime.now(UTC)
    deliver(bot, timed("pgbouncer-firing", now - timedelta(hours=26)))
    deliver(bot, timed("pgbouncer-resolved", now - timedelta(hours=26), now - timedelta(hours=25)))
    assert deliver(bot, timed("pgbouncer-firing", now - timedelta(minutes=2))).json()["change"] == "opened"
    old, new = top_level(slack_api)
    edits = [c.body for c in slack_api.calls("chat.update") if c.body["ts"] == old.answer["ts"]]
    value = buttons(edits[-1])[ids.ALERT_DECLARE]["value"]

    # Before, the button carried the group alone: this declared an incident for today's firing.
    bot.click(ids.ALERT_DECLARE, value, user=PRIYA, channel=ALERTS, message_ts=old.answer["ts"])
    [told] = slack_api.wait_for("response_url", timeout=20)
    assert "this message is of an earlier firing of PgBouncerPoolExhausted, resolved at" in told.body["text"]
    assert "use the newer message" in told.body["text"] and runtime.incidents().list_open() == []

    group_id = value.partition(":")[0]  # a button posted before buttons carried their firing
    bot.click(ids.ALERT_DECLARE, group_id, user=PRIYA, channel=ALERTS, message_ts=new.answer["ts"])
    [incident] = eventually(runtime.incidents().list_open, bool, 20)
    assert runtime.alerts().get(group_id).incident_id == incident.id


def declared_from_an_alert(runtime: Runtime, bot: SlackDriver, slack_api: FakeSlackAPI) -> tuple[Call, LiveIncident]:
    """An alert's message and the incident Priya declared from it, once Slack shows it declared."""
    deliver(bot, payload("pgbouncer-firing"))
    [edit] = briefed(slack_api)
    bot.click(ids.ALERT_DECLARE, buttons(edit.body)[ids.ALERT_DECLARE]["value"], user=PRIYA, channel=ALERTS)
    [declared] = eventually(runtime.incidents().list_open, bool, 20)
    slack_api.wait_for("chat.postMessage", predicate=lambda c: "declared by" in c.body["text"], timeout=20)
    settle(bot)
    return edit, declared


def test_cancelling_an_incident_declared_from_an_alert_by_mistake_offers_declare_again(
    runtime: Runtime, bot: SlackDriver, slack_api: FakeSlackAPI
) -> None:
    edit, mistake = declared_from_an_alert(runtime, bot, slack_api)
    assert ids.ALERT_DECLARE not in buttons(slack_api.calls("chat.update")[-1].body)

    assert bot.command("/incident", f"cancel {mistake.id} wrong alert", user=PRIYA, channel=ALERTS).status == 200

    note = f":rotating_light: <@{PRIYA}>: {mistake.id} was cancelled (declared by mistake): Declare incident declares"
    slack_api.wait_for("chat.postMessage", predicate=lambda c: c.body["text"].startswith(note), timeout=20)
    settle(bot)
    edited = slack_api.calls("chat.update")[-1].body  # before, the button stayed hidden
    assert edited["ts"] == edit.body["ts"] and ids.ALERT_DECLARE in buttons(edited)
    bot.click(ids.ALERT_DECLARE, buttons(edited)[ids.ALERT_DECLARE]["value"], user=SAM, channel=ALERTS)
    [real] = eventually(runtime.incidents().list_open, bool, 20)
    settle(bot)
    assert real.id != mistake.id and real.declared_by == SAM
    assert slack_api.calls("chat.postEphemeral") == []  # not "was declared for this alert already"


def test_a_cancel_whose_post_slack_refuses_still_frees_the_alert(
    runtime: Runtime, bot: SlackDriver, slack_api: FakeSlackAPI
) -> None:
    edit, mistake = declared_from_an_alert(runtime, bot, slack_api)
    slack_api.fail_next("chat.postMessage", status=200, error="is_archived")  # the cancel's own post

    assert bot.command("/incident", f"cancel {mistake.id} wrong alert", user=PRIYA, channel=ALERTS).status == 200

    [group] = eventually(lambda: groups(runtime), lambda found: found and not found[0]["incident_id"], 20)
    assert runtime.incidents().get(mistake.id).status == "cancelled" and group["incident_id"] == ""
    edited = eventually(lambda: slack_api.calls("chat.update")[-1].body, lambda b: ids.ALERT_DECLARE in buttons(b))
    assert edited["ts"] == edit.body["ts"]


def test_a_failure_in_freeing_the_alert_does_not_undo_the_cancel(
    runtime: Runtime, bot: SlackDriver, slack_api: FakeSlackAPI, monkeypatch: pytest.MonkeyPatch
) -> None:
    edit, mistake = declared_from_an_alert(runtime, bot, slack_api)

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("the alerts part failed")

    monkeypatch.setattr(AlertService, "incident_cancelled", broken)
    assert bot.command("/incident", f"cancel {mistake.id} wrong alert", user=PRIYA, channel=ALERTS).status == 200

    cancelled = eventually(lambda: runtime.incidents().get(mistake.id).status, lambda s: s == "cancelled", 20)
    assert cancelled == "cancelled"  # the cancel stands; the alert is freed by a click on Declare (declare_incident)


def test_silence_calls_the_configured_alertmanager_once_as_the_clicker_and_only_for_those_allowed(
    runtime: Runtime, bot: SlackDriver, slack_api: FakeSlackAPI, alertmanager: FakeAlertmanager
) -> None:
    deliver(bot, payload("pgbouncer-firing", externalURL=alertmanager.url + "/"))
    [edit] = briefed(slack_api)
    value = buttons(edit.body)[ids.ALERT_SILENCE]["value"]

    bot.click(ids.ALERT_SILENCE, value, user=LENA, channel=ALERTS)
    [refused] = slack_api.wait_for("response_url", timeout=20)  # told only to the clicker
    assert "only checkout-api's approvers or sre (settings.alert_silencers) may silence" in refused.body["text"]
    assert alertmanager.silences == []

    bot.click(ids.ALERT_SILENCE, value, user=SAM, channel=ALERTS)
    slack_api.wait_for("chat.postMessage", predicate=lambda c: "Silenced" in c.body["text"], timeout=20)
    settle(bot)
    [silence] = alertmanager.silences
    assert silence["path"] == "/api/v2/silences" and silence["createdBy"].endswith(f"({SAM})")
    assert {(m["name"], m["value"], m["isRegex"]) for m in silence["matchers"]} == {
        ("alertname", "PgBouncerPoolExhausted", False),
        ("service", "checkout-api", False),
    }
    starts, ends = (datetime.fromisoformat(silence[k]) for k in ("startsAt", "endsAt"))
    assert ends - starts == timedelta(hours=1)
    assert "silenced until" in shown(slack_api.calls("chat.update")[-1].body)
    assert groups(runtime)[0]["silence_id"] == "silence-1"

    bot.click(ids.ALERT_SILENCE, value, user=SAM, channel=ALERTS)  # a second click makes no second silence
    again = slack_api.wait_for("response_url", 2, timeout=20)[-1]
    assert "already silenced until" in again.body["text"] and len(alertmanager.silences) == 1


def test_the_silence_confirmation_names_the_label_that_routes_the_group_to_its_service(
    runtime: Runtime, bot: SlackDriver, slack_api: FakeSlackAPI, alertmanager: FakeAlertmanager
) -> None:
    # Grouped by alertname alone, the silence also matches service=checkout-api (so that it mutes that service's
    # alerts only); the confirmation showed the alertname alone.
    grouped = {"alertname": "PgBouncerPoolExhausted"}
    deliver(bot, payload("pgbouncer-firing", externalURL=alertmanager.url + "/", groupLabels=grouped))
    [edit] = briefed(slack_api)

    asked = buttons(edit.body)[ids.ALERT_SILENCE]["confirm"]["text"]["text"]

    assert "`alertname=PgBouncerPoolExhausted`, `service=checkout-api`" in asked


def test_silencing_an_alert_of_no_service_tells_the_clicker_who_may(
    runtime: Runtime, bot: SlackDriver, slack_api: FakeSlackAPI, alertmanager: FakeAlertmanager
) -> None:
    data = payload("crashloop-firing", externalURL=alertmanager.url)
    labels = {"alertname": "DiskFull", "service": "unknown-thing"}
    data |= {"groupLabels": {"alertname": "DiskFull"}, "commonLabels": labels}
    data["alerts"][0]["labels"] = labels
    assert deliver(bot, data).json()["service"] is None
    [edit] = briefed(slack_api)
    bot.click(ids.ALERT_SILENCE, buttons(edit.body)[ids.ALERT_SILENCE]["value"], user=PRIYA, channel=ALERTS)
    [refused] = slack_api.wait_for("response_url", timeout=20)  # told only to the clicker
    assert refused.body["text"].endswith("only sre (settings.alert_silencers) may silence alerts of no known service.")
    assert "'s approvers" not in refused.body["text"] and alertmanager.silences == []


def deployed(runtime: Runtime, request_id: str, version: str, at: str) -> None:
    """A deploy of checkout-api to prod that succeeded at ``at``."""
    row = new_row(
        request_id,
        service="checkout-api",
        env="prod",
        version=version,
        status="succeeded",
        created_at=at,
        started_at=at,
        finished_at=at,
    )
    with runtime.store.transaction():
        runtime.store.insert_deploy(row)


def test_rollback_from_the_alert_goes_through_the_usual_approval(
    runtime: Runtime, bot: SlackDriver, slack_api: FakeSlackAPI
) -> None:
    finished = (datetime.now(UTC) - timedelta(hours=1)).isoformat(timespec="seconds")
    for request_id, version, at in (("dep-old", "1.4.1", "2026-11-01T10:00:00+00:00"), ("dep-new", "1.4.2", finished)):
        deployed(runtime, request_id, version, at)
    now = datetime.now(UTC).isoformat()
    fresh = payload("pgbouncer-firing")
    fresh["alerts"] = [a | {"startsAt": now} for a in fresh["alerts"]]
    deliver(bot, fresh)
    [edit] = briefed(slack_api)
    rollback = buttons(edit.body)[ids.ALERT_ROLLBACK]
    assert json.loads(rollback["value"])["deploy"] == "dep-new"
    assert "Possible cause:* deploy 1.4.2 of checkout-api to prod" in shown(edit.body)

    bot.click(ids.ALERT_ROLLBACK, rollback["value"], user=PRIYA, channel=ALERTS)
    request = slack_api.wait_for("chat.postMessage", predicate=lambda c: ids.DEPLOY_APPROVE in json.dumps(c.body))
    settle(bot)
    assert "1.4.1" in shown(request[0].body) and request[0].body["channel"] == ALERTS
    # The note is written after the request is posted, by the click's own handler: wait for it, as the
    # pools can be idle for a moment between the two.
    slack_api.wait_for(
        "chat.postMessage", predicate=lambda c: bool(c.body.get("thread_ts")) and "Rollback of" in c.body["text"]
    )
    assert thread_notes(slack_api)[-1].startswith(f":leftwards_arrow_with_hook: <@{PRIYA}>: Rollback of checkout-api")


def test_an_incident_declared_from_an_alert_names_the_deploy_before_the_alert_fired_as_the_figures_do(
    runtime: Runtime, bot: SlackDriver, slack_api: FakeSlackAPI
) -> None:
    """The failure began when the alert started firing: a deploy that finished after that (someone's attempt at a
    fix, say) is not what the DORA figures blame, so the declaration does not name it either."""
    now = datetime.now(UTC)
    for request_id, version, ago in (("dep-before", "1.4.1", 120), ("dep-after", "1.4.2", 10)):
        deployed(runtime, request_id, version, (now - timedelta(minutes=ago)).isoformat(timespec="seconds"))
    deliver(bot, timed("pgbouncer-firing", now - timedelta(minutes=30)))
    [edit] = briefed(slack_api)
    assert "Possible cause:* deploy 1.4.1 of checkout-api to prod" in shown(edit.body)

    bot.click(ids.ALERT_DECLARE, buttons(edit.body)[ids.ALERT_DECLARE]["value"], user=PRIYA, channel=ALERTS)
    [declared] = slack_api.wait_for(
        "chat.postMessage", predicate=lambda c: "*Declared by*" in shown(c.body), timeout=20
    )
    settle(bot)
    cause = "Possible cause:* deploy 1.4.1 of checkout-api to prod (`dep-before`) finished"
    assert f"{cause} 1 h 30 min before the alert started firing" in shown(declared.body)
    figures = runtime.deploys().figures("checkout-api", "prod")
    assert figures.failed_changes == 1  # the one it names
