"""Read a knowledge directory (runbooks, incidents, roster) into plain models.

Every file is read on its own: a broken file becomes a Problem with its path and line,
and everything else still loads.
"""

from __future__ import annotations

import difflib
import re
from datetime import date, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml

from bot.models import Document, Expert, Incident, KnowledgeBase, Problem, Section, TimelineEntry
from bot.rota import parse_rotations
from bot.services_file import read_services_file
from bot.text import (
    FrontMatterError,
    content_hash,
    first_heading,
    load_yaml,
    parse_date,
    service_name_problem,
    split_front_matter,
    split_sections,
)
from bot.yaml_lines import compose as _compose
from bot.yaml_lines import key_line as _key_line
from bot.yaml_lines import path_line as _path_line
from bot.yaml_lines import yaml_error_line as _yaml_line
from bot.yaml_lines import yaml_problem as _yaml_problem

SLACK_USER_ID = re.compile(r"^[UW][A-Z0-9]{6,12}$")
INCIDENT_ID = re.compile(r"^[A-Z][A-Z0-9]*-[A-Z0-9-]+$")
EXPERT_FIELDS = ("id", "name", "team", "skills", "services", "timezone", "hours", "away", "left")
INCIDENT_REQUIRED = ("id", "title", "date", "severity", "services", "responders", "summary", "root_cause", "resolution")
INCIDENT_OPTIONAL = ("timeline", "duration_minutes", "url", "tags", "env")
HOURS = re.compile(r"^([01]\d|2[0-3]):[0-5]\d-([01]\d|2[0-3]):[0-5]\d$")


class FileProblem(ValueError):
    """A problem inside one file, with the line when it is known."""

    def __init__(self, message: str, line: int | None = None) -> None:
        super().__init__(message)
        self.line = line


def load_knowledge(root: Path) -> KnowledgeBase:
    """Load every runbook, incident and the roster under ``root``."""
    kb = KnowledgeBase(root=str(root))
    for path in sorted((root / "runbooks").rglob("*.md")) if (root / "runbooks").is_dir() else []:
        _collect(kb, root, path, lambda p, rel, text: kb.documents.append(parse_runbook(rel, text)))
    incident_dir = root / "incidents"
    if incident_dir.is_dir():
        files = sorted(p for p in incident_dir.rglob("*") if p.suffix in (".md", ".yaml", ".yml") and p.is_file())
        seen: dict[str, str] = {}
        for path in files:
            _collect(kb, root, path, lambda p, rel, text: _add_incident(kb, rel, text, seen))
    roster = root / "experts.yaml"
    if roster.is_file() and (text := _read(kb, "experts.yaml", roster)) is not None:
        kb.experts, problems = parse_roster("experts.yaml", text)
        kb.problems.extend(problems)
        if problems and not kb.experts:
            kb.failed_paths.add("experts.yaml")
        kb.rotations, problems = parse_roster_rotations("experts.yaml", text, kb.experts)
        kb.problems.extend(problems)
    services = root / "services.yaml"
    if services.is_file() and (text := _read(kb, "services.yaml", services)) is not None:
        roster = None if "experts.yaml" in kb.failed_paths else kb.experts  # a broken roster is reported already
        found = read_services_file("services.yaml", text, roster)
        kb.services, kb.deploy_settings = found.services, found.settings
        kb.problems.extend(found.problems)
        if found.failed:
            kb.failed_paths.add("services.yaml")
    channels = root / "channels.yaml"
    if channels.is_file() and (text := _read(kb, "channels.yaml", channels)) is not None:
        kb.channels, problems = parse_channels("channels.yaml", text)
        kb.problems.extend(problems)
    _check_responders(kb)
    return kb


def _rel(root: Path, path: Path) -> str:
    return path.relative_to(root).as_posix()


def _read(kb: KnowledgeBase, rel: str, path: Path) -> str | None:
    """A file's text without a byte-order mark, or None with a Problem when it cannot be read."""
    try:
        return path.read_text(encoding="utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError:
        kb.problems.append(Problem(rel, "is not UTF-8 text; save it as UTF-8."))
    except OSError as exc:
        kb.problems.append(Problem(rel, f"cannot be read: {exc.strerror}"))
    kb.failed_paths.add(rel)
    return None


def _collect(kb: KnowledgeBase, root: Path, path: Path, parse: Any) -> None:
    rel = _rel(root, path)
    text = _read(kb, rel, path)
    if text is None:
        return
    try:
        parse(path, rel, text)
    except (FileProblem, FrontMatterError) as exc:
        kb.problems.append(Problem(rel, str(exc), exc.line))
        kb.failed_paths.add(rel)
    except (ValueError, TypeError) as exc:  # e.g. YAML's own date parsing: 2025-02-30
        kb.problems.append(Problem(rel, f"has a value that cannot be read: {exc}"))
        kb.failed_paths.add(rel)


def _strings(value: Any, key: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return tuple(v.strip() for v in value.split(",") if v.strip())
    if isinstance(value, list) and all(isinstance(v, (str, int)) for v in value):
        return tuple(str(v) for v in value)
    raise FileProblem(f"`{key}` must be a list of names, for example {key}: [checkout-api, payments-gateway]")


ALERT_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_.:-]*[A-Za-z0-9]")
# A top heading that is one CamelCase word names the alert the runbook is for: "# KubeJobCompletion",
# "# SSPDown" (an acronym, then a word), also with a note in brackets after it: "# KubeMacPoolDown [Deprecated]",
# "# NodeDown (legacy)". A plain word ("# Overview", "# README") has no capital inside it, or no small letter.
CAMEL_ALERT = re.compile(
    r"((?=[A-Za-z0-9]*[a-z])[A-Za-z][A-Za-z0-9]*[A-Z][A-Za-z0-9]*)(?:\s*(?:\[[^\]]*\]|\([^)]*\)))?"
)


def _alerts(value: Any, heading: str, line: int) -> tuple[str, ...]:
    """The alert names a runbook answers: front matter ``alerts``, and a top heading that is an alert name."""
    names = list(_strings(value, "alerts"))
    for name in names:
        if not ALERT_NAME.fullmatch(name):
            raise FileProblem(
                f"`alerts` entry {name!r} is not an alert name; use the name as Prometheus or your "
                "alerting tool sends it, one word without spaces, for example alerts: [PgbouncerPoolExhausted]",
                line,
            )
    named = CAMEL_ALERT.fullmatch(heading)
    if named and named.group(1).lower() not in {n.lower() for n in names}:
        names.append(named.group(1))
    return tuple(names)


def parse_runbook(rel: str, text: str) -> Document:
    """A runbook: optional front matter, title from it, else the first heading, else the file name."""
    fm = split_front_matter(text)
    title = fm.data.get("title")
    if title is not None and not isinstance(title, (str, int, float)):
        raise FileProblem("`title` must be text", 2)
    heading = first_heading(fm.body)
    title = str(title).strip() if title else heading or _title_from_name(rel)
    aliases = (heading,) if heading and heading.replace(" ", "").lower() != title.replace(" ", "").lower() else ()
    sections = split_sections(fm.body, title)
    if not sections:
        raise FileProblem("has no text to index; write at least one paragraph.", fm.body_line)
    return Document(
        path=rel,
        kind="runbook",
        title=title,
        sections=tuple(sections),
        content_hash=content_hash(text),
        services=_strings(fm.data.get("services"), "services"),
        tags=_strings(fm.data.get("tags"), "tags"),
        owners=_strings(fm.data.get("owners"), "owners"),
        url=str(fm.data.get("url") or ""),
        aliases=aliases,
        alerts=_alerts(fm.data.get("alerts"), heading, 1 + _key_line(text, "alerts")),
    )


def _title_from_name(rel: str) -> str:
    stem = Path(rel).stem.replace("-", " ").replace("_", " ").strip()
    return stem[:1].upper() + stem[1:]


def _add_incident(kb: KnowledgeBase, rel: str, text: str, seen: dict[str, str]) -> None:
    incident = parse_incident(rel, text)
    if incident.id in seen:
        raise FileProblem(f"incident id {incident.id} is also used by {seen[incident.id]}; ids must be unique.")
    seen[incident.id] = rel
    kb.incidents.append(incident)
    kb.documents.append(incident_document(incident, content_hash(text)))


def parse_incident(rel: str, text: str) -> Incident:
    """An incident in YAML, or in Markdown with the fields in front matter and sections in the body."""
    if rel.endswith(".md"):
        fm = split_front_matter(text)
        data = dict(fm.data)
        for section in split_sections(fm.body, ""):
            key = section.heading.split(" > ")[0].strip().lower().replace(" ", "_")
            if key in ("summary", "root_cause", "resolution") and key not in data:
                data[key] = section.text
            elif key == "timeline" and "timeline" not in data:
                data["timeline"] = [ln.lstrip("-* ").strip() for ln in section.text.splitlines() if ln.strip()]
        line_of = lambda key: 1 + _key_line(text.split("\n---", 1)[0], key)  # noqa: E731
    else:
        try:
            data = load_yaml(text)
        except yaml.YAMLError as exc:
            raise FileProblem(f"not valid YAML: {_yaml_problem(exc)}", _yaml_line(exc)) from exc
        if not isinstance(data, dict):
            raise FileProblem("an incident file must be a mapping with id:, title:, date: ...", 1)
        line_of = lambda key: 1 + _key_line(text, key)  # noqa: E731
    return _incident_from_dict(data, rel, line_of)


def _incident_from_dict(data: dict, rel: str, line_of: Any) -> Incident:
    unknown = [k for k in data if k not in INCIDENT_REQUIRED + INCIDENT_OPTIONAL]
    for key in unknown:
        close = difflib.get_close_matches(key, INCIDENT_REQUIRED + INCIDENT_OPTIONAL, n=1)
        hint = f"; did you mean `{close[0]}`?" if close else ""
        raise FileProblem(f"unknown field `{key}`{hint}", line_of(key))
    missing = [k for k in INCIDENT_REQUIRED if data.get(k) in (None, "", [])]
    if missing:
        raise FileProblem(f"missing {', '.join(missing)}; every incident needs {', '.join(INCIDENT_REQUIRED)}.")
    inc_id = str(data["id"]).strip()
    if not INCIDENT_ID.match(inc_id):
        raise FileProblem(f"id {inc_id!r} should look like INC-2025-0042", line_of("id"))
    date = parse_date(data["date"])
    if date is None:
        raise FileProblem(f"date {data['date']!r} is not an ISO date such as 2025-04-12T19:42:00Z", line_of("date"))
    try:
        severity = int(data["severity"])
    except (TypeError, ValueError):
        severity = 0
    if not 1 <= severity <= 4:
        raise FileProblem(f"severity {data['severity']!r} must be 1 (worst) to 4", line_of("severity"))
    duration = data.get("duration_minutes")
    if duration is not None and (not isinstance(duration, int) or duration < 0):
        raise FileProblem("duration_minutes must be a whole number of minutes", line_of("duration_minutes"))
    env = data.get("env") or ""
    if not isinstance(env, str) or (env and not re.fullmatch(r"[A-Za-z0-9][\w-]*", env)):
        raise FileProblem(f"env {env!r} must be an environment name such as prod or staging", line_of("env"))
    timeline = []
    for entry in data.get("timeline") or []:
        if isinstance(entry, dict):
            timeline.append(TimelineEntry(str(entry.get("at", "")), str(entry.get("event", "")).strip()))
        else:
            at, _, event = str(entry).partition(" ")
            timeline.append(TimelineEntry(at, event.strip()))
    try:
        services = _service_names(data["services"])
        responders = _strings(data["responders"], "responders")
    except FileProblem as exc:
        exc.line = line_of("services" if "services" in str(exc) or "service name" in str(exc) else "responders")
        raise
    return Incident(
        id=inc_id,
        title=str(data["title"]).strip(),
        date=date,
        severity=severity,
        services=services,
        responders=responders,
        summary=str(data["summary"]).strip(),
        root_cause=str(data["root_cause"]).strip(),
        resolution=str(data["resolution"]).strip(),
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


def parse_roster(rel: str, text: str) -> tuple[list[Expert], list[Problem]]:
    """The roster: a list of people under ``people:``; a bad entry is reported and skipped."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        return [], [Problem(rel, f"not valid YAML: {_yaml_problem(exc)}", _yaml_line(exc))]
    people = data.get("people") if isinstance(data, dict) else data
    if not isinstance(people, list):
        return [], [Problem(rel, "must hold a list of people under `people:`, each with id, name and team.")]
    experts: list[Expert] = []
    problems: list[Problem] = []
    entry_lines = _sequence_lines(text)
    seen: set[str] = set()
    for index, entry in enumerate(people):
        line = entry_lines[index] if index < len(entry_lines) else None
        try:
            expert = _expert_from_dict(entry)
        except FileProblem as exc:
            problems.append(Problem(rel, f"person #{index + 1}: {exc}", line))
            continue
        if expert.id in seen:
            problems.append(Problem(rel, f"person #{index + 1}: id {expert.id} appears twice", line))
            continue
        seen.add(expert.id)
        experts.append(expert)
    return experts, problems


def _sequence_lines(text: str) -> list[int]:
    """The 1-based line where each person of the roster starts, from the YAML node marks."""
    try:
        node = yaml.compose(text)
    except yaml.YAMLError:
        return []
    if isinstance(node, yaml.MappingNode):
        node = next((v for k, v in node.value if getattr(k, "value", None) == "people"), None)
    if not isinstance(node, yaml.SequenceNode):
        return []
    return [item.start_mark.line + 1 for item in node.value]


def _expert_from_dict(entry: Any) -> Expert:
    if not isinstance(entry, dict):
        raise FileProblem("must be a mapping with id, name, team, skills, services, timezone")
    for key in entry:
        if key not in EXPERT_FIELDS:
            close = difflib.get_close_matches(str(key), EXPERT_FIELDS, n=1)
            hint = f"; did you mean `{close[0]}`?" if close else f"; known fields: {', '.join(EXPERT_FIELDS)}"
            raise FileProblem(f"unknown field `{key}`{hint}")
    missing = [k for k in ("id", "name", "team") if not entry.get(k)]
    if missing:
        raise FileProblem(f"missing {', '.join(missing)}")
    uid = str(entry["id"]).strip()
    if not SLACK_USER_ID.match(uid):
        raise FileProblem(f"id {uid!r} is not a Slack user id (like U04C2RN8VD: U or W, then capitals and digits)")
    tz = str(entry.get("timezone") or "UTC")
    try:
        ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError):
        raise FileProblem(f"timezone {tz!r} is not an IANA time zone such as Europe/London") from None
    hours = str(entry.get("hours") or "")
    if hours and not HOURS.match(hours):
        raise FileProblem(f"hours {hours!r} must look like 09:00-17:30")
    return Expert(
        id=uid,
        name=str(entry["name"]),
        team=str(entry["team"]),
        skills=_strings(entry.get("skills"), "skills"),
        services=_service_names(entry.get("services")),
        timezone=tz,
        hours=hours,
        away=bool(entry.get("away", False)),
        left=_left(entry.get("left")),
    )


def _left(value: Any) -> date | None:
    """``left: 2025-06-30``: the day someone left (YAML may already have read it as a date)."""
    if value in (None, ""):
        return None
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    try:
        return date.fromisoformat(str(value).strip())
    except ValueError:
        raise FileProblem(f"left {value!r} must be the day they left, such as 2025-06-30") from None


def parse_roster_rotations(rel: str, text: str, experts: list[Expert]) -> tuple[list, list[Problem]]:
    """The roster's ``rotations:``, each broken rota reported with its line (see bot.rota)."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError:
        return [], []  # parse_roster reported it
    if not isinstance(data, dict) or data.get("rotations") is None:
        return [], []
    rotations, problems = parse_rotations(data["rotations"], experts)
    root = _compose(text)
    return rotations, [
        Problem(rel, str(p), _path_line(root, p.key) or 1 + _key_line(text, "rotations")) for p in problems
    ]


# One rule for a service's name in every file (services.yaml, incidents, the roster and its rotations) and
# on every command line: letters, digits, '.', '_' and '-', with '/' between parts (checkout-api, storage/remote).
def _service_names(value: Any) -> tuple[str, ...]:
    names = _strings(value, "services")
    for name in names:
        if problem := service_name_problem(name):
            raise FileProblem(problem)
    return names


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
        data = yaml.safe_load(text) or {}
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


UNKNOWN_SHOWN = 5  # people named in the one-line summary of responders missing from the roster


def _check_responders(kb: KnowledgeBase) -> None:
    """One problem naming how many responders are not on the roster, and the first few, rather than one a file.

    Real history names people who have left: their incidents still count in statistics, and they are never suggested.
    """
    if not kb.experts:
        return
    unknown = unknown_responders(kb.experts, kb.incidents)
    if unknown:
        people = ", ".join(unknown[:UNKNOWN_SHOWN]) + (", ..." if len(unknown) > UNKNOWN_SHOWN else "")
        files = sum(1 for i in kb.incidents if any(r in set(unknown) for r in i.responders))
        kb.problems.append(
            Problem(
                "experts.yaml",
                f"{len(unknown)} responder(s) in {files} incident(s) are not on the roster ({people}); their "
                "incidents still count, but they are never suggested. Add whoever still helps to experts.yaml.",
            )
        )


def unknown_responders(experts: list[Expert], incidents: list[Incident]) -> list[str]:
    """Responders of ``incidents`` who are not on the roster, in order of first appearance."""
    known = {e.id for e in experts}
    return list(dict.fromkeys(r for i in incidents for r in i.responders if r not in known))
