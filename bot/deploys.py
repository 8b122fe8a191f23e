"""Deploys and rollbacks: request -> approve -> run -> summarise, with separation of duties.

Every state change is an atomic transition in SQLite (``store.transaction()`` takes the write lock),
so double clicks and concurrent approvals from several users or processes run a deploy once.
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from bot.deploy_config import (
    SAFE_VALUE,
    ConfigProblem,
    DeploySettings,
    Environment,
    Runner,
    ServiceConfig,
    parse_service,
    parse_settings,
)
from bot.errors import InvalidRequest, NotFound, PermissionDenied
from bot.models import Expert
from bot.redact import scrub
from bot.store import Store

log = logging.getLogger(__name__)
FINAL = ("succeeded", "failed", "timed_out", "rejected", "expired", "interrupted")
LOG_TAIL_LINES = 40
Progress = Callable[["DeployRequest", str], None]


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
    approvers: tuple[str, ...] = ()
    rejected_by: str = ""

    @classmethod
    def from_row(cls, row: dict, decisions: list[tuple[str, str, str]]) -> DeployRequest:
        data = dict(row)
        data["changes"] = tuple(json.loads(data.get("changes") or "[]"))
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
        ):
            data[key] = data.get(key) or ""
        approvers = tuple(u for u, d, _ in decisions if d == "approve")
        rejected = next((u for u, d, _ in decisions if d == "reject"), "")
        return cls(**data, approvers=approvers, rejected_by=rejected)

    @property
    def still_needed(self) -> int:
        return max(0, self.approvals_needed - len(self.approvers))

    @property
    def duration_s(self) -> float | None:
        if not (self.started_at and self.finished_at):
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


class DeployService:
    """The deploy state machine over the store, for one services.yaml."""

    def __init__(
        self,
        store: Store,
        services: dict[str, ServiceConfig],
        settings: DeploySettings,
        experts: list[Expert],
        clock: Callable[[], datetime] = _now,
        workdir: str | None = None,
    ) -> None:
        self.store = store
        self.services = services
        self.settings = settings
        self.experts = {e.id: e for e in experts}
        self.clock = clock
        self.workdir = workdir

    @classmethod
    def from_store(
        cls, store: Store, clock: Callable[[], datetime] = _now, workdir: str | None = None
    ) -> DeployService:
        """Build from the services.yaml stored by `opsbot index` (invalid entries were reported there)."""
        services = {}
        for name, config in store.service_configs().items():
            try:
                parsed = parse_service(name, config)
            except ConfigProblem:
                continue
            if parsed is not None:
                services[name] = parsed
        try:
            settings = parse_settings(json.loads(store.get_meta("deploy_settings") or "null"))
        except ConfigProblem:
            settings = DeploySettings()
        return cls(store, services, settings, store.load_experts(), clock, workdir)

    # -- requesting -----------------------------------------------------------

    def _service_env(self, service: str, env: str) -> tuple[ServiceConfig, Environment]:
        check_value("service", service)
        check_value("environment", env)
        config = self.services.get(service)
        if config is None:
            known = ", ".join(sorted(self.services)) or "none: add environments and a deploy runner in services.yaml"
            raise NotFound(f"no deployable service {service!r}; deployable services: {known}.")
        environment = config.environments.get(env)
        if environment is None:
            raise NotFound(f"{service} has no environment {env!r}; use one of {', '.join(config.environments)}.")
        return config, environment

    def request(
        self, kind: str, service: str, env: str, version: str | None, requester: str, channel: str = ""
    ) -> DeployRequest:
        """Validate everything, then record a pending request holding the service/env lock."""
        config, environment = self._service_env(service, env)
        if kind == "rollback":
            if config.rollback is None and config.deploy is None:
                raise InvalidRequest(f"{service} has no rollback runner in services.yaml.")
            current = self.current_version(service, env)
            broken = self.failed_version(service, env)
            if version is None:
                version = self.rollback_target(service, env)
            if current is not None and version == current and broken is None:
                raise InvalidRequest(f"{version} is what {service} already runs in {env}; name an earlier version.")
        elif version is None:
            raise InvalidRequest("give the version to deploy: /deploy SERVICE VERSION ENV.")
        check_value("version", version)
        if not re.fullmatch(config.version_pattern, version):
            raise InvalidRequest(
                f"version {version!r} does not match {service}'s version_pattern {config.version_pattern}."
            )
        now = self.clock()
        freeze = environment.frozen_at(now)
        if freeze is not None:
            why = f" ({freeze.reason})" if freeze.reason else ""
            raise PermissionDenied(
                f"{service} {env} is frozen until {freeze.end.isoformat(timespec='minutes')}{why}; "
                "nothing was requested."
            )
        from_version = self.current_version(service, env) or ""
        if kind == "rollback":  # after a failed run, what is rolled back is that half-deployed version
            from_version = self.failed_version(service, env) or from_version
        request_id = f"dep-{now.strftime('%Y%m%d')}-{uuid.uuid4().hex[:6]}"
        row = {
            "id": request_id,
            "kind": kind,
            "service": service,
            "env": env,
            "version": version,
            "from_version": from_version,
            "requester": requester,
            "status": "pending",
            "approvals_needed": environment.approvals,
            "created_at": now.isoformat(timespec="seconds"),
            "expires_at": (now + timedelta(minutes=self.settings.request_ttl_minutes)).isoformat(timespec="seconds"),
            "started_at": None,
            "finished_at": None,
            "channel": channel,
            "message_ts": "",
            "exit_code": None,
            "log_tail": "",
            "source": "slack",
            "commit_sha": "",
            "commit_time": "",
            "pipeline_url": "",
            "changes": "[]",
        }
        with self.store.transaction():
            self._expire_locked_if_due(service, env)
            holder = self.store.take_lock(service, env, request_id, requester)
            if holder is not None:
                held = self.store.deploy_row(holder)
                who = self.name(held["requester"]) if held else "someone"
                raise PermissionDenied(
                    f"{service} {env} is locked by {who}'s {held['kind'] if held else 'request'} {holder} "
                    f"({held['status'] if held else 'active'}); wait for it to finish or expire."
                )
            self.store.insert_deploy(row)
            self.store.audit(requester, f"{kind}.requested", request_id, service=service, env=env, version=version)
        log.info(
            "deploy requested id=%s service=%s env=%s version=%s by=%s", request_id, service, env, version, requester
        )
        return self.get(request_id)

    def _expire_locked_if_due(self, service: str, env: str) -> None:
        for row in self.store.deploy_rows("service = ? AND env = ? AND status = 'pending'", [service, env]):
            if row["expires_at"] and datetime.fromisoformat(row["expires_at"]) <= self.clock():
                self._expire(row["id"])

    def _succeeded(self, service: str, env: str) -> list[dict]:
        rows = self.store.deploy_rows("service = ? AND env = ? AND status = 'succeeded'", [service, env], limit=200)
        return sorted(rows, key=lambda r: r["finished_at"] or r["created_at"], reverse=True)

    def current_version(self, service: str, env: str) -> str | None:
        """The version of the last deploy or rollback that succeeded."""
        rows = self._succeeded(service, env)
        return rows[0]["version"] if rows else None

    def failed_version(self, service: str, env: str) -> str | None:
        """The version of the newest run when it failed, timed out or was interrupted: it may be half rolled out."""
        where = "service = ? AND env = ? AND started_at IS NOT NULL AND finished_at IS NOT NULL"
        rows = self.store.deploy_rows(where, [service, env], limit=200)
        newest = max(rows, key=lambda r: r["finished_at"], default=None)
        return newest["version"] if newest and newest["status"] in ("failed", "timed_out", "interrupted") else None

    def rollback_target(self, service: str, env: str) -> str:
        """The last good version: the current one after a failed run, else the one that succeeded before it."""
        rows = self._succeeded(service, env)
        if not rows:
            raise InvalidRequest(f"{service} has no successful deploy in {env} yet; nothing to roll back to.")
        current = rows[0]["version"]
        if self.failed_version(service, env) is not None:
            return current
        earlier = next((r["version"] for r in rows[1:] if r["version"] != current), None)
        if earlier is None:
            raise InvalidRequest(
                f"no version of {service} succeeded in {env} before {current}; "
                f"name the version: /rollback {service} {env} VERSION."
            )
        return earlier

    # -- deciding ---------------------------------------------------------------

    def approvers_for(self, environment: Environment) -> set[str]:
        allowed = set()
        for entry in environment.approvers:
            if entry in self.experts:
                allowed.add(entry)
            allowed.update(e.id for e in self.experts.values() if e.team == entry)
        return allowed

    def name(self, user: str) -> str:
        return self.experts[user].name if user in self.experts else f"<@{user}>"

    def may_decide(self, request: DeployRequest, user: str) -> str | None:
        """Why ``user`` may not approve or reject ``request``, or None when they may."""
        if user == request.requester:
            return "you requested this; someone else has to approve it."
        config, environment = self._service_env(request.service, request.env)
        if user not in self.approvers_for(environment):
            who = ", ".join(environment.approvers)
            return f"only {who} may approve {request.service} deploys to {request.env}."
        return None

    def approve(self, request_id: str, user: str) -> Decision:
        return self._decide(request_id, user, "approve")

    def reject(self, request_id: str, user: str) -> Decision:
        return self._decide(request_id, user, "reject")

    def _decide(self, request_id: str, user: str, decision: str) -> Decision:
        with self.store.transaction():
            request = self._get_locked(request_id)
            if request.status == "pending" and self._is_due(request):
                self._expire(request_id)
                request = self._get_locked(request_id)
            if request.status != "pending":
                return Decision(request, "closed", f"this request is already {request.status}.")
            # The requester may withdraw (reject) their own request, never approve it.
            refusal = None if decision == "reject" and user == request.requester else self.may_decide(request, user)
            if refusal:
                self.store.audit(user, f"{request.kind}.{decision}.refused", request_id, reason=refusal)
                return Decision(request, "refused", refusal)
            if not self.store.record_decision(request_id, user, decision):
                return Decision(
                    request, "recorded", f"you already decided; {request.still_needed} more approval(s) needed."
                )
            self.store.audit(
                user, f"{request.kind}.{decision}d" if decision == "approve" else f"{request.kind}.rejected", request_id
            )
            if decision == "reject":
                self.store.transition(request_id, "pending", "rejected", finished_at=_iso(self.clock()))
                self.store.release_lock(request_id)
                return Decision(self._get_locked(request_id), "rejected", "rejected; nothing will run.")
            request = self._get_locked(request_id)
            if request.still_needed > 0:
                return Decision(request, "recorded", f"approved; {request.still_needed} more approval(s) needed.")
            if not self.store.transition(request_id, "pending", "running", started_at=_iso(self.clock())):
                return Decision(self._get_locked(request_id), "closed", "this request was already started.")
            self.store.audit("opsbot", f"{request.kind}.started", request_id, approvers=list(request.approvers))
            return Decision(self._get_locked(request_id), "approved", "approved; starting now.")

    def _is_due(self, request: DeployRequest) -> bool:
        return bool(request.expires_at) and datetime.fromisoformat(request.expires_at) <= self.clock()

    def _expire(self, request_id: str) -> None:
        if self.store.transition(request_id, "pending", "expired", finished_at=_iso(self.clock())):
            self.store.release_lock(request_id)
            self.store.audit("opsbot", "deploy.expired", request_id)

    def expire_due(self) -> list[DeployRequest]:
        """Expire every pending request past its time; returns them so their messages can say so."""
        expired = []
        with self.store.transaction():
            for row in self.store.deploy_rows("status = 'pending'"):
                if row["expires_at"] and datetime.fromisoformat(row["expires_at"]) <= self.clock():
                    self._expire(row["id"])
                    expired.append(row["id"])
        return [self.get(i) for i in expired]

    def interrupt_running(self) -> list[DeployRequest]:
        """At start-up: deploys an earlier process left running are interrupted, never re-run."""
        interrupted = []
        with self.store.transaction():
            for row in self.store.deploy_rows("status = 'running' AND source = 'slack'"):
                if self.store.transition(row["id"], "running", "interrupted", finished_at=_iso(self.clock())):
                    self.store.release_lock(row["id"])
                    self.store.audit("opsbot", "deploy.interrupted", row["id"], reason="opsbot restarted")
                    interrupted.append(row["id"])
        return [self.get(i) for i in interrupted]

    def set_message(self, request_id: str, channel: str, ts: str) -> None:
        with self.store.transaction():
            self.store.update_deploy(request_id, channel=channel, message_ts=ts)

    def get(self, request_id: str) -> DeployRequest:
        with self.store.lock:
            return self._get_locked(request_id)

    def _get_locked(self, request_id: str) -> DeployRequest:
        row = self.store.deploy_row(request_id)
        if row is None:
            raise NotFound(f"no deploy request {request_id!r}.")
        return DeployRequest.from_row(row, self.store.decisions(request_id))

    # -- running -----------------------------------------------------------------

    def command_for(self, request: DeployRequest) -> tuple[Runner, list[str]]:
        config, _ = self._service_env(request.service, request.env)
        runner = config.rollback if request.kind == "rollback" and config.rollback else config.deploy
        values = {
            "service": request.service,
            "version": request.version,
            "env": request.env,
            "request_id": request.id,
            "python": sys.executable,
        }
        argv = [arg.format_map(values) for arg in runner.argv]
        return runner, argv

    def describe(self, request: DeployRequest) -> str:
        runner, argv = self.command_for(request)
        if runner.kind == "webhook":
            return f"POST {runner.url}"
        shown = ["python" if a == sys.executable else a for a in argv]
        return " ".join(shown)

    def execute(self, request_id: str, progress: Progress | None = None) -> DeployRequest:
        """Run a request that ``approve`` moved to running; final state, lock released, audited."""
        request = self.get(request_id)
        if request.status != "running":
            raise InvalidRequest(f"{request_id} is {request.status}, not running.")
        try:
            runner, argv = self.command_for(request)
        except Exception as exc:  # e.g. the service left services.yaml after approval: fail, release the lock
            return self._finish(request, "failed", None, f"could not prepare the run: {exc}")
        secrets = (os.environ.get(runner.secret_env, ""),) if runner.secret_env else ()
        if runner.kind == "webhook":
            status, exit_code, output = self._trigger_webhook(runner, request, secrets)
        else:
            status, exit_code, output = self._run_command(runner, argv, request, progress, secrets)
        return self._finish(request, status, exit_code, output, secrets)

    def _finish(
        self, request: DeployRequest, status: str, exit_code: int | None, output: str, secrets: tuple[str, ...] = ()
    ) -> DeployRequest:
        """Record the outcome, release the lock and audit it."""
        tail = scrub("\n".join(output.splitlines()[-LOG_TAIL_LINES:]), secrets)
        with self.store.transaction():
            self.store.transition(
                request.id, "running", status, finished_at=_iso(self.clock()), exit_code=exit_code, log_tail=tail
            )
            self.store.release_lock(request.id)
            self.store.audit("opsbot", f"{request.kind}.finished", request.id, status=status, exit_code=exit_code)
        log.info("deploy finished id=%s status=%s exit_code=%s", request.id, status, exit_code)
        return self.get(request.id)

    def _run_command(
        self,
        runner: Runner,
        argv: list[str],
        request: DeployRequest,
        progress: Progress | None,
        secrets: tuple[str, ...],
    ) -> tuple[str, int | None, str]:
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "LANG": "C.UTF-8",
            "OPSBOT_REQUEST_ID": request.id,
            "OPSBOT_SERVICE": request.service,
            "OPSBOT_ENV": request.env,
            "OPSBOT_VERSION": request.version,
        }
        lines: list[str] = []
        try:
            process = subprocess.Popen(
                argv,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                cwd=self.workdir,
                text=True,
                errors="replace",
                start_new_session=True,
            )
        except OSError as exc:
            return "failed", None, f"could not start {argv[0]}: {exc.strerror}"
        reader = threading.Thread(target=lambda: lines.extend(process.stdout), daemon=True)  # type: ignore[arg-type]
        reader.start()
        deadline = time.monotonic() + runner.timeout
        last_report = time.monotonic()
        while process.poll() is None:
            if time.monotonic() > deadline:
                _kill_group(process)
                process.wait()
                reader.join(timeout=2)
                lines.append(f"opsbot: stopped after the {runner.timeout} s timeout\n")
                return "timed_out", None, "".join(lines)
            if progress and time.monotonic() - last_report >= 2:
                last_report = time.monotonic()
                try:
                    progress(request, scrub("".join(lines[-8:]), secrets))
                except Exception:  # showing progress must never stop the deploy or keep its lock
                    log.exception("progress report failed request_id=%s", request.id)
            time.sleep(0.05)
        reader.join(timeout=2)
        code = process.returncode
        return ("succeeded" if code == 0 else "failed"), code, "".join(lines)

    def _trigger_webhook(
        self, runner: Runner, request: DeployRequest, secrets: tuple[str, ...]
    ) -> tuple[str, int | None, str]:
        values = {"service": request.service, "version": request.version, "env": request.env, "request_id": request.id}
        body = json.loads(
            json.dumps(runner.body),
            object_hook=lambda d: {k: v.format_map(values) if isinstance(v, str) else v for k, v in d.items()},
        )
        headers = {"Content-Type": "application/json"}
        if runner.secret_header and runner.secret_env:
            headers[runner.secret_header] = os.environ.get(runner.secret_env, "")
        req = urllib.request.Request(runner.url, data=json.dumps(body).encode(), headers=headers, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=runner.timeout) as response:
                text = response.read(4000).decode("utf-8", "replace")
                return "succeeded", 0, f"triggered {runner.url}: HTTP {response.status}\n{text}"
        except Exception as exc:  # any failure to trigger is the deploy's failure, reported in full
            return "failed", None, f"could not trigger {runner.url}: {exc}"


def check_value(what: str, value: str) -> None:
    """Refuse anything but plain names and versions before it goes near a command line."""
    if not SAFE_VALUE.fullmatch(value or ""):
        shown = value.replace("\n", "\\n")[:60]
        raise InvalidRequest(
            f"{what} {shown!r} is not allowed: use letters, digits, '.', '_', '+' and '-' only "
            "(up to 64 characters, starting with a letter or digit)."
        )


def _kill_group(process: subprocess.Popen) -> None:
    """Kill the command and everything it started (its own session), so nothing deploys on after a timeout."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        process.kill()


def _iso(when: datetime) -> str:
    return when.isoformat(timespec="seconds")


def recent_requests(
    store: Store, service: str | None = None, env: str | None = None, limit: int = 20
) -> list[DeployRequest]:
    """Deploy and rollback requests from Slack and CI, newest first, optionally for one service and environment."""
    where, params = ["1=1"], []
    for column, value in (("service", service), ("env", env)):
        if value:
            where.append(f"{column} = ?")
            params.append(value)
    with store.lock:
        rows = store.deploy_rows(" AND ".join(where), params, limit=limit)
        return [DeployRequest.from_row(row, store.decisions(row["id"])) for row in rows]
