"""The storage layer: every SQL statement of opsbot lives here.

SQLite through sqlite-utils, schema changes as numbered migrations. Vectors are stored
per (model, content hash), so text that did not change is never embedded again.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from sqlite_utils import Database
from sqlite_utils.migrations import Migrations

from bot.models import Document, Expert, Incident, TimelineEntry

migrations = Migrations("opsbot")
TOKENIZER = "porter unicode61 remove_diacritics 2"
SLACK_PREFIX = "slack:"  # path of incidents resolved in Slack and not (yet) exported to a file


@migrations()
def m001_knowledge(db: Database) -> None:
    db["meta"].create({"key": str, "value": str}, pk="key")
    db["documents"].create(
        {
            "path": str,
            "kind": str,
            "title": str,
            "url": str,
            "services": str,
            "tags": str,
            "owners": str,
            "incident_id": str,
            "title_hash": str,
            "content_hash": str,
            "indexed_at": str,
        },
        pk="path",
    )
    db["chunks"].create(
        {
            "id": int,
            "doc_path": str,
            "ord": int,
            "heading": str,
            "anchor": str,
            "text": str,
            "embed_hash": str,
        },
        pk="id",
        foreign_keys=[("doc_path", "documents", "path")],
    )
    db["chunks"].create_index(["doc_path"])
    db["chunks"].create_index(["embed_hash"])
    db["embeddings"].create({"model": str, "hash": str, "vector": bytes}, pk=("model", "hash"))
    db.execute(f"CREATE VIRTUAL TABLE chunks_fts USING fts5(title, heading, body, tokenize={TOKENIZER!r})")


@migrations()
def m002_incidents_and_roster(db: Database) -> None:
    db["incidents"].create(
        {
            "id": str,
            "title": str,
            "date": str,
            "severity": int,
            "services": str,
            "responders": str,
            "summary": str,
            "root_cause": str,
            "resolution": str,
            "duration_minutes": int,
            "timeline": str,
            "path": str,
        },
        pk="id",
    )
    db["experts"].create(
        {
            "id": str,
            "name": str,
            "team": str,
            "skills": str,
            "services": str,
            "timezone": str,
            "hours": str,
            "away": int,
        },
        pk="id",
    )


@migrations()
def m003_term_statistics(db: Database) -> None:
    # How many chunks hold each (stemmed) term: lets search skip terms that are everywhere.
    db.execute("CREATE VIRTUAL TABLE chunks_vocab USING fts5vocab(chunks_fts, 'row')")


@migrations()
def m004_conversations(db: Database) -> None:
    # Slack retries an event it thinks was lost; its id is remembered so it is answered once.
    db["events_seen"].create({"event_id": str, "at": str}, pk="event_id")
    db["answers"].create(
        {"id": str, "query": str, "paths": str, "channel": str, "user": str, "thread_ts": str, "at": str}, pk="id"
    )
    db["conversations"].create(
        {"channel": str, "thread_ts": str, "question": str, "at": str}, pk=("channel", "thread_ts")
    )
    db["feedback"].create(
        {"id": int, "user": str, "query": str, "path": str, "vote": int, "answer_id": str, "at": str, "vector": bytes},
        pk="id",
    )
    db["feedback"].create_index(["answer_id", "user"], unique=True)
    db["channel_settings"].create({"channel": str, "answer": str, "updated_by": str, "at": str}, pk="channel")


@migrations()
def m005_services_and_suggestions(db: Database) -> None:
    db["services"].create({"name": str, "owners": str, "config": str}, pk="name")
    db["incidents"].add_column("vector_hash", str)  # the expert model's vector of the incident
    # Who was suggested first, and when: spreads the load between equally good people.
    db["suggestions"].create({"id": int, "at": str, "text": str, "first": str, "ranked": str}, pk="id")


@migrations()
def m006_deploys(db: Database) -> None:
    db["deploy_requests"].create(
        {
            "id": str,
            "kind": str,  # deploy | rollback
            "service": str,
            "env": str,
            "version": str,
            "from_version": str,
            "requester": str,
            "status": str,  # pending, running, succeeded, failed, timed_out, rejected, expired, interrupted
            "approvals_needed": int,
            "created_at": str,
            "expires_at": str,
            "started_at": str,
            "finished_at": str,
            "channel": str,
            "message_ts": str,
            "exit_code": int,
            "log_tail": str,
            "source": str,  # slack | ci
            "commit_sha": str,
            "commit_time": str,
            "pipeline_url": str,
            "changes": str,
        },
        pk="id",
    )
    db["deploy_requests"].create_index(["service", "env", "status"])
    db["deploy_decisions"].create(
        {"request_id": str, "user": str, "decision": str, "at": str}, pk=("request_id", "user")
    )
    # One active request per service and environment: the primary key is the lock.
    db["deploy_locks"].create(
        {"service": str, "env": str, "request_id": str, "holder": str, "at": str}, pk=("service", "env")
    )
    db["audit"].create({"id": int, "at": str, "actor": str, "action": str, "request_id": str, "details": str}, pk="id")


@migrations()
def m007_live_incidents(db: Database) -> None:
    db["live_incidents"].create(
        {
            "id": str,
            "title": str,
            "severity": int,
            "services": str,
            "status": str,  # open | resolved
            "declared_by": str,
            "declared_at": str,
            "channel": str,
            "origin_channel": str,
            "roles": str,
            "resolved_at": str,
            "resolution": str,
        },
        pk="id",
    )
    db["live_incidents"].create_index(["channel"])
    db["incident_events"].create(
        {"id": int, "incident_id": str, "at": str, "actor": str, "kind": str, "text": str}, pk="id"
    )
    db["incident_events"].create_index(["incident_id"])


@migrations()
def m008_chunk_words(db: Database) -> None:
    # How many words a section has of its own: a "TODO" or "See X" section is not evidence of its own.
    db["chunks"].add_column("words", int)
    rows = db.execute("SELECT id, text FROM chunks").fetchall()
    db.conn.executemany("UPDATE chunks SET words = ? WHERE id = ?", [(len(text.split()), cid) for cid, text in rows])


@migrations()
def m009_alert_routes(db: Database) -> None:
    # The alert names a runbook declares it answers (front matter `alerts`, or an alert-name heading).
    db["documents"].add_column("alerts", str, not_null_default="[]")


@dataclass(frozen=True)
class ChunkRow:
    """A chunk as it is written: display text, the text for full-text search, and its vector's key."""

    ord: int
    heading: str
    anchor: str
    text: str
    fts_title: str
    fts_heading: str
    fts_body: str
    embed_hash: str


@dataclass(frozen=True)
class StoredChunk:
    id: int
    doc_path: str
    heading: str
    anchor: str
    text: str
    kind: str
    title: str
    url: str
    incident_id: str
    services: tuple[str, ...]


class Store:
    """A connection to the opsbot database, safe to share between threads."""

    def __init__(self, path: Path | str) -> None:
        self.path = str(path)
        conn = sqlite3.connect(self.path, check_same_thread=False, timeout=30)
        self.db = Database(conn)
        self.lock = threading.RLock()
        if self.path != ":memory:":
            self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA foreign_keys=ON")
        with self.lock:
            migrations.apply(self.db)
            self.db.execute(f"CREATE VIRTUAL TABLE temp.query_terms USING fts5(body, tokenize={TOKENIZER!r})")
            self.db.execute("CREATE VIRTUAL TABLE temp.query_terms_vocab USING fts5vocab(temp, query_terms, instance)")

    def close(self) -> None:
        self.db.close()

    @contextmanager
    def transaction(self) -> Iterator[None]:
        with self.lock, self.db.atomic():
            yield

    # -- meta -------------------------------------------------------------

    def get_meta(self, key: str, default: str = "") -> str:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", [key]).fetchone()
        return row[0] if row else default

    def set_meta(self, key: str, value: str) -> None:
        with self.transaction():
            self.db["meta"].upsert({"key": key, "value": value}, pk="key")

    # -- documents and chunks --------------------------------------------

    def document_hashes(self) -> dict[str, str]:
        return dict(self.db.execute("SELECT path, content_hash FROM documents").fetchall())

    def replace_document(self, doc: Document, title_hash: str, chunks: list[ChunkRow]) -> None:
        """Write a document and its chunks, replacing what was stored for its path."""
        with self.transaction():
            self._delete_document(doc.path)
            self.db["documents"].insert(
                {
                    "path": doc.path,
                    "kind": doc.kind,
                    "title": doc.title,
                    "url": doc.url,
                    "services": json.dumps(list(doc.services)),
                    "tags": json.dumps(list(doc.tags)),
                    "owners": json.dumps(list(doc.owners)),
                    "alerts": json.dumps(list(doc.alerts)),
                    "incident_id": doc.incident_id,
                    "title_hash": title_hash,
                    "content_hash": doc.content_hash,
                    "indexed_at": datetime.now(UTC).isoformat(timespec="seconds"),
                }
            )
            for chunk in chunks:
                cur = self.db.execute(
                    "INSERT INTO chunks (doc_path, ord, heading, anchor, text, words, embed_hash) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?)",
                    [
                        doc.path,
                        chunk.ord,
                        chunk.heading,
                        chunk.anchor,
                        chunk.text,
                        len(chunk.text.split()),
                        chunk.embed_hash,
                    ],
                )
                self.db.execute(
                    "INSERT INTO chunks_fts (rowid, title, heading, body) VALUES (?, ?, ?, ?)",
                    [cur.lastrowid, chunk.fts_title, chunk.fts_heading, chunk.fts_body],
                )

    def delete_documents(self, paths: Iterable[str]) -> None:
        with self.transaction():
            for path in paths:
                self._delete_document(path)

    def _delete_document(self, path: str) -> None:
        self.db.execute("DELETE FROM chunks_fts WHERE rowid IN (SELECT id FROM chunks WHERE doc_path = ?)", [path])
        self.db.execute("DELETE FROM chunks WHERE doc_path = ?", [path])
        self.db.execute("DELETE FROM documents WHERE path = ?", [path])

    def counts(self) -> dict[str, int]:
        q = "SELECT kind, count(*) FROM documents GROUP BY kind"
        result = {kind: n for kind, n in self.db.execute(q).fetchall()}
        result["chunks"] = self.db.execute("SELECT count(*) FROM chunks").fetchone()[0]
        return result

    # -- embeddings -------------------------------------------------------

    def known_embeddings(self, model: str, hashes: Iterable[str]) -> set[str]:
        wanted = list(set(hashes))
        found: set[str] = set()
        for start in range(0, len(wanted), 500):
            part = wanted[start : start + 500]
            marks = ",".join("?" * len(part))
            rows = self.db.execute(
                f"SELECT hash FROM embeddings WHERE model = ? AND hash IN ({marks})", [model, *part]
            ).fetchall()
            found.update(r[0] for r in rows)
        return found

    def save_embeddings(self, model: str, vectors: dict[str, np.ndarray]) -> None:
        with self.transaction():
            self.db.conn.executemany(
                "INSERT OR REPLACE INTO embeddings (model, hash, vector) VALUES (?, ?, ?)",
                [(model, h, np.asarray(v, dtype=np.float32).tobytes()) for h, v in vectors.items()],
            )

    def vectors_missing(self, model: str) -> list[tuple[str, str, str | None, str | None]]:
        """(hash, title, heading, text) of chunks and titles that have no vector for ``model``.

        Only documents kept from an earlier run (their file is unreadable now) can be in this state.
        """
        missing = (
            "SELECT c.embed_hash, d.title, c.heading, c.text FROM chunks c JOIN documents d ON d.path = c.doc_path "
            "WHERE NOT EXISTS (SELECT 1 FROM embeddings e WHERE e.model = ? AND e.hash = c.embed_hash) "
            "UNION SELECT d.title_hash, d.title, NULL, NULL FROM documents d "
            "WHERE NOT EXISTS (SELECT 1 FROM embeddings e WHERE e.model = ? AND e.hash = d.title_hash)"
        )
        return [tuple(r) for r in self.db.execute(missing, [model, model]).fetchall()]

    def vectors_for(self, model: str, hashes: list[str]) -> dict[str, np.ndarray]:
        """Stored vectors for these content hashes (those that exist)."""
        found: dict[str, np.ndarray] = {}
        for start in range(0, len(hashes), 500):
            part = hashes[start : start + 500]
            marks = ",".join("?" * len(part))
            rows = self.db.execute(
                f"SELECT hash, vector FROM embeddings WHERE model = ? AND hash IN ({marks})", [model, *part]
            )
            found.update((h, np.frombuffer(v, dtype=np.float32)) for h, v in rows.fetchall())
        return found

    def prune_embeddings(self, model: str) -> int:
        """Drop vectors nothing uses any more: old text, and every other model's."""
        with self.transaction():
            cur = self.db.execute(
                "DELETE FROM embeddings WHERE model != ? OR (hash NOT IN (SELECT embed_hash FROM chunks) "
                "AND hash NOT IN (SELECT title_hash FROM documents WHERE title_hash IS NOT NULL) "
                "AND hash NOT IN (SELECT vector_hash FROM incidents WHERE vector_hash IS NOT NULL))",
                [model],
            )
            return cur.rowcount

    def load_vectors(self, model: str) -> tuple[np.ndarray, list[str], np.ndarray, np.ndarray]:
        """Chunk ids, their document paths, vectors for ``model`` and word counts, grouped by document.

        The vectors come back as one float32 matrix so a query is a single matrix product.
        """
        rows = self.db.execute(
            "SELECT c.id, c.doc_path, e.vector, c.words FROM chunks c "
            "JOIN embeddings e ON e.hash = c.embed_hash AND e.model = ? ORDER BY c.doc_path, c.ord",
            [model],
        ).fetchall()
        ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
        paths = [r[1] for r in rows]
        words = np.fromiter((r[3] or 0 for r in rows), dtype=np.int32, count=len(rows))
        if not rows:
            return ids, paths, np.zeros((0, 0), dtype=np.float32), words
        matrix = np.frombuffer(b"".join(r[2] for r in rows), dtype=np.float32).reshape(len(rows), -1)
        return ids, paths, matrix.copy(), words

    def alert_routes(self) -> dict[str, list[str]]:
        """Alert name (lower case) -> paths of the runbooks that declare they answer it."""
        routes: dict[str, list[str]] = {}
        for path, alerts in self.db.execute("SELECT path, alerts FROM documents WHERE alerts != '[]' ORDER BY path"):
            for name in json.loads(alerts):
                routes.setdefault(str(name).lower(), []).append(path)
        return routes

    def load_title_vectors(self, model: str, paths: list[str]) -> np.ndarray:
        """One title vector per document path, in the order given (zeros where missing)."""
        rows = dict(
            self.db.execute(
                "SELECT d.path, e.vector FROM documents d JOIN embeddings e ON e.hash = d.title_hash AND e.model = ?",
                [model],
            ).fetchall()
        )
        if not rows:
            return np.zeros((len(paths), 0), dtype=np.float32)
        dim = len(next(iter(rows.values()))) // 4
        zero = bytes(dim * 4)
        data = b"".join(rows.get(p, zero) for p in paths)
        return np.frombuffer(data, dtype=np.float32).reshape(len(paths), dim).copy()

    def stems(self, words: list[str]) -> list[str]:
        """Each word as the index stores it: through the same Porter tokenizer ("" for none).

        The words go into a per-connection temporary FTS table whose vocabulary gives the stems.
        """
        if not words:
            return []
        with self.transaction():
            self.db.execute("DELETE FROM temp.query_terms")
            for position, word in enumerate(words, start=1):
                self.db.execute("INSERT INTO temp.query_terms (rowid, body) VALUES (?, ?)", [position, word])
            stems = dict(self.db.execute("SELECT doc, term FROM temp.query_terms_vocab").fetchall())
        return [stems.get(position, "") for position in range(1, len(words) + 1)]

    def term_chunk_counts(self) -> dict[str, int]:
        """How many chunks hold each stem, for the whole index (one pass over the vocabulary)."""
        with self.lock:
            return dict(self.db.execute("SELECT term, doc FROM chunks_vocab").fetchall())

    def fts_search(self, match: str, limit: int, weights: tuple[float, float, float]) -> list[tuple[int, float]]:
        """Chunk ids matching an FTS5 query, best first, with their BM25 score (lower is better)."""
        sql = (
            "SELECT rowid, bm25(chunks_fts, ?, ?, ?) AS rank FROM chunks_fts "
            "WHERE chunks_fts MATCH ? ORDER BY rank LIMIT ?"
        )
        with self.lock:
            return [(r[0], r[1]) for r in self.db.execute(sql, [*weights, match, limit]).fetchall()]

    def chunks_by_id(self, ids: Iterable[int]) -> dict[int, StoredChunk]:
        wanted = list(ids)
        if not wanted:
            return {}
        marks = ",".join("?" * len(wanted))
        rows = self.db.execute(
            "SELECT c.id, c.doc_path, c.heading, c.anchor, c.text, d.kind, d.title, d.url, d.incident_id, d.services "
            f"FROM chunks c JOIN documents d ON d.path = c.doc_path WHERE c.id IN ({marks})",
            wanted,
        ).fetchall()
        return {
            r[0]: StoredChunk(r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], r[8], tuple(json.loads(r[9] or "[]")))
            for r in rows
        }

    # -- incidents and roster -------------------------------------------

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
            "duration_minutes, timeline FROM incidents ORDER BY date, id"
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
            )
            for r in rows
        ]

    def load_experts(self) -> list[Expert]:
        rows = self.db.execute(
            "SELECT id, name, team, skills, services, timezone, hours, away FROM experts ORDER BY rowid"
        ).fetchall()
        return [
            Expert(r[0], r[1], r[2], tuple(json.loads(r[3])), tuple(json.loads(r[4])), r[5], r[6] or "", bool(r[7]))
            for r in rows
        ]

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
                    }
                    for e in experts
                ]
            )

    def expert_count(self) -> int:
        return self.db.execute("SELECT count(*) FROM experts").fetchone()[0]

    # -- Slack conversations ----------------------------------------------

    def first_time_seen(self, event_id: str) -> bool:
        """Record an event id; False when it was seen before (a retry)."""
        with self.transaction():
            cur = self.db.execute("INSERT OR IGNORE INTO events_seen (event_id, at) VALUES (?, ?)", [event_id, _now()])
            return cur.rowcount == 1

    def claim_event(self, event_id: str) -> bool:
        """Inside store.immediate(): record an event id; False when it was seen before (a replay)."""
        self._require_transaction()
        cur = self.db.execute("INSERT OR IGNORE INTO events_seen (event_id, at) VALUES (?, ?)", [event_id, _now()])
        return cur.rowcount == 1

    def save_answer(
        self, answer_id: str, query: str, paths: list[str], channel: str, user: str, thread_ts: str
    ) -> None:
        with self.transaction():
            self.db["answers"].insert(
                {
                    "id": answer_id,
                    "query": query,
                    "paths": json.dumps(paths),
                    "channel": channel,
                    "user": user,
                    "thread_ts": thread_ts,
                    "at": _now(),
                },
                replace=True,
            )

    def get_answer(self, answer_id: str) -> dict | None:
        row = self.db.execute(
            "SELECT id, query, paths, channel, user, thread_ts FROM answers WHERE id = ?", [answer_id]
        )
        found = row.fetchone()
        if not found:
            return None
        keys = ("id", "query", "paths", "channel", "user", "thread_ts")
        data = dict(zip(keys, found, strict=True))
        data["paths"] = json.loads(data["paths"])
        return data

    def remember_question(self, channel: str, thread_ts: str, question: str) -> None:
        """The first question asked in a thread: later follow-ups are read in its light."""
        with self.transaction():
            self.db.execute(
                "INSERT OR IGNORE INTO conversations (channel, thread_ts, question, at) VALUES (?, ?, ?, ?)",
                [channel, thread_ts, question, _now()],
            )

    def thread_question(self, channel: str, thread_ts: str) -> str | None:
        row = self.db.execute(
            "SELECT question FROM conversations WHERE channel = ? AND thread_ts = ?", [channel, thread_ts]
        ).fetchone()
        return row[0] if row else None

    def record_feedback(
        self, answer_id: str, user: str, query: str, path: str, vote: int, vector: np.ndarray | None
    ) -> bool:
        """Store or change one person's vote on an answer; False when the vote was already the same."""
        blob = None if vector is None else np.asarray(vector, dtype=np.float32).tobytes()
        with self.transaction():
            old = self.db.execute(
                "SELECT vote FROM feedback WHERE answer_id = ? AND user = ?", [answer_id, user]
            ).fetchone()
            if old and old[0] == vote:
                return False
            self.db.execute(
                "INSERT INTO feedback (user, query, path, vote, answer_id, at, vector) VALUES (?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (answer_id, user) DO UPDATE SET vote = excluded.vote, at = excluded.at",
                [user, query, path, vote, answer_id, _now(), blob],
            )
            return True

    def feedback_rows(self) -> list[dict]:
        rows = self.db.execute("SELECT user, query, path, vote, at FROM feedback ORDER BY id").fetchall()
        return [dict(zip(("user", "query", "path", "vote", "at"), r, strict=True)) for r in rows]

    def feedback_vectors(self) -> tuple[np.ndarray, list[str], np.ndarray]:
        """Query vectors of all votes with the voted document and the vote (+1 or -1)."""
        rows = self.db.execute("SELECT vector, path, vote FROM feedback WHERE vector IS NOT NULL").fetchall()
        if not rows:
            return np.zeros((0, 0), dtype=np.float32), [], np.zeros(0, dtype=np.float32)
        matrix = np.frombuffer(b"".join(r[0] for r in rows), dtype=np.float32).reshape(len(rows), -1).copy()
        return matrix, [r[1] for r in rows], np.asarray([r[2] for r in rows], dtype=np.float32)

    def set_channel_answer_mode(self, channel: str, mode: str, updated_by: str) -> None:
        with self.transaction():
            self.db["channel_settings"].upsert(
                {"channel": channel, "answer": mode, "updated_by": updated_by, "at": _now()}, pk="channel"
            )

    def channel_answer_modes(self) -> dict[str, str]:
        return dict(self.db.execute("SELECT channel, answer FROM channel_settings").fetchall())

    # -- deploys -------------------------------------------------------------

    def _require_transaction(self) -> None:
        if not self.db.conn.in_transaction:
            raise RuntimeError("deploy state changes must run inside store.immediate()")

    @contextmanager
    def immediate(self) -> Iterator[None]:
        """A write transaction that takes SQLite's write lock at once, so decisions from several
        processes are serialised (BEGIN IMMEDIATE), not merely several threads."""
        with self.lock:
            self.db.conn.execute("BEGIN IMMEDIATE")
            try:
                yield
            except BaseException:
                self.db.conn.execute("ROLLBACK")
                raise
            self.db.conn.execute("COMMIT")

    DEPLOY_COLUMNS = (
        "id, kind, service, env, version, from_version, requester, status, approvals_needed, created_at, "
        "expires_at, started_at, finished_at, channel, message_ts, exit_code, log_tail, source, commit_sha, "
        "commit_time, pipeline_url, changes"
    )

    def insert_deploy(self, row: dict) -> None:
        self._require_transaction()
        self.db["deploy_requests"].insert(row)

    def deploy_row(self, request_id: str) -> dict | None:
        cur = self.db.execute(f"SELECT {self.DEPLOY_COLUMNS} FROM deploy_requests WHERE id = ?", [request_id])
        found = cur.fetchone()
        return dict(zip([c[0] for c in cur.description], found, strict=True)) if found else None

    def deploy_rows(self, where: str = "1=1", params: list | None = None, limit: int = 1000) -> list[dict]:
        cur = self.db.execute(
            f"SELECT {self.DEPLOY_COLUMNS} FROM deploy_requests WHERE {where} ORDER BY created_at DESC, id LIMIT ?",
            [*(params or []), limit],
        )
        names = [c[0] for c in cur.description]
        return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]

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

    def record_decision(self, request_id: str, user: str, decision: str) -> bool:
        self._require_transaction()
        cur = self.db.execute(
            "INSERT OR IGNORE INTO deploy_decisions (request_id, user, decision, at) VALUES (?, ?, ?, ?)",
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

    def audit(self, actor: str, action: str, request_id: str = "", **details: object) -> None:
        self._require_transaction()
        self.db.execute(
            "INSERT INTO audit (at, actor, action, request_id, details) VALUES (?, ?, ?, ?, ?)",
            [_now(), actor, action, request_id, json.dumps(details, default=str)],
        )

    def audit_rows(self, limit: int = 10000) -> list[dict]:
        """The newest ``limit`` audit rows, oldest first."""
        cur = self.db.execute(
            "SELECT at, actor, action, request_id, details FROM audit ORDER BY id DESC LIMIT ?", [limit]
        )
        return [
            {"at": r[0], "actor": r[1], "action": r[2], "request_id": r[3], "details": json.loads(r[4] or "{}")}
            for r in reversed(cur.fetchall())
        ]

    # -- live incidents ----------------------------------------------------

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

    def resolve_live_incident(self, incident_id: str, at: str, resolution: str) -> bool:
        """open -> resolved, once."""
        self._require_transaction()
        cur = self.db.execute(
            "UPDATE live_incidents SET status = 'resolved', resolved_at = ?, resolution = ? "
            "WHERE id = ? AND status = 'open'",
            [at, resolution, incident_id],
        )
        return cur.rowcount == 1

    def add_incident_event(self, incident_id: str, actor: str, kind: str, text: str, at: str | None = None) -> None:
        self._require_transaction()
        self.db.execute(
            "INSERT INTO incident_events (incident_id, at, actor, kind, text) VALUES (?, ?, ?, ?, ?)",
            [incident_id, at or _now(), actor, kind, text],
        )

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


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
