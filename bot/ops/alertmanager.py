"""Calling Alertmanager's API v2: creating a silence, and asking at its end whether the silenced alerts still fire.

Only URLs from settings.alertmanager_urls reach here (``AlertService.plan_silence`` picks them); redirects are
not followed, so an allowed Alertmanager cannot send opsbot on to another address.
"""

from __future__ import annotations

import json
import logging
import urllib.error
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import urlencode, urlsplit

from bot.errors import OpsbotError

log = logging.getLogger(__name__)
TIMEOUT_S = 10.0
SILENCES_PATH = "/api/v2/silences"
ALERTS_PATH = "/api/v2/alerts"


class AlertmanagerError(OpsbotError):
    """Alertmanager could not be reached, or refused the call."""


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: object, **kwargs: object) -> None:  # type: ignore[override]
        return None  # urllib then raises HTTPError with the 3xx status


_OPENER = urllib.request.build_opener(_NoRedirects)


@dataclass(frozen=True)
class SilencePlan:
    """A silence opsbot may create: where, for which labels, for whom."""

    url: str  # the configured Alertmanager base URL (never the payload's own string)
    matchers: tuple[tuple[str, str], ...]
    starts_at: datetime
    ends_at: datetime
    created_by: str
    comment: str


def url_key(url: str) -> str:
    """An Alertmanager URL compared as scheme, host, port and path (case of scheme and host ignored)."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port or (443 if parts.scheme.lower() == "https" else 80)
    except ValueError:
        return ""
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname or parts.username or parts.password:
        return ""
    return f"{parts.scheme.lower()}://{parts.hostname.lower()}:{port}{parts.path.rstrip('/')}"


def _time(when: datetime) -> str:
    return when.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def silence_body(plan: SilencePlan) -> dict:
    """The POST body of /api/v2/silences for ``plan``: equality matchers on the group's labels."""
    return {
        "matchers": [{"name": k, "value": v, "isRegex": False, "isEqual": True} for k, v in plan.matchers],
        "startsAt": _time(plan.starts_at),
        "endsAt": _time(plan.ends_at),
        "createdBy": plan.created_by,
        "comment": plan.comment,
    }


def create_silence(plan: SilencePlan, timeout: float = TIMEOUT_S) -> str:
    """Create the silence; its id. AlertmanagerError saying what went wrong otherwise."""
    url = plan.url.rstrip("/") + SILENCES_PATH
    request = urllib.request.Request(
        url,
        data=json.dumps(silence_body(plan)).encode("utf-8"),
        method="POST",
        headers={"Content-Type": "application/json", "Accept": "application/json", "User-Agent": "opsbot"},
    )
    try:
        with _OPENER.open(request, timeout=timeout) as response:
            answer = json.loads(response.read(65536).decode("utf-8", "replace") or "{}")
    except urllib.error.HTTPError as exc:
        detail = exc.read(500).decode("utf-8", "replace").strip()
        log.warning("alertmanager refused a silence url=%s status=%s", plan.url, exc.code)
        raise AlertmanagerError(
            f"Alertmanager at {plan.url} answered HTTP {exc.code} to the silence"
            + (f": {detail[:300]}" if detail else "")
            + "; nothing was silenced."
        ) from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        log.warning("alertmanager unreachable url=%s error=%s", plan.url, reason)
        raise AlertmanagerError(
            f"could not reach Alertmanager at {plan.url} ({reason}); nothing was silenced. "
            "Check that opsbot can reach it, or silence it in Alertmanager."
        ) from None
    silence_id = answer.get("silenceID") if isinstance(answer, dict) else None
    if not isinstance(silence_id, str) or not silence_id:
        raise AlertmanagerError(f"Alertmanager at {plan.url} did not return a silence id; check it in Alertmanager.")
    return silence_id


def _quoted(value: str) -> str:
    """A label value as a matcher's quoted string (Alertmanager reads it as a Go string literal)."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def alerts_url(url: str, matchers: Iterable[tuple[str, str]]) -> str:
    """GET /api/v2/alerts for the alerts ``matchers`` select that have not resolved, silenced or not."""
    query = [("filter", f"{name}={_quoted(value)}") for name, value in matchers]
    query += [(state, "true") for state in ("active", "silenced", "inhibited", "unprocessed")]
    return url.rstrip("/") + ALERTS_PATH + "?" + urlencode(query)


def count_firing(url: str, matchers: Iterable[tuple[str, str]], timeout: float = TIMEOUT_S) -> int:
    """How many alerts ``matchers`` select still fire at the Alertmanager ``url`` (resolved ones it no longer
    lists); AlertmanagerError when it cannot say."""
    request = urllib.request.Request(
        alerts_url(url, matchers), method="GET", headers={"Accept": "application/json", "User-Agent": "opsbot"}
    )
    try:
        with _OPENER.open(request, timeout=timeout) as response:
            answer = json.loads(response.read(4 * 1024 * 1024).decode("utf-8", "replace") or "null")
    except urllib.error.HTTPError as exc:
        raise AlertmanagerError(f"Alertmanager at {url} answered HTTP {exc.code} to the alerts query") from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise AlertmanagerError(f"could not reach Alertmanager at {url} ({getattr(exc, 'reason', exc)})") from None
    if not isinstance(answer, list):
        raise AlertmanagerError(f"Alertmanager at {url} did not answer the alerts query with a list")
    # Alertmanager leaves resolved alerts out of the list: each one listed (active, suppressed or unprocessed) fires
    return sum(1 for alert in answer if isinstance(alert, dict))
