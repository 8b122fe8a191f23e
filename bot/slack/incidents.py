"""/incident: declare, work and resolve incidents in Slack; the pin reaction; Rollback from the briefing.

The lifecycle is ``bot.ops.incidents.IncidentService``; this module parses commands and shows its results.
"""

from __future__ import annotations

import html
import json
import logging
import re
import sqlite3
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

from slack_bolt import Ack

from bot.errors import InvalidRequest, OpsbotError
from bot.ops.incidents import Announce, IncidentService, LiveIncident
from bot.redact import scrub
from bot.runtime import Runtime
from bot.slack import briefing, ids
from bot.slack.blocks.incidents import (
    INPUT_CHARS,
    NO_SERVICE_TEXT,
    USAGE,
    build_declared_blocks,
    build_list_text,
    build_recent_deploys_blocks,
    build_resolve_view,
    build_resolved_blocks,
    build_status_blocks,
    cause_text,
    escape,
    not_indexed_text,
    read_resolve_view,
    resolved_fallback_text,
    title_line,
)
from bot.slack.blocks.mrkdwn import context, section
from bot.slack.briefing import RECENT_HOURS, Message, deploys_message, experts_message, guarded_part, knowledge_message
from bot.slack.delivery import Outcome, call_web_api, call_while_waiting
from bot.slack.deploys import submit
from bot.slack.incident_commands import (
    IncidentCommand,
    likely_services,
    mentioned_services,
    parse_incident,
    split_subcommand,
    subcommand_of,
    unknown_subcommand,
    without_link_labels,
)
from bot.slack.listeners import Listeners, clicked_channel
from bot.slack.web import Notify, SlackWeb
from bot.store.base import is_busy, is_write_failure

log = logging.getLogger(__name__)
SLUG_LENGTH = 40
# Emitted inside a cancel's transaction: bot.slack.alerts frees the alert groups the incident was declared from.
CANCELLED = "incident-cancelled"
CREATE_ATTEMPTS = 3  # conversations.create, while the declarer waits for the incident's channel
CREATE_WAIT_S = 10.0
CLOCK_SKEW_S = 30  # Slack's clock against ours, when a channel's creation time is compared with our first attempt
MEMBERSHIP_PAGES = 10  # users.conversations pages read to find it (200 channels each)
SCOPE_HINT = "The app needs the `channels:manage` scope (see `opsbot manifest`) and a reinstall."
PRIVACY_HINT = (
    "The app needs the `channels:read`, `groups:read` and `mpim:read` scopes (see `opsbot manifest`) and a reinstall."
)
SCOPE_ERRORS = frozenset({"missing_scope", "not_allowed_token_type", "no_permission"})  # the app's scopes
CHANNEL_HINTS = {  # Slack's errors of conversations.create that a change of the app or the workspace fixes
    **dict.fromkeys(SCOPE_ERRORS, SCOPE_HINT),
    "restricted_action": "The workspace's settings do not let apps create channels; a workspace admin can.",
    "name_taken": "Both of the names opsbot tried are taken; archived channels keep their names.",
}


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
    notify = Notify(response_url=response_url) if response_url else None
    return web.post(channel, text, blocks or None, notify=notify)


def say_privately(web: SlackWeb, response_url: str, text: str) -> None:
    web.respond(response_url, text)


def create_channel(web: SlackWeb, name: str, private: bool, taken: Callable[[str], bool]) -> tuple[dict | None, str]:
    """conversations.create: (Slack's answer, "") or (None, its error). What the outbox would try again (429, 5xx,
    an error page, a reset) is tried again here, CREATE_ATTEMPTS times at most, after Slack's Retry-After or the
    outbox's backoff; a Retry-After longer than CREATE_WAIT_S is not waited for: the declarer is waiting.

    An attempt that timed out (or met a 5xx) may have created the channel all the same: when a later attempt is
    told the name is taken, the channel of that name that opsbot created since the first attempt, and that no
    incident has (``taken``), is the one (else it would be left behind, empty, and a second one made under the other
    name). Another incident's channel of the same name is never taken over."""
    body = {"name": name, "is_private": True} if private else {"name": name}
    unsure, started = False, time.time()

    def attempt(n: int) -> Outcome:
        nonlocal unsure
        outcome = call_web_api(web.client, "conversations.create", body, web.policy, n)
        unsure |= not outcome.ok and outcome.retry_in is not None and outcome.error != "ratelimited"
        return outcome

    outcome = call_while_waiting(attempt, CREATE_ATTEMPTS, CREATE_WAIT_S)
    if not outcome.ok and outcome.error == "name_taken" and unsure:
        made = own_new_channel(web, name, started - CLOCK_SKEW_S, taken)
        if made is not None:
            log.info("incident channel found after an unanswered create name=%s channel=%s", name, made["id"])
            return {"ok": True, "channel": made}, ""
    if not outcome.ok:
        log.warning("slack call failed method=conversations.create error=%s", outcome.error)
    return outcome.answer, outcome.error


def own_new_channel(web: SlackWeb, name: str, since: float, taken: Callable[[str], bool]) -> dict | None:
    """The channel named ``name`` that opsbot itself created at ``since`` or later and that no incident has
    (``taken``), among those it is a member of (the creator always is), or None: someone else's channel of that name,
    or another incident's, is never taken over."""
    me = (web.call("auth.test") or {}).get("user_id")
    cursor = ""
    for _ in range(MEMBERSHIP_PAGES):
        more = {"cursor": cursor} if cursor else {}
        page = web.call("users.conversations", types="public_channel,private_channel", limit=200, **more) or {}
        for channel in page.get("channels") or []:
            fresh = float(channel.get("created") or 0) >= since
            ours = me and channel.get("creator") == me and not channel.get("is_archived")
            if channel.get("name") == name and ours and fresh and not taken(str(channel.get("id", ""))):
                return channel
        cursor = str((page.get("response_metadata") or {}).get("next_cursor") or "")
        if not cursor:
            return None
    return None


def channel_privacy(web: SlackWeb, channel: str) -> tuple[bool, str]:
    """Whether an incident worked in ``channel`` is private: (private, "") from Slack's answer, or (True, the
    error) when Slack did not say. A DM is private; so is a channel Slack will not describe to opsbot (a private
    one it is not in answers channel_not_found), and one it could not ask about: a missing scope or an outage
    never shows an incident wider than the channel it was declared in."""
    if channel.startswith("D"):  # a direct message
        return True, ""
    outcome = call_while_waiting(  # a 429 or a 5xx is tried again, as a channel's creation is
        lambda attempt: call_web_api(web.client, "conversations.info", {"channel": channel}, web.policy, attempt, True),
        CREATE_ATTEMPTS,
        CREATE_WAIT_S,
    )
    if not outcome.ok:
        return True, "" if outcome.error == "channel_not_found" else outcome.error or "no answer"
    info = (outcome.answer or {}).get("channel") or {}
    return bool(info.get("is_private") or info.get("is_im") or info.get("is_mpim")), ""


def privacy_unknown_text(incident_id: str, error: str) -> str:
    """What the declarer is told when Slack would not say whether the channel is private."""
    why = PRIVACY_HINT if error in SCOPE_ERRORS else "Slack did not answer."
    return (
        f"opsbot could not ask Slack whether this channel is private ({error}), so {incident_id} is treated as "
        f"private, and stays so: shown and changed only in its channel, and kept out of search when resolved. {why}"
    )


def settle_privacy(web: SlackWeb, incidents: IncidentService) -> None:
    """Ask Slack about the channels of incidents declared before opsbot asked at the declaration (each once; one it
    does not answer about stays private and is asked about again at the next /incident)."""
    for channel in incidents.unsettled_channels():
        private, unknown = channel_privacy(web, channel)
        if unknown:
            log.warning("channel privacy unknown channel=%s error=%s: its incidents stay private", channel, unknown)
        else:
            incidents.settle_privacy(channel, private)


def visible_in(incident: LiveIncident, channel: str) -> bool:
    """Whether ``/incident`` typed in ``channel`` may show or change the incident: any channel for one worked in
    the open, only its own channel (or the one it was declared in) for a private one."""
    return not incident.private or channel in (incident.channel, incident.origin_channel)


def private_refused_text(incident: LiveIncident) -> str:
    return (
        f"{incident.id} is worked in a private channel, so it is shown and changed only there: "
        "type `/incident` in that channel."
    )


def channel_refused_text(incident: LiveIncident, error: str) -> str:
    """What the declarer is told when its channel could not be created: what Slack answered, and what to do."""
    hint = CHANNEL_HINTS.get(error, "")  # none for a 429 or a 5xx that outlasted the retries: Slack's word is said
    text = f"{incident.id} is declared, but Slack did not create its channel ({error}), so it lives in this channel."
    return f"{text} {hint}" if hint else text


def channel_unrecorded_text(incident: LiveIncident, channel: str, reason: str) -> str:
    """What the declarer is told when its new channel could not be stored with the incident."""
    return (
        f"{incident.id} is declared and <#{channel}> was made for it, but opsbot could not record that channel "
        f"({reason}), so the incident lives in this channel: work it here. <#{channel}> is not its channel and "
        "can be archived."
    )


def record_channel(incidents: IncidentService, web: SlackWeb, incident: LiveIncident, channel: str, url: str) -> bool:
    """Store the channel made for a declared incident. When the database refuses the write (a full disk, another
    process holding its write lock), the incident stays where it was declared and the declarer is told so: the
    declaration is stored already, so "nothing was changed, try again" would have them declare it twice."""
    try:
        incidents.set_channel(incident.id, channel)
    except sqlite3.OperationalError as exc:
        if not (is_write_failure(exc) or is_busy(exc)):
            raise
        log.error("incident channel not recorded id=%s channel=%s reason=%s", incident.id, channel, exc)
        say_privately(web, url, channel_unrecorded_text(incident, channel, str(exc)))
        return False
    return True


def open_incident_channel(
    web: SlackWeb, incident: LiveIncident, user: str, taken: Callable[[str], bool]
) -> tuple[str | None, str]:
    """Create the incident's channel and invite the declarer; (channel id, "") or (None, Slack's error). ``taken``:
    whether a channel already belongs to an incident."""
    base = channel_name(incident)
    for name in (base, f"{base[:70]}-{incident.id.rsplit('-', 1)[1]}"):
        created, error = create_channel(web, name, incident.private, taken)
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


def knowledge_part(
    runtime: Runtime, incident: LiveIncident, channel: str, shown: briefing.Shown | None = None
) -> Message:
    """Runbook sections and similar past incidents, with how those were resolved."""
    return knowledge_message(runtime, incident.title, channel, incident.declared_by, shown=shown)


def experts_part(runtime: Runtime, incident: LiveIncident, shown: briefing.Shown | None = None) -> Message:
    # Whoever declared it is already there: never suggested to themselves.
    return experts_message(runtime, incident.title, incident.services, asker=incident.declared_by, shown=shown)


def deploys_part(runtime: Runtime, incident: LiveIncident, with_cause: bool = False) -> Message:
    """The services' deploys of the last 24 hours with Rollback buttons; ``with_cause``: led by the deploy that
    may have caused it (the declaration names it; services named later have not been looked at yet)."""
    if not incident.services:
        guess = likely_services(incident.title, runtime.incidents().known_services)
        if not guess:
            return NO_SERVICE_TEXT, build_recent_deploys_blocks(incident, [])
        text = f"No service named, so no recent deploys to show. Is it {' or '.join(guess)}?"
        typed = " · ".join(f"`/incident service {name}`" for name in guess)
        return text, [context(f"{text} {typed} shows its deploys, with Rollback buttons.")]
    deploys = runtime.incidents().recent_deploys(incident, RECENT_HOURS)
    text, blocks = deploys_message(incident.services, deploys, {"incident": incident.id}, ids.INCIDENT_ROLLBACK)
    window = runtime.deploys().settings.failure_window_hours
    cause = runtime.incidents().possible_cause(incident, window) if with_cause else None
    if cause is not None:
        return f"{text}; possible cause: deploy {cause.deploy.id}", [section(cause_text(cause)), *blocks]
    return text, blocks


def change_services(
    runtime: Runtime, web: SlackWeb, url: str, incident: LiveIncident, user: str, asked: IncidentCommand, typed_in: str
) -> None:
    """Add services found to be involved (or remove one named by mistake); for those added, show their recent deploys
    (with Rollback buttons and the possible cause), as the briefing does for the services named when declaring."""
    changed = lambda live: live.events[-1]["text"].replace("Services", "services", 1)  # noqa: E731
    told = told_by(web, url, typed_in, lambda live: f":link: {live.id} {changed(live)} (by <@{user}>).")
    live = runtime.incidents().change_services(incident, user, list(asked.services), list(asked.removed), told)
    if set(live.services) - set(incident.services):
        part = guarded_part("recent deploys", lambda: deploys_part(runtime, live, with_cause=True))
        post(web, live.channel, part, url)


def declare(runtime: Runtime, incidents: IncidentService, web: SlackWeb, command: dict, asked: IncidentCommand) -> None:
    """Declare it and say so in the same transaction, then brief.

    Without incident channels the declaration itself is posted from inside the transaction. With them, the
    channel can only be created after the commit, so what the transaction posts is a note where it was declared,
    edited to link the channel once it exists: a stop in between leaves that note, never an incident nobody saw.
    """
    user, origin = command.get("user_id", ""), command.get("channel_id", "")
    url = command.get("response_url", "")
    services = list(asked.services) or mentioned_services(asked.title, incidents.known_services)

    private, unknown = channel_privacy(web, origin)

    def told(live: LiveIncident) -> None:  # inside the declaration's transaction: outbox rows only
        if runtime.settings.incident_channels:
            text = f":rotating_light: {title_line(live)} declared by <@{user}>; opening its channel…"
            web.post(origin, text, key=declared_key(live), notify=Notify(response_url=url) if url else None)
        else:
            post_declaration(runtime, incidents, web, live, origin, url)

    incident = incidents.declare(
        asked.title,
        user,
        asked.severity,
        services,
        origin_channel=origin,
        env=asked.env,
        announce=told,
        private=private,
    )
    log.info("incident declared id=%s by=%s channel=%s private=%s", incident.id, user, origin, private)
    if unknown:
        log.warning("channel privacy unknown channel=%s error=%s: the incident is private", origin, unknown)
        say_privately(web, url, privacy_unknown_text(incident.id, unknown))
    brief(runtime, incidents, web, incident, user, origin, url, declared=True)


def declared_key(incident: LiveIncident) -> str:
    return f"incident-declared:{incident.id}"


def post_declaration(
    runtime: Runtime, incidents: IncidentService, web: SlackWeb, incident: LiveIncident, where: str, url: str
) -> None:
    """The declaration message, with the deploy that may have caused it."""
    try:
        cause = incidents.possible_cause(incident, runtime.deploys().settings.failure_window_hours)
    except Exception:  # a hint only: never worth losing the declaration for
        log.exception("could not look for a possible cause id=%s", incident.id)
        cause = None
    hit = f" in {incident.env}" if incident.env else ""
    headline = f"{incident.id} SEV{incident.severity}{hit}: {escape(incident.title)}"  # <!channel> stays text
    post(web, where, (headline, build_declared_blocks(incident, cause)), url)


def brief(
    runtime: Runtime,
    incidents: IncidentService,
    web: SlackWeb,
    incident: LiveIncident,
    user: str,
    origin: str,
    url: str = "",
    briefed: bool = False,
    declared: bool = False,
) -> str:
    """Open the incident's channel if configured, post its declaration and briefing there; the channel.

    ``briefed`` (declared from an alert whose message shows the briefing already) leaves the briefing out when
    the incident stays in that channel. ``declared``: ``declare`` posted the declaration (without incident
    channels) or the note to edit (with them) in its transaction.
    """
    where = origin
    if runtime.settings.incident_channels:
        channel, error = open_incident_channel(web, incident, user, incidents.has_channel)
        if channel and record_channel(incidents, web, incident, channel, url):
            where = channel
        elif not channel:
            say_privately(web, url, channel_refused_text(incident, error))
    incident = incidents.get(incident.id)
    if not declared or runtime.settings.incident_channels:
        post_declaration(runtime, incidents, web, incident, where, url)
    if not (briefed and where == origin):
        shown = briefing.Shown()  # built in this order: the suggestions agree with what the knowledge part showed
        for message in (
            guarded_part("runbooks or similar incidents", lambda: knowledge_part(runtime, incident, where, shown)),
            guarded_part("expert suggestions", lambda: experts_part(runtime, incident, shown)),
            guarded_part("recent deploys", lambda: deploys_part(runtime, incident)),
        ):
            post(web, where, message, url)
    if declared and runtime.settings.incident_channels:
        worked = f"it is worked in <#{where}>" if where != origin else "it is worked here"
        text = f":rotating_light: {title_line(incident)} declared by <@{user}>; {worked}."
        web.update(origin, text, update_of=declared_key(incident))
    elif where != origin:
        text = f":rotating_light: {title_line(incident)} declared by <@{user}>; it is worked in <#{where}>."
        post(web, origin, (text, []), url)
    return where


# -- working an incident --------------------------------------------------------------------------------


def announce(web: SlackWeb, url: str, incident: LiveIncident, channel: str, text: str) -> None:
    """Show a change in the incident's channel; tell the user where, when they typed it elsewhere."""
    post(web, incident.channel, (text, []), url)
    if channel != incident.channel:
        say_privately(web, url, f"Done: {text} (posted in <#{incident.channel}>)")


def told_by(web: SlackWeb, url: str, channel: str, text: Callable[[LiveIncident], str]) -> Announce:
    """The ``announce`` of a change (run inside its transaction): ``text`` of the changed incident, shown as
    ``announce`` shows it. Its posts are outbox rows stored with the change, so a stop between the two loses
    neither."""
    return lambda live: announce(web, url, live, channel, text(live))


def resolve(
    runtime: Runtime,
    incidents: IncidentService,
    web: SlackWeb,
    url: str,
    incident: LiveIncident,
    user: str,
    resolution: str,
    root_cause: str = "",
    typed_in: str = "",
) -> None:
    """Resolve it, then index it; a restart between the two loses nothing (``typed_in``: the channel the command
    was typed in, told privately where the summary is when it is elsewhere).

    The summary and the note where it was declared are outbox rows written in the resolve's own transaction.
    Indexing may wait for the model (while it loads after a start), so it runs after the commit; an incident that a
    stopped process did not index is indexed at the next start (``Runtime.learn_missed``).
    """

    def announce(live: LiveIncident) -> None:  # inside the transaction: outbox rows only, nothing slow
        post(web, live.channel, (resolved_fallback_text(live), build_resolved_blocks(live)), url)
        if live.origin_channel and live.origin_channel != live.channel:
            post(web, live.origin_channel, (f":white_check_mark: {title_line(live)} is resolved.", []))

    live, past = incidents.resolve(incident, user, resolution, root_cause, announce=announce)
    log.info("incident resolved id=%s by=%s minutes=%s", live.id, user, live.minutes_to_restore)
    if typed_in and typed_in != live.channel:  # now, not after the indexing, which may wait for the model
        where = f"{live.id} is resolved; the summary is in <#{live.channel}>."
        if url:
            say_privately(web, url, where)
        else:  # the resolve dialog has no response_url
            web.tell_user(typed_in, user, where)
    if live.private:  # what every channel searches must not hold what only one channel may read
        return
    try:
        runtime.learn_from(past)
    except Exception:  # the summary promised a note when indexing fails
        log.exception("could not index resolved incident id=%s", live.id)
        post(web, live.channel, (not_indexed_text(live), []), url)


def run_subcommand(runtime: Runtime, web: SlackWeb, command: dict, asked: IncidentCommand) -> None:
    incidents = runtime.incidents()
    user, channel = command.get("user_id", ""), command.get("channel_id", "")
    url = command.get("response_url", "")
    if asked.sub == "declare":
        declare(runtime, incidents, web, command, asked)
        return
    settle_privacy(web, incidents)
    if asked.sub == "list":
        found = incidents.list_open()
        shown = [i for i in found if visible_in(i, channel)]
        say_privately(web, url, build_list_text(shown, private=len(found) - len(shown)))
        return
    incident = incidents.find(asked.incident_id, channel)
    if not visible_in(incident, channel):
        raise InvalidRequest(private_refused_text(incident))
    said = escape(scrub(asked.text))  # as the timeline stores it
    if asked.sub == "status":
        web.respond(url, title_line(incident), build_status_blocks(incident))
    elif asked.sub in ("note", "update"):
        what = ":memo: {} note from <@{}>" if asked.sub == "note" else ":loudspeaker: {} status update from <@{}>"
        told = told_by(web, url, channel, lambda live: f"{what.format(live.id, user)}: {said}")
        incidents.note(incident, user, asked.text, kind=asked.sub, announce=told)
    elif asked.sub == "assign":
        told = told_by(
            web, url, channel, lambda live: f":bust_in_silhouette: <@{asked.user}> is {asked.role} of {live.id}."
        )
        incidents.assign(incident, user, asked.user, asked.role, announce=told)
    elif asked.sub == "severity":
        # from the severity the change found (the last timeline entry), not from this possibly stale copy
        change = lambda live: live.events[-1]["text"].replace("Severity", "severity", 1)  # noqa: E731
        told = told_by(web, url, channel, lambda live: f":rotating_light: {live.id} {change(live)} (by <@{user}>).")
        incidents.set_severity(incident, user, asked.severity or 0, announce=told)
    elif asked.sub == "service":
        change_services(runtime, web, url, incident, user, asked, channel)
    elif asked.sub == "rootcause":
        told = told_by(web, url, channel, lambda live: f":mag: {live.id} root cause (from <@{user}>): {said}")
        incidents.set_root_cause(incident, user, asked.text, announce=told)
    elif asked.sub == "cancel":
        cancel(incidents, web, url, incident, user, asked.text)
    elif asked.sub == "resolve" and not asked.text:
        open_resolve_dialog(web, command, incident, asked.root_cause)
    elif asked.sub == "resolve":
        resolve(runtime, incidents, web, url, incident, user, asked.text, asked.root_cause, typed_in=channel)


def cancel(incidents: IncidentService, web: SlackWeb, url: str, incident: LiveIncident, user: str, why: str) -> None:
    """Declared by mistake: said where it was worked and where it was declared; never searchable or counted. An
    alert it was declared from offers Declare incident again, in the same transaction (CANCELLED, heard by
    bot.slack.alerts), whether or not the posts get through."""
    # "/incident cancel declared by mistake" gives the reason the message already states: not said twice
    said = why.strip().rstrip(".").lower() == "declared by mistake"
    reason = f" ({escape(scrub(why))})" if why and not said else ""

    def told(live: LiveIncident) -> None:  # inside the cancel's transaction: outbox rows only
        text = (
            f":no_entry_sign: {title_line(live)} was cancelled by <@{user}>: declared by mistake{reason}. It is not "
            "a past incident and counts in no figure; its timeline is kept."
        )
        post(web, live.channel, (text, []), url)
        web.emit(CANCELLED, {"incident": live.id, "user": user})
        if live.origin_channel and live.origin_channel != live.channel:
            post(web, live.origin_channel, (text, []), url)

    incident = incidents.cancel(incident, user, why, announce=told)
    log.info("incident cancelled id=%s by=%s", incident.id, user)


def open_resolve_dialog(web: SlackWeb, command: dict, incident: LiveIncident, root_cause: str = "") -> None:
    """`/incident resolve` without a resolution: a dialog asks for it and the root cause (filled in when given)."""
    if not incident.is_open:
        raise InvalidRequest(f"{incident.id} is already {incident.status}; nothing changed.")
    if len(root_cause) > INPUT_CHARS:  # the dialog could show only its start, and would record that
        raise InvalidRequest(
            f"that root cause is {len(root_cause):,} characters, more than the resolve dialog holds "
            f"({INPUT_CHARS:,}): give the resolution too, `/incident resolve RESOLUTION --root-cause TEXT`, or "
            "record the cause first with `/incident rootcause TEXT`. Nothing changed."
        )
    view = build_resolve_view(incident, command.get("channel_id", ""), root_cause)
    opened, error = web.try_call("views.open", trigger_id=command.get("trigger_id", ""), view=view)
    if opened is None:
        log.info("resolve dialog not opened id=%s error=%s", incident.id, error)
        raise InvalidRequest(
            "say how it was resolved: `/incident resolve RESOLUTION [--root-cause TEXT]` "
            f"(the resolve dialog could not be opened: {error})."
        )


def resolve_from_dialog(runtime: Runtime, web: SlackWeb, body: dict) -> None:
    """The resolve dialog was submitted: resolve as `/incident resolve TEXT --root-cause TEXT` would."""
    incident_id, channel, resolution, root_cause = read_resolve_view(body["view"])
    # typed as is (a dialog's text is not escaped): a link keeps its address in sight, as in a typed command
    resolution, root_cause = without_link_labels(resolution), without_link_labels(root_cause)
    user = body["user"]["id"]
    incidents = runtime.incidents()
    try:
        resolve(runtime, incidents, web, "", incidents.get(incident_id), user, resolution, root_cause, channel)
    except OpsbotError as exc:  # a submitted dialog has no response_url: tell them where they typed /incident
        web.tell_user(channel, user, f"Sorry: {exc}")


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
        if not incidents.pin(incident, user, html.unescape(text), message=f"{channel}:{ts}"):
            return  # someone else pinned it already
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
    channel = clicked_channel(body)
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
        word, _ = split_subcommand(command.get("text", ""))
        sub = subcommand_of(word)
        if sub in (None, "help"):
            # a typo ("declar") is named, so it is not taken for a missing word
            wrong = f"{escape(unknown_subcommand(word))}\n" if sub is None and word else ""
            ack(response_type="ephemeral", text=wrong + USAGE)
        elif sub == "declare":
            ack(response_type="ephemeral", text="Declaring the incident…")
        else:
            ack()

    def handle_incident(command: dict, body: dict) -> None:
        word, _ = split_subcommand(command.get("text", ""))
        if subcommand_of(word) not in (None, "help"):
            run_subcommand(runtime, web, command, parse_incident(command.get("text", "")))

    def ack_resolve_dialog(ack: Ack, body: dict) -> None:
        _, _, resolution, _ = read_resolve_view(body.get("view") or {})
        if resolution:
            ack()
        else:
            ack(response_action="errors", errors={ids.INCIDENT_RESOLUTION_BLOCK: "Say how it was resolved."})

    def handle_resolve_dialog(body: dict) -> None:
        if read_resolve_view(body["view"])[2]:
            resolve_from_dialog(runtime, web, body)

    def handle_reaction(event: dict, body: dict) -> None:
        pin_message(runtime, web, event)

    def handle_rollback(body: dict) -> None:
        request_rollback(runtime, web, body)

    on.command("/incident", handle_incident, ack=ack_incident)
    on.event("reaction_added", handle_reaction)
    on.action(ids.INCIDENT_ROLLBACK, handle_rollback)
    on.view(ids.INCIDENT_RESOLVE_VIEW, handle_resolve_dialog, ack=ack_resolve_dialog)
