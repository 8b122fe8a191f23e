"""The incident lifecycle: declare, work (notes, roles, severity, pinned messages), resolve, learn.

What a resolved incident becomes (its write-up and YAML export) is in ``bot.ops.incident_writeup``.
"""

from __future__ import annotations

import json
import logging
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import NamedTuple

from bot.errors import InvalidRequest, NotFound
from bot.models import Incident
from bot.ops.incident_writeup import to_incident
from bot.ops.metrics import blamed_deploy, finished_changes, moment
from bot.ops.requests import DeployRequest, check_service, recent_requests
from bot.redact import scrub
from bot.store import SLACK_PREFIX, Store

log = logging.getLogger(__name__)

ROLES = ("lead", "comms")
ASSIGNED = re.compile(r"^<@([UW][A-Z0-9]+)> is (?:lead|comms)$")  # the timeline text of an assignment
INCIDENT_ID = re.compile(r"^INC-\d{4}-\d{4,}$")
ENV_NAME = re.compile(r"^[A-Za-z0-9][\w-]*$")
SEVERITY = re.compile(r"(?:SEV\s*-?\s*)?(\d+)", re.IGNORECASE)  # 2, sev2, SEV-2; never -1
SERVICE_USAGE = "/incident service NAME [NAME ...] [--remove NAME]"
DEFAULT_SEVERITY = 3
SEVERITY_DIGITS = 4
SHOWN_VALUE = 20  # a refused value is quoted back this long at most
MESSAGE_CHARS = 40_000  # a pinned message is kept whole up to Slack's own limit; summaries show its start


@dataclass(frozen=True)
class LiveIncident:
    """An incident declared in Slack, open or resolved."""

    id: str
    title: str
    severity: int
    services: tuple[str, ...]
    status: str
    declared_by: str
    declared_at: str
    channel: str
    origin_channel: str
    roles: dict[str, str] = field(default_factory=dict)
    resolved_at: str = ""
    resolution: str = ""
    events: tuple[dict, ...] = ()
    env: str = "prod"
    root_cause: str = ""
    # Worked in a private channel (or a DM): shown and changed only there, never indexed for every channel to find.
    private: bool = False

    @property
    def is_open(self) -> bool:
        return self.status == "open"

    @property
    def minutes_to_restore(self) -> int | None:
        if not self.resolved_at:
            return None
        delta = datetime.fromisoformat(self.resolved_at) - datetime.fromisoformat(self.declared_at)
        return max(0, round(delta.total_seconds() / 60))

    @property
    def responders(self) -> tuple[str, ...]:
        """The people who worked it: the lead first, then everyone who held a role (lead or comms, now or earlier)
        and everyone who declared, noted, assigned or resolved, in the order they first appear."""
        people: list[str] = []
        for person in [self.roles.get("lead", ""), *self._role_holders(), *(e["actor"] for e in self.events)]:
            if person and person != "opsbot" and person not in people:
                people.append(person)
        return tuple(people)

    def _role_holders(self) -> list[str]:
        """Everyone assigned a role, in the order assigned (a replaced lead worked it too), then the current ones."""
        assigned = [m[1] for e in self.events if e["kind"] == "assigned" and (m := ASSIGNED.match(e["text"]))]
        return [*assigned, *self.roles.values()]


Announce = Callable[[LiveIncident], None]  # what a change posts: outbox rows only, written in its transaction


def _now() -> datetime:
    return datetime.now(UTC)


def _iso(when: datetime) -> str:
    return when.isoformat(timespec="seconds")


class IncidentService:
    """Incident state in the store; every change is one transaction and lands in the timeline."""

    def __init__(
        self,
        store: Store,
        known_services: set[str],
        clock: Callable[[], datetime] = _now,
        default_env: str = "prod",
        environments: set[str] | None = None,
    ) -> None:
        self.store = store
        self.known_services = known_services
        self.clock = clock
        self.default_env = default_env  # services.yaml settings.incident_env
        self.environments = environments or set()  # the environments services.yaml names; empty: any name

    @classmethod
    def from_store(cls, store: Store) -> IncidentService:
        """Built as `opsbot index` left things: services known from services.yaml, the roster and past incidents,
        and the environments and settings.incident_env of services.yaml."""
        from bot.ops.deploys import DeployService  # deploys reach incidents through metrics: imported when used

        known = set(store.service_configs())
        known.update(s for e in store.load_experts() for s in e.services)
        known.update(s for i in store.load_incidents() for s in i.services)
        deploys = DeployService.from_store(store)
        envs = {env for config in deploys.services.values() for env in config.environments}
        return cls(store, known, default_env=deploys.settings.incident_env, environments=envs)

    def declare(
        self,
        title: str,
        declared_by: str,
        severity: int | None = None,
        services: list[str] | None = None,
        origin_channel: str = "",
        channel: str = "",
        env: str | None = None,
        announce: Announce | None = None,
        private: bool = False,
    ) -> LiveIncident:
        """Open an incident; ``announce`` runs inside the declaration's transaction (see ``resolve``).

        ``private``: its channel is private (see ``LiveIncident.private``); the Slack side asks Slack.
        """
        title = " ".join(scrub(title).split())
        if not title:
            raise InvalidRequest(
                "give the incident a title: /incident declare TITLE [--sev 1-4] [--service NAME] [--env NAME]."
            )
        severity = DEFAULT_SEVERITY if severity is None else check_severity(severity)
        env = self.check_env(env) if env else self.unnamed_env()
        services = self.check_services(services or [])
        now = self.clock()
        with self.store.transaction():
            incident_id = self._next_id(now.year)
            self.store.insert_live_incident(
                {
                    "id": incident_id,
                    "title": title,
                    "severity": severity,
                    "services": json.dumps(services),
                    "status": "open",
                    "declared_by": declared_by,
                    "declared_at": _iso(now),
                    "channel": channel or origin_channel,
                    "origin_channel": origin_channel,
                    "roles": json.dumps({"lead": declared_by}),
                    "resolved_at": "",
                    "resolution": "",
                    "env": env,
                    "root_cause": "",
                    "private": int(private),
                }
            )
            where = f" in {env}" if env else ""
            self.store.add_incident_event(
                incident_id, declared_by, "declared", f"Declared SEV{severity}{where}: {title}", _iso(now)
            )
            live = self.get(incident_id)
            if announce is not None:
                announce(live)
        return live

    def unnamed_env(self) -> str:
        """The environment of a declaration without --env: settings.incident_env, or none at all when no service
        has that environment (`opsbot check` reports a configured one), so an incident can always be declared."""
        if self.environments and self.default_env not in self.environments:
            return ""
        return self.default_env

    def check_env(self, env: str) -> str:
        """``env`` when services.yaml knows it (or names no environments); otherwise the ones it does know."""
        if not ENV_NAME.match(env) or (self.environments and env not in self.environments):
            known = ", ".join(sorted(self.environments)) or "a name such as prod or staging"
            raise InvalidRequest(f"unknown environment {env!r} for --env; use {known}.")
        return env

    def _live(self, row: dict, events: tuple | list) -> LiveIncident:
        return _live(row, events, self.unnamed_env())

    def _next_id(self, year: int) -> str:
        tails = (i.rsplit("-", 1)[1] for i in self.store.incident_ids_for_year(year))
        numbers = [int(t) for t in tails if t.isdigit()]  # file ids may be free-form (INC-2026-DB-1)
        return f"INC-{year}-{max(numbers, default=0) + 1:04d}"

    def set_channel(self, incident_id: str, channel: str) -> None:
        with self.store.transaction():
            self.store.update_live_incident(incident_id, channel=channel)

    def has_channel(self, channel: str) -> bool:
        """Whether ``channel`` belongs to an incident declared in Slack."""
        return self.store.live_incident_in_channel(channel) is not None

    def past_resolutions(self) -> dict[str, str]:
        """How each past incident of the knowledge directory was resolved, by id."""
        return {i.id: i.resolution for i in self.store.load_incidents()}

    def recent_deploys(self, incident: LiveIncident, hours: int) -> list[DeployRequest]:
        """Deploys and rollbacks of the incident's services in the ``hours`` before it was declared, newest first."""
        since = datetime.fromisoformat(incident.declared_at) - timedelta(hours=hours)
        return deploys_since(self.store, incident.services, since)

    def possible_cause(self, incident: LiveIncident, window_hours: int) -> Cause | None:
        """The deploy that most likely caused it (see ``possible_cause``)."""
        return possible_cause(incident, self.store, window_hours)

    def get(self, incident_id: str) -> LiveIncident:
        row = self.store.live_incident(incident_id)
        if row is None:
            past = next((i for i in self.store.load_incidents() if i.id == incident_id), None)
            if past is not None:  # said where it may be asked from: Slack and the command line alike
                raise NotFound(
                    f"{incident_id} is a past incident from the knowledge files ({past.path}), not one declared with "
                    "`/incident`: ask opsbot about it, or edit that file to change it."
                )
            raise NotFound(
                f"no incident {incident_id} was declared with `/incident`; `/incident list` (or `opsbot incidents "
                "list --all`) shows them."
            )
        return self._live(row, self.store.incident_events(incident_id))

    def find(self, incident_id: str | None, channel: str) -> LiveIncident:
        """The incident named, or the one whose channel this is (the open one, when there is one)."""
        if incident_id:
            incident_id = incident_id.strip().upper()
            if not INCIDENT_ID.match(incident_id):
                raise InvalidRequest(f"{incident_id!r} is not an incident id like INC-2026-0042.")
            return self.get(incident_id)
        # Without incident channels several incidents can share a channel: never guess between open ones.
        open_here = [r for r in self.store.live_incidents("open") if r["channel"] == channel]
        if len(open_here) > 1:
            ids = ", ".join(sorted(r["id"] for r in open_here))
            raise InvalidRequest(
                f"this channel has several open incidents ({ids}), so name one: for example "
                f"`/incident note {open_here[0]['id']} TEXT`."
            )
        row = open_here[0] if open_here else self.store.live_incident_in_channel(channel)
        if row is None:
            raise InvalidRequest(
                "this is not an incident channel, so name the incident: for example "
                "`/incident note INC-2026-0042 TEXT`. `/incident list` shows the open ones."
            )
        return self._live(row, self.store.incident_events(row["id"]))

    def unsettled_channels(self) -> list[str]:
        """Channels of incidents whose privacy is not known yet (declared before opsbot asked; private until then)."""
        return self.store.unsettled_incident_channels()

    def settle_privacy(self, channel: str, private: bool) -> list[str]:
        """Record what Slack said of ``channel``. When it is private, its incidents that an opsbot from before this
        question indexed leave the index (what `/ask`, `/experts` and every briefing answer all channels from), as
        a private incident resolved now is never indexed; their ids. One exported to a file since stays: the team
        chose to have it found."""
        with self.store.transaction():
            taken = self.store.learned_unsettled(channel) if private else []
            for incident_id in taken:
                self.store.delete_documents([SLACK_PREFIX + incident_id])
                self.store.forget_slack_incident(incident_id)
                self.store.unmark_incident_learned(incident_id)
            if taken:
                self.store.set_meta("index_version", uuid.uuid4().hex)  # a running bot reloads its index
            self.store.settle_incident_privacy(channel, private)
        if taken:
            log.info("incidents of a private channel taken out of the index channel=%s ids=%s", channel, taken)
        return taken

    def list_open(self) -> list[LiveIncident]:
        return [self._live(r, ()) for r in self.store.live_incidents("open")]

    def list_all(self) -> list[LiveIncident]:
        """Every incident declared in Slack, newest first, with its timeline."""
        return [self._live(r, self.store.incident_events(r["id"])) for r in self.store.live_incidents()]

    def _change(
        self,
        incident: LiveIncident,
        actor: str,
        kind: str,
        change: Callable[[LiveIncident], tuple[str, dict]],
        announce: Announce | None = None,
        message: str = "",
    ) -> LiveIncident:
        """Apply ``change`` to the current state (not the caller's possibly stale copy), in one transaction;
        ``announce`` runs inside it with the changed incident (see ``resolve``); ``message``: the Slack message the
        entry is (a pinned one)."""
        with self.store.transaction():
            current = self.get(incident.id)
            if not current.is_open:
                raise InvalidRequest(f"{incident.id} is {current.status}; it can't change any more.")
            text, fields = change(current)
            if fields:
                self.store.update_live_incident(incident.id, **fields)
            self.store.add_incident_event(incident.id, actor, kind, text, _iso(self.clock()), message)
            live = self.get(incident.id)
            if announce is not None:
                announce(live)
        return live

    def note(
        self, incident: LiveIncident, actor: str, text: str, kind: str = "note", announce: Announce | None = None
    ) -> LiveIncident:
        """A note in the timeline; ``kind`` "update" is a status update (`/incident update TEXT`)."""
        if not text.strip():
            what = "status update" if kind == "update" else "note"
            raise InvalidRequest(f"the {what} is empty: /incident {kind} TEXT.")
        return self._change(incident, actor, kind, lambda _: (scrub(text.strip()), {}), announce)

    def set_root_cause(
        self, incident: LiveIncident, actor: str, text: str, announce: Announce | None = None
    ) -> LiveIncident:
        """Record (or replace) what caused it: the write-up and the export use it."""
        text = " ".join(scrub(text).split())
        if not text:
            raise InvalidRequest("say what caused it: /incident rootcause TEXT.")
        change = lambda _: (f"Root cause: {text}", {"root_cause": text})  # noqa: E731
        return self._change(incident, actor, "root_cause", change, announce)

    def cancel(
        self, incident: LiveIncident, actor: str, reason: str = "", announce: Announce | None = None
    ) -> LiveIncident:
        """Declared by mistake: never searchable, never counted in a figure, kept with its timeline and audited;
        ``announce`` runs inside the transaction (see ``resolve``)."""
        reason = " ".join(scrub(reason).split())
        now = _iso(self.clock())
        with self.store.transaction():
            if not self.store.cancel_live_incident(incident.id):
                state = self.get(incident.id).status
                raise InvalidRequest(f"{incident.id} is already {state}, so it can't be cancelled.")
            text = f"Cancelled (declared by mistake){': ' + reason if reason else ''}"
            self.store.add_incident_event(incident.id, actor, "cancelled", text, now)
            self.store.audit(actor, "incident.cancelled", incident.id, reason=reason)
            live = self.get(incident.id)
            if announce is not None:
                announce(live)
        return live

    def pin(self, incident: LiveIncident, actor: str, text: str, message: str = "") -> bool:
        """Add the Slack message ``message`` (`channel:ts`) with its ``text`` to the timeline once: False when it is
        there already (two people reacted to it). Another message with the same words is another entry. The check
        and the write are one transaction, so two reactions at once add it once."""
        if not text.strip():
            raise InvalidRequest("that message has no text to add to the timeline.")
        stored = scrub(text.strip())[:MESSAGE_CHARS]
        with self.store.transaction():
            if message and self.store.has_pinned_message(incident.id, message, stored):
                return False
            self._change(incident, actor, "pinned", lambda _: (stored, {}), message=message)
        return True

    def record_action(self, incident: LiveIncident, actor: str, text: str) -> LiveIncident:
        """Something done for the incident outside its commands (a rollback requested from its message)."""
        return self._change(incident, actor, "action", lambda _: (scrub(text.strip())[:MESSAGE_CHARS], {}))

    def assign(
        self, incident: LiveIncident, actor: str, user: str, role: str, announce: Announce | None = None
    ) -> LiveIncident:
        if role not in ROLES:
            raise InvalidRequest(f"role {role!r} is not one of {', '.join(ROLES)}: /incident assign @user lead.")

        def change(current: LiveIncident) -> tuple[str, dict]:
            if current.roles.get(role) == user:  # `assign` then `role` for the same person: one timeline entry
                raise InvalidRequest(f"<@{user}> is already {role} of {current.id}; nothing changed.")
            roles = dict(current.roles) | {role: user}
            return f"<@{user}> is {role}", {"roles": json.dumps(roles)}  # as ASSIGNED reads it back

        return self._change(incident, actor, "assigned", change, announce)

    def set_severity(
        self, incident: LiveIncident, actor: str, severity: int | str, announce: Announce | None = None
    ) -> LiveIncident:
        value = check_severity(severity)

        def change(current: LiveIncident) -> tuple[str, dict]:
            if current.severity == value:
                raise InvalidRequest(f"{current.id} is already SEV{value}; nothing changed.")
            return f"Severity SEV{current.severity} → SEV{value}", {"severity": value}

        return self._change(incident, actor, "severity", change, announce)

    def check_services(self, services: list[str]) -> list[str]:
        """The services named, once each, refusing a name that is no service known from services.yaml, the roster or
        past incidents."""
        services = list(dict.fromkeys(services))
        for service in services:
            check_service(service)
            if service not in self.known_services:
                known = ", ".join(sorted(self.known_services)) or "none yet (add them to services.yaml)"
                raise InvalidRequest(f"unknown service {service!r}; known services: {known}.")
        return services

    def change_services(
        self,
        incident: LiveIncident,
        actor: str,
        add: list[str],
        remove: list[str] | None = None,
        announce: Announce | None = None,
    ) -> LiveIncident:
        """Services found to be involved after the declaration, or named by mistake (`/incident service NAME`,
        `--remove NAME`), changed in the timeline."""
        add, remove = self.check_services(add), list(dict.fromkeys(remove or []))
        for service in remove:  # one that is no longer known may still be taken out, but it must be a name
            check_service(service)
        if not add and not remove:
            raise InvalidRequest(f"name the service: {SERVICE_USAGE}.")
        if both := set(add) & set(remove):
            raise InvalidRequest(f"{', '.join(sorted(both))} is both added and removed: keep one. {SERVICE_USAGE}.")

        def change(current: LiveIncident) -> tuple[str, dict]:
            if missing := [s for s in remove if s not in current.services]:
                listed = ", ".join(current.services) or "none"
                raise InvalidRequest(
                    f"{current.id} does not list {', '.join(missing)} (it lists {listed}); nothing changed."
                )
            new = [s for s in add if s not in current.services]
            if not new and not remove:
                raise InvalidRequest(f"{current.id} already lists {', '.join(add)}; nothing changed.")
            said = [f"{', '.join(new)} added"] if new else []
            said += [f"{', '.join(remove)} removed"] if remove else []
            kept = [s for s in current.services if s not in remove] + new
            return f"Services: {'; '.join(said)}", {"services": json.dumps(kept)}

        return self._change(incident, actor, "services", change, announce)

    def resolve(
        self,
        incident: LiveIncident,
        actor: str,
        resolution: str,
        root_cause: str = "",
        announce: Announce | None = None,
    ) -> tuple[LiveIncident, Incident]:
        """Close the incident once (recording its root cause when given); returns it and its write-up.

        ``announce`` runs inside the resolve's transaction with the resolved incident: what it stores (the
        summary's outbox rows) is committed with the resolve or not at all. It must not wait for anything slow.
        """
        # A token pasted while working the incident must reach neither its rows, its write-up (searchable by all)
        # nor Slack: every free text is scrubbed on the way in, as deploy output and CI events are.
        resolution, root_cause = scrub(resolution.strip()), " ".join(scrub(root_cause).split())
        if not resolution:
            raise InvalidRequest("say how it was resolved: /incident resolve RESOLUTION [--root-cause TEXT].")
        now = _iso(self.clock())
        with self.store.transaction():
            if not self.store.resolve_live_incident(incident.id, now, resolution):
                state = self.get(incident.id).status
                raise InvalidRequest(f"{incident.id} is already {state}; nothing changed.")
            if root_cause and root_cause != self.get(incident.id).root_cause:  # the dialog fills in the one known
                self.store.update_live_incident(incident.id, root_cause=root_cause)
                self.store.add_incident_event(incident.id, actor, "root_cause", f"Root cause: {root_cause}", now)
            self.store.add_incident_event(incident.id, actor, "resolved", f"Resolved: {resolution}", now)
            live = self.get(incident.id)
            if announce is not None:
                announce(live)
        return live, to_incident(live)

    def unlearned(self) -> list[Incident]:
        """Write-ups of resolved incidents never indexed (indexing failed, or the process stopped between the
        resolve and its indexing), oldest first. One indexed once stays out, even after its exported file and so
        its past incident were removed on purpose."""
        rows = self.store.unlearned_incidents()
        return [to_incident(self._live(r, self.store.incident_events(r["id"]))) for r in rows]


def deploys_since(store: Store, services: tuple[str, ...] | list[str], since: datetime) -> list[DeployRequest]:
    """Deploys and rollbacks of ``services`` (from Slack and CI) finished or requested since ``since``, newest first."""
    found = [r for service in services for r in recent_requests(store, service, limit=500) if r.latest_at >= since]
    return sorted(found, key=lambda r: r.latest_at, reverse=True)


class Cause(NamedTuple):
    """The deploy an incident counts against, and how many minutes before the failure began it finished."""

    deploy: DeployRequest
    minutes: int
    since_alert: bool  # the failure began when its alert started firing, before the declaration


def possible_cause(incident: LiveIncident, store: Store, window_hours: int) -> Cause | None:
    """The deploy the incident counts against in the DORA figures; None when there is none (see
    ``possible_cause_at``). As those figures do, the failure began at the declaration, or when the alert it was
    declared from started firing when that was earlier, so the briefing and the figures name the same deploy."""
    declared = datetime.fromisoformat(incident.declared_at)
    fired = moment(store.alert_fired_at(incident.id))
    began = min(declared, fired) if fired is not None else declared
    found = possible_cause_at(store, incident.services, incident.env, began, window_hours)
    return None if found is None else Cause(found[0], found[1], began < declared)


def possible_cause_at(
    store: Store, services: tuple[str, ...] | list[str], env: str, at: datetime, window_hours: int
) -> tuple[DeployRequest, int] | None:
    """The deploy a failure that began at ``at`` (an incident's declaration, an alert's first firing) counts
    against (``blamed_deploy``: the last successful deploy of ``services`` in ``env``, within the failure
    window, not since replaced), with how many minutes before ``at`` it finished; None when there is none."""
    changes = finished_changes(store, env, at, since=at - timedelta(hours=window_hours))
    row = blamed_deploy(changes, services, at, timedelta(hours=window_hours))
    if row is None:
        return None
    with store.lock:
        deploy = DeployRequest.from_row({k: v for k, v in row.items() if k != "_finished"}, store.decisions(row["id"]))
    return deploy, round((at - row["_finished"]).total_seconds() / 60)


def check_severity(value: int | str) -> int:
    """1 to 4 from `2`, `sev2`, `SEV-2` or `Sev 2`; anything else (`-1`, `SEV0`, `high`) is refused."""
    found = SEVERITY.fullmatch(str(value).strip())
    # a few digits at most: Python refuses to read a number of thousands of digits (ValueError), 0042 is 42 anyway
    number = int(found.group(1)) if found and len(found.group(1)) <= SEVERITY_DIGITS else 0
    if not 1 <= number <= 4:
        shown = value if len(str(value)) <= SHOWN_VALUE else f"{str(value)[:SHOWN_VALUE]}…"
        raise InvalidRequest(f"severity {shown!r} must be 1 (worst) to 4.")
    return number


def _live(row: dict, events: tuple | list, default_env: str) -> LiveIncident:
    return LiveIncident(
        id=row["id"],
        title=row["title"],
        severity=row["severity"],
        services=tuple(json.loads(row["services"])),
        status=row["status"],
        declared_by=row["declared_by"],
        declared_at=row["declared_at"],
        channel=row["channel"],
        origin_channel=row["origin_channel"] or "",
        roles=json.loads(row["roles"] or "{}"),
        resolved_at=row["resolved_at"] or "",
        resolution=row["resolution"] or "",
        events=tuple(events),
        env=row["env"] or default_env,  # declared before incidents had an environment
        root_cause=row["root_cause"] or "",
        private=bool(row.get("private")),
    )
