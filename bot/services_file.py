"""services.yaml as one file: every problem of it at once, each with its key path and line.

Besides each service's own checks (``bot.services``), the approvers of every environment are resolved against
the roster: a name that is neither a team nor a person on it is an error, and so is an environment whose
approvals nobody on the roster can give (its requests would wait until they expire). Owners, a service's team and
settings.alert_silencers must name someone on it too; those are reported and the service still loads.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import yaml

from bot.alert_config import alert_problems
from bot.knowledge_fields import squashed
from bot.models import Expert, Problem
from bot.services import ConfigProblem, Problems, build_service, build_settings
from bot.text import service_name_problem
from bot.yaml_lines import compose, key_line, load, path_line, yaml_error_line, yaml_problem

TOP_KEYS = ("settings", "services")  # besides x-... blocks that hold YAML anchors for `<<:` merges
DEFAULT_INCIDENT_ENV = "prod"
ENV_NAME = re.compile(r"[A-Za-z0-9][\w-]*")  # as build_settings checks it
PRODUCTION = re.compile(r"(prod|production|prd|live)([-_.][\w-]*)?", re.IGNORECASE)  # prod, production-eu, live


@dataclass
class ServicesFile:
    """What services.yaml holds that can be used, and everything wrong with it."""

    services: dict[str, dict] = field(default_factory=dict)  # the valid entries, by service name
    names: list[str] = field(default_factory=list)  # every service the file defines, valid entry or not
    settings: dict | None = None  # the `settings:` block without its wrong keys; None when it is no mapping
    problems: list[Problem] = field(default_factory=list)
    # every name given as a service's team or owner, an approver or an alert silencer: the teams it relies on
    named: set[str] = field(default_factory=set)
    failed: bool = False  # unreadable as a whole: nothing of it was used


def read_services_file(rel: str, text: str, experts: list[Expert] | None, now: datetime | None = None) -> ServicesFile:
    """Check all of services.yaml; ``experts`` is the roster (None when it could not be read: approvers unchecked)."""
    try:
        data = load(text) or {}  # dates as text: one that does not exist is a field's problem
    except yaml.YAMLError as exc:
        return ServicesFile(
            problems=[Problem(rel, f"not valid YAML: {yaml_problem(exc)}", yaml_error_line(exc))], failed=True
        )
    services = data.get("services") if isinstance(data, dict) else None
    if not isinstance(services, dict):
        problem = Problem(rel, "must hold `services:`, a mapping of service names to their settings", 1)
        return ServicesFile(problems=[problem], failed=True)
    root = compose(text)
    result = ServicesFile()

    def report(found: Problems, fallback: int | None) -> None:
        result.problems += [Problem(rel, str(p), path_line(root, p.at) or fallback) for p in found]

    top: Problems = []
    for name in data:
        if name not in TOP_KEYS and not str(name).startswith("x-"):
            close = difflib.get_close_matches(str(name), TOP_KEYS, n=1)
            hint = f"did you mean `{close[0]}`?" if close else "use settings:, services: (and x-... blocks for anchors)"
            top.append(ConfigProblem(str(name), f"unknown top-level key; {hint}"))
    report(top, 1)
    settings_problems: Problems = []
    build_settings(data.get("settings"), settings_problems)
    alert_settings, service_alerts, shared_alerts = alert_problems(data.get("settings"), services)
    settings_problems += alert_settings
    report(settings_problems, 1 + key_line(text, "settings"))
    result.settings = usable_settings(data.get("settings"), settings_problems)
    if experts and isinstance(result.settings, dict):  # a wrong alert_silencers is a settings problem already
        silencers = result.settings.get("alert_silencers") or []
        report(silencer_problems(silencers, experts), 1 + key_line(text, "settings"))
    result.named = names_of_people(data.get("settings"), services)
    written_before: dict[str, tuple[str, int]] = {}  # each service by its squashed name: the first one written
    for name, entry in services.items():
        line = path_line(root, f"services.{name}") or 1 + key_line(text, str(name))
        found = service_problems(str(name), entry, experts, now or datetime.now(UTC))
        if found is None:  # the name itself is wrong
            result.problems.append(Problem(rel, str(service_name_problem(name)), line))
            continue
        result.names.append(str(name))
        found += service_alerts.get(str(name), [])
        report(found, line)
        if (same := written_before.setdefault(squashed(str(name)), (str(name), line))) != (str(name), line):
            report([same_name_problem(str(name), *same)], line)
        if not found:
            result.services[str(name)] = entry or {}
        report(shared_alerts.get(str(name), []), line)  # reported, and the service kept: it still deploys
        if experts is not None:  # reported, and the service kept: they do not decide who may deploy it
            report(roster_problems(str(name), entry, experts), line)
    environments = sorted({str(e) for entry in result.services.values() for e in _environments(entry)})
    given = data["settings"].get("incident_env") if isinstance(data.get("settings"), dict) else None
    if given is not None:
        report(incident_env_problems(given, environments), 1 + key_line(text, "settings"))
    elif environments and DEFAULT_INCIDENT_ENV not in environments:
        production = [e for e in environments if PRODUCTION.fullmatch(e)]
        if len(production) == 1:  # production and staging: incidents hit production unless declared otherwise
            result.settings = (result.settings or {}) | {"incident_env": production[0]}
    result.problems.sort(key=lambda p: p.line or 0)  # in the order of the file, as an editor shows it
    return result


def names_of_people(settings: Any, services: dict) -> set[str]:
    """The roster ids and team names services.yaml gives (owners, teams, approvers, alert silencers), as written."""
    given: list[Any] = []
    if isinstance(settings, dict) and isinstance(settings.get("alert_silencers"), list):
        given += settings["alert_silencers"]
    for entry in services.values():
        if not isinstance(entry, dict):
            continue
        owners = entry.get("owners")
        given += owners.split(",") if isinstance(owners, str) else owners if isinstance(owners, list) else []
        given.append(entry.get("team"))
        for env in _environments(entry):
            cfg = entry["environments"][env]
            approvers = cfg.get("approvers") if isinstance(cfg, dict) else None
            given += approvers if isinstance(approvers, list) else []
    return {name.strip() for name in given if isinstance(name, str) and name.strip()}


def same_name_problem(name: str, first: str, first_line: int) -> ConfigProblem:
    """``name`` written again in another case or with other separators: everything joins services by their exact
    name, so the two would be two services, each with its own approvals, lock and figures."""
    return ConfigProblem(
        f"services.{name}",
        f"differs from `{first}` (line {first_line}) only in case or separators, so opsbot takes them for two "
        "services, each with its own approvals, deploy lock and figures; write one name and merge the two entries",
    )


def usable_settings(settings: Any, problems: Problems) -> dict | None:
    """The `settings:` block without the keys ``problems`` name: a slip in one key (`stale_ci_hour`) costs that key
    its setting, not every other one (the alerts channel, the digest) with it. None when the block itself is wrong."""
    if not isinstance(settings, dict) or any(p.at == "settings" for p in problems):
        return None
    wrong = {
        key
        for key in settings
        for p in problems
        if p.at == f"settings.{key}" or p.at.startswith((f"settings.{key}.", f"settings.{key}["))
    }
    return {key: value for key, value in settings.items() if key not in wrong}


def incident_env_problems(given: Any, environments: list[str]) -> Problems:
    """settings.incident_env written out but no service's environment: every declaration without --env would
    name an environment the deploys never ran in, so DORA would never count it."""
    if not environments or not isinstance(given, str) or not ENV_NAME.fullmatch(given) or given in environments:
        return []  # a malformed value is reported by build_settings
    production = [e for e in environments if PRODUCTION.fullmatch(e)]
    hint = f"set it to {production[0]}" if len(production) == 1 else f"set it to one of {', '.join(environments)}"
    return [
        ConfigProblem(
            "settings.incident_env",
            f"{given!r} is no service's environment ({', '.join(environments)}); {hint}, the environment an "
            "incident hits when declared without --env",
        )
    ]


def _environments(entry: dict) -> list[str]:
    environments = entry.get("environments")
    return list(environments) if isinstance(environments, dict) else []


def service_problems(name: str, entry: Any, experts: list[Expert] | None, now: datetime) -> Problems | None:
    """Everything wrong with one service's entry ([] when nothing); None when its name is not a service name.

    ``entry["owners"]`` is normalised to a list (services.yaml accepts `owners: a, b` too).
    """
    if service_name_problem(name):
        return None
    key = f"services.{name}"
    if entry is None:
        return []
    if not isinstance(entry, dict):
        return [ConfigProblem(key, "must be a mapping with owners: and environments:")]
    out: Problems = []
    owners = entry.get("owners")
    if isinstance(owners, str):
        entry["owners"] = [o.strip() for o in owners.split(",") if o.strip()]
    elif owners is None:
        entry["owners"] = []
    elif not isinstance(owners, list) or not all(isinstance(o, (str, int)) for o in owners):
        out.append(ConfigProblem(f"{key}.owners", "must be a list of roster ids or team names, for example [payments]"))
    else:
        entry["owners"] = [str(o) for o in owners]
    build_service(name, entry, out)
    if experts is not None:
        out += approver_problems(name, entry, experts, now)
    return out


def approver_problems(name: str, entry: dict, experts: list[Expert], now: datetime) -> Problems:
    """Approvers that name nobody on the roster, and environments whose approvals nobody present can give.

    Read from the entry as written, so they are reported alongside any other problem of the same environment.
    """
    people = {e.id: e for e in experts if not e.has_left(now)}
    out: Problems = []
    environments = entry.get("environments")
    for env, cfg in environments.items() if isinstance(environments, dict) else ():
        approvers = cfg.get("approvers") if isinstance(cfg, dict) else None
        if not isinstance(approvers, list) or not all(isinstance(a, str) for a in approvers):
            continue  # reported by the environment's own checks
        approvals = cfg.get("approvals", 1)
        approvals = approvals if isinstance(approvals, int) and not isinstance(approvals, bool) else 1
        key = f"services.{name}.environments.{env}.approvers"
        can_approve: set[str] = set()
        for approver in approvers:
            if (nobody := nobody_problem(approver, experts)) is None:
                can_approve.update(p for p, e in people.items() if approver in (p, e.team))
            else:
                out.append(ConfigProblem(key, nobody))
        if not approvers or len(can_approve) >= approvals:
            continue
        if can_approve:
            names = ", ".join(sorted(people[p].name for p in can_approve))
            count = f"{len(can_approve)} {'person' if len(can_approve) == 1 else 'people'}"
            why = f"needs {approvals} approvals but only {count} on the roster may give them ({names})"
        else:
            why = f"nobody on the roster may approve {name} in {env}"
        out.append(ConfigProblem(key, f"{why}, so its requests could never run; name more teams or people"))
    return out


def nobody_problem(name: str, experts: list[Expert], consequence: str = "") -> str | None:
    """Why ``name``, a roster id or a team name, is nobody on the roster (then ``consequence``), with the closest
    team or id; None when it names someone."""
    teams = sorted({e.team for e in experts})
    if name in teams or any(e.id == name for e in experts):
        return None
    nobody = f"{name!r} is neither a team nor a person on the roster (experts.yaml){consequence}"
    if close := difflib.get_close_matches(name, teams, n=1):
        return f"{nobody}; did you mean `{close[0]}`?"
    names = {e.id: e.name for e in experts}
    if close := difflib.get_close_matches(name, sorted(names), n=1, cutoff=0.8):  # an id with a slip in it
        return f"{nobody}; did you mean `{close[0]}` ({names[close[0]]})?"
    return f"{nobody}; the roster's teams are {', '.join(teams) or 'none'}"


def silencer_problems(silencers: list[str], experts: list[Expert]) -> Problems:
    """settings.alert_silencers that name nobody on the roster: whoever was meant cannot silence an alert."""
    key = "settings.alert_silencers"
    return [
        ConfigProblem(key, nobody, f"{key}[{n}]")
        for n, name in enumerate(silencers)
        if (nobody := nobody_problem(name, experts, ", so whoever it means cannot silence alerts from Slack"))
    ]


def roster_problems(name: str, entry: Any, experts: list[Expert]) -> Problems:
    """A service's `owners` and `team` that name nobody on the roster: its ownership and its team's rota would count
    for nobody, without a word. The service still deploys: these decide who is suggested and on call, not who approves.
    """
    if not experts or not isinstance(entry, dict):
        return []  # no roster to name anyone: nothing can be told wrong
    key = f"services.{name}"
    out: Problems = []
    owners = entry.get("owners")
    for n, owner in enumerate(owners if isinstance(owners, list) else []):  # a wrong shape is reported already
        why = f", so it owns {name} for nobody: expert suggestions and rotas leave it out"
        if (nobody := nobody_problem(str(owner), experts, why)) is not None:
            out.append(ConfigProblem(f"{key}.owners", nobody, f"{key}.owners[{n}]"))
    team = entry.get("team")
    teams = sorted({e.team for e in experts})
    if team is not None and not isinstance(team, str):
        out.append(ConfigProblem(f"{key}.team", f"{team!r} must be one team of the roster, such as {teams[0]}"))
    elif team is not None and team not in teams:
        close = difflib.get_close_matches(team, teams, n=1)
        hint = f"did you mean `{close[0]}`?" if close else f"the roster's teams are {', '.join(teams)}"
        out.append(
            ConfigProblem(
                f"{key}.team",
                f"{team!r} is a team nobody on the roster (experts.yaml) belongs to, so no rota covers {name} "
                f"through it; {hint}",
            )
        )
    return out
