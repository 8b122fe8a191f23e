"""The ranker's features and model: what a document's evidence looks like, and trees scored as scikit-learn does."""

from __future__ import annotations

import numpy as np
import pytest

from bot.answers.ranker import (
    CANDIDATES,
    FEATURES,
    MONOTONE,
    CorpusStats,
    RankerModel,
    Signals,
    candidates,
    features,
    fuse,
)
from bot.answers.training import Example, _boost, _export, binned, fit


def signals() -> Signals:
    """Four documents: 0 is first by meaning and title, 1 by keywords, 3 matches nothing."""
    return Signals(
        section=np.array([0.8, 0.6, 0.5, 0.1], dtype=np.float32),
        title=np.array([0.7, 0.2, 0.6, 0.0], dtype=np.float32),
        chunk_sims=None,
        bm25={1: 9.0, 0: 3.0},
        bm25_chunk={1: 1, 0: 0},
        stems=["pool", "exhaust", "checkout", "unknownword"],
        matched={1: frozenset({"pool", "exhaust"}), 0: frozenset({"pool"})},
        whole={1: 1},
        document=np.array([0.5, 0.65, 0.3, 0.0], dtype=np.float32),
    )


STATS = CorpusStats(
    chunks=100,
    term_chunks={"pool": 5, "exhaust": 2, "checkout": 60},
    title_terms=[("checkout", "pool"), ("pgbouncer",), (), ("disk",)],
)


def row(x: np.ndarray, docs: np.ndarray, d: int) -> dict[str, float]:
    return dict(zip(FEATURES, x[list(docs).index(d)].tolist(), strict=True))


def test_features_describe_each_documents_evidence_against_the_best() -> None:
    sig = signals()
    docs, ranks = candidates(sig, n=3)
    assert set(docs.tolist()) == {0, 1, 2}  # the top three of each list
    docs = np.array([0, 1, 2, 3])
    x = features(sig, docs, ranks, STATS, n=3)
    first, keyword, none = row(x, docs, 0), row(x, docs, 1), row(x, docs, 3)
    assert first["section_cos"] == pytest.approx(0.8) and first["section_gap"] == 0 and first["section_rank"] == 0
    assert keyword["bm25_share"] == 1.0 and first["bm25_share"] == pytest.approx(3 / 9)
    assert none["bm25_share"] == 0 and none["bm25_rank"] == 1.0  # not among the keyword candidates
    # "unknownword" is in no chunk: it neither counts for nor against anyone.
    idf = {s: STATS.idf(s) for s in ("pool", "exhaust", "checkout")}
    assert STATS.idf("unknownword") == 0 and idf["exhaust"] > idf["pool"] > idf["checkout"]
    total = sum(idf.values())
    assert first["query_in_title"] == pytest.approx((idf["checkout"] + idf["pool"]) / total)
    assert first["title_in_query"] == pytest.approx(1.0)  # every word of its title is in the query
    assert first["coverage"] == pytest.approx((idf["checkout"] + idf["pool"]) / total)  # the chunk's and the title's
    assert keyword["coverage"] == pytest.approx((idf["pool"] + idf["exhaust"]) / total)
    best = max(first["coverage"], keyword["coverage"])
    assert first["best_coverage"] == keyword["best_coverage"] == pytest.approx(best)
    assert keyword["quoted"] == 1.0 and first["quoted"] == 0.0
    assert first["query_terms"] == pytest.approx(np.log1p(3)) and first["best_cos"] == pytest.approx(0.8)
    # As a whole, the keyword document is closest: the gap is to it, not to the best section's document.
    assert keyword["document_cos"] == pytest.approx(0.65) and keyword["document_gap"] == 0
    assert first["document_cos"] == pytest.approx(0.5) and first["document_gap"] == pytest.approx(0.15)


def test_words_standing_together_in_the_query_and_in_a_title_are_a_phrase_of_that_title() -> None:
    # "No running virt-operator pods": VirtOperatorDown and NoReadyVirtOperator hold `virt operator` as the query
    # does; VirtAPIDown has one of the two words, OperatorVirt both but the other way round.
    stats = CorpusStats(
        chunks=100,
        term_chunks={"run": 30, "virt": 40, "oper": 20, "pod": 50},
        title_terms=[
            ("virt", "oper", "down"),
            ("virt", "api", "down"),
            ("no", "readi", "virt", "oper"),
            ("oper", "virt"),
        ],
    )
    sig = Signals(
        section=np.array([0.5, 0.6, 0.5, 0.4], dtype=np.float32),
        title=None,
        chunk_sims=None,
        bm25={},
        bm25_chunk={},
        stems=["no", "run", "virt", "oper", "pod"],  # "no" is in no chunk: it counts for nobody
    )
    docs = np.arange(4)
    _, ranks = candidates(sig)
    phrase = features(sig, docs, ranks, stats)[:, FEATURES.index("title_phrase")]
    idf = {s: stats.idf(s) for s in ("run", "virt", "oper", "pod")}
    expected = (idf["virt"] + idf["oper"]) / sum(idf.values())
    assert phrase.tolist() == pytest.approx([expected, 0.0, expected, 0.0])


def test_a_title_short_form_counts_as_the_words_its_runbook_spells_it_with() -> None:
    # "Hostpath Provisioner is not available": HPPNotReady's runbook says "the hostpath provisioner (HPP)", so its
    # title holds the query's words as HPPOperatorDown's does, and "not" besides; CDINotReady has only "not".
    stats = CorpusStats(
        chunks=100,
        term_chunks={"hostpath": 4, "provision": 6, "not": 30, "avail": 20, "hpp": 5, "cdi": 5, "readi": 10},
        title_terms=[("hpp", "not", "readi"), ("hpp", "oper", "down"), ("cdi", "not", "readi")],
        title_aliases=[{"hpp": ("hostpath", "provision")}, {"hpp": ("hostpath", "provision")}, {}],
    )
    sig = Signals(
        section=np.array([0.4, 0.45, 0.3], dtype=np.float32),
        title=None,
        chunk_sims=None,
        bm25={},
        bm25_chunk={},
        stems=["hostpath", "provision", "not", "avail"],
    )
    docs = np.arange(3)
    _, ranks = candidates(sig)
    x = features(sig, docs, ranks, stats)
    idf = {s: stats.idf(s) for s in ("hostpath", "provision", "not", "avail", "hpp", "readi", "cdi")}
    total = idf["hostpath"] + idf["provision"] + idf["not"] + idf["avail"]
    ready, down, cdi = (dict(zip(FEATURES, r.tolist(), strict=True)) for r in x)
    assert ready["query_in_title"] == pytest.approx((idf["hostpath"] + idf["provision"] + idf["not"]) / total)
    assert down["query_in_title"] == pytest.approx((idf["hostpath"] + idf["provision"]) / total)
    assert cdi["query_in_title"] == pytest.approx(idf["not"] / total)
    # Of the title, the query says HPP (in full) and "not"; the short form weighs as itself, once.
    title_mass = idf["hpp"] + idf["not"] + idf["readi"]
    assert ready["title_in_query"] == pytest.approx((idf["hpp"] + idf["not"]) / title_mass)
    assert ready["coverage"] == pytest.approx(ready["query_in_title"])
    # Read out, HPPNotReady is "hostpath provisioner not ready": the query's three words stand as in it.
    assert ready["title_phrase"] == pytest.approx((idf["hostpath"] + idf["provision"] + idf["not"]) / total)
    assert down["title_phrase"] == pytest.approx((idf["hostpath"] + idf["provision"]) / total)
    # Said as the short form, the title is held whole, as before.
    sig.stems = ["hpp", "not", "readi"]
    short = dict(zip(FEATURES, features(sig, docs, ranks, stats)[0].tolist(), strict=True))
    assert short["title_in_query"] == pytest.approx(1.0) and short["query_in_title"] == pytest.approx(1.0)


def test_a_short_forms_words_count_only_when_the_query_says_all_of_them() -> None:
    # HPPSharingPoolPathWithOS spells OS "operating system", whose first word stems as "operator" does: a question
    # about an operator is not one about its operating system.
    stats = CorpusStats(
        chunks=100,
        term_chunks={"oper": 40, "system": 10, "virt": 30, "down": 20, "os": 3, "share": 5},
        title_terms=[("share", "os"), ("virt", "oper", "down")],
        title_aliases=[{"os": ("oper", "system")}, {}],
    )
    sig = Signals(section=np.array([0.3, 0.5], dtype=np.float32), title=None, chunk_sims=None, bm25={}, bm25_chunk={})
    docs = np.arange(2)
    _, ranks = candidates(sig)
    sig.stems = ["virt", "oper", "down"]
    x = dict(zip(FEATURES, features(sig, docs, ranks, stats)[0].tolist(), strict=True))
    assert x["query_in_title"] == 0 and x["coverage"] == 0 and x["title_in_query"] == 0
    # Nor are two words standing together in the title when one of them is half of "operating system".
    siblings = CorpusStats(
        chunks=100,
        term_chunks={"oper": 40, "system": 10, "not": 30, "readi": 20, "os": 3, "node": 5},
        title_terms=[("os", "not", "readi"), ("node", "not", "readi")],
        title_aliases=[{"os": ("oper", "system")}, {}],
    )
    sig.stems = ["system", "not", "readi"]
    phrase = features(sig, docs, ranks, siblings)[:, FEATURES.index("title_phrase")]
    assert phrase[0] == pytest.approx(phrase[1])
    sig.stems = ["oper", "system", "share"]  # "operating system" said in full
    x = dict(zip(FEATURES, features(sig, docs, ranks, stats)[0].tolist(), strict=True))
    assert x["query_in_title"] == pytest.approx(1.0) and x["title_in_query"] == pytest.approx(1.0)


def test_fusion_is_reciprocal_rank_with_a_missing_rank_counted_last() -> None:
    ranks = {"section": {0: 0, 1: 1}, "bm25": {1: 0}}
    assert fuse(np.array([0, 1]), ranks).tolist() == pytest.approx([1 / 61 + 1 / (61 + CANDIDATES), 1 / 62 + 1 / 61])


def examples(seed: int, n: int = 120, informative: bool = True) -> list[Example]:
    rng = np.random.default_rng(seed)
    out = []
    for q in range(n):
        x = rng.random((20, len(FEATURES))).astype(np.float32)
        y = np.zeros(20, dtype=np.float32)
        y[0] = 1.0
        if informative:
            x[0, FEATURES.index("section_cos")] += 0.5  # the answer is the closest in meaning, whatever the ranks
        ranks = rng.permutation(20)[:, None] * np.ones((1, 3)) / 20  # the same shuffled rank in every list
        x[:, [FEATURES.index(f) for f in ("section_rank", "title_rank", "bm25_rank")]] = ranks
        out.append(Example(x, y, 1.0, f"doc{q % 40}"))
    return out


def test_the_exported_trees_score_exactly_as_scikit_learn_and_survive_storage() -> None:
    data = examples(1)
    model = _boost(data, 50, seed=0)
    exported = _export(model)
    x = np.vstack([e.x for e in data[:10]])
    assert model.tops  # the features were binned before scikit-learn saw them, as it scores them
    assert exported.score(x) == pytest.approx(model.decision_function(binned(x, model.tops)), abs=1e-9)
    stored = RankerModel.from_dict(exported.to_dict())
    assert stored is not None and stored.score(x) == pytest.approx(exported.score(x))
    assert exported.trees == 50 and exported.depth <= 6
    assert RankerModel.from_dict({**exported.to_dict(), "features": ["section_cos"]}) is None  # other features
    assert RankerModel.from_dict({}) is None


def test_the_model_is_monotone_in_the_evidence_for_a_document() -> None:
    model, report = fit(examples(2))
    assert model is not None and report["held_back_mrr"] > report["held_back_mrr_fused"]
    base = np.full((1, len(FEATURES)), 0.5, dtype=np.float32)
    for i, direction in enumerate(MONOTONE):
        if direction:
            low, high = base.copy(), base.copy()
            low[0, i], high[0, i] = 0.0, 1.0
            assert direction * (model.score(high)[0] - model.score(low)[0]) >= 0, FEATURES[i]


def test_when_learning_does_no_better_than_fusion_on_held_back_queries_fusion_is_kept() -> None:
    data = examples(3, informative=False)
    for e in data:  # the answer is first in every ranking: nothing beats fusion
        e.x[:, [FEATURES.index(f) for f in ("section_rank", "title_rank", "bm25_rank")]] = 0.5
        e.x[0, [FEATURES.index(f) for f in ("section_rank", "title_rank", "bm25_rank")]] = 0.0
    model, report = fit(data)
    assert model is None and report["trees"] == 0
    assert report["held_back_mrr_fused"] == 1.0
