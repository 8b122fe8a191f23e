"""The alert keys of services.yaml: `settings.alerts_channel`, `alertmanager_urls`, `alert_silencers`, and a
service's `alerts: {match: {label: value}, channel: C...}` (see bot/ops/alert_routing.py for their use)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from bot.services import ConfigProblem, Problems, first_problem_raised


@dataclass(frozen=True)
class AlertSettings:
    """How Alertmanager notifications reach Slack: the `alerts_channel`, `alertmanager_urls` and `alert_silencers`
    of services.yaml's settings."""

    channel: str = ""  # alerts of a service without a channel of its own (and of no known service) go here
    alertmanager_urls: tuple[str, ...] = ()  # the only Alertmanagers opsbot calls (to create silences)
    silencers: tuple[str, ...] = ()  # roster ids or team names who may silence any alert, besides its approvers


@dataclass(frozen=True)
class ServiceAlerts:
    """A service's `alerts:` entry: the labels that mark its alerts, and where they go."""

    service: str
    match: dict[str, str]  # every label must have this value
    channel: str = ""  # overrides the service's channel for alerts


LABEL_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")  # Prometheus's rule for label names


def parse_alert_settings(data: Any) -> AlertSettings:
    """The alert keys of services.yaml's `settings:`; raises ConfigProblem naming the first wrong key."""
    return first_problem_raised(lambda out: build_alert_settings(data, out))


def build_alert_settings(data: Any, out: Problems) -> AlertSettings:
    """The alert keys of `settings:`, each wrong key in ``out`` (and that key left out), so that one slip is not
    reported alone while another hides behind it."""
    if not isinstance(data, dict):
        return AlertSettings()
    urls = data.get("alertmanager_urls") or []
    if not isinstance(urls, list) or not all(isinstance(u, str) for u in urls):
        example = "for example [http://alertmanager:9093]"
        out.append(ConfigProblem("settings.alertmanager_urls", f"must list Alertmanager base URLs, {example}"))
        urls = []
    wrong = [(n, url, problem) for n, url in enumerate(urls) if (problem := alertmanager_url_problem(url))]
    out += [ConfigProblem(f"settings.alertmanager_urls[{n}]", f"{url!r} {problem}") for n, url, problem in wrong]
    checked = [] if wrong else [url.rstrip("/") for url in urls]
    silencers = data.get("alert_silencers") or []
    if not isinstance(silencers, list) or not all(isinstance(s, str) and s for s in silencers):
        out.append(ConfigProblem("settings.alert_silencers", "must list roster ids or team names, for example [sre]"))
        silencers = []
    return AlertSettings(str(data.get("alerts_channel") or ""), tuple(checked), tuple(silencers))


def alertmanager_url_problem(url: str) -> str:
    """Why ``url`` cannot be an Alertmanager base URL opsbot calls, or "" when it can."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises on a port that is not a number
    except ValueError:
        return "is not a URL"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "must be an http:// or https:// URL with a host"
    if parts.username or parts.password:
        return "must not hold credentials (they would show in logs and messages)"
    if parts.query or parts.fragment:
        return "must be a base URL without ?query or #fragment"
    return ""


def parse_service_alerts(name: str, entry: dict) -> ServiceAlerts | None:
    """A service's `alerts: {match: {label: value}, channel: C...}`, or None without one. Raises ConfigProblem."""
    raw = entry.get("alerts")
    if raw is None:
        return None
    key = f"services.{name}.alerts"
    if not isinstance(raw, dict):
        raise ConfigProblem(key, "must be a mapping such as {match: {team: payments}}")
    match = raw.get("match") or {}
    if not isinstance(match, dict) or not match:
        raise ConfigProblem(f"{key}.match", "must map label names to values, for example {app: checkout}")
    for label, value in match.items():
        if not isinstance(label, str) or not LABEL_NAME.match(label):
            raise ConfigProblem(f"{key}.match", f"{label!r} is not a label name (letters, digits and _)")
        if not isinstance(value, str | int | float) or isinstance(value, bool) or str(value) == "":
            raise ConfigProblem(f"{key}.match.{label}", f"{value!r} must be a label value (quote it in YAML)")
    channel = raw.get("channel") or ""
    if not isinstance(channel, str):
        raise ConfigProblem(f"{key}.channel", "must be a channel id such as C04ALERTS1")
    return ServiceAlerts(name, {str(k): str(v) for k, v in match.items()}, channel)


def alert_problems(
    settings: Any, services: dict[str, Any]
) -> tuple[Problems, dict[str, Problems], dict[str, Problems]]:
    """Everything wrong with the alert keys: (problems of `settings:`, problems by service name that leave the
    service out, problems by service name that do not)."""
    found: Problems = []
    build_alert_settings(settings, found)
    by_service: dict[str, Problems] = {}
    matches: list[ServiceAlerts] = []
    for name, entry in services.items():
        if isinstance(entry, dict):
            try:
                alerts = parse_service_alerts(str(name), entry)
            except ConfigProblem as exc:
                by_service[str(name)] = [exc]
                continue
            matches += [alerts] if alerts else []
    return found, by_service, same_match_problems(matches)


def same_match_problems(matches: list[ServiceAlerts]) -> dict[str, Problems]:
    """Services whose `alerts.match` is another's, label for label: routing takes the first of them by name, so
    the others never get an alert of theirs (a match copied from another service and not changed)."""
    by_labels: dict[frozenset, list[str]] = {}
    for alerts in matches:
        by_labels.setdefault(frozenset(alerts.match.items()), []).append(alerts.service)
    found: dict[str, Problems] = {}
    for labels, names in by_labels.items():
        first, *others = sorted(names)
        written = "{" + ", ".join(f"{label}: {value}" for label, value in sorted(labels)) + "}"
        for name in others:
            why = (
                f"{written} is also the match of {first}, so an alert with these labels goes to {first} (the first "
                f"by name) and never to {name}; give each service labels of its own"
            )
            found[name] = [ConfigProblem(f"services.{name}.alerts.match", why)]
    return found
