"""Which service an alert group belongs to, and which channel it goes to: labels, then services.yaml."""

from __future__ import annotations

from dataclasses import dataclass

from bot.alert_config import ServiceAlerts
from bot.errors import InvalidRequest
from bot.ops.alert_payload import Notification

ROUTING_LABELS = ("service", "app", "job", "namespace")  # the labels whose value may name a service, in this order


class NoChannel(InvalidRequest):
    """No channel is configured for a group's alerts."""


@dataclass(frozen=True)
class Route:
    service: str  # "" when no service could be told
    channel: str
    why: str  # how the service was found, for the log and `opsbot alerts`


@dataclass(frozen=True)
class AlertRouting:
    """Which service an alert group belongs to, and which channel it goes to."""

    matches: tuple[ServiceAlerts, ...]  # services.yaml `alerts: {match: ...}`, most specific first
    known: frozenset[str]  # service names labels may name
    channels: dict[str, str]  # a service's own channel (its `alerts.channel`, else its `channel`)
    default_channel: str  # settings.alerts_channel

    def route(self, notification: Notification) -> Route:
        """The service the labels name, then that service's channel, else settings.alerts_channel."""
        service, why = self.service_of(notification)
        channel = self.channels.get(service, "") or self.default_channel
        if not channel:
            about = f"alerts of {service}" if service else "alerts of no known service"
            raise NoChannel(
                f"no channel for {about}: set settings.alerts_channel in services.yaml (or a channel for the "
                "service), run `opsbot index`, and Alertmanager's next delivery will be posted."
            )
        return Route(service, channel, why)

    def service_of(self, notification: Notification) -> tuple[str, str]:
        # The group's own labels speak for all its alerts; else the first firing alert's labels.
        label_sets = [notification.group_labels | notification.common_labels]
        label_sets += [a.labels for a in sorted(notification.alerts, key=lambda a: not a.firing)]
        for labels in label_sets:
            service, why, _ = self.named_by(labels)
            if service:
                return service, why
        return "", "no label names a known service"

    def named_by(self, labels: dict[str, str]) -> tuple[str, str, dict[str, str]]:
        """The service one set of labels names, how, and the labels that name it ("", "", {} when none does)."""
        for entry in self.matches:
            if all(labels.get(k) == v for k, v in entry.match.items()):
                return entry.service, f"alerts.match of {entry.service}", dict(entry.match)
        for name in ROUTING_LABELS:
            value = labels.get(name, "")
            if value in self.known:
                return value, f"label {name}={value}", {name: value}
        return "", "", {}
