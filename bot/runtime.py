"""The running assistant: store, model and index, loaded in the background, shared by every adapter."""

from __future__ import annotations

import dataclasses
import logging
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np

from bot.answers.encoder import Encoder, make_encoder
from bot.answers.expert_fit import load_model
from bot.answers.experts import MIN_SHARE, ExpertModel, Suggestion, spread_load
from bot.answers.indexer import index_incident
from bot.answers.search import SearchIndex
from bot.answers.training import fit_ranker
from bot.config import Settings
from bot.errors import InvalidRequest, NotFound, OpsbotError
from bot.models import Answer, Incident, SearchHit
from bot.ops.deploys import DeployService
from bot.ops.incidents import IncidentService
from bot.ops.requests import Announcer
from bot.rota import OnCall, Rota, asks_who_is_on_call
from bot.store import Store
from bot.store.base import is_write_failure
from bot.workers import TrackedPool

log = logging.getLogger(__name__)
READY_TIMEOUT_S = 300.0
DEPLOY_WORKERS = 4  # approved deploys run here, never in the pool that answers questions
RELATIVE_FLOOR = 0.7  # a hit must be at least this close in meaning, relative to the best hit
T = TypeVar("T")


class NotReady(OpsbotError):
    """The model or the index could not be loaded."""


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

    @property
    def found(self) -> bool:
        return bool(self.runbooks or self.incidents or self.oncall)

    @property
    def top(self) -> SearchHit | None:
        return (self.runbooks + self.incidents)[0] if self.runbooks or self.incidents else None


class Runtime:
    """Everything the Slack app and the shell need, loaded once.

    The process can accept requests at once: the model and the vectors load in a background
    thread, and a question that arrives earlier waits for them instead of failing.
    """

    def __init__(self, settings: Settings, encoder: Encoder | None = None, store: Store | None = None) -> None:
        self.settings = settings
        self.store = store or Store(settings.db_path)
        self.encoder = encoder or make_encoder(settings)
        self._index: SearchIndex | None = None
        self._version = ""
        self._experts: ExpertModel | None = None
        self._experts_lock = threading.Lock()
        self._configured: dict[str, tuple[str, Any]] = {}  # name -> (index version it was built for, object)
        self._configured_lock = threading.Lock()
        self._error: BaseException | None = None
        self._ready = threading.Event()
        self._loader: threading.Thread | None = None
        self.started = time.perf_counter()
        self.ready_seconds: float | None = None
        self.runners = TrackedPool(DEPLOY_WORKERS, "opsbot-deploy")
        self._refit_lock = threading.Lock()
        self._refit: threading.Thread | None = None  # the ranker's refit after votes, one at a time
        self._refit_again = False
        self.announcer: Announcer | None = None  # what shows deploys to people (the Slack app sets it)

    def start_loading(self) -> None:
        """Load the model and the index in a background thread (idempotent)."""
        if self._loader is None:
            self._loader = threading.Thread(target=self._load, name="opsbot-loader", daemon=True)
            self._loader.start()

    def _load(self) -> None:
        try:
            load = getattr(self.encoder, "load", None)
            if load:
                load()
            self._version = self.store.get_meta("index_version")
            self._index = SearchIndex(self.store, self.encoder)
            self.ready_seconds = time.perf_counter() - self.started
            log.info("ready chunks=%d seconds=%.2f", self._index.size, self.ready_seconds)
        except BaseException as exc:  # reported to every waiting question, never lost
            self._error = exc
            log.exception("loading failed")
        finally:
            self._ready.set()

    def close(self, timeout: float = READY_TIMEOUT_S) -> None:
        """Close the store, once the background loader no longer reads from it.

        Closing a SQLite connection while another thread runs a statement on it crashes the process
        (a segfault, not an exception), so a short session that ends while the model still loads waits.
        """
        for worker in (self._loader, self._refit):
            if worker is not None and worker.is_alive():
                worker.join(timeout)
        self.store.close()

    @property
    def ready(self) -> bool:
        return self._ready.is_set() and self._error is None

    def index(self, timeout: float = READY_TIMEOUT_S) -> SearchIndex:
        """The search index, waiting for it to load when needed."""
        self.start_loading()
        if not self._ready.wait(timeout):
            raise NotReady(f"the model is still loading after {timeout:.0f} s; try again in a minute.")
        if self._error is not None:
            raise NotReady(f"the model or index could not be loaded: {self._error}")
        assert self._index is not None
        current = self.store.get_meta("index_version")
        if current != self._version:  # `opsbot index` ran in another process: pick up its changes
            self._version = current
            self._index.refresh()
            self._experts = None
            log.info("index reloaded version=%s chunks=%d", current, self._index.size)
        return self._index

    def _for_index_version(self, name: str, build: Callable[[], T]) -> T:
        """``build()``'s result, kept until the index version in meta changes (`opsbot index` ran, or an
        incident was resolved), so a running bot picks up the new configuration without reading it every call."""
        version = self.store.get_meta("index_version")  # read before building: a later change rebuilds again
        with self._configured_lock:
            cached = self._configured.get(name)
            if cached is None or cached[0] != version:
                cached = (version, build())
                self._configured[name] = cached
                log.info("configuration loaded part=%s version=%s", name, version)
            return cached[1]

    def incidents(self) -> IncidentService:
        """Incidents declared in Slack; services known from services.yaml, the roster and past incidents."""

        def build() -> IncidentService:
            known = set(self.store.service_configs())
            known.update(s for e in self.store.load_experts() for s in e.services)
            known.update(s for i in self.store.load_incidents() for s in i.services)
            return IncidentService(self.store, known)

        return self._for_index_version("incidents", build)

    def learn_from(self, incident: Incident) -> None:
        """A resolved incident: searchable at once, and the expert model retrains on next use."""
        index_incident(self.store, self.encoder, incident)
        self.forget_experts()
        self.index()  # reloads, since index_incident changed the index version

    def deploys(self) -> DeployService:
        """The deploy state machine for the services.yaml stored by the last `opsbot index`."""
        service = self._for_index_version("deploys", lambda: DeployService.from_store(self.store))
        service.announcer = self.announcer
        return service

    def experts_model(self) -> ExpertModel:
        """The expert model, retrained whenever the incidents or the roster changed."""
        self.index()  # loaded, and reloaded when the index changed
        with self._experts_lock:
            if self._experts is None:
                self._experts = load_model(self.store, self.encoder)
                log.info(
                    "expert model trained incidents=%d seconds=%.3f fitted=%s",
                    len(self._experts.incidents),
                    self._experts.train_seconds,
                    self._experts.blends.fitted,
                )
            return self._experts

    def rota(self) -> Rota:
        """The on-call rotations stored by the last `opsbot index`, with the services each covers."""
        return self._for_index_version("rota", lambda: Rota.from_store(self.store))

    def answer_mode(self, channel: str) -> str:
        """How opsbot answers in ``channel``: "mentions" (the default) or "all" questions."""
        return self.store.channel_answer_modes().get(channel, "mentions")

    def answered_in(self, channel: str, thread_ts: str) -> bool:
        """Whether the thread is one opsbot answered in (a follow-up there is a question to it)."""
        return self.store.thread_question(channel, thread_ts) is not None

    def saved_answer(self, answer_id: str) -> dict | None:
        """The question, channel and results of an answer given earlier, for sharing it or voting on it."""
        return self.store.get_answer(answer_id)

    def roster_names(self) -> dict[str, str]:
        """Roster ids to names."""
        return {e.id: e.name for e in self.store.load_experts()}

    def first_time_seen(self, event_id: str) -> bool:
        """Record a Slack event id; False when it was handled before (Slack retried it)."""
        return self.store.first_time_seen(event_id)

    def database_problem(self) -> str:
        """Why the database cannot be written now, or "" when it can (probed at most every few seconds)."""
        return "" if self.store.writable() else (self.store.write_error or "not writable")

    def forget_experts(self) -> None:
        """Retrain on next use (an incident was resolved or the roster changed)."""
        with self._experts_lock:
            self._experts = None

    def suggest_experts(
        self,
        text: str,
        services: list[str] | None = None,
        limit: int = 3,
        remember: bool = True,
        vector: np.ndarray | None = None,
        asker: str = "",
    ) -> list[Suggestion]:
        """The best people for ``text``, load spread among equals, and remembered for that.

        ``vector`` is ``text``'s query vector when the caller already has it (an answer's search). ``asker``
        (who asked, or declared the incident) is never suggested to themselves.
        """
        text = text.strip()
        if not text:
            raise InvalidRequest("describe the problem, for example `/experts checkout 503s after deploy`.")
        model = self.experts_model()
        index = self.index()
        vector = index.embed_query(text) if vector is None else vector
        ranked = model.rank(text, vector, services, exclude=(asker,) if asker else ())
        if ranked:  # people with only a faint reason are noise next to a strong suggestion
            best = ranked[0].score
            ranked = [s for s in ranked if s.score >= best * MIN_SHARE or s.on_call]
        ranked = spread_load(ranked, self.store.recent_first_suggestions())
        shown = ranked[:limit]
        on_call = next((s for s in ranked if s.on_call), None)
        if on_call is not None and on_call not in shown:  # whoever holds the pager is always among those shown
            shown = [*shown[: limit - 1], on_call]
        ranked = shown
        if remember:
            self.store.log_suggestion(text, [s.expert.id for s in ranked])
        return ranked

    def reply(self, question: str, channel: str = "", user: str = "", thread_ts: str = "") -> Reply:
        """Answer a question (or a follow-up in a thread) and remember it for feedback."""
        question = question.strip()
        if not question:
            raise InvalidRequest("ask a question, or paste an alert or a log line.")
        if asks_who_is_on_call(question):
            # Answered from the rota, not the runbooks: who to page is a fact, not a search result.
            rota = self.rota()
            answers = tuple(rota.answer(rota.named_in(question)))
            names = {e.id: e.name for e in rota.experts}
            answer = Answer(question, question, (), "rota")
            return Reply(uuid.uuid4().hex[:12], answer, (), (), question, oncall=answers, names=names)
        searched = question
        if channel and thread_ts:
            earlier = self.store.thread_question(channel, thread_ts)
            if earlier and earlier != question:
                searched = f"{earlier}\n{question}"
            else:
                try:
                    self.store.remember_question(channel, thread_ts, question)
                except sqlite3.OperationalError as exc:
                    if not is_write_failure(exc):
                        raise
                    # The question is still answered; only a follow-up in this thread loses its context.
                    log.warning("thread question not saved channel=%s thread_ts=%s reason=%s", channel, thread_ts, exc)
        index = self.index()
        answer = index.search(searched, k=self.settings.top_k * 2)
        # Weak matches are left out: below the floor, or far below the best match of this answer.
        best = max((h.similarity for h in answer.hits), default=0.0)
        floor = max(self.settings.min_similarity, best * RELATIVE_FLOOR)
        # A runbook for the named alert stays, and so does a section holding the question's words together.
        relevant = [h for h in answer.hits if h.similarity >= floor or h.alert or h.quoted]
        runbooks = tuple(h for h in relevant if h.kind == "runbook")[: min(self.settings.top_k, 3)]
        incidents = tuple(h for h in relevant if h.kind == "incident")[:3]
        experts: tuple[Suggestion, ...] = ()
        if incidents and self.store.expert_count():
            experts = tuple(self.suggest_experts(searched, remember=False, vector=answer.query_vector, asker=user))
        reply = Reply(uuid.uuid4().hex[:12], answer, runbooks, incidents, searched, len(index.doc_paths), experts)
        if reply.found:
            paths = [h.path for h in runbooks + incidents]
            try:
                self.store.save_answer(reply.id, searched, paths, channel, user, thread_ts)
            except sqlite3.OperationalError as exc:
                if not is_write_failure(exc):
                    raise
                # The search worked: the user gets the answer, without what needs it saved (votes, sharing).
                log.warning("answer not saved answer_id=%s channel=%s reason=%s", reply.id, channel, exc)
                reply = dataclasses.replace(reply, unsaved=str(exc))
        return reply

    def vote(self, answer_id: str, user: str, vote: int) -> tuple[bool, str]:
        """Record a 👍 (+1) or 👎 (-1) on an answer's leading result; returns (changed, path)."""
        if vote not in (1, -1):
            raise InvalidRequest("a vote is +1 or -1.")
        saved = self.store.get_answer(answer_id)
        if saved is None:
            raise NotFound("that answer is no longer known; ask again to vote on a fresh one.")
        index = self.index()
        path = saved["paths"][0]
        changed = self.store.record_feedback(
            answer_id, user, saved["query"], path, vote, index.embed_query(saved["query"])
        )
        if changed:
            index.reload_feedback()
            self.refit_ranker()
        return changed, path

    def refit_ranker(self) -> threading.Thread:
        """Refit the search ranker with the votes, in the background; votes during a refit start one more after it."""
        with self._refit_lock:
            if self._refit is not None and self._refit.is_alive():
                self._refit_again = True
                return self._refit
            self._refit = threading.Thread(target=self._refit_until_current, name="opsbot-ranker", daemon=True)
            self._refit.start()
            return self._refit

    def _refit_until_current(self) -> None:
        while True:
            try:
                report = fit_ranker(self.store, self.encoder, index=self.index())
                log.info("ranker refitted after votes votes=%s", report.get("votes"))
            except Exception:  # a failed refit keeps the ranker the index has; the next vote tries again
                log.exception("ranker refit failed")
            with self._refit_lock:
                if not self._refit_again:
                    self._refit = None
                    return
                self._refit_again = False
