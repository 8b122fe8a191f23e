"""services.yaml for deploys: environments, approvals, freezes and runners, validated with the key that is wrong."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from bot.text import parse_date

PLACEHOLDERS = ("service", "version", "env", "request_id", "python")
SAFE_VALUE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$")
DEFAULT_VERSION_PATTERN = r"^v?\d+\.\d+\.\d+([.-][A-Za-z0-9.]+)?$"


class ConfigProblem(ValueError):
    """One wrong key in services.yaml."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key


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


@dataclass(frozen=True)
class Freeze:
    start: datetime
    end: datetime
    reason: str = ""


@dataclass(frozen=True)
class Environment:
    name: str
    approvals: int
    approvers: tuple[str, ...]  # roster ids or team names
    freezes: tuple[Freeze, ...] = ()

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


DAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")


@dataclass(frozen=True)
class Digest:
    """Post the DORA figures of every deployable service once a week."""

    channel: str
    day: int  # 0 = Monday
    time: str  # HH:MM, local to ``timezone``
    timezone: str = "UTC"
    env: str = "prod"


def _digest(data: Any) -> Digest | None:
    if data is None:
        return None
    key = "settings.weekly_digest"
    if not isinstance(data, dict) or not data.get("channel"):
        raise ConfigProblem(key, "needs channel: (a channel id), and optionally day:, time:, timezone:, env:")
    day = str(data.get("day", "monday")).lower()
    if day not in DAYS:
        raise ConfigProblem(f"{key}.day", f"{day!r} must be a day of the week, such as monday")
    at = str(data.get("time", "09:00"))
    if not re.fullmatch(r"([01]\d|2[0-3]):[0-5]\d", at):
        raise ConfigProblem(f"{key}.time", f"{at!r} must look like 09:00")
    tz = str(data.get("timezone", "UTC"))
    try:
        from zoneinfo import ZoneInfo

        ZoneInfo(tz)
    except Exception:
        raise ConfigProblem(f"{key}.timezone", f"{tz!r} is not an IANA time zone such as Europe/London") from None
    return Digest(str(data["channel"]), DAYS.index(day), at, tz, str(data.get("env", "prod")))


def parse_service(name: str, entry: dict) -> ServiceConfig | None:
    """A service's deploy settings, or None when it has none (owners only). Raises ConfigProblem."""
    if "environments" not in entry and "deploy" not in entry:
        return None
    key = f"services.{name}"
    envs_raw = entry.get("environments")
    if not isinstance(envs_raw, dict) or not envs_raw:
        raise ConfigProblem(f"{key}.environments", "must map environment names (staging, prod) to their settings")
    environments = {str(env): _environment(f"{key}.environments.{env}", str(env), cfg) for env, cfg in envs_raw.items()}
    pattern = str(entry.get("version_pattern") or DEFAULT_VERSION_PATTERN)
    try:
        re.compile(pattern)
    except re.error as exc:
        raise ConfigProblem(f"{key}.version_pattern", f"is not a valid regular expression ({exc})") from None
    if "deploy" not in entry:
        raise ConfigProblem(f"{key}.deploy", "is missing: give a command (argv list) or a webhook")
    deploy = _runner(f"{key}.deploy", entry["deploy"])
    rollback = _runner(f"{key}.rollback", entry["rollback"]) if entry.get("rollback") else None
    channel = str(entry.get("channel") or "")
    return ServiceConfig(name, tuple(entry.get("owners") or ()), environments, deploy, rollback, pattern, channel)


def parse_settings(data: Any) -> DeploySettings:
    if data is None:
        return DeploySettings()
    if not isinstance(data, dict):
        raise ConfigProblem("settings", "must be a mapping (deploys_channel, request_ttl_minutes, ...)")
    return DeploySettings(
        channel=str(data.get("deploys_channel") or ""),
        request_ttl_minutes=_positive(data.get("request_ttl_minutes", 30), "settings.request_ttl_minutes"),
        failure_window_hours=_positive(data.get("failure_window_hours", 24), "settings.failure_window_hours"),
        stale_ci_hours=_positive(data.get("stale_ci_hours", 6), "settings.stale_ci_hours"),
        digest=_digest(data.get("weekly_digest")),
    )


def _positive(value: Any, key: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigProblem(key, f"{value!r} must be a whole number of 1 or more")
    return value


def _environment(key: str, name: str, cfg: Any) -> Environment:
    if not isinstance(cfg, dict):
        raise ConfigProblem(key, "must be a mapping with approvals: and approvers:")
    approvals = _positive(cfg.get("approvals", 1), f"{key}.approvals")
    approvers = cfg.get("approvers")
    if not isinstance(approvers, list) or not approvers or not all(isinstance(a, str) for a in approvers):
        raise ConfigProblem(
            f"{key}.approvers", "must list roster ids or team names, for example [payments, U08P1CK3XQ]"
        )
    freezes = []
    for n, f in enumerate(cfg.get("freeze") or []):
        fkey = f"{key}.freeze[{n}]"
        if not isinstance(f, dict):
            raise ConfigProblem(fkey, "must have start: and end: (ISO 8601 times) and an optional reason:")
        start, end = _time(f.get("start"), f"{fkey}.start"), _time(f.get("end"), f"{fkey}.end")
        if end <= start:
            raise ConfigProblem(fkey, "end must be after start")
        freezes.append(Freeze(start, end, str(f.get("reason") or "")))
    return Environment(name, approvals, tuple(approvers), tuple(freezes))


def _time(value: Any, key: str) -> datetime:
    parsed = parse_date(value) if value is not None else None
    if parsed is None:
        raise ConfigProblem(key, f"{value!r} is not an ISO 8601 time such as 2026-12-24T00:00:00Z")
    return parsed


def _runner(key: str, cfg: Any) -> Runner:
    if not isinstance(cfg, dict):
        raise ConfigProblem(key, "must have command: [argv...] or webhook: {url: ...}")
    timeout = _positive(cfg.get("timeout", 600), f"{key}.timeout")
    if "command" in cfg:
        argv = cfg["command"]
        if not isinstance(argv, list) or not argv or not all(isinstance(a, str) for a in argv):
            raise ConfigProblem(f"{key}.command", "must be a list of arguments, run without a shell")
        for arg in argv:
            for name in re.findall(r"{(\w*)}", arg):
                if name not in PLACEHOLDERS:
                    raise ConfigProblem(f"{key}.command", f"unknown placeholder {{{name}}}; use {PLACEHOLDERS}")
        return Runner("command", tuple(argv), timeout)
    if "webhook" in cfg:
        hook = cfg["webhook"]
        if not isinstance(hook, dict) or not str(hook.get("url", "")).startswith(("https://", "http://")):
            raise ConfigProblem(f"{key}.webhook.url", "must be an http(s) URL")
        return Runner(
            "webhook",
            (),
            timeout,
            str(hook["url"]),
            dict(hook.get("body") or {}),
            str(hook.get("secret_header") or ""),
            str(hook.get("secret_env") or ""),
        )
    raise ConfigProblem(key, "needs command: [argv...] or webhook: {url: ...}")
