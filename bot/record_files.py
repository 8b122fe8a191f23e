"""The structured files of knowledge/ as models: incidents, the roster with its rotations, channels.yaml."""

from __future__ import annotations

import difflib
import re
import reprlib
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml

from bot.knowledge_fields import FileProblem, FileProblems, name_list, service_names, squashed, text_field
from bot.knowledge_xref import near_service
from bot.models import Document, Expert, Incident, Problem, Section, TimelineEntry
from bot.rota import YEARS as ROTA_YEARS
from bot.rota import parse_rotations
from bot.services import severity_number
from bot.text import load_yaml, parse_date, split_front_matter, split_sections
from bot.yaml_lines import compose as _compose
from bot.yaml_lines import key_line as _key_line
from bot.yaml_lines import load as _load
from bot.yaml_lines import path_line as _path_line
from bot.yaml_lines import real_date_problem
from bot.yaml_lines import yaml_error_line as _yaml_line
from bot.yaml_lines import yaml_problem as _yaml_problem

SLACK_USER_ID = re.compile(r"^[UW][A-Z0-9]{6,12}$")
INCIDENT_ID = re.compile(r"^[A-Z][A-Z0-9]*-[A-Z0-9-]+$")
EXPERT_FIELDS = ("id", "name", "team", "skills", "services", "timezone", "hours", "away", "left")
INCIDENT_REQUIRED = ("id", "title", "date", "severity", "services", "responders", "summary", "root_cause", "resolution")
INCIDENT_OPTIONAL = ("timeline", "duration_minutes", "url", "tags", "env")
EARLIEST_YEAR = 1970  # an incident dated before is a typo (year 1 with an offset falls out of the calendar)
SKILL_WORD = re.compile(r"[a-z0-9]")  # what a skill is matched by (bot.answers.experts.WORD)
HOURS = re.compile(r"^([01]\d|2[0-3]):[0-5]\d-([01]\d|2[0-3]):[0-5]\d$")


MARKDOWN_PARTS = ("summary", "root_cause", "resolution", "timeline")


def parse_incident(rel: str, text: str, notes: list[str | FileProblem] | None = None) -> Incident:
    """An incident in YAML, or in Markdown with the fields in front matter and sections in the body.

    In Markdown, a section's subsections belong to it (`### Contributing factors` under `## Root cause`);
    a section that is none of the four parts is not read, and ``notes`` says so (and a duration left out, with its
    line).
    """
    if rel.lower().endswith(".md"):
        fm = split_front_matter(text)
        data = dict(fm.data)
        written: dict[str, list[str]] = {}
        doubled: set[str] = set()  # parts both in the front matter and as a section: said once each
        for section in split_sections(fm.body, ""):
            key = section.heading.split(" > ")[0].strip().lower().replace(" ", "_")
            if key in MARKDOWN_PARTS and key not in data:
                written.setdefault(key, []).append(section.text)
            elif key in MARKDOWN_PARTS and section.text.strip() and notes is not None and key not in doubled:
                doubled.add(key)
                top = section.heading.split(" > ")[0].strip()
                notes.append(
                    f"section `{top}` is not read: the front matter has `{key}:` too, and it is the one used; "
                    "keep one of the two"
                )
            elif key not in MARKDOWN_PARTS and section.text.strip() and notes is not None:
                top = section.heading.split(" > ")[0].strip() or "(text before the first heading)"
                notes.append(
                    f"section `{top}` is not read: an incident's sections are Summary, Root cause, Resolution "
                    "and Timeline; move its text into one of them (a ### under it) to have it searched"
                )
        for key, texts in written.items():
            if key == "timeline":
                lines = "\n".join(texts).splitlines()
                data["timeline"] = [ln.lstrip("-* ").strip() for ln in lines if ln.strip()]
            else:
                data[key] = "\n\n".join(t.strip() for t in texts if t.strip())
        line_of = lambda key: 1 + _key_line(text.split("\n---", 1)[0], key)  # noqa: E731
    else:
        try:
            data = load_yaml(text)
        except yaml.YAMLError as exc:
            raise FileProblem(f"not valid YAML: {_yaml_problem(exc)}", _yaml_line(exc)) from exc
        if not isinstance(data, dict):
            raise FileProblem("an incident file must be a mapping with id:, title:, date: ...", 1)
        line_of = lambda key: 1 + _key_line(text, key)  # noqa: E731
    return _incident_from_dict(data, rel, line_of, text, notes)


# How YAML 1.1 lets a key be written that it reads as true or false (`on:` is True).
BOOL_SPELLINGS = {True: ("on", "yes", "true", "y"), False: ("off", "no", "false", "n")}


def _written_key(key: object, text: str) -> str:
    """A key that YAML read as something other than text (2025, True), as the file spells it."""
    if isinstance(key, str):
        return key
    spellings = BOOL_SPELLINGS[key] if isinstance(key, bool) else (str(key),)
    for spelling in spellings:
        if found := re.search(rf"^\s*({re.escape(spelling)})\s*:", text, re.IGNORECASE | re.MULTILINE):
            return found.group(1)
    return str(key)


def _incident_from_dict(
    data: dict, rel: str, line_of: Any, text: str = "", notes: list[str | FileProblem] | None = None
) -> Incident:
    """The incident, or every problem of the file at once (FileProblems): a file is fixed in one go, not one
    rerun of `opsbot check` per problem."""
    problems: list[FileProblem] = []

    def fail(message: str, line: int | None = None) -> None:
        problems.append(FileProblem(message, line))

    for key in [k for k in data if k not in INCIDENT_REQUIRED + INCIDENT_OPTIONAL]:
        written = _written_key(key, text)
        close = difflib.get_close_matches(written, INCIDENT_REQUIRED + INCIDENT_OPTIONAL, n=1)
        hint = f"; did you mean `{close[0]}`?" if close else ""
        fail(f"unknown field `{written}`{hint}", line_of(written))
    missing = [k for k in INCIDENT_REQUIRED if data.get(k) in (None, "", [])]
    if missing:
        fail(f"missing {', '.join(missing)}; every incident needs {', '.join(INCIDENT_REQUIRED)}.")
    inc_id = str(data.get("id") or "").strip()
    if inc_id and not INCIDENT_ID.match(inc_id):
        fail(f"id {inc_id!r} should look like INC-2025-0042", line_of("id"))
    date = parse_date(data["date"]) if "date" not in missing else None
    if "date" not in missing and date is None and (unreal := real_date_problem(data["date"])):
        example = "such as 2025-04-12T19:42:00Z"
        fail(f"date {data['date']!r} is not a real date ({unreal}); write when it began, {example}", line_of("date"))
    elif "date" not in missing and date is None:
        fail(f"date {data['date']!r} is not an ISO date such as 2025-04-12T19:42:00Z", line_of("date"))
    elif date is not None and not (EARLIEST_YEAR <= date.year and date <= datetime.now(UTC) + timedelta(days=1)):
        # a typo's year: one ahead of now is no past incident (expert suggestions would pass it over without a
        # word), and one in year 1 is out of the calendar's reach once its offset is taken away
        fail(f"date {data['date']!r} is not a time an incident began: it is {_when_off(date)}", line_of("date"))
    raw = data.get("severity")
    # 2, "2", SEV2; never true (YAML's yes) or 2.9 read as a severity
    severity = (severity_number(raw) if not isinstance(raw, (bool, float)) else None) or 0
    if "severity" not in missing and not 1 <= severity <= 4:
        fail(f"severity {raw!r} must be 1 (worst) to 4", line_of("severity"))
    duration = data.get("duration_minutes")
    if duration is not None and (isinstance(duration, bool) or not isinstance(duration, int) or duration < 0):
        fail("duration_minutes must be a whole number of minutes", line_of("duration_minutes"))
    elif duration is not None and date is not None and duration > (datetime.now(UTC) - date).total_seconds() / 60:
        # An epoch in milliseconds pasted in: it outlasts the calendar (DORA's figures failed on it), and a smaller
        # one swallows every later outage of the service. Left out, so the rest of the incident still counts.
        message = (
            f"duration_minutes {duration} would end this incident after now; write how many minutes it lasted, "
            "such as 45 (it is left out until then)"
        )
        if notes is not None:
            notes.append(FileProblem(message, line_of("duration_minutes")))
        duration = None
    env = data.get("env") or ""
    if not isinstance(env, str) or (env and not re.fullmatch(r"[A-Za-z0-9][\w-]*", env)):
        fail(f"env {env!r} must be an environment name such as prod or staging", line_of("env"))
    timeline = []
    entries = data.get("timeline") or []
    if not isinstance(entries, list):
        example = '[{at: "2025-01-09T18:20Z", event: Paged}] or lines such as "18:20 Paged"'
        fail(f"timeline must be a list of entries, {example}", line_of("timeline"))
        entries = []
    for entry in entries:
        if isinstance(entry, dict):
            strange = sorted(str(k) for k in entry if k not in ("at", "event"))
            if strange or not str(entry.get("event", "")).strip():
                fail(f"timeline entry {entry!r} must have at: and event: (and nothing else)", line_of("timeline"))
                continue
            timeline.append(TimelineEntry(str(entry.get("at", "")), str(entry.get("event", "")).strip()))
        else:
            at, _, event = str(entry).partition(" ")
            timeline.append(TimelineEntry(at, event.strip()))
    services: tuple[str, ...] = ()
    responders: tuple[str, ...] = ()
    try:
        services = service_names(data.get("services"))
    except FileProblem as exc:
        fail(str(exc), line_of("services"))
    try:
        # Once each, main resolver first: `[U1, U1]` is one person, credited and cited once.
        responders = tuple(dict.fromkeys(name_list(data.get("responders"), "responders")))
    except FileProblem as exc:
        fail(str(exc), line_of("responders"))
    title = data.get("title")
    if "title" not in missing and (not isinstance(title, (str, int, float)) or isinstance(title, bool)):
        fail(f"title {reprlib.repr(title)} must be text", line_of("title"))
    written: dict[str, str] = {}
    for key in ("summary", "root_cause", "resolution"):
        if key in missing:  # reported as missing: its type says nothing more
            written[key] = ""
            continue
        try:  # an empty mapping or `no` is not text, however empty it looks (a 0 is written out)
            written[key] = text_field(data[key], key, line_of(key)).strip()
        except FileProblem as exc:
            problems.append(exc)
    if problems:
        raise problems[0] if len(problems) == 1 else FileProblems(problems)
    return Incident(
        id=inc_id,
        title=str(title).strip(),
        date=date,
        severity=severity,
        services=services,
        responders=responders,
        summary=written["summary"],
        root_cause=written["root_cause"],
        resolution=written["resolution"],
        path=rel,
        duration_minutes=duration,
        timeline=tuple(timeline),
        env=env,
    )


def incident_document(incident: Incident, digest: str) -> Document:
    """The searchable form of an incident: one section per part of the write-up."""
    parts = [("Summary", incident.summary), ("Root cause", incident.root_cause), ("Resolution", incident.resolution)]
    if incident.timeline:
        parts.append(("Timeline", "\n".join(f"{t.at} {t.event}".strip() for t in incident.timeline)))
    return Document(
        path=incident.path,
        kind="incident",
        title=incident.title,
        sections=tuple(Section(h, t, anchor=h.lower().replace(" ", "-")) for h, t in parts if t),
        content_hash=digest,
        services=incident.services,
        owners=incident.responders,
        incident_id=incident.id,
    )


def parse_roster(rel: str, text: str, entries: list[int] | None = None) -> tuple[list[Expert], list[Problem]]:
    """The roster: a list of people under ``people:``; a bad entry is reported and skipped. ``entries`` gets each
    loaded person's place in the list (from 0), for finding their lines again."""
    try:
        data = _load(text)
    except yaml.YAMLError as exc:
        return [], [Problem(rel, f"not valid YAML: {_yaml_problem(exc)}", _yaml_line(exc))]
    people = data.get("people") if isinstance(data, dict) else data
    if not isinstance(people, list):
        return [], [Problem(rel, "must hold a list of people under `people:`, each with id, name and team.")]
    experts: list[Expert] = []
    problems: list[Problem] = []
    entry_lines = _sequence_lines(text)
    seen: dict[str, tuple[int, int | None]] = {}  # id -> the entry in effect: its number and line
    for index, entry in enumerate(people):
        line = entry_lines[index] if index < len(entry_lines) else None
        kept: list[str] = []  # problems with one field: reported, and the person kept without it
        try:
            expert = _expert_from_dict(entry, kept)
        except FileProblem as exc:
            problems.append(Problem(rel, f"person #{index + 1}: {exc}", line))
            continue
        problems += [Problem(rel, f"person #{index + 1} ({expert.id}): {p}", line) for p in kept]
        if expert.id in seen:
            number, at = seen[expert.id]
            where = f"person #{number}" + (f" at line {at}" if at else "")
            message = (
                f"person #{index + 1}: id {expert.id} appears twice; {where} is the one in effect and this entry is "
                "left out: merge the two into one"
            )
            problems.append(Problem(rel, message, line))
            continue
        seen[expert.id] = (index + 1, line)
        experts.append(expert)
        if entries is not None:
            entries.append(index)
    return experts, problems


def _sequence_lines(text: str) -> list[int]:
    """The 1-based line where each person of the roster starts, from the YAML node marks."""
    try:
        node = yaml.compose(text)
    except (yaml.YAMLError, RecursionError):  # nested hundreds deep: reading it says so (bot.text.BoundedAliases)
        return []
    if isinstance(node, yaml.MappingNode):
        node = next((v for k, v in node.value if getattr(k, "value", None) == "people"), None)
    if not isinstance(node, yaml.SequenceNode):
        return []
    return [item.start_mark.line + 1 for item in node.value]


def _expert_from_dict(entry: Any, kept: list[str] | None = None) -> Expert:
    """One person. Raises FileProblem when they cannot be loaded (no id, name or team, an id that is not Slack's,
    a `left:` that cannot be read); a problem with another field goes in ``kept`` and the field is left out, so one
    typo does not take someone off the rota and the approvers."""
    kept = [] if kept is None else kept
    if not isinstance(entry, dict):
        raise FileProblem("must be a mapping with id, name, team, skills, services, timezone")
    for key in entry:
        if key not in EXPERT_FIELDS:
            close = difflib.get_close_matches(str(key), EXPERT_FIELDS, n=1)
            hint = f"; did you mean `{close[0]}`?" if close else f"; known fields: {', '.join(EXPERT_FIELDS)}"
            kept.append(f"unknown field `{key}` (left out){hint}")
    missing = [k for k in ("id", "name", "team") if not entry.get(k)]
    if missing:
        raise FileProblem(f"missing {', '.join(missing)}")
    uid = str(entry["id"]).strip()
    if not SLACK_USER_ID.match(uid):
        raise FileProblem(f"id {uid!r} is not a Slack user id (like U04C2RN8VD: U or W, then capitals and digits)")
    if not isinstance(entry["team"], str):  # a team decides who may approve: never guessed from a list
        raise FileProblem(f"team {entry['team']!r} must be one team name, such as payments")
    tz = str(entry.get("timezone") or "UTC")
    try:
        ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError, OSError):  # OSError: a region folder ("Europe") is no zone
        kept.append(f"timezone {tz!r} is not an IANA time zone such as Europe/London (UTC is used)")
        tz = "UTC"
    hours = str(entry.get("hours") or "")
    if hours and not HOURS.match(hours):
        kept.append(f"hours {hours!r} must look like 09:00-17:30 (left out)")
        hours = ""
    away = entry.get("away", False)
    if not isinstance(away, bool):
        kept.append(f"away {away!r} must be true or false (false is used)")
        away = False
    skills, services = _kept_field(entry, "skills", kept), _kept_field(entry, "services", kept)
    for skill in skills:
        if not SKILL_WORD.search(skill.lower()):
            kept.append(f"skill {skill!r} has no letters or digits, so it never matches a problem (left out)")
    skills = tuple(s for s in skills if SKILL_WORD.search(s.lower()))
    return Expert(
        id=uid,
        name=str(entry["name"]),
        team=entry["team"].strip(),
        skills=skills,
        services=services,
        timezone=tz,
        hours=hours,
        away=away,
        left=_left(entry.get("left")),
    )


def _kept_field(entry: dict, key: str, kept: list[str]) -> tuple[str, ...]:
    """The person's skills or services; one bad value leaves the whole field out, reported in ``kept``."""
    try:
        if key == "services":
            return service_names(entry.get(key))
        return name_list(entry.get(key), key, example="postgres, kafka")
    except FileProblem as exc:
        kept.append(f"{exc} (`{key}` left out)")
        return ()


def _when_off(when: datetime) -> str:
    if when.year < EARLIEST_YEAR:
        return f"before {EARLIEST_YEAR}"
    return "in the future; write when it began, such as 2025-04-12T19:42:00Z"


def _left(value: Any) -> date | None:
    """``left: 2025-06-30``: the day someone left (YAML may already have read it as a date)."""
    if value in (None, ""):
        return None
    if isinstance(value, datetime):
        day = value.date()
    elif isinstance(value, date):
        day = value
    else:
        try:
            day = date.fromisoformat(str(value).strip())
        except ValueError:
            if unreal := real_date_problem(value):
                raise FileProblem(
                    f"left {value!r} is not a real date ({unreal}); write the day they left, such as 2025-06-30"
                ) from None
            raise FileProblem(f"left {value!r} must be the day they left, such as 2025-06-30") from None
    # As a rota's own dates: a rota counts from it in its time zone, and year 1 (a placeholder's 0001-01-01) or 9999
    # fall off the calendar there.
    if not ROTA_YEARS[0] <= day.year <= ROTA_YEARS[1]:
        raise FileProblem(
            f"left {day.isoformat()} must be a day in the years {ROTA_YEARS[0]} to {ROTA_YEARS[1]}: the day they left, "
            "such as 2025-06-30"
        )
    return day


def parse_roster_rotations(rel: str, text: str, experts: list[Expert]) -> tuple[list, list[str], list[Problem]]:
    """The roster's ``rotations:``, the teams whose rota cannot be read at all, and each problem with its line (see
    bot.rota)."""
    try:
        data = _load(text)
    except yaml.YAMLError:
        return [], [], []  # parse_roster reported it
    if not isinstance(data, dict) or data.get("rotations") is None:
        return [], [], []
    rotations, unread, problems = parse_rotations(data["rotations"], experts)
    root = _compose(text)
    return (
        rotations,
        unread,
        [Problem(rel, str(p), _path_line(root, p.key) or 1 + _key_line(text, "rotations")) for p in problems],
    )


CHANNEL_ID = re.compile(r"^[CGD][A-Z0-9]{6,12}$")
CHANNEL_MODES = ("mentions", "all")


def channel_id_problem(channel: str) -> str | None:
    """Why ``channel`` cannot have an answering mode, or None: it must be a channel's id, not a DM's."""
    if not CHANNEL_ID.match(channel):
        return (
            f"{channel!r} is not a Slack channel id; use the id (like C04ALERTS1: channel details > About), "
            "not the #name"
        )
    if channel.startswith("D"):
        return (
            f"{channel} is a direct message, and opsbot answers every direct message already: "
            "channel settings are for channels (ids starting with C or G)"
        )
    return None


def parse_channels(rel: str, text: str) -> tuple[dict[str, str], list[Problem]]:
    """How opsbot behaves per channel: answer only when mentioned, or all questions."""
    try:
        data = _load(text) or {}
    except yaml.YAMLError as exc:
        return {}, [Problem(rel, f"not valid YAML: {_yaml_problem(exc)}", _yaml_line(exc))]
    entries = data.get("channels") if isinstance(data, dict) else None
    if not isinstance(entries, dict):
        return {}, [Problem(rel, "must hold `channels:` mapping channel ids to `all` or `mentions`.")]
    result: dict[str, str] = {}
    problems: list[Problem] = []
    for channel, mode in entries.items():
        line = 1 + _key_line(text, str(channel))
        if problem := channel_id_problem(str(channel)):
            problems.append(Problem(rel, problem, line))
        elif mode not in CHANNEL_MODES:
            problems.append(Problem(rel, f"channel {channel}: {mode!r} must be `all` or `mentions`", line))
        else:
            result[str(channel)] = mode
    return result, problems


def team_slips(rel: str, text: str, experts: list[Expert], entries: list[int], named: set[str]) -> list[Problem]:
    """People whose `team:` looks like a slip of a team services.yaml (``named``) or a rota relies on, or of another
    person's team: teams are compared exactly, so such a person would approve, be on call and silence alerts for
    none of that team's services, without a word. ``entries`` is each person's place in the `people:` list."""
    try:
        data = _load(text)
    except yaml.YAMLError:
        return []  # parse_roster reported it
    rotations = data.get("rotations") if isinstance(data, dict) else None
    relied_on = (named | {str(team) for team in rotations}) if isinstance(rotations, dict) else set(named)
    relied_on -= {e.id for e in experts}
    people: dict[str, list[int]] = {}  # each team's members, by their place in the list
    for expert, index in zip(experts, entries, strict=True):
        people.setdefault(expert.team, []).append(index)

    def likelier(team: str) -> tuple[bool, int, int]:  # the spelling meant: relied on, most people, written first
        return (team in relied_on, len(people[team]), -min(people[team]))

    root = _compose(text)
    at = "people" if isinstance(data, dict) else ""
    problems = []
    for expert, index in zip(experts, entries, strict=True):
        # Among the teams people are in: a name services.yaml or a rota gives that nobody is in is their problem,
        # reported there with the closest team.
        near = [team for team in people if team != expert.team and near_service(expert.team, [team])]
        close = max(near, key=likelier, default=None)
        if close is None or likelier(expert.team) >= likelier(close):
            continue
        only_case = squashed(close) == squashed(expert.team)
        if expert.team in relied_on and not only_case:
            continue  # two teams both relied on, one letter apart: two teams
        how = f"differs from `{close}` only in case or separators" if only_case else f"looks like a slip of `{close}`"
        message = (
            f"person #{index + 1} ({expert.id}): team `{expert.team}` {how}; teams are compared exactly, so "
            f"{expert.name} is not in {close}: they approve, are on call and silence alerts for none of its "
            f"services. Write `{close}`"
        )
        problems.append(Problem(rel, message, _path_line(root, f"{at}[{index}].team")))
    return problems
