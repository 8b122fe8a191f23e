"""POST /hooks/alertmanager: each alert group becomes one message with a briefing; its buttons Declare incident,
Silence 1h and Rollback.

Recording is ``bot.ops.alerts.AlertService``. This module checks the bearer token, shows each change (the message,
its edits and the notes in its thread are written to the outbox in the change's own transaction), builds the
briefing on the runtime's briefing pool once the delivery is answered, and turns clicks into domain calls.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from typing import Any

from bot.errors import InvalidRequest
from bot.ops.alert_groups import AlertGroup, Change
from bot.ops.alert_payload import Notification, PayloadProblem, Unauthorized, parse_notification, verify_bearer
from bot.ops.alert_routing import NoChannel
from bot.ops.alertmanager import create_silence
from bot.ops.alerts import AlertService
from bot.runtime import Runtime
from bot.slack import briefing, ids
from bot.slack.blocks.alerts import (
    AlertView,
    build_alert_blocks,
    build_briefing_blocks,
    build_note_text,
    decode_briefing,
    encode_briefing,
    fallback_text,
)
from bot.slack.blocks.incidents import possible_cause_text
from bot.slack.blocks.mrkdwn import context
from bot.slack.briefing import RECENT_HOURS, Message, deploys_message, experts_message, guarded_part, knowledge_message
from bot.slack.deploys import submit
from bot.slack.incidents import CANCELLED, channel_privacy, privacy_unknown_text
from bot.slack.incidents import brief as brief_incident
from bot.slack.listeners import Listeners, clicked_channel
from bot.slack.web import SlackWeb

log = logging.getLogger(__name__)
MESSAGE_HOOK = "alert-message"  # after-delivery hook: remember where a group's message was posted
DISABLED = (
    "alerts from Alertmanager are off: set OPSBOT_ALERTMANAGER_TOKEN on the opsbot server, and the same value as "
    "http_config.authorization.credentials of the webhook_config that sends here."
)
BRIEFED_KINDS = ("opened", "refired")


class AlertDesk:
    """Alert groups in Slack: the announcer of ``AlertService`` changes, the webhook's intake, the briefings."""

    def __init__(self, runtime: Runtime, web: SlackWeb) -> None:
        self.runtime = runtime
        self.web = web

    # -- the webhook -----------------------------------------------------------------------------------------

    def admit(self, headers: Mapping[str, str]) -> tuple[int, dict] | None:
        """The hook off (503) or the token wrong (401), judged before the body is read: (HTTP status, JSON body), or
        None. A sender without the token never gets opsbot to take in the 4 MiB a delivery may hold."""
        token = str(self.runtime.settings.alertmanager_token)
        if not token:
            return 503, {"error": DISABLED}
        lowered = {k.lower(): v for k, v in headers.items()}
        try:
            verify_bearer(token, lowered.get("authorization"))
        except Unauthorized as exc:
            log.warning("alertmanager hook refused: %s", exc)
            return 401, {"error": str(exc)}
        return None

    def receive(self, headers: Mapping[str, str], body: bytes) -> tuple[int, dict]:
        """Answer one POST: (HTTP status, JSON body). Nothing is stored unless the token and the payload are good."""
        refused = self.admit(headers)
        if refused is not None:
            return refused
        try:
            notification = parse_notification(body)
        except PayloadProblem as exc:
            log.warning("alertmanager hook malformed field=%s: %s", exc.field, exc)
            return 400, {"error": str(exc), "field": exc.field}
        return self.take(notification)

    def take(self, notification: Notification) -> tuple[int, dict]:
        """Record a checked notification and show it (also `/alert FILE` in the shell)."""
        try:
            change = self.runtime.alerts().receive(notification, self)
        except NoChannel as exc:
            log.warning("alert group not posted group=%s: %s", notification.group_id, exc)
            return 422, {"error": str(exc)}
        group = change.group
        if change.kind in BRIEFED_KINDS and group.status == "firing" and not group.briefing:
            self.runtime.briefings.submit(self.brief, group.id, group.episode)
        answer = {"ok": True, "group": group.id, "change": change.kind, "status": group.status}
        return 200, answer | {"service": group.service or None, "channel": group.channel}

    # -- showing changes (called inside their transaction) ---------------------------------------------------

    def announce(self, change: Change) -> None:
        group = change.group
        alerts = self.runtime.alerts()
        text, blocks = fallback_text(group), build_alert_blocks(group, self.view(group, alerts))
        if change.new_message:
            fallback = alerts.settings.channel if alerts.settings.channel != group.channel else ""
            after = (MESSAGE_HOOK, {"group": group.id, "episode": group.episode})
            self.web.post(group.channel, text, blocks, key=group.message_key, after=after, fallback_channel=fallback)
            return
        if group.message_ts:
            self.web.update(group.message_channel or group.channel, text, blocks, ts=group.message_ts)
        else:
            self.web.update(group.channel, text, blocks, update_of=group.message_key)
        if change.kind != "briefed":
            self.note(group, build_note_text(change))

    def note(self, group: AlertGroup, text: str) -> None:
        """A note in the thread of the group's message."""
        if group.message_ts:
            self.web.post(group.message_channel or group.channel, text, thread_ts=group.message_ts)
        else:
            self.web.post(group.channel, text, thread_of=group.message_key)

    def view(self, group: AlertGroup, alerts: AlertService) -> AlertView:
        can_silence = alerts.can_silence_here(group)
        labels = alerts.silence_labels(group) if can_silence else {}
        return AlertView(decode_briefing(group.briefing), can_silence, alerts.clock(), alerts.names, labels)

    # -- the briefing ------------------------------------------------------------------------------------------

    def brief(self, group_id: str, episode: int) -> None:
        """Build the episode's briefing and show it in the message (once; a later episode gets its own)."""
        try:
            alerts = self.runtime.alerts()
            group = alerts.get(group_id)
            if group.episode != episode or group.briefing:
                return
            blocks = build_briefing(self.runtime, alerts, group)
            if alerts.set_briefing(group_id, episode, encode_briefing(blocks), self):
                log.info("alert briefing posted group=%s episode=%d", group_id, episode)
        except Exception:  # the message stands without it; the next `opsbot serve` tries again
            log.exception("alert briefing failed group=%s episode=%d", group_id, episode)

    def resume(self) -> int:
        """Brief the firing groups an earlier process recorded but did not brief; how many."""
        alerts = self.runtime.alerts()
        waiting = alerts.unbriefed()
        for group_id in waiting:
            self.runtime.briefings.submit(self.brief, group_id, alerts.get(group_id).episode)
        return len(waiting)

    # -- the buttons -------------------------------------------------------------------------------------------

    def declare(self, body: dict) -> None:
        """Declare incident: IncidentService.declare with the alert's title, severity and service, once."""
        (group_id, episode), user = read_group_value(body["actions"][0]["value"]), body["user"]["id"]
        incidents = self.runtime.incidents()
        alerts = self.runtime.alerts()
        group = alerts.get(group_id)
        alerts.check_episode(group, episode)
        private, unknown = channel_privacy(self.web, group.message_channel or group.channel)
        incident, created = alerts.declare_incident(group_id, user, incidents, self, private=private, episode=episode)
        channel = clicked_channel(body)
        if not created:
            self.web.tell_user(channel, user, f"{incident.id} was declared for this alert already.")
            return
        log.info("incident declared from alert id=%s group=%s by=%s private=%s", incident.id, group_id, user, private)
        if unknown:
            log.warning(
                "channel privacy unknown channel=%s error=%s: the incident is private", incident.channel, unknown
            )
            self.web.tell_user(channel, user, privacy_unknown_text(incident.id, unknown))
        brief_incident(self.runtime, incidents, self.web, incident, user, channel, body.get("response_url", ""), True)

    def silence(self, body: dict) -> None:
        """Silence 1h: Alertmanager's API at the group's (allowed) Alertmanager, the clicker as createdBy."""
        (group_id, episode), user = read_group_value(body["actions"][0]["value"]), body["user"]["id"]
        alerts = self.runtime.alerts()
        group = alerts.get(group_id)
        alerts.check_episode(group, episode)
        if group.status != "firing":
            raise InvalidRequest("this alert is resolved; there is nothing to silence.")
        plan = alerts.plan_silence(group_id, user)
        alerts.claim_silence(group_id, user, plan.ends_at, episode)
        try:
            silence_id = create_silence(plan)
        except BaseException:
            alerts.release_silence(group_id, user, plan.ends_at)
            raise
        log.info("alert silenced group=%s by=%s silence=%s", group_id, user, silence_id)
        alerts.record_silence(group_id, user, silence_id, plan.ends_at, self)

    def check_silences(self) -> dict[str, str]:
        """Ask Alertmanager about each group whose silence ended (a background job, as it waits on the network):
        per group, what came of it (see AlertService.check_silence_end)."""
        alerts = self.runtime.alerts()
        return _each("silence end", alerts.ended_silences(), lambda group_id: alerts.check_silence_end(group_id, self))

    def check_quiet(self) -> dict[str, str]:
        """Ask Alertmanager about each firing group nothing has confirmed for a while (a background job): per group,
        what came of it (see AlertService.check_quiet)."""
        alerts = self.runtime.alerts()
        return _each("quiet group", alerts.quiet_groups(), lambda group_id: alerts.check_quiet(group_id, self))

    def rollback(self, body: dict) -> None:
        """Rollback from the briefing: a rollback request through the /rollback approval flow, noted in the thread."""
        value = read_rollback_value(body["actions"][0]["value"])
        user = body["user"]["id"]
        command = {"user_id": user, "channel_id": clicked_channel(body), "response_url": body.get("response_url", "")}
        request = submit(self.runtime.deploys(), command, "rollback", value["service"], value["env"], None)
        text = f"Rollback of {request.service} in {request.env} to {request.version} requested ({request.id})"
        log.info("rollback requested from alert group=%s request=%s by=%s", value["alert"], request.id, user)
        self.runtime.alerts().record_action(value["alert"], user, text, self)


def _each(what: str, group_ids: list[str], check: Callable[[str], str]) -> dict[str, str]:
    """``check`` each group in turn (a background job's round): per group, what came of it."""
    outcomes = {}
    for group_id in group_ids:
        try:
            outcomes[group_id] = check(group_id)
        except Exception:  # one group's trouble must not keep the others waiting; the next sweep tries again
            log.exception("alert %s check failed group=%s", what, group_id)
    return outcomes


def build_briefing(runtime: Runtime, alerts: AlertService, group: AlertGroup) -> list[dict]:
    """The same briefing as `/incident declare`, for the alert: its linked runbook first, else a search with its
    name and annotations; similar incidents; who to pull in; its service's deploys with Rollback."""
    services = (group.service,) if group.service else ()
    query = group.search_text
    cause = ""
    try:
        found = alerts.possible_cause(group, runtime.deploys().settings.failure_window_hours)
        cause = possible_cause_text(*found, before="the alert started firing") if found else ""
    except Exception:  # a hint only: never worth losing the briefing for
        log.exception("could not look for a possible cause group=%s", group.id)
    shown = briefing.Shown()  # built in this order: the suggestions agree with what the knowledge part showed
    parts: list[Message] = [
        guarded_part(
            "runbooks or similar incidents",
            lambda: knowledge_message(runtime, query, group.channel, "", group.runbook_url, shown),
        ),
        # Not a first place for spreading the load: a storm of one outage's alerts would push its experts down
        # for every later question, and an alert firing again would brief against its own last briefing.
        guarded_part(
            "expert suggestions", lambda: experts_message(runtime, query, services, remember=False, shown=shown)
        ),
    ]
    if services:

        def deploys() -> Message:
            recent = alerts.recent_deploys(group, RECENT_HOURS)
            return deploys_message(services, recent, {"alert": group.id}, ids.ALERT_ROLLBACK)

        parts.append(guarded_part("recent deploys", deploys))
    else:
        text = (
            "No label of this alert names a service, so no recent deploys are shown: label it `service=NAME`, or add "
            "`alerts: {match: {LABEL: VALUE}}` to the service in services.yaml."
        )
        parts.append((text, [context(text)]))
    return build_briefing_blocks(parts, cause)


def read_group_value(raw: str) -> tuple[str, int | None]:
    """The group and firing a Declare incident or Silence 1h button carries (``group_value``); a button posted
    before the firing was carried holds the group alone (None)."""
    group_id, colon, episode = raw.partition(":")
    if not colon:
        return raw, None
    if not (episode.isascii() and episode.isdigit() and len(episode) <= 9):
        raise InvalidRequest("that button is not one opsbot posted: use the buttons of the alert's latest message.")
    return group_id, int(episode)


def read_rollback_value(raw: str) -> dict[str, str]:
    """What an alert's Rollback button carries; anything else did not come from opsbot's button."""
    try:
        value: Any = json.loads(raw)
    except ValueError:
        value = None
    names = ("alert", "service", "env")
    if not isinstance(value, dict) or not all(isinstance(value.get(n), str) for n in names):
        raise InvalidRequest("that Rollback button is not one opsbot posted: use `/rollback SERVICE ENV` instead.")
    return value


def register(on: Listeners, runtime: Runtime, web: SlackWeb) -> AlertDesk:
    desk = AlertDesk(runtime, web)

    def remember_message(args: dict, channel: str, ts: str) -> None:
        runtime.alerts().set_message(args["group"], int(args["episode"]), channel, ts)

    web.on(MESSAGE_HOOK, remember_message)

    def free_alert_groups(args: dict) -> None:
        # an incident declared from an alert was cancelled (in the cancel's transaction): the alert offers Declare again
        runtime.alerts().incident_cancelled(args["incident"], args["user"], desk)

    web.listen(CANCELLED, free_alert_groups)
    # Posts of cancels queued by an opsbot from before the listener still name it as their after-delivery hook.
    web.on(CANCELLED, lambda args, channel, ts: free_alert_groups(args))

    def declare_incident(body: dict) -> None:
        desk.declare(body)

    def silence_alert(body: dict) -> None:
        desk.silence(body)

    def rollback_from_alert(body: dict) -> None:
        desk.rollback(body)

    on.action(ids.ALERT_DECLARE, declare_incident)
    on.action(ids.ALERT_SILENCE, silence_alert)
    on.action(ids.ALERT_ROLLBACK, rollback_from_alert)
    return desk
