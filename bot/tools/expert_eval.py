"""Expert suggestion quality: the learned ranking against five baselines, on a query file or a time split.

Real history is messy: a query may name a service the knowledge directory does not know (it is dropped
and counted), incidents name people who left (summarised, never suggested). Vectors are kept in a cache
database by content hash, so a second run of the same evaluation embeds nothing.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

from bot.answers.encoder import Encoder
from bot.answers.expert_blend import SIGNALS, decay_matrix, knn_credit, nearest_incidents
from bot.answers.experts import question_words  # the question's words as opsbot's own ranking reads them
from bot.errors import InvalidRequest
from bot.knowledge import load_knowledge, unknown_responders
from bot.models import Incident
from bot.rota import YEARS
from bot.text import content_hash, normalize_query
from bot.tools.evaluation import read_query_file

log = logging.getLogger(__name__)
SHOWN = 5  # names listed of anything summarised (unknown services, responders missing from the roster)
BASELINE_NEIGHBOURS = 8  # the TF-IDF baselines credit the 8 nearest incidents, as opsbot's kNN did before fitting
ACTIVE_DAYS = 365  # "most active in the last year"
FORMER_WEIGHTS = (0.6, 0.25, 0.15)  # meaning, ownership, skills: opsbot's fixed weights before they were fitted
RANKINGS = {
    "learned": "opsbot learned",
    "tfidf_knn": "TF-IDF nearest past incidents",
    "tfidf_knn_ownership": "TF-IDF nearest + ownership (opsbot's former weights)",
    "recent_activity": "most active in the last year (ignores the text)",
    "ownership": "ownership only",
    "most_frequent": "most frequent responders ever",
}


@dataclass(frozen=True)
class ExpertQuery:
    id: str
    text: str
    relevant: frozenset[str]
    services: tuple[str, ...] = ()
    date: datetime | None = None  # when it was asked: credit decays up to then


def load_expert_queries(path: Path) -> list[ExpertQuery]:
    """JSON lines: {"id"?, "query", "relevant": [roster ids], "services"?: [...], "date"?: ISO}; bad lines named."""
    queries = []
    for number, line in enumerate(read_query_file(path).splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            data = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InvalidRequest(f"{where}: not valid JSON ({exc.msg}).") from None
        if not isinstance(data, dict) or not isinstance(data.get("query"), str) or not data.get("relevant"):
            raise InvalidRequest(f'{where}: each line needs "query" (text) and "relevant" (a list of roster ids).')
        relevant = data["relevant"] if isinstance(data["relevant"], list) else [data["relevant"]]
        services = data.get("services") or []
        if not isinstance(services, list) or not all(isinstance(s, str) for s in services):
            raise InvalidRequest(f'{where}: "services" must be a list of service names.')
        date = None
        if data.get("date"):
            try:
                date = datetime.fromisoformat(str(data["date"]).replace("Z", "+00:00"))
            except ValueError:
                raise InvalidRequest(f'{where}: "date" {data["date"]!r} is not an ISO date and time.') from None
            date = date if date.tzinfo else date.replace(tzinfo=UTC)
            if not YEARS[0] <= date.year <= YEARS[1]:  # the ranking counts days and weeks from it
                years = f"{YEARS[0]} to {YEARS[1]}"
                raise InvalidRequest(f'{where}: "date" {data["date"]!r} must fall in the years {years}.')
        queries.append(
            ExpertQuery(
                str(data.get("id", number)), data["query"], frozenset(map(str, relevant)), tuple(services), date
            )
        )
    if not queries:
        raise InvalidRequest(f"{path} holds no queries.")
    return queries


def time_split_queries(
    incidents: list[Incident], train_share: float, relevant: str, with_services: bool
) -> tuple[list[Incident], list[ExpertQuery]]:
    """Learn from the older incidents; ask with the newer ones' title and summary (what is known when one starts)."""
    ordered = sorted(incidents, key=lambda i: (i.date, i.id))
    cut = max(1, int(len(ordered) * train_share))
    queries = [
        ExpertQuery(
            i.id,
            f"{i.title}. {i.summary}",
            frozenset(i.responders if relevant == "all" else i.responders[:1]),
            i.services if with_services else (),
            i.date,
        )
        for i in ordered[cut:]
    ]
    return ordered[:cut], queries


class VectorCache:
    """Vectors by (model, content hash) in a store's embeddings table: what was embedded once is never again."""

    def __init__(self, encoder: Encoder, store: object | None) -> None:
        self.encoder, self.store = encoder, store
        self.embedded = self.reused = 0

    def vectors(self, texts: list[str], kind: str) -> np.ndarray:
        if not texts:
            return np.zeros((0, 0), dtype=np.float32)
        hashes = [content_hash(f"{kind}:{t}") for t in texts]
        found = self.store.vectors_for(self.encoder.model_id, list(set(hashes))) if self.store is not None else {}
        missing = list(dict.fromkeys(h for h in hashes if h not in found))
        if missing:
            text_of = dict(zip(hashes, texts, strict=True))
            fresh = self.encoder.encode([text_of[h] for h in missing])
            new = dict(zip(missing, fresh, strict=True))
            if self.store is not None:
                self.store.save_embeddings(self.encoder.model_id, new)
            found.update(new)
        self.embedded += len(missing)
        self.reused += len(set(hashes)) - len(missing)
        return np.stack([found[h] for h in hashes]).astype(np.float32)


def evaluate_experts(
    knowledge: Path,
    encoder: Encoder,
    queries_path: Path | None = None,
    train_share: float = 0.7,
    relevant: str = "all",
    with_services: bool = False,
    cache: Path | None = None,
) -> dict:
    """The learned ranking (blends fitted on the training incidents alone) against five baselines."""
    from bot.answers.expert_fit import fit_blends
    from bot.answers.experts import ExpertModel
    from bot.answers.incident_vectors import incident_text

    started = time.perf_counter()
    kb = load_knowledge(knowledge)
    if not kb.experts:
        raise InvalidRequest(f"{knowledge}/experts.yaml has no people; the expert evaluation needs a roster.")
    if queries_path is not None:
        train, queries = kb.incidents, load_expert_queries(queries_path)
        split = f"learned from all {len(train)} incidents; queries from {queries_path.name}"
    else:
        if len(kb.incidents) < 4:
            raise InvalidRequest("a time split needs at least 4 incidents in the knowledge directory.")
        train, queries = time_split_queries(kb.incidents, train_share, relevant, with_services)
        split = f"time split: learned from the older {len(train)}, asked with the newer {len(queries)}"
    owners = {name: list(cfg.get("owners") or []) for name, cfg in kb.services.items()}
    teams = {name: str(cfg["team"]) for name, cfg in kb.services.items() if isinstance(cfg.get("team"), str)}
    store = _open_cache(cache)
    cached = store is not None
    try:
        vectors = VectorCache(encoder, store)
        embed_started = time.perf_counter()
        incident_vectors = vectors.vectors([incident_text(i) for i in train], "incident")
        query_vectors = vectors.vectors([normalize_query(q.text) for q in queries], "query")
        embed_seconds = time.perf_counter() - embed_started
    finally:
        if store is not None:
            store.close()
    fit_started = time.perf_counter()
    model = ExpertModel(kb.experts, train, incident_vectors, owners, rotations=kb.rotations, service_teams=teams)
    model.blends = fit_blends(model)
    fit_seconds = time.perf_counter() - fit_started

    rank_started = time.perf_counter()
    rankings, used = _rank_all(model, queries, query_vectors)
    rank_seconds = time.perf_counter() - rank_started
    missing = unknown_responders(kb.experts, train)
    given = sum(1 for q in used["asked"] if q.services)
    if queries_path is not None:
        services = f"from the query file ({given} of {len(used['asked'])} queries)" if given else "none: text only"
    else:
        services = "each incident's own (--with-services)" if with_services else "none: text only"
    return {
        "knowledge": str(knowledge),
        "queries_file": str(queries_path) if queries_path else None,
        "split": split,
        "relevant": relevant,
        "with_services": given > 0,
        "services": services,
        "queries": len(used["asked"]),
        "skipped_queries": used["skipped"],
        "unknown_services": used["unknown_services"],
        "unknown_responders": {"count": len(missing), "first": missing[:SHOWN]},
        "encoder": encoder.model_id,
        "cache": {"path": str(cache) if cached else None, "embedded": vectors.embedded, "reused": vectors.reused},
        "blend": {
            "fitted": model.blends.fitted,
            "how": model.blends.note,
            "text": _blend_dict(model.blends.text),
            "services": _blend_dict(model.blends.services),
            "validation": model.blends.validation,
        },
        "seconds": {
            "embed": round(embed_seconds, 2),
            "fit": round(fit_seconds, 2),
            "rank": round(rank_seconds, 2),
            "total": round(time.perf_counter() - started, 2),
        },
        "train_seconds": round(model.train_seconds + fit_seconds, 3),
        "rankings": rankings,
    }


def _open_cache(path: Path | None) -> object | None:
    """The vector cache, or None (everything embedded afresh) when it cannot be opened or written."""
    if path is None:
        return None
    from bot.store import Store
    from bot.store.base import DatabaseUnavailable

    try:
        return Store(path)
    except DatabaseUnavailable as exc:
        log.warning("eval vector cache unavailable path=%s reason=%s", path, exc.reason)
        return None


def _blend_dict(blend: object) -> dict:
    return {
        **{s: getattr(blend, s) for s in SIGNALS},
        "half_life_days": blend.half_life_days,
        "neighbours": blend.neighbours,
    }


def _rank_all(model: object, queries: list[ExpertQuery], query_vectors: np.ndarray) -> tuple[dict, dict]:
    """Every ranking for every query with a roster member to find; what was skipped and why."""
    order = [e.id for e in model.experts]
    on_roster = set(order)
    # A query without a date is asked after the whole history (a second later than the newest incident).
    newest = max((i.date for i in model.incidents), default=datetime.now(UTC)) + timedelta(seconds=1)
    results: dict[str, list[tuple[list[str], frozenset[str]]]] = {name: [] for name in RANKINGS}
    unknown: Counter[str] = Counter()
    unknown_queries = 0
    asked: list[ExpertQuery] = []
    skipped = 0
    for n, query in enumerate(queries):
        wanted = frozenset(p for p in query.relevant if p in on_roster)
        if not wanted:
            skipped += 1  # nobody on the roster to find: no ranking can get it right
            continue
        known = [s for s in query.services if s in model.services]
        strange = [s for s in query.services if s not in model.services]
        if strange:
            unknown_queries += 1
            unknown.update(strange)
        query = ExpertQuery(query.id, query.text, wanted, tuple(known), query.date)
        asked.append(query)
        now = query.date or newest
        # Every ranking learns only from what was known when the question was asked, never from its own incident.
        itself = _incidents_asked_about(model.incidents, query)
        history = model.known_at(now, itself)
        learned = model.rank(query.text, query_vectors[n], known or None, now=now, leave_out=itself)
        results["learned"].append(([s.expert.id for s in learned], wanted))
        involved = sorted(set(known) | set(model.services_in(query.text)))
        words, ownership = _tfidf_scores(model, query.text, involved, now, history)
        past = [i for i, k in zip(model.incidents, history, strict=True) if k]
        recent, frequent = _most_active(past, order)
        present = [p for p in order if not model.by_id[p].has_left(now)]
        results["tfidf_knn"].append((_ranked(words, order, present), wanted))
        meaning, owning, knowing = FORMER_WEIGHTS
        blended = meaning * words + owning * ownership[:, 0] + knowing * ownership[:, 1]
        results["tfidf_knn_ownership"].append((_ranked(blended, order, present), wanted))
        results["recent_activity"].append(([p for p in recent if p in present], wanted))
        owned = [p for p in order if p in {o for s in involved for o in model.owners_of(s)} and p in present]
        results["ownership"].append((owned, wanted))
        results["most_frequent"].append(([p for p in frequent if p in present], wanted))
    if not asked:
        raise InvalidRequest("no query has a relevant person on the roster; nothing to measure.")
    unknown_summary = {
        "queries": unknown_queries,
        "count": len(unknown),
        "first": [s for s, _ in unknown.most_common()],
    }
    unknown_summary["first"] = unknown_summary["first"][:SHOWN]
    return {name: rank_metrics(rows) for name, rows in results.items()}, {
        "asked": asked,
        "skipped": skipped,
        "unknown_services": unknown_summary,
    }


def _incidents_asked_about(incidents: list[Incident], query: ExpertQuery) -> set[str]:
    """The ids of the incidents a query is: the same id, or, for a query without a date (asked after them all),
    the same text as the incident's title, or title and summary. A dated query's own incident is not before it."""
    text = normalize_query(query.text).lower()
    return {
        i.id
        for i in incidents
        if i.id == query.id
        or (query.date is None and text in {normalize_query(t).lower() for t in (i.title, f"{i.title}. {i.summary}")})
    }


def _most_active(past: list[Incident], order: list[str]) -> tuple[list[str], list[str]]:
    """The roster by how much they resolved in the year before the newest of ``past``, and by how much ever."""
    on_roster = set(order)
    newest = max((i.date for i in past), default=datetime.now(UTC))
    # Each responder once per incident, in the incident's order (not a set's): ties are broken the same every run.
    active = Counter(
        p for i in past if i.date > newest - timedelta(days=ACTIVE_DAYS) for p in dict.fromkeys(i.responders)
    )
    recent = [p for p, _ in active.most_common() if p in on_roster]
    frequent = [p for p, _ in Counter(p for i in past for p in dict.fromkeys(i.responders)).most_common()]
    return recent, [p for p in frequent if p in on_roster] + [p for p in order if p not in frequent]


def _tfidf_scores(
    model: object, text: str, involved: list[str], now: datetime, history: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The TF-IDF kNN credit per person (no decay) from the ``history`` incidents, and their ownership and skills."""
    words = np.where(history, model.words.similarity([question_words(text)]), -np.inf)
    flat = decay_matrix(np.zeros(1), model.days, 0.0) * history
    credit = knn_credit(words, flat, model.roles, nearest_incidents(words, model.days, BASELINE_NEIGHBOURS))[0]
    fixed = model.fixed_signals(text, involved, now)[0]
    return credit, fixed[:, :2]


def _ranked(scores: np.ndarray, order: list[str], present: list[str]) -> list[str]:
    """People with a positive score, best first (roster order among equals)."""
    keep = set(present)
    ranked = sorted((n for n, p in enumerate(order) if scores[n] > 0 and p in keep), key=lambda n: -scores[n])
    return [order[n] for n in ranked]


def rank_metrics(rankings: list[tuple[list[str], frozenset[str]]]) -> dict[str, float]:
    """Top-1 and top-3 hit rates and MRR of ranked roster ids against the relevant ones."""
    n = max(len(rankings), 1)
    top1 = sum(bool(r) and r[0] in rel for r, rel in rankings)
    top3 = sum(any(x in rel for x in r[:3]) for r, rel in rankings)
    mrr = sum(next((1 / (i + 1) for i, x in enumerate(r) if x in rel), 0.0) for r, rel in rankings)
    return {"queries": len(rankings), "top1": round(top1 / n, 4), "top3": round(top3 / n, 4), "mrr": round(mrr / n, 4)}
