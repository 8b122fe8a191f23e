"""Benchmarks on a seeded synthetic knowledge base: indexing speed and search latency."""

from __future__ import annotations

import random
import resource
import statistics
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

from bot.answers.encoder import SentenceTransformerEncoder
from bot.answers.indexer import (
    build_chunks,
    choose_training_queries,
    index_knowledge,
    title_embed_text,
    title_terms,
    training_rows,
)
from bot.answers.search import SearchIndex
from bot.answers.training import fit_ranker
from bot.models import Document, Section
from bot.store import Store
from bot.text import content_hash

SERVICES = "checkout payments inventory search orders routing auth notifications storefront ledger".split()
NOUNS = (
    "pool connection replica lag queue consumer broker partition certificate token session cache node pod "
    "container ingress gateway webhook deploy rollback latency error timeout memory disk volume index shard "
    "cluster job cron backup snapshot lock transaction query schema migration dns resolver route limit quota"
).split()
VERBS = (
    "fails spikes drops stalls grows restarts expires saturates degrades leaks throttles rejects retries "
    "evicts blocks times out crashes recovers floods"
).split()
FILLER = (
    "check the dashboard first then compare with the baseline before you restart anything and write what you "
    "saw in the incident channel so the next person knows where to look when it happens again"
).split()


@dataclass
class Timing:
    p50: float
    p95: float

    @classmethod
    def of(cls, samples: list[float]) -> Timing:
        ordered = sorted(samples)
        return cls(statistics.median(ordered), ordered[min(len(ordered) - 1, int(len(ordered) * 0.95))])


SYLLABLES = "ka lo mi re tu sa ve no pi da ri go le mo zu ta ne bi fo ru".split()


def _vocabulary(seed: int = 1, size: int = 6000) -> tuple[list[str], list[float]]:
    """Ops words plus made-up words, drawn with Zipf-like frequencies as in real text."""
    rng = random.Random(seed)
    made_up = {"".join(rng.choice(SYLLABLES) for _ in range(rng.randint(2, 4))) for _ in range(size)}
    words = FILLER + SERVICES + NOUNS + VERBS + sorted(made_up)
    weights = [1.0 / (rank + 1) ** 1.05 for rank in range(len(words))]
    return words, weights


WORDS, WEIGHTS = _vocabulary()


def synthetic_sentence(rng: random.Random, length: int = 14) -> str:
    words = rng.choices(WORDS, weights=WEIGHTS, k=length)
    return " ".join(words).capitalize() + "."


def synthetic_documents(n_chunks: int, seed: int = 7, sections: int = 4, sentences: int = 6) -> list[Document]:
    """Runbook-like documents totalling ``n_chunks`` sections, the same for the same seed."""
    rng = random.Random(seed)
    docs = []
    for d in range((n_chunks + sections - 1) // sections):
        service = rng.choice(SERVICES)
        title = f"{service} {rng.choice(NOUNS)} {rng.choice(VERBS)} ({d})"
        parts = tuple(
            Section(heading, " ".join(synthetic_sentence(rng) for _ in range(sentences)))
            for heading in ("Symptoms", "Diagnosis", "Mitigation", "Escalation")[:sections]
        )
        text = title + "".join(s.text for s in parts)
        docs.append(Document(f"runbooks/{service}/{d}.md", "runbook", title, parts, content_hash(text), (service,)))
    return docs


def fill_store(store: Store, docs: list[Document], model_id: str, dim: int, seed: int = 7) -> None:
    """Write documents with random unit vectors: search latency does not depend on what vectors mean."""
    rng = np.random.default_rng(seed)
    for doc in docs:
        rows = build_chunks(doc)
        hashes = [row.embed_hash for row, _ in rows] + [content_hash(title_embed_text(doc))]
        vectors = rng.standard_normal((len(hashes), dim)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        store.save_embeddings(model_id, dict(zip(hashes, vectors, strict=True)))
        store.replace_document(
            doc, hashes[-1], [row for row, _ in rows], *title_terms(store, doc), title_embed_text(doc)
        )


def store_training_queries(store: Store, docs: list[Document], encoder: object) -> tuple[float, float]:
    """Make the ranker's training queries for ``docs`` and embed them with ``encoder``; the seconds each took."""
    started = time.perf_counter()
    texts, rows = training_rows(choose_training_queries(store, docs))
    choose_s = time.perf_counter() - started
    started = time.perf_counter()
    vectors = encoder.encode(list(texts.values()))  # type: ignore[attr-defined]
    seconds = time.perf_counter() - started
    store.save_embeddings(encoder.model_id, dict(zip(texts, vectors, strict=True)))  # type: ignore[attr-defined]
    store.replace_ranker_queries(rows)
    return choose_s, seconds


def bench_fit(encoder: SentenceTransformerEncoder, documents: int = 1000) -> dict:
    """The ranker for a corpus of ``documents``: embedding its training queries, then fitting on them."""
    docs = synthetic_documents(documents * 4, seed=9)
    with tempfile.TemporaryDirectory(prefix="opsbot-bench-") as tmp:
        store = Store(Path(tmp) / "fit.db")
        fill_store(store, docs, encoder.model_id, encoder.dim)
        choose_s, embed_s = store_training_queries(store, docs, encoder)
        started = time.perf_counter()
        report = fit_ranker(store, encoder)
        fit_s = time.perf_counter() - started
        store.close()
    return {
        "documents": len(docs),
        "queries": report["queries"],
        "choose_queries_s": round(choose_s, 2),  # made, and those another document holds left out
        "embed_queries_s": round(embed_s, 2),
        "features_s": report["features_seconds"],
        "boost_s": report["seconds"],
        "fit_s": round(fit_s, 2),
        "held_back_mrr": report["held_back_mrr"],
        "held_back_mrr_fused": report["held_back_mrr_fused"],
    }


def _bench_ranker(model_id: str, dim: int) -> tuple[str, dict, dict]:
    """A ranker fitted on a small synthetic corpus (random query vectors): search pays for scoring with one."""
    with tempfile.TemporaryDirectory(prefix="opsbot-bench-") as tmp:
        store = Store(Path(tmp) / "ranker.db")
        docs = synthetic_documents(400, seed=13)
        fill_store(store, docs, model_id, dim)
        store_training_queries(store, docs, _RandomEncoder(model_id, dim))
        fit_ranker(store, _RandomEncoder(model_id, dim))
        stored = store.load_ranker(model_id)
        store.close()
    assert stored is not None
    return stored


def bench_search(encoder: SentenceTransformerEncoder, sizes: list[int], queries: int = 60) -> list[dict]:
    """p50/p95 of ``ask`` at each size, split into the query encode and everything else."""
    results = []
    rng = random.Random(11)
    questions = [synthetic_sentence(rng) for _ in range(queries)]
    dim = encoder.dim
    ranker = _bench_ranker(encoder.model_id, dim)
    for size in sizes:
        with tempfile.TemporaryDirectory(prefix="opsbot-bench-") as tmp:
            store = Store(Path(tmp) / "bench.db")
            fill_store(store, synthetic_documents(size), encoder.model_id, dim)
            store.save_ranker(encoder.model_id, *ranker)
            index = SearchIndex(store, encoder)
            assert index.model is not None, "the benchmark's ranker was not loaded"
            for q in questions[:5]:  # warm caches
                index.search(q)
            encode, rest, total = [], [], []
            for q in questions:
                started = time.perf_counter()
                answer = index.search(q)
                total.append((time.perf_counter() - started) * 1000)
                encode.append(answer.encode_ms)
                rest.append(answer.search_ms)
            results.append(
                {
                    "chunks": index.size,
                    "encode_ms": Timing.of(encode).__dict__,
                    "search_ms": Timing.of(rest).__dict__,
                    "total_ms": Timing.of(total).__dict__,
                    "index_memory_mb": round(index.memory_bytes() / 2**20, 1),
                    "db_mb": round(Path(store.path).stat().st_size / 2**20, 1),
                }
            )
            store.close()
    return results


def bench_index(encoder: SentenceTransformerEncoder, chunks: int = 400, reindex_docs: int = 1000) -> dict:
    """Indexing throughput against raw ``model.encode`` on the same texts, and a no-change re-index."""
    docs = synthetic_documents(chunks, seed=3, sentences=5)
    texts = [t for d in docs for _, t in build_chunks(d)] + [title_embed_text(d) for d in docs]
    encoder.load()
    encoder.encode(texts[:32])  # warm up
    started = time.perf_counter()
    encoder.encode(texts)
    raw = time.perf_counter() - started
    with tempfile.TemporaryDirectory(prefix="opsbot-bench-") as tmp:
        root = Path(tmp) / "kb"
        _write_runbooks(root, docs)
        store = Store(Path(tmp) / "index.db")
        report = index_knowledge(store, encoder, root)
        store.close()
        # A corpus of 1,000 documents, indexed once, then indexed again without changes.
        big = Path(tmp) / "big"
        big_docs = synthetic_documents(reindex_docs * 3, seed=5, sections=3, sentences=3)
        _write_runbooks(big, big_docs)
        store = Store(Path(tmp) / "big.db")
        index_knowledge(store, _RandomEncoder(encoder.model_id, encoder.dim), big)
        unloaded = encoder.clone()
        again = index_knowledge(store, unloaded, big)
        store.close()
    indexing = report.seconds - report.ranker_seconds
    return {
        "chunks": len(texts),
        "raw_encode_chunks_per_s": round(len(texts) / raw, 1),
        "index_chunks_per_s": round(len(texts) / indexing, 1),
        "ratio": round(raw / indexing, 3),
        "ranker_s": round(report.ranker_seconds, 2),  # its queries embedded and the fit, on top
        "ratio_with_ranker": round(raw / report.seconds, 3),
        "reindex_unchanged_docs": reindex_docs,
        "reindex_unchanged_s": round(again.seconds, 3),
        "reindex_loaded_model": unloaded.loaded,
    }


class _RandomEncoder:
    """Stands in for the model when only the unchanged re-index is being timed."""

    def __init__(self, model_id: str, dim: int) -> None:
        self.model_id, self.dim = model_id, dim
        self.rng = np.random.default_rng(1)

    def encode(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        v = self.rng.standard_normal((len(texts), self.dim)).astype(np.float32)
        return v / np.linalg.norm(v, axis=1, keepdims=True)


def _write_runbooks(root: Path, docs: list[Document]) -> None:
    for doc in docs:
        path = root / doc.path
        path.parent.mkdir(parents=True, exist_ok=True)
        body = "\n\n".join(f"## {s.heading}\n\n{s.text}" for s in doc.sections)
        path.write_text(f"# {doc.title}\n\n{body}\n", encoding="utf-8")


def peak_rss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


# Words per section of a synthetic incident: drawn so that the tokens the model reads match a real fix history
# (the development set's means: title 19, summary 45, root cause 40, resolution 106 tokens; a synthetic word
# is about 1.75 tokens).
INCIDENT_WORDS = {"title": (6, 12), "summary": (10, 38), "root_cause": (12, 30), "resolution": (40, 80)}


def synthetic_history(root: Path, incidents: int, people: int = 40, seed: int = 5) -> list[str]:
    """A knowledge directory of ``incidents`` incidents over about six years and a roster; the texts asked later.

    Each service has a few people who fix it, and they change every few hundred incidents (people move on),
    so the fitted half-life has something to find.
    """
    import yaml

    rng = random.Random(seed)
    ids = [f"U0BENCH{n:03d}" for n in range(people)]
    roster = [
        {
            "id": pid,
            "name": f"Person {n}",
            "team": SERVICES[n % len(SERVICES)],
            "services": [SERVICES[n % len(SERVICES)]],
        }
        for n, pid in enumerate(ids)
    ]
    roster[-1]["left"] = "2025-06-30"
    (root / "incidents").mkdir(parents=True, exist_ok=True)
    (root / "experts.yaml").write_text(yaml.safe_dump({"people": roster}, sort_keys=False), encoding="utf-8")
    start = datetime(2020, 1, 1, tzinfo=UTC)
    asked = []
    for n in range(incidents):
        service = rng.randrange(len(SERVICES))
        era = n * 5 // incidents  # five eras: who fixes a service changes between them
        pool = [ids[(service + len(SERVICES) * ((era + k) % 4)) % people] for k in range(2)]
        responders = [rng.choice(pool)] + ([rng.choice(ids)] if rng.random() < 0.3 else [])
        words = {k: rng.randint(*span) for k, span in INCIDENT_WORDS.items()}
        title = f"{SERVICES[service]} {synthetic_sentence(rng, words['title'])}"
        summary = " ".join(synthetic_sentence(rng, 12) for _ in range(max(1, words["summary"] // 12)))
        data = {
            "id": f"INC-{start.year + n * 6 // incidents}-{n:04d}",
            "title": title,
            "date": (start + timedelta(hours=35 * n)).isoformat(),
            "severity": rng.randint(1, 4),
            "services": [SERVICES[service]],
            "responders": list(dict.fromkeys(responders)),
            "summary": summary,
            "root_cause": synthetic_sentence(rng, words["root_cause"]),
            "resolution": synthetic_sentence(rng, words["resolution"]),
        }
        (root / "incidents" / f"{data['id']}.yaml").write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
        if n % 50 == 0:
            asked.append(f"{title}. {summary}")
    return asked


def bench_experts(encoder: SentenceTransformerEncoder, incidents: int = 1500) -> dict:
    """`opsbot index` of a history of ``incidents`` incidents (search sections, expert vectors and the fitted
    blend), an unchanged re-index, ranking, and a second `eval --task experts` run from its vector cache."""
    from bot.answers.expert_fit import fit_blends, load_model
    from bot.tools.expert_eval import evaluate_experts

    result: dict = {"incidents": incidents}
    with tempfile.TemporaryDirectory(prefix="opsbot-bench-") as tmp:
        root = Path(tmp) / "kb"
        asked = synthetic_history(root, incidents)
        encoder.load()
        # The model's own speed on a sample of the same texts, measured in the same conditions as the index.
        from bot.answers.incident_vectors import incident_text
        from bot.knowledge import load_knowledge

        kb = load_knowledge(root)
        sample = [t for d in kb.documents[:80] for _, t in build_chunks(d)] + [
            title_embed_text(d) for d in kb.documents[:80]
        ]
        sample += [incident_text(i) for i in kb.incidents[:80]]
        encoder.encode(sample[:32])
        started = time.perf_counter()
        encoder.encode(sample)
        result["raw_texts_per_s"] = round(len(sample) / (time.perf_counter() - started), 1)
        store = Store(Path(tmp) / "experts.db")
        report = index_knowledge(store, encoder, root)
        result["index_s"] = round(report.seconds, 1)
        result["embedded"] = report.embedded
        result["texts_per_s"] = round(report.embedded / report.seconds, 1)
        result["fit"] = report.experts_fit
        again = index_knowledge(store, encoder, root)
        result["reindex_unchanged_s"] = round(again.seconds, 2)
        model = load_model(store, encoder)
        started = time.perf_counter()
        fit_blends(model)
        result["fit_s"] = round(time.perf_counter() - started, 2)
        blend = model.blends.text
        result["half_life_days"] = blend.half_life_days
        samples = []
        for text in asked[:30]:
            vector = encoder.encode([text])[0]
            started = time.perf_counter()
            model.rank(text, vector)
            samples.append((time.perf_counter() - started) * 1000)
        result["rank_ms"] = Timing.of(samples).__dict__
        store.close()
        cache = Path(tmp) / "eval-cache.db"
        evaluate_experts(root, encoder, cache=cache)
        started = time.perf_counter()
        second = evaluate_experts(root, encoder, cache=cache)
        result["eval_second_run_s"] = round(time.perf_counter() - started, 2)
        result["eval_learned"] = second["rankings"]["learned"]
    return result
