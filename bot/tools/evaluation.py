"""Retrieval quality: Recall@1/3/5 and MRR@10 over a query file, per mode and per query kind.

In hybrid mode it also measures what a person is shown: the answer after the relevance rule that Slack,
the shell and ``opsbot ask`` apply (``replies.relevant_hits``), runbooks first as the reply lists them.
"""

from __future__ import annotations

import json
import tempfile
from collections import defaultdict
from dataclasses import dataclass, replace
from pathlib import Path

from bot.answers.encoder import Encoder
from bot.answers.indexer import IndexReport, index_knowledge
from bot.answers.keywords import Ranking
from bot.answers.replies import relevant_hits
from bot.answers.search import MODES, SearchIndex
from bot.config import Settings
from bot.errors import InvalidRequest
from bot.models import Answer
from bot.store import Store
from bot.store.base import DatabaseUnavailable, database_purpose
from bot.text import anchor_key

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


def read_query_file(path: Path) -> str:
    """The text of a JSON-lines query file, or an InvalidRequest saying why it cannot be read."""
    if path.is_dir():
        raise InvalidRequest(f"query file {str(path)!r} is a folder; give the JSON-lines file in it.")
    if not path.is_file():
        raise InvalidRequest(f"query file {str(path)!r} does not exist.")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidRequest(
            f"query file {str(path)!r} is not UTF-8 text (byte {exc.start}); save it as UTF-8."
        ) from None
    except OSError as exc:
        raise InvalidRequest(f"query file {str(path)!r} cannot be read ({exc.strerror}).") from None


EVAL_PURPOSE = "purpose"  # meta key: "eval" in a database `opsbot eval --index-db` made, never in a bot's


def load_queries(path: Path) -> list[EvalQuery]:
    """Read a JSON-lines query file; a bad line is reported with its number."""
    queries: list[EvalQuery] = []
    for number, line in enumerate(read_query_file(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InvalidRequest(f"{path}:{number}: not valid JSON ({exc.msg}).") from None
        if not isinstance(data, dict) or not isinstance(data.get("query"), str) or not data.get("relevant"):
            raise InvalidRequest(f'{path}:{number}: each line needs "query" (text) and "relevant" (a list of paths).')
        if not data["query"].strip():
            raise InvalidRequest(f'{path}:{number}: "query" is empty; write the question the line measures.')
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


def section_key(label: str) -> str:
    """A "path#anchor" as compared with another: its anchor by ``anchor_key`` (GitLab's and GitHub's alike)."""
    path, _, anchor = label.partition("#")
    return f"{path}#{anchor_key(anchor)}"


def score_ranking(paths: list[str], relevant: frozenset[str]) -> dict[str, float]:
    """Metrics for one query given the ranked document paths."""
    first = next((i for i, p in enumerate(paths[:MRR_DEPTH]) if p in relevant), None)
    metrics = {f"recall@{c}": float(first is not None and first < c) for c in CUTOFFS}
    metrics[f"mrr@{MRR_DEPTH}"] = 0.0 if first is None else 1.0 / (first + 1)
    return metrics


def _check_documents(documents: str) -> None:
    if documents not in DOCUMENT_KINDS:
        raise InvalidRequest(f"unknown documents {documents!r}; use {', '.join(DOCUMENT_KINDS)}.")


def shown_paths(answer: Answer, settings: Settings, kind: str = "") -> list[str]:
    """The documents a reply shows, in the order shown (runbooks, then incidents), from a search at least as
    deep as the reply's (``top_k * 2``): a deeper search only adds hits after the reply's."""
    reply = replace(answer, hits=answer.hits[: settings.top_k * 2])
    runbooks, incidents = relevant_hits(reply, settings)
    return [h.path for h in runbooks + incidents if not kind or h.kind == kind]


RESERVED = ("misses", "section_misses", "skipped", "unknown_relevant")  # keys of a mode's results beside its groups


def evaluate(
    index: SearchIndex,
    queries: list[EvalQuery],
    modes: list[str],
    documents: str = "all",
    settings: Settings | None = None,
) -> dict:
    """Run every query in every mode; returns {mode: {"all": metrics, kind: metrics}} plus misses.

    With ``settings``, hybrid mode also reports Shown@1 (the first document the reply shows is relevant)
    and Shown (a relevant document is among those shown), as the reply's relevance rule leaves them.

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
            depth = MRR_DEPTH if not kind else FILTERED_DEPTH
            if settings is not None and mode == "hybrid":  # one search serves the ranking and the reply
                depth = max(depth, settings.top_k * 2)
            answer = index.search(q.query, k=depth, mode=mode)
            paths = [h.path for h in answer.hits if not kind or h.kind == kind][:MRR_DEPTH]
            metrics = score_ranking(paths, relevant)
            if settings is not None and mode == "hybrid":
                shown = shown_paths(answer, settings, kind)
                metrics["shown@1"] = float(bool(shown) and shown[0] in relevant)
                metrics["shown"] = float(bool(relevant.intersection(shown)))
            groups = ("all", q.kind) if q.kind not in ("", "all", *RESERVED) else ("all",)
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
                right = float(section_key(cited) in {section_key(s) for s in q.sections})
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
        # A path no document has can never be found: a typo in the query file, scored as a miss, named here.
        results[mode]["unknown_relevant"] = sorted({p for q in queries for p in q.relevant} - set(index.doc_index))
    return results


def run_eval(
    knowledge: Path,
    queries_path: Path,
    modes: list[str],
    encoder: Encoder,
    ranking: Ranking | None = None,
    documents: str = "all",
    db_path: Path | None = None,
    settings: Settings | None = None,
) -> tuple[dict, IndexReport]:
    """Index ``knowledge`` into a temporary database (or ``db_path``, kept) and evaluate the query file against it."""
    for mode in modes:
        if mode not in MODES:
            raise InvalidRequest(f"unknown mode {mode!r}; use hybrid, dense, bm25 or all.")
    _check_documents(documents)
    queries = load_queries(queries_path)
    with tempfile.TemporaryDirectory(prefix="opsbot-eval-") as tmp:
        if db_path is not None and database_purpose(db_path, EVAL_PURPOSE) not in (None, "eval"):
            # Indexing the eval folder into it would replace its knowledge, roster, rotas and channel settings.
            raise InvalidRequest(
                f"--index-db {db_path} is a database `opsbot eval` did not make (your bot's, perhaps): evaluating "
                "into it would replace its index. Give the name of a new file (one made by an opsbot older than "
                "this check is refused too: delete it and run again)."
            )
        try:
            store = Store(db_path or Path(tmp) / "eval.db")
        except DatabaseUnavailable as exc:  # the user gave the path with --index-db, not OPSBOT_DB
            raise exc.naming("--index-db") from None
        try:
            store.set_meta(EVAL_PURPOSE, "eval")
            # The query file is read above, for measuring only: indexing (and the ranker's fit) never sees it.
            report = index_knowledge(store, encoder, knowledge)
            index = SearchIndex(store, encoder, ranking)
            return evaluate(index, queries, modes, documents, settings or Settings()), report
        finally:
            store.close()
