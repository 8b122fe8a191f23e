"""/incident in the forms other tools taught people, root causes, the resolve dialog and cancelling, through
signed requests against the fake Slack API."""

from __future__ import annotations

import json
import time
import urllib.parse
from dataclasses import replace
from datetime import UTC, datetime, timedelta

from bot.ops.incident_writeup import NO_ROOT_CAUSE, export_yaml, to_incident
from bot.runtime import Runtime
from bot.slack import ids
from bot.slack.local.fake_api import FakeSlackAPI
from tests.fakes import eventually
from tests.slack.conftest import TEAM, Response, SlackDriver, shown
from tests.slack.test_incident_flow import DANIEL, MARCUS, OPS, PRIYA, declare, deploy_row, incident, say, timeline

TITLE = "Checkout errors for EU customers after pgbouncer restarts"


def submit_view(slack: SlackDriver, view: dict, values: dict[str, str], user: str = PRIYA) -> Response:
    """Submit a dialog opsbot opened, with ``values`` typed into its fields (by block id), as Slack does."""
    state = {block: {ids.INCIDENT_TEXT_INPUT: {"type": "plain_text_input", "value": v}} for block, v in values.items()}
    payload = {
        "type": "view_submission",
        "team": {"id": TEAM, "domain": "larder"},
        "user": {"id": user, "username": user.lower(), "team_id": TEAM},
        "api_app_id": "A0000001",
        "token": "legacy",
        "trigger_id": f"trig.view{time.time_ns()}",
        "view": {
            "id": "V0RESOLVE1",
            "type": "modal",
            "callback_id": view["callback_id"],
            "private_metadata": view["private_metadata"],
            "state": {"values": state},
        },
    }
    return slack.post(urllib.parse.urlencode({"payload": json.dumps(payload)}), "application/x-www-form-urlencoded")


def indexed(runtime: Runtime, incident_id: str) -> None:
    """Wait until a resolved incident is indexed: that follows its summary, in the listener's thread."""
    past = eventually(lambda: {i.id for i in runtime.store.load_incidents()}, lambda ids: incident_id in ids, 60)
    assert incident_id in past


def test_severity_roles_and_updates_in_the_forms_other_tools_use(
    slack: SlackDriver, slack_api: FakeSlackAPI, runtime: Runtime
) -> None:
    incident_id, (header, *_) = declare(slack, slack_api, f'sev2 "{TITLE}" --service checkout-api')
    assert f"*{incident_id}* · SEV2 · {TITLE}" in shown(header)  # no quotes, no "sev2" in the title
    assert "*Environment:* prod" in shown(header)
    live = runtime.incidents().get(incident_id)
    assert (live.title, live.severity, live.services, live.env) == (TITLE, 2, ("checkout-api",), "prod")

    assert "severity SEV2 → SEV1" in shown(say(slack, slack_api, "SEV-1"))
    assert "severity SEV1 → SEV2" in shown(say(slack, slack_api, "sev 2"))
    assert "severity SEV2 → SEV3" in shown(say(slack, slack_api, "severity sev3"))
    assert f"<@{DANIEL}> is comms of {incident_id}" in shown(say(slack, slack_api, f"role comms <@{DANIEL}|daniel>"))
    assert f"<@{MARCUS}> is lead of {incident_id}" in shown(say(slack, slack_api, f"role ic <@{MARCUS}|marcus>"))
    update = shown(say(slack, slack_api, "update Mitigating: rolling back checkout-api &amp; watching errors"))
    assert f":loudspeaker: {incident_id} status update from <@{PRIYA}>: Mitigating: rolling back" in update
    assert "&amp; watching errors" in update  # shown as typed, escaped once for mrkdwn

    assert runtime.incidents().get(incident_id).roles == {"lead": MARCUS, "comms": DANIEL}
    last = timeline(runtime, incident_id)[-1]
    assert last == (PRIYA, "update", "Mitigating: rolling back checkout-api & watching errors")

    for text, severity in (("SEV-4 Search slow", 4), ("Basket empty --sev 1", 1)):
        other_id, _ = declare(slack, slack_api, text)
        assert runtime.incidents().get(other_id).severity == severity


def test_a_root_cause_is_recorded_shown_and_exported(
    slack: SlackDriver, slack_api: FakeSlackAPI, runtime: Runtime
) -> None:
    incident_id, _ = declare(slack, slack_api, f"{TITLE} sev2 --service checkout-api")
    cause = "pgbouncer pool size left at 20 after the 1.4.2 config change"

    said = shown(say(slack, slack_api, f"rootcause {cause}"))
    assert f":mag: {incident_id} root cause (from <@{PRIYA}>): {cause}" in said
    summary = shown(say(slack, slack_api, "resolve Raised the pool to 60 and restarted pgbouncer", user=DANIEL))
    assert f"*Root cause*\n{cause}" in summary

    written = export_yaml(to_incident(runtime.incidents().get(incident_id)))
    assert f"root_cause: {cause}" in written and NO_ROOT_CAUSE not in written
    assert "env: prod" in written
    indexed(runtime, incident_id)
    (past,) = [i for i in runtime.store.load_incidents() if i.id == incident_id]
    assert (past.root_cause, past.env) == (cause, "prod")


def test_resolve_without_text_opens_a_dialog_with_a_root_cause_field(
    slack: SlackDriver, slack_api: FakeSlackAPI, runtime: Runtime
) -> None:
    incident_id, _ = declare(slack, slack_api, f"{TITLE} --sev 2")
    ack = slack.command("/incident", "resolve", user=PRIYA, channel=OPS)
    assert ack.status == 200
    (opened,) = slack_api.wait_for("views.open", timeout=15)
    assert opened.body["trigger_id"] == f"trig.{slack.sent[-1]}"
    view = opened.body["view"]
    view = json.loads(view) if isinstance(view, str) else view
    fields = {b["block_id"]: b for b in view["blocks"] if b["type"] == "input"}
    assert fields[ids.INCIDENT_RESOLUTION_BLOCK]["optional"] is False
    assert fields[ids.INCIDENT_ROOT_CAUSE_BLOCK]["optional"] is True

    refused = submit_view(slack, view, {ids.INCIDENT_RESOLUTION_BLOCK: "  "})
    assert refused.json() == {
        "response_action": "errors",
        "errors": {ids.INCIDENT_RESOLUTION_BLOCK: "Say how it was resolved."},
    }
    assert runtime.incidents().get(incident_id).is_open

    before = len([c for c in slack_api.calls("chat.postMessage") if c.body["channel"] == OPS])
    cause = "A config change halved the pool"
    values = {ids.INCIDENT_RESOLUTION_BLOCK: "Rolled back the config", ids.INCIDENT_ROOT_CAUSE_BLOCK: cause}
    assert submit_view(slack, view, values, user=DANIEL).status == 200
    posted = slack_api.wait_for(
        "chat.postMessage", count=before + 1, timeout=20, predicate=lambda c: c.body["channel"] == OPS
    )
    text = shown(posted[before].body)
    assert f":white_check_mark: *Resolved:* *{incident_id}*" in text and f"*Root cause*\n{cause}" in text
    live = runtime.incidents().get(incident_id)
    assert (live.status, live.resolution, live.root_cause) == ("resolved", "Rolled back the config", cause)
    indexed(runtime, incident_id)


def resolve_dialog(slack: SlackDriver, slack_api: FakeSlackAPI, text: str) -> dict:
    """`/incident TEXT` typed by Priya in #ops, and the dialog it opened."""
    assert slack.command("/incident", text, user=PRIYA, channel=OPS).status == 200
    (opened,) = slack_api.wait_for("views.open", timeout=15)
    view = opened.body["view"]
    return json.loads(view) if isinstance(view, str) else view


def test_the_resolve_dialog_submitted_while_the_database_refuses_writes_tells_whoever_submitted_it(
    slack: SlackDriver, slack_api: FakeSlackAPI, runtime: Runtime
) -> None:
    # Before (a full disk), the failure found no channel in the view submission and was dropped: the dialog closed
    # and nobody was told.
    incident_id, _ = declare(slack, slack_api, f"{TITLE} --sev 2")
    view = resolve_dialog(slack, slack_api, "resolve")
    runtime.store.db.execute("PRAGMA query_only = ON")  # every write refused, as a full disk refuses new pages
    try:
        assert submit_view(slack, view, {ids.INCIDENT_RESOLUTION_BLOCK: "Rolled back the config"}).status == 200
        (told,) = slack_api.wait_for("chat.postEphemeral", timeout=20, predicate=lambda c: c.body["user"] == PRIYA)
    finally:
        runtime.store.db.execute("PRAGMA query_only = OFF")
    assert told.body["channel"] == OPS
    assert "refuses writes (attempt to write a readonly database). Nothing was changed" in told.body["text"]
    assert runtime.incidents().get(incident_id).is_open


def test_a_link_typed_with_a_label_into_the_resolve_dialog_is_shown_with_its_address(
    slack: SlackDriver, slack_api: FakeSlackAPI, runtime: Runtime
) -> None:
    incident_id, _ = declare(slack, slack_api, f"{TITLE} --sev 2")
    view = resolve_dialog(slack, slack_api, "resolve")
    before = len([c for c in slack_api.calls("chat.postMessage") if c.body["channel"] == OPS])
    # A dialog's text arrives as typed, not escaped: this was posted as a link to evil.example labelled as Grafana.
    typed = "Rolled back, see <https://evil.example/x|https://grafana.internal/d/checkout>"
    assert submit_view(slack, view, {ids.INCIDENT_RESOLUTION_BLOCK: typed}).status == 200

    posted = slack_api.wait_for("chat.postMessage", before + 1, 20, lambda c: c.body["channel"] == OPS)[before].body

    assert "Rolled back, see <https://evil.example/x>" in shown(posted) and "|https://grafana" not in json.dumps(posted)
    assert runtime.incidents().get(incident_id).resolution == "Rolled back, see <https://evil.example/x>"
    indexed(runtime, incident_id)


def test_resolve_with_only_a_root_cause_opens_the_dialog_with_the_cause_filled_in(
    slack: SlackDriver, slack_api: FakeSlackAPI, runtime: Runtime
) -> None:
    incident_id, _ = declare(slack, slack_api, f"{TITLE} --sev 2")
    view = resolve_dialog(slack, slack_api, "resolve —root-cause pool too small")
    fields = {b["block_id"]: b for b in view["blocks"] if b["type"] == "input"}
    assert fields[ids.INCIDENT_ROOT_CAUSE_BLOCK]["element"]["initial_value"] == "pool too small"
    assert "initial_value" not in fields[ids.INCIDENT_RESOLUTION_BLOCK]["element"]
    assert runtime.incidents().get(incident_id).is_open  # nothing recorded until the dialog is submitted


def test_the_dialog_resolving_from_another_channel_says_where_the_summary_is_and_records_a_known_cause_once(
    slack: SlackDriver, slack_api: FakeSlackAPI, runtime: Runtime
) -> None:
    # Before, the dialog told the typist nothing, and the root cause it filled in was recorded a second time.
    runtime.settings = replace(runtime.settings, incident_channels=True)
    incident_id, _ = declare(slack, slack_api, f"{TITLE} --sev 2", parts=5)
    channel = runtime.incidents().get(incident_id).channel
    assert channel != OPS
    cause = "pgbouncer pool left at 20"
    say(slack, slack_api, f"rootcause {cause}", channel=channel)
    view = resolve_dialog(slack, slack_api, f"resolve {incident_id}")
    fields = {b["block_id"]: b for b in view["blocks"] if b["type"] == "input"}
    assert fields[ids.INCIDENT_ROOT_CAUSE_BLOCK]["element"]["initial_value"] == cause
    values = {ids.INCIDENT_RESOLUTION_BLOCK: "Raised the pool to 60", ids.INCIDENT_ROOT_CAUSE_BLOCK: cause}
    assert submit_view(slack, view, values).status == 200

    (told,) = slack_api.wait_for(
        "chat.postEphemeral", timeout=20, predicate=lambda c: "the summary is in" in c.body.get("text", "")
    )
    assert (told.body["channel"], told.body["user"]) == (OPS, PRIYA)
    assert told.body["text"] == f"{incident_id} is resolved; the summary is in <#{channel}>."
    causes = [e for e in timeline(runtime, incident_id) if e[1] == "root_cause"]
    assert causes == [(PRIYA, "root_cause", f"Root cause: {cause}")]
    assert export_yaml(to_incident(runtime.incidents().get(incident_id))).count(f"Root cause: {cause}") == 1
    indexed(runtime, incident_id)


def test_a_root_cause_too_long_for_the_dialog_is_kept_whole_when_the_dialog_resolves(
    slack: SlackDriver, slack_api: FakeSlackAPI, runtime: Runtime
) -> None:
    # Before, the dialog was filled in with the first 3,000 characters, and submitting it as shown replaced the
    # recorded root cause with that cut.
    incident_id, _ = declare(slack, slack_api, f"{TITLE} --sev 2")
    cause = " ".join(f"step{i:04d}" for i in range(400))  # 3,599 characters
    say(slack, slack_api, f"rootcause {cause}")
    refused = incident(slack, slack_api, f"resolve --root-cause {cause}")
    assert refused["text"].startswith("Sorry: that root cause is 3,599 characters, more than the resolve dialog holds")
    assert not slack_api.calls("views.open")

    view = resolve_dialog(slack, slack_api, "resolve")
    field = next(b for b in view["blocks"] if b.get("block_id") == ids.INCIDENT_ROOT_CAUSE_BLOCK)
    assert "3,599 characters, too long to show here) is kept unless you type another" in field["hint"]["text"]
    shown_cause = field["element"].get("initial_value", "")
    values = {ids.INCIDENT_RESOLUTION_BLOCK: "Rolled back", ids.INCIDENT_ROOT_CAUSE_BLOCK: shown_cause}
    assert submit_view(slack, view, values).status == 200
    indexed(runtime, incident_id)
    live = runtime.incidents().get(incident_id)
    assert (live.status, live.root_cause) == ("resolved", cause)
    assert [e for e in timeline(runtime, incident_id) if e[1] == "root_cause"] == [
        (PRIYA, "root_cause", f"Root cause: {cause}")
    ]


def test_cancel_keeps_the_timeline_and_the_audit_but_nothing_counts_or_is_searchable(
    slack: SlackDriver, slack_api: FakeSlackAPI, runtime: Runtime
) -> None:
    finished = datetime.now(UTC) - timedelta(minutes=30)
    assert not runtime.store.all_deploys()  # the sample index holds none: the figures below are this deploy's
    with runtime.store.transaction():
        runtime.store.insert_deploy(deploy_row("dep-prod", "1.4.2", finished) | {"env": "prod"})
    incident_id, _ = declare(slack, slack_api, "Checkout test alert fired --service checkout-api sev3")
    figures = runtime.deploys().figures("checkout-api", "prod")
    assert (figures.failed_changes, figures.changes) == (1, 1)  # while open, it counts

    said = shown(say(slack, slack_api, "cancel test alert, nothing was wrong"))
    assert f":no_entry_sign: *{incident_id}* · SEV3" in said and "cancelled by" in said
    assert "declared by mistake (test alert, nothing was wrong)" in said

    live = runtime.incidents().get(incident_id)
    assert live.status == "cancelled"
    last = timeline(runtime, incident_id)[-1]
    assert last == (PRIYA, "cancelled", "Cancelled (declared by mistake): test alert, nothing was wrong")
    (audited,) = [a for a in runtime.store.audit_rows() if a["action"] == "incident.cancelled"]
    assert (audited["actor"], audited["request_id"]) == (PRIYA, incident_id)
    assert runtime.deploys().figures("checkout-api", "prod").failed_changes == 0
    assert incident_id not in [i.id for i in runtime.incidents().list_open()]
    assert incident_id not in [i.id for i in runtime.store.load_incidents()]

    body = incident(slack, slack_api, f"note {incident_id} one more thing")
    assert f"{incident_id} is cancelled; it can't change any more." in body["text"]
    body = incident(slack, slack_api, f"resolve {incident_id} fixed")
    assert f"{incident_id} is already cancelled; nothing changed." in body["text"]
    assert runtime.incidents().get(incident_id).status == "cancelled"
