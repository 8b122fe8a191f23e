"""Slack conversations: events already seen, answers given, thread questions, votes, channel settings."""

from __future__ import annotations

import json

import numpy as np

from bot.store.base import StoreBase, _now

# Slack wants an event acknowledged within 3 s; recording its id waits no longer than this for another writer.
EVENT_WAIT_S = 0.5

# One person's vote on one document for one question counts once, their latest: each asking gets an answer of its
# own to vote on, and asking the same thing ten times and pressing 👍 each time was ten votes, for everyone.
LATEST_OF_PERSON = (
    "f.id = (SELECT max(g.id) FROM feedback g WHERE g.user = f.user AND g.path = f.path "
    "AND lower(trim(g.query)) = lower(trim(f.query)))"
)


class ConversationStore(StoreBase):
    """What the Slack side remembers between messages."""

    def first_time_seen(self, event_id: str) -> bool:
        """Record an event id; False when it was seen before (a retry). Raises "database is locked" when another
        writer holds the database for more than EVENT_WAIT_S."""
        with self.transaction(wait=EVENT_WAIT_S):
            cur = self.db.execute("INSERT OR IGNORE INTO events_seen (event_id, at) VALUES (?, ?)", [event_id, _now()])
            return cur.rowcount == 1

    def claim_event(self, event_id: str) -> bool:
        """Inside store.transaction(): record an event id; False when it was seen before (a replay)."""
        self._require_transaction()
        cur = self.db.execute("INSERT OR IGNORE INTO events_seen (event_id, at) VALUES (?, ?)", [event_id, _now()])
        return cur.rowcount == 1

    def claim_hook_event(self, event_id: str, reported: str) -> tuple[bool, str]:
        """Inside store.transaction(): record a CI event's id and what it reported. (True, "") the first time; then
        (False, what the id reported first), "" for an id recorded before opsbot kept that. What it reported is kept
        in a second row, ``hook:ID#WHAT`` ('#' is not allowed in an event id), pruned with the id's own."""
        if self.claim_event(f"hook:{event_id}"):
            self.claim_event(f"hook:{event_id}#{reported}")
            return True, ""
        first = self.db.execute(  # every row of the id's prefix: '$' is the character after '#'
            "SELECT event_id FROM events_seen WHERE event_id >= ? AND event_id < ? LIMIT 1",
            [f"hook:{event_id}#", f"hook:{event_id}$"],
        ).fetchone()
        return False, first[0].partition("#")[2] if first else ""

    def prune_seen_events(self, events_before: str, hooks_before: str) -> int:
        """Forget Slack's event ids seen before ``events_before`` (Slack retries an event for minutes, not days) and
        CI events' before ``hooks_before``; shares are kept (an answer is shared once, however old). How many."""
        with self.transaction():
            cur = self.db.execute(
                "DELETE FROM events_seen WHERE (at < ? AND event_id NOT LIKE 'share:%' AND event_id NOT LIKE 'hook:%') "
                "OR (at < ? AND event_id LIKE 'hook:%')",
                [events_before, hooks_before],
            )
            return cur.rowcount

    def unclaim_event(self, event_id: str) -> bool:
        """Forget a claim whose work came to nothing (a share Slack refused), so it can be claimed again."""
        with self.transaction():
            return self.db.execute("DELETE FROM events_seen WHERE event_id = ?", [event_id]).rowcount == 1

    def event_claimed(self, event_id: str) -> bool:
        """Whether ``claim_event`` recorded ``event_id`` already."""
        return self.db.execute("SELECT 1 FROM events_seen WHERE event_id = ?", [event_id]).fetchone() is not None

    def save_answer(
        self,
        answer_id: str,
        query: str,
        paths: list[str],
        channel: str,
        user: str,
        thread_ts: str,
        shown: dict | None = None,
    ) -> None:
        """Remember an answer for its votes and its Share; ``shown``: what it showed, when it can be shared."""
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
                    "shown": json.dumps(shown) if shown else "",
                },
                replace=True,
            )

    def get_answer(self, answer_id: str) -> dict | None:
        """A saved answer; its ``shown`` is None when it was saved without it (or before answers kept it)."""
        row = self.db.execute(
            "SELECT id, query, paths, channel, user, thread_ts, shown FROM answers WHERE id = ?", [answer_id]
        )
        found = row.fetchone()
        if not found:
            return None
        keys = ("id", "query", "paths", "channel", "user", "thread_ts", "shown")
        data = dict(zip(keys, found, strict=True))
        data["paths"] = json.loads(data["paths"])
        data["shown"] = json.loads(data["shown"]) if data["shown"] else None
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
        self,
        answer_id: str,
        user: str,
        query: str,
        path: str,
        vote: int,
        vector: np.ndarray | None,
        model: str = "",
    ) -> bool:
        """Store or change one person's vote on an answer, with its question's vector by ``model``; False when the
        vote was already the same.

        A changed vote is a new row: a person's latest vote on a question is the one with the highest id
        (``LATEST_OF_PERSON``), and a change made in place kept its old id, so a 👍 given later on another answer
        to the same question outranked it for good."""
        blob = None if vector is None else np.asarray(vector, dtype=np.float32).tobytes()
        with self.transaction():
            old = self.db.execute(
                "SELECT vote, vector, model FROM feedback WHERE answer_id = ? AND user = ?", [answer_id, user]
            ).fetchone()
            if old and old[0] == vote:
                return False
            if old:
                self.db.execute("DELETE FROM feedback WHERE answer_id = ? AND user = ?", [answer_id, user])
                if blob is None:  # the question's vector, as it was embedded for the first vote
                    blob, model = old[1], old[2]
            self.db.execute(
                "INSERT INTO feedback (user, query, path, vote, answer_id, at, vector, model) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [user, query, path, vote, answer_id, _now(), blob, model],
            )
            return True

    def feedback_rows(self) -> list[dict]:
        rows = self.db.execute("SELECT user, query, path, vote, at FROM feedback ORDER BY id").fetchall()
        return [dict(zip(("user", "query", "path", "vote", "at"), r, strict=True)) for r in rows]

    def votes_for_training(self, model: str) -> list[tuple[str, str, int, np.ndarray]]:
        """Every vote whose question's vector is ``model``'s (or of no recorded model, from before votes kept
        one), oldest first: (question, voted path, +1 or -1, vector)."""
        rows = self.db.execute(
            "SELECT query, path, vote, vector FROM feedback f WHERE vector IS NOT NULL AND model IN (?, '') "
            f"AND {LATEST_OF_PERSON} ORDER BY id",
            [model],
        )
        return [(q, p, int(v), np.frombuffer(blob, dtype=np.float32)) for q, p, v, blob in rows.fetchall()]

    def feedback_questions(self, model: str) -> list[tuple[int, str]]:
        """The row id and question of each vote whose vector is not ``model``'s, for ``set_feedback_vectors``."""
        rows = self.db.execute("SELECT id, query FROM feedback WHERE model != ? ORDER BY id", [model])
        return [(int(i), q) for i, q in rows.fetchall()]

    def set_feedback_vectors(self, vectors: dict[int, np.ndarray], model: str) -> None:
        """Replace the question vectors of the votes named by row id with ``model``'s."""
        with self.transaction():
            for row_id, vector in vectors.items():
                blob = np.asarray(vector, dtype=np.float32).tobytes()
                self.db.execute("UPDATE feedback SET vector = ?, model = ? WHERE id = ?", [blob, model, row_id])

    def votes_key(self) -> str:
        """Changes whenever a vote is added or changed: part of what the ranker was fitted on."""
        count, last = self.db.execute("SELECT count(*), max(at) FROM feedback").fetchone()
        changed = self.db.execute("SELECT sum(vote * id) FROM feedback").fetchone()[0]
        return f"{count}:{last}:{changed}"

    def feedback_vectors(self, model: str) -> tuple[np.ndarray, list[str], np.ndarray]:
        """Question vectors of the votes by ``model`` (or of no recorded model) with the voted document and the
        vote (+1 or -1): another model's vectors mean nothing here, and may not even have as many dimensions."""
        rows = self.db.execute(
            "SELECT vector, path, vote FROM feedback f WHERE vector IS NOT NULL AND model IN (?, '') "
            f"AND {LATEST_OF_PERSON}",
            [model],
        ).fetchall()
        if not rows:
            return np.zeros((0, 0), dtype=np.float32), [], np.zeros(0, dtype=np.float32)
        matrix = np.frombuffer(b"".join(r[0] for r in rows), dtype=np.float32).reshape(len(rows), -1).copy()
        return matrix, [r[1] for r in rows], np.asarray([r[2] for r in rows], dtype=np.float32)

    def set_channel_answer_mode(self, channel: str, mode: str, updated_by: str) -> None:
        with self.transaction():
            self.db["channel_settings"].upsert(
                {"channel": channel, "answer": mode, "updated_by": updated_by, "at": _now()}, pk="channel"
            )

    def replace_channel_answer_modes(self, modes: dict[str, str], updated_by: str) -> None:
        """The modes that ``updated_by`` (a file) gives, in place of all it gave before: a channel taken out of
        the file goes back to the default; one set otherwise (the CLI) is left alone."""
        with self.transaction():
            marks = ",".join("?" * len(modes))
            keep = f" AND channel NOT IN ({marks})" if modes else ""
            self.db.execute(f"DELETE FROM channel_settings WHERE updated_by = ?{keep}", [updated_by, *modes])
            for channel, mode in modes.items():
                self.set_channel_answer_mode(channel, mode, updated_by)

    def channel_answer_modes(self) -> dict[str, str]:
        return dict(self.db.execute("SELECT channel, answer FROM channel_settings").fetchall())
