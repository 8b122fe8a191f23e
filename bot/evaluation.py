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


@dataclass(frozen=True)
class EvalQuery:
    id: str
    query: str
    relevant: frozenset[str]
    kind: str = ""


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
        relevant = data["relevant"] if isinstance(data["relevant"], list) else [data["relevant"]]
        queries.append(
            EvalQuery(
                str(data.get("id", number)), data["query"], frozenset(map(str, relevant)), str(data.get("kind", ""))
            )
        )
    if not queries:
        raise InvalidRequest(f"{path} holds no queries.")
    return queries


def score_ranking(paths: list[str], relevant: frozenset[str]) -> dict[str, float]:
    """Metrics for one query given the ranked document paths."""
    first = next((i for i, p in enumerate(paths[:MRR_DEPTH]) if p in relevant), None)
    metrics = {f"recall@{c}": float(first is not None and first < c) for c in CUTOFFS}
    metrics[f"mrr@{MRR_DEPTH}"] = 0.0 if first is None else 1.0 / (first + 1)
    return metrics


def evaluate(index: SearchIndex, queries: list[EvalQuery], modes: list[str]) -> dict:
    """Run every query in every mode; returns {mode: {"all": metrics, kind: metrics}} plus misses."""
    results: dict = {}
    for mode in modes:
        sums: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
        counts: dict[str, int] = defaultdict(int)
        misses = []
        for q in queries:
            answer = index.search(q.query, k=MRR_DEPTH, mode=mode)
            paths = [h.path for h in answer.hits]
            metrics = score_ranking(paths, q.relevant)
            for group in ("all", q.kind) if q.kind not in ("", "all", "misses") else ("all",):
                counts[group] += 1
                for name, value in metrics.items():
                    sums[group][name] += value
            if metrics["recall@1"] < 1:
                misses.append({"id": q.id, "query": q.query, "got": paths[:3], "want": sorted(q.relevant)})
        results[mode] = {
            group: {"queries": counts[group], **{n: round(v / counts[group], 4) for n, v in sums[group].items()}}
            for group in counts
        }
        results[mode]["misses"] = misses
    return results


def run_eval(
    knowledge: Path, queries_path: Path, modes: list[str], encoder: Encoder, ranking: Ranking | None = None
) -> tuple[dict, IndexReport]:
    """Index ``knowledge`` into a temporary database and evaluate the query file against it."""
    for mode in modes:
        if mode not in MODES:
            raise InvalidRequest(f"unknown mode {mode!r}; use hybrid, dense, bm25 or all.")
    queries = load_queries(queries_path)
    with tempfile.TemporaryDirectory(prefix="opsbot-eval-") as tmp:
        store = Store(Path(tmp) / "eval.db")
        try:
            report = index_knowledge(store, encoder, knowledge)
            index = SearchIndex(store, encoder, ranking)
            return evaluate(index, queries, modes), report
        finally:
            store.close()
