"""Past incidents, the roster of experts, services and their owners, and who was suggested."""

from __future__ import annotations

import json
from datetime import date, datetime
from zoneinfo import ZoneInfo

from bot.models import Expert, Incident, Override, Rotation, TimelineEntry
from bot.store.base import StoreBase, _now

SLACK_PREFIX = "slack:"  # path of incidents resolved in Slack and not (yet) exported to a file


class RosterStore(StoreBase):
    """What expert suggestions read: incidents, experts, services, earlier suggestions."""

    def upsert_incident(self, incident: Incident, vector_hash: str) -> None:
        """Store one incident (resolved in Slack), leaving the others as they are."""
        with self.transaction():
            self.db["incidents"].upsert(self._incident_row(incident, vector_hash), pk="id")

    @staticmethod
    def _incident_row(i: Incident, vector_hash: str | None) -> dict:
        return {
            "id": i.id,
            "title": i.title,
            "date": i.date.isoformat(),
            "severity": i.severity,
            "services": json.dumps(list(i.services)),
            "responders": json.dumps(list(i.responders)),
            "summary": i.summary,
            "root_cause": i.root_cause,
            "resolution": i.resolution,
            "duration_minutes": i.duration_minutes,
            "timeline": json.dumps([[t.at, t.event] for t in i.timeline]),
            "path": i.path,
            "vector_hash": vector_hash,
            "env": i.env,
        }

    def replace_incidents(
        self, incidents: list[Incident], keep: set[str] = frozenset(), vector_hashes: dict[str, str] | None = None
    ) -> None:
        """Store the incidents read from files; ids in ``keep`` (unreadable files) stay as they were."""
        with self.transaction():
            current = {i.id for i in incidents}
            for old_id, path in self.db.execute("SELECT id, path FROM incidents").fetchall():
                if old_id not in current and path not in keep and not path.startswith(SLACK_PREFIX):
                    self.db.execute("DELETE FROM incidents WHERE id = ?", [old_id])
            self.db["incidents"].upsert_all(
                [self._incident_row(i, (vector_hashes or {}).get(i.id)) for i in incidents], pk="id"
            )

    def load_incidents(self) -> list[Incident]:
        """Every stored incident, oldest first."""
        rows = self.db.execute(
            "SELECT id, title, date, severity, services, responders, summary, root_cause, resolution, path, "
            "duration_minutes, timeline, env FROM incidents ORDER BY date, id"
        ).fetchall()
        return [
            Incident(
                id=r[0],
                title=r[1],
                date=datetime.fromisoformat(r[2]),
                severity=r[3],
                services=tuple(json.loads(r[4])),
                responders=tuple(json.loads(r[5])),
                summary=r[6],
                root_cause=r[7],
                resolution=r[8],
                path=r[9],
                duration_minutes=r[10],
                timeline=tuple(TimelineEntry(at, event) for at, event in json.loads(r[11] or "[]")),
                env=r[12] or "",
            )
            for r in rows
        ]

    def load_experts(self) -> list[Expert]:
        rows = self.db.execute(
            "SELECT id, name, team, skills, services, timezone, hours, away, left_on FROM experts ORDER BY rowid"
        ).fetchall()
        return [
            Expert(
                r[0],
                r[1],
                r[2],
                tuple(json.loads(r[3])),
                tuple(json.loads(r[4])),
                r[5],
                r[6] or "",
                bool(r[7]),
                date.fromisoformat(r[8]) if r[8] else None,
            )
            for r in rows
        ]

    def replace_rotations(self, rotations: list[Rotation]) -> None:
        """Store the roster's on-call rotations, replacing the previous ones."""
        with self.transaction():
            self.db.execute("DELETE FROM rotations")
            self.db["rotations"].insert_all(
                [
                    {
                        "team": r.team,
                        "spec": json.dumps(
                            {
                                "members": list(r.members),
                                "handoff_day": r.handoff_day,
                                "handoff_time": r.handoff_time,
                                "timezone": r.timezone,
                                "start": r.start.isoformat(),
                                "services": list(r.services),
                                "overrides": [[o.person, o.start.isoformat(), o.end.isoformat()] for o in r.overrides],
                                "leaving": [[person, day.isoformat()] for person, day in r.leaving],
                            }
                        ),
                    }
                    for r in rotations
                ]
            )

    def load_rotations(self) -> list[Rotation]:
        rotations = []
        for team, spec in self.db.execute("SELECT team, spec FROM rotations ORDER BY rowid").fetchall():
            s = json.loads(spec)
            zone = ZoneInfo(s["timezone"])  # stored with their offset: shown again in the rota's zone
            overrides = tuple(
                Override(p, *(datetime.fromisoformat(t).astimezone(zone) for t in (start, end)))
                for p, start, end in s["overrides"]
            )
            rotations.append(
                Rotation(
                    team,
                    tuple(s["members"]),
                    s["handoff_day"],
                    s["handoff_time"],
                    s["timezone"],
                    date.fromisoformat(s["start"]),
                    tuple(s["services"]),
                    overrides,
                    tuple((person, date.fromisoformat(day)) for person, day in s.get("leaving", [])),
                )
            )
        return rotations

    def replace_services(self, services: dict[str, dict]) -> None:
        """Store services.yaml: each service's owners (roster ids or team names) and its whole entry."""
        with self.transaction():
            self.db.execute("DELETE FROM services")
            self.db["services"].insert_all(
                [
                    {"name": name, "owners": json.dumps(list(cfg.get("owners") or [])), "config": json.dumps(cfg)}
                    for name, cfg in services.items()
                ]
            )

    def service_configs(self) -> dict[str, dict]:
        return {name: json.loads(config) for name, config in self.db.execute("SELECT name, config FROM services")}

    def service_teams(self) -> dict[str, str]:
        """services.yaml `team:` of each service that names one."""
        teams = {}
        for name, config in self.db.execute("SELECT name, config FROM services"):
            team = json.loads(config).get("team")
            if isinstance(team, str) and team:
                teams[name] = team
        return teams

    def service_owners(self) -> dict[str, list[str]]:
        return {name: json.loads(owners) for name, owners in self.db.execute("SELECT name, owners FROM services")}

    def log_suggestion(self, text: str, ranked: list[str]) -> None:
        with self.transaction():
            self.db["suggestions"].insert(
                {"at": _now(), "text": text[:500], "first": ranked[0] if ranked else "", "ranked": json.dumps(ranked)}
            )

    def recent_first_suggestions(self, limit: int = 10) -> list[str]:
        rows = self.db.execute("SELECT first FROM suggestions ORDER BY id DESC LIMIT ?", [limit]).fetchall()
        return [r[0] for r in rows]

    def forget_slack_incident(self, incident_id: str) -> None:
        """Take an incident resolved in Slack out of the past incidents (not one exported to a file since)."""
        self._require_transaction()
        self.db.execute("DELETE FROM incidents WHERE id = ? AND path = ?", [incident_id, SLACK_PREFIX + incident_id])

    def incident_count(self) -> int:
        return self.db.execute("SELECT count(*) FROM incidents").fetchone()[0]

    def replace_experts(self, experts: list[Expert]) -> None:
        with self.transaction():
            self.db.execute("DELETE FROM experts")
            self.db["experts"].insert_all(
                [
                    {
                        "id": e.id,
                        "name": e.name,
                        "team": e.team,
                        "skills": json.dumps(list(e.skills)),
                        "services": json.dumps(list(e.services)),
                        "timezone": e.timezone,
                        "hours": e.hours,
                        "away": int(e.away),
                        "left_on": e.left.isoformat() if e.left else None,
                    }
                    for e in experts
                ]
            )

    def expert_count(self) -> int:
        return self.db.execute("SELECT count(*) FROM experts").fetchone()[0]
