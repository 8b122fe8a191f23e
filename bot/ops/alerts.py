"""Alerts from Alertmanager: routed to a service and a channel, recorded per alert group, idempotently.

``AlertService`` is the only writer of alert rows. Each delivery of a group (Alertmanager re-sends it at
every change and every repeat_interval) is compared with what is stored: the same status and the same alerts
in the same states change nothing; anything else is one transaction that records the new state and what
changed, and calls the announcer inside it, so what Slack shows is stored with the change or not at all.
Who may silence a group, and which Alertmanager opsbot may call for it, is decided here too.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from bot.alert_config import AlertSettings, ServiceAlerts, parse_alert_settings, parse_service_alerts
from bot.errors import InvalidRequest, NotFound, PermissionDenied
from bot.ops.alert_groups import (
    AlertAnnouncer,
    AlertGroup,
    AlertRecord,
    Change,
    difference,
    ended_row,
    group_from_rows,
    incident_severity,
    instance_row,
    kept_row,
    opening_note,
)
from bot.ops.alert_payload import Alert, Notification, group_id
from bot.ops.alert_routing import AlertRouting, Route
from bot.ops.alertmanager import AlertmanagerError, SilencePlan, count_firing, url_key
from bot.ops.deploys import DeployService
from bot.ops.incidents import IncidentService, LiveIncident, deploys_since, possible_cause_at
from bot.ops.requests import DeployRequest
from bot.store import Store

log = logging.getLogger(__name__)
REOPEN_AFTER = timedelta(hours=1)  # a group firing again later than this after it resolved gets a new message
# A firing of the very alerts just resolved (same fingerprints and startsAt) within this of receiving the resolve
# is a late copy: an HA pair's replicas each wait their peer_timeout (15 s by default) in turn before sending.
# Later, it is a real firing again: Prometheus keeps an alert's startsAt across a restart (its `for` state), and an
# alert that could not reach Alertmanager for a while was resolved by its endsAt while it kept firing.
STALE_WITHIN = timedelta(minutes=1)
SILENCE_FOR = timedelta(hours=1)
# A silence claimed and neither recorded nor released after this (the Alertmanager call's timeout is 10 s) was
# claimed by a process that stopped meanwhile: the next click may take it over, rather than wait out the hour.
PENDING_CLAIM = timedelta(minutes=1)
# Alertmanager sends no resolve for an alert that resolved while silenced, so opsbot asks it at the silence's end;
# for this long after, an Alertmanager that cannot be reached is asked again at each sweep, then given up on.
SILENCE_CHECK_FOR = timedelta(days=1)
# A firing group that no delivery has confirmed for this long is looked up in Alertmanager (then again after as
# long): its resolve may never come. Alertmanager forgets resolved alerts when it restarts, and gives up on a resolve
# that opsbot refused (a changed token) or could not take (down past Alertmanager's retries).
QUIET_FOR = timedelta(minutes=30)
# Found listing none of a quiet group's alerts, Alertmanager is asked again this much later, and the group resolved
# only if it still lists none: a restarted Alertmanager has no alerts until Prometheus sends them again (every minute
# or so), and a firing group shown resolved would be worse than one shown firing late.
MISSING_CONFIRM = timedelta(minutes=5)
RESOLVED_QUIETLY = (
    "Alertmanager no longer lists these alerts: they resolved, and the resolve never reached opsbot "
    "(found at {found:%H:%M} UTC, after {quiet} without news of them)"
)
RESOLVED_SILENCED = (
    "It resolved during the silence (Alertmanager sends no resolve for silenced alerts; found at the silence's end)"
)


def _now() -> datetime:
    return datetime.now(UTC)


def _quiet_text(quiet: timedelta) -> str:
    """How long nothing was heard of a group, in whole minutes or hours and minutes ("45 min", "3 h 05 min")."""
    minutes = max(int(quiet.total_seconds() // 60), 0)
    return f"{minutes} min" if minutes < 60 else f"{minutes // 60} h {minutes % 60:02d} min"


def _iso(when: datetime) -> str:
    return when.astimezone(UTC).isoformat(timespec="seconds")


class AlertService:
    """Alert groups in the store: recorded idempotently, silenced and escalated under the rules of services.yaml."""

    def __init__(
        self,
        store: Store,
        routing: AlertRouting,
        settings: AlertSettings,
        silencers: dict[str, set[str]] | Callable[[], dict[str, set[str]]],
        names: dict[str, str] | None = None,
        clock: Callable[[], datetime] = _now,
        env: str = "prod",
    ) -> None:
        self.store = store
        self.env = env  # the environment an alert's failure counts in (services.yaml settings.incident_env)
        self.routing = routing
        self.settings = settings
        # per service, who may silence its alerts ("" for alerts of no service); a callable is asked at every
        # silence, so someone whose `left:` date passes while opsbot runs loses the right at once
        self._silencers = silencers
        self.names = names or {}
        self.clock = clock
        # (group, silence, reason) of each silence end Alertmanager could not be asked about, logged once already
        self._unreached_said: set[tuple[str, str, str]] = set()

    @classmethod
    def from_store(
        cls, store: Store, deploys: DeployService, known: set[str], clock: Callable[[], datetime] = _now
    ) -> AlertService:
        """Built from services.yaml as `opsbot index` stored it. Who may silence a service's alerts is who may
        approve its deploys (any environment) and settings.alert_silencers, teams expanded as deploys do."""
        raw_settings = json.loads(store.get_meta("deploy_settings") or "null")
        try:
            settings = parse_alert_settings(raw_settings)
        except ValueError:  # reported by `opsbot index`; alerts still go to the services' channels
            settings = AlertSettings()
        matches: list[ServiceAlerts] = []
        channels: dict[str, str] = {}
        for name, entry in store.service_configs().items():
            try:
                alerts = parse_service_alerts(name, entry)
            except ValueError:
                alerts = None
            if alerts is not None:
                matches.append(alerts)
            channel = (alerts.channel if alerts else "") or str(entry.get("channel") or "")
            if channel:
                channels[name] = channel
        matches.sort(key=lambda m: (-len(m.match), m.service))
        routing = AlertRouting(tuple(matches), frozenset(known), channels, settings.channel)

        def silencers() -> dict[str, set[str]]:
            team = deploys.members(settings.silencers)
            allowed = {service: people | team for service, people in deploys.service_approvers().items()}
            allowed[""] = set(team)
            return allowed

        names = {e.id: e.name for e in store.load_experts()}
        return cls(store, routing, settings, silencers, names, clock, deploys.settings.incident_env)

    @property
    def silencers(self) -> dict[str, set[str]]:
        """Who may silence each service's alerts, as of now."""
        return self._silencers() if callable(self._silencers) else self._silencers

    # -- reading ------------------------------------------------------------------------------------------

    def get(self, group_id: str) -> AlertGroup:
        row = self.store.alert_group(group_id)
        if row is None:
            raise NotFound(f"no alert group {group_id!r}; `opsbot alerts` lists the known ones.")
        return group_from_rows(row, self.store.alert_instances(group_id), self.store.alert_events(group_id))

    def recent(self, limit: int = 200, status: str | None = None) -> list[AlertGroup]:
        """Alert groups, the latest change first, with their alerts and events."""
        return [
            group_from_rows(r, self.store.alert_instances(r["id"]), self.store.alert_events(r["id"]))
            for r in self.store.alert_groups(limit, status)
        ]

    def unbriefed(self) -> list[str]:
        """Firing groups whose briefing was never built (the process stopped first)."""
        return self.store.unbriefed_alert_groups()

    def recent_deploys(self, group: AlertGroup, hours: int) -> list[DeployRequest]:
        """The group's service's deploys in the ``hours`` before it started firing, newest first."""
        if not group.service:
            return []
        since = datetime.fromisoformat(group.started_at) - timedelta(hours=hours)
        return deploys_since(self.store, [group.service], since)

    def possible_cause(self, group: AlertGroup, window_hours: int) -> tuple[DeployRequest, int] | None:
        """The deploy its failure counts against (see possible_cause_at), from when it started firing."""
        if not group.service:
            return None
        started = datetime.fromisoformat(group.started_at)
        return possible_cause_at(self.store, (group.service,), self.env, started, window_hours)

    # -- recording deliveries --------------------------------------------------------------------------------

    def receive(self, notification: Notification, announcer: AlertAnnouncer | None = None) -> Change:
        """Record a delivery: ``unchanged`` when it holds nothing new (a redelivery or a plain repeat), else the
        change, announced in the same transaction. Raises NoChannel (nothing stored) when it cannot be shown."""
        route = self.routing.route(notification)
        now = self.clock()
        with self.store.transaction():
            group_id = self._group_id(notification)
            row = self.store.alert_group(group_id)
            if row is not None and row["digest"] == notification.digest:
                return Change("unchanged", self.get(group_id))
            before = group_from_rows(row, self.store.alert_instances(group_id), ()) if row else None
            if before is not None and _stale(before, notification, now):
                # An older notification of the firing that already resolved (the other HA replica, or a send
                # that was held up): the same alerts, started at the same time, and since ended. Not a new firing.
                log.info("alert group stale firing ignored id=%s", group_id)
                return Change("unchanged", self.get(group_id))
            kind = _kind(before, notification, now)
            if before is not None and kind == "changed" and _only_flushed(before, notification):
                # Alertmanager left out alerts that had already resolved (it flushes them from the group):
                # nothing started or ended, so nothing is said; the digest is kept so that repeats stay quiet.
                self.store.update_alert_group(group_id, digest=notification.digest, updated_at=_iso(now), missing_at="")
                return Change("unchanged", self.get(group_id))
            fields = _fields(notification, route, now)
            if before is None or kind == "opened":
                episode = before.episode + 1 if before else 1
                # A group firing again while its incident is open stays with it, however long it was quiet.
                kept = before.incident_id if before and self._incident_open(before.incident_id) else ""
                self._open(group_id, notification, fields, episode, before is None, now, kept)
                note = opening_note(notification)
                if kept:
                    note += f"; {kept} is still open: this firing stays with it"
            else:
                note = self._update(before, notification, fields, kind, now)
            self.store.add_alert_event(group_id, "alertmanager", kind, note, _iso(now))
            change = Change(kind, self.get(group_id), note)
            log.info(
                "alert group %s id=%s service=%s channel=%s firing=%d route=%r",
                kind,
                group_id,
                route.service or "-",
                route.channel,
                len(change.group.firing),
                route.why,
            )
            if announcer is not None:
                announcer.announce(change)
        return change

    def _group_id(self, n: Notification) -> str:
        """The group a delivery belongs to: its groupKey from its Alertmanager. A group recorded under its groupKey
        alone (before the sender counted) keeps that id while the same Alertmanager sends it."""
        legacy = group_id(n.group_key)
        row = self.store.alert_group(legacy)
        if row is not None and url_key(row["external_url"] or "") == url_key(n.external_url):
            return legacy
        return n.group_id

    def _open(
        self, group_id: str, n: Notification, fields: dict, episode: int, first: bool, now: datetime, incident: str = ""
    ) -> None:
        """A new message: the group seen for the first time, or firing again long after it resolved (``incident``:
        the open incident it stays with)."""
        fields |= {
            "episode": episode,
            "started_at": _iso(_earliest(n.alerts)),
            "resolved_at": "" if n.status == "firing" else _iso(_latest_end(n.alerts, now)),
            "resolve_received_at": "" if n.status == "firing" else _iso(now),
            "message_channel": "",
            "message_ts": "",
            "briefing": "",
            "incident_id": incident,
            "silence_id": "",
            "silenced_by": "",
            "silenced_until": "",
        }
        if first:
            self.store.insert_alert_group(
                {"id": group_id, "group_key": n.group_key, "received_at": _iso(now), **fields}
            )
        else:
            self.store.update_alert_group(group_id, **fields)
            self.store.clear_alert_instances(group_id)
        self.store.replace_alert_instances(group_id, [instance_row(a) for a in n.alerts])

    def _update(self, before: AlertGroup, n: Notification, fields: dict, kind: str, now: datetime) -> str:
        """The same message: alerts added or resolved, the group resolved, or firing again soon after."""
        incoming = {a.fingerprint for a in n.alerts}
        # An alert Alertmanager stopped sending has ended (it resolved and was flushed from the group), unless
        # Alertmanager cut the list short (max_alerts, truncatedAlerts): then it may be firing past the cut.
        gone = [a for a in before.alerts if a.fingerprint not in incoming and a.firing]
        cut: list[AlertRecord] = []
        if n.truncated and n.status == "firing":
            cut, gone = gone, []
        rows = [instance_row(a) for a in n.alerts]
        rows += [ended_row(a, now) for a in gone] + [kept_row(a) for a in cut]
        firing_starts = [a.starts_at for a in n.alerts if a.firing]
        started = before.started_at
        if kind == "refired" or not started:
            started = _iso(min(firing_starts)) if firing_starts else started
        elif firing_starts:
            started = min(started, _iso(min(firing_starts)))
        fields |= {"started_at": started}
        if n.status == "resolved":
            kept = kind == "changed" and before.resolved_at
            fields["resolved_at"] = before.resolved_at if kept else _iso(_latest_end(n.alerts, now))
            fields["resolve_received_at"] = (before.resolve_received_at if kept else "") or _iso(now)
        else:
            fields["resolved_at"] = fields["resolve_received_at"] = ""
        note = difference(before, n, gone)
        if kind == "refired" and before.status == "firing":
            note = f"Firing again (its resolve never reached opsbot); {note}"
        if kind == "refired" and before.incident_id and not self._incident_open(before.incident_id):
            # An incident is declared once per firing: this firing starts after that one was closed.
            fields["incident_id"] = ""
            note += f"; {before.incident_id} is closed: Declare incident declares a new one"
        self.store.update_alert_group(before.id, **fields)
        self.store.replace_alert_instances(before.id, rows)
        return note

    def _incident_open(self, incident_id: str) -> bool:
        row = self.store.live_incident(incident_id)
        return row is not None and row["status"] == "open"

    # -- what people do with it ---------------------------------------------------------------------------------

    def set_message(self, group_id: str, episode: int, channel: str, ts: str) -> None:
        """Where the episode's message was posted (an after-delivery hook): later edits need its ts."""
        with self.store.transaction():
            row = self.store.alert_group(group_id)
            if row is not None and row["episode"] == episode:
                self.store.update_alert_group(group_id, message_channel=channel, message_ts=ts)

    def set_briefing(self, group_id: str, episode: int, briefing: str, announcer: AlertAnnouncer | None) -> bool:
        """Keep the briefing built for ``episode`` and show it; False when the group moved on to another episode."""
        with self.store.transaction():
            row = self.store.alert_group(group_id)
            if row is None or row["episode"] != episode or row["briefing"]:
                return False
            self.store.update_alert_group(group_id, briefing=briefing)
            if announcer is not None:
                announcer.announce(Change("briefed", self.get(group_id)))
        return True

    def plan_silence(self, group_id: str, user: str) -> SilencePlan:
        """The silence ``user`` asks for, if they may and the group's Alertmanager is one opsbot may call.

        It matches the group's labels and the labels that routed it to its service, so a group made by
        `group_by: [alertname]` is not silenced for every service with that alertname. A group that also
        holds alerts of services the user may not silence is refused: firing ones, as a silence only mutes those (one
        of another service that has resolved is no reason to refuse for the rest of the firing)."""
        group = self.get(group_id)
        silencers = self.silencers
        spanned = {group.service}
        for alert in group.firing:
            spanned.add(self.routing.named_by(alert.labels)[0] or group.service)
        for service in [group.service, *sorted(spanned - {group.service})]:
            if user not in silencers.get(service, set()) | silencers.get("", set()):
                self._refuse_silence(group, service, silencers)
        url = self.allowed_url(group.external_url)
        matchers = self._silence_matchers(group)
        if not matchers:
            raise InvalidRequest(
                "the group has no labels in common to silence it by; silence it in Alertmanager instead."
            )
        missed = [a for a in group.alerts if a.firing and any(a.labels.get(k) != v for k, v in matchers.items())]
        if missed:
            # Without the label that routes the group, the silence would reach other services' alerts of the same
            # name; with it, these alerts of the group would keep notifying while Slack shows the group silenced.
            raise InvalidRequest(
                f"{len(missed)} alert(s) of this group lack the labels that tie it to {group.service or 'a service'} "
                f"({', '.join(f'{k}={v}' for k, v in sorted(matchers.items()))}), so no silence from Slack covers "
                "the group alone: silence it in Alertmanager, or label those alerts with their service."
            )
        now = self.clock()
        who = self.names.get(user, "")
        return SilencePlan(
            url=url,
            matchers=tuple(sorted(matchers.items())),
            starts_at=now,
            ends_at=now + SILENCE_FOR,
            created_by=f"{who} ({user})" if who else user,
            comment=f"Silenced from Slack through opsbot: {group.title}",
        )

    def _silence_matchers(self, group: AlertGroup) -> dict[str, str]:
        """The labels a silence of the group matches: its own, and those that route it to its service."""
        matchers = dict(group.group_labels or group.common_labels)
        return matchers | self._routed_by(group) if matchers else {}

    def _routed_by(self, group: AlertGroup) -> dict[str, str]:
        """The labels that route the group to its service: its own, else those of its first firing alert."""
        if not group.service:
            return {}
        label_sets = [group.group_labels | group.common_labels]
        label_sets += [a.labels for a in sorted(group.alerts, key=lambda a: not a.firing)]
        for labels in label_sets:
            service, _, naming = self.routing.named_by(labels)
            if service == group.service:
                return naming
        return {}

    def _refuse_silence(self, group: AlertGroup, service: str, silencers: dict[str, set[str]]) -> None:
        what = f"alerts of {service}" if service else "alerts of no known service"
        # silencers[""] holds settings.alert_silencers: an alert of no service has no approvers to name.
        who = [f"{service}'s approvers"] if service and silencers.get(service) else []
        if self.settings.silencers:
            who.append(f"{', '.join(self.settings.silencers)} (settings.alert_silencers)")
        if not who:
            raise PermissionDenied(
                f"nobody may silence {what} from Slack: add a team to settings.alert_silencers in services.yaml."
            )
        if service != group.service:
            raise PermissionDenied(
                f"this group holds alerts of {service} too, and only {' or '.join(who)} may silence {what}: "
                f"ask one of them, or have Alertmanager group by service (group_by: [alertname, service])."
            )
        raise PermissionDenied(f"only {' or '.join(who)} may silence {what}.")

    def allowed_url(self, external_url: str) -> str:
        """The configured Alertmanager that ``external_url`` names; InvalidRequest when none does.

        The payload's externalURL is only a name: opsbot calls the URL configured in settings.alertmanager_urls
        that equals it, never a URL that arrived in a request.
        """
        if not self.settings.alertmanager_urls:
            raise InvalidRequest(
                "silencing from Slack is off: list your Alertmanager in settings.alertmanager_urls in services.yaml "
                f"(for this alert: {external_url or 'its externalURL'}) and run `opsbot index`."
            )
        wanted = url_key(external_url)
        for url in self.settings.alertmanager_urls:
            if wanted and url_key(url) == wanted:
                return url
        raise InvalidRequest(
            f"this alert came from {external_url or 'an Alertmanager without an externalURL'}, which is not in "
            "settings.alertmanager_urls; add it there (and run `opsbot index`) to silence its alerts from Slack."
        )

    def check_episode(self, group: AlertGroup, episode: int | None) -> None:
        """InvalidRequest when a button of an earlier firing's message was clicked: the group fired again since with
        a new message, and the click must not act on that firing. ``episode`` None: a button posted before buttons
        carried it, which acts on the current firing as it always did."""
        if episode is None or episode == group.episode:
            return
        if not 1 <= episode < group.episode:
            raise InvalidRequest(
                "that button is not one opsbot posted for this alert: use the buttons of its latest message."
            )
        resolved = _resolved_at(group.events, episode)
        when = f", resolved at {datetime.fromisoformat(resolved):%a %d %b %H:%M} UTC" if resolved else ""
        again = datetime.fromisoformat(group.started_at) if group.started_at else None
        since = f" at {again:%a %d %b %H:%M} UTC" if again else ""
        raise InvalidRequest(
            f"this message is of an earlier firing of {group.alertname}{when}; it fired again{since} with a new "
            "message: use the newer message."
        )

    def silence_labels(self, group: AlertGroup) -> dict[str, str]:
        """The labels a silence of ``group`` from Slack matches, as the Silence button's confirmation shows them."""
        return self._silence_matchers(group)

    def can_silence_here(self, group: AlertGroup) -> bool:
        """Whether a Silence button can work for this group (its Alertmanager is allowed)."""
        try:
            self.allowed_url(group.external_url)
        except InvalidRequest:
            return False
        return True

    def claim_silence(self, group_id: str, user: str, until: datetime, episode: int | None = None) -> None:
        """Mark the group silenced by ``user`` until ``until`` before Alertmanager is called, so that two clicks
        (or two people) make one silence; InvalidRequest when it is silenced, or being silenced, already, or when
        ``episode`` is an earlier firing's (see check_episode)."""
        with self.store.transaction():
            group = self.get(group_id)
            self.check_episode(group, episode)
            if group.status != "firing":
                raise InvalidRequest("this alert is resolved; there is nothing to silence.")
            if group.silenced_until and datetime.fromisoformat(group.silenced_until) > self.clock():
                ends = datetime.fromisoformat(group.silenced_until)
                claimed_at = ends - SILENCE_FOR
                if not group.silence_id and self.clock() - claimed_at > PENDING_CLAIM:
                    # claimed, and never recorded nor released: its process stopped while Alertmanager was called
                    self.store.update_alert_group(group_id, silenced_by=user, silenced_until=_iso(until))
                    return
                by = self.names.get(group.silenced_by, group.silenced_by)
                raise InvalidRequest(
                    f"this alert is already silenced until {ends:%H:%M} UTC (by {by}); "
                    "to change that silence, edit it in Alertmanager."
                )
            self.store.update_alert_group(group_id, silence_id="", silenced_by=user, silenced_until=_iso(until))

    def release_silence(self, group_id: str, user: str, until: datetime) -> None:
        """Drop ``user``'s claim when Alertmanager did not create the silence, so the button can be tried again."""
        with self.store.transaction():
            group = self.get(group_id)
            if (group.silence_id, group.silenced_by, group.silenced_until) == ("", user, _iso(until)):
                self.store.update_alert_group(group_id, silenced_by="", silenced_until="")

    def record_silence(
        self, group_id: str, user: str, silence_id: str, until: datetime, announcer: AlertAnnouncer | None
    ) -> AlertGroup:
        with self.store.transaction():
            self.store.update_alert_group(group_id, silence_id=silence_id, silenced_by=user, silenced_until=_iso(until))
            note = f"Silenced for 1 h by {self.names.get(user, user)} until {until:%H:%M} UTC (silence {silence_id})"
            self.store.add_alert_event(group_id, user, "silenced", note, _iso(self.clock()))
            change = Change("silenced", self.get(group_id), note, user)
            if announcer is not None:
                announcer.announce(change)
        return change.group

    def ended_silences(self) -> list[str]:
        """Firing groups whose silence from opsbot has ended and whose alerts were not looked up since."""
        return self.store.silence_ended_alert_groups(_iso(self.clock()))

    def check_silence_end(
        self,
        group_id: str,
        announcer: AlertAnnouncer | None,
        count: Callable[[str, tuple[tuple[str, str], ...]], int] = count_firing,
    ) -> str:
        """Ask the group's Alertmanager, once its silence ended, whether its alerts still fire: Alertmanager never
        sends the resolve of a silenced alert. None firing: the group is resolved as a resolve would, and said so.
        What happened: "resolved", "firing" (Alertmanager notifies those itself), "retry" (not reached: the next
        sweep asks again), "unknown" (given up on, said in the thread), or "" (the group moved on meanwhile)."""
        group = self.get(group_id)
        seen = (group.episode, group.silence_id, group.silenced_until)
        ended = datetime.fromisoformat(group.silenced_until)
        matchers = tuple(sorted(self._silence_matchers(group).items()))
        firing, problem = 0, ""
        try:
            if not matchers:
                raise InvalidRequest("the group has no labels to look its alerts up by")
            firing = count(self.allowed_url(group.external_url), matchers)
        except AlertmanagerError as exc:
            problem = str(exc)
            if self.clock() - ended < SILENCE_CHECK_FOR:
                # Asked again at every sweep (30 s) for a day: said once per group and reason, not 2,880 times
                said = (group_id, group.silence_id, problem)
                if said not in self._unreached_said:
                    self._unreached_said.add(said)
                    log.warning(
                        "alert silence end not checked group=%s silence=%s: %s (asked again every sweep, said once)",
                        group_id,
                        group.silence_id,
                        exc,
                    )
                return "retry"
        except InvalidRequest as exc:  # settings.alertmanager_urls no longer lists it: asking again will not help
            problem = str(exc)
        with self.store.transaction():
            group = self.get(group_id)
            if group.status != "firing" or (group.episode, group.silence_id, group.silenced_until) != seen:
                return ""  # a delivery, or another process's sweep, got there first
            now = self.clock()
            if problem:
                note = (
                    f"The silence ended at {ended:%H:%M} UTC, and whether these alerts still fire is not known: "
                    f"{problem}. Alertmanager sends no resolve for silenced alerts, so this message may show them "
                    "firing after they resolved; check them in Alertmanager."
                )
                self.store.update_alert_group(group_id, silence_id="", updated_at=_iso(now))
                kind = "unknown"
            elif firing:
                # still firing: Alertmanager notifies them again itself now that they are no longer silenced
                self.store.update_alert_group(group_id, silence_id="")
                log.info("alert silence ended, still firing group=%s firing=%d", group_id, firing)
                return "firing"
            else:
                # when it resolved is not known: by the silence's end at the latest
                resolved = max(ended, datetime.fromisoformat(group.started_at)) if group.started_at else ended
                self._resolve_unsent(group, resolved, now, silence_id="")
                note, kind = RESOLVED_SILENCED, "resolved"
            self.store.add_alert_event(group_id, "alertmanager", kind, note, _iso(now))
            change = Change(kind, self.get(group_id), note)
            log.info("alert silence ended group=%s outcome=%s", group_id, kind)
            if announcer is not None:
                announcer.announce(change)
        return kind

    def _quiet_state(self, group_id: str) -> tuple[AlertGroup, tuple[object, ...]]:
        """The group, and what check_quiet compares before and after asking Alertmanager: any change means that a
        delivery, a silence or another process's check came meanwhile. Ends with when it was checked, found missing."""
        group = self.get(group_id)
        row = self.store.alert_group(group_id) or {}
        state = (group.episode, group.status, group.updated_at, group.silence_id)
        return group, (*state, row.get("checked_at", ""), row.get("missing_at", ""))

    def _resolve_unsent(self, group: AlertGroup, resolved: datetime, now: datetime, **fields: str) -> None:
        """Resolve a group whose resolve Alertmanager never sent (found ``now``): its alerts ended by ``resolved``."""
        self.store.replace_alert_instances(group.id, [ended_row(a, resolved) for a in group.alerts if a.firing])
        self.store.update_alert_group(
            group.id,
            status="resolved",
            resolved_at=_iso(resolved),
            resolve_received_at=_iso(now),
            truncated=0,
            digest="",  # a later delivery of the same alerts is news, not a repeat
            updated_at=_iso(now),
            **fields,
        )

    def quiet_groups(self) -> list[str]:
        """Firing groups nothing has confirmed for QUIET_FOR (see check_quiet)."""
        now = self.clock()
        return self.store.quiet_firing_alert_groups(_iso(now - QUIET_FOR), _iso(now - MISSING_CONFIRM))

    def check_quiet(
        self,
        group_id: str,
        announcer: AlertAnnouncer | None,
        count: Callable[[str, tuple[tuple[str, str], ...]], int] = count_firing,
    ) -> str:
        """Ask Alertmanager whether a firing group that nothing has confirmed for a while still fires. None of its
        alerts listed twice, MISSING_CONFIRM apart: the group is resolved, and the thread says how opsbot knows. What
        happened: "resolved", "missing" (none listed: asked again after MISSING_CONFIRM), "firing" (asked again after
        QUIET_FOR), "retry" (not reached, or not allowed to be asked: logged, asked again after QUIET_FOR, nothing said
        in Slack, as the message shows what opsbot last heard), or "" (the group moved on meanwhile). Only the group's
        own labels are asked by: every alert of the group has them."""
        group, seen = self._quiet_state(group_id)
        matchers = tuple(sorted(group.group_labels.items()))
        firing, problem = 0, ""
        try:
            if not matchers:
                raise InvalidRequest("the group has no labels to look its alerts up by")
            firing = count(self.allowed_url(group.external_url), matchers)
        except (AlertmanagerError, InvalidRequest) as exc:
            problem = str(exc)
        with self.store.transaction():
            group, now_seen = self._quiet_state(group_id)
            now = self.clock()
            if now_seen != seen:
                return ""  # a delivery, a silence, or another process's check got there first
            if problem or firing:
                self.store.update_alert_group(group_id, checked_at=_iso(now), missing_at="")
                if problem:
                    log.warning("alert group not checked group=%s: %s", group_id, problem)
                    return "retry"
                log.info("alert group quiet but still firing group=%s firing=%d", group_id, firing)
                return "firing"
            checked_at, missing_at = seen[-2:]
            last = max(group.updated_at, checked_at)
            # Not listed since the last news of them, found a while ago but not too long (the job may have stopped):
            # resolved. Else this is the first look that found none: look again in a few minutes.
            since = datetime.fromisoformat(missing_at) if missing_at > last else None
            if since is None or not MISSING_CONFIRM <= now - since <= QUIET_FOR:
                self.store.update_alert_group(group_id, missing_at=_iso(now))
                log.info("alert group quiet and not listed by Alertmanager, asked again shortly group=%s", group_id)
                return "missing"
            quiet = now - datetime.fromisoformat(last) if last else QUIET_FOR
            self._resolve_unsent(group, now, now, checked_at=_iso(now), missing_at="")  # when is not known: by now
            note = RESOLVED_QUIETLY.format(found=now.astimezone(UTC), quiet=_quiet_text(quiet))
            self.store.add_alert_event(group_id, "alertmanager", "resolved", note, _iso(now))
            change = Change("resolved", self.get(group_id), note)
            log.info("alert group resolved, its resolve never came group=%s", group_id)
            if announcer is not None:
                announcer.announce(change)
        return "resolved"

    def declare_incident(
        self,
        group_id: str,
        user: str,
        incidents: IncidentService,
        announcer: AlertAnnouncer | None,
        private: bool = False,
        episode: int | None = None,
    ) -> tuple[LiveIncident, bool]:
        """An incident from the group (title, severity and service from the alert), once per episode: the
        incident and True, or the one declared before and False. ``private``: the channel of the alert's message
        is private, so the incident is (``LiveIncident.private``). ``episode``: the firing whose message was
        clicked (see check_episode)."""
        with self.store.transaction():
            group = self.get(group_id)
            self.check_episode(group, episode)
            if group.incident_id and incidents.get(group.incident_id).status == "cancelled":
                # declared by mistake (a cancel freed the group; this covers a cancel from before that did not)
                self.store.update_alert_group(group_id, incident_id="")
                group = self.get(group_id)
            if group.incident_id:
                return incidents.get(group.incident_id), False
            services = [group.service] if group.service in incidents.known_services else []
            where = group.message_channel or group.channel
            incident = incidents.declare(
                group.title, user, incident_severity(group.severity), services, where, private=private
            )
            now = _iso(self.clock())
            self.store.link_alert_incident(group_id, incident.id, group.service, group.started_at, now)
            note = f"{incident.id} declared by {self.names.get(user, user)} (SEV{incident.severity})"
            self.store.add_alert_event(group_id, user, "incident", note, now)
            if announcer is not None:
                announcer.announce(Change("incident", self.get(group_id), note, user))
        return incident, True

    def incident_cancelled(self, incident_id: str, user: str, announcer: AlertAnnouncer | None) -> list[AlertGroup]:
        """An incident declared from alerts was cancelled (declared by mistake): its groups are free again, so their
        messages offer Declare incident once more; said in their threads, in the same transaction (the cancel's,
        when called inside it). The groups freed."""
        freed: list[AlertGroup] = []
        with self.store.transaction():
            for group_id in self.store.alert_groups_of_incident(incident_id):
                self.store.update_alert_group(group_id, incident_id="")
                note = f"{incident_id} was cancelled (declared by mistake): Declare incident declares a new one"
                self.store.add_alert_event(group_id, user, "incident", note, _iso(self.clock()))
                change = Change("incident", self.get(group_id), note, user)
                if announcer is not None:
                    announcer.announce(change)
                freed.append(change.group)
        return freed

    def record_action(self, group_id: str, user: str, text: str, announcer: AlertAnnouncer | None) -> None:
        """Something done from the group's message (a rollback requested), in its timeline and thread."""
        with self.store.transaction():
            self.store.add_alert_event(group_id, user, "action", text[:2000], _iso(self.clock()))
            if announcer is not None:
                announcer.announce(Change("action", self.get(group_id), text[:2000], user))


# -- helpers -------------------------------------------------------------------------------------------------


def _only_flushed(before: AlertGroup, n: Notification) -> bool:
    """Whether ``n`` differs from what was shown only by leaving out alerts that were already resolved (a digest
    stored before it counted the alerts left out by max_alerts is one too)."""
    shown = {a.fingerprint: a.firing for a in before.alerts}
    incoming = {a.fingerprint for a in n.alerts}
    same = all(shown.get(a.fingerprint) == a.firing for a in n.alerts)
    # one left out of a list cut short (truncatedAlerts) may still be firing: its absence says nothing
    ended = not (n.truncated and n.status == "firing") and any(
        a.firing for a in before.alerts if a.fingerprint not in incoming
    )
    return n.status == before.status and same and not ended and n.truncated == before.truncated


def _resolved_at(events: tuple[dict, ...], episode: int) -> str:
    """When opsbot last heard ``episode`` resolve, from the group's events (each episode starts with an "opened"
    one); "" when it never did (its resolve was lost)."""
    opened, resolved = 0, ""
    for event in events:
        if event["kind"] == "opened":
            opened += 1
            if opened > episode:
                break
        elif event["kind"] == "resolved" and opened == episode:
            resolved = event["at"]
    return resolved


def _stale(before: AlertGroup, n: Notification, now: datetime) -> bool:
    """Whether ``n`` is a late copy of what came before the resolve: within STALE_WITHIN of receiving the resolve
    (not of the alerts' endsAt: Alertmanager sends a resolve up to group_interval after it), it fires only alerts
    already stored as resolved (same fingerprint and startsAt, ended at or after that start)."""
    # a group resolved before opsbot recorded when the resolve arrived has its endsAt only
    received = before.resolve_received_at or before.resolved_at
    if before.status != "resolved" or n.status != "firing" or not received:
        return False
    if now - datetime.fromisoformat(received) > STALE_WITHIN:
        return False
    ended = {
        a.fingerprint: (datetime.fromisoformat(a.starts_at), datetime.fromisoformat(a.ends_at))
        for a in before.alerts
        if not a.firing and a.starts_at and a.ends_at
    }
    # stored to the second (instance_row): compared to the second
    starts = [(a.fingerprint, a.starts_at.replace(microsecond=0)) for a in n.alerts if a.firing]
    return bool(starts) and all(f in ended and ended[f][0] == start and ended[f][1] >= start for f, start in starts)


def _kind(before: AlertGroup | None, n: Notification, now: datetime) -> str:
    if before is None:
        return "opened"
    if before.status == "resolved" and n.status == "firing":
        ended = datetime.fromisoformat(before.resolved_at) if before.resolved_at else now
        return "refired" if now - ended <= REOPEN_AFTER else "opened"
    if before.status == "firing" and n.status == "resolved":
        return "resolved"
    if before.status == "firing" and n.status == "firing" and _restarted(before, n):
        # It resolved and fired again, and opsbot never heard the resolve: as after one it heard, from when it last
        # heard the group fire to the new start.
        began = min(a.starts_at for a in n.alerts if a.firing)
        last = datetime.fromisoformat(before.updated_at) if before.updated_at else now
        return "refired" if began - last <= REOPEN_AFTER else "opened"
    return "changed"


def _restarted(before: AlertGroup, n: Notification) -> bool:
    """Whether every firing alert of ``n`` that was firing before started again since (a later startsAt than the
    one stored: Alertmanager keeps an alert's start while it fires), and there is one."""
    stored = {a.fingerprint: a.starts_at for a in before.alerts if a.firing}
    known = [a for a in n.alerts if a.firing and a.fingerprint in stored]
    # stored to the second, as the digest has them
    later = [a.starts_at.replace(microsecond=0) > datetime.fromisoformat(stored[a.fingerprint]) for a in known]
    return bool(known) and all(later)


def _fields(n: Notification, route: Route, now: datetime) -> dict:
    labels = n.group_labels | n.common_labels
    first = next((a for a in n.alerts if a.firing), n.alerts[0])
    return {
        "status": n.status,
        "service": route.service,
        "channel": route.channel,
        # a blank alertname is as good as none: it would title an incident declared from the group with nothing
        "alertname": labels.get("alertname", "").strip() or first.labels.get("alertname", "").strip() or "alert",
        "severity": labels.get("severity") or first.labels.get("severity", ""),
        "receiver": n.receiver,
        "external_url": n.external_url,
        "group_labels": json.dumps(n.group_labels, sort_keys=True),
        "common_labels": json.dumps(n.common_labels, sort_keys=True),
        "common_annotations": json.dumps(n.common_annotations, sort_keys=True),
        "digest": n.digest,
        "truncated": n.truncated,
        "updated_at": _iso(now),
        "missing_at": "",  # Alertmanager sent it: it has the group (see check_quiet)
    }


def _earliest(alerts: tuple[Alert, ...]) -> datetime:
    firing = [a.starts_at for a in alerts if a.firing]
    return min(firing or [a.starts_at for a in alerts])


def _latest_end(alerts: tuple[Alert, ...], now: datetime) -> datetime:
    ends = [a.ends_at for a in alerts if a.ends_at is not None and not a.firing]
    return min(max(ends), now) if ends else now
