"""The learned ranking: features of a (query, document) pair, and a small model that scores them.

The features are the evidence search already gathers, made comparable across queries: cosines and
their gap to the query's best, ranks in each list, the keyword score as a share of the best one, and
how the query's words and the document's title cover each other, each word weighted by how rare the
corpus shows it to be (so words that every runbook of a family carries count little, with no list of
such words). The model is fitted per corpus at index time (``training.py``); nothing here is tuned.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

FEATURES = (
    "section_cos",  # best section's cosine
    "section_gap",  # the query's best section cosine minus this document's
    "section_rank",  # log rank of the document by best section, 1 = not among the candidates
    "title_cos",
    "title_gap",
    "title_rank",
    "bm25_share",  # BM25 of the best chunk as a share of the query's best, 0 = no keyword match
    "bm25_rank",
    "query_in_title",  # IDF-weighted share of the query's words found in the title
    "title_in_query",  # IDF-weighted share of the title's words found in the query
    "coverage",  # IDF-weighted share of the query's words in the document's best keyword chunk or its title
    "best_coverage",  # the best coverage of any candidate: a quoted sentence, or words of one's own
    "quoted",  # a section holds all the query's words within the query's span; 1 / how many documents do
    "query_terms",  # log of the number of the query's words the corpus has
    "best_cos",  # how close in meaning anything is: when nothing is, dense evidence is noise
    "document_cos",  # cosine with the document as a whole (the mean of its sections' vectors)
    "document_gap",  # the query's best document cosine minus this document's
    "title_phrase",  # IDF-weighted share of the query's words standing next to another of them in the title, as in it
)
# How each feature may move the score: more evidence for a document never counts against it (+1), a worse
# rank or a larger gap never for it (-1). Features of the query as a whole (0) only shape how the rest count.
MONOTONE = (1, -1, -1, 1, -1, -1, 1, -1, 1, 1, 1, 0, 1, 0, 0, 1, -1, 1)
RRF_K = 60.0  # reciprocal-rank fusion, before a ranker is fitted (the constant of its paper)
CANDIDATES = 50  # documents taken from the top of each list; a relevant document below that in all three is lost


@dataclass
class Signals:
    """Per-document evidence for one query, before ranking."""

    section: np.ndarray | None  # best dense similarity of any section, per document
    title: np.ndarray | None  # dense similarity of the title, per document
    chunk_sims: np.ndarray | None  # dense similarity per chunk
    bm25: dict[int, float]  # document -> best BM25 score (higher is better), only matching documents
    bm25_chunk: dict[int, int]  # document -> position of its best BM25 chunk
    encode_ms: float = 0.0
    query_vector: np.ndarray | None = None
    routed: dict[int, str] = field(default_factory=dict)  # document -> the name in the query it declares
    stems: list[str] = field(default_factory=list)  # the query's distinct words as the full-text index stores them
    whole: dict[int, int] = field(default_factory=dict)  # document -> position of a chunk holding the whole query
    matched: dict[int, frozenset[str]] = field(default_factory=dict)  # document -> query stems its best chunk holds
    document: np.ndarray | None = None  # dense similarity of each document as a whole


@dataclass(frozen=True)
class CorpusStats:
    """What the features need to know about the corpus: word rarity and each document's title words."""

    chunks: int
    term_chunks: dict[str, int]  # stem -> how many chunks hold it
    title_terms: list[tuple[str, ...]]  # per document, in title order
    # per document, the short forms of its title it spells out: {"hpp": ("hostpath", "provision")}
    title_aliases: list[dict[str, tuple[str, ...]]] = field(default_factory=list)
    # Made once from the above, not per query: each title's words as a set, and its pairs of adjacent words read
    # with each short form followed by its words ("hpp hostpath provision not readi").
    title_sets: list[frozenset[str]] = field(init=False, repr=False, compare=False)
    title_pairs: list[frozenset[tuple[str, str]]] = field(init=False, repr=False, compare=False)
    title_masses: list[float] = field(init=False, repr=False, compare=False)  # the summed rarity of each title's words

    def __post_init__(self) -> None:
        sets, pairs, masses = [], [], []
        for d, terms in enumerate(self.title_terms):
            aliases = self.title_aliases[d] if d < len(self.title_aliases) else {}
            read = [w for t in terms for w in (t, *aliases.get(t, ()))]
            sets.append(frozenset(terms))
            pairs.append(frozenset(zip(read, read[1:], strict=False)))
            masses.append(sum(self.idf(t) for t in sets[-1]))
        object.__setattr__(self, "title_sets", sets)
        object.__setattr__(self, "title_pairs", pairs)
        object.__setattr__(self, "title_masses", masses)

    def idf(self, stem: str) -> float:
        """BM25's inverse document frequency over chunks; 0 for a word the corpus does not have."""
        n = self.term_chunks.get(stem, 0)
        if not n:
            return 0.0
        return math.log(1 + (self.chunks - n + 0.5) / (n + 0.5))


def top(scores: np.ndarray, n: int) -> np.ndarray:
    if len(scores) > n:
        part = np.argpartition(-scores, n)[:n]
        return part[np.argsort(-scores[part])]
    return np.argsort(-scores)


def candidates(sig: Signals, n: int = CANDIDATES) -> tuple[np.ndarray, dict[str, dict[int, int]]]:
    """The documents worth scoring (the top of each list, and routed ones), and each list's ranks."""
    ranks: dict[str, dict[int, int]] = {}
    if sig.section is not None:
        ranks["section"] = {int(d): r for r, d in enumerate(top(sig.section, n))}
    if sig.title is not None:
        ranks["title"] = {int(d): r for r, d in enumerate(top(sig.title, n))}
    ranks["bm25"] = {d: r for r, d in enumerate(sorted(sig.bm25, key=lambda d: -sig.bm25[d])[:n])}
    docs = dict.fromkeys(d for ranked in ranks.values() for d in ranked)
    docs.update(dict.fromkeys(sig.routed))
    docs.update(dict.fromkeys(sig.whole))
    return np.fromiter(docs, dtype=np.int64, count=len(docs)), ranks


def fuse(docs: np.ndarray, ranks: dict[str, dict[int, int]], n: int = CANDIDATES) -> np.ndarray:
    """Reciprocal-rank fusion of the rankings: the order used until a ranker is fitted, and its baseline."""
    ids = docs.tolist()
    total = np.zeros(len(ids))
    for ranked in ranks.values():  # list by list, in the order a sum over the lists would add them
        total += 1.0 / (RRF_K + np.fromiter((ranked.get(d, n) for d in ids), dtype=np.float64, count=len(ids)) + 1)
    return total


def features(
    sig: Signals, docs: np.ndarray, ranks: dict[str, dict[int, int]], stats: CorpusStats, n: int = CANDIDATES
) -> np.ndarray:
    """One row of ``FEATURES`` per document in ``docs``."""
    x = np.zeros((len(docs), len(FEATURES)), dtype=np.float32)
    worst = math.log1p(n)

    def rank_of(name: str) -> np.ndarray:
        ranked = ranks.get(name, {})
        return np.array([math.log1p(ranked.get(int(d), n)) / worst for d in docs], dtype=np.float32)

    best_cos = 0.0
    if sig.section is not None and len(sig.section):
        best_cos = float(sig.section.max())
        x[:, 0] = sig.section[docs]
        x[:, 1] = best_cos - x[:, 0]
    x[:, 2] = rank_of("section")
    if sig.title is not None and len(sig.title):
        x[:, 3] = sig.title[docs]
        x[:, 4] = float(sig.title.max()) - x[:, 3]
    x[:, 5] = rank_of("title")
    if sig.bm25:
        top = max(sig.bm25.values())
        x[:, 6] = [sig.bm25.get(int(d), 0.0) / top if top > 0 else 0.0 for d in docs]
    x[:, 7] = rank_of("bm25")
    known = {s: w for s in sig.stems if (w := stats.idf(s)) > 0}  # words the corpus does not have match nothing
    total = sum(known.values())
    pairs = set(zip(sig.stems, sig.stems[1:], strict=False))  # the query's words next to each other, in order
    if total:
        none: frozenset[str] = frozenset()
        for i, d in enumerate(docs):
            d = int(d)
            known_doc = d < len(stats.title_sets)
            title = stats.title_sets[d] if known_doc else none
            aliases = stats.title_aliases[d] if d < len(stats.title_aliases) else None
            # A short form and the words it stands for are one title word, said either way: its words count when
            # the query says all of them ("operating system" for OS, not "operator" alone).
            spelled = (
                frozenset(w for words in aliases.values() if all(v in known for v in words) for w in words)
                if aliases
                else none
            )
            found = sig.matched.get(d, none) | title | spelled
            x[i, 10] = sum(w for s, w in known.items() if s in found) / total
            if title:
                x[i, 8] = sum(w for s, w in known.items() if s in title or s in spelled) / total
                shared = sum(w for s, w in known.items() if s in title)
                if aliases:  # a short form of the title that the query spells out
                    shared += sum(
                        stats.idf(t) for t, words in aliases.items() if t not in known and spelled.issuperset(words)
                    )
                title_mass = stats.title_masses[d]
                x[i, 9] = shared / title_mass if title_mass else 0.0
                # `virt-operator` names VirtOperatorDown, where VirtAPIDown holds the two words apart or not at all
                together = {w for pair in pairs & stats.title_pairs[d] for w in pair if w in title or w in spelled}
                x[i, 17] = sum(known.get(w, 0.0) for w in together) / total
        x[:, 11] = x[:, 10].max()
    if sig.whole:
        x[:, 12] = [1.0 / len(sig.whole) if int(d) in sig.whole else 0.0 for d in docs]
    x[:, 13] = math.log1p(len(known))
    x[:, 14] = best_cos
    if sig.document is not None and len(sig.document):
        x[:, 15] = sig.document[docs]
        x[:, 16] = float(sig.document.max()) - x[:, 15]
    return x


@dataclass(frozen=True)
class RankerModel:
    """A sum of regression trees over ``FEATURES`` (gradient boosting), scored for all candidates at once.

    The trees are flattened into node arrays: ``feature`` and ``threshold`` (go to ``children[node, 0]``
    when the feature is at most the threshold, else ``children[node, 1]``; a leaf is its own child), the
    ``value`` of each leaf, and each tree's root node. ``depth`` steps take every row to its leaf.
    """

    baseline: float
    feature: np.ndarray
    threshold: np.ndarray
    children: np.ndarray
    value: np.ndarray
    roots: np.ndarray
    depth: int

    def score(self, x: np.ndarray) -> np.ndarray:
        """The model's score for each row of ``x`` (one row of ``FEATURES`` per document)."""
        flat = np.ascontiguousarray(x, dtype=np.float32).ravel()
        starts = (np.arange(len(x), dtype=np.intp) * x.shape[1])[:, None]
        node = np.tile(self.roots, (len(x), 1))
        children = self.children.ravel()
        for _ in range(self.depth):  # every row of every tree one level down; a leaf stays where it is
            node = children[2 * node + (flat[starts + self.feature[node]] > self.threshold[node])]
        return self.value[node].sum(axis=1) + self.baseline

    @property
    def trees(self) -> int:
        return len(self.roots)

    def to_dict(self) -> dict:
        return {
            "features": list(FEATURES),
            "baseline": self.baseline,
            "nodes": {
                "feature": self.feature.tolist(),
                "threshold": self.threshold.tolist(),
                "children": self.children.tolist(),
                "value": self.value.tolist(),
            },
            "roots": self.roots.tolist(),
            "depth": self.depth,
        }

    @classmethod
    def from_dict(cls, data: dict) -> RankerModel | None:
        """The stored model, or None when there is none or it was fitted on other features (an older opsbot)."""
        if tuple(data.get("features", ())) != FEATURES:
            return None
        nodes = data["nodes"]
        return cls(
            float(data["baseline"]),
            np.asarray(nodes["feature"], dtype=np.intp),
            np.asarray(nodes["threshold"], dtype=np.float64),
            np.asarray(nodes["children"], dtype=np.intp).reshape(-1, 2),
            np.asarray(nodes["value"], dtype=np.float64),
            np.asarray(data["roots"], dtype=np.intp),
            int(data["depth"]),
        )


def moved_by_votes(ordered: list[int], moves: dict[int, int]) -> list[int]:
    """``ordered`` with each document moved up a place for each net 👍 on a close question (down for 👎)."""
    for d, places in moves.items():
        if places and d in ordered:
            at = ordered.index(d)
            ordered.insert(max(0, min(len(ordered) - 1, at - places)), ordered.pop(at))
    return ordered
