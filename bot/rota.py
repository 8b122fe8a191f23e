"""On-call rotations: read from experts.yaml, and who is on call at a given time, and who is next.

A rotation is weekly: the members take turns in the order listed, each from one handoff (a weekday
and a local time) to the next, starting with the first member on the rotation's ``start`` day.
Overrides (someone covering from a start to an end) take precedence; a later override wins over an
earlier one where they overlap.
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from bot.errors import InvalidRequest
from bot.models import Expert, Override, Rotation
from bot.text import service_name_problem  # the one rule for service names
from bot.yaml_lines import real_date_problem

DAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
HANDOFF = re.compile(r"^\s*([A-Za-z]+)\s+([01]?\d|2[0-3]):([0-5]\d)\s*$")  # 9:00 is 09:00
ROTATION_FIELDS = ("members", "handoff", "timezone", "start", "services", "overrides")
OVERRIDE_FIELDS = ("person", "start", "end")
WEEK = timedelta(days=7)


class RotaProblem(ValueError):
    """One wrong key under ``rotations:``; ``key`` is its path, such as ``rotations.platform.members[2]``."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key
        self.message = message


YEARS = (1970, 9000)  # a rota's dates: weeks are added to them, so the calendar's last years would overflow


@dataclass(frozen=True)
class Shift:
    """One person on call for a team from ``start`` until ``end``."""

    team: str
    person: str
    start: datetime
    end: datetime
    override: bool = False  # covering for the rota


@dataclass(frozen=True)
class OnCall:
    """Who is on call for a team now, and who takes over next (None when the rota has not started or ended)."""

    team: str
    now: Shift | None
    next: Shift | None
    timezone: str


def parse_rotations(data: Any, experts: list[Expert]) -> tuple[list[Rotation], list[str], list[RotaProblem]]:
    """The ``rotations:`` mapping of experts.yaml (team name -> rota), the teams whose rota cannot be read at all, and
    the problems. A bad member, override or optional field is reported and left out, and its rota still loads: one
    typo must not take the whole team off call."""
    if data is None:
        return [], [], []
    if not isinstance(data, dict):
        return [], [], [RotaProblem("rotations", "must map team names to their rota (members:, handoff:, start: ...)")]
    teams = sorted({e.team for e in experts})
    people = {e.id: e for e in experts}
    rotations: list[Rotation] = []
    unread: list[str] = []
    problems: list[RotaProblem] = []
    for team, entry in data.items():
        notes: list[RotaProblem] = []  # reported, and the rota still loads
        try:
            rotations.append(_rotation(str(team), entry, teams, people, notes))
        except RotaProblem as exc:
            unread.append(str(team))
            problems.append(exc)
        else:
            problems.extend(notes)
    return rotations, unread, problems


def _rotation(team: str, entry: Any, teams: list[str], people: dict[str, Expert], notes: list[RotaProblem]) -> Rotation:
    key = f"rotations.{team}"
    if team not in teams:
        shown = ", ".join(teams) or "none yet"
        raise RotaProblem(key, f"no one on the roster is in team {team!r}; teams on the roster: {shown}")
    if not isinstance(entry, dict):
        raise RotaProblem(key, "must be a mapping with members:, handoff:, timezone: and start:")
    for name in entry:
        if name not in ROTATION_FIELDS:
            notes.append(RotaProblem(f"{key}.{name}", _unknown_field(name, ROTATION_FIELDS, "a rota")))
    ids = _members(f"{key}.members", entry.get("members"), people, notes)
    handoff = str(entry.get("handoff") or "")
    day, handoff_time = _read_handoff(handoff)
    if day is None:
        raise RotaProblem(
            f"{key}.handoff",
            f"{handoff!r} must be a weekday and a 24-hour time, hours and minutes, for example handoff: monday 09:00",
        )
    tz = str(entry.get("timezone") or "UTC")
    try:
        zone = ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError, OSError):  # OSError: a region folder ("Europe") is no zone
        raise RotaProblem(f"{key}.timezone", f"{tz!r} is not an IANA time zone such as Europe/London") from None
    start = _date(f"{key}.start", entry.get("start"))
    if start.weekday() != day:
        raise RotaProblem(
            f"{key}.start",
            f"{start.isoformat()} is a {DAYS[start.weekday()]}, but shifts are handed over on {DAYS[day]}: "
            "give the handoff day on which the first member's first shift begins",
        )
    services = _services(f"{key}.services", entry.get("services"), notes)
    overrides = entry.get("overrides") or []
    if not isinstance(overrides, list):
        notes.append(
            RotaProblem(f"{key}.overrides", "must be a list of {person:, start:, end:}; the overrides are left out")
        )
        overrides = []
    parsed: list[Override] = []
    for n, cover in enumerate(overrides):
        try:
            parsed.append(_override(f"{key}.overrides[{n}]", cover, zone, people, notes))
        except RotaProblem as exc:  # the rota goes on without this cover; the others still hold
            notes.append(RotaProblem(exc.key, f"{exc.message}; this override is left out until it is fixed"))
    # Members and override people alike: an override ends when its person leaves, as a member's turn does.
    everyone = dict.fromkeys([*ids, *(o.person for o in parsed)])
    leaving = tuple((p, people[p].left) for p in everyone if people[p].left is not None)
    return Rotation(team, ids, day, handoff_time, tz, start, services, tuple(parsed), leaving)


def _members(key: str, members: Any, people: dict[str, Expert], notes: list[RotaProblem]) -> tuple[str, ...]:
    """The members in turn order. One not on the roster, or listed again, is reported and left out: the rota goes
    round the others. None left is a rota that cannot be read."""
    example = "list the roster ids who take turns, in order: members: [U04C2RN8VD, ...]"
    if not isinstance(members, list) or not members:
        raise RotaProblem(key, example)
    ids: list[str] = []
    for n, member in enumerate(members):
        if problem := _not_on_roster(member, people):
            notes.append(RotaProblem(f"{key}[{n}]", f"{problem}; left out, the rota goes round the others"))
        elif str(member) in ids:
            notes.append(
                RotaProblem(f"{key}[{n}]", f"{member} is listed again; left out, as each member takes one turn a round")
            )
        else:
            _note_left(f"{key}[{n}]", str(member), people, notes)
            ids.append(str(member))
    if not ids:
        raise RotaProblem(key, f"no member is on the roster; {example}")
    return tuple(ids)


def _read_handoff(text: str) -> tuple[int | None, str]:
    """The handoff's weekday (0 is Monday) and its time as HH:MM; None for a day that cannot be read.
    ``tue 9:00`` is read as ``tuesday 09:00``: neither can be taken for anything else."""
    match = HANDOFF.match(text)
    if not match:
        return None, ""
    word = match[1].lower()
    days = [n for n, name in enumerate(DAYS) if len(word) >= 3 and name.startswith(word)]
    return (days[0] if len(days) == 1 else None), f"{int(match[2]):02}:{match[3]}"


def _services(key: str, value: Any, notes: list[RotaProblem]) -> tuple[str, ...]:
    """The services a rota covers besides its team's: a list, or one name (or names with commas) as elsewhere. A bad
    name is reported and left out."""
    if value is None:
        return ()
    if not isinstance(value, (list, str)) or not all(isinstance(s, str) for s in value):
        notes.append(
            RotaProblem(key, "must be a list of service names, for example services: [checkout-api]; left out")
        )
        return ()
    names = [s.strip() for s in value.split(",")] if isinstance(value, str) else value
    kept: list[str] = []
    for n, service in enumerate(names):
        if problem := service_name_problem(service):
            at = key if isinstance(value, str) else f"{key}[{n}]"
            notes.append(RotaProblem(at, f"{problem}; left out"))
        else:
            kept.append(service)
    return tuple(kept)


def _unknown_field(name: Any, fields: tuple[str, ...], what: str) -> str:
    # 0.75: a slip of one or two letters (`overides`), not another word that shares some (`reason`, `person`)
    close = difflib.get_close_matches(str(name), fields, n=1, cutoff=0.75)
    hint = f"did you mean `{close[0]}`?" if close else f"{what} has {', '.join(fields)}"
    return f"unknown field, left out with what it holds; {hint}"


def _not_on_roster(person: Any, people: dict[str, Expert]) -> str:
    """Why ``person`` cannot be on a rota ("" when they can), with the closest roster id for a slip."""
    if str(person) in people:
        return ""
    close = difflib.get_close_matches(str(person), list(people), n=1, cutoff=0.8)
    hint = f" (did you mean {close[0]}, {people[close[0]].name}?)" if close else ""
    return f"{person!r} is not on the roster{hint}; use a roster id from `people:`"


def _note_left(key: str, person: str, people: dict[str, Expert], notes: list[RotaProblem]) -> None:
    left = people[person].left
    # Someone serving their notice stays on the rota until their `left:` day; then their turns are skipped. One who
    # has left is reported, and the rota still loads without them (dropping it took the whole team off call).
    if left is not None and left <= datetime.now(UTC).date():
        notes.append(RotaProblem(key, f"{person} left on {left}; take them out of the rota (their turns are skipped)"))


def _override(key: str, entry: Any, zone: ZoneInfo, people: dict[str, Expert], notes: list[RotaProblem]) -> Override:
    if not isinstance(entry, dict):
        raise RotaProblem(key, "must be {person: ID, start: 2026-11-27T18:00, end: 2026-11-30T09:00}")
    for name in entry:
        if name not in OVERRIDE_FIELDS:  # a `reason:` or a note: the cover itself still holds
            notes.append(RotaProblem(f"{key}.{name}", _unknown_field(name, OVERRIDE_FIELDS, "an override")))
    person = entry.get("person")
    if problem := _not_on_roster(person, people):
        raise RotaProblem(f"{key}.person", problem)
    _note_left(f"{key}.person", str(person), people, notes)
    start = _when(f"{key}.start", entry.get("start"), zone)
    end = _when(f"{key}.end", entry.get("end"), zone)
    if end <= start:
        raise RotaProblem(f"{key}.end", f"must be after start ({start:%Y-%m-%dT%H:%M})")
    return Override(str(person), start, end)


def _date(key: str, value: Any) -> date:
    return _in_years(key, value, _read_date(key, value))


def _in_years(key: str, value: Any, when: date) -> Any:
    """``when``, if a rota can be counted from it: weeks are added to a rota's dates, so one near the calendar's end
    (an open-ended `9999-12-31`) would overflow at every /oncall."""
    if not YEARS[0] <= when.year <= YEARS[1]:
        far = "for no end in sight, a far one such as 2100-01-01"
        raise RotaProblem(key, f"{value!r} must be a date in the years {YEARS[0]} to {YEARS[1]} ({far})")
    return when


def _read_date(key: str, value: Any) -> date:
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    try:
        return date.fromisoformat(str(value))
    except ValueError:
        if unreal := real_date_problem(value):
            raise RotaProblem(key, f"{value!r} is not a real date ({unreal}); write one such as 2026-01-05") from None
        raise RotaProblem(key, f"{value!r} is not a date such as 2026-01-05") from None


def _when(key: str, value: Any, zone: ZoneInfo) -> datetime:
    """A date and time; without an offset it is local to the rota's time zone."""
    if isinstance(value, datetime):
        parsed = value
    else:
        try:
            parsed = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
        except ValueError:
            if unreal := real_date_problem(value):
                example = "write one such as 2026-11-27T18:00"
                raise RotaProblem(key, f"{value!r} is not a real date and time ({unreal}); {example}") from None
            raise RotaProblem(key, f"{value!r} is not a date and time such as 2026-11-27T18:00") from None
    _in_years(key, value, parsed)
    # With an offset it is the same instant, shown in the rota's own zone like every other time of the rota.
    return parsed.astimezone(zone) if parsed.tzinfo else parsed.replace(tzinfo=zone)


# -- who is on call --------------------------------------------------------------------------------


def _handoff(rotation: Rotation, week: int) -> datetime:
    """The instant of the rota's ``week``-th handoff (0 is the first), at its local time in the rota's zone.

    When summer time ends and the handoff's local time happens twice, the first one counts; when it begins and
    that time does not exist, the time after the gap counts (Python's fold=0 for both).
    """
    hour, minute = map(int, rotation.handoff_time.split(":"))
    local = datetime.combine(rotation.start + week * WEEK, time(hour, minute))
    return local.replace(tzinfo=ZoneInfo(rotation.timezone)).astimezone(UTC)


def _leaves_at(rotation: Rotation, person: str) -> datetime | None:
    """When ``person`` leaves the rota, in UTC: the start of their `left:` day in the rota's time zone.

    Every "has left" of a rota, a member's turn or an override, is decided in the rota's time zone (as
    ``Rotation.left_by`` does), not the person's own: the rota's handoffs and overrides are written in it, and one
    zone means a turn and an override of the same person end at the same instant.
    """
    day = dict(rotation.leaving).get(person)
    if day is None:
        return None
    # An index made before `left:` was held to a rota's years may keep a year 1 or a 9999, which overflow in a time
    # zone: one before any rota began, or after any time asked about, decides the same as those.
    day = min(max(day, date(YEARS[0], 1, 1)), date(YEARS[1], 12, 31))
    return datetime.combine(day, time(0)).replace(tzinfo=ZoneInfo(rotation.timezone)).astimezone(UTC)


def _overrides(rotation: Rotation) -> list[Override]:
    """The overrides as they hold, in UTC: each ends when its person leaves, and one that would begin after is dropped
    (an override is not a way to keep someone on call after their `left:` day). Listed order kept: a later one wins.

    In UTC because two times in one ZoneInfo compare by their wall clocks, and in the hour that repeats when summer
    time ends, 01:10 GMT would come before 01:30 BST.
    """
    held: list[Override] = []
    for cover in rotation.overrides:
        start, end = cover.start.astimezone(UTC), cover.end.astimezone(UTC)
        leaves = _leaves_at(rotation, cover.person)
        if leaves is not None:
            end = min(end, leaves)
        if start < end:
            held.append(Override(cover.person, start, end))
    return held


def _base_shift(rotation: Rotation, at: datetime) -> Shift | None:
    """The rota's own shift at ``at`` (overrides aside), in UTC; None before the rota starts."""
    # Handoffs are real instants compared with ``at``, so a shift always holds the time it is asked for, and a
    # handoff stays at its local time across a change of summer time.
    first = _handoff(rotation, 0)
    if at < first:
        return None
    weeks = (at - first) // WEEK  # within a week of the answer: a summer-time change moves a handoff by an hour
    while _handoff(rotation, weeks + 1) <= at:
        weeks += 1
    while weeks > 0 and _handoff(rotation, weeks) > at:
        weeks -= 1
    start, end = _handoff(rotation, weeks), _handoff(rotation, weeks + 1)
    # Whoever has left by ``at`` is skipped: the next member in the order takes their turn, from their `left:` day;
    # whoever leaves during their turn is on call until their `left:` day begins, when the next member takes over.
    for turn in range(len(rotation.members)):
        person = rotation.members[(weeks + turn) % len(rotation.members)]
        leaves = _leaves_at(rotation, person)
        if not rotation.left_by(person, at):
            end = min(end, leaves) if leaves is not None else end
            return Shift(rotation.team, person, start, end)
        start = max(start, leaves) if leaves is not None else start
    return None


def shift_at(rotation: Rotation, at: datetime) -> Shift | None:
    """Who is on call for the rota at ``at``: an override covering it (the last listed), else the rota's turn; its
    times in the rota's zone (an override stored with a fixed offset included)."""
    shift = _shift_at(rotation, at)
    if shift is None:
        return None
    zone = ZoneInfo(rotation.timezone)
    return replace(shift, start=shift.start.astimezone(zone), end=shift.end.astimezone(zone))


def _shift_at(rotation: Rotation, at: datetime) -> Shift | None:
    overrides = _overrides(rotation)
    covering = [n for n, o in enumerate(overrides) if o.start <= at < o.end]
    if covering:
        index = covering[-1]
        cover = overrides[index]
        # Until it ends, or until an override listed after it (which wins) starts.
        later = [o.start for o in overrides[index + 1 :] if at < o.start < cover.end]
        # Since it began, or since an override listed after it, inside it, ended.
        back = [o.end for o in overrides[index + 1 :] if cover.start < o.end <= at]
        return Shift(rotation.team, cover.person, max([cover.start, *back]), min([cover.end, *later]), override=True)
    base = _base_shift(rotation, at)
    if base is None:
        return None
    # An override starting later in this shift cuts it short; one that ended earlier in it hands the shift back then.
    cut = min([base.end, *(o.start for o in overrides if at < o.start < base.end)])
    back = max([base.start, *(o.end for o in overrides if base.start < o.end <= at)])
    return Shift(base.team, base.person, back, cut)


def on_call(rotation: Rotation, at: datetime | None = None) -> OnCall:
    """Who is on call now and who is next (the next different person, within a full round of the rota). Shifts of
    the same person back to back are one, overrides or not: covering a leaver's week before their own is on call
    until the second ends, not a handover to themselves. "covering" is said of the shift at ``at``."""
    at = at or datetime.now(UTC)
    now = shift_at(rotation, at)
    following: Shift | None = None
    probe = now.end if now else _first_start(rotation, at)
    limit = (probe or at) + WEEK * (len(rotation.members) + 1)
    joined = True
    while probe is not None and probe < limit:
        candidate = shift_at(rotation, probe)
        if candidate is None:
            break
        if now is None or candidate.person != now.person:
            following = candidate
            break
        # An override and the same person's own shift meeting are one stretch on call too (keeping them apart said
        # "until" the first ended, and named as next whoever followed the second, with a gap that was not there).
        joined = joined and candidate.start == now.end
        if joined:
            now = replace(now, end=candidate.end)
        probe = candidate.end
    return OnCall(rotation.team, now, following, rotation.timezone)


@dataclass(frozen=True)
class Turns:
    """One person's turns on a rota: the one they are on at the time asked (None when not on call), and their next."""

    team: str
    now: Shift | None
    next: Shift | None
    timezone: str


def turns_of(rotation: Rotation, person: str, at: datetime | None = None) -> Turns:
    """``person``'s stretch on call at ``at`` (if any) and their next one, each as long as they hold the rota
    without a break (back-to-back shifts and overrides are one), within two rounds of the rota."""
    at = at or datetime.now(UTC)
    stretches: list[Shift] = []
    probe = at if shift_at(rotation, at) is not None else _first_start(rotation, at)
    limit = at + WEEK * (2 * len(rotation.members) + 1)
    while probe is not None and probe < limit:
        shift = shift_at(rotation, probe)
        if shift is None or shift.end <= probe:
            break
        if shift.person == person:
            if stretches and stretches[-1].end == shift.start:
                last = stretches[-1]
                stretches[-1] = replace(last, end=shift.end, override=last.override or shift.override)
            elif len(stretches) == 2:
                break
            else:
                stretches.append(shift)
        elif len(stretches) == 2 or (len(stretches) == 1 and stretches[0].start > at):
            break  # the turns asked for are complete
        probe = shift.end
    now = stretches[0] if stretches and stretches[0].start <= at else None
    later = [s for s in stretches if s is not now]
    return Turns(rotation.team, now, later[0] if later else None, rotation.timezone)


def _first_start(rotation: Rotation, at: datetime) -> datetime | None:
    """When anyone is first on call after ``at``, for a rota that has not started yet."""
    hour, minute = map(int, rotation.handoff_time.split(":"))
    begins = datetime.combine(rotation.start, time(hour, minute)).replace(tzinfo=ZoneInfo(rotation.timezone))
    starts = [begins, *(o.start for o in _overrides(rotation) if o.start > at)]
    later = [s for s in starts if s > at]
    return min(later) if later else None


def covering_rotations(
    rotations: list[Rotation],
    services: list[str],
    teams: dict[str, list[str]],
    service_teams: dict[str, str],
    owners: dict[str, set[str]],
) -> list[Rotation]:
    """The rotas on call for ``services``: for each, the rotas that list it, else its services.yaml `team:`'s,
    else those of the teams its owners are in (the most specific answer that exists wins)."""
    by_team = {r.team: r for r in rotations}
    team_of = {person: team for team, people in teams.items() for person in people}
    found: list[Rotation] = []
    for service in services:
        levels = (
            [r for r in rotations if service in r.services],
            [by_team[t] for t in [service_teams.get(service, "")] if t in by_team],
            [by_team[t] for t in sorted({team_of.get(p, "") for p in owners.get(service, set())}) if t in by_team],
        )
        for level in levels:
            if level:
                found.extend(r for r in level if r not in found)
                break
    return found


@dataclass
class Rota:
    """Every rotation, and which services each covers: answers "who is on call for X"."""

    rotations: list[Rotation]
    experts: list[Expert]
    service_owners: dict[str, list[str]]  # services.yaml owners: roster ids or team names
    service_teams: dict[str, str]  # services.yaml `team:`
    unread: list[str] = field(default_factory=list)  # teams whose rota is in experts.yaml but cannot be read

    def __post_init__(self) -> None:
        self.teams: dict[str, list[str]] = {}
        for e in self.experts:
            self.teams.setdefault(e.team, []).append(e.id)
        self.owners: dict[str, set[str]] = {}
        for e in self.experts:
            for service in e.services:
                self.owners.setdefault(service, set()).add(e.id)
        for service, owners in self.service_owners.items():
            for owner in owners:
                self.owners.setdefault(service, set()).update(self.teams.get(owner, [owner]))
        self.services = set(self.owners) | set(self.service_teams) | {s for r in self.rotations for s in r.services}

    @classmethod
    def from_store(cls, store: object) -> Rota:
        """The rotations, roster and service ownership stored by the last `opsbot index`."""
        unread = json.loads(store.get_meta("unread_rotas") or "[]")
        return cls(store.load_rotations(), store.load_experts(), store.service_owners(), store.service_teams(), unread)

    def covering(self, services: list[str]) -> list[Rotation]:
        return covering_rotations(self.rotations, services, self.teams, self.service_teams, self.owners)

    def lookup(self, name: str = "") -> list[Rotation]:
        """The rotas for a team or a service (all of them for ""); a clear error for anything else."""
        name = name.strip()
        team = _named(name, [*(r.team for r in self.rotations), *self.unread]) if name else None
        if team in self.unread:
            raise InvalidRequest(
                f"the {team} rota in experts.yaml has a problem, so it is not read and nobody is on call from it: "
                "`opsbot check` says what to fix; then run `opsbot index`."
            )
        if not self.rotations and self.unread:
            raise InvalidRequest(
                f"no rota in experts.yaml can be read ({', '.join(self.unread)}), so nobody is on call from one: "
                "`opsbot check` says what to fix; then run `opsbot index`."
            )
        if not self.rotations:
            raise InvalidRequest(
                "there is no on-call rota yet: add `rotations:` to experts.yaml (see the README) "
                "and run `opsbot index`."
            )
        if not name:
            return list(self.rotations)
        if team is not None:
            return [r for r in self.rotations if r.team == team]
        service = _named(name, self.services)
        if service is not None:
            found = self.covering([service])
            if found:
                return found
            owners = self._owners_of(service)
            reach = f". {owners}: reach them directly, or add it" if owners else ": add it"
            raise InvalidRequest(f"no rota covers {service}{reach} to a rota's `services:` in experts.yaml.")
        teams = ", ".join(r.team for r in self.rotations)
        raise InvalidRequest(f"no rota or service called {name!r}; the rotas are {teams}, or name a service.")

    def _owners_of(self, service: str, shown: int = 4) -> str:
        """Who to reach when no rota covers ``service``: "Its owner is NAME (TEAM team)", "" when nobody is."""
        now = datetime.now(UTC)
        owning = self.owners.get(service, set())
        people = sorted((e for e in self.experts if e.id in owning and not e.has_left(now)), key=lambda e: e.name)
        names = [f"{e.name} ({e.team} team)" if e.team else e.name for e in people[:shown]]
        if len(people) > shown:
            names.append(f"{len(people) - shown} more")
        if len(names) < 2:
            return f"Its owner is {names[0]}" if names else ""
        return f"Its owners are {', '.join(names[:-1])} and {names[-1]}"

    def answer(self, name: str = "", at: datetime | None = None) -> list[OnCall]:
        """Who is on call now and next for a team, a service, or every rota."""
        at = at or datetime.now(UTC)
        return [on_call(r, at) for r in self.lookup(name)]

    def person_named(self, name: str) -> str | None:
        """The roster id ``name`` means: an id, a full name in any capitals, or a first name only one person has
        ("Daniel", as the shell's /user takes it); None for none or several."""
        wanted = name.strip().removeprefix("@").strip().lower()
        if not wanted:
            return None
        found = [e.id for e in self.experts if wanted in (e.id.lower(), e.name.lower())]
        if not found:
            found = [e.id for e in self.experts if e.name.split() and e.name.split()[0].lower() == wanted]
        return found[0] if len(found) == 1 else None

    def turns(self, person: str, at: datetime | None = None) -> list[Turns]:
        """A roster member's turns on every rota that has them (a member, or covering with an override)."""
        if person not in {e.id for e in self.experts}:
            raise InvalidRequest(f"<@{person}> is not on the roster (experts.yaml), so on no rota.")
        at = at or datetime.now(UTC)
        return [
            turns_of(r, person, at)
            for r in self.rotations
            if person in r.members or any(o.person == person for o in r.overrides)
        ]

    def named_in(self, text: str) -> str:
        """The team or service a question names ("who is on call for payments?"), or "" for none. A word after
        "on call for" that is close to a team's or a service's name without being one ("paymnts") comes back as
        it is, so that ``lookup`` names the rotas rather than answering for every rota; any other word ("for the
        outage", "on Saturday") asks about every rota."""
        lower = text.lower()
        names = [r.team for r in self.rotations] + sorted(self.services, key=len, reverse=True)
        for name in names:
            if re.search(rf"(?<![\w/-]){re.escape(name.lower())}(?![\w/-])", lower):
                return name
        asked = ASKED_FOR.search(text)
        if asked and difflib.get_close_matches(asked[1].lower(), [n.lower() for n in names], n=1, cutoff=0.75):
            return asked[1]
        return ""


def _named(name: str, names: Iterable[str]) -> str | None:
    """The one of ``names`` that ``name`` is: written exactly, else the only one in other capitals; None for none.

    Exact first: with `checkout-api` and `Checkout-API` both known, picking among them by case alone gave either,
    from one run to the next."""
    if name in names:
        return name
    same = sorted({n for n in names if n.lower() == name.lower()})
    if len(same) > 1:
        raise InvalidRequest(
            f"{name!r} could be {' or '.join(same)}, which differ only in capitals: write the one you mean exactly."
        )
    return same[0] if same else None


ASKED_FOR = re.compile(r"(?i)\bon[\s-]?call\s+for\s+(?:the\s+)?([\w./-]+)")
ON_CALL_QUESTION = re.compile(
    r"(?i)\b(?:who(?:'s|\s+is|\s+are)?\s+(?:currently\s+|now\s+)?on[\s-]?call|on[\s-]?call\s+(?:now|today|"
    r"right\s+now|this\s+week)\b|who\s+(?:has|holds)\s+the\s+pager|who\s+(?:do\s+i|should\s+i|to)\s+page)"
)


def asks_who_is_on_call(text: str) -> bool:
    """Whether a question asks who is on call (rather than how to fix something)."""
    return bool(ON_CALL_QUESTION.search(text))


def when_text(at: datetime) -> str:
    """A shift boundary in its rota's time zone: "Mon 12 Jan 09:00 Europe/London"."""
    return f"{at:%a %d %b %H:%M} {getattr(at.tzinfo, 'key', None) or at.strftime('%Z') or 'UTC'}"


def asked_time(at: datetime | None) -> str:
    """The time a question is about, as an answer says it: "now", or "at Thu 24 Dec 20:00 UTC" for `--at`."""
    return f"at {when_text(at)}" if at else "now"


def parse_at(value: str) -> datetime:
    """The time `--at` asks about (`/oncall payments --at 2026-12-24T20:00Z`, `opsbot oncall --at …`): ISO, UTC when
    it gives no zone. A clear InvalidRequest for anything else, or a time the rota cannot be counted at."""
    try:
        at = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        raise InvalidRequest(f"--at {value!r} is not a date and time; write it like 2026-12-24T20:00Z.") from None
    at = at if at.tzinfo else at.replace(tzinfo=UTC)
    # A round of a rota is counted in weeks from here: near the ends of the calendar that overflows.
    if not YEARS[0] <= at.year <= YEARS[1]:
        raise InvalidRequest(
            f"--at {value!r} is out of range: give a time between the years {YEARS[0]} and {YEARS[1]}, "
            "like 2026-12-24T20:00Z."
        )
    return at


def describe_turns(turns: Turns, then: str = "now") -> str:
    """ "on call now until Tue 08 Dec 10:00 Europe/Berlin; next from … until …", or when they are not on call.
    ``then`` is the time asked about as the sentence says it ("now", "at Thu 24 Dec 20:00 UTC")."""
    parts = []
    if turns.now is not None:
        covering = ", covering" if turns.now.override else ""
        parts.append(f"on call {then} until {when_text(turns.now.end)}{covering}")
    else:
        parts.append(f"not on call {then}")
    if turns.next is not None:
        covering = " (covering)" if turns.next.override else ""
        parts.append(f"next from {when_text(turns.next.start)} until {when_text(turns.next.end)}{covering}")
    else:
        parts.append("no later turn in the next two rounds of the rota")
    return "; ".join(parts)


def describe(answer: OnCall, names: dict[str, str], mention: bool = False) -> tuple[str, str]:
    """Who is on call and who is next, as two short phrases ("" when nobody); ``mention`` writes Slack mentions."""

    def who(person: str) -> str:
        name = names.get(person, person)
        return f"<@{person}> ({name})" if mention else f"{name} ({person})"

    now = ""
    if answer.now is not None:
        covering = ", covering" if answer.now.override else ""
        # nobody else takes over within a round of the rota (one member, or the others left): no end to give
        until = (
            f"until {when_text(answer.now.end)}"
            if answer.next or answer.now.override
            else "with no handover in the rota"
        )
        now = f"{who(answer.now.person)} {until}{covering}"
    following = ""
    if answer.next is not None:
        following = f"{who(answer.next.person)} from {when_text(answer.next.start)}"
    return now, following
