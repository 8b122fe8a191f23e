"""Replies: a question answered from the index, the rota and the expert model, and what is worth showing.

The answer policy lives here, apart from any adapter: which hits are relevant enough to show (a floor, and
a share of the best hit), how they split into runbooks and incidents, when people are suggested with them,
and how suggestions are trimmed. Slack, the shell and the CLI all show the same `Reply`.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import sqlite3
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from bot.answers.experts import MIN_SHARE, ExpertModel, Suggestion, spread_load
from bot.answers.incident_vectors import incident_text
from bot.answers.search import SearchIndex
from bot.config import Settings
from bot.errors import InvalidRequest, NotFound, PermissionDenied
from bot.hints import examples
from bot.models import Answer, SearchHit
from bot.redact import scrub
from bot.rota import OnCall, Rota, asks_who_is_on_call
from bot.store import Store
from bot.store.base import is_write_failure
from bot.text import linked_runbook

log = logging.getLogger(__name__)
RELATIVE_FLOOR = 0.7  # a hit must be at least this close in meaning, relative to the best hit of its kind
# A past incident is shown only when the ranker finds it at least this likely, relative to the answer's best hit.
INCIDENT_LIKELIHOOD = 0.02


@dataclass(frozen=True)
class Reply:
    """An answer prepared for a conversation: the relevant hits split by kind, with an id for feedback."""

    id: str
    answer: Answer
    runbooks: tuple[SearchHit, ...]
    incidents: tuple[SearchHit, ...]
    question: str  # what was searched, with the thread's earlier question when it is a follow-up
    documents: int = 0
    experts: tuple[Suggestion, ...] = ()  # who could help, when the answer involves past incidents
    oncall: tuple[OnCall, ...] = ()  # the answer to "who is on call for X", from the rota
    names: dict[str, str] = field(default_factory=dict)  # roster id -> name, for the on-call answer
    unsaved: str = ""  # why the answer could not be saved for feedback (SQLite's words); "" when it was
    hint_service: str = ""  # a service of this knowledge, for a hint when nothing was found

    @property
    def found(self) -> bool:
        return bool(self.runbooks or self.incidents or self.oncall)

    @property
    def top(self) -> SearchHit | None:
        return (self.runbooks + self.incidents)[0] if self.runbooks or self.incidents else None


def relevant_hits(answer: Answer, settings: Settings) -> tuple[tuple[SearchHit, ...], tuple[SearchHit, ...]]:
    """The hits worth showing, as (runbooks, incidents): weak matches are left out.

    Runbooks and incidents are judged apart, as they are shown apart: an incident told in the question's own
    words is closer in meaning than any runbook, and must not hide the runbook that says what to do. Within a
    kind, a hit stays when it is above the configured floor and not far below the best hit of its kind, or
    when it is the runbook of a named alert, the runbook an alert links to, or a section holding the
    question's words together. The ranker's first of a kind is shown whenever anything of that kind is: a hit
    it ranked lower, however close in meaning, never takes its place.

    A past incident is context, not the answer: it is also left out when the fitted ranker finds it more than
    fifty times less likely to be what was asked about than the answer's best hit (an incident that merely
    shares the question's vague words), unless the question names it. Runbooks are not judged so: the one
    that says what to do stays even when an incident told in the question's own words leads.
    """
    # a runbook put first by a named alert or a link may carry a placeholder score, not the ranker's
    scored = [h.score for h in answer.hits if not (h.alert or h.linked)] or [h.score for h in answer.hits]
    likely = _likelihood(max(scored)) if answer.learned and scored else 0.0
    shown: list[tuple[SearchHit, ...]] = []
    for kind in ("runbook", "incident"):
        hits = [h for h in answer.hits if h.kind == kind]
        best = max((h.similarity for h in hits), default=0.0)
        floor = max(settings.min_similarity, best * RELATIVE_FLOOR)
        keep = [h.similarity >= floor or bool(h.alert or h.quoted or h.linked) for h in hits]
        if any(keep):
            keep[0] = True
        if kind == "incident" and likely:
            unlikely = [_likelihood(h.score) < INCIDENT_LIKELIHOOD * likely and not h.alert for h in hits]
            keep = [k and not u for k, u in zip(keep, unlikely, strict=True)]
        shown.append(tuple(h for h, k in zip(hits, keep, strict=True) if k))
    return shown[0][: min(settings.top_k, 3)], shown[1][:3]


def _likelihood(score: float) -> float:
    """The ranker's log-odds as a probability."""
    return 1.0 / (1.0 + math.exp(-max(min(score, 50.0), -50.0)))


def trim_suggestions(ranked: list[Suggestion], recent_first: list[str], limit: int) -> list[Suggestion]:
    """The people shown: faint reasons dropped, load spread among equals, whoever is on call always kept."""
    if ranked:  # people with only a faint reason are noise next to a strong suggestion
        best = ranked[0].score
        ranked = [s for s in ranked if s.score >= best * MIN_SHARE or s.on_call]
    ranked = spread_load(ranked, recent_first)
    # Whoever holds the pager for a rota involved is always among those shown: a place is kept for each of them
    # (more than ``limit`` only when more rotas are involved), the best of the others fill the rest.
    on_call = [s for s in ranked if s.on_call]
    others = [s for s in ranked if not s.on_call][: max(limit - len(on_call), 0)]
    return [s for s in ranked if s in on_call or s in others][: max(limit, len(on_call))]


class Answerer:
    """Questions, expert suggestions and votes, over the index, the expert model and the rota it is given."""

    def __init__(
        self,
        store: Store,
        settings: Settings,
        index: Callable[[], SearchIndex],
        experts: Callable[[], ExpertModel],
        rota: Callable[[], Rota],
        on_vote: Callable[[], object] | None = None,
    ) -> None:
        self.store = store
        self.settings = settings
        self._index = index
        self._experts = experts
        self._rota = rota
        self._on_vote = on_vote  # a vote is a label for the search ranker: the runtime refits it

    def suggest_experts(
        self,
        text: str,
        services: list[str] | None = None,
        limit: int = 3,
        remember: bool = True,
        vector: np.ndarray | None = None,
        asker: str = "",
    ) -> list[Suggestion]:
        """The best people for ``text``, load spread among equals, and remembered for that (when the database takes
        writes: a full disk still gets its suggestions).

        ``vector`` is ``text``'s query vector when the caller already has it (an answer's search). ``asker``
        (who asked, or declared the incident) is never suggested to themselves. A secret pasted in ``text`` is
        scrubbed before it is searched or remembered.
        """
        text = scrub(text).strip()
        if not text:
            raise InvalidRequest(f"describe the problem, for example {examples(self.store).experts_usage()}.")
        model = self._experts()
        exclude = (asker,) if asker else ()
        named = model.named_in(text)
        if named:
            # "/experts same as INC-2025-0019", "what was the root cause of INC-2025-0019": who resolved that one,
            # and incidents like it, ranked as if its own words were asked (its vector, its title and summary).
            vector = model.vectors[named].sum(axis=0)
            vector = vector / max(float(np.linalg.norm(vector)), 1e-12)
            words = " ".join([text] + [incident_text(model.incidents[n]) for n in named])
            ranked = model.rank(words, vector, services, exclude=exclude, close=self.settings.min_similarity)
        else:
            vector = self._index().embed_query(text) if vector is None else vector
            ranked = model.rank(text, vector, services, exclude=exclude, close=self.settings.min_similarity)
        shown = trim_suggestions(ranked, self.store.recent_first_suggestions(), limit)
        if remember:
            try:
                self.store.log_suggestion(text, [s.expert.id for s in shown])
            except sqlite3.OperationalError as exc:
                if not is_write_failure(exc):
                    raise
                # The people are still suggested; only the spreading of load among equals misses this one.
                log.warning("expert suggestion not remembered experts=%s reason=%s", [s.expert.id for s in shown], exc)
        return shown

    def reply(
        self,
        question: str,
        channel: str = "",
        user: str = "",
        thread_ts: str = "",
        runbook_url: str = "",
        shown: Callable[[Reply], dict] | None = None,
    ) -> Reply:
        """Answer a question (or a follow-up in a thread) and remember it for feedback.

        ``runbook_url`` (an alert's annotation) puts the runbook whose front-matter `url` it links to first.
        ``shown`` renders the answer as the adapter shows it (an answer that can be shared): the rendering is saved
        with it, so a share posts the answer that was seen rather than a new search.
        A secret pasted in the question (a token, a password) is scrubbed first: what is searched, saved for
        votes and sharing, and remembered for the thread never holds it.
        """
        question = scrub(question).strip()
        if not question:
            raise InvalidRequest("ask a question, or paste an alert or a log line.")
        if asks_who_is_on_call(question):
            # Answered from the rota, not the runbooks: who to page is a fact, not a search result.
            rota = self._rota()
            answers = tuple(rota.answer(rota.named_in(question)))
            names = {e.id: e.name for e in rota.experts}
            answer = Answer(question, question, (), "rota")
            return Reply(uuid.uuid4().hex[:12], answer, (), (), question, oncall=answers, names=names)
        searched = self._with_thread(question, channel, thread_ts)
        index = self._index()
        linked, anchor = (linked_runbook(runbook_url, self.store.runbook_urls()) if runbook_url else None) or ("", "")
        follow_up = question if searched != question else ""  # in a thread: the section cited is the latest's
        answer = index.search(searched, k=self.settings.top_k * 2, linked=linked, anchor=anchor, follow_up=follow_up)
        runbooks, incidents = relevant_hits(answer, self.settings)
        experts: tuple[Suggestion, ...] = ()
        if incidents and self.store.expert_count():
            experts = tuple(self.suggest_experts(searched, remember=False, vector=answer.query_vector, asker=user))
        reply = Reply(uuid.uuid4().hex[:12], answer, runbooks, incidents, searched, len(index.doc_paths), experts)
        if not reply.found:  # the hint names one of this knowledge's services
            reply = dataclasses.replace(reply, hint_service=examples(self.store).service)
        if reply.found:
            paths = [h.path for h in runbooks + incidents]
            rendered = shown(reply) if shown is not None else None
            try:
                self.store.save_answer(reply.id, searched, paths, channel, user, thread_ts, rendered)
            except sqlite3.OperationalError as exc:
                if not is_write_failure(exc):
                    raise
                # The search worked: the user gets the answer, without what needs it saved (votes, sharing).
                log.warning("answer not saved answer_id=%s channel=%s reason=%s", reply.id, channel, exc)
                reply = dataclasses.replace(reply, unsaved=str(exc))
        return reply

    def shareable(self, answer_id: str, user: str, channel: str) -> dict:
        """The saved answer ``user`` may share in ``channel``: only the person who asked shares an answer, and
        only in the channel it was asked in."""
        saved = self.store.get_answer(answer_id)
        if saved is None:
            raise NotFound("that answer is no longer known; ask again and share the new one.")
        if saved["user"] and user != saved["user"]:
            raise PermissionDenied(
                f"only the person who asked (<@{saved['user']}>) can share this answer; ask with /ask to share yours."
            )
        where = saved["channel"] or channel
        if channel != where:
            raise PermissionDenied(f"share this answer from <#{where}>, where it was asked.")
        return saved

    def ask_again(self, saved: dict, user: str) -> Reply:
        """A new answer to a saved one that kept nothing of what it showed (saved before answers kept it), when it
        cites the same documents in the same order; a share must not post an answer the asker never saw."""
        reply = self.reply(saved["query"], channel=saved["channel"], user=user)
        if [h.path for h in reply.runbooks + reply.incidents] != saved["paths"]:
            raise InvalidRequest(
                "this answer changed since it was shown (votes or a new index since), so nothing was shared; "
                "/ask again to see the new answer and share that one."
            )
        return reply

    def shared(self, answer_id: str) -> bool:
        """Whether the answer was shared already (a second press is told so without searching again)."""
        return self.store.event_claimed(f"share:{answer_id}")

    def claim_share(self, answer_id: str, announce: Callable[[], None]) -> bool:
        """Share an answer at most once: True when this is its first share. ``announce`` (the post, an outbox row)
        runs inside the claim's transaction, so a claim is never stored without its post: two presses cannot
        both win, and a share that failed before its post can be pressed again."""
        with self.store.transaction():
            first = self.store.claim_event(f"share:{answer_id}")
            if first:
                announce()
        return first

    def unshare(self, answer_id: str) -> None:
        """The shared post was refused for good (opsbot not in the channel): the answer may be shared again."""
        if self.store.unclaim_event(f"share:{answer_id}"):
            log.info("share released answer_id=%s", answer_id)

    def _with_thread(self, question: str, channel: str, thread_ts: str) -> str:
        """What to search: a follow-up in a thread carries the thread's first question with it."""
        if not (channel and thread_ts):
            return question
        earlier = self.store.thread_question(channel, thread_ts)
        if earlier and earlier != question:
            return f"{earlier}\n{question}"
        try:
            self.store.remember_question(channel, thread_ts, question)
        except sqlite3.OperationalError as exc:
            if not is_write_failure(exc):
                raise
            # The question is still answered; only a follow-up in this thread loses its context.
            log.warning("thread question not saved channel=%s thread_ts=%s reason=%s", channel, thread_ts, exc)
        return question

    def vote(self, answer_id: str, user: str, vote: int) -> tuple[bool, str]:
        """Record a 👍 (+1) or 👎 (-1) on an answer's leading result; returns (changed, path)."""
        if vote not in (1, -1):
            raise InvalidRequest("a vote is +1 or -1.")
        saved = self.store.get_answer(answer_id)
        if saved is None:
            raise NotFound("that answer is no longer known; ask again to vote on a fresh one.")
        index = self._index()
        path = saved["paths"][0]
        if path not in index.doc_index:  # a vote on it would count for nothing, yet be thanked for
            raise NotFound(
                f"{path} is no longer in the knowledge index (it was removed or renamed since this answer), so the "
                "vote was not recorded. Ask again, and vote on the new answer."
            )
        vector = index.embed_query(saved["query"])
        changed = self.store.record_feedback(
            answer_id, user, saved["query"], path, vote, vector, index.encoder.model_id
        )
        if changed:
            index.reload_feedback()
            if self._on_vote is not None:
                self._on_vote()
        return changed, path
