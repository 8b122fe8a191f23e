"""The running assistant: store, model and index, loaded in the background, shared by every adapter."""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from bot.answers.encoder import Encoder, make_encoder
from bot.answers.expert_fit import load_model
from bot.answers.experts import ExpertModel
from bot.answers.indexer import index_incident, index_incidents
from bot.answers.replies import Answerer
from bot.answers.search import SearchIndex
from bot.answers.training import FitStopped, fit_ranker
from bot.config import Settings
from bot.errors import OpsbotError
from bot.hints import Examples, examples
from bot.models import Expert, Incident
from bot.ops.alerts import AlertService
from bot.ops.deploys import DeployService
from bot.ops.incidents import IncidentService
from bot.ops.requests import Announcer
from bot.rota import Rota
from bot.store import Store
from bot.store.base import BUSY_WAIT_S, is_busy
from bot.workers import TrackedPool

log = logging.getLogger(__name__)
READY_TIMEOUT_S = 300.0
DEPLOY_WORKERS = 4  # approved deploys run here, never in the pool that answers questions
BRIEFING_WORKERS = 2  # alert briefings search and rank people: two cores
SEEN_EVENTS_KEPT = timedelta(days=1)  # Slack retries an event for minutes
SEEN_HOOKS_KEPT = timedelta(days=30)  # a pipeline may send an event again much later (a re-run job)
T = TypeVar("T")


class NotReady(OpsbotError):
    """The model or the index could not be loaded."""


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
        self._index_problem = ""  # the index on disk was built with another model (see index())
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
        self.briefings = TrackedPool(BRIEFING_WORKERS, "opsbot-briefing")  # alert briefings, never behind answers
        self._refit_lock = threading.Lock()
        self._refit: threading.Thread | None = None  # the ranker's refit after votes, one at a time
        self._refit_again = False
        self._closing = threading.Event()  # set by close(): a refit in progress stops rather than hold it up
        self.announcer: Announcer | None = None  # what shows deploys to people (the Slack app sets it)
        self.answers = Answerer(self.store, settings, self.index, self.experts_model, self.rota, self.refit_ranker)

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
            try:  # before the index is read, so that it holds them
                self.learn_missed()
            except Exception:  # a late indexing is never worth failing every question for
                log.exception("could not look for resolved incidents to index")
            self._version = self.store.get_meta("index_version")
            self._index = SearchIndex(self.store, self.encoder)
            self.ready_seconds = time.perf_counter() - self.started
            log.info("ready chunks=%d seconds=%.2f", self._index.size, self.ready_seconds)
            if self.votes_unfitted():  # a refit after votes that a stop or a crash cut short
                self.refit_ranker()
        except BaseException as exc:  # reported to every waiting question, never lost
            self._error = exc
            if self._closing.is_set():  # a start that failed, or a stop soon after it: the process is ending, and
                # the loading fails with it (an import cut short by the interpreter's exit), which is no fault
                log.info("loading stopped: opsbot is stopping (%s: %s)", type(exc).__name__, exc)
            else:
                log.exception("loading failed")
        finally:
            self._ready.set()

    def stopping(self) -> None:
        """The process is ending: a refit stops at its next step, and the loading, if it fails now (the
        interpreter's exit cuts an import short), says so in one line rather than as a fault."""
        self._closing.set()

    def close(self, timeout: float = READY_TIMEOUT_S) -> bool:
        """Close the store once the background loader and the ranker's refit no longer read from it; False when
        one still runs after ``timeout`` seconds, and the store is left open for the process exit to release.

        Closing a SQLite connection while another thread runs a statement on it crashes the process
        (a segfault, not an exception), so a short session that ends while the model still loads waits.
        """
        deadline = time.monotonic() + timeout
        self.stopping()  # the refit stops at its next step; the votes are kept and the next start refits
        for worker in (self._loader, self._refit):
            if worker is not None and worker.is_alive():
                worker.join(max(deadline - time.monotonic(), 0))
        busy = [w.name for w in (self._loader, self._refit) if w is not None and w.is_alive()]
        if busy:
            log.info("store left open: background work still runs threads=%s", ",".join(busy))
            return False
        self.store.close()
        return True

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
            self._check_index_model()
            self._index.refresh()
            self._experts = None
            log.info("index reloaded version=%s chunks=%d", current, self._index.size)
        return self._index

    def _check_index_model(self) -> None:
        """Log an error, once per index version, when the index was last built with another model than this bot's.

        That run keeps this bot's model's vectors of every section whose text did not change, so the bot goes on
        answering; a second run with the other model removes them.
        """
        indexed_with = self.store.get_meta("model")
        if not indexed_with or indexed_with == self.encoder.model_id:
            self._index_problem = ""
            return
        self._index_problem = (
            f"the index was rebuilt with the model {indexed_with}, and this bot runs {self.encoder.model_id}: "
            f"restart the bot with OPSBOT_MODEL={indexed_with}, or run `opsbot index` with OPSBOT_MODEL="
            f"{self.encoder.model_id} (answers come from this model's vectors while they last)"
        )
        log.error(
            "index model mismatch index_model=%s bot_model=%s: %s",
            indexed_with,
            self.encoder.model_id,
            self._index_problem,
        )

    def index_problem(self) -> str:
        """Why the index on disk does not suit this bot (built with another model), or ""."""
        return self._index_problem

    def _for_index_version(self, name: str, build: Callable[[], T]) -> T:
        """``build()``'s result, kept until the index version in meta changes (`opsbot index` ran, or an
        incident was resolved), so a running bot picks up the new configuration without reading it every call."""
        version = self.store.get_meta("index_version")  # read before building: a later change rebuilds again
        with self._configured_lock:
            cached = self._configured.get(name)
        if cached is not None and cached[0] == version:
            return cached[1]
        # Built without holding the lock: building reads the store, which waits for the store's lock, and a
        # thread inside a store transaction (an announcer asking for the alerts service) may be waiting for
        # this one. Two threads may both build; the first one kept is the one every caller gets.
        built = (version, build())
        with self._configured_lock:
            cached = self._configured.get(name)
            if cached is None or cached[0] != version:
                cached = built
                self._configured[name] = cached
                log.info("configuration loaded part=%s version=%s", name, version)
            return cached[1]

    def incidents(self) -> IncidentService:
        """Incidents declared in Slack; services known from services.yaml, the roster and past incidents."""

        return self._for_index_version("incidents", lambda: IncidentService.from_store(self.store))

    def alerts(self) -> AlertService:
        """Alert groups from Alertmanager, routed and silenced under the services.yaml of the last `opsbot index`."""
        deploys, known = self.deploys(), self.incidents().known_services

        def build() -> AlertService:
            return AlertService.from_store(self.store, deploys, set(known))

        return self._for_index_version("alerts", build)

    def learn_from(self, incident: Incident) -> None:
        """A resolved incident: searchable at once, and the expert model retrains on next use."""
        index_incident(self.store, self.encoder, incident)
        self.forget_experts()
        self.index()  # reloads, since index_incident changed the index version

    def learn_missed(self) -> list[str]:
        """Index the resolved incidents that are not past incidents yet (the process that resolved one stopped
        before indexing it, or indexing failed); their ids. One that fails again is logged and left for next time."""
        learned = index_incidents(self.store, self.encoder, self.incidents().unlearned())
        if learned:
            self.forget_experts()
        return learned

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

    def examples(self, wait: float = BUSY_WAIT_S) -> Examples:
        """Examples for usage lines and hints, from the indexed knowledge (kept until it changes). With a ``wait``
        shorter than a write's (an acknowledgement's), the ones read last, or none, when one of opsbot's writes holds
        the store longer than that (it may be waiting out another process's write lock)."""
        try:
            with self.store.held(wait):
                return self._for_index_version("examples", lambda: examples(self.store))
        except sqlite3.OperationalError as exc:
            if not is_busy(exc):
                raise
        with self._configured_lock:
            cached = self._configured.get("examples")
        log.info("usage examples not read: a write holds the database; %s", "the last ones shown" if cached else "none")
        return cached[1] if cached else Examples()

    def answer_mode(self, channel: str) -> str:
        """How opsbot answers in ``channel``: "mentions" (the default) or "all" questions."""
        return self.store.channel_answer_modes().get(channel, "mentions")

    def answered_in(self, channel: str, thread_ts: str) -> bool:
        """Whether the thread is one opsbot answered in (a follow-up there is a question to it)."""
        return self.store.thread_question(channel, thread_ts) is not None

    def roster(self) -> dict[str, Expert]:
        """Roster ids to people, those who left included (their `left:` day says since when)."""
        return {e.id: e for e in self.store.load_experts()}

    def first_time_seen(self, event_id: str) -> bool:
        """Record a Slack event id; False when it was handled before (Slack retried it)."""
        return self.store.first_time_seen(event_id)

    def forget_old_events(self, now: datetime | None = None) -> int:
        """Forget the event ids kept to answer each event once, once no retry can come: Slack's after a day, CI's
        after 30 days (the serve sweep calls it). How many were forgotten."""
        now = now or datetime.now(UTC)
        events, hooks = (now - SEEN_EVENTS_KEPT, now - SEEN_HOOKS_KEPT)
        return self.store.prune_seen_events(events.isoformat(timespec="seconds"), hooks.isoformat(timespec="seconds"))

    def database_problem(self) -> str:
        """Why the database cannot be written now, or "" when it can (probed at most every few seconds)."""
        return "" if self.store.writable() else (self.store.write_error or "not writable")

    def forget_experts(self) -> None:
        """Retrain on next use (an incident was resolved or the roster changed)."""
        with self._experts_lock:
            self._experts = None

    def refit_ranker(self) -> threading.Thread:
        """Refit the search ranker with the votes, in the background; votes during a refit start one more after it."""
        with self._refit_lock:
            if self._refit is not None and self._refit.is_alive():
                self._refit_again = True
                return self._refit
            self._refit = threading.Thread(target=self._refit_until_current, name="opsbot-ranker", daemon=True)
            self._refit.start()
            return self._refit

    def votes_unfitted(self) -> bool:
        """Whether votes were cast or changed since the stored ranker was fitted."""
        stored = self.store.load_ranker(self.encoder.model_id)
        fitted_on = stored[2].get("votes_key") if stored is not None else None
        return fitted_on is not None and fitted_on != self.store.votes_key()

    def _refit_until_current(self) -> None:
        while True:
            try:
                if self._closing.is_set():  # a vote that came in while the bot stops: the next start refits
                    raise FitStopped("opsbot is stopping")
                report = fit_ranker(self.store, self.encoder, index=self.index(), stop=self._closing)
                log.info("ranker refitted after votes votes=%s", report.get("votes"))
            except FitStopped:
                log.info("ranker refit stopped: opsbot is stopping; the next start refits with the votes")
                with self._refit_lock:
                    self._refit = None
                return
            except Exception:  # a failed refit keeps the ranker the index has; the next vote tries again
                log.exception("ranker refit failed")
            with self._refit_lock:
                if not self._refit_again:
                    self._refit = None
                    return
                self._refit_again = False
