"""Documents and their chunks: full-text index, embeddings and vectors, term statistics, alert routes.

Vectors are stored per (model, content hash), so text that did not change is never embedded again.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np

from bot.errors import OpsbotError
from bot.models import Document
from bot.store.base import DatabaseUnavailable, StoreBase
from bot.text import anchor_key, split_camel


class IndexBusy(OpsbotError):
    """Another index run holds this database's index lock."""


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
    """A chunk as it is read back, with the fields of its document."""

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


class KnowledgeStore(StoreBase):
    """Documents, chunks and what search reads: FTS5, vectors, stems, alert routes."""

    # -- the index lock ----------------------------------------------------

    @contextlib.contextmanager
    def index_lock(self) -> Iterator[None]:
        """Held for a whole index run, so two runs never interleave (one would prune the vectors the other has
        stored but not yet given to its sections). A lock on a file beside the database: the system lets it go
        when the process ends, however it ends."""
        if self.path == ":memory:":  # no other process can open it
            yield
            return
        lock_path = f"{os.path.realpath(self.path)}.index-lock"  # the file's: two links to one database share it
        try:
            handle = open(lock_path, "a")  # noqa: SIM115 - closed below, after the run
        except OSError as exc:
            reason = f"cannot create {lock_path}: {exc.strerror}"
            raise DatabaseUnavailable(self.path, reason, unwritable=True) from None
        with handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise IndexBusy(
                    f"another `opsbot index` is indexing into {self.path} now; wait for it to finish, then run it "
                    "again (it embeds only what is still out of date)."
                ) from None
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    # -- documents and chunks --------------------------------------------

    def document_hashes(self) -> dict[str, str]:
        return dict(self.db.execute("SELECT path, content_hash FROM documents").fetchall())

    def replace_document(
        self,
        doc: Document,
        title_hash: str,
        chunks: list[ChunkRow],
        title_terms: list[str] | None = None,
        title_aliases: dict[str, list[str]] | None = None,
        title_embed: str = "",
    ) -> None:
        """Write a document and its chunks, replacing what was stored for its path.

        ``title_terms`` are the title's words as the full-text index stems them (see ``stems``),
        ``title_aliases`` the words that the document spells its title's short forms with, by short form, and
        ``title_embed`` the text whose vector ``title_hash`` names (so that a lost vector is made again of it).
        """
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
                    "title_terms": json.dumps(list(title_terms or [])),
                    "title_aliases": json.dumps(dict(title_aliases or {})),
                    "title_embed": title_embed,
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

    def runbook_topics(self, limit: int = 50) -> list[tuple[str, list[str]]]:
        """Titles of indexed runbooks and the services each names, by path (for examples in hints)."""
        q = "SELECT title, services FROM documents WHERE kind = 'runbook' AND title != '' ORDER BY path LIMIT ?"
        return [(title, list(json.loads(services or "[]"))) for title, services in self.db.execute(q, [limit])]

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

        Documents kept from an earlier run with another model (their file is unreadable now) are in this state,
        and sections whose vectors an older opsbot's overlapping index runs pruned. For a title, "title" is the
        text its vector was made of, or its title when an older opsbot wrote it, and heading and text are None.
        """
        missing = (
            "SELECT c.embed_hash, d.title, c.heading, c.text FROM chunks c JOIN documents d ON d.path = c.doc_path "
            "WHERE NOT EXISTS (SELECT 1 FROM embeddings e WHERE e.model = ? AND e.hash = c.embed_hash) "
            "UNION SELECT d.title_hash, COALESCE(NULLIF(d.title_embed, ''), d.title), NULL, NULL FROM documents d "
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

    def prune_embeddings(self, model: str, also_keep: str = "") -> int:
        """Drop vectors nothing uses any more: old text, and every other model's but ``also_keep``'s."""
        with self.transaction():
            cur = self.db.execute(
                "DELETE FROM embeddings WHERE model NOT IN (?, ?) OR (hash NOT IN (SELECT embed_hash FROM chunks) "
                "AND hash NOT IN (SELECT title_hash FROM documents WHERE title_hash IS NOT NULL) "
                "AND hash NOT IN (SELECT vector_hash FROM incidents WHERE vector_hash IS NOT NULL) "
                "AND hash NOT IN (SELECT hash FROM ranker_queries))",
                [model, also_keep or model],
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
        """Name (lower case) -> the documents a question naming it means: the runbooks that declare they
        answer that alert, and the incident with that id."""
        routes: dict[str, list[str]] = {}
        for path, alerts in self.db.execute("SELECT path, alerts FROM documents WHERE alerts != '[]' ORDER BY path"):
            for name in json.loads(alerts):
                routes.setdefault(str(name).lower(), []).append(path)
        for path, incident in self.db.execute("SELECT path, incident_id FROM documents WHERE incident_id != ''"):
            routes.setdefault(incident.lower(), []).append(path)
        return routes

    def runbook_urls(self) -> dict[str, str]:
        """Runbook path -> the `url` of its front matter, for the runbooks that have one."""
        return dict(self.db.execute("SELECT path, url FROM documents WHERE kind = 'runbook' AND url != ''"))

    def chunk_with_anchor(self, path: str, anchor: str) -> int | None:
        """The id of the section of ``path`` whose heading anchor is ``anchor``, as ``anchor_key`` compares them."""
        wanted = anchor_key(anchor)
        rows = self.db.execute("SELECT id, anchor FROM chunks WHERE doc_path = ? ORDER BY ord", [path]).fetchall()
        return next((int(row[0]) for row in rows if row[1] and anchor_key(row[1]) == wanted), None)

    def declared_alerts(self) -> dict[str, list[str]]:
        """Path -> the alert names a runbook declares, spelled as declared (alert names are case-sensitive)."""
        rows = self.db.execute("SELECT path, alerts FROM documents WHERE alerts != '[]' ORDER BY path").fetchall()
        return {path: [str(n) for n in json.loads(alerts)] for path, alerts in rows}

    def title_words(self, paths: list[str]) -> tuple[list[tuple[str, ...]], list[dict[str, tuple[str, ...]]]]:
        """For the documents in the order given: the stemmed words of each one's title (empty where unknown), and
        each short form of its title -> the stemmed words it stands for. One read: both from the same writes."""
        rows = {
            path: (terms, aliases)
            for path, terms, aliases in self.db.execute("SELECT path, title_terms, title_aliases FROM documents")
        }
        terms = [tuple(json.loads(rows.get(p, ("[]", "{}"))[0] or "[]")) for p in paths]
        aliases = [
            {k: tuple(v) for k, v in json.loads(rows.get(p, ("[]", "{}"))[1] or "{}").items() if k in own}
            for p, own in zip(paths, terms, strict=True)
        ]
        return terms, aliases

    def corpus_key(self) -> str:
        """A fingerprint of what is indexed: every document's path and content hash."""
        digest = hashlib.sha256()
        for path, content in self.db.execute("SELECT path, content_hash FROM documents ORDER BY path"):
            digest.update(f"{path}\0{content}\n".encode())
        return digest.hexdigest()

    # -- the learned ranker -------------------------------------------------

    def replace_ranker_queries(self, rows: list[tuple[str, str, str, str, str]]) -> None:
        """Store the training queries made from the documents: (doc_path, section, kind, text, vector hash)."""
        with self.transaction():
            self.db.execute("DELETE FROM ranker_queries")
            self.db.conn.executemany(
                "INSERT INTO ranker_queries (doc_path, section, kind, text, hash) VALUES (?, ?, ?, ?, ?)", rows
            )

    def ranker_queries(self) -> list[tuple[str, str, str, str, str]]:
        """The stored training queries: (doc_path, section, kind, text, vector hash), in the order written."""
        rows = self.db.execute("SELECT doc_path, section, kind, text, hash FROM ranker_queries ORDER BY id")
        return [tuple(r) for r in rows]

    def save_ranker(self, model: str, corpus_key: str, params: dict, report: dict) -> None:
        """Keep the ranker fitted for ``model``'s vectors, replacing the previous one."""
        with self.transaction():
            self.db["rankers"].upsert(
                {
                    "model": model,
                    "corpus_key": corpus_key,
                    "params": json.dumps(params),
                    "report": json.dumps(report),
                    "fitted_at": datetime.now(UTC).isoformat(timespec="seconds"),
                },
                pk="model",
            )

    def load_ranker(self, model: str) -> tuple[str, dict, dict] | None:
        """The ranker fitted for ``model``: (corpus key, parameters, report), or None when there is none."""
        row = self.db.execute("SELECT corpus_key, params, report FROM rankers WHERE model = ?", [model]).fetchone()
        return None if row is None else (row[0], json.loads(row[1]), json.loads(row[2]))

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
        # Only the temporary table is written: a deferred transaction, so a search never waits for
        # the database's write lock (which an `opsbot index` in another process may hold).
        with self.lock, self.db.atomic():
            self.db.execute("INSERT INTO temp.query_terms (query_terms) VALUES ('delete-all')")
            self.db.conn.executemany(
                "INSERT INTO temp.query_terms (rowid, body) VALUES (?, ?)", list(enumerate(words, start=1))
            )
            stems = dict(self.db.execute("SELECT doc, term FROM temp.query_terms_vocab").fetchall())
        return [stems.get(position, "") for position in range(1, len(words) + 1)]

    def label_terms(self, paths: list[str]) -> list[dict[str, int]]:
        """For the documents in the order given: how often each stem stands in the services and tags the index adds
        to the body of every section of it (``indexer.build_chunks``), to tell a section's own words from them."""
        with self.lock:
            rows = {p: (s, t) for p, s, t in self.db.execute("SELECT path, services, tags FROM documents")}
        texts = {
            i: split_camel(" ".join(json.loads(rows[p][0] or "[]") + json.loads(rows[p][1] or "[]")))
            for i, p in enumerate(paths, start=1)
            if p in rows
        }
        found: list[dict[str, int]] = [{} for _ in paths]
        texts = {i: text for i, text in texts.items() if text.strip()}
        if not texts:
            return found
        with self.lock, self.db.atomic():  # only the temporary table is written, as in stems()
            self.db.execute("INSERT INTO temp.query_terms (query_terms) VALUES ('delete-all')")
            self.db.conn.executemany("INSERT INTO temp.query_terms (rowid, body) VALUES (?, ?)", list(texts.items()))
            counted = self.db.execute("SELECT doc, term, count(*) FROM temp.query_terms_vocab GROUP BY doc, term")
            for doc, term, n in counted.fetchall():
                found[doc - 1][term] = n
        return found

    def term_chunk_counts(self) -> dict[str, int]:
        """How many chunks hold each stem, for the whole index (one pass over the vocabulary)."""
        with self.lock:
            return dict(self.db.execute("SELECT term, doc FROM chunks_vocab").fetchall())

    def term_counts_in(self, chunk_ids: list[int], stems: list[str]) -> dict[int, dict[str, tuple[int, int]]]:
        """For each chunk, how often each stem stands in its heading and in its body: {id: {stem: (heading, body)}}.

        The chunks are copied into a per-connection temporary FTS table with the index's tokenizer:
        counting there costs the same whatever the size of the index, where the index's own
        instance list of a common word is as long as the index.
        """
        if not chunk_ids or not stems:
            return {}
        counts: dict[int, dict[str, tuple[int, int]]] = {}
        with self.lock, self.db.atomic():  # only the temporary table is written, as in stems()
            self.db.execute("INSERT INTO temp.cite_terms (cite_terms) VALUES ('delete-all')")
            self.db.execute(
                "INSERT INTO temp.cite_terms (rowid, heading, body) "  # the text as the index has it
                f"SELECT rowid, heading, body FROM chunks_fts WHERE rowid IN ({','.join('?' * len(chunk_ids))})",
                chunk_ids,
            )
            rows = self.db.execute(
                "SELECT doc, term, col, count(*) FROM temp.cite_terms_vocab "
                f"WHERE term IN ({','.join('?' * len(stems))}) GROUP BY doc, term, col",
                stems,
            ).fetchall()
        for doc, term, col, n in rows:
            heading, body = counts.setdefault(doc, {}).get(term, (0, 0))
            counts[doc][term] = (heading + n, body) if col == "heading" else (heading, body + n)
        return counts

    def documents_matching(self, match: str, limit: int) -> set[str]:
        """Paths of the documents whose chunks match an FTS5 query (among the first ``limit`` chunks found)."""
        sql = (
            "SELECT DISTINCT doc_path FROM chunks WHERE id IN "
            "(SELECT rowid FROM chunks_fts WHERE chunks_fts MATCH ? LIMIT ?)"
        )
        with self.lock:
            return {r[0] for r in self.db.execute(sql, [match, limit]).fetchall()}

    def fts_search(self, match: str, limit: int, weights: tuple[float, float, float]) -> list[tuple[int, float]]:
        """Chunk ids matching an FTS5 query, best first, with their BM25 score (lower is better)."""
        sql = (
            "SELECT rowid, bm25(chunks_fts, ?, ?, ?) AS rank FROM chunks_fts "
            "WHERE chunks_fts MATCH ? ORDER BY rank LIMIT ?"
        )
        with self.lock:
            return [(r[0], r[1]) for r in self.db.execute(sql, [*weights, match, limit]).fetchall()]

    def chunk_headings(self, ids: list[int]) -> dict[int, str]:
        """The heading path of each of these chunks."""
        if not ids:
            return {}
        marks = ",".join("?" * len(ids))
        return dict(self.db.execute(f"SELECT id, heading FROM chunks WHERE id IN ({marks})", ids).fetchall())

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
