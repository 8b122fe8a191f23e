"""Retrieval quality: Recall@1/3/5 and MRR@10 over a query file, per mode and per query kind."""

from __future__ import annotations

import json
import tempfile
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from bot.encoder import Encoder
from bot.errors import InvalidRequest
from bot.indexer import IndexReport, index_knowledge
from bot.search import MODES, Ranking, SearchIndex
from bot.store import Store

CUTOFFS = (1, 3, 5)
MRR_DEPTH = 10
# --documents: rank all documents, or only one kind (the folder its files live in -> SearchHit.kind)
DOCUMENT_KINDS = {"all": "", "runbooks": "runbook", "incidents": "incident"}
FILTERED_DEPTH = 100  # hits fetched when one kind is ranked, so that ten of that kind remain


@dataclass(frozen=True)
class EvalQuery:
    id: str
    query: str
    relevant: frozenset[str]
    kind: str = ""
    sections: frozenset[str] = frozenset()  # "path#anchor": the sections that answer it, when labelled


def load_queries(path: Path) -> list[EvalQuery]:
    """Read a JSON-lines query file; a bad line is reported with its number."""
    if not path.is_file():
        raise InvalidRequest(f"query file {str(path)!r} does not exist.")
    queries: list[EvalQuery] = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InvalidRequest(f"{path}:{number}: not valid JSON ({exc.msg}).") from None
        if not isinstance(data, dict) or not isinstance(data.get("query"), str) or not data.get("relevant"):
            raise InvalidRequest(f'{path}:{number}: each line needs "query" (text) and "relevant" (a list of paths).')
        relevant = frozenset(map(str, data["relevant"] if isinstance(data["relevant"], list) else [data["relevant"]]))
        sections = _sections(data.get("sections", []), relevant, f"{path}:{number}")
        kind = str(data.get("kind", ""))
        queries.append(EvalQuery(str(data.get("id", number)), data["query"], relevant, kind, sections))
    if not queries:
        raise InvalidRequest(f"{path} holds no queries.")
    return queries


def _sections(value: object, relevant: frozenset[str], where: str) -> frozenset[str]:
    """The optional "sections" of a query line: each "path#anchor", with a path that is relevant."""
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InvalidRequest(f'{where}: "sections" must be a list of "path#anchor" strings.')
    for section in value:
        doc, _, anchor = section.partition("#")
        if not anchor:
            raise InvalidRequest(f'{where}: section {section!r} has no "#anchor"; write it as "path#anchor".')
        if doc not in relevant:
            raise InvalidRequest(f'{where}: section {section!r} is in a document that "relevant" does not list.')
    return frozenset(value)


def section_label(path: str, anchor: str) -> str:
    """How a cited section is written in a query file and in the results: "path#anchor"."""
    return f"{path}#{anchor}"


def score_ranking(paths: list[str], relevant: frozenset[str]) -> dict[str, float]:
    """Metrics for one query given the ranked document paths."""
    first = next((i for i, p in enumerate(paths[:MRR_DEPTH]) if p in relevant), None)
    metrics = {f"recall@{c}": float(first is not None and first < c) for c in CUTOFFS}
    metrics[f"mrr@{MRR_DEPTH}"] = 0.0 if first is None else 1.0 / (first + 1)
    return metrics


def _check_documents(documents: str) -> None:
    if documents not in DOCUMENT_KINDS:
        raise InvalidRequest(f"unknown documents {documents!r}; use {', '.join(DOCUMENT_KINDS)}.")


def evaluate(index: SearchIndex, queries: list[EvalQuery], modes: list[str], documents: str = "all") -> dict:
    """Run every query in every mode; returns {mode: {"all": metrics, kind: metrics}} plus misses.

    Queries labelled with "sections" also measure Section@1: the first result is a relevant document
    and the section it cites is one of them. Its misses list only queries whose document was right.

    ``documents`` ranks only runbooks or only incidents, as an answer's two blocks show them;
    a query with no relevant document of that kind is skipped (counted under "skipped").
    """
    _check_documents(documents)
    kind = DOCUMENT_KINDS[documents]
    results: dict = {}
    for mode in modes:
        sums: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
        counts: dict[str, int] = defaultdict(int)
        misses = []
        section_sums: dict[str, float] = defaultdict(float)
        section_counts: dict[str, int] = defaultdict(int)
        section_misses = []
        skipped = 0
        for q in queries:
            relevant = q.relevant if not kind else frozenset(p for p in q.relevant if p.startswith(f"{documents}/"))
            if not relevant:
                skipped += 1
                continue
            answer = index.search(q.query, k=MRR_DEPTH if not kind else FILTERED_DEPTH, mode=mode)
            paths = [h.path for h in answer.hits if not kind or h.kind == kind][:MRR_DEPTH]
            metrics = score_ranking(paths, relevant)
            groups = ("all", q.kind) if q.kind not in ("", "all", "misses") else ("all",)
            for group in groups:
                counts[group] += 1
                for name, value in metrics.items():
                    sums[group][name] += value
            if metrics["recall@1"] < 1:
                misses.append({"id": q.id, "query": q.query, "got": paths[:3], "want": sorted(relevant)})
            if q.sections:
                # Section@1: the first result is a relevant document and cites a section that answers the query.
                first = next((h for h in answer.hits if not kind or h.kind == kind), None)
                cited = section_label(first.path, first.anchor) if first else ""
                right = float(cited in q.sections)
                for group in groups:
                    section_counts[group] += 1
                    section_sums[group] += right
                if not right and metrics["recall@1"] == 1:
                    section_misses.append({"id": q.id, "query": q.query, "got": cited, "want": sorted(q.sections)})
        if not counts:
            raise InvalidRequest(f"no query has a relevant document under {documents}/; nothing to measure.")
        results[mode] = {
            group: {"queries": counts[group], **{n: round(v / counts[group], 4) for n, v in sums[group].items()}}
            for group in counts
        }
        for group, n in section_counts.items():
            results[mode][group].update({"sectioned": n, "section@1": round(section_sums[group] / n, 4)})
        results[mode]["misses"] = misses
        results[mode]["section_misses"] = section_misses
        results[mode]["skipped"] = skipped
    return results


def run_eval(
    knowledge: Path,
    queries_path: Path,
    modes: list[str],
    encoder: Encoder,
    ranking: Ranking | None = None,
    documents: str = "all",
) -> tuple[dict, IndexReport]:
    """Index ``knowledge`` into a temporary database and evaluate the query file against it."""
    for mode in modes:
        if mode not in MODES:
            raise InvalidRequest(f"unknown mode {mode!r}; use hybrid, dense, bm25 or all.")
    _check_documents(documents)
    queries = load_queries(queries_path)
    with tempfile.TemporaryDirectory(prefix="opsbot-eval-") as tmp:
        store = Store(Path(tmp) / "eval.db")
        try:
            report = index_knowledge(store, encoder, knowledge)
            index = SearchIndex(store, encoder, ranking)
            return evaluate(index, queries, modes, documents), report
        finally:
            store.close()


@dataclass(frozen=True)
class ExpertQuery:
    id: str
    text: str
    relevant: frozenset[str]
    services: tuple[str, ...] = ()


def rank_metrics(rankings: list[tuple[list[str], frozenset[str]]]) -> dict[str, float]:
    """Top-1 and top-3 hit rates and MRR of ranked roster ids against the relevant ones."""
    n = max(len(rankings), 1)
    top1 = sum(bool(r) and r[0] in rel for r, rel in rankings)
    top3 = sum(any(x in rel for x in r[:3]) for r, rel in rankings)
    mrr = sum(next((1 / (i + 1) for i, x in enumerate(r) if x in rel), 0.0) for r, rel in rankings)
    return {"queries": len(rankings), "top1": round(top1 / n, 4), "top3": round(top3 / n, 4), "mrr": round(mrr / n, 4)}


def load_expert_queries(path: Path) -> list[ExpertQuery]:
    """JSON lines: {"id", "query", "relevant": [roster ids], "services"?: [...]}."""
    queries = load_queries(path)  # validates every line
    services = {
        str(data.get("id", n)): tuple(data.get("services") or [])
        for n, data in enumerate(
            (json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()), start=1
        )
    }
    return [ExpertQuery(q.id, q.query, q.relevant, services.get(q.id, ())) for q in queries]


def time_split_queries(incidents: list, train_share: float, relevant: str) -> tuple[list, list[ExpertQuery]]:
    """Train on the older incidents; ask with the newer ones' title and summary (what is known when one starts)."""
    ordered = sorted(incidents, key=lambda i: (i.date, i.id))
    cut = max(1, int(len(ordered) * train_share))
    train, test = ordered[:cut], ordered[cut:]
    queries = [
        ExpertQuery(i.id, f"{i.title}. {i.summary}", frozenset(i.responders if relevant == "all" else i.responders[:1]))
        for i in test
    ]
    return train, queries


def evaluate_experts(
    knowledge: Path,
    encoder: Encoder,
    queries_path: Path | None = None,
    train_share: float = 0.7,
    relevant: str = "all",
    with_services: bool = False,
) -> dict:
    """The learned ranking against two baselines: service ownership only, and the most frequent responders."""
    from collections import Counter

    from bot.experts import train as train_experts
    from bot.knowledge import load_knowledge
    from bot.text import normalize_query

    kb = load_knowledge(knowledge)
    if not kb.experts:
        raise InvalidRequest(f"{knowledge}/experts.yaml has no people; the expert evaluation needs a roster.")
    if queries_path is not None:
        train, queries = kb.incidents, load_expert_queries(queries_path)
        split = f"all {len(train)} incidents; queries from {queries_path.name}"
    else:
        if len(kb.incidents) < 4:
            raise InvalidRequest("a time split needs at least 4 incidents in the knowledge directory.")
        train, queries = time_split_queries(kb.incidents, train_share, relevant)
        split = f"time split: trained on the older {len(train)}, tested on the newer {len(queries)}"
    owners = {name: list(cfg.get("owners") or []) for name, cfg in kb.services.items()}
    if hasattr(encoder, "load"):
        encoder.load()  # so the training time below is training, not loading the model
    model = train_experts(kb.experts, train, encoder, owners)
    order = [e.id for e in kb.experts]
    frequent = [p for p, _ in Counter(p for i in train for p in i.responders).most_common()]
    frequent += [p for p in order if p not in frequent]
    by_id = {i.id: i for i in kb.incidents}
    learned, ownership, most_frequent = [], [], []
    for q in queries:
        services = list(q.services) or (list(by_id[q.id].services) if with_services and q.id in by_id else [])
        vector = encoder.encode([normalize_query(q.text)])[0]
        learned.append(([s.expert.id for s in model.rank(q.text, vector, services or None)], q.relevant))
        involved = set(services) | set(model.services_in(q.text))
        owned = sorted({p for s in involved for p in model.owners_of(s)}, key=order.index)
        ownership.append((owned, q.relevant))
        most_frequent.append((frequent, q.relevant))
    return {
        "split": split,
        "relevant": relevant,
        "with_services": with_services,
        "train_seconds": round(model.train_seconds, 3),
        "learned": rank_metrics(learned),
        "ownership": rank_metrics(ownership),
        "most_frequent": rank_metrics(most_frequent),
    }
