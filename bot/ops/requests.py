"""Deploy and rollback requests as the deploy service hands them out: one row's state, its decisions, helpers.

Plain values and functions shared by the deploy service (``bot.ops.deploys``), its runner, the CI recorder and
the adapters that show them.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Protocol

from bot.errors import InvalidRequest
from bot.ops.policy import Facts
from bot.services import SAFE_VALUE
from bot.store import Store
from bot.text import service_name_problem

if TYPE_CHECKING:
    from bot.ops.deploys import DeployService

# cancelled: approved, then stopped by the policy before it started; abandoned: a CI deploy that never finished.
# Active ones: pending, running (the lock holder), overlapping (a CI deploy that started while another held it) and
# awaiting_ci (a webhook whose pipeline reports back accepted the trigger: the request holds the lock until it reports).
FINAL = ("succeeded", "failed", "timed_out", "rejected", "expired", "interrupted", "cancelled", "abandoned")
Progress = Callable[["DeployRequest", str], None]
AUTO_ROLLBACK_NOTE = "opsbot chose the version"  # a rollback without a version: the last good one


@dataclass(frozen=True)
class DeployRequest:
    """A request bound to exactly one service, version and environment."""

    id: str
    kind: str
    service: str
    env: str
    version: str
    from_version: str
    requester: str
    status: str
    approvals_needed: int
    created_at: str
    expires_at: str
    started_at: str | None
    finished_at: str | None
    channel: str
    message_ts: str
    exit_code: int | None
    log_tail: str
    source: str
    commit_sha: str
    commit_time: str
    pipeline_url: str
    changes: tuple[str, ...]
    owner: str = ""
    lease_until: float | None = None
    runner_pid: int | None = None
    flags: tuple[str, ...] = ()  # what was wrong about it, e.g. a CI deploy during a freeze
    note: str = ""  # why it was cancelled
    emergency: str = ""  # the open incident whose emergency rule let this rollback go with fewer approvals
    triggered_at: str = ""  # when a webhook runner sent its trigger
    runner_kind: str = ""  # what runs it, as approved: command, webhook or webhook-report
    start_reported: bool = True  # False: a CI run reported only at its finish (its start shown as not reported)
    never_started: bool = False  # True: failed before anything ran (a command that could not start, a refused trigger)
    approvers: tuple[str, ...] = ()
    rejected_by: str = ""

    @classmethod
    def from_row(cls, row: dict, decisions: list[tuple[str, str, str]]) -> DeployRequest:
        data = dict(row)
        data["changes"] = tuple(json.loads(data.get("changes") or "[]"))
        data["flags"] = tuple(json.loads(data.get("flags") or "[]"))
        for key in (
            "from_version",
            "channel",
            "message_ts",
            "log_tail",
            "source",
            "commit_sha",
            "commit_time",
            "pipeline_url",
            "expires_at",
            "owner",
            "note",
            "emergency",
            "triggered_at",
            "runner_kind",
        ):
            data[key] = data.get(key) or ""
        data["start_reported"] = bool(data.get("start_reported", 1))
        data["never_started"] = bool(data.get("never_started", 0))
        approvers = tuple(u for u, d, _ in decisions if d == "approve")
        rejected = next((u for u, d, _ in decisions if d == "reject"), "")
        return cls(**data, approvers=approvers, rejected_by=rejected)

    @property
    def still_needed(self) -> int:
        return max(0, self.approvals_needed - len(self.approvers))

    @property
    def start_known(self) -> bool:
        """False for a CI run reported only at its finish: its row takes the finish as its start, for ordering."""
        return bool(self.started_at) and self.start_reported

    @property
    def duration_s(self) -> float | None:
        if not (self.start_known and self.finished_at):
            return None
        return (datetime.fromisoformat(self.finished_at) - datetime.fromisoformat(self.started_at)).total_seconds()

    @property
    def title(self) -> str:
        arrow = f"{self.from_version} → {self.version}" if self.from_version else self.version  # first known deploy
        return f"{'Rollback' if self.kind == 'rollback' else 'Deploy'} {self.service} {arrow} to {self.env}"

    @property
    def completed(self) -> bool:
        """It ran to an end: succeeded, failed or timed out."""
        return self.status in ("succeeded", "failed", "timed_out")

    @property
    def latest_at(self) -> datetime:
        """When it finished, or when it was requested while it has not finished (UTC)."""
        return parse_time(self.finished_at or self.created_at)

    @property
    def facts(self) -> Facts:
        return Facts(
            self.kind,
            self.service,
            self.env,
            self.version,
            self.requester,
            self.id,
            self.approvals_needed,
            self.approvers,
            emergency=self.emergency,
        )


class Announcer(Protocol):
    """Shows what happened to a deploy (a Slack adapter writes posts to its outbox).

    Called inside the transaction of the state change, so what is shown is stored with the change: a
    process killed a moment later loses neither. Events: requested, approved (one more approval), started,
    rejected, expired, interrupted, finished (succeeded, failed, timed out or cancelled), handed-off (its webhook's
    pipeline took the trigger and will report), settled (that pipeline reported the outcome), reported (the
    pipeline a run triggered reported another outcome), current (show it as it stands), ci-started, ci-finished,
    ci-recorded, abandoned (a CI deploy, or a handed-off request, whose end never came).
    """

    def announce(self, event: str, request: DeployRequest, deploys: DeployService) -> None: ...


@dataclass(frozen=True)
class Decision:
    """What a click on Approve or Reject did."""

    request: DeployRequest
    outcome: str  # recorded | approved | rejected | refused | closed
    message: str

    @property
    def start(self) -> bool:
        return self.outcome == "approved"


def _now() -> datetime:
    return datetime.now(UTC)


def parse_time(value: str) -> datetime:
    """A stored time (from Slack or a CI event, with Z or an offset) as an aware datetime; naive means UTC."""
    parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def abandoned_hand_off(row: dict) -> bool:
    """A request given up on while its pipeline deployed (no report came): unlike a CI deploy abandoned for lack of
    a finish, it may have run."""
    return row["status"] == "abandoned" and row.get("source") != "ci"


def new_row(request_id: str, **fields: object) -> dict:
    """A deploy_requests row: every column, with the given values over the defaults."""
    row: dict = {
        "id": request_id,
        "kind": "deploy",
        "service": "",
        "env": "",
        "version": "",
        "from_version": "",
        "requester": "",
        "status": "pending",
        "approvals_needed": 0,
        "created_at": "",
        "expires_at": "",
        "started_at": None,
        "finished_at": None,
        "channel": "",
        "message_ts": "",
        "exit_code": None,
        "log_tail": "",
        "source": "slack",
        "commit_sha": "",
        "commit_time": "",
        "pipeline_url": "",
        "changes": "[]",
        "owner": "",
        "lease_until": None,
        "runner_pid": None,
        "flags": "[]",
        "note": "",
        "emergency": "",
        "triggered_at": "",
        "runner_kind": "",
        "start_reported": 1,
        "never_started": 0,
    }
    unknown = set(fields) - set(row)
    if unknown:
        raise KeyError(f"not deploy_requests columns: {sorted(unknown)}")
    row.update(fields)
    return row


def new_request_id(now: datetime) -> str:
    return f"dep-{now.strftime('%Y%m%d')}-{uuid.uuid4().hex[:6]}"


def check_value(what: str, value: str) -> None:
    """Refuse anything but plain names and versions before it goes near a command line."""
    if not SAFE_VALUE.fullmatch(value or ""):
        shown = value.replace("\n", "\\n")[:60]
        raise InvalidRequest(
            f"{what} {shown!r} is not allowed: use letters, digits, '.', '_', '+' and '-' only "
            "(up to 64 characters, starting with a letter or digit)."
        )


def check_service(name: str) -> None:
    """Refuse a name that could not name a service: the one rule of services.yaml, incidents and the roster."""
    problem = service_name_problem(name)
    if problem:
        raise InvalidRequest(f"{problem}.")


def _iso(when: datetime) -> str:
    return when.astimezone(UTC).isoformat(timespec="seconds")


def recent_requests(
    store: Store, service: str | None = None, env: str | None = None, limit: int = 20
) -> list[DeployRequest]:
    """Deploy and rollback requests from Slack and CI, newest first, optionally for one service and environment."""
    with store.lock:
        rows = store.recent_deploys(service, env, limit)
        return [DeployRequest.from_row(row, store.decisions(row["id"])) for row in rows]
