"""/incident: declare, work and resolve incidents in Slack; the pin reaction; Rollback from the briefing.

The lifecycle is ``bot.ops.incidents.IncidentService``; this module parses commands and shows its results.
"""

from __future__ import annotations

import html
import json
import logging
import re
import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Any

from slack_bolt import Ack

from bot.errors import InvalidRequest, OpsbotError
from bot.ops.incidents import IncidentService, LiveIncident, check_severity
from bot.runtime import Runtime
from bot.slack import ids
from bot.slack.blocks.answers import build_experts_blocks
from bot.slack.blocks.incidents import (
    USAGE,
    build_declared_blocks,
    build_knowledge_blocks,
    build_list_text,
    build_recent_deploys_blocks,
    build_resolved_blocks,
    build_status_blocks,
    escape,
    resolved_fallback_text,
    title_line,
)
from bot.slack.deploys import submit
from bot.slack.listeners import Listeners
from bot.slack.web import Notify, SlackWeb

log = logging.getLogger(__name__)
SUBCOMMANDS = ("declare", "status", "note", "assign", "severity", "resolve", "list")
USER_REFERENCE = re.compile(r"^<@([UW][A-Z0-9]+)(?:\|[^>]*)?>$|^([UW][A-Z0-9]{6,})$")
RECENT_HOURS = 24
SLUG_LENGTH = 40
Message = tuple[str, list[dict]]


# -- parsing ----------------------------------------------------------------------------------------


def split_subcommand(text: str) -> tuple[str, str]:
    """`note INC-2026-0042 pods restarted` -> ("note", "INC-2026-0042 pods restarted")."""
    parts = (text or "").strip().split(maxsplit=1)
    return (parts[0].lower() if parts else "", parts[1].strip() if len(parts) > 1 else "")


def split_incident_id(rest: str) -> tuple[str | None, str]:
    """An incident id right after the subcommand, if one was given, and the rest."""
    parts = rest.strip().split(maxsplit=1)
    if parts and parts[0].upper().startswith("INC-"):
        return parts[0], parts[1].strip() if len(parts) > 1 else ""
    return None, rest.strip()


def _option(word: str) -> str:
    # Some clients turn a typed `--` into a dash; accept both.
    return "--" + word[1:] if word[:1] in ("—", "–") else word


def parse_declare(rest: str) -> tuple[str, int | None, list[str]]:
    """`checkout 503s --sev 2 --service checkout-api` -> ("checkout 503s", 2, ["checkout-api"])."""
    words = [_option(w) for w in rest.split()]
    title: list[str] = []
    severity: int | None = None
    services: list[str] = []
    i = 0
    while i < len(words):
        name, has_value, value = words[i].partition("=")
        if name in ("--sev", "--severity", "--service"):
            if not has_value:
                if i + 1 >= len(words):
                    raise InvalidRequest(f"{name} needs a value: /incident declare TITLE [--sev 1-4] [--service NAME].")
                value = words[i + 1]
                i += 1
            if name == "--service":
                services.append(value)
            else:
                severity = check_severity(value)
        else:
            title.append(words[i])
        i += 1
    return html.unescape(" ".join(title)), severity, services


def parse_assign(rest: str) -> tuple[str, str]:
    """`<@U123|dana> comms` -> ("U123", "comms")."""
    parts = rest.split()
    match = USER_REFERENCE.match(parts[0]) if parts else None
    if match is None or len(parts) != 2:
        raise InvalidRequest(
            "mention the person and name the role: `/incident assign @user lead` or `/incident assign @user comms`."
        )
    return match[1] or match[2], parts[1].lower()


def mentioned_services(title: str, known: set[str]) -> list[str]:
    """Known service names written in the title, when no --service was given."""
    lower = title.lower()
    return sorted(s for s in known if re.search(rf"(?<![\w-]){re.escape(s)}(?![\w-])", lower))


def channel_name(incident: LiveIncident) -> str:
    """`inc-20261127-checkout-503s-after-deploy`: lower case, digits and dashes, as Slack allows."""
    day = datetime.fromisoformat(incident.declared_at).strftime("%Y%m%d")
    slug = re.sub(r"[^a-z0-9]+", "-", incident.title.lower()).strip("-")
    if len(slug) > SLUG_LENGTH:  # cut at a word boundary when there is one
        cut = slug[: SLUG_LENGTH + 1]
        slug = cut.rsplit("-", 1)[0] if "-" in cut else slug[:SLUG_LENGTH]
    return f"inc-{day}-{slug or incident.id.rsplit('-', 1)[1]}"


# -- Slack helpers ------------------------------------------------------------------------------------


def post(web: SlackWeb, channel: str, message: Message, response_url: str = "") -> int:
    """Post in a channel; if Slack refuses it for good, the user who asked sees it privately, with why."""
    text, blocks = message
    return web.post(channel, text, blocks or None, notify=Notify(response_url=response_url) if response_url else None)


def say_privately(web: SlackWeb, response_url: str, text: str) -> None:
    web.respond(response_url, text)


def open_incident_channel(web: SlackWeb, incident: LiveIncident, user: str) -> tuple[str | None, str]:
    """Create the incident's channel and invite the declarer; (channel id, "") or (None, Slack's error)."""
    base = channel_name(incident)
    for name in (base, f"{base[:70]}-{incident.id.rsplit('-', 1)[1]}"):
        created, error = web.try_call("conversations.create", name=name)
        if created is None:
            if error == "name_taken":
                continue
            return None, error
        channel = created["channel"]["id"]
        web.call("conversations.invite", channel=channel, users=user)  # fail-soft: logged, the channel stands
        log.info("incident channel created id=%s channel=%s name=%s", incident.id, channel, name)
        return channel, ""
    return None, "name_taken"


# -- the declaration briefing ---------------------------------------------------------------------------


def knowledge_message(runtime: Runtime, incident: LiveIncident, channel: str) -> Message:
    """Runbook sections and similar past incidents, with how those were resolved."""
    reply = runtime.reply(incident.title, channel=channel, user=incident.declared_by)
    resolutions = runtime.incidents().past_resolutions()
    similar = [(h, resolutions.get(h.incident_id, "")) for h in reply.incidents]
    text = f"{len(reply.runbooks)} runbook section(s), {len(similar)} similar past incident(s)"
    return text, build_knowledge_blocks(list(reply.runbooks), similar)


def experts_message(runtime: Runtime, incident: LiveIncident) -> Message:
    # Whoever declared it is already there: never suggested to themselves.
    suggestions = runtime.suggest_experts(incident.title, list(incident.services) or None, asker=incident.declared_by)
    text = f"Suggested: {', '.join(s.expert.name for s in suggestions) or 'nobody'}"
    return text, build_experts_blocks(incident.title, suggestions, can_invite=True)


def deploys_message(runtime: Runtime, incident: LiveIncident) -> Message:
    deploys = runtime.incidents().recent_deploys(incident, RECENT_HOURS)
    return f"{len(deploys)} deploy(s) in the last 24 h", build_recent_deploys_blocks(incident, deploys)


def guarded_part(what: str, build: Callable[[], Message]) -> Message:
    """One part of the briefing; if it fails the others are still posted (the incident is recorded already)."""
    try:
        return build()
    except OpsbotError as exc:
        text = f"No {what}: {exc}"
    except Exception:
        error_id = uuid.uuid4().hex[:8]
        log.exception("incident briefing part failed part=%s error_id=%s", what, error_id)
        text = f"Could not load the {what} (error id `{error_id}`)."
    return text, [{"type": "context", "elements": [{"type": "mrkdwn", "text": text}]}]


def declare(runtime: Runtime, incidents: IncidentService, web: SlackWeb, command: dict, rest: str) -> None:
    user, origin = command.get("user_id", ""), command.get("channel_id", "")
    url = command.get("response_url", "")
    title, severity, services = parse_declare(rest)
    if not services:
        services = mentioned_services(title, incidents.known_services)
    incident = incidents.declare(title, user, severity, services, origin_channel=origin)
    log.info("incident declared id=%s by=%s channel=%s", incident.id, user, origin)
    where = origin
    if runtime.settings.incident_channels:
        channel, error = open_incident_channel(web, incident, user)
        if channel:
            incidents.set_channel(incident.id, channel)
            where = channel
        else:
            say_privately(
                web,
                url,
                f"{incident.id} is declared, but Slack refused to create its channel ({error}), so it lives in "
                "this channel. The app needs the `channels:manage` scope (see `opsbot manifest`).",
            )
    incident = incidents.get(incident.id)
    try:
        cause = incidents.possible_cause(incident, runtime.deploys().settings.failure_window_hours)
    except Exception:  # a hint only: never worth losing the briefing for
        log.exception("could not look for a possible cause id=%s", incident.id)
        cause = None
    headline = f"{incident.id} SEV{incident.severity}: {incident.title}"
    post(web, where, (headline, build_declared_blocks(incident, cause)), url)
    for message in (
        guarded_part("runbooks or similar incidents", lambda: knowledge_message(runtime, incident, where)),
        guarded_part("expert suggestions", lambda: experts_message(runtime, incident)),
        guarded_part("recent deploys", lambda: deploys_message(runtime, incident)),
    ):
        post(web, where, message, url)
    if where != origin:
        text = f":rotating_light: {title_line(incident)} declared by <@{user}>; it is worked in <#{where}>."
        post(web, origin, (text, []), url)


# -- working an incident --------------------------------------------------------------------------------


def announce(web: SlackWeb, url: str, incident: LiveIncident, channel: str, text: str) -> None:
    """Show a change in the incident's channel; tell the user where, when they typed it elsewhere."""
    post(web, incident.channel, (text, []), url)
    if channel != incident.channel:
        say_privately(web, url, f"Done: {text} (posted in <#{incident.channel}>)")


def resolve(
    runtime: Runtime,
    incidents: IncidentService,
    web: SlackWeb,
    url: str,
    incident: LiveIncident,
    user: str,
    resolution: str,
) -> None:
    live, past = incidents.resolve(incident, user, html.unescape(resolution))
    log.info("incident resolved id=%s by=%s minutes=%s", live.id, user, live.minutes_to_restore)
    searchable = True
    try:  # before the summary, so that once people read it, /ask and /experts know the incident
        runtime.learn_from(past)
    except Exception:
        searchable = False
        log.exception("could not index resolved incident id=%s", live.id)
    post(web, live.channel, (resolved_fallback_text(live), build_resolved_blocks(live, searchable)), url)
    if live.origin_channel and live.origin_channel != live.channel:
        post(web, live.origin_channel, (f":white_check_mark: {title_line(live)} is resolved.", []))


def run_subcommand(runtime: Runtime, web: SlackWeb, command: dict, sub: str, rest: str) -> None:
    incidents = runtime.incidents()
    user, channel = command.get("user_id", ""), command.get("channel_id", "")
    url = command.get("response_url", "")
    if sub == "declare":
        declare(runtime, incidents, web, command, rest)
        return
    if sub == "list":
        say_privately(web, url, build_list_text(incidents.list_open()))
        return
    incident_id, rest = split_incident_id(rest)
    incident = incidents.find(incident_id, channel)
    if sub == "status":
        web.respond(url, title_line(incident), build_status_blocks(incident))
    elif sub == "note":
        text = html.unescape(rest)
        incident = incidents.note(incident, user, text)
        announce(web, url, incident, channel, f":memo: {incident.id} note from <@{user}>: {rest}")
    elif sub == "assign":
        person, role = parse_assign(rest)
        incident = incidents.assign(incident, user, person, role)
        announce(web, url, incident, channel, f":bust_in_silhouette: <@{person}> is {role} of {incident.id}.")
    elif sub == "severity":
        before = incident.severity
        incident = incidents.set_severity(incident, user, rest)
        text = f":rotating_light: {incident.id} severity SEV{before} → SEV{incident.severity} (by <@{user}>)."
        announce(web, url, incident, channel, text)
    elif sub == "resolve":
        resolve(runtime, incidents, web, url, incident, user, rest)
        if channel != incident.channel:
            say_privately(web, url, f"{incident.id} is resolved; the summary is in <#{incident.channel}>.")


# -- the pin reaction and the Rollback button ---------------------------------------------------------


def message_text(web: SlackWeb, channel: str, ts: str) -> str | None:
    """The text of one message, in the channel or in a thread; None when it can't be read."""
    found = web.call("conversations.history", channel=channel, latest=ts, inclusive=True, limit=1) or {}
    for message in found.get("messages") or []:
        if message.get("ts") == ts:
            return message.get("text") or ""
    found = web.call("conversations.replies", channel=channel, ts=ts) or {}
    for message in found.get("messages") or []:
        if message.get("ts") == ts:
            return message.get("text") or ""
    return None


def pin_message(runtime: Runtime, web: SlackWeb, event: dict) -> None:
    """The pin emoji on a message in an incident's channel adds the message to its timeline."""
    if event.get("reaction", "").split("::")[0] != runtime.settings.pin_emoji:
        return
    item = event.get("item") or {}
    channel, ts, user = item.get("channel", ""), item.get("ts", ""), event.get("user", "")
    if item.get("type") != "message" or not runtime.incidents().has_channel(channel):
        return  # not an incident channel: the emoji means nothing here
    incidents = runtime.incidents()
    try:
        incident = incidents.find(None, channel)
        if not incident.is_open:
            return
        text = message_text(web, channel, ts)
        if text is None:
            raise InvalidRequest("I could not read that message; is it in a thread I can't see?")
        text = html.unescape(text).strip()
        if any(e["kind"] == "pinned" and e["text"] == text[:2000] for e in incident.events):
            return  # someone else pinned it already
        incidents.pin(incident, user, text)
    except OpsbotError as exc:
        web.tell_user(channel, user, f"Sorry: {exc}")
        return
    log.info("incident message pinned id=%s channel=%s ts=%s by=%s", incident.id, channel, ts, user)
    web.tell_user(channel, user, f"Added to the {incident.id} timeline.")


def read_rollback_value(raw: str) -> dict[str, str]:
    """What a Rollback button carries (see rollback_value); anything else did not come from opsbot's button."""
    try:
        value: Any = json.loads(raw)
    except ValueError:
        value = None
    names = ("incident", "service", "env")
    if not isinstance(value, dict) or not all(isinstance(value.get(n), str) for n in names):
        raise InvalidRequest("that Rollback button is not one opsbot posted: use `/rollback SERVICE ENV` instead.")
    return value


def request_rollback(runtime: Runtime, web: SlackWeb, body: dict) -> None:
    """A Rollback button of the briefing: a rollback request through the /rollback approval flow."""
    value = read_rollback_value(body["actions"][0]["value"])
    user = body["user"]["id"]
    channel = (body.get("channel") or {}).get("id") or (body.get("container") or {}).get("channel_id", "")
    command = {"user_id": user, "channel_id": channel, "response_url": body.get("response_url", "")}
    request = submit(runtime.deploys(), command, "rollback", value["service"], value["env"], None)
    log.info("rollback requested from incident id=%s request=%s by=%s", value["incident"], request.id, user)
    incidents = runtime.incidents()
    text = f"Rollback of {request.service} in {request.env} to {request.version} requested ({request.id})"
    try:
        incidents.record_action(incidents.get(value["incident"]), user, text)
    except OpsbotError as exc:  # resolved meanwhile: the rollback request stands on its own
        log.info("rollback not added to incident id=%s reason=%s", value["incident"], exc)


# -- wiring ------------------------------------------------------------------------------------------------


def register(on: Listeners, runtime: Runtime, web: SlackWeb) -> None:
    def ack_incident(ack: Ack, command: dict) -> None:
        sub, _ = split_subcommand(command.get("text", ""))
        if sub not in SUBCOMMANDS:
            unknown = sub and sub != "help"  # a typo ("declar") is named, so it is not taken for a missing word
            shown = escape(sub[:40]).replace("`", "'")
            wrong = f"`{shown}` is not an /incident subcommand; use {', '.join(SUBCOMMANDS)}.\n" if unknown else ""
            ack(response_type="ephemeral", text=wrong + USAGE)
        elif sub == "declare":
            ack(response_type="ephemeral", text="Declaring the incident…")
        else:
            ack()

    def handle_incident(command: dict, body: dict) -> None:
        sub, rest = split_subcommand(command.get("text", ""))
        if sub in SUBCOMMANDS:
            run_subcommand(runtime, web, command, sub, rest)

    def handle_reaction(event: dict, body: dict) -> None:
        pin_message(runtime, web, event)

    def handle_rollback(body: dict) -> None:
        request_rollback(runtime, web, body)

    on.command("/incident", handle_incident, ack=ack_incident)
    on.event("reaction_added", handle_reaction)
    on.action(ids.INCIDENT_ROLLBACK, handle_rollback)
