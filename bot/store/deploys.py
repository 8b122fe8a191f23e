"""Deploy and rollback requests, the service/env locks, approvals and the audit trail.

Every state change runs inside ``store.transaction()``, so decisions from several processes are serialised.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

from bot.store.base import StoreBase, _now


class DeployStore(StoreBase):
    """Deploy requests and their state machine's rows."""

    DEPLOY_COLUMNS = (
        "id, kind, service, env, version, from_version, requester, status, approvals_needed, created_at, "
        "expires_at, started_at, finished_at, channel, message_ts, exit_code, log_tail, source, commit_sha, "
        "commit_time, pipeline_url, changes, owner, lease_until, runner_pid, flags, note, emergency, triggered_at, "
        "runner_kind, start_reported, never_started"
    )

    # Times are kept to the second: of two runs that ended in the same one (a deploy and the next, a failure and its
    # rollback), the one requested later ended later, as one runs at a time per service and environment.
    LATER_FIRST = "rowid DESC"
    # When a row ran, for ordering runs: its finish, or for a request abandoned while its pipeline deployed, its trigger
    RAN_AT = (
        "CASE WHEN status = 'abandoned' AND source != 'ci' "
        "THEN COALESCE(NULLIF(triggered_at, ''), started_at) ELSE finished_at END"
    )

    def insert_deploy(self, row: dict) -> None:
        self._require_transaction()
        self.db["deploy_requests"].insert(row)

    def deploy_row(self, request_id: str) -> dict | None:
        cur = self.db.execute(f"SELECT {self.DEPLOY_COLUMNS} FROM deploy_requests WHERE id = ?", [request_id])
        found = cur.fetchone()
        return dict(zip([c[0] for c in cur.description], found, strict=True)) if found else None

    def all_deploys(self, limit: int = 100_000) -> list[dict]:
        """Every deploy row, newest first."""
        return self._rows("1=1", [], limit=limit)

    def finished_deploys(self, env: str, service: str | None = None, since_day: str | None = None) -> list[dict]:
        """Deploys and rollbacks that finished in ``env`` (of one service, or all), for the DORA figures;
        with ``since_day`` (YYYY-MM-DD), only those that finished on that day or later. All of them: a figure
        counted over part of its period would be wrong without a word. Their output (``log_tail``) is left out."""
        where, params = "env = ? AND finished_at IS NOT NULL", [env]
        if service:
            where, params = where + " AND service = ?", [*params, service]
        if since_day:
            where, params = where + " AND substr(finished_at, 1, 10) >= ?", [*params, since_day]
        columns = self.DEPLOY_COLUMNS.replace(" log_tail,", " '' AS log_tail,")
        return self._rows(where, params, limit=-1, columns=columns)

    def deployed_names(self) -> set[tuple[str, str]]:
        """Every (service, environment) that a deploy was ever requested or reported for."""
        return {(r[0], r[1]) for r in self.db.execute("SELECT DISTINCT service, env FROM deploy_requests")}

    def _rows(
        self,
        where: str,
        params: list,
        order: str = "created_at DESC, id",
        limit: int = 1000,
        columns: str | None = None,
    ) -> list[dict]:
        """Deploy rows, ``limit`` at most (-1: all of them)."""
        cur = self.db.execute(
            f"SELECT {columns or self.DEPLOY_COLUMNS} FROM deploy_requests WHERE {where} ORDER BY {order} LIMIT ?",
            [*params, limit],
        )
        names = [c[0] for c in cur.description]
        return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]

    # -- named queries of the deploy service -------------------------------------------------------

    def pending_for(self, service: str, env: str) -> list[dict]:
        return self._rows("service = ? AND env = ? AND status = 'pending'", [service, env])

    def pending_deploys(self) -> list[dict]:
        return self._rows("status = 'pending'", [])

    def running_for(self, service: str, env: str) -> list[dict]:
        """Everything deploying a service and environment now, from Slack or CI (overlapping CI deploys too, and
        requests whose pipeline has not reported yet)."""
        return self._rows(
            "service = ? AND env = ? AND status IN ('running', 'overlapping', 'awaiting_ci')", [service, env]
        )

    def runs_started_after(self, service: str, env: str, started_at: str, exclude: str) -> list[dict]:
        """Deploys and rollbacks of a service and environment that started to run after ``started_at`` (ISO UTC):
        running or ended, but not cancelled (approved, stopped before it ran) nor a CI start abandoned with no end (a
        request abandoned while its pipeline deployed counts: it may have run); ``exclude`` is left out."""
        return self._rows(
            "service = ? AND env = ? AND id != ? AND started_at > ? "
            "AND (status IN ('running', 'overlapping', 'awaiting_ci', 'succeeded', 'failed', 'timed_out', "
            "'interrupted') OR (status = 'abandoned' AND source != 'ci'))",
            [service, env, exclude, started_at],
        )

    def succeeded_for(self, service: str, env: str, limit: int = -1) -> list[dict]:
        """Deploys and rollbacks that succeeded, newest finish first (all of them unless ``limit``)."""
        return self._rows(
            "service = ? AND env = ? AND status = 'succeeded'",
            [service, env],
            order=f"COALESCE(finished_at, created_at) DESC, {self.LATER_FIRST}",
            limit=limit,
            columns="id, kind, version, from_version, finished_at, created_at" if limit < 0 else None,
        )

    def succeeded_versions(self, service: str, env: str, limit: int = -1) -> list[str]:
        """Each version that succeeded, once, newest last success first."""
        cur = self.db.execute(
            "SELECT version FROM deploy_requests WHERE service = ? AND env = ? AND status = 'succeeded' "
            "GROUP BY version ORDER BY MAX(COALESCE(finished_at, created_at)) DESC, MAX(rowid) DESC LIMIT ?",
            [service, env, limit],
        )
        return [r[0] for r in cur.fetchall()]

    def version_succeeded(self, service: str, env: str, version: str) -> bool:
        cur = self.db.execute(
            "SELECT 1 FROM deploy_requests WHERE service = ? AND env = ? AND version = ? AND status = 'succeeded' "
            "LIMIT 1",
            [service, env, version],
        )
        return cur.fetchone() is not None

    def newest_finished_run(self, service: str, env: str) -> dict | None:
        """The run that finished last, whatever its outcome (one cancelled before it started never ran, nor did
        one whose command could not start). A deploy
        abandoned while its pipeline deployed may have run, and counts as of its trigger (it was abandoned hours
        later); an abandoned rollback is left out (what it rolled back from may still run), as is a CI deploy
        abandoned for lack of a finish."""
        rows = self._rows(
            "service = ? AND env = ? AND started_at IS NOT NULL AND finished_at IS NOT NULL AND never_started = 0 "
            "AND (status IN ('succeeded', 'failed', 'timed_out', 'interrupted') "
            "OR (status = 'abandoned' AND source != 'ci' AND kind = 'deploy'))",
            [service, env],
            order=f"{self.RAN_AT} DESC, {self.LATER_FIRST}",
            limit=1,
        )
        return rows[0] if rows else None

    def expired_leases(self, now: float) -> list[dict]:
        """Slack deploys still running whose owner stopped renewing their lease (or never had one)."""
        return self._rows("status = 'running' AND source = 'slack' AND (lease_until IS NULL OR lease_until < ?)", [now])

    def running_ci_started_before(self, before: str) -> list[dict]:
        return self._rows("status IN ('running', 'overlapping') AND source = 'ci' AND started_at < ?", [before])

    def awaiting_reports_started_before(self, before: str) -> list[dict]:
        """Requests whose webhook's pipeline was triggered before ``before`` (ISO UTC) and has not reported since."""
        return self._rows("status = 'awaiting_ci' AND COALESCE(NULLIF(triggered_at, ''), started_at) < ?", [before])

    def withdrawn_unshown(self) -> list[str]:
        """Requests withdrawn from the command line whose Slack message has not shown it yet (no ``.shown`` audit row
        after the withdrawal), oldest first."""
        cur = self.db.execute(
            "SELECT a.request_id FROM audit a WHERE a.action IN ('deploy.withdrawn', 'rollback.withdrawn') "
            "AND a.actor LIKE 'cli:%' AND NOT EXISTS (SELECT 1 FROM audit b WHERE b.request_id = a.request_id "
            "AND b.id > a.id AND b.action IN ('deploy.shown', 'rollback.shown')) ORDER BY a.id"
        )
        return list(dict.fromkeys(r[0] for r in cur.fetchall()))

    def mark_triggered(self, request_id: str, owner: str, at: str) -> bool:
        """Record that a webhook's trigger is sent now, if the request still runs under ``owner``."""
        self._require_transaction()
        cur = self.db.execute(
            "UPDATE deploy_requests SET triggered_at = ? WHERE id = ? AND owner = ? AND status = 'running'",
            [at, request_id, owner],
        )
        return cur.rowcount == 1

    def open_ci_runs(self, service: str, env: str, version: str) -> list[dict]:
        """CI deploys of this version a finish event may close: running, or given up for lack of a finish."""
        return self._rows(
            "service = ? AND env = ? AND version = ? AND source = 'ci' "
            "AND status IN ('running', 'overlapping', 'abandoned')",
            [service, env, version],
        )

    def finished_ci_runs(self, service: str, env: str, version: str) -> list[dict]:
        return self._rows(
            "service = ? AND env = ? AND version = ? AND source = 'ci' AND finished_at IS NOT NULL",
            [service, env, version],
        )

    def recent_deploys(self, service: str | None = None, env: str | None = None, limit: int = 20) -> list[dict]:
        """Newest first, optionally of one service and environment."""
        where, params = ["1=1"], []
        for column, value in (("service", service), ("env", env)):
            if value:
                where.append(f"{column} = ?")
                params.append(value)
        return self._rows(" AND ".join(where), params, limit=limit)

    def renew_lease(self, request_id: str, owner: str, until: float) -> bool:
        """Extend the lease of a deploy this owner runs; False when it is no longer running under this owner."""
        self._require_transaction()
        cur = self.db.execute(
            "UPDATE deploy_requests SET lease_until = ? WHERE id = ? AND owner = ? AND status = 'running'",
            [until, request_id, owner],
        )
        return cur.rowcount == 1

    def finish_run(self, request_id: str, owner: str, to_status: str, **fields: object) -> bool:
        """Record a run's outcome: running, or interrupted meanwhile by another process while this owner lived on, or
        handed to CI by that process (a webhook whose pipeline reports back) before its trigger was answered, or
        abandoned since (its answer tells whether the pipeline started after all)."""
        self._require_transaction()
        sets = ", ".join(["status = ?", *(f"{k} = ?" for k in fields)])
        cur = self.db.execute(
            f"UPDATE deploy_requests SET {sets} WHERE id = ? AND owner = ? "
            "AND status IN ('running', 'interrupted', 'awaiting_ci', 'abandoned')",
            [to_status, *fields.values(), request_id, owner],
        )
        return cur.rowcount == 1

    def lock_holder(self, service: str, env: str) -> str | None:
        row = self.db.execute(
            "SELECT request_id FROM deploy_locks WHERE service = ? AND env = ?", [service, env]
        ).fetchone()
        return row[0] if row else None

    def update_deploy(self, request_id: str, **fields: object) -> None:
        self._require_transaction()
        sets = ", ".join(f"{k} = ?" for k in fields)
        self.db.execute(f"UPDATE deploy_requests SET {sets} WHERE id = ?", [*fields.values(), request_id])

    def transition(self, request_id: str, from_status: str, to_status: str, **fields: object) -> bool:
        """Move a request between states only if it is still in ``from_status``: exactly one caller wins."""
        self._require_transaction()
        sets = ", ".join(["status = ?", *(f"{k} = ?" for k in fields)])
        cur = self.db.execute(
            f"UPDATE deploy_requests SET {sets} WHERE id = ? AND status = ?",
            [to_status, *fields.values(), request_id, from_status],
        )
        return cur.rowcount == 1

    def take_lock(self, service: str, env: str, request_id: str, holder: str) -> str | None:
        """Take the service/env lock; None on success, else the id of the request holding it."""
        self._require_transaction()
        cur = self.db.execute(
            "INSERT OR IGNORE INTO deploy_locks (service, env, request_id, holder, at) VALUES (?, ?, ?, ?, ?)",
            [service, env, request_id, holder, _now()],
        )
        if cur.rowcount == 1:
            return None
        row = self.db.execute("SELECT request_id FROM deploy_locks WHERE service = ? AND env = ?", [service, env])
        return row.fetchone()[0]

    def release_lock(self, request_id: str) -> None:
        self._require_transaction()
        self.db.execute("DELETE FROM deploy_locks WHERE request_id = ?", [request_id])

    def record_decision(self, request_id: str, user: str, decision: str, replace: bool = False) -> bool:
        """One decision per person and request: False when they had decided already (and ``replace`` is not set;
        with it, this decision takes the place of theirs: an approver who then rejects is the rejecter)."""
        self._require_transaction()
        verb = "INSERT OR REPLACE" if replace else "INSERT OR IGNORE"
        cur = self.db.execute(
            f"{verb} INTO deploy_decisions (request_id, user, decision, at) VALUES (?, ?, ?, ?)",
            [request_id, user, decision, _now()],
        )
        return cur.rowcount == 1

    def decisions(self, request_id: str) -> list[tuple[str, str, str]]:
        return [
            tuple(r)
            for r in self.db.execute(
                "SELECT user, decision, at FROM deploy_decisions WHERE request_id = ? ORDER BY at, user", [request_id]
            ).fetchall()
        ]

    # Where this process's decisions come from, when not from Slack: `opsbot shell`, whose /user acts as anyone on
    # the roster, marks every audit row it writes with itself and the login that ran it.
    audit_via = ""

    def audit(self, actor: str, action: str, request_id: str = "", **details: object) -> None:
        self._require_transaction()
        if self.audit_via:
            details = {**details, "via": self.audit_via}
        self.db.execute(
            "INSERT INTO audit (at, actor, action, request_id, details) VALUES (?, ?, ?, ?, ?)",
            [_now(), actor, action, request_id, json.dumps(details, default=str)],
        )

    def acted_via(self, request_id: str, via: str, actions: tuple[str, ...]) -> list[tuple[str, str]]:
        """(actor, action) of the request's audit rows of these ``actions`` written through ``via`` (a shell login)."""
        marks = ",".join("?" * len(actions))
        rows = self.db.execute(
            f"SELECT actor, action FROM audit WHERE request_id = ? AND action IN ({marks}) "
            "AND json_extract(details, '$.via') = ? ORDER BY id",
            [request_id, *actions, via],
        ).fetchall()
        return [(r[0], r[1]) for r in rows]

    def each_audit_row(self) -> Iterator[dict]:
        """Every audit row, oldest first, read a batch at a time (an export of the whole trail)."""
        cur = self.db.execute("SELECT at, actor, action, request_id, details FROM audit ORDER BY id")
        while batch := cur.fetchmany(1000):
            yield from map(_audit_row, batch)

    def audit_rows(self, limit: int = 10000) -> list[dict]:
        """The newest ``limit`` audit rows, oldest first."""
        cur = self.db.execute(
            "SELECT at, actor, action, request_id, details FROM audit ORDER BY id DESC LIMIT ?", [limit]
        )
        return [_audit_row(r) for r in reversed(cur.fetchall())]


def _audit_row(r: tuple) -> dict:
    return {"at": r[0], "actor": r[1], "action": r[2], "request_id": r[3], "details": json.loads(r[4] or "{}")}
