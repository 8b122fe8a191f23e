"""Fitting the ranker on the corpus itself: queries made from the documents, votes as labels, a held-back check.

At ``opsbot index`` time each document yields a few queries (its title, sentences of its sections
with and without the title's words, fragments of them). Each query is searched like a question, and
the document it was made from is the relevant one among the candidates. A small model is fitted on
four fifths of the documents' queries, checked on the queries of the fifth it did not see, and the
better of two model shapes is refitted on all of them. Votes from Slack join as labelled questions,
weighted above the generated ones. No evaluation query file is ever read here.
"""

from __future__ import annotations

import logging
import math
import random
import re
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from threadpoolctl import threadpool_limits

from bot.answers.encoder import Encoder
from bot.answers.ranker import (
    CANDIDATES,
    FEATURES,
    MONOTONE,
    RRF_K,
    CorpusStats,
    RankerModel,
    Signals,
    candidates,
    features,
    fuse,
)
from bot.models import Document
from bot.store import Store
from bot.text import content_hash, normalize_query, split_camel

if TYPE_CHECKING:
    from bot.answers.search import SearchIndex

log = logging.getLogger(__name__)
# Part of what a fitted ranker is keyed by: a release that changes the queries, features or model refits.
RANKER_VERSION = "7"
QUERIES_PER_DOCUMENT = 8  # besides the title: each document is the answer a few ways
KINDS = ("sentence", "untitled", "fragment")
QUERY_BUDGET = 1000  # at most this many generated queries: a fit stays within seconds on a large corpus
NEGATIVES = 30  # per query, the candidates ranked best by plain fusion that are not the answer
HELD_BACK = 0.2  # the share of documents whose queries check the fit
VOTE_WEIGHT = 20.0  # a person's verdict on a real question counts as much as ten generated queries (each weighs 2)
MIN_DOCUMENTS = 5  # fewer documents than this give too little to fit on: plain fusion is used
# Gradient boosting: small trees at a slow rate. More trees or leaves, a faster rate, changed nothing measurable
# on three corpora; seven leaves keep every tree at most six levels deep, which is what scoring costs.
TREES = 200
LEARNING_RATE = 0.05
LEAVES = 7
BINS = 255  # scikit-learn's most: split points tried per feature
MIN_LEAF = 100  # (query, candidate) rows a leaf must hold: no split is made for a handful of queries
FENCED = re.compile(r"^[ \t]*(```|~~~).*?^[ \t]*\1", re.M | re.S)
LIST_ITEM = re.compile(r"^[ \t]*(?:[-*+]|\d+[.)])\s+", re.M)
SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
WORD = re.compile(r"[A-Za-z][A-Za-z'-]*")
MARKUP = re.compile(r"[`*_#>|\[\]]+")
PROSE_SHARE = 0.7  # a sentence to query with is mostly words: command lines and tables are not what people ask


@dataclass(frozen=True)
class TrainingQuery:
    doc_path: str
    section: str  # the heading of the section it was made from ("" for the title)
    kind: str  # title, sentence, untitled (a sentence without the title's words), fragment
    text: str


@dataclass
class Example:
    """One query's candidates: features, labels (1 = relevant), a weight, and the document it is about."""

    x: np.ndarray
    y: np.ndarray
    weight: float
    group: str


def prose_sentences(text: str) -> list[list[str]]:
    """The sentences of a section's prose, as word lists: code blocks, markup and command lines left out."""
    text = FENCED.sub("\n\n", text)
    found = []
    for paragraph in re.split(r"\n\s*\n", LIST_ITEM.sub("\n\n", text)):
        for sentence in SENTENCE_END.split(" ".join(MARKUP.sub(" ", paragraph).split())):
            tokens = sentence.split()
            words = sum(bool(WORD.fullmatch(t.strip(".,:;()!?\"'"))) for t in tokens)
            if len(tokens) >= 4 and words >= PROSE_SHARE * len(tokens):
                found.append(tokens)
    return found


def make_queries(doc: Document, count: int | None = None) -> list[TrainingQuery]:
    """Queries a document answers: its title, and ``count`` sentences, parts of them and fragments.

    Every document gets as many, so that long documents do not outweigh short ones. They are dealt to
    its sections in turn, from the first (what the document is about), each seeded by its section's
    text: editing one section changes only the queries made from it (and only they need embedding again).
    """
    queries = [TrainingQuery(doc.path, "", "title", doc.title_text)]
    title_words = {w.lower() for w in WORD.findall(split_camel(doc.title_text))}
    sections = [(s, found) for s in doc.sections if (found := prose_sentences(s.text))]
    for i in range((count or QUERIES_PER_DOCUMENT) if sections else 0):
        section, sentences = sections[i % len(sections)]
        rng = random.Random(content_hash(f"{i}\n{section.heading}\n{section.text}"))
        words = rng.choice(sentences)
        if len(words) > 24:  # an alert's description is a sentence or two, not a paragraph
            start = rng.randrange(len(words) - 24 + 1)
            words = words[start : start + 24]
        kind = KINDS[i % len(KINDS)]
        if kind == "untitled":
            words = [w for w in words if w.lower().strip(".,:;()") not in title_words] or words
        elif kind == "fragment":
            size = rng.randint(3, min(8, len(words)))
            start = rng.randrange(len(words) - size + 1)
            words = words[start : start + size]
        queries.append(TrainingQuery(doc.path, section.heading, kind, " ".join(words)))
    return queries


def _sample(queries: list[TrainingQuery], size: int) -> list[TrainingQuery]:
    """A fixed sample of ``size`` of the queries, in their order (all of them when there are no more): each
    document's first query by digest, then each one's second, and so on, so that the sample spans the documents.
    Where a query falls depends on its own document only, so a document added or edited changes the sample by a few
    queries (drawn by position, with the count as seed, nearly the whole sample changed, and was embedded again)."""
    if len(queries) <= size:
        return queries
    digests = [content_hash(f"{q.doc_path}\n{q.section}\n{q.kind}\n{q.text}") for q in queries]
    by_document: dict[str, list[int]] = {}
    for i, query in enumerate(queries):
        by_document.setdefault(query.doc_path, []).append(i)
    place = [0] * len(queries)
    for members in by_document.values():
        for rank, i in enumerate(sorted(members, key=lambda i: digests[i])):
            place[i] = rank
    keep = sorted(sorted(range(len(queries)), key=lambda i: (place[i], digests[i]))[:size])
    return [queries[i] for i in keep]


def training_queries(
    documents: Iterable[Document],
    budget: int = QUERY_BUDGET,
    held_elsewhere: Callable[[TrainingQuery], bool] | None = None,
) -> list[TrainingQuery]:
    """Every document's queries, less those another document holds word for word; at most ``budget`` of them.

    Runbooks copied from one another share sentences. Such a sentence answers each of them equally, so
    labelling only the one it was drawn from would teach the ranker that a passage quoted exactly points
    elsewhere, and that the title alone decides. ``held_elsewhere`` tells them (it looks each one up, so a
    large corpus is sampled first, with room for the ones it leaves out).
    """
    queries = [q for d in documents for q in make_queries(d)]
    if held_elsewhere is not None:
        queries = [q for q in _sample(queries, budget * 2) if q.kind == "title" or not held_elsewhere(q)]
    return _sample(queries, budget)


def encoded_form(text: str) -> str:
    """What the encoder sees of a query (what search embeds), and so what a training query's vector is of."""
    return normalize_query(text)


Evidence = Callable[[str, np.ndarray, frozenset[int]], Signals]


def example(
    evidence: Evidence,
    stats: CorpusStats,
    text: str,
    vector: np.ndarray,
    doc: int,
    weight: float,
    group: str,
    vote: int = 1,
    hidden: frozenset[int] = frozenset(),
) -> Example:
    """Features of one labelled query: a relevant document among its candidates, or one voted down."""
    sig = evidence(text, vector, hidden)
    docs, ranks = candidates(sig)
    if vote < 0:
        docs = np.asarray([doc], dtype=np.int64)
    elif doc not in set(docs.tolist()):
        docs = np.append(docs, doc)
    if len(docs) > NEGATIVES + 1:  # the candidates closest to winning teach the most: keep those
        hardest = docs[np.argsort(-fuse(docs, ranks), kind="stable")]
        docs = np.append(hardest[hardest != doc][:NEGATIVES], doc)
    x = features(sig, docs, ranks, stats)
    y = (docs == doc).astype(np.float32) if vote > 0 else np.zeros(1, dtype=np.float32)
    return Example(x, y, weight, group)


def _mrr(scores: list[np.ndarray], examples: list[Example]) -> float:
    """Mean reciprocal rank (to 10) of the relevant document among each example's candidates (ties share ranks)."""
    total, n = 0.0, 0
    for score, e in zip(scores, examples, strict=True):
        if not e.y.any() or len(e.y) < 2:
            continue
        best = score[e.y > 0].max()
        rank = int((score > best).sum()) + int((score == best).sum() - 1) // 2
        total += 1.0 / (rank + 1) if rank < 10 else 0.0
        n += 1
    return total / max(n, 1)


def bin_tops(x: np.ndarray, w: np.ndarray, bins: int = BINS) -> dict[int, np.ndarray]:
    """For each feature with more than ``bins`` values, the top value of each of its bins (weighted quantiles).

    scikit-learn finds such bins itself, but when the examples carry weights it sorts the column again
    for each of its 254 cut points: three quarters of the fit's time, measured. Once a column is enough.
    """
    tops = {}
    for j in range(x.shape[1]):
        col = x[:, j]
        if len(np.unique(col)) <= bins:
            continue
        order = np.argsort(col, kind="stable")
        share = np.cumsum(w[order]) / w.sum()
        cuts = np.minimum(np.searchsorted(share, np.linspace(0, 1, bins + 1)[1:-1]), len(col) - 1)
        tops[j] = np.unique(np.append(col[order][cuts], col[order][-1]))
    return tops


def binned(x: np.ndarray, tops: dict[int, np.ndarray]) -> np.ndarray:
    """``x`` with each value of a binned feature moved to the top of its bin."""
    out = x.copy()
    for j, top in tops.items():
        out[:, j] = top[np.minimum(np.searchsorted(top, x[:, j]), len(top) - 1)]
    return out


def _boost(examples: list[Example], iterations: int, seed: int):  # noqa: ANN202 - sklearn's type, imported late
    """The trees, fitted on the features moved to the tops of their bins (``bin_tops``, kept as ``tops``)."""
    from sklearn.ensemble import HistGradientBoostingClassifier

    x = np.vstack([e.x for e in examples])
    y = np.concatenate([e.y for e in examples])
    w = np.concatenate([np.full(len(e.y), e.weight, dtype=np.float64) for e in examples])
    tops = bin_tops(x, w)
    model = HistGradientBoostingClassifier(
        max_iter=iterations,
        learning_rate=LEARNING_RATE,
        max_leaf_nodes=LEAVES,
        min_samples_leaf=MIN_LEAF,
        l2_regularization=1.0,
        monotonic_cst=list(MONOTONE),
        early_stopping=False,
        random_state=seed,
    )
    model.fit(binned(x, tops), y, sample_weight=w)
    model.tops = tops
    return model


def _export(model) -> RankerModel:  # noqa: ANN001
    """The fitted trees as flat node arrays (scikit-learn keeps them in ``_predictors``; a test checks the scores).

    A split of a binned feature falls between the tops of two bins: on the features as they are, it is
    "at most the lower top", which sends every value to the side its bin went.
    """
    feature, threshold, children, value, roots, depth = [], [], [], [], [], 0
    for (tree,) in model._predictors:
        nodes = tree.nodes
        offset = len(feature)
        roots.append(offset)
        leaf = nodes["is_leaf"].astype(bool)
        own = np.arange(len(nodes)) + offset
        feature.extend(np.where(leaf, 0, nodes["feature_idx"]).tolist())
        cut = nodes["num_threshold"].astype(np.float64)
        for j, top in model.tops.items():
            at = ~leaf & (nodes["feature_idx"] == j)
            cut[at] = top[np.maximum(np.searchsorted(top, cut[at], side="right") - 1, 0)]
        threshold.extend(np.where(leaf, np.inf, cut).tolist())
        left = np.where(leaf, own, nodes["left"].astype(np.int64) + offset)
        right = np.where(leaf, own, nodes["right"].astype(np.int64) + offset)
        children.extend(np.stack([left, right], axis=1).tolist())
        value.extend(np.where(leaf, nodes["value"], 0.0).tolist())
        depth = max(depth, int(nodes["depth"].max()))
    return RankerModel(
        float(np.ravel(model._baseline_prediction)[0]),
        np.asarray(feature, dtype=np.intp),
        np.asarray(threshold, dtype=np.float64),
        np.asarray(children, dtype=np.intp).reshape(-1, 2),
        np.asarray(value, dtype=np.float64),
        np.asarray(roots, dtype=np.intp),
        depth,
    )


def fused_scores(x: np.ndarray) -> np.ndarray:
    """Reciprocal-rank fusion of the three rankings, recovered from the rank features: the ranker's baseline."""
    ranks = np.expm1(x[:, [FEATURES.index(f"{n}_rank") for n in ("section", "title", "bm25")]] * math.log1p(CANDIDATES))
    return (1.0 / (RRF_K + np.rint(ranks) + 1)).sum(axis=1)


class FitStopped(Exception):
    """The fit was told to stop (the bot is stopping) before it ended; nothing was stored."""


def _check(stop: threading.Event | None) -> None:
    if stop is not None and stop.is_set():
        raise FitStopped("the ranker's fit was stopped before it ended")


def fit(examples: list[Example], seed: int = 0, stop: threading.Event | None = None) -> tuple[RankerModel | None, dict]:
    """Fit on four fifths of the documents' queries and check on the fifth held back, then fit on all.

    The check compares the model with reciprocal-rank fusion on the same held-back queries; when the
    model does no better there (too little text to learn from), None says to fuse instead. ``stop`` set
    ends it between the two fits (FitStopped).
    """
    from sklearn.ensemble import HistGradientBoostingClassifier  # noqa: F401 - loads OpenMP before the limit below

    started = time.perf_counter()
    groups = sorted({e.group for e in examples})
    held = set(random.Random(seed).sample(groups, max(1, int(len(groups) * HELD_BACK))))
    train = [e for e in examples if e.group not in held]
    check = [e for e in examples if e.group in held]
    with threadpool_limits(1):  # measured: OpenMP's threads make these small fits twice as slow on two cores
        trial = _export(_boost(train, TREES, seed))
        learned = _mrr([trial.score(e.x) for e in check], check)
        fused = _mrr([fused_scores(e.x) for e in check], check)
        _check(stop)
        model = _export(_boost(examples, TREES, seed)) if learned > fused else None
    report = {
        "examples": len(examples),
        "trees": TREES if model else 0,
        "held_back_documents": len(held),
        "held_back_mrr": round(learned, 4),
        "held_back_mrr_fused": round(fused, 4),
        "seconds": round(time.perf_counter() - started, 2),
    }
    return model, report


def build_examples(
    index: SearchIndex,
    queries: list[tuple[tuple[str, str, str, str, str], np.ndarray]],
    votes: list[tuple[str, str, int, np.ndarray]],
    stop: threading.Event | None = None,
) -> list[Example]:
    """Examples of the generated queries ((doc_path, section, kind, text, hash), vector) and of the votes.

    A query made from a section is searched twice: as it stands, where its own section holds its words,
    and without that section, as a real question worded unlike any sentence of its runbook is. Either
    way alone teaches a bias (trust a quote; distrust one), and a random share of each left the ranker
    to the luck of the draw (README "Both ways").
    """

    found: dict = {}  # what the full-text index returned for the query searched last

    def evidence(text: str, vector: np.ndarray, hidden: frozenset[int]) -> Signals:
        return index.signals(text, "hybrid", vector, hidden, found)[1]

    sections: dict[int, dict[str, list[int]]] = {}
    examples = []
    for (path, section, _, text, _), vector in queries:
        _check(stop)
        d = index.doc_index.get(path)
        if d is None:
            continue
        found.clear()
        hidden: frozenset[int] = frozenset()
        if section:
            if d not in sections:
                sections[d] = index.section_positions(d)
            hidden = frozenset(sections[d].get(section, ()))
        if not hidden:  # a title or an alert name: nothing to hide, so its one search weighs as two
            examples.append(example(evidence, index.stats, text, vector, d, 2.0, path))
            continue
        for without in (frozenset(), hidden):
            examples.append(example(evidence, index.stats, text, vector, d, 1.0, path, hidden=without))
    for question, path, vote, vector in votes:
        if path in index.doc_index and len(vector) == index.matrix.shape[1]:
            d = index.doc_index[path]
            found.clear()
            examples.append(example(evidence, index.stats, question, vector, d, VOTE_WEIGHT, path, vote))
    return examples


def ranker_key(store: Store, model_id: str) -> str:
    """What a fitted ranker depends on: the documents, the encoder, the method (this release's) and the votes."""
    shape = f"{QUERIES_PER_DOCUMENT}|{QUERY_BUDGET}|{TREES}|{LEAVES}"
    method = f"{RANKER_VERSION}|{','.join(FEATURES)}|{shape}"
    return content_hash(f"{store.corpus_key()}|{model_id}|{method}|{store.votes_key()}")


def fit_ranker(
    store: Store,
    encoder: Encoder,
    key: str | None = None,
    index: SearchIndex | None = None,
    stop: threading.Event | None = None,
) -> dict:
    """Fit the ranker on the stored training queries and the votes, and store it (``index``: also use it there).

    ``stop`` set ends the fit early with FitStopped, storing nothing: a stopping bot does not wait for it.
    """
    from bot.answers.search import SearchIndex  # search imports the ranker; the fit needs search's evidence

    corpus = store.corpus_key()  # what the fit is of: checked again before it is stored
    key = key or ranker_key(store, encoder.model_id)
    index = index or SearchIndex(store, encoder)
    rows = store.ranker_queries()
    vectors = store.vectors_for(encoder.model_id, list({h for *_, h in rows}))
    rows = [r for r in rows if r[0] in index.doc_index]
    docs = {path for path, *_ in rows if path in index.doc_index}
    if len(docs) < MIN_DOCUMENTS:
        store.save_ranker(encoder.model_id, key, {}, {"skipped": f"{len(docs)} documents; fusion by rank is used"})
        index.use_model(None)
        return {"skipped": len(docs)}

    started = time.perf_counter()
    votes_key = store.votes_key()  # read first: a vote landing meanwhile costs at most one refit more
    votes = store.votes_for_training(encoder.model_id)
    queries = [(q, vectors[q[-1]]) for q in rows if q[-1] in vectors]
    examples = build_examples(index, queries, votes, stop)
    features_s = time.perf_counter() - started
    model, report = fit(examples, stop=stop)
    report.update(
        {"queries": len(queries), "votes": len(votes), "votes_key": votes_key, "features_seconds": round(features_s, 2)}
    )
    with store.transaction():
        if store.corpus_key() != corpus:  # `opsbot index` changed the documents (and fitted its own) meanwhile
            log.info("ranker fit dropped: the documents changed while it ran")
            return {"skipped": "the documents changed during the fit"}
        store.save_ranker(encoder.model_id, key, model.to_dict() if model else {}, report)
    index.use_model(model)
    log.info(
        "ranker fitted trees=%d queries=%d votes=%d examples=%d seconds=%.2f",
        report["trees"],
        len(queries),
        len(votes),
        len(examples),
        features_s + report["seconds"],
    )
    return report
