"""Alert groups from Alertmanager, the alerts each holds, their events and the incidents declared from them."""

from __future__ import annotations

from collections.abc import Iterable

from bot.store.base import StoreBase, _now

GROUP_FIELDS = frozenset(
    {
        "status",
        "service",
        "channel",
        "alertname",
        "severity",
        "receiver",
        "external_url",
        "group_labels",
        "common_labels",
        "common_annotations",
        "digest",
        "episode",
        "started_at",
        "resolved_at",
        "resolve_received_at",
        "updated_at",
        "truncated",
        "message_channel",
        "message_ts",
        "briefing",
        "incident_id",
        "silence_id",
        "silenced_by",
        "silenced_until",
        "checked_at",
        "missing_at",
    }
)
INSTANCE_COLUMNS = ("fingerprint", "status", "labels", "annotations", "starts_at", "ends_at", "generator_url")


class AlertStore(StoreBase):
    """Alert groups (firing -> resolved, again and again), the alerts of each, and their timeline."""

    def _dicts(self, sql: str, params: Iterable[object] = ()) -> list[dict]:
        cur = self.db.execute(sql, list(params))
        names = [c[0] for c in cur.description]
        return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]

    def alert_group(self, group_id: str) -> dict | None:
        rows = self._dicts("SELECT * FROM alert_groups WHERE id = ?", [group_id])
        return rows[0] if rows else None

    def alert_groups(self, limit: int = 200, status: str | None = None) -> list[dict]:
        """Newest change first (in one second, by its latest event); only firing (or resolved) ones when ``status``
        is given."""
        where, params = ("status = ?", [status]) if status else ("1=1", [])
        latest = "(SELECT MAX(e.id) FROM alert_events e WHERE e.group_id = alert_groups.id)"
        return self._dicts(
            f"SELECT * FROM alert_groups WHERE {where} ORDER BY updated_at DESC, {latest} DESC, rowid DESC LIMIT ?",
            [*params, limit],
        )

    def unbriefed_alert_groups(self) -> list[str]:
        """Firing groups whose briefing was never built (the process stopped before it was)."""
        cur = self.db.execute("SELECT id FROM alert_groups WHERE status = 'firing' AND briefing = '' ORDER BY id")
        return [r[0] for r in cur.fetchall()]

    def silence_ended_alert_groups(self, now: str) -> list[str]:
        """Firing groups whose silence from opsbot ended by ``now`` and was not looked into since."""
        cur = self.db.execute(
            "SELECT id FROM alert_groups WHERE status = 'firing' AND silence_id != '' AND silenced_until != '' "
            "AND silenced_until <= ? ORDER BY silenced_until, id",
            [now],
        )
        return [r[0] for r in cur.fetchall()]

    def quiet_firing_alert_groups(self, before: str, missing_before: str) -> list[str]:
        """Firing groups, not under a silence from opsbot, that neither a delivery nor a look into Alertmanager has
        confirmed since ``before``, or that Alertmanager was found not to list by ``missing_before``: oldest first."""
        cur = self.db.execute(
            "SELECT id FROM alert_groups WHERE status = 'firing' AND silence_id = '' AND ("
            "(missing_at = '' AND updated_at <= ? AND checked_at <= ?) OR (missing_at != '' AND missing_at <= ?)) "
            "ORDER BY max(updated_at, checked_at), id",
            [before, before, missing_before],
        )
        return [r[0] for r in cur.fetchall()]

    def insert_alert_group(self, row: dict) -> None:
        self._require_transaction()
        self.db["alert_groups"].insert(row)

    def update_alert_group(self, group_id: str, **fields: object) -> None:
        self._require_transaction()
        unknown = set(fields) - GROUP_FIELDS
        if unknown:  # column names are never taken from outside this module
            raise ValueError(f"not alert group fields: {sorted(unknown)}")
        sets = ", ".join(f"{k} = ?" for k in fields)
        self.db.execute(f"UPDATE alert_groups SET {sets} WHERE id = ?", [*fields.values(), group_id])

    def link_alert_incident(self, group_id: str, incident_id: str, service: str, fired_at: str, at: str) -> bool:
        """Mark the group's episode as having led to ``incident_id``, once: False when it already has one."""
        self._require_transaction()
        cur = self.db.execute(
            "UPDATE alert_groups SET incident_id = ? WHERE id = ? AND incident_id = ''", [incident_id, group_id]
        )
        if cur.rowcount != 1:
            return False
        self.db.execute(
            "INSERT INTO alert_incidents (incident_id, group_id, service, fired_at, declared_at) "
            "VALUES (?, ?, ?, ?, ?)",
            [incident_id, group_id, service, fired_at, at],
        )
        return True

    def alert_groups_of_incident(self, incident_id: str) -> list[str]:
        """The groups whose current episode holds ``incident_id``."""
        cur = self.db.execute("SELECT id FROM alert_groups WHERE incident_id = ? ORDER BY id", [incident_id])
        return [r[0] for r in cur.fetchall()]

    def alert_incidents(self) -> list[dict]:
        """Incidents declared from alerts: the service and when its alert started firing."""
        return self._dicts("SELECT * FROM alert_incidents ORDER BY fired_at")

    def alert_fired_at(self, incident_id: str) -> str:
        """When the alert an incident was declared from started firing; "" for an incident declared otherwise."""
        row = self.db.execute("SELECT fired_at FROM alert_incidents WHERE incident_id = ?", [incident_id]).fetchone()
        return (row[0] or "") if row else ""

    def alert_instances(self, group_id: str) -> list[dict]:
        return self._dicts(
            f"SELECT {', '.join(INSTANCE_COLUMNS)} FROM alert_instances WHERE group_id = ? "
            "ORDER BY starts_at, fingerprint",
            [group_id],
        )

    def replace_alert_instances(self, group_id: str, rows: list[dict]) -> None:
        """The alerts the group holds now: each as Alertmanager last sent it (ones it no longer sends are kept)."""
        self._require_transaction()
        self.db.conn.executemany(
            f"INSERT OR REPLACE INTO alert_instances (group_id, {', '.join(INSTANCE_COLUMNS)}) "
            f"VALUES (?, {', '.join('?' for _ in INSTANCE_COLUMNS)})",
            [[group_id, *(r[c] for c in INSTANCE_COLUMNS)] for r in rows],
        )

    def clear_alert_instances(self, group_id: str) -> None:
        """Forget a group's alerts of an earlier episode."""
        self._require_transaction()
        self.db.execute("DELETE FROM alert_instances WHERE group_id = ?", [group_id])

    def add_alert_event(self, group_id: str, actor: str, kind: str, text: str, at: str | None = None) -> None:
        self._require_transaction()
        self.db.execute(
            "INSERT INTO alert_events (group_id, at, actor, kind, text) VALUES (?, ?, ?, ?, ?)",
            [group_id, at or _now(), actor, kind, text],
        )

    def alert_events(self, group_id: str) -> list[dict]:
        return self._dicts(
            "SELECT at, actor, kind, text FROM alert_events WHERE group_id = ? ORDER BY at, id", [group_id]
        )
