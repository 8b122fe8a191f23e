"""Who to pull in: a ranking of roster members learned from who resolved similar incidents, and when.

The signals and how they are combined are in ``bot.answers.expert_blend``, the fit on the team's own history in
``bot.answers.expert_fit``, incidents as text and vectors in ``bot.answers.incident_vectors``; this module holds
the model: past incidents as arrays, a ranking for one problem, and the reasons behind each suggestion, with
dates. People who left, responders missing from the roster and whoever is asking are never suggested; their
incidents still count in the statistics.
"""

from __future__ import annotations

import re
import time
from collections import Counter
from collections.abc import Collection
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import numpy as np

from bot.answers.encoder import Encoder
from bot.answers.expert_blend import (
    MAIN_RESOLVER,
    OTHER_RESPONDER,
    Blends,
    decay_matrix,
    freshness,
    history_signals,
    idle_days,
    nearest_incidents,
    service_overlap,
)
from bot.answers.incident_vectors import WordIndex, embed_incidents, incident_words
from bot.errors import InvalidRequest
from bot.models import Expert, Incident, Rotation
from bot.rota import Shift, covering_rotations, when_text
from bot.rota import on_call as rota_on_call
from bot.text import QUERY_TOKEN, split_camel, strip_volatile

WORD = re.compile(r"[a-z0-9]+")
DAY_S = 86400.0
AWAY_FACTOR = 0.5  # people on leave can still be asked, but not first
OFF_HOURS_FACTOR = 0.8  # outside their working hours: a little lower
TIE_MARGIN = 0.1  # suggestions within 10% of the best count as "about equally good"
LOAD_PENALTY = 0.06  # per recent first place, among the about-equally-good
MIN_SHARE = 0.2  # suggestions scoring under 20% of the best are not shown
SHOWN_INCIDENTS = 3  # incidents named as evidence per person
STALE_DAYS = 365.0  # evidence older than a year (or than the half-life, when longer) is flagged as not recent


@dataclass(frozen=True)
class SimilarIncident:
    id: str
    title: str
    similarity: float
    main_resolver: bool
    date: datetime | None = None
    close: bool = True  # as close in meaning as a past incident an answer shows (``rank``'s ``close``)


@dataclass(frozen=True)
class Suggestion:
    """A roster member, their score and every reason behind it."""

    expert: Expert
    score: float
    incidents: tuple[SimilarIncident, ...] = ()
    owns: tuple[str, ...] = ()
    skills: tuple[str, ...] = ()
    flags: tuple[str, ...] = ()
    on_call: tuple[Shift, ...] = ()  # the rotas they are on call for, for the services involved
    recent: int = 0  # incidents they resolved in the year before the question
    last_resolved: datetime | None = None  # their latest resolved incident of any kind
    spread: int = 0  # their recent first places that moved them down among the about-equally-good (spread_load)

    def reasons(self) -> list[str]:
        out = []
        for shift in self.on_call:
            out.append(f"on call for {shift.team} until {when_text(shift.end)}")
        if self.incidents:
            out.append(_evidence_text(self.incidents[:SHOWN_INCIDENTS]))
        if self.owns:
            out.append(f"owns {', '.join(self.owns)}")
        if self.skills:
            out.append(f"skills: {', '.join(self.skills)}")
        if self.recent and self.last_resolved:
            out.append(
                f"resolved {self.recent} incident(s) in the last year, the latest on {self.last_resolved:%Y-%m-%d}"
            )
        if self.spread:
            out.append(f"suggested first {self.spread} time(s) lately: scored down a little, to spread the load")
        return out


@dataclass
class ExpertModel:
    """Trained on past incidents; rank() scores every roster member for a text."""

    experts: list[Expert]
    incidents: list[Incident]
    vectors: np.ndarray
    service_owners: dict[str, list[str]] = field(default_factory=dict)
    blends: Blends = field(default_factory=Blends)
    rotations: list[Rotation] = field(default_factory=list)
    service_teams: dict[str, str] = field(default_factory=dict)  # services.yaml `team:`
    train_seconds: float = 0.0

    def __post_init__(self) -> None:
        if not self.experts:
            raise InvalidRequest("the roster is empty: add people to knowledge/experts.yaml and run `opsbot index`.")
        started = time.perf_counter()
        self.by_id = {e.id: e for e in self.experts}
        self.column = {e.id: n for n, e in enumerate(self.experts)}
        self.teams: dict[str, list[str]] = {}
        for e in self.experts:
            self.teams.setdefault(e.team, []).append(e.id)
        self.days = np.array([i.date.timestamp() / DAY_S for i in self.incidents], dtype=np.float64)
        self.roles = role_matrix(self.incidents, self.column)
        # When each person resolved something, in order: their latest and their count in a year, at any time.
        self.resolved_days = [np.sort(self.days[self.roles[:, n] > 0]) for n in range(len(self.experts))]
        self.incident_services = [frozenset(i.services) for i in self.incidents]
        self.words = WordIndex([incident_words(i) for i in self.incidents])
        self.services = self._known_services()
        self._owners = {s: self._owners_of(s) for s in self.services}
        self.train_seconds += time.perf_counter() - started

    def _known_services(self) -> set[str]:
        known = set(self.service_owners) | set(self.service_teams)
        for e in self.experts:
            known.update(e.services)
        for i in self.incidents:
            known.update(i.services)
        for r in self.rotations:
            known.update(r.services)
        return known

    def _owners_of(self, service: str) -> set[str]:
        owners = {e.id for e in self.experts if service in e.services}
        for owner in self.service_owners.get(service, []):
            owners.update(self.teams.get(owner, [owner] if owner in self.by_id else []))
        return owners

    def owners_of(self, service: str) -> set[str]:
        """Roster ids owning a service: from the roster, and services.yaml (ids or team names)."""
        return self._owners.get(service) or self._owners_of(service)

    def named_in(self, text: str) -> list[int]:
        """Positions of the past incidents whose id ``text`` names (INC-2025-0019, in any capitals)."""
        ids = {i.id.lower(): n for n, i in enumerate(self.incidents)}
        named = (ids.get(token.lower()) for token in QUERY_TOKEN.findall(text))
        return list(dict.fromkeys(n for n in named if n is not None))

    def services_in(self, text: str) -> list[str]:
        """Known services named in the text (whole names, in any case)."""
        lower = text.lower()
        return sorted(s for s in self.services if re.search(rf"(?<![\w/-]){re.escape(s.lower())}(?![\w/-])", lower))

    def check_services(self, services: list[str]) -> list[str]:
        """The known services meant: each as written, else the only one in other capitals (as /oncall takes them).
        Refuses a service nobody knows, naming the closest known ones (never all of them)."""
        import difflib

        named = []
        for service in services:
            same = sorted(s for s in self.services if s.lower() == service.lower())
            if service in self.services or len(same) == 1:
                named.append(service if service in self.services else same[0])
                continue
            if same:
                raise InvalidRequest(
                    f"{service!r} could be {' or '.join(same)}, which differ only in capitals: "
                    "write the one you mean exactly."
                )
            close = difflib.get_close_matches(service, sorted(self.services), n=3, cutoff=0.6)
            if len(self.services) <= 12:
                hint = f"known services: {', '.join(sorted(self.services)) or 'none yet'}"
            else:
                hint = f"did you mean {' or '.join(close)}? " if close else ""
                hint += f"{len(self.services)} services are known (services.yaml, the roster and past incidents)"
            raise InvalidRequest(f"unknown service {service!r}; {hint}.")
        return named

    # -- the signals that do not depend on time decay -----------------------------------------------------

    def fixed_signals(
        self, text: str, involved: list[str], now: datetime
    ) -> tuple[np.ndarray, dict[str, tuple[str, ...]], dict[str, tuple[str, ...]], dict[str, list[Shift]]]:
        """(P, 3) ownership, skills and on call, with what each person owns, knows and is on call for."""
        out = np.zeros((len(self.experts), 3))
        owns: dict[str, tuple[str, ...]] = {}
        skills: dict[str, tuple[str, ...]] = {}
        lower = text.lower()
        words = set(WORD.findall(lower))
        for n, expert in enumerate(self.experts):
            owned = tuple(s for s in involved if expert.id in self.owners_of(s))
            known = tuple(s for s in expert.skills if _skill_in(s, words, lower))
            if owned:
                owns[expert.id] = owned
                out[n, 0] = 1.0
            if known:
                skills[expert.id] = known
                out[n, 1] = min(1.0, len(known) / 2)
        on_call: dict[str, list[Shift]] = {}
        for rotation in covering_rotations(self.rotations, involved, self.teams, self.service_teams, self._owners):
            shift = rota_on_call(rotation, now).now  # back-to-back shifts of one person as one: "until" its real end
            if shift is not None and shift.person in self.column:
                on_call.setdefault(shift.person, []).append(shift)
                out[self.column[shift.person], 2] = 1.0
        return out, owns, skills, on_call

    def known_at(self, now: datetime, leave_out: Collection[str] = ()) -> np.ndarray:
        """(N,) the incidents a question asked at ``now`` may learn from: dated before it, less ``leave_out``."""
        known = self.days < now.timestamp() / DAY_S
        if leave_out:
            known &= np.array([i.id not in leave_out for i in self.incidents], dtype=bool)
        return known

    # -- ranking ---------------------------------------------------------------------------------------------

    def rank(
        self,
        text: str,
        vector: np.ndarray,
        services: list[str] | None = None,
        now: datetime | None = None,
        exclude: tuple[str, ...] | list[str] = (),
        leave_out: Collection[str] = (),
        close: float = 0.0,
    ) -> list[Suggestion]:
        """Every roster member with any reason to help, best first; never someone in ``exclude`` or who left.

        Only incidents dated before ``now`` count, and never those in ``leave_out`` (ids: an evaluation's
        question that is itself one of the incidents). An incident cited as evidence under the similarity
        ``close`` (the floor an answer shows past incidents by) is said to be the nearest, not to look alike."""
        services = self.check_services(list(services or []))
        now = now or datetime.now(UTC)
        involved = sorted(set(services or []) | set(self.services_in(text)))
        blend = self.blends.for_query(bool(services))
        now_days = np.array([now.timestamp() / DAY_S])
        dense = (self.vectors @ vector.astype(np.float32)).astype(np.float64)[None, :] if len(self.incidents) else None
        words = self.words.similarity([question_words(text)])
        if dense is None:
            dense = np.zeros((1, 0))
        decay = decay_matrix(now_days, self.days, blend.half_life_days)
        known = self.known_at(now, leave_out)
        if not known.all():  # not yet happened: neither a neighbour nor evidence nor recent work
            dense, words = np.where(known, dense, -np.inf), np.where(known, words, -np.inf)
            decay = decay * known
        overlap = service_overlap([set(involved)], self.incident_services)
        nearest_dense = nearest_incidents(dense, self.days, blend.neighbours)
        nearest_words = nearest_incidents(words, self.days, blend.neighbours)
        history = history_signals(dense, words, overlap, decay, self.roles, nearest_dense, nearest_words)[0]
        fixed, owns, skills, on_call = self.fixed_signals(text, involved, now)
        idle = idle_days(self.roles[known], self.days[known], now_days)
        fixed[:, 0] *= freshness(idle, blend.half_life_days)[0]
        scores = np.concatenate([history, fixed], axis=1) @ blend.weights()
        counted = counted_similarity(dense[0], words[0], nearest_dense[0], nearest_words[0])
        evidence = self._evidence(counted, decay[0], close)
        stale_days = max(blend.half_life_days, STALE_DAYS)
        results = []
        for n, expert in enumerate(self.experts):
            score = float(scores[n])
            # Whoever is on call stays even without a score (a fitted blend may weigh on call 0): they are shown.
            if (score <= 0 and expert.id not in on_call) or expert.id in exclude or expert.has_left(now):
                continue
            flags = []
            shown = evidence.get(expert.id, [])
            last = self._last_resolved(n, now)
            latest_similar = max((i.date for i in shown if i.date), default=None)
            if latest_similar is not None and (now - latest_similar).days > stale_days:
                flags.append(f"last resolved something similar {_ago(now, latest_similar)}")
            elif not shown and last is not None and (now - last).days > stale_days:
                flags.append(f"last resolved an incident {_ago(now, last)}")
            if expert.away:
                score *= AWAY_FACTOR
                flags.append("away")
            elif (local := off_hours(expert, now)) is not None:
                score *= OFF_HOURS_FACTOR
                flags.append(f"outside working hours ({local} in {expert.timezone})")
            results.append(
                Suggestion(
                    expert,
                    round(score, 4),
                    tuple(shown[:SHOWN_INCIDENTS]),
                    owns.get(expert.id, ()),
                    skills.get(expert.id, ()),
                    tuple(flags),
                    tuple(on_call.get(expert.id, [])),
                    self._recent_count(n, now),
                    last,
                )
            )
        return sorted(results, key=lambda s: -s.score)

    def _evidence(self, counted: dict[int, float], decay: np.ndarray, close: float) -> dict[str, list[SimilarIncident]]:
        """Per person, the weightiest of the incidents that count (``counted_similarity``) they resolved."""
        weight = {i: similarity**2 * decay[i] for i, similarity in counted.items()}
        evidence: dict[str, list[SimilarIncident]] = {}
        for i in sorted(weight, key=lambda i: (-weight[i], i)):
            if weight[i] <= 0:
                continue
            incident = self.incidents[i]
            similarity = round(counted[i], 3)
            for position, person in enumerate(dict.fromkeys(incident.responders)):  # cited once per person
                evidence.setdefault(person, []).append(
                    SimilarIncident(
                        incident.id, incident.title, similarity, position == 0, incident.date, similarity >= close
                    )
                )
        return evidence

    def _last_resolved(self, column: int, now: datetime) -> datetime | None:
        days = self.resolved_days[column]
        before = int(np.searchsorted(days, now.timestamp() / DAY_S, side="right"))
        return datetime.fromtimestamp(float(days[before - 1]) * DAY_S, tz=UTC) if before else None

    def _recent_count(self, column: int, now: datetime) -> int:
        days, today = self.resolved_days[column], now.timestamp() / DAY_S
        return int(np.searchsorted(days, today, side="right") - np.searchsorted(days, today - 365, side="right"))


def _evidence_text(incidents: tuple[SimilarIncident, ...]) -> str:
    """ "resolved INC-1 (0.52, Aug 2025), which looks like this": an incident under the floor is called the nearest,
    not alike (the question's part of a briefing may have said that no past incident is similar)."""

    def listed(shown: list[SimilarIncident]) -> str:
        return ", ".join(
            f"{i.id} ({i.similarity:.2f}{', ' + i.date.strftime('%b %Y') if i.date else ''})" for i in shown
        )

    close = [i for i in incidents if i.close]
    far = [i for i in incidents if not i.close]
    if not close:
        nearest = "the nearest past incident" if len(far) == 1 else "the nearest past incidents"
        return f"resolved {listed(far)}, {nearest} to this, though not close"
    alike = f"resolved {listed(close)}, which {'looks' if len(close) == 1 else 'look'} like this"
    return f"{alike}, and {listed(far)}, less alike" if far else alike


def question_words(text: str) -> str:
    """The words a question is matched by, processed as ``incident_words`` processes an incident's: a pasted alert
    name matches its incidents whole (KafkaConsumerLagHigh) and by its words (Kafka Consumer Lag High)."""
    return split_camel(strip_volatile(text))


def counted_similarity(
    dense: np.ndarray, words: np.ndarray, nearest_dense: np.ndarray, nearest_words: np.ndarray
) -> dict[int, float]:
    """The incidents that credit someone, each with the similarity it counted by: the nearest by meaning and the
    nearest by words, where that similarity is above 0. A question sharing words with fewer incidents than the
    neighbours counted fills the rest with incidents sharing none: they credit nobody, so they are no evidence."""
    counted: dict[int, float] = {}
    for nearest, similarity in ((nearest_dense, dense), (nearest_words, words)):
        for i in map(int, nearest):
            if similarity[i] > 0:
                counted[i] = max(counted.get(i, 0.0), float(similarity[i]))
    return counted


def role_matrix(incidents: list[Incident], column: dict[str, int]) -> np.ndarray:
    """(N, P): the main resolver 1, other responders on the roster 0.6, everyone else 0."""
    roles = np.zeros((len(incidents), len(column)))
    for row, incident in enumerate(incidents):
        for position, person in enumerate(incident.responders):
            if person in column:
                credit = MAIN_RESOLVER if position == 0 else OTHER_RESPONDER
                roles[row, column[person]] = max(roles[row, column[person]], credit)
    return roles


def _ago(now: datetime, then: datetime) -> str:
    days = (now - then).days
    if days < 60:
        return f"{days} days ago ({then:%Y-%m-%d})"
    months = round(days / 30.44)
    return f"{months} months ago ({then:%Y-%m-%d})"


def _skill_in(skill: str, words: set[str], lower_text: str) -> bool:
    parts = WORD.findall(skill.lower())
    if not parts:  # "-" or "": nothing to look for (and "" is in every text)
        return False
    if len(parts) == 1:
        return parts[0] in words or (len(parts[0]) > 4 and parts[0] + "s" in words)
    return " ".join(parts) in lower_text or "-".join(parts) in lower_text


def off_hours(expert: Expert, now: datetime) -> str | None:
    """The person's local time when it is outside their listed hours, else None."""
    if not expert.hours:
        return None
    local = now.astimezone(ZoneInfo(expert.timezone))
    start, end = expert.hours.split("-")
    current = local.strftime("%H:%M")
    inside = start <= current < end if start <= end else current >= start or current < end
    return None if inside else current


def train(
    experts: list[Expert],
    incidents: list[Incident],
    encoder: Encoder,
    service_owners: dict[str, list[str]] | None = None,
    store: object | None = None,
    blends: Blends | None = None,
    rotations: list[Rotation] | None = None,
    service_teams: dict[str, str] | None = None,
) -> ExpertModel:
    """The model on ``incidents`` (embedding only what is not cached), with ``blends`` (else the fallback)."""
    started = time.perf_counter()
    vectors = embed_incidents(incidents, encoder, store)
    model = ExpertModel(
        experts, incidents, vectors, service_owners or {}, blends or Blends(), rotations or [], service_teams or {}
    )
    model.train_seconds = time.perf_counter() - started
    return model


def spread_load(suggestions: list[Suggestion], recent_firsts: list[str]) -> list[Suggestion]:
    """Among about-equally-good people, whoever was suggested first recently moves down a little: their score is
    lowered (the one shown, so the list reads in order), and a reason says why.

    Only when someone else is about as good: a clear best is not passed over for someone clearly worse. And never
    below the edge of the about-equally-good: many recent first places move them behind their equals, not behind
    people who were further off to begin with."""
    if len(suggestions) < 2:
        return suggestions
    edge = suggestions[0].score * (1 - TIE_MARGIN)
    if sum(s.score >= edge for s in suggestions) < 2:
        return suggestions
    counts = Counter(recent_firsts)
    adjusted = []
    for s in suggestions:
        times = counts.get(s.expert.id, 0)
        if times and s.score >= edge:
            s = replace(s, score=round(max(s.score * (1 - LOAD_PENALTY * times), edge), 4), spread=times)
        adjusted.append(s)
    return sorted(adjusted, key=lambda s: (-s.score, s.spread))  # at the edge: the one not first lately ahead
