"""services.yaml for deploys: environments, approvals, freezes, emergency rules and runners.

Every check appends a ``ConfigProblem`` naming the key at fault instead of stopping at the first one, so one run
of `opsbot check` reports everything that is wrong; ``parse_service`` and ``parse_settings`` raise the first.
"""

from __future__ import annotations

import difflib
import json
import re
import string
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

from bot.text import parse_date
from bot.yaml_lines import real_date_problem

PLACEHOLDERS = ("service", "version", "env", "request_id", "python")
WEBHOOK_PLACEHOLDERS = ("service", "version", "env", "request_id")  # a webhook body has no {python}
SAFE_VALUE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$")
DEFAULT_VERSION_PATTERN = r"^v?\d+\.\d+\.\d+([.-][A-Za-z0-9.]+)?$"

# The keys each part of services.yaml may have, so that a misspelt one is named as such. `alerts` and the
# alert settings belong to the alert intake; they are listed here so that a typo next to them is caught too.
SERVICE_KEYS = ("owners", "team", "channel", "version_pattern", "environments", "deploy", "rollback", "alerts")
ENVIRONMENT_KEYS = ("approvals", "approvers", "freeze", "emergency")
FREEZE_KEYS = ("start", "end", "reason")
EMERGENCY_KEYS = ("rollback_approvals", "while_incident")
RUNNER_KEYS = ("command", "webhook", "timeout")
HOURS_IN_A_YEAR = 24 * 365  # the most a duration setting may be
MINUTES_IN_A_YEAR = 60 * HOURS_IN_A_YEAR
WEBHOOK_KEYS = ("url", "body", "secret_header", "secret_env", "await_report")
SETTINGS_KEYS = (
    "deploys_channel",
    "request_ttl_minutes",
    "failure_window_hours",
    "stale_ci_hours",
    "weekly_digest",
    "incident_env",
    "alerts_channel",
    "alertmanager_urls",
    "alert_silencers",
)
DIGEST_KEYS = ("channel", "day", "time", "timezone", "env")
EMERGENCY_SEVERITIES = (1, 2)  # an emergency rule without while_incident: an open SEV1 or SEV2


class ConfigProblem(ValueError):
    """One wrong key in services.yaml; ``at`` is the key path whose line shows it (``key`` unless given)."""

    def __init__(self, key: str, message: str, at: str = "") -> None:
        super().__init__(f"{key}: {message}")
        self.key = key
        self.at = at or key


Problems = list[ConfigProblem]
T = TypeVar("T")


def first_problem_raised(build: Callable[[Problems], T]) -> T:
    """What ``build`` makes while it gathers every problem in the list it is given, or the first problem raised:
    for a reader that wants a value or one reason (``opsbot check`` reports them all)."""
    out: Problems = []
    made = build(out)
    if out:
        raise out[0]
    return made


@dataclass(frozen=True)
class Runner:
    """How a deploy or rollback runs: a command (argv, no shell) or a webhook to a CI/CD system."""

    kind: str  # "command" | "webhook"
    argv: tuple[str, ...] = ()
    timeout: int = 600
    url: str = ""
    body: dict = field(default_factory=dict)
    secret_header: str = ""
    secret_env: str = ""
    await_report: bool = False  # a webhook's pipeline sends {request_id} back: the lock is held until it reports


@dataclass(frozen=True)
class Freeze:
    start: datetime
    end: datetime
    reason: str = ""


@dataclass(frozen=True)
class Emergency:
    """Fewer approvals for a rollback while an incident of one of ``severities`` is open on the service."""

    rollback_approvals: int
    severities: tuple[int, ...] = EMERGENCY_SEVERITIES


@dataclass(frozen=True)
class Environment:
    name: str
    approvals: int
    approvers: tuple[str, ...]  # roster ids or team names
    freezes: tuple[Freeze, ...] = ()
    emergency: Emergency | None = None

    def frozen_at(self, when: datetime) -> Freeze | None:
        return next((f for f in self.freezes if f.start <= when < f.end), None)


@dataclass(frozen=True)
class ServiceConfig:
    name: str
    owners: tuple[str, ...]
    environments: dict[str, Environment]
    deploy: Runner
    rollback: Runner | None = None
    version_pattern: str = DEFAULT_VERSION_PATTERN
    channel: str = ""


@dataclass(frozen=True)
class DeploySettings:
    channel: str = ""  # where every deploy summary is posted, besides the request's thread
    request_ttl_minutes: int = 30
    failure_window_hours: int = 24  # an incident this soon after a deploy counts against it
    stale_ci_hours: int = 6  # a CI deploy that started and sent no end within this long is abandoned
    digest: Digest | None = None  # a weekly DORA digest, when configured
    incident_env: str = "prod"  # the environment an incident hit when its declaration names none


DAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")


@dataclass(frozen=True)
class Digest:
    """Post the DORA figures of every deployable service once a week."""

    channel: str
    day: int  # 0 = Monday
    time: str  # HH:MM, local to ``timezone``
    timezone: str = "UTC"
    env: str = "prod"


def unknown_keys(key: str, data: dict, known: tuple[str, ...], out: Problems) -> set[str]:
    """Report each key of ``data`` that is not ``known``, with the closest known one; returns the ones suggested."""
    suggested = set()
    for name in data:
        if name in known:
            continue
        close = difflib.get_close_matches(str(name), known, n=1)
        if close:
            suggested.add(close[0])
        hint = f"did you mean `{close[0]}`?" if close else f"known keys: {', '.join(known)}"
        out.append(ConfigProblem(key, f"unknown key `{name}`; {hint}", at=f"{key}.{name}"))
    return suggested


def _digest(data: Any, out: Problems, production: str = "prod") -> Digest | None:
    if data is None:
        return None
    key = "settings.weekly_digest"
    if not isinstance(data, dict) or not data.get("channel"):
        out.append(ConfigProblem(key, "needs channel: (a channel id), and optionally day:, time:, timezone:, env:"))
        return None
    before = len(out)
    unknown_keys(key, data, DIGEST_KEYS, out)
    day = str(data.get("day", "monday")).lower()
    if day not in DAYS:
        out.append(ConfigProblem(f"{key}.day", f"{day!r} must be a day of the week, such as monday"))
    raw = data.get("time", "09:00")
    at = str(raw)
    if isinstance(raw, (int, float)) and not isinstance(raw, bool):
        # YAML 1.1 reads an unquoted 10:00 as 600, minutes in base 60: say so rather than show a 600 nobody wrote.
        # 9 is an hour, 10:00 is 600 (minutes), 10:00:00 is 36000 (seconds); anything else: the default's example
        if isinstance(raw, int) and 0 <= raw < 24:
            hours, minutes = raw, 0
        elif isinstance(raw, int) and 60 <= raw < 24 * 60:
            hours, minutes = divmod(raw, 60)
        elif isinstance(raw, int) and 3600 <= raw < 24 * 3600:
            hours, minutes = raw // 3600, raw % 3600 // 60
        else:
            hours, minutes = 9, 0
        out.append(
            ConfigProblem(
                f"{key}.time",
                f"{raw!r} is a number: YAML reads an unquoted time such as 10:00 as 600 (minutes, in base 60); "
                f'quote it, as in time: "{hours:02}:{minutes:02}"',
            )
        )
    elif not re.fullmatch(r"([01]\d|2[0-3]):[0-5]\d", at):
        out.append(ConfigProblem(f"{key}.time", f"{at!r} must look like 09:00"))
    tz = str(data.get("timezone", "UTC"))
    try:
        from zoneinfo import ZoneInfo

        ZoneInfo(tz)
    except Exception:
        out.append(ConfigProblem(f"{key}.timezone", f"{tz!r} is not an IANA time zone such as Europe/London"))
    if len(out) > before:
        return None
    return Digest(str(data["channel"]), DAYS.index(day), at, tz, str(data.get("env") or production))


def parse_service(name: str, entry: dict) -> ServiceConfig | None:
    """A service's deploy settings, or None when it has none (owners only). Raises the first ConfigProblem."""
    return first_problem_raised(lambda out: build_service(name, entry, out))


def build_service(name: str, entry: dict, out: Problems) -> ServiceConfig | None:
    """A service's deploy settings; None when it has none or when something is wrong (each problem in ``out``)."""
    key = f"services.{name}"
    before = len(out)
    suggested = unknown_keys(key, entry, SERVICE_KEYS, out)
    if "environments" not in entry and "deploy" not in entry:
        return None
    environments = {}
    envs_raw = entry.get("environments")
    if isinstance(envs_raw, dict) and envs_raw:
        for env, cfg in envs_raw.items():
            environment = _environment(f"{key}.environments.{env}", str(env), cfg, out)
            if environment is not None:
                environments[str(env)] = environment
    elif "environments" in entry or "environments" not in suggested:  # a misspelt key is named once, above
        out.append(ConfigProblem(f"{key}.environments", "must map environment names (staging, prod) to their settings"))
    pattern = str(entry.get("version_pattern") or DEFAULT_VERSION_PATTERN)
    try:
        re.compile(pattern)
    except re.error as exc:
        out.append(ConfigProblem(f"{key}.version_pattern", f"is not a valid regular expression ({exc})"))
    deploy = None
    if "deploy" in entry:
        deploy = _runner(f"{key}.deploy", entry["deploy"], out)
    elif "deploy" not in suggested:
        out.append(ConfigProblem(f"{key}.deploy", "is missing: give a command (argv list) or a webhook"))
    rollback = _runner(f"{key}.rollback", entry["rollback"], out) if entry.get("rollback") else None
    if len(out) > before or deploy is None:
        return None
    channel = str(entry.get("channel") or "")
    owners = entry.get("owners")  # a wrong value is reported with the owners of every service (services_file)
    owned = tuple(str(o) for o in owners) if isinstance(owners, list) else ()
    return ServiceConfig(name, owned, environments, deploy, rollback, pattern, channel)


def parse_settings(data: Any) -> DeploySettings:
    """The `settings:` block; raises the first ConfigProblem."""
    return first_problem_raised(lambda out: build_settings(data, out))


def build_settings(data: Any, out: Problems) -> DeploySettings:
    """The `settings:` block, each wrong key in ``out`` (and its default used)."""
    if data is None:
        return DeploySettings()
    if not isinstance(data, dict):
        out.append(ConfigProblem("settings", "must be a mapping (deploys_channel, request_ttl_minutes, ...)"))
        return DeploySettings()
    unknown_keys("settings", data, SETTINGS_KEYS, out)
    incident_env = _env_name(data.get("incident_env", "prod"), "settings.incident_env", out)
    return DeploySettings(
        channel=str(data.get("deploys_channel") or ""),
        request_ttl_minutes=_positive(
            data.get("request_ttl_minutes", 30), "settings.request_ttl_minutes", out, 30, MINUTES_IN_A_YEAR
        ),
        failure_window_hours=_positive(
            data.get("failure_window_hours", 24), "settings.failure_window_hours", out, 24, HOURS_IN_A_YEAR
        ),
        stale_ci_hours=_positive(data.get("stale_ci_hours", 6), "settings.stale_ci_hours", out, 6, HOURS_IN_A_YEAR),
        digest=_digest(data.get("weekly_digest"), out, incident_env),  # its figures: incidents' environment
        incident_env=incident_env,
    )


def _env_name(value: Any, key: str, out: Problems) -> str:
    if not isinstance(value, str) or not re.fullmatch(r"[A-Za-z0-9][\w-]*", value):
        out.append(ConfigProblem(key, f"{value!r} must be an environment name such as prod"))
        return "prod"
    return value


def _positive(value: Any, key: str, out: Problems, default: int = 1, most: int | None = None) -> int:
    """A whole number of 1 or more (and at most ``most``: a duration beyond it would reach past the calendar)."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        out.append(ConfigProblem(key, f"{value!r} must be a whole number of 1 or more"))
        return default
    if most is not None and value > most:
        out.append(ConfigProblem(key, f"{value!r} must be a whole number from 1 to {most:,} (a year)"))
        return default
    return value


def _environment(key: str, name: str, cfg: Any, out: Problems) -> Environment | None:
    if not isinstance(cfg, dict):
        out.append(ConfigProblem(key, "must be a mapping with approvals: and approvers:"))
        return None
    before = len(out)
    suggested = unknown_keys(key, cfg, ENVIRONMENT_KEYS, out)
    approvals = _positive(cfg.get("approvals", 1), f"{key}.approvals", out)
    approvers = cfg.get("approvers")
    if not isinstance(approvers, list) or not approvers or not all(isinstance(a, str) for a in approvers):
        if "approvers" in cfg or "approvers" not in suggested:
            message = "must list roster ids or team names, for example [payments, U08P1CK3XQ]"
            out.append(ConfigProblem(f"{key}.approvers", message))
        approvers = []
    freezes = []
    listed = cfg.get("freeze") or []
    if not isinstance(listed, list):
        example = "[{start: 2026-12-24T00:00, end: 2026-12-27T00:00, reason: holidays}]"
        out.append(ConfigProblem(f"{key}.freeze", f"must be a list of freezes, each with start: and end:, {example}"))
        listed = []
    for n, f in enumerate(listed):
        fkey = f"{key}.freeze[{n}]"
        if not isinstance(f, dict):
            out.append(ConfigProblem(fkey, "must have start: and end: (ISO 8601 times) and an optional reason:"))
            continue
        unknown_keys(fkey, f, FREEZE_KEYS, out)
        start, end = _time(f.get("start"), f"{fkey}.start", out), _time(f.get("end"), f"{fkey}.end", out)
        if start is None or end is None:
            continue
        if end <= start:
            out.append(ConfigProblem(fkey, "end must be after start"))
        freezes.append(Freeze(start, end, str(f.get("reason") or "")))
    emergency = _emergency(f"{key}.emergency", cfg["emergency"], approvals, out) if "emergency" in cfg else None
    if len(out) > before:
        return None
    return Environment(name, approvals, tuple(approvers), tuple(freezes), emergency)


def severity_number(value: Any) -> int | None:
    """1 to 4 from SEV1, sev-2, 3 ...; None when it is not a severity."""
    text = str(value).strip().upper().removeprefix("SEV").removeprefix("-").strip()
    return int(text) if text in ("1", "2", "3", "4") else None


def _emergency(key: str, data: Any, approvals: int, out: Problems) -> Emergency | None:
    if not isinstance(data, dict):
        example = "{rollback_approvals: 1, while_incident: [SEV1, SEV2]}"
        out.append(ConfigProblem(key, f"must be a mapping such as {example}"))
        return None
    before = len(out)
    unknown_keys(key, data, EMERGENCY_KEYS, out)
    count = _positive(data.get("rollback_approvals", 1), f"{key}.rollback_approvals", out)
    if len(out) == before and count >= approvals:
        out.append(
            ConfigProblem(
                f"{key}.rollback_approvals",
                f"{count} must be fewer than the environment's approvals ({approvals}), else the rule changes nothing",
            )
        )
    raw = data.get("while_incident", [f"SEV{s}" for s in EMERGENCY_SEVERITIES])
    severities = [severity_number(s) for s in raw] if isinstance(raw, list) else []
    if not severities or None in severities:
        out.append(ConfigProblem(f"{key}.while_incident", f"{raw!r} must list severities, for example [SEV1, SEV2]"))
    if len(out) > before:
        return None
    return Emergency(count, tuple(sorted({s for s in severities if s is not None})))


def _time(value: Any, key: str, out: Problems) -> datetime | None:
    parsed = parse_date(value) if value is not None else None
    if parsed is None and (unreal := real_date_problem(value)):
        example = "write one such as 2026-12-24T00:00:00Z"
        out.append(ConfigProblem(key, f"{value!r} is not a real date ({unreal}); {example}"))
    elif parsed is None:
        out.append(ConfigProblem(key, f"{value!r} is not an ISO 8601 time such as 2026-12-24T00:00:00Z"))
    return parsed


def _runner(key: str, cfg: Any, out: Problems) -> Runner | None:
    if not isinstance(cfg, dict):
        out.append(ConfigProblem(key, "must have command: [argv...] or webhook: {url: ...}"))
        return None
    before = len(out)
    unknown_keys(key, cfg, RUNNER_KEYS, out)
    timeout = _positive(cfg.get("timeout", 600), f"{key}.timeout", out, 600)
    runner = None
    if "command" in cfg:
        argv = cfg["command"]
        if not isinstance(argv, list) or not argv or not all(isinstance(a, str) for a in argv):
            out.append(ConfigProblem(f"{key}.command", "must be a list of arguments, run without a shell"))
            return None
        for n, arg in enumerate(argv, start=1):
            why = placeholder_problem(arg, PLACEHOLDERS)
            if "\0" in arg:
                why = f"argument {n} holds a NUL character (\\0), which no command can be given; remove it"
            if why:
                out.append(ConfigProblem(f"{key}.command", why))
        runner = Runner("command", tuple(argv), timeout)
    elif "webhook" in cfg:
        hook = cfg["webhook"]
        if not isinstance(hook, dict) or not str(hook.get("url", "")).startswith(("https://", "http://")):
            out.append(ConfigProblem(f"{key}.webhook.url", "must be an http(s) URL"))
            return None
        unknown_keys(f"{key}.webhook", hook, WEBHOOK_KEYS, out)
        body = _webhook_body(f"{key}.webhook.body", hook.get("body") or {}, out)
        await_report = _await_report(f"{key}.webhook", hook, body, out)
        runner = Runner(
            "webhook",
            (),
            timeout,
            str(hook["url"]),
            body,
            str(hook.get("secret_header") or ""),
            str(hook.get("secret_env") or ""),
            await_report,
        )
    else:
        out.append(ConfigProblem(key, "needs command: [argv...] or webhook: {url: ...}"))
    return runner if len(out) == before else None


def _await_report(key: str, hook: dict, body: dict, out: Problems) -> bool:
    """Whether the pipeline reports back (``await_report: true``); it can only when the body sends {request_id}."""
    value = hook.get("await_report", False)
    if not isinstance(value, bool):
        out.append(ConfigProblem(f"{key}.await_report", f"{value!r} must be true or false"))
        return False
    if value and not any(_sends_request_id(text) for _, text in template_strings(body, f"{key}.body")):
        out.append(
            ConfigProblem(
                f"{key}.await_report",
                "is true, but the body never sends {request_id}, so the pipeline could not name the request it "
                'reports on: add it to the body, such as {request_id: "{request_id}"}',
            )
        )
        return False
    return value


def _sends_request_id(text: str) -> bool:
    try:
        return any(name == "request_id" for _, name, _, _ in string.Formatter().parse(text))
    except ValueError:  # reported as the body's own problem
        return False


def _webhook_body(key: str, body: Any, out: Problems) -> dict:
    """The body a webhook posts as JSON; each value it fills in is checked the way a command's arguments are."""
    if not isinstance(body, dict):
        out.append(ConfigProblem(key, 'must be a mapping, sent as JSON, such as {ref: "{version}"}'))
        return {}
    try:
        json.dumps(body)
    except (TypeError, ValueError) as exc:  # a YAML date or time: quote it
        out.append(ConfigProblem(key, f"cannot be sent as JSON ({exc}); quote dates and times"))
        return {}
    for at, text in template_strings(body, key):
        why = placeholder_problem(text, WEBHOOK_PLACEHOLDERS)
        if why:
            out.append(ConfigProblem(at, why))
    return dict(body)


def placeholder_problem(text: str, allowed: tuple[str, ...]) -> str | None:
    """Why ``text`` cannot be filled in with the ``allowed`` placeholders, or None when it can."""
    try:
        for _, name, _, _ in string.Formatter().parse(text):
            if name is not None and name not in allowed:
                return f"unknown placeholder {{{name}}}; use {allowed}"
        text.format_map(dict.fromkeys(allowed, "x"))  # what parsing alone misses: a placeholder inside a format spec
    except KeyError as exc:
        return f"unknown placeholder {{{exc.args[0]}}}; use {allowed}"
    except (ValueError, IndexError, AttributeError, TypeError) as exc:
        return f"{text!r} cannot be filled in ({exc}); write a brace that is not a placeholder twice: {{{{ or }}}}"
    return None


def fill_in(text: str, values: dict[str, str], key: str) -> str:
    """``text`` with its placeholders filled in; raises ConfigProblem (at ``key``) naming what cannot be."""
    why = placeholder_problem(text, tuple(values))
    if why:
        raise ConfigProblem(key, why)
    return text.format_map(values)


def template_strings(value: Any, key: str) -> Iterator[tuple[str, str]]:
    """Each string of a webhook body, filled in when it is sent (a mapping's value or a list's item, at any depth),
    with its key path. Keys are sent as written."""
    if isinstance(value, dict):
        for name, item in value.items():
            yield from template_strings(item, f"{key}.{name}")
    elif isinstance(value, list):
        for n, item in enumerate(value):
            yield from template_strings(item, f"{key}[{n}]")
    elif isinstance(value, str):
        yield key, value


def fill_body(value: Any, values: dict[str, str], key: str = "body") -> Any:
    """A webhook body, the strings ``template_strings`` names filled in; raises ConfigProblem on one that cannot be."""
    if isinstance(value, dict):
        return {name: fill_body(item, values, f"{key}.{name}") for name, item in value.items()}
    if isinstance(value, list):
        return [fill_body(item, values, f"{key}[{n}]") for n, item in enumerate(value)]
    if isinstance(value, str):
        return fill_in(value, values, key)
    return value
