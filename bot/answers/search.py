"""Hybrid search: dense cosine over an in-memory matrix, fused with FTS5 BM25, grouped by document."""

from __future__ import annotations

import bisect
import math
import re
import threading
import time
from dataclasses import dataclass, field

import numpy as np
from threadpoolctl import threadpool_limits

from bot.answers.encoder import Encoder
from bot.errors import InvalidRequest
from bot.models import Answer, SearchHit
from bot.store import Store, StoredChunk
from bot.text import dense_form, keyword_terms, normalize_query, strip_volatile

MODES = ("hybrid", "dense", "bm25")
ROUTED = 1.0  # added to the fused score of a runbook that declares the alert the query names: above any fusion
FTS_TOKEN = re.compile(r"[^\W_]+")  # a word as the full-text index's tokenizer cuts it
SNIPPET_MARKUP = re.compile(r"```[\w+-]*|\*\*|__")  # code fences (with their language) and bold markers
QUERY_TOKEN = re.compile(r"[A-Za-z][A-Za-z0-9_.:-]*[A-Za-z0-9]")
# A short English stopword list: these words say nothing about which runbook is meant.
STOPWORDS = frozenset(
    """a about above after again against all am an and any are as at be because been before being below
    between both but by can could did do does doing down during each few for from further had has have
    having he her here hers herself him himself his how i if in into is it its itself just me more most
    my myself no nor not now of off on once only or other our ours ourselves out over own same she should
    so some such than that the their theirs them themselves then there these they this those through to
    too under until up very was we were what when where which while who whom why will with would you your
    yours yourself yourselves also get got may might must shall via per within without least last""".split()
)


@dataclass(frozen=True)
class Ranking:
    """Knobs of the fusion; defaults are what ``opsbot eval`` measured best overall."""

    rrf_k: float = 60.0
    section_weight: float = 1.0  # dense: best section of the document
    title_weight: float = 1.0  # dense: the document's title ...
    title_query_words: int = 10  # ... full weight for queries up to this many words, then less:
    title_floor: float = 0.25  # a title says little about a long pasted log line or alert body
    # The dense rankings count fully when the best section is this close in meaning (cosine) ...
    dense_sure: float = 0.65
    dense_unsure: float = 0.35  # ... and least (dense_floor) when nothing is closer than this (MiniLM's scale)
    dense_floor: float = 0.5
    bm25_weight: float = 1.0  # keywords: best section, title and headings weighted in
    candidates: int = 200
    max_terms: int = 16  # the rarest query words searched by keyword
    common_fraction: float = 0.1  # words in more than this share of sections are skipped ...
    common_floor: int = 200  # ... unless the index is so small that they are still rare in absolute terms
    min_section_words: int = 6  # shorter sections ("TODO", "See X") only echo the title: not section evidence
    near: int = 2  # how many words may stand between two adjacent query words for a phrase match
    whole_query_terms: tuple[int, int] = (4, 12)  # a query of this many distinct words found whole in a section,
    whole_query_docs: int = 3  # in at most this many documents (else it is a common phrase, not a quote), ...
    whole_query_weight: float = 1.0  # ... gains those documents one first place
    bm25_weights: tuple[float, float, float] = (4.0, 2.0, 1.0)  # title, heading, body
    feedback_similarity: float = 0.75  # a past vote counts for questions at least this close in meaning ...
    feedback_weight: float = 1.5  # ... and moves a document by this many first places of one ranking
    # The section cited for a document: BM25 among that document's own sections (k1, b), its heading
    # counting this many times its body, so that words every section shares (the service) count little.
    cite_bm25: tuple[float, float] = (1.2, 0.75)
    cite_heading_weight: float = 2.0


@dataclass
class Signals:
    """Per-document evidence for one query, before fusion."""

    section: np.ndarray | None  # best dense similarity of any section, per document
    title: np.ndarray | None  # dense similarity of the title, per document
    chunk_sims: np.ndarray | None  # dense similarity per chunk
    bm25: dict[int, float]  # document -> best BM25 score (higher is better), only matching documents
    bm25_chunk: dict[int, int]  # document -> position of its best BM25 chunk
    encode_ms: float = 0.0
    query_vector: np.ndarray | None = None
    query_words: int = 0
    routed: dict[int, str] = field(default_factory=dict)  # document -> the alert named in the query it answers
    whole: dict[int, int] = field(default_factory=dict)  # document -> position of a chunk holding the whole query
    stems: list[str] = field(default_factory=list)  # the query's distinct words as the full-text index stores them


class SearchIndex:
    """The searchable knowledge: vectors in memory, text in SQLite."""

    def __init__(self, store: Store, encoder: Encoder, ranking: Ranking | None = None) -> None:
        # One BLAS thread: a matrix-vector product is memory-bound, and OpenBLAS's idle threads keep
        # spinning after it, stealing the cores the next query's encoder needs (measured: encode 11 ms -> 97 ms).
        threadpool_limits(1, user_api="blas")
        self.store = store
        self.encoder = encoder
        self.ranking = ranking or Ranking()
        self._lock = threading.Lock()
        self.chunk_ids = np.zeros(0, dtype=np.int64)
        self.doc_paths: list[str] = []
        self.doc_starts = np.zeros(0, dtype=np.int64)
        self.chunk_doc = np.zeros(0, dtype=np.int64)
        self.stub = np.zeros(0, dtype=bool)
        self.words = np.zeros(0, dtype=np.int32)
        self.matrix = np.zeros((0, 0), dtype=np.float32)
        self.titles = np.zeros((0, 0), dtype=np.float32)
        self._id_order = np.zeros(0, dtype=np.int64)
        self.term_counts: dict[str, int] = {}
        self.doc_index: dict[str, int] = {}
        self.alert_routes: dict[str, list[int]] = {}
        self.feedback = np.zeros((0, 0), dtype=np.float32)
        self.feedback_paths: list[str] = []
        self.feedback_votes = np.zeros(0, dtype=np.float32)
        self.refresh()

    def reload_feedback(self) -> None:
        """Pick up new votes without reloading the vectors."""
        feedback, paths, votes = self.store.feedback_vectors()
        with self._lock:
            self.feedback, self.feedback_paths, self.feedback_votes = feedback, paths, votes

    def embed_query(self, query: str) -> np.ndarray:
        """The vector a query is searched with (what feedback is keyed by)."""
        return self.encoder.encode([normalize_query(query)])[0]

    def refresh(self) -> None:
        """Reload the vectors after the index changed."""
        ids, paths, matrix, words = self.store.load_vectors(self.encoder.model_id)
        starts: list[int] = []
        doc_paths: list[str] = []
        for i, path in enumerate(paths):
            if not doc_paths or doc_paths[-1] != path:
                doc_paths.append(path)
                starts.append(i)
        counts = np.diff(np.append(np.asarray(starts, dtype=np.int64), len(paths)))
        chunk_doc = np.repeat(np.arange(len(starts), dtype=np.int64), counts)
        titles = self.store.load_title_vectors(self.encoder.model_id, doc_paths)
        term_counts = self.store.term_chunk_counts()
        doc_index = {p: i for i, p in enumerate(doc_paths)}
        routes = {
            name: [doc_index[p] for p in paths if p in doc_index] for name, paths in self.store.alert_routes().items()
        }
        feedback, feedback_paths, feedback_votes = self.store.feedback_vectors()
        with self._lock:
            self.term_counts = term_counts
            self.doc_index = doc_index
            self.alert_routes = {name: docs for name, docs in routes.items() if docs}
            self.feedback, self.feedback_paths, self.feedback_votes = feedback, feedback_paths, feedback_votes
            self.chunk_ids, self.matrix, self.doc_paths, self.titles = ids, matrix, doc_paths, titles
            self.doc_starts = np.asarray(starts, dtype=np.int64)
            self.chunk_doc = chunk_doc
            self.stub = words < self.ranking.min_section_words
            self.words = words
            self._id_order = np.argsort(ids)

    @property
    def size(self) -> int:
        return len(self.chunk_ids)

    def memory_bytes(self) -> int:
        arrays = (
            self.matrix,
            self.titles,
            self.chunk_ids,
            self.chunk_doc,
            self._id_order,
            self.doc_starts,
            self.stub,
            self.words,
        )
        return int(sum(a.nbytes for a in arrays))

    def signals(self, query: str, mode: str = "hybrid") -> tuple[str, Signals]:
        """Compute the dense and keyword evidence for ``query``."""
        stripped = strip_volatile(query) or query.strip()
        dense_text = dense_form(stripped)
        sig = Signals(None, None, None, {}, {}, query_words=len(dense_text.split()))
        sig.routed = self.routes_for(query)
        if mode != "bm25" and self.size:
            started = time.perf_counter()
            qv = self.encoder.encode([dense_text])[0]
            sig.encode_ms = (time.perf_counter() - started) * 1000
            sig.query_vector = qv
            sig.chunk_sims = self.matrix @ qv
            sig.section = self._section_scores(sig.chunk_sims)
            if self.titles.shape[1] == len(qv):
                sig.title = self.titles @ qv
        if mode != "dense":
            words = keyword_terms(stripped, STOPWORDS)
            stems = self.store.stems(words)
            sig.stems = [t for t in dict.fromkeys(stems) if t]
            for chunk_id, rank in self._keyword_chunks(words, stems):
                pos = _position(self.chunk_ids, self._id_order, chunk_id)
                if pos is None:
                    continue
                d = int(self.chunk_doc[pos])
                if d not in sig.bm25:
                    sig.bm25[d] = -rank
                    sig.bm25_chunk[d] = pos
        if mode == "hybrid":
            for chunk_id, _ in self._whole_query_chunks(stripped):
                pos = _position(self.chunk_ids, self._id_order, chunk_id)
                if pos is not None:
                    sig.whole.setdefault(int(self.chunk_doc[pos]), pos)
            if len(sig.whole) > self.ranking.whole_query_docs:
                sig.whole = {}
        return dense_text, sig

    def routes_for(self, query: str) -> dict[int, str]:
        """Runbooks that declare they answer an alert the query names, with that alert's name as written."""
        routed: dict[int, str] = {}
        if self.alert_routes:
            for token in QUERY_TOKEN.findall(query):
                for d in self.alert_routes.get(token.lower(), ()):
                    routed.setdefault(d, token)
        return routed

    def _section_scores(self, chunk_sims: np.ndarray) -> np.ndarray:
        """Per document, its best section's similarity, not counting stub sections.

        A section of a few words ("TODO", "See the disk runbook") embeds as little more than
        its title, which already has a ranking of its own. A document made only of stubs keeps them.
        """
        best = np.maximum.reduceat(np.where(self.stub, -2.0, chunk_sims), self.doc_starts)
        if (best <= -2.0).any():
            best = np.where(best <= -2.0, np.maximum.reduceat(chunk_sims, self.doc_starts), best)
        return best

    def fuse(self, sig: Signals, mode: str) -> dict[int, float]:
        """Reciprocal-rank fusion of the available evidence into one score per document."""
        r = self.ranking
        scores: dict[int, float] = {}
        lists: list[tuple[float, list[int]]] = []
        if mode == "dense" and sig.section is not None:
            return {int(d): float(sig.section[d]) for d in _top(sig.section, r.candidates)}
        if mode == "bm25":
            return dict(sig.bm25)
        dense = self.dense_share(sig)
        if sig.section is not None:
            lists.append((r.section_weight * dense, list(_top(sig.section, r.candidates))))
        if sig.title is not None:
            title = r.title_weight * self.title_share(sig.query_words) * dense
            lists.append((title, list(_top(sig.title, r.candidates))))
        lists.append((r.bm25_weight, sorted(sig.bm25, key=lambda d: -sig.bm25[d])))
        for weight, ranked in lists:
            for rank, d in enumerate(ranked):
                scores[int(d)] = scores.get(int(d), 0.0) + weight / (r.rrf_k + rank + 1)
        for d in sig.whole:  # the query's words stand together in the document, as in a quoted alert summary
            scores[d] = scores.get(d, 0.0) + r.whole_query_weight / (r.rrf_k + 1)
        self._apply_feedback(sig, scores)
        for d in sig.routed:  # the runbook written for the alert comes first, whatever the wording
            scores[d] = scores.get(d, 0.0) + ROUTED
        return scores

    def title_share(self, query_words: int) -> float:
        """How much the title ranking counts: fully for a short query, less as the query grows.

        A title is a few words. Against an alert name or a one-line summary it is strong evidence;
        against a forty-word log excerpt it mostly measures which title shares the excerpt's topic words.
        """
        r = self.ranking
        if query_words <= r.title_query_words:
            return 1.0
        return max(r.title_floor, r.title_query_words / query_words)

    def dense_share(self, sig: Signals) -> float:
        """How much the two dense rankings count: fully when some section is close in meaning, less when none is.

        When even the best section is far from the query (a log line in an unfamiliar format, an
        alert about something the runbooks only mention), the order of the dense rankings is mostly
        noise, and the keywords should decide more.
        """
        r = self.ranking
        if sig.section is None or not len(sig.section):
            return 1.0
        best = float(np.max(sig.section))
        return min(1.0, max(r.dense_floor, (best - r.dense_unsure) / (r.dense_sure - r.dense_unsure)))

    def _apply_feedback(self, sig: Signals, scores: dict[int, float]) -> None:
        """Votes on answers to the same or a similar question move the voted documents up or down."""
        if sig.query_vector is None or not len(self.feedback_votes) or self.feedback.shape[1] != len(sig.query_vector):
            return
        r = self.ranking
        sims = self.feedback @ sig.query_vector
        for i in np.flatnonzero(sims >= r.feedback_similarity):
            d = self.doc_index.get(self.feedback_paths[i])
            if d is not None:
                closeness = float(sims[i])
                scores[d] = scores.get(d, 0.0) + self.feedback_votes[i] * closeness * r.feedback_weight / (r.rrf_k + 1)

    def search(self, query: str, k: int = 5, mode: str = "hybrid", linked: str = "", anchor: str = "") -> Answer:
        """Answer ``query`` with the ``k`` best documents, each with its best section.

        ``linked`` is the path of a runbook the question links to (an alert's runbook_url): it comes first, citing
        the section ``anchor`` names when it has one, else its best section for the query.
        """
        if mode not in MODES:
            raise InvalidRequest(f"unknown search mode {mode!r}; use one of {', '.join(MODES)}.")
        if not query or not query.strip():
            raise InvalidRequest("the question is empty; type what you are looking for, or paste the alert.")
        started = time.perf_counter()
        with self._lock:
            normalized, sig = self.signals(query, mode)
            scores = self.fuse(sig, mode)
            first = self.doc_index.get(linked, -1) if linked else -1
            if first >= 0:
                scores[first] = max(scores.values(), default=0.0) + ROUTED
            ordered = sorted(scores, key=lambda d: -scores[d])[:k]
            stems = sig.stems if mode == "hybrid" and sig.chunk_sims is not None else []
            # One count of the query's words over the sections of every document shown.
            cite = [p for d in ordered if d not in sig.whole for p in self._own_sections(d)] if stems else []
            counts = self.store.term_counts_in([int(self.chunk_ids[p]) for p in cite], stems)
            best = {d: self._best_chunk(d, sig, stems, counts) for d in ordered}
            if first >= 0 and anchor:
                chunk_id = self.store.chunk_with_anchor(linked, anchor)
                pos = _position(self.chunk_ids, self._id_order, chunk_id) if chunk_id is not None else None
                if pos is not None:
                    best[first] = pos
            wanted = {d: int(self.chunk_ids[pos]) for d, pos in best.items()}
        details = self.store.chunks_by_id(wanted.values())
        # How close in meaning the document is: its best section's, whichever section is cited.
        sims = {d: float(sig.section[d]) if sig.section is not None else 0.0 for d in ordered}
        routed = sig.routed if mode == "hybrid" else {}
        hits = tuple(
            _hit(details[wanted[d]], scores[d], normalized, sims[d], routed.get(d, ""), d in sig.whole, d == first)
            for d in ordered
            if wanted[d] in details
        )
        search_ms = (time.perf_counter() - started) * 1000 - sig.encode_ms
        return Answer(query, normalized, hits, mode, sig.encode_ms, search_ms, sig.query_vector)

    def _own_sections(self, d: int) -> list[int]:
        """Positions of a document's sections that may be cited: not stubs, unless it has only stubs."""
        start = int(self.doc_starts[d])
        end = int(self.doc_starts[d + 1]) if d + 1 < len(self.doc_starts) else self.size
        return [p for p in range(start, end) if not self.stub[p]] or list(range(start, end))

    def _best_chunk(
        self, d: int, sig: Signals, stems: list[str], counts: dict[int, dict[str, tuple[int, int]]] | None = None
    ) -> int:
        """The section to cite: the one holding the whole query, else the best by the query's words
        among the document's own sections (hybrid), else the closest in meaning, else keywords' best."""
        if d in sig.whole:
            return sig.whole[d]
        if sig.chunk_sims is None:
            return sig.bm25_chunk[d]
        own = self._own_sections(d)
        closeness = {p: float(sig.chunk_sims[p]) for p in own}
        if stems and len(own) > 1:
            local = self._local_keyword_scores(own, stems, counts)
            best = max(own, key=lambda p: (local[p], closeness[p]))
            if local[best] > 0:
                return best
        return max(own, key=closeness.__getitem__)

    def _local_keyword_scores(
        self, positions: list[int], stems: list[str], counts: dict[int, dict[str, tuple[int, int]]] | None = None
    ) -> dict[int, float]:
        """BM25 of the query's words over one document's sections, with document frequencies counted
        among those sections only.

        Which document to show is decided by the whole index; which of its sections to cite is a
        choice among its own sections. Words that stand in all of them (the service, the product)
        say little about that choice, while a word only one section has ("replay", "verify") says much.
        A section's heading counts more than its body. Measured on the Larder how-to questions, the
        closest section in meaning was often a summary (the escalation list, the introduction) that
        mentions everything the runbook is about. ``counts`` are the term counts when the caller
        has them already (see ``KnowledgeStore.term_counts_in``).
        """
        ids = [int(self.chunk_ids[p]) for p in positions]
        counts = self.store.term_counts_in(ids, stems) if counts is None else counts
        k1, b = self.ranking.cite_bm25
        n = len(ids)
        lengths = [max(int(self.words[p]), 1) for p in positions]
        average = sum(lengths) / n
        frequency = {t: sum(1 for i in ids if t in counts.get(i, {})) for t in stems}
        scores: dict[int, float] = {}
        for p, chunk_id, length in zip(positions, ids, lengths, strict=True):
            score = 0.0
            for term, (heading, body) in counts.get(chunk_id, {}).items():
                tf = body + self.ranking.cite_heading_weight * heading
                idf = math.log(1 + (n - frequency[term] + 0.5) / (frequency[term] + 0.5))
                score += idf * tf * (k1 + 1) / (tf + k1 * (1 - b + b * length / average))
            scores[p] = score
        return scores

    def _keyword_chunks(self, words: list[str], stems: list[str]) -> list[tuple[int, float]]:
        terms = self.select_terms(words, stems)
        if not terms:
            return []
        # Adjacent query words that also stand close together in a section count again:
        # "target discovery" is stronger evidence than "target" and "discovery" apart.
        kept = set(terms)
        pairs = [
            f'NEAR("{a}" "{b}", {self.ranking.near})'
            for a, b in zip(words, words[1:], strict=False)
            if a in kept and b in kept
        ]
        match = " OR ".join([f'"{t}"' for t in terms] + pairs)
        return self.store.fts_search(match, self.ranking.candidates, self.ranking.bm25_weights)

    def _whole_query_chunks(self, stripped: str) -> list[tuple[int, float]]:
        """Chunks holding every distinct word of a short query within the query's own span, in any order.

        A one-line alert summary is often a sentence of the runbook written for it; finding all of
        its words together is stronger evidence than finding them apart. Stopwords may differ, so
        the window is as long as the query's span in words, and the order is free.
        """
        tokens = [t.lower() for t in FTS_TOKEN.findall(stripped)]
        content = [i for i, t in enumerate(tokens) if t not in STOPWORDS and len(t) > 1 and not t.isdigit()]
        terms = list(dict.fromkeys(tokens[i] for i in content))
        low, high = self.ranking.whole_query_terms
        if not low <= len(terms) <= high:
            return []
        span = content[-1] - content[0] + 1
        match = "NEAR(" + " ".join(f'"{t}"' for t in terms) + f", {span})"
        return self.store.fts_search(match, self.ranking.candidates, self.ranking.bm25_weights)

    def select_terms(self, terms: list[str], stems: list[str] | None = None) -> list[str]:
        """The query words worth a full-text lookup, in query order.

        Words found nowhere cannot match; words found in most sections say little and cost
        the most to score. The rarest ``max_terms`` words are kept. ``stems`` are the words' stems
        when the caller has them already.
        """
        if not terms:
            return []
        stems = self.store.stems(terms) if stems is None else stems
        counts = {t: self.term_counts.get(stem, 0) for t, stem in zip(terms, stems, strict=True)}
        present = [t for t in terms if counts[t] > 0]
        limit = max(self.ranking.common_fraction * max(self.size, 1), self.ranking.common_floor)
        selective = [t for t in present if counts[t] <= limit]
        if len(selective) < 2:
            selective = sorted(present, key=lambda t: counts[t])[:2]
        keep = set(sorted(selective, key=lambda t: counts[t])[: self.ranking.max_terms])
        return [t for t in present if t in keep]


def _top(scores: np.ndarray, n: int) -> np.ndarray:
    if len(scores) > n:
        part = np.argpartition(-scores, n)[:n]
        return part[np.argsort(-scores[part])]
    return np.argsort(-scores)


def _position(ids: np.ndarray, order: np.ndarray, chunk_id: int) -> int | None:
    i = np.searchsorted(ids, chunk_id, sorter=order)
    if i < len(order) and ids[order[i]] == chunk_id:
        return int(order[i])
    return None


def _hit(
    chunk: StoredChunk,
    score: float,
    query: str,
    similarity: float,
    alert: str = "",
    quoted: bool = False,
    linked: bool = False,
) -> SearchHit:
    return SearchHit(
        path=chunk.doc_path,
        kind=chunk.kind,
        title=chunk.title,
        section=chunk.heading,
        snippet=make_snippet(chunk.text, query),
        score=round(float(score), 6),
        url=chunk.url,
        incident_id=chunk.incident_id,
        anchor=chunk.anchor,
        services=chunk.services,
        similarity=round(similarity, 4),
        alert=alert,
        quoted=quoted,
        linked=linked,
    )


def make_snippet(text: str, query: str, width: int = 240) -> str:
    """A short window of ``text`` where the most query words stand together (the earliest such place).

    Code fences and bold markers are dropped: cut out of their block, a fence would turn the rest
    of a Slack message into code, and the excerpt is read as plain text on the command line too.
    """
    plain = SNIPPET_MARKUP.sub(lambda m: " " if m.group().startswith("`") else "", text)
    flat = re.sub(r"\s+", " ", plain).strip()
    if len(flat) <= width:
        return flat
    lower = flat.lower()
    terms = [t for t in keyword_terms(query, STOPWORDS) if len(t) > 3]
    found = sorted((m.start(), t) for t in terms for m in re.finditer(re.escape(t), lower))
    best, first = 0, None
    reach = width * 3 // 4  # the window starts a little before the first word it shows
    for i, (position, _) in enumerate(found):
        end = bisect.bisect_left(found, (position + reach, ""), i)
        covered = len({t for _, t in found[i:end]})
        if covered > best:
            best, first = covered, position
    start = max(0, first - width // 4) if first is not None else 0
    start = flat.rfind(" ", 0, start) + 1 if start else 0
    piece = flat[start : start + width].rsplit(" ", 1)[0]
    return ("…" if start else "") + piece + "…"
