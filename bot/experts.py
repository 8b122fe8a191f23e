"""Who to pull in: a ranking of roster members learned from who resolved similar incidents.

Three signals, each explained: (a) nearest past incidents by meaning (scikit-learn
NearestNeighbors over incident embeddings) credit the people who resolved them, the main
resolver most; (b) ownership of the services involved; (c) the person's listed skills found in
the text. Availability (away, outside working hours) lowers a score and is flagged.
"""

from __future__ import annotations

import re
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import numpy as np

from bot.encoder import Encoder
from bot.errors import InvalidRequest
from bot.models import Expert, Incident
from bot.text import content_hash, spell_identifiers, strip_volatile

WORD = re.compile(r"[a-z0-9]+")


@dataclass(frozen=True)
class Weights:
    """How the three signals combine; measured with `opsbot eval --task experts`."""

    learned: float = 0.6
    ownership: float = 0.25
    skills: float = 0.15
    neighbours: int = 8
    min_similarity: float = 0.25  # incidents less alike than this say nothing about who can help
    main_resolver: float = 1.0
    other_responder: float = 0.6
    away_factor: float = 0.5
    off_hours_factor: float = 0.8
    tie_margin: float = 0.1  # suggestions within 10% of the best count as "about equally good"
    load_penalty: float = 0.06  # per recent first place, among the about-equally-good
    min_share: float = 0.2  # suggestions scoring under 20% of the best are not shown


@dataclass(frozen=True)
class SimilarIncident:
    id: str
    title: str
    similarity: float
    main_resolver: bool


@dataclass(frozen=True)
class Suggestion:
    """A roster member, their score and every reason behind it."""

    expert: Expert
    score: float
    incidents: tuple[SimilarIncident, ...] = ()
    owns: tuple[str, ...] = ()
    skills: tuple[str, ...] = ()
    flags: tuple[str, ...] = ()

    def reasons(self) -> list[str]:
        out = []
        if self.incidents:
            parts = [f"{i.id} ({i.similarity:.2f})" for i in self.incidents[:3]]
            verb = "looks" if len(parts) == 1 else "look"
            out.append(f"resolved {', '.join(parts)}, which {verb} like this")
        if self.owns:
            out.append(f"owns {', '.join(self.owns)}")
        if self.skills:
            out.append(f"skills: {', '.join(self.skills)}")
        return out


@dataclass
class ExpertModel:
    """Trained on past incidents; rank() scores every roster member for a text."""

    experts: list[Expert]
    incidents: list[Incident]
    vectors: np.ndarray
    service_owners: dict[str, list[str]] = field(default_factory=dict)
    weights: Weights = field(default_factory=Weights)
    train_seconds: float = 0.0

    def __post_init__(self) -> None:
        if not self.experts:
            raise InvalidRequest("the roster is empty: add people to knowledge/experts.yaml and run `opsbot index`.")
        self.by_id = {e.id: e for e in self.experts}
        self.teams: dict[str, list[str]] = {}
        for e in self.experts:
            self.teams.setdefault(e.team, []).append(e.id)
        from sklearn.neighbors import NearestNeighbors  # imported on first training: keeps start-up fast

        started = time.perf_counter()
        self.knn: NearestNeighbors | None = None
        if len(self.incidents):
            self.knn = NearestNeighbors(n_neighbors=min(self.weights.neighbours, len(self.incidents)), metric="cosine")
            self.knn.fit(self.vectors)
        self.train_seconds += time.perf_counter() - started
        self.services = self._known_services()

    def _known_services(self) -> set[str]:
        known = set(self.service_owners)
        for e in self.experts:
            known.update(e.services)
        for i in self.incidents:
            known.update(i.services)
        return known

    def owners_of(self, service: str) -> set[str]:
        """Roster ids owning a service: from the roster, and services.yaml (ids or team names)."""
        owners = {e.id for e in self.experts if service in e.services}
        for owner in self.service_owners.get(service, []):
            owners.update(self.teams.get(owner, [owner] if owner in self.by_id else []))
        return owners

    def services_in(self, text: str) -> list[str]:
        lower = text.lower()
        return sorted(s for s in self.services if re.search(rf"(?<![\w-]){re.escape(s)}(?![\w-])", lower))

    def rank(
        self, text: str, vector: np.ndarray, services: list[str] | None = None, now: datetime | None = None
    ) -> list[Suggestion]:
        """Every roster member with any reason to help, best first."""
        w = self.weights
        for service in services or []:
            if service not in self.services:
                known = ", ".join(sorted(self.services)) or "none yet"
                raise InvalidRequest(f"unknown service {service!r}; known services: {known}.")
        involved = sorted(set(services or []) | set(self.services_in(text)))
        learned, evidence = self._learned(vector)
        words = set(WORD.findall(text.lower()))
        now = now or datetime.now(UTC)
        results = []
        for expert in self.experts:
            owns = tuple(s for s in involved if expert.id in self.owners_of(s))
            skills = tuple(s for s in expert.skills if _skill_in(s, words, text.lower()))
            score = (
                w.learned * learned.get(expert.id, 0.0)
                + w.ownership * (1.0 if owns else 0.0)
                + w.skills * min(1.0, len(skills) / 2)
            )
            if score <= 0:
                continue
            flags = []
            if expert.away:
                score *= w.away_factor
                flags.append("away")
            elif (local := off_hours(expert, now)) is not None:
                score *= w.off_hours_factor
                flags.append(f"outside working hours ({local} in {expert.timezone})")
            results.append(
                Suggestion(expert, round(score, 4), tuple(evidence.get(expert.id, [])), owns, skills, tuple(flags))
            )
        return sorted(results, key=lambda s: -s.score)

    def _learned(self, vector: np.ndarray) -> tuple[dict[str, float], dict[str, list[SimilarIncident]]]:
        """Credit each responder of the nearest incidents by how alike they are (squared similarity)."""
        if self.knn is None:
            return {}, {}
        distances, indices = self.knn.kneighbors(vector.reshape(1, -1))
        credit: Counter[str] = Counter()
        evidence: dict[str, list[SimilarIncident]] = {}
        total = 0.0
        for distance, index in zip(distances[0], indices[0], strict=True):
            similarity = 1.0 - float(distance)
            if similarity < self.weights.min_similarity:
                continue
            incident = self.incidents[int(index)]
            weight = similarity**2
            total += weight
            for position, person in enumerate(incident.responders):
                main = position == 0
                credit[person] += weight * (self.weights.main_resolver if main else self.weights.other_responder)
                evidence.setdefault(person, []).append(
                    SimilarIncident(incident.id, incident.title, round(similarity, 3), main)
                )
        if not total:
            return {}, {}
        return {p: c / total for p, c in credit.items()}, evidence


def _skill_in(skill: str, words: set[str], lower_text: str) -> bool:
    parts = WORD.findall(skill.lower())
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


def incident_text(incident: Incident) -> str:
    """What an incident looks like when it starts: its title, summary and cause."""
    return spell_identifiers(strip_volatile(f"{incident.title}. {incident.summary} {incident.root_cause}"))


def incident_vector_hash(incident: Incident) -> str:
    return content_hash("incident:" + incident_text(incident))


def embed_incidents(incidents: list[Incident], encoder: Encoder, store: object | None = None) -> np.ndarray:
    """Incident vectors, reusing those already stored for the same text and model."""
    if not incidents:
        return np.zeros((0, 0), dtype=np.float32)
    texts = [incident_text(i) for i in incidents]
    hashes = [incident_vector_hash(i) for i in incidents]
    cached: dict[str, np.ndarray] = store.vectors_for(encoder.model_id, hashes) if store is not None else {}
    missing = [i for i, h in enumerate(hashes) if h not in cached]
    if missing:
        fresh = encoder.encode([texts[i] for i in missing])
        new = {hashes[i]: fresh[n] for n, i in enumerate(missing)}
        if store is not None:
            store.save_embeddings(encoder.model_id, new)
        cached.update(new)
    return np.stack([cached[h] for h in hashes]).astype(np.float32)


def train(
    experts: list[Expert],
    incidents: list[Incident],
    encoder: Encoder,
    service_owners: dict[str, list[str]] | None = None,
    store: object | None = None,
    weights: Weights | None = None,
) -> ExpertModel:
    """Fit the model on ``incidents`` (embedding only what is not cached)."""
    started = time.perf_counter()
    vectors = embed_incidents(incidents, encoder, store)
    model = ExpertModel(experts, incidents, vectors, service_owners or {}, weights or Weights())
    model.train_seconds = time.perf_counter() - started
    return model


def spread_load(suggestions: list[Suggestion], recent_firsts: list[str], weights: Weights) -> list[Suggestion]:
    """Among about-equally-good people, whoever was suggested first recently moves down a little."""
    if len(suggestions) < 2:
        return suggestions
    best = suggestions[0].score
    counts = Counter(recent_firsts)
    adjusted = []
    for s in suggestions:
        score = s.score
        if score >= best * (1 - weights.tie_margin):
            score *= 1 - weights.load_penalty * counts.get(s.expert.id, 0)
        adjusted.append((score, s))
    return [s for _, s in sorted(adjusted, key=lambda pair: -pair[0])]
