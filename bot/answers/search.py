"""Hybrid search: dense cosine over an in-memory matrix and FTS5 BM25, ranked per document by a learned model.

The model is fitted on the corpus itself at index time (``training.py``) over the features of
``ranker.py``; before one is fitted (or for a corpus too small to fit on), the three rankings
are fused by reciprocal rank.
"""

from __future__ import annotations

import string
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from threadpoolctl import threadpool_limits

from bot.answers.citing import local_keyword_scores, make_hit
from bot.answers.dense import document_scores, section_scores
from bot.answers.encoder import Encoder
from bot.answers.keywords import Ranking, keyword_match, select_terms, whole_query_match
from bot.answers.ranker import CorpusStats, RankerModel, Signals, candidates, features, fuse, moved_by_votes, top
from bot.errors import InvalidRequest
from bot.models import Answer
from bot.store import Store
from bot.text import QUERY_TOKEN, STOPWORDS, dense_form, keyword_terms, normalize_query, strip_volatile

MODES = ("hybrid", "dense", "bm25")
MATCHED = 20  # keyword candidates whose best chunk is checked for the query's words (50: no better, slower)
QUOTE_TERMS = 4  # fewer words found together are a phrase, not a quoted sentence
NEAR_FORM_LENGTH = 5  # a stem this long or longer is cited with the forms a letter apart (shorter: port, portal)
STEM_CACHE = 100_000  # words whose stem is remembered (a few MB)


class SearchIndex:
    """The searchable knowledge: vectors in memory, text in SQLite, and the fitted ranker."""

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
        self.doc_norms = np.zeros(0, dtype=np.float32)  # per document, the length of the sum of its sections' vectors
        self._id_order = np.zeros(0, dtype=np.int64)
        self.doc_index: dict[str, int] = {}
        self.alert_routes: dict[str, list[int]] = {}
        self.declared: dict[int, frozenset[str]] = {}  # document -> alert names as its runbook spells them
        self.labels: list[dict[str, int]] = []  # document -> stems of the services and tags in each section's body
        self.stats = CorpusStats(0, {}, [])
        self.model: RankerModel | None = None
        self.feedback = np.zeros((0, 0), dtype=np.float32)
        self.feedback_paths: list[str] = []
        self.feedback_votes = np.zeros(0, dtype=np.float32)
        self._worker: ThreadPoolExecutor | None = None
        self._stems: dict[str, str] = {}
        self.refresh()

    def reload_feedback(self) -> None:
        """Pick up new votes without reloading the vectors."""
        feedback, paths, votes = self.store.feedback_vectors(self.encoder.model_id)
        with self._lock:
            self.feedback, self.feedback_paths, self.feedback_votes = feedback, paths, votes

    def embed_query(self, query: str) -> np.ndarray:
        """The vector a query is searched with."""
        return self.encoder.encode([normalize_query(query)])[0]

    def refresh(self) -> None:
        """Reload the vectors and the ranker after the index changed."""
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
        doc_norms = (
            np.linalg.norm(np.add.reduceat(matrix, starts, axis=0), axis=1) if starts else np.zeros(0, dtype=np.float32)
        )
        stats = CorpusStats(len(ids), self.store.term_chunk_counts(), *self.store.title_words(doc_paths))
        doc_index = {p: i for i, p in enumerate(doc_paths)}
        routes = {
            name: [doc_index[p] for p in paths if p in doc_index] for name, paths in self.store.alert_routes().items()
        }
        declared = {
            doc_index[p]: frozenset(names) for p, names in self.store.declared_alerts().items() if p in doc_index
        }
        labels = self.store.label_terms(doc_paths)
        model = self._stored_model()
        feedback, feedback_paths, feedback_votes = self.store.feedback_vectors(self.encoder.model_id)
        with self._lock:
            self.feedback, self.feedback_paths, self.feedback_votes = feedback, feedback_paths, feedback_votes
            self.stats = stats
            self.doc_index = doc_index
            self.alert_routes = {name: docs for name, docs in routes.items() if docs}
            self.declared = declared
            self.labels = labels
            self.chunk_ids, self.matrix, self.doc_paths, self.titles = ids, matrix, doc_paths, titles
            self.doc_starts = np.asarray(starts, dtype=np.int64)
            self.doc_norms = doc_norms
            self.chunk_doc = chunk_doc
            self.stub = words < self.ranking.min_section_words
            self.words = words
            self._id_order = np.argsort(ids)
            self.model = model

    def _stored_model(self) -> RankerModel | None:
        stored = self.store.load_ranker(self.encoder.model_id)
        return RankerModel.from_dict(stored[1]) if stored else None

    def use_model(self, model: RankerModel | None) -> None:
        """Rank with ``model`` from now on (a refit after votes)."""
        with self._lock:
            self.model = model

    @property
    def size(self) -> int:
        return len(self.chunk_ids)

    def memory_bytes(self) -> int:
        arrays = (
            self.matrix,
            self.titles,
            self.doc_norms,
            self.chunk_ids,
            self.chunk_doc,
            self._id_order,
            self.doc_starts,
            self.stub,
            self.words,
        )
        return int(sum(a.nbytes for a in arrays))

    def signals(
        self,
        query: str,
        mode: str = "hybrid",
        vector: np.ndarray | None = None,
        hidden: frozenset[int] = frozenset(),
        found: dict | None = None,
    ) -> tuple[str, Signals]:
        """Compute the dense and keyword evidence for ``query`` (``vector``: its embedding, when known).

        ``hidden`` chunk positions count as absent: a training query made from a section is searched
        without that section, as a real question is rarely worded as any one sentence of its runbook.
        ``found``, when given, keeps what the full-text index returned for the query, for the next search
        of the same query with other sections hidden (the ranker's fit searches each query twice).
        """
        stripped = strip_volatile(query) or query.strip()
        dense_text = dense_form(stripped)
        sig = Signals(None, None, None, {}, {})
        sig.routed = self.routes_for(query)
        dense = None
        if mode != "bm25" and self.size:
            started = time.perf_counter()
            qv = self.encoder.encode([dense_text])[0] if vector is None else vector
            sig.encode_ms = (time.perf_counter() - started) * 1000
            sig.query_vector = qv
            # The matrix product and the full-text queries each take a core: both release the GIL.
            dense = self._dense_worker().submit(self._dense, sig, qv, hidden)
        if mode != "dense":
            self._keywords(sig, stripped, mode, hidden, {} if found is None else found)
        if dense is not None:
            dense.result()
        return dense_text, sig

    def _dense_worker(self) -> ThreadPoolExecutor:
        if self._worker is None:
            self._worker = ThreadPoolExecutor(1, thread_name_prefix="opsbot-dense")
        return self._worker

    def _dense(self, sig: Signals, qv: np.ndarray, hidden: frozenset[int]) -> None:
        """Cosine of the query with every chunk and every title; per document, its best section."""
        sims = self.matrix @ qv
        if len(self.doc_starts):
            sig.document = document_scores(sims, self.doc_starts, self.doc_norms, self.matrix, self.chunk_doc, hidden)
        if hidden:
            sims[list(hidden)] = -1.0
        sig.chunk_sims = sims
        sig.section = section_scores(sims, self.stub, self.doc_starts)
        if self.titles.shape[1] == len(qv):
            sig.title = self.titles @ qv

    def _keywords(self, sig: Signals, stripped: str, mode: str, hidden: frozenset[int], found: dict) -> None:
        """BM25 per document (its best chunk), and in hybrid mode the query words each candidate holds."""
        words = keyword_terms(stripped, STOPWORDS)
        stems = self.stems(words)
        sig.stems = [t for t in dict.fromkeys(stems) if t]
        if "chunks" not in found:
            found["chunks"] = self._keyword_chunks(words, stems)
        chunks = found["chunks"]
        for pos, (_, rank) in zip(self._positions([c for c, _ in chunks]), chunks, strict=True):
            if pos < 0 or pos in hidden:
                continue
            d = int(self.chunk_doc[pos])
            if d not in sig.bm25:
                sig.bm25[d] = -rank
                sig.bm25_chunk[d] = pos
        if mode == "hybrid":
            self._match_terms(sig, found)
            if "whole" not in found:
                found["whole"] = self._whole_query_chunks(stripped)
            for pos in self._positions([c for c, _ in found["whole"]]):
                if pos >= 0 and pos not in hidden:
                    sig.whole.setdefault(int(self.chunk_doc[pos]), pos)

    def stems(self, words: list[str]) -> list[str]:
        """The words' stems as the full-text index stores them; asked of SQLite once per word, then remembered."""
        known = self._stems  # a ranker refit in the background searches too: read each word once, here
        found = {w: stem for w in dict.fromkeys(words) if (stem := known.get(w)) is not None}
        missing = [w for w in dict.fromkeys(words) if w not in found]
        if missing:
            fetched = dict(zip(missing, self.store.stems(missing), strict=True))
            if len(known) > STEM_CACHE:  # a bound on memory, not a policy: the next questions refill it
                known.clear()
            known.update(fetched)
            found.update(fetched)
        return [found[w] for w in words]

    def _positions(self, chunk_ids: list[int]) -> list[int]:
        """Each chunk id's position in the matrix, -1 for an id not loaded (indexed after the last refresh)."""
        if not chunk_ids or not len(self._id_order):
            return [-1] * len(chunk_ids)
        ids = np.asarray(chunk_ids, dtype=np.int64)
        at = np.minimum(np.searchsorted(self.chunk_ids, ids, sorter=self._id_order), len(self._id_order) - 1)
        pos = self._id_order[at]
        return np.where(self.chunk_ids[pos] == ids, pos, -1).tolist()

    def _match_terms(self, sig: Signals, found: dict) -> None:
        """Which of the query's words each keyword candidate's best chunk holds (how much of the query it covers).

        ``found`` keeps the chunks counted for the query already: {chunk id: the stems it holds}.
        """
        best = sorted(sig.bm25, key=lambda d: -sig.bm25[d])[:MATCHED]
        ids = {d: int(self.chunk_ids[sig.bm25_chunk[d]]) for d in best}
        held = found.setdefault("held", {})
        missing = [i for i in ids.values() if i not in held]
        counts = self.store.term_counts_in(missing, sig.stems)
        held.update({i: frozenset(counts.get(i, {})) for i in missing})
        sig.matched = {d: held[i] for d, i in ids.items()}

    def section_positions(self, doc: int) -> dict[str, list[int]]:
        """A document's chunk positions by section heading (a long section has several windows)."""
        start = int(self.doc_starts[doc])
        end = int(self.doc_starts[doc + 1]) if doc + 1 < len(self.doc_starts) else self.size
        headings = self.store.chunk_headings([int(i) for i in self.chunk_ids[start:end]])
        found: dict[str, list[int]] = {}
        for p in range(start, end):
            found.setdefault(headings.get(int(self.chunk_ids[p]), ""), []).append(p)
        return found

    def routes_for(self, query: str) -> dict[int, str]:
        """Documents the query names (with the name as written): runbooks declaring the alert, the incident by id."""
        routed: dict[int, str] = {}
        if self.alert_routes:
            for token in QUERY_TOKEN.findall(query):
                for d in self.alert_routes.get(token.lower(), ()):
                    routed.setdefault(d, token)
        return routed

    def rank(self, sig: Signals, mode: str) -> dict[int, float]:
        """A score per candidate document: the learned model's (hybrid), or one signal's alone."""
        if mode == "dense" and sig.section is not None:
            return {int(d): float(sig.section[d]) for d in top(sig.section, self.ranking.candidates)}
        if mode == "bm25":
            return dict(sig.bm25)
        docs, ranks = candidates(sig)
        if self.model is not None and len(docs):
            scores = self.model.score(features(sig, docs, ranks, self.stats))
        else:  # no ranker fitted (yet): reciprocal-rank fusion of the three rankings
            scores = fuse(docs, ranks)
        return {int(d): float(s) for d, s in zip(docs, scores, strict=True)}

    def search(
        self, query: str, k: int = 5, mode: str = "hybrid", linked: str = "", anchor: str = "", follow_up: str = ""
    ) -> Answer:
        """Answer ``query`` with the ``k`` best documents, each with its best section.

        ``linked`` is the path of a runbook the question links to (an alert's runbook_url): it comes first, citing
        the section ``anchor`` names when it has one, else its best section for the query. ``follow_up`` is the
        latest message of a thread whose question ``query`` carries too: the documents are found with both, the
        section cited by the follow-up's own words when it has any ("and how do I roll it back?" cites the
        rollback steps, not the section the first question's words single out).
        """
        if mode not in MODES:
            raise InvalidRequest(f"unknown search mode {mode!r}; use one of {', '.join(MODES)}.")
        if not query or not query.strip():
            raise InvalidRequest("the question is empty; type what you are looking for, or paste the alert.")
        started = time.perf_counter()
        with self._lock:
            normalized, sig = self.signals(query, mode)
            scores = self.rank(sig, mode)
            routed = sig.routed if mode == "hybrid" else {}
            for d in routed:  # the runbook written for the named alert comes first, whatever the wording
                scores.setdefault(d, 0.0)
            first = self.doc_index.get(linked, -1) if linked else -1
            if first >= 0:  # the runbook the alert links to (its runbook_url) comes before any other
                scores.setdefault(first, 0.0)
            # Alert names are case-sensitive: of two runbooks answering to one name in any case
            # (KubeMacPoolDown, KubemacpoolDown), the one spelled as the question spells it leads.
            exact = {d for d, name in routed.items() if name in self.declared.get(d, ())}
            ordered = sorted(scores, key=lambda d: (d != first, d not in routed, d not in exact, -scores[d]))
            if mode == "hybrid":
                ordered = self._remembered(sig, ordered)
            if first >= 0 and ordered[0] != first:  # votes move documents, never above the linked runbook
                ordered = [first] + [d for d in ordered if d != first]
            ordered = ordered[:k]
            stems = sig.stems if mode == "hybrid" and sig.chunk_sims is not None else []
            if follow_up and stems:
                latest = set(self.stems(keyword_terms(strip_volatile(follow_up) or follow_up, STOPWORDS)))
                stems = [t for t in stems if t in latest] or stems
            # A section holding a sentence's worth of the question's words together, as no other document
            # does, is a quote: it is cited, and marked "contains your words".
            quoted = dict(sig.whole) if len(sig.whole) == 1 and len(sig.stems) >= QUOTE_TERMS else {}
            # One count of the query's words over the sections of every document shown.
            cite = [p for d in ordered if d not in quoted for p in self._sections(d)] if stems else []
            counts = self._cite_counts([int(self.chunk_ids[p]) for p in cite], stems)
            # A document the question names (an alert's runbook, an incident by id) is found by its name; which of
            # its sections to cite is said by the question's other words ("how do I diagnose KubePodCrashLooping").
            unnamed = {d: self._without_name(stems, name) for d, name in routed.items()}
            best = {
                d: quoted[d] if d in quoted else self._best_chunk(d, sig, unnamed.get(d, stems), counts)
                for d in ordered
            }
            if first >= 0 and anchor:  # the section the runbook_url's #fragment names
                chunk_id = self.store.chunk_with_anchor(linked, anchor)
                (pos,) = self._positions([chunk_id]) if chunk_id is not None else (-1,)
                if pos >= 0:
                    best[first] = pos
            wanted = {d: int(self.chunk_ids[pos]) for d, pos in best.items()}
        details = self.store.chunks_by_id(wanted.values())
        # How close in meaning the document is: its best section's, whichever section is cited.
        sims = {d: float(sig.section[d]) if sig.section is not None else 0.0 for d in ordered}
        hits = tuple(
            make_hit(details[wanted[d]], scores[d], normalized, sims[d], routed.get(d, ""), d in quoted, d == first)
            for d in ordered
            if wanted[d] in details
        )
        search_ms = (time.perf_counter() - started) * 1000 - sig.encode_ms
        learned = mode == "hybrid" and self.model is not None
        return Answer(query, normalized, hits, mode, sig.encode_ms, search_ms, sig.query_vector, learned)

    def _cite_counts(self, chunk_ids: list[int], stems: list[str]) -> dict[int, dict[str, tuple[int, int]]]:
        """The query's words counted in these chunks to choose a section, each with the forms the stemmer keeps
        a letter apart: "how do I diagnose" (diagnos) asks for the Diagnosis section (diagnosi), "verify"
        (verifi) for Verification (verif). Only the corpus's own words are looked up, and only to cite."""
        near: dict[str, str] = {}
        for stem in stems:
            if len(stem) < NEAR_FORM_LENGTH:
                continue
            forms = [stem[:-1]] if len(stem) > NEAR_FORM_LENGTH else []
            for form in forms + [stem + c for c in string.ascii_lowercase]:
                if form not in stems and form not in near and form in self.stats.term_chunks:
                    near[form] = stem
        counts = self.store.term_counts_in(chunk_ids, stems + list(near))
        if near:
            for found in counts.values():
                for form in [f for f in found if f in near]:
                    heading, body = found.pop(form)
                    had = found.get(near[form], (0, 0))
                    found[near[form]] = (had[0] + heading, had[1] + body)
        return counts

    def _remembered(self, sig: Signals, ordered: list[int]) -> list[int]:
        """Votes on answers to the same or a close question: each 👍 moves its document up a place, each 👎 down.

        The ranker learns from votes too, for every question (``training.py``); this is the memory of
        what people said about this very question, in effect from the vote on.
        """
        if sig.query_vector is None or not len(self.feedback_votes) or self.feedback.shape[1] != len(sig.query_vector):
            return ordered
        close = np.flatnonzero(self.feedback @ sig.query_vector >= self.ranking.feedback_similarity)
        moves: dict[int, int] = {}
        for i in close:
            d = self.doc_index.get(self.feedback_paths[i])
            if d is not None:
                moves[d] = moves.get(d, 0) + int(self.feedback_votes[i])
        return moved_by_votes(ordered, moves)

    def _sections(self, d: int) -> list[int]:
        """Positions of all of a document's sections."""
        start = int(self.doc_starts[d])
        end = int(self.doc_starts[d + 1]) if d + 1 < len(self.doc_starts) else self.size
        return list(range(start, end))

    def _own_sections(self, d: int) -> list[int]:
        """Positions of a document's sections that may be cited: not stubs, unless it has only stubs."""
        every = self._sections(d)
        return [p for p in every if not self.stub[p]] or every

    def _without_name(self, stems: list[str], name: str) -> list[str]:
        """The query's words less those of a name it gives (an alert's, as the keyword search reads it)."""
        named = set(self.stems(keyword_terms(name, STOPWORDS))) if stems else set()
        return [s for s in stems if s not in named]

    def _best_chunk(self, d: int, sig: Signals, stems: list[str], counts: dict[int, dict[str, tuple[int, int]]]) -> int:
        """The section to cite: the best by the query's words among the document's own sections (hybrid),
        else the closest in meaning, else keywords' best. A short section whose heading holds a word of the
        question is what it asks for ("root cause of INC-2026-0022", whose root cause is five words): it may
        be cited too. For a document the question names, ``stems`` are its other words (see ``search``): with
        none, its opening section is cited; with some that no section has, the closest to the question less
        its name."""
        if sig.chunk_sims is None:
            return sig.bm25_chunk[d]
        own = self._own_sections(d)
        asked = set(stems)
        if stems:
            named = [
                p
                for p in self._sections(d)
                if p not in own
                and any(
                    heading for stem, (heading, _) in counts.get(int(self.chunk_ids[p]), {}).items() if stem in asked
                )
            ]
            own = sorted(own + named)
        closeness = {p: float(sig.chunk_sims[p]) for p in own}
        if stems and len(own) > 1:
            local = self.local_keyword_scores(own, stems, counts)
            # The document's services and tags stand in every section's body: they help find the document, but a
            # section is cited for words of its own ("diagnose a crashloop" is not the Related list of a runbook
            # tagged crashloop, shortest of all and so the best by BM25).
            labels = self.labels[d] if d < len(self.labels) else {}
            holding = [
                p
                for p in own
                if any(
                    heading or body > labels.get(stem, 0)
                    for stem, (heading, body) in counts.get(int(self.chunk_ids[p]), {}).items()
                    if stem in asked
                )
            ]
            if holding:
                return max(holding, key=lambda p: (local[p], closeness[p]))
        if d in sig.routed:
            if not stems or sig.query_vector is None or self.titles.shape[1] != len(sig.query_vector):
                return own[0]  # named, and nothing else of the question says where: its opening section
            # Named, with words no section has ("how do I fix KubePodCrashLooping"): the section closest in meaning
            # to the question less its name, the query's vector without its part along the document's title.
            title = self.titles[d]
            rest = sig.query_vector - float(sig.query_vector @ title) * title
            return max(own, key=lambda p: float(self.matrix[p] @ rest))
        return max(own, key=closeness.__getitem__)

    def local_keyword_scores(
        self, positions: list[int], stems: list[str], counts: dict[int, dict[str, tuple[int, int]]] | None = None
    ) -> dict[int, float]:
        """BM25 of the query's words among these sections of one document (see ``citing.local_keyword_scores``).

        ``counts`` are the term counts when the caller has them already (``KnowledgeStore.term_counts_in``).
        """
        ids = [int(self.chunk_ids[p]) for p in positions]
        counts = self.store.term_counts_in(ids, stems) if counts is None else counts
        lengths = [int(self.words[p]) for p in positions]
        scores = local_keyword_scores(lengths, [counts.get(i, {}) for i in ids], stems)
        return dict(zip(positions, scores, strict=True))

    def _keyword_chunks(self, words: list[str], stems: list[str]) -> list[tuple[int, float]]:
        terms = self.select_terms(words, stems)
        match = keyword_match(words, terms, self.ranking.near) if terms else ""
        return self.store.fts_search(match, self.ranking.candidates, self.ranking.bm25_weights) if match else []

    def _whole_query_chunks(self, stripped: str) -> list[tuple[int, float]]:
        """Chunks holding every distinct word of the query together (see ``keywords.whole_query_match``)."""
        match = whole_query_match(stripped)
        return self.store.fts_search(match, self.ranking.candidates, self.ranking.bm25_weights) if match else []

    def select_terms(self, terms: list[str], stems: list[str] | None = None) -> list[str]:
        """The query words worth a full-text lookup, in query order (``stems``: theirs, when the caller has them)."""
        if not terms:
            return []
        stems = self.stems(terms) if stems is None else stems
        counts = {t: self.stats.term_chunks.get(stem, 0) for t, stem in zip(terms, stems, strict=True)}
        r = self.ranking
        return select_terms(terms, counts, self.size, r.common_fraction, r.common_floor, r.max_terms)
