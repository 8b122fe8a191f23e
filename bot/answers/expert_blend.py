"""How the expert signals are computed and combined, and how the combination is fitted on a team's own history.

Seven signals score each person for a problem, each between 0 and 1:

- similarity: the nearest past incidents by meaning (sentence embeddings) credit the people who resolved them,
- words: the same with TF-IDF vectors of the incidents' words (names of components, errors, metrics),
- recency: how much the person resolved lately, whatever it was,
- service_history: how much they resolved on the services involved,
- ownership: they own a service involved (roster ``services``, services.yaml ``owners``),
- skills: their listed skills appear in the text,
- on_call: they are on call for a service involved.

An incident's credit halves every ``half_life_days``. The weights, the half-life and the number of neighbours
are fitted at index time on a time split of the knowledge base's own incidents: the model learns from the
older 80% and is asked, for each newer incident, who resolved it (with only its title and summary, what is
known when an incident starts). The combination with the best mean reciprocal rank is kept, once for text
alone and once with the services given. A history too small to validate on keeps ``FALLBACK``.
"""

from __future__ import annotations

import itertools
import json
import logging
import time
from dataclasses import asdict, dataclass, field, replace

import numpy as np

log = logging.getLogger(__name__)

SIGNALS = ("similarity", "words", "recency", "service_history", "ownership", "skills", "on_call")
HISTORY_SIGNALS = SIGNALS[:4]  # these depend on the half-life and the number of neighbours
MAIN_RESOLVER, OTHER_RESPONDER = 1.0, 0.6  # the main resolver fixed it; the others helped
# Time splits (shares of the history, oldest first): the incidents between the two shares are asked about,
# learning from all older ones. Two folds of a fifth each: twice the questions of one split, all recent.
FOLDS = ((0.6, 0.8), (0.8, 1.0))
MIN_VALIDATION = 30  # with fewer questions one answer moves the score by over 3 points: too few to fit on
HALF_LIVES = (30.0, 90.0, 180.0, 365.0, 730.0, 0.0)  # days; 0 = no decay
NEIGHBOURS = (8, 16, 32, 64)
GRID_STEPS = 4  # the weights are shared among the signals in quarters


@dataclass(frozen=True)
class Blend:
    """One fitted combination: a weight per signal, the half-life of credit and how many neighbours count."""

    similarity: float
    words: float
    recency: float
    service_history: float
    ownership: float
    skills: float
    on_call: float
    half_life_days: float  # 0: an old incident counts as much as a new one
    neighbours: int

    def weights(self) -> np.ndarray:
        return np.array([getattr(self, s) for s in SIGNALS], dtype=np.float64)

    def with_weights(self, weights: np.ndarray) -> Blend:
        total = float(weights.sum()) or 1.0
        return replace(self, **{s: round(float(w) / total, 4) for s, w in zip(SIGNALS, weights, strict=True)})


# Used when the history is too small to fit on: the weights opsbot used before it fitted them (meaning 0.6,
# ownership 0.25, skills 0.15, 8 neighbours), with meaning measured two ways, half each (embeddings and words: fits
# on larger histories give the two about equal weight), the on-call person counted like an owner, and no decay:
# too little history to measure how fast expertise fades, so an old incident counts as much as a new one.
FALLBACK_TEXT = Blend(0.3, 0.3, 0.0, 0.0, 0.25, 0.15, 0.25, 0.0, 8)
FALLBACK_SERVICES = FALLBACK_TEXT


@dataclass(frozen=True)
class Blends:
    """The blend for text alone and the one for when services are given, with how they were chosen."""

    text: Blend = FALLBACK_TEXT
    services: Blend = FALLBACK_SERVICES
    fitted: bool = False
    basis: str = ""  # which history they were fitted on (a content hash)
    note: str = "not fitted yet: the fallback weights"
    validation: dict = field(default_factory=dict)  # {"text": {top1, top3, mrr}, "services": {...}, "queries": n}

    def for_query(self, services_given: bool) -> Blend:
        return self.services if services_given else self.text

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> Blends | None:
        """The stored blends, or None when there are none (or they were written by another version)."""
        try:
            data = json.loads(text)
            return cls(
                Blend(**data["text"]),
                Blend(**data["services"]),
                data["fitted"],
                data["basis"],
                data["note"],
                data.get("validation", {}),
            )
        except (ValueError, KeyError, TypeError):
            return None


# -- the signals, for many questions at once ----------------------------------------------------------------


def knn_credit(similarity: np.ndarray, decay: np.ndarray, roles: np.ndarray, nearest: np.ndarray) -> np.ndarray:
    """(Q, P): each question's nearest incidents (``nearest``, (Q, k) indices) credit their responders by
    similarity squared, decayed."""
    q = similarity.shape[0]
    if not similarity.shape[1] or not q:
        return np.zeros((q, roles.shape[1]))
    rows = np.arange(q)[:, None]
    weights = np.maximum(similarity[rows, nearest], 0.0) ** 2 * decay[rows, nearest]  # (Q, k)
    return normalise(np.einsum("qk,qkp->qp", weights, roles[nearest]))


def nearest_incidents(similarity: np.ndarray, incident_days: np.ndarray, k: int) -> np.ndarray:
    """(Q, k) indices of the most similar incidents, best first; among equally similar ones (to six decimals, as a
    recurring alert's are) the more recent first: they say who fixes it now."""
    k = min(k, similarity.shape[1])
    if not k:
        return np.zeros((similarity.shape[0], 0), dtype=np.int64)
    rounded = np.round(similarity, 6)
    # A coarse cut first (argpartition), then an exact order of the few kept.
    keep = min(similarity.shape[1], k * 4)
    rough = np.argpartition(-rounded, keep - 1, axis=1)[:, :keep]
    rows = np.arange(similarity.shape[0])[:, None]
    order = np.lexsort((-incident_days[rough], -rounded[rows, rough]), axis=1)
    return rough[rows, order][:, :k]


def normalise(scores: np.ndarray) -> np.ndarray:
    """Each row divided by its largest value, so the best-supported person scores 1."""
    top = scores.max(axis=1, keepdims=True) if scores.size else scores
    return np.divide(scores, top, out=np.zeros_like(scores), where=top > 0)


def decay_matrix(now_days: np.ndarray, incident_days: np.ndarray, half_life: float) -> np.ndarray:
    """(Q, N): how much each incident still counts at each question's time."""
    if not half_life:
        return np.ones((len(now_days), len(incident_days)))
    age = np.maximum(now_days[:, None] - incident_days[None, :], 0.0)
    return 0.5 ** (age / half_life)


def idle_days(roles: np.ndarray, incident_days: np.ndarray, now_days: np.ndarray) -> np.ndarray:
    """(Q, P): days from each person's latest resolved incident (up to the question's time) to it; NaN if none."""
    out = np.full((len(now_days), roles.shape[1]), np.nan)
    for column in range(roles.shape[1]):
        days = np.sort(incident_days[roles[:, column] > 0])
        if not len(days):
            continue
        before = np.searchsorted(days, now_days, side="right")  # how many of theirs are at or before each question
        known = before > 0
        out[known, column] = now_days[known] - days[before[known] - 1]
    return out


def freshness(idle: np.ndarray, half_life: float) -> np.ndarray:
    """How current an owner's ownership is: it halves with each half-life since they last resolved anything.

    Ownership files lag behind who does the work; someone with no history yet counts fully (nothing says they
    have moved on)."""
    if not half_life:
        return np.ones_like(idle)
    return np.where(np.isnan(idle), 1.0, 0.5 ** (np.nan_to_num(idle) / half_life))


def history_signals(
    dense: np.ndarray,
    words: np.ndarray,
    overlap: np.ndarray,
    decay: np.ndarray,
    roles: np.ndarray,
    nearest_dense: np.ndarray,
    nearest_words: np.ndarray,
) -> np.ndarray:
    """(Q, P, 4): similarity, words, recency and service history for questions against past incidents.

    ``overlap`` (Q, N) is how much each incident's services overlap the question's (Jaccard), 0 without services;
    ``nearest_*`` are the nearest incidents by meaning and by words (see ``nearest_incidents``).
    """
    out = np.zeros((dense.shape[0], roles.shape[1], 4))
    out[:, :, 0] = knn_credit(dense, decay, roles, nearest_dense)
    out[:, :, 1] = knn_credit(words, decay, roles, nearest_words)
    out[:, :, 2:] = time_signals(overlap, decay, roles)
    return out


def time_signals(overlap: np.ndarray, decay: np.ndarray, roles: np.ndarray) -> np.ndarray:
    """(Q, P, 2): recency (all resolved incidents, decayed) and service history (those on the services involved)."""
    out = np.zeros((decay.shape[0], roles.shape[1], 2))
    out[:, :, 0] = normalise(decay @ roles)
    out[:, :, 1] = normalise((overlap * decay) @ roles)
    return out


def service_overlap(query_services: list[set[str]], incident_services: list[frozenset[str]]) -> np.ndarray:
    """(Q, N) Jaccard overlap of each question's services with each incident's."""
    names = sorted({s for group in query_services for s in group})
    if not names:
        return np.zeros((len(query_services), len(incident_services)))
    column = {s: n for n, s in enumerate(names)}
    asked = np.zeros((len(query_services), len(names)))
    for row, group in enumerate(query_services):
        asked[row, [column[s] for s in group]] = 1.0
    held = np.zeros((len(incident_services), len(names)))
    sizes = np.zeros(len(incident_services))
    for row, group in enumerate(incident_services):
        sizes[row] = len(group)
        held[row, [column[s] for s in group if s in column]] = 1.0
    both = asked @ held.T
    union = asked.sum(axis=1)[:, None] + sizes[None, :] - both
    return np.divide(both, union, out=np.zeros_like(both), where=union > 0)


# -- scoring a ranking --------------------------------------------------------------------------------------


def reciprocal_ranks(scores: np.ndarray, relevant: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    """(Q,) 1 / rank of the best-placed relevant person; a tie counts against them, a zero score is not ranked."""
    masked = np.where(candidates, scores, -np.inf)
    best = np.where(relevant & candidates & (masked > 0), masked, -np.inf).max(axis=1)
    ranks = (masked >= best[:, None]).sum(axis=1)  # people scoring at least as much as the best relevant one
    return np.where(np.isfinite(best), 1.0 / np.maximum(ranks, 1), 0.0)


def summary(rr: np.ndarray) -> dict[str, float]:
    if not len(rr):
        return {"queries": 0, "top1": 0.0, "top3": 0.0, "mrr": 0.0}
    return {
        "queries": int(len(rr)),
        "top1": round(float((rr >= 1.0).mean()), 4),
        "top3": round(float((rr >= 1 / 3).mean()), 4),
        "mrr": round(float(rr.mean()), 4),
    }


# -- fitting ------------------------------------------------------------------------------------------------


@dataclass
class Questions:
    """Validation questions against a training history, with every input the signals need."""

    dense: np.ndarray  # (Q, N) cosine similarity to each training incident
    words: np.ndarray  # (Q, N) TF-IDF cosine
    now_days: np.ndarray  # (Q,)
    incident_days: np.ndarray  # (N,)
    roles: np.ndarray  # (N, P)
    overlap: np.ndarray  # (Q, N) service overlap
    fixed: np.ndarray  # (Q, P, 3) owns a service involved, skills, on call
    idle: np.ndarray  # (Q, P) days since each person last resolved an incident (NaN: never)
    relevant: np.ndarray  # (Q, P) bool
    candidates: np.ndarray  # (Q, P) bool: on the roster and not yet left at the question's time


def signals_at(questions: Questions, half_life: float, k: int) -> np.ndarray:
    """(Q, P, 7): every signal for the questions, with credit halving every ``half_life`` days."""
    return _Signals(questions).at(half_life, k)


class _Signals:
    """The signals of one fold for every half-life and number of neighbours, sharing what does not change."""

    def __init__(self, questions: Questions) -> None:
        self.q = questions
        most = max(NEIGHBOURS)
        self.nearest_dense = nearest_incidents(questions.dense, questions.incident_days, most)
        self.nearest_words = nearest_incidents(questions.words, questions.incident_days, most)
        self._half_life: float | None = None

    def at(self, half_life: float, k: int) -> np.ndarray:
        q = self.q
        if self._half_life != half_life:
            self._half_life = half_life
            self.decay = decay_matrix(q.now_days, q.incident_days, half_life)
            self.time = time_signals(q.overlap, self.decay, q.roles)
            self.fixed = fixed_at(q, half_life)
        out = np.empty((q.dense.shape[0], q.roles.shape[1], len(SIGNALS)))
        out[:, :, 0] = knn_credit(q.dense, self.decay, q.roles, self.nearest_dense[:, :k])
        out[:, :, 1] = knn_credit(q.words, self.decay, q.roles, self.nearest_words[:, :k])
        out[:, :, 2:4] = self.time
        out[:, :, 4:] = self.fixed
        return out


def simplex(parts: int, steps: int) -> np.ndarray:
    """Every way to share ``steps`` equal units among ``parts`` weights: (combinations, parts), rows summing to 1."""
    # Stars and bars: the positions of parts - 1 bars among steps + parts - 1 places.
    rows = [
        np.diff([-1, *bars, steps + parts - 1]) - 1
        for bars in itertools.combinations(range(steps + parts - 1), parts - 1)
    ]
    return np.array(rows, dtype=np.float64).reshape(-1, parts) / steps


def fit_blend(folds: list[Questions], fallback: Blend) -> tuple[Blend, dict[str, float]]:
    """The half-life, neighbours and weights with the best mean reciprocal rank over the folds' questions.

    Every half-life and number of neighbours, and every sharing of the weight among the signals in steps of
    a quarter: an exhaustive grid, so the result does not depend on where a search starts. A signal that
    never fires on these questions (no skills listed, no rota yet) cannot be measured and keeps its share of
    the fallback. Longer half-lives and fewer neighbours come first and a later candidate must score higher,
    so nothing is made more complex without a gain.
    """
    started = time.perf_counter()
    relevant = np.concatenate([q.relevant for q in folds])
    candidates = np.concatenate([q.candidates for q in folds])
    base = fallback.weights()
    best: tuple[float, Blend, np.ndarray] | None = None
    prepared = [_Signals(q) for q in folds]
    for half_life in sorted(HALF_LIVES, key=lambda h: -(h or np.inf)):
        for k in NEIGHBOURS:
            signals = np.concatenate([p.at(half_life, k) for p in prepared])
            active = np.array([bool(np.any(signals[:, :, i] > 0)) for i in range(len(SIGNALS))])
            if not active.any():
                continue
            # The unmeasured signals keep the fallback's proportion to the measured ones' total.
            measured = base[active].sum() or 1.0
            for shares in simplex(int(active.sum()), GRID_STEPS):
                weights = np.where(active, 0.0, base / measured)
                weights[active] = shares
                score = _mrr(signals @ weights, relevant, candidates)
                if best is None or score > best[0] + 1e-9:
                    best = (score, replace(fallback, half_life_days=half_life, neighbours=k), weights)
            log.debug("fit half_life=%s k=%d best_mrr=%.4f", half_life, k, best[0] if best else 0.0)
    if best is None:
        return fallback, evaluate_blend(folds, fallback)
    blend = best[1].with_weights(best[2])
    result = evaluate_blend(folds, blend)
    log.info("expert blend fitted seconds=%.2f mrr=%.4f", time.perf_counter() - started, result["mrr"])
    return blend, result


def evaluate_blend(folds: list[Questions], blend: Blend) -> dict[str, float]:
    """Top-1, top-3 and MRR of ``blend`` on the folds' questions."""
    rr = [
        reciprocal_ranks(
            signals_at(q, blend.half_life_days, blend.neighbours) @ blend.weights(), q.relevant, q.candidates
        )
        for q in folds
    ]
    return summary(np.concatenate(rr) if rr else np.zeros(0))


def fixed_at(questions: Questions, half_life: float) -> np.ndarray:
    """The signals that do not come from the history's neighbours, with ownership as fresh as its owner."""
    fixed = questions.fixed.copy()
    fixed[:, :, 0] *= freshness(questions.idle, half_life)
    return fixed


def _mrr(scores: np.ndarray, relevant: np.ndarray, candidates: np.ndarray) -> float:
    return float(reciprocal_ranks(scores, relevant, candidates).mean())
