"""Alertmanager's webhook payload (version 4), checked field by field before anything is recorded.

A payload that is not what Alertmanager sends is refused with the field that is wrong and why
(``PayloadProblem``), so the endpoint can answer 400 with it and store nothing.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from bot.errors import InvalidRequest
from bot.ops.alertmanager import url_key
from bot.redact import scrub

STATUSES = ("firing", "resolved")
# Alerts kept of one delivery; the rest are counted as truncated, as Alertmanager's own max_alerts does. Refusing a
# larger group would lose it for good: Alertmanager does not retry a 4xx, so a storm would never reach Slack.
MAX_ALERTS = 1000
MAX_LABELS = 100  # per alert, and for each of groupLabels, commonLabels, commonAnnotations
MAX_NAME = 256  # a label or annotation name
MAX_VALUE = 8192  # a label or annotation value (descriptions can be long)
MAX_GROUP_KEY = 8192  # the route path and the grouping labels
MAX_TRUNCATED = 2**63 - 1  # Alertmanager's count is a uint64; SQLite's integers stop here
FINGERPRINT = re.compile(r"^[0-9A-Za-z]{1,64}$")  # Alertmanager's are 16 hex digits
ZERO_TIME_YEAR = 1  # Alertmanager's "0001-01-01T00:00:00Z": no end yet
SUMMARY_KEYS = ("summary", "title", "message")  # what annotation holds the one-line summary
DETAIL_KEYS = ("description", "message")


class Unauthorized(InvalidRequest):
    """A delivery without the configured bearer token."""


def verify_bearer(token: str, authorization: str | None) -> None:
    """Raise Unauthorized unless ``authorization`` is `Bearer <token>` (compared in constant time)."""
    if not authorization:
        raise Unauthorized(
            "no Authorization header: set http_config.authorization.credentials in Alertmanager's webhook_config "
            "to the value of OPSBOT_ALERTMANAGER_TOKEN."
        )
    scheme, _, given = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not given.strip():
        raise Unauthorized("the Authorization header must be `Bearer <token>` as Alertmanager's http_config sends it.")
    if not hmac.compare_digest(given.strip().encode("utf-8", "replace"), token.encode("utf-8")):
        raise Unauthorized("wrong token: it must equal OPSBOT_ALERTMANAGER_TOKEN on the opsbot server.")


class PayloadProblem(InvalidRequest):
    """The payload is not Alertmanager's webhook payload: ``field`` names the part that is wrong."""

    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(f"{field_name}: {message}")
        self.field = field_name


@dataclass(frozen=True)
class Alert:
    """One alert of a notification."""

    fingerprint: str
    status: str  # firing | resolved
    labels: dict[str, str]
    annotations: dict[str, str]
    starts_at: datetime
    ends_at: datetime | None  # None: Alertmanager sent its zero time (no end yet)
    generator_url: str = ""

    @property
    def firing(self) -> bool:
        return self.status == "firing"


@dataclass(frozen=True)
class Notification:
    """One delivery of an alert group: every alert the group holds now, with the group's labels."""

    status: str
    group_key: str
    receiver: str
    group_labels: dict[str, str]
    common_labels: dict[str, str]
    common_annotations: dict[str, str]
    external_url: str
    alerts: tuple[Alert, ...]
    truncated: int = 0
    extra: dict[str, Any] = field(default_factory=dict, compare=False)  # fields Alertmanager may add later

    @property
    def group_id(self) -> str:
        return group_id(self.group_key, self.external_url)

    @property
    def digest(self) -> str:
        """What makes a delivery new: the group's status, each alert's fingerprint, status and start (not
        annotations, whose values such as `$value` change at every evaluation, nor endsAt, which Alertmanager
        moves), and how many alerts were left out. An alert keeps its start while it fires: a later one is a new
        firing, even of a group whose resolve never arrived (`send_resolved: false`, or opsbot down when it was
        sent)."""
        states = sorted(f"{a.fingerprint}={a.status}@{a.starts_at.isoformat(timespec='seconds')}" for a in self.alerts)
        # only when some were: the digests of groups stored before the count was part of it stay the same
        cut = [f"truncated={self.truncated}"] if self.truncated else []
        return hashlib.sha256("\n".join([self.status, *states, *cut]).encode()).hexdigest()[:32]


def group_id(group_key: str, external_url: str = "") -> str:
    """A short, stable id for a groupKey (which can be long) of the Alertmanager at ``external_url``: what buttons
    carry. Two clusters whose Alertmanagers share a configuration send the same groupKey (`{}:{namespace="shop"}`),
    and their alerts are not one group; the replicas of one Alertmanager share its external URL, and are."""
    text = f"{url_key(external_url) or external_url.strip()}\n{group_key}" if external_url.strip() else group_key
    return "ag-" + hashlib.sha256(text.encode()).hexdigest()[:12]


def parse_notification(body: bytes) -> Notification:
    """The notification in ``body``; PayloadProblem with the field that is wrong otherwise."""
    try:
        data = json.loads(body.decode("utf-8"))
    except UnicodeDecodeError:
        raise PayloadProblem("body", "is not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise PayloadProblem("body", f"is not JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from None
    except RecursionError:
        raise PayloadProblem("body", "is nested too deeply to be Alertmanager's payload") from None
    except ValueError as exc:  # JSON that Python will not read, such as an integer of thousands of digits
        raise PayloadProblem("body", f"is JSON opsbot cannot read ({str(exc)[:120]})") from None
    if not isinstance(data, dict):
        raise PayloadProblem("body", "must be a JSON object, as Alertmanager's webhook sends")
    _check_unicode(data)
    version = data.get("version")
    if version != "4":
        raise PayloadProblem(
            "version", f'{_value(version)}: opsbot reads Alertmanager\'s webhook payload version "4" (Alertmanager 0.x)'
        )
    status = _choice(data, "status")
    group_key = _text(data, "groupKey", MAX_GROUP_KEY, required=True)
    alerts_raw = data.get("alerts")
    if not isinstance(alerts_raw, list) or not alerts_raw:
        raise PayloadProblem("alerts", "must be a non-empty list of alerts")
    left_out = max(0, len(alerts_raw) - MAX_ALERTS)
    alerts_raw = alerts_raw[:MAX_ALERTS]
    alerts = tuple(_alert(raw, n) for n, raw in enumerate(alerts_raw))
    seen: set[str] = set()
    for n, alert in enumerate(alerts):
        if alert.fingerprint in seen:
            raise PayloadProblem(f"alerts[{n}].fingerprint", f"{alert.fingerprint!r} appears twice")
        seen.add(alert.fingerprint)
    truncated = data.get("truncatedAlerts", 0)
    if not isinstance(truncated, int) or isinstance(truncated, bool) or not 0 <= truncated <= MAX_TRUNCATED:
        raise PayloadProblem("truncatedAlerts", f"{_value(truncated)} must be a whole number from 0 to {MAX_TRUNCATED}")
    truncated = min(truncated + left_out, MAX_TRUNCATED)
    known = {"version", "status", "groupKey", "receiver", "groupLabels", "commonLabels", "commonAnnotations"}
    known |= {"externalURL", "alerts", "truncatedAlerts"}
    return Notification(
        status=status,
        group_key=group_key,
        receiver=_text(data, "receiver", MAX_NAME),
        group_labels=_labels(data.get("groupLabels"), "groupLabels"),
        common_labels=_labels(data.get("commonLabels"), "commonLabels"),
        common_annotations=_scrubbed(_labels(data.get("commonAnnotations"), "commonAnnotations")),
        external_url=scrub(_text(data, "externalURL", 2048)),
        alerts=alerts,
        truncated=truncated,
        extra={k: v for k, v in data.items() if k not in known},
    )


def _check_unicode(data: dict) -> None:
    """Refuse text that cannot be stored: JSON's escapes allow half a surrogate pair ("\\ud800"), UTF-8 does not."""
    try:
        json.dumps(data, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        pass
    else:
        return  # one pass in C for the common case; the walk below only runs to name the field
    stack: list[tuple[str, Any]] = [("", data)]
    while stack:
        where, value = stack.pop()
        items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
        for key, item in items:
            if isinstance(key, str) and not _encodable(key):
                raise PayloadProblem(where or "body", f"the name {_shown(key)} {SURROGATE}")
            place = f"{where}[{key}]" if isinstance(value, list) else f"{where}.{key}" if where else key
            if isinstance(item, str) and not _encodable(item):
                raise PayloadProblem(place, f"{_shown(item)} {SURROGATE}")
            stack.append((place, item))


SURROGATE = (
    "holds half a surrogate pair (an escape such as \\ud800 without its partner), which is not text; "
    "Alertmanager never sends one, so check what produced this payload"
)


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _shown(text: str) -> str:
    """Text for a message: cut short, surrogates as escapes."""
    return "'" + text[:60].encode("utf-8", "backslashreplace").decode("utf-8") + "'"


def _scrubbed(annotations: dict[str, str]) -> dict[str, str]:
    """Annotations with every secret they quote replaced by ***: an alert's description can quote a failing
    command line or URL, and what it holds reaches the alert's row, its Slack message and a search. Labels are
    left as they are: Alertmanager groups, routes and silences by them, and they name things, not commands."""
    return {name: scrub(text) for name, text in annotations.items()}


def _value(value: Any) -> str:
    """Any JSON value for a message, cut short: a caller's megabyte of text must not come back, or reach the log."""
    if isinstance(value, str):
        return _shown(value) + ("..." if len(value) > 60 else "")
    shown = repr(value)
    return shown if len(shown) <= 60 else shown[:60] + "..."


def _alert(raw: Any, n: int) -> Alert:
    where = f"alerts[{n}]"
    if not isinstance(raw, dict):
        raise PayloadProblem(where, "must be an object with status, labels, annotations, startsAt, fingerprint")
    labels = _labels(raw.get("labels"), f"{where}.labels")
    if not labels:
        raise PayloadProblem(f"{where}.labels", "is empty; an alert has at least its alertname")
    fingerprint = raw.get("fingerprint")
    if not isinstance(fingerprint, str) or not FINGERPRINT.match(fingerprint):
        shown = _value(fingerprint)
        raise PayloadProblem(f"{where}.fingerprint", f"{shown} must be Alertmanager's fingerprint (hex digits)")
    starts_at = _time(raw.get("startsAt"), f"{where}.startsAt")
    if starts_at is None:
        raise PayloadProblem(f"{where}.startsAt", "is the zero time; a firing alert has a start")
    return Alert(
        fingerprint=fingerprint,
        status=_choice(raw, "status", where),
        labels=labels,
        annotations=_scrubbed(_labels(raw.get("annotations"), f"{where}.annotations")),
        starts_at=starts_at,
        ends_at=_time(raw.get("endsAt", "0001-01-01T00:00:00Z"), f"{where}.endsAt"),
        generator_url=scrub(_text(raw, "generatorURL", 4096, where=where)),
    )


def _choice(data: dict, name: str, where: str = "") -> str:
    value = data.get(name)
    if value not in STATUSES:
        raise PayloadProblem(f"{where}.{name}" if where else name, f"{_value(value)} must be firing or resolved")
    return str(value)


def _text(data: dict, name: str, limit: int, required: bool = False, where: str = "") -> str:
    key = f"{where}.{name}" if where else name
    value = data.get(name, "")
    if value is None:
        value = ""
    if not isinstance(value, str):
        raise PayloadProblem(key, f"must be a string, not {type(value).__name__}")
    if required and not value:
        raise PayloadProblem(key, "is missing or empty")
    if len(value) > limit:
        raise PayloadProblem(key, f"is {len(value)} characters long; at most {limit} are accepted")
    return value


def _labels(value: Any, key: str) -> dict[str, str]:
    """A mapping of names to string values (labels or annotations); missing is empty."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise PayloadProblem(key, "must be an object of names to string values")
    if len(value) > MAX_LABELS:
        raise PayloadProblem(key, f"has {len(value)} entries; at most {MAX_LABELS} are accepted")
    for name, text in value.items():
        if not name or len(name) > MAX_NAME:
            raise PayloadProblem(key, f"a name is empty or over {MAX_NAME} characters")
        if not isinstance(text, str):
            raise PayloadProblem(f"{key}.{name}", f"must be a string, not {type(text).__name__}")
        if len(text) > MAX_VALUE:
            raise PayloadProblem(f"{key}.{name}", f"is {len(text)} characters long; at most {MAX_VALUE} are accepted")
    return dict(value)


def _time(value: Any, key: str) -> datetime | None:
    """An RFC 3339 time with its offset; None for Alertmanager's zero time."""
    if not isinstance(value, str):
        raise PayloadProblem(key, f"{_value(value)} must be an RFC 3339 time such as 2026-12-05T16:22:38Z")
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        raise PayloadProblem(key, f"{value[:60]!r} is not an RFC 3339 time such as 2026-12-05T16:22:38Z") from None
    if when.tzinfo is None:
        raise PayloadProblem(key, f"{value[:60]!r} has no UTC offset (Z or +02:00)")
    if when.year == ZERO_TIME_YEAR:
        return None
    try:
        return when.astimezone(UTC)
    except OverflowError:  # 9999-12-31T23:59:59-05:00 is in the year 10000 in UTC
        raise PayloadProblem(key, f"{value[:60]!r} is out of range in UTC (after the year 9999)") from None


def first_annotation(annotations: dict[str, str], keys: tuple[str, ...]) -> str:
    """The first of ``keys`` present (and not blank) in ``annotations``."""
    return next((annotations[k].strip() for k in keys if annotations.get(k, "").strip()), "")
