"""Incidents declared in Slack while they are live, and their timeline of events."""

from __future__ import annotations

from bot.store.base import StoreBase, _now


class LiveIncidentStore(StoreBase):
    """Live incidents (open -> resolved) and the events of each."""

    def insert_live_incident(self, row: dict) -> None:
        self._require_transaction()
        self.db["live_incidents"].insert(row)

    def live_incident(self, incident_id: str) -> dict | None:
        cur = self.db.execute("SELECT * FROM live_incidents WHERE id = ?", [incident_id])
        row = cur.fetchone()
        return dict(zip([c[0] for c in cur.description], row, strict=True)) if row else None

    def live_incidents(self, status: str | None = None) -> list[dict]:
        where, params = ("status = ?", [status]) if status else ("1=1", [])
        cur = self.db.execute(f"SELECT * FROM live_incidents WHERE {where} ORDER BY declared_at DESC", params)
        names = [c[0] for c in cur.description]
        return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]

    def live_incident_in_channel(self, channel: str) -> dict | None:
        cur = self.db.execute(
            "SELECT * FROM live_incidents WHERE channel = ? ORDER BY declared_at DESC LIMIT 1", [channel]
        )
        row = cur.fetchone()
        return dict(zip([c[0] for c in cur.description], row, strict=True)) if row else None

    def update_live_incident(self, incident_id: str, **fields: object) -> None:
        self._require_transaction()
        sets = ", ".join(f"{k} = ?" for k in fields)
        self.db.execute(f"UPDATE live_incidents SET {sets} WHERE id = ?", [*fields.values(), incident_id])

    def mark_incident_learned(self, incident_id: str, at: str) -> None:
        """Record that a resolved incident was indexed (the first time only); nothing for an id that is not live."""
        self._require_transaction()
        self.db.execute("UPDATE live_incidents SET learned_at = ? WHERE id = ? AND learned_at = ''", [at, incident_id])

    def unsettled_incident_channels(self) -> list[str]:
        """The channels of incidents declared before opsbot asked Slack whether their channel is private."""
        return [r[0] for r in self.db.execute("SELECT DISTINCT channel FROM live_incidents WHERE private = -1")]

    def settle_incident_privacy(self, channel: str, private: bool) -> None:
        """Record what Slack said of ``channel`` for the incidents whose privacy was not known yet."""
        self._require_transaction()
        self.db.execute(
            "UPDATE live_incidents SET private = ? WHERE channel = ? AND private = -1", [int(private), channel]
        )

    def learned_unsettled(self, channel: str) -> list[str]:
        """Incidents of ``channel`` indexed by an opsbot that did not ask yet whether their channel is private."""
        q = "SELECT id FROM live_incidents WHERE channel = ? AND private = -1 AND learned_at != '' ORDER BY id"
        return [r[0] for r in self.db.execute(q, [channel])]

    def unmark_incident_learned(self, incident_id: str) -> None:
        """The incident is no longer among the indexed ones (its channel turned out private)."""
        self._require_transaction()
        self.db.execute("UPDATE live_incidents SET learned_at = '' WHERE id = ?", [incident_id])

    def unlearned_incidents(self) -> list[dict]:
        """Resolved incidents never indexed, oldest first: not marked learned and not among the past incidents.
        Private ones are never indexed (see ``LiveIncident.private``)."""
        cur = self.db.execute(
            "SELECT * FROM live_incidents WHERE status = 'resolved' AND learned_at = '' AND private = 0 "
            "AND id NOT IN (SELECT id FROM incidents) ORDER BY resolved_at, id"
        )
        names = [c[0] for c in cur.description]
        return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]

    def resolve_live_incident(self, incident_id: str, at: str, resolution: str) -> bool:
        """open -> resolved, once."""
        self._require_transaction()
        cur = self.db.execute(
            "UPDATE live_incidents SET status = 'resolved', resolved_at = ?, resolution = ? "
            "WHERE id = ? AND status = 'open'",
            [at, resolution, incident_id],
        )
        return cur.rowcount == 1

    def cancel_live_incident(self, incident_id: str) -> bool:
        """open -> cancelled, once: declared by mistake, kept for the audit."""
        self._require_transaction()
        cur = self.db.execute(
            "UPDATE live_incidents SET status = 'cancelled' WHERE id = ? AND status = 'open'", [incident_id]
        )
        return cur.rowcount == 1

    def add_incident_event(
        self, incident_id: str, actor: str, kind: str, text: str, at: str | None = None, message: str = ""
    ) -> None:
        """One timeline entry; ``message`` names the Slack message it is (`channel:ts`) for a pinned one."""
        self._require_transaction()
        self.db.execute(
            "INSERT INTO incident_events (incident_id, at, actor, kind, text, message) VALUES (?, ?, ?, ?, ?, ?)",
            [incident_id, at or _now(), actor, kind, text, message],
        )

    def has_pinned_message(self, incident_id: str, message: str, text: str = "") -> bool:
        """Whether the Slack message ``message`` (`channel:ts`) is in the incident's timeline already; a pin kept
        before messages were recorded with it (m021) counts when its ``text`` is the same."""
        row = self.db.execute(
            "SELECT 1 FROM incident_events WHERE incident_id = ? AND kind = 'pinned' "
            "AND (message = ? OR (message = '' AND text = ?)) LIMIT 1",
            [incident_id, message, text],
        ).fetchone()
        return row is not None

    def incident_events(self, incident_id: str) -> list[dict]:
        cur = self.db.execute(
            "SELECT at, actor, kind, text FROM incident_events WHERE incident_id = ? ORDER BY at, id", [incident_id]
        )
        return [dict(zip(("at", "actor", "kind", "text"), r, strict=True)) for r in cur.fetchall()]

    def incident_ids_for_year(self, year: int) -> list[str]:
        pattern = f"INC-{year}-%"
        rows = self.db.execute(
            "SELECT id FROM incidents WHERE id LIKE ? UNION SELECT id FROM live_incidents WHERE id LIKE ?",
            [pattern, pattern],
        )
        return [r[0] for r in rows.fetchall()]
