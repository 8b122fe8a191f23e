"""The ranker is fitted on the corpus itself: its queries, when it refits, what it never reads, what votes do."""

from __future__ import annotations

import re
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from bot.answers import training
from bot.answers.indexer import index_knowledge
from bot.answers.search import SearchIndex
from bot.answers.training import make_queries, prose_sentences, training_queries
from bot.config import Settings
from bot.knowledge import load_knowledge
from bot.models import Document, Section
from bot.runtime import Runtime
from bot.store import Store
from bot.tools.evaluation import load_queries
from tests.conftest import SAMPLE_KNOWLEDGE, FakeEncoder, copy_database

RUNBOOK = Document(
    "runbooks/pg/pool.md",
    "runbook",
    "PgbouncerPoolExhausted",
    (
        Section("Meaning", "Clients wait for a server connection because every pool slot is taken. It hurts."),
        Section("Diagnosis", "Run SHOW POOLS on the admin console.\n\n```\nSHOW POOLS;\n```\n| a | b |\n|---|---|"),
        Section("Fix", "Raise default_pool_size for the database and reload pgbouncer."),
    ),
    "hash-1",
)


def test_a_document_gives_its_title_and_sentences_of_its_sections_the_same_every_time() -> None:
    queries = make_queries(RUNBOOK)
    assert queries == make_queries(RUNBOOK)
    assert queries[0].kind == "title" and queries[0].text == "PgbouncerPoolExhausted" and not queries[0].section
    assert len(queries) == 1 + training.QUERIES_PER_DOCUMENT
    assert {q.kind for q in queries[1:]} == {"sentence", "untitled", "fragment"}
    assert [q.section for q in queries[1:4]] == ["Meaning", "Diagnosis", "Fix"]  # dealt in turn, from the first
    for q in queries[1:]:
        assert 3 <= len(q.text.split()) <= 24
        assert "```" not in q.text and "|" not in q.text  # code and tables are not what people ask


def test_editing_a_section_changes_only_the_queries_made_from_it() -> None:
    sections = list(RUNBOOK.sections)
    sections[2] = Section("Fix", "Raise max_client_conn, then restart pgbouncer on every node in turn.")
    edited = Document(RUNBOOK.path, "runbook", RUNBOOK.title, tuple(sections), "hash-2")

    before, after = make_queries(RUNBOOK), make_queries(edited)

    changed = {b.section for b, a in zip(before, after, strict=True) if b != a}
    assert changed == {"Fix"}


def test_prose_sentences_leave_out_code_tables_and_markup() -> None:
    text = "Check the **pool** first. Then `SHOW POOLS` it.\n\n```bash\nkubectl get pods -n db\n```\n- ok\n| x | y |"
    assert prose_sentences(text) == [["Check", "the", "pool", "first."], ["Then", "SHOW", "POOLS", "it."]]


def test_a_large_corpus_is_sampled_to_the_budget() -> None:
    docs = [Document(f"runbooks/{i}.md", "runbook", f"Runbook {i}", RUNBOOK.sections, f"h{i}") for i in range(30)]
    sample = training_queries(docs, budget=50)
    assert len(sample) == 50 and sample == training_queries(docs, budget=50)
    assert len({q.doc_path for q in sample}) > 20

    # A document added changes the sample by its own queries at most. Before, the sample was drawn by position with
    # the count as its seed: nearly all of it changed, and had to be embedded again.
    added = Document("runbooks/new.md", "runbook", "Runbook new", RUNBOOK.sections, "hnew")
    after = training_queries([*docs, added], budget=50)
    assert len(after) == 50 and len(set(after) - set(sample)) <= 2  # its queries in, as many others out


# -- when the ranker is fitted ---------------------------------------------------------


@pytest.fixture
def knowledge(tmp_path: Path) -> Path:
    root = tmp_path / "knowledge"
    for name in ("disk", "memory", "network", "certificates", "queues", "locks"):
        path = root / "runbooks" / f"{name}.md"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(
            f"# {name.title()} trouble\n\n## Meaning\n\nThe {name} of a node is in trouble and services slow down. "
            f"Nobody should ignore {name} alerts at night.\n\n## Fix\n\nLook at the {name} dashboard, then restart "
            f"the {name} agent on the node.\n",
            encoding="utf-8",
        )
    return root


@pytest.fixture
def fits(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the fits, each with how many examples it had."""
    calls: list[int] = []
    real = training.fit

    def counted(examples: list[training.Example], seed: int = 0, stop: threading.Event | None = None) -> tuple:
        calls.append(len(examples))
        return real(examples, seed, stop)

    monkeypatch.setattr(training, "fit", counted)
    return calls


def test_the_ranker_is_fitted_when_the_corpus_changes_and_not_otherwise(
    tmp_path: Path, knowledge: Path, fake_encoder: FakeEncoder, fits: list[int]
) -> None:
    store = Store(tmp_path / "index.db")
    first = index_knowledge(store, fake_encoder, knowledge)
    assert len(fits) == 1 and first.ranker and first.ranker["examples"] == fits[0]
    key, params, report = store.load_ranker(fake_encoder.model_id)
    assert params["features"] and report["held_back_documents"] >= 1

    again = index_knowledge(store, fake_encoder, knowledge)  # nothing changed
    assert len(fits) == 1 and again.ranker is None
    assert store.load_ranker(fake_encoder.model_id)[0] == key

    (knowledge / "runbooks" / "disk.md").write_text("# Disk trouble\n\nThe disk is full. Delete old logs.\n")
    index_knowledge(store, fake_encoder, knowledge)
    assert len(fits) == 2
    assert store.load_ranker(fake_encoder.model_id)[0] != key

    (knowledge / "runbooks" / "locks.md").unlink()
    index_knowledge(store, fake_encoder, knowledge)
    assert len(fits) == 3

    store.record_feedback("a1", "U1", "node slow at night", "runbooks/memory.md", 1, fake_encoder.encode(["x"])[0])
    index_knowledge(store, fake_encoder, knowledge)  # a vote since the last fit is part of what it learns from
    assert len(fits) == 4 and store.load_ranker(fake_encoder.model_id)[2]["votes"] == 1
    index_knowledge(store, fake_encoder, knowledge)
    assert len(fits) == 4
    store.close()


def test_a_refit_after_votes_never_stores_a_ranker_of_documents_changed_meanwhile(
    tmp_path: Path, knowledge: Path, fake_encoder: FakeEncoder, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Before, the bot's refit after a vote, started before `opsbot index` changed a runbook and fitted anew, saved
    # its own result over the index run's: a ranker of runbooks that no longer exist, used until the next run.
    store = Store(tmp_path / "index.db")
    index_knowledge(store, fake_encoder, knowledge)
    store.record_feedback("a1", "U1", "node slow at night", "runbooks/memory.md", 1, fake_encoder.encode(["x"])[0])
    real = training.fit
    other = Store(tmp_path / "index.db")  # the index run, in another process

    def index_run_meanwhile(examples: list[training.Example], seed: int = 0, stop: object = None) -> tuple:
        (knowledge / "runbooks" / "disk.md").write_text("# Disk trouble\n\nThe disk is full. Delete old logs.\n")
        monkeypatch.setattr(training, "fit", real)
        index_knowledge(other, fake_encoder, knowledge)
        return real(examples, seed, stop)

    monkeypatch.setattr(training, "fit", index_run_meanwhile)
    report = training.fit_ranker(store, fake_encoder)

    assert report == {"skipped": "the documents changed during the fit"}
    assert store.load_ranker(fake_encoder.model_id)[0] == training.ranker_key(store, fake_encoder.model_id)
    assert index_knowledge(store, fake_encoder, knowledge).ranker is None  # current: nothing to fit again
    other.close()
    store.close()


def test_a_running_bot_loads_the_ranker_an_index_run_fitted(
    tmp_path: Path, knowledge: Path, fake_encoder: FakeEncoder
) -> None:
    store = Store(tmp_path / "index.db")
    index_knowledge(store, fake_encoder, knowledge)
    index = SearchIndex(store, fake_encoder)
    assert index.model is not None and index.model.trees == training.TREES
    assert index.search("restart the memory agent", k=3).hits[0].path == "runbooks/memory.md"
    store.close()


def test_a_corpus_too_small_to_learn_from_is_ranked_by_fusion(
    tmp_path: Path, knowledge: Path, fake_encoder: FakeEncoder, fits: list[int]
) -> None:
    for name in ("memory", "network", "certificates", "queues"):
        (knowledge / "runbooks" / f"{name}.md").unlink()
    store = Store(tmp_path / "index.db")
    report = index_knowledge(store, fake_encoder, knowledge)
    assert fits == [] and report.ranker == {"skipped": 2}
    index = SearchIndex(store, fake_encoder)
    assert index.model is None
    assert index.search("disk dashboard", k=2).hits[0].path == "runbooks/disk.md"
    store.close()


def test_a_query_whose_words_another_document_holds_as_they_stand_is_not_a_label(
    tmp_path: Path, knowledge: Path, fake_encoder: FakeEncoder
) -> None:
    # Sibling runbooks copied from one another share a section word for word (here with other case and
    # punctuation). A sentence of it answers both: labelling only its own runbook would teach the ranker that
    # a passage quoted exactly points elsewhere.
    shared = (
        "A full disk stops every write on the node; databases crash, logs are lost and pods are evicted. "
        "Expect pages from every team that runs there."
    )
    meanings = {
        "filling": "predicts from the trend that the disk fills within hours",
        "almost-full": "fires at a fixed threshold of free space left",
    }
    for name, meaning in meanings.items():
        (knowledge / "runbooks" / f"disk-{name}.md").write_text(
            f"# Disk {name}\n\n## Meaning\n\nThis alert {meaning}.\n\n## Impact\n\n"
            + (shared if name == "filling" else shared.upper().replace(";", " -"))
            + "\n",
            encoding="utf-8",
        )
    store = Store(tmp_path / "index.db")
    index_knowledge(store, fake_encoder, knowledge)

    def words(text: str) -> str:
        return " ".join(re.findall(r"[a-z0-9]+", text.lower()))

    docs = {d.path: d for d in load_knowledge(knowledge).documents}
    made = [q for path in docs if path.startswith("runbooks/disk-") for q in make_queries(docs[path])]
    quoted = {q.text for q in made if q.section == "Impact" and words(q.text) in words(shared)}
    stored = store.ranker_queries()
    assert quoted  # the shared section gives queries of its words as they stand ...
    assert not quoted & {text for *_, text, _ in stored}  # ... and none of them is kept to learn from
    own = {(q.doc_path, q.text) for q in made if q.section == "Meaning"}
    assert own and own <= {(path, text) for path, _, _, text, _ in stored}  # what one runbook alone says is
    assert len(stored) < len([q for d in docs.values() for q in make_queries(d)])
    store.close()


def test_a_query_from_a_section_is_searched_with_and_without_it_reading_the_index_once(
    tmp_path: Path, knowledge: Path, fake_encoder: FakeEncoder, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = Store(tmp_path / "index.db")
    index_knowledge(store, fake_encoder, knowledge)
    index = SearchIndex(store, fake_encoder)
    rows = store.ranker_queries()
    vectors = store.vectors_for(fake_encoder.model_id, [h for *_, h in rows])
    queries = [(row, vectors[row[-1]]) for row in rows]
    searched: list[tuple[str, frozenset[int]]] = []
    lookups: list[str] = []
    signals, keyword_chunks = index.signals, index._keyword_chunks

    def spy(text: str, mode: str, vector: object, hidden: frozenset[int], found: dict | None = None) -> tuple:
        searched.append((text, hidden))
        return signals(text, mode, vector, hidden, found)

    def looked_up(words: list[str], stems: list[str]) -> list:
        lookups.append(" ".join(words))
        return keyword_chunks(words, stems)

    monkeypatch.setattr(index, "signals", spy)
    monkeypatch.setattr(index, "_keyword_chunks", looked_up)
    examples = training.build_examples(index, queries, [])

    sectioned = [row for row, _ in queries if row[1]]
    assert sectioned and len(sectioned) < len(queries)  # sections' sentences, and titles
    assert len(examples) == len(queries) + len(sectioned)
    expected = []
    for path, section, _, text, _ in (row for row, _ in queries):
        expected.append((text, frozenset()))
        if section:  # searched as it stands, then without its own section
            own = frozenset(index.section_positions(index.doc_index[path])[section])
            assert own
            expected.append((text, own))
    assert searched == expected
    assert sum(e.weight for e in examples) == 2 * len(queries)  # each query weighs the same, searched once or twice
    assert len(lookups) == len(queries)  # the second search reuses the first's full-text results ...
    monkeypatch.undo()
    for e, (text, hidden), (row, vector) in zip(
        examples, searched, [q for q in queries for _ in range(2 if q[0][1] else 1)], strict=True
    ):  # ... and finds what a search of its own finds
        fresh = training.example(
            lambda t, v, h: index.signals(t, "hybrid", v, h)[1],
            index.stats,
            text,
            vector,
            index.doc_index[row[0]],
            e.weight,
            row[0],
            hidden=hidden,
        )
        assert text == row[3] and (fresh.x == e.x).all() and (fresh.y == e.y).all()
    store.close()


@pytest.fixture
def opened() -> Iterator[list[str]]:
    """Every file the process opens while the test runs (Python's audit events)."""
    paths: list[str] = []
    active = [True]

    def hook(event: str, args: tuple) -> None:
        if active[0] and event == "open" and isinstance(args[0], (str, bytes, Path)):
            paths.append(str(args[0]))

    sys.addaudithook(hook)  # hooks cannot be removed; this one falls silent after the test
    yield paths
    active[0] = False


def test_indexing_never_opens_a_query_file(
    tmp_path: Path, knowledge: Path, fake_encoder: FakeEncoder, fits: list[int], opened: list[str]
) -> None:
    (knowledge / "eval").mkdir()
    (knowledge / "eval" / "queries.jsonl").write_text('{"query": "disk full", "relevant": ["runbooks/disk.md"]}\n')
    (knowledge / "queries.jsonl").write_text('{"query": "disk full", "relevant": ["runbooks/disk.md"]}\n')
    store = Store(tmp_path / "index.db")
    opened.clear()  # what the test itself wrote

    index_knowledge(store, fake_encoder, knowledge)

    assert fits  # the ranker was fitted in this run ...
    assert any(p.endswith("disk.md") for p in opened)  # ... the hook saw the runbooks being read ...
    assert not [p for p in opened if p.endswith(".jsonl")]  # ... and no query file
    store.close()


# -- votes are labels --------------------------------------------------------------------


def votes_on(
    tmp_path: Path,
    sample_index: Store,
    minilm,
    voted: list,
    others: list,  # noqa: ANN001
) -> tuple[list[float], list[float]]:
    """Reciprocal ranks of ``others`` before and after on-call people vote on the answers to ``voted``."""
    tmp_path.mkdir()
    store = copy_database(sample_index, tmp_path / "votes.db")
    settings = Settings(knowledge_dir=SAMPLE_KNOWLEDGE, db_path=tmp_path / "votes.db", model="unused")
    runtime = Runtime(settings, encoder=minilm, store=store)

    def reciprocal_ranks(index: SearchIndex) -> list[float]:
        ranks = []
        for q in others:
            paths = [h.path for h in index.search(q.query, k=10).hits]
            ranks.append(next((1 / (i + 1) for i, p in enumerate(paths) if p in q.relevant), 0.0))
        return ranks

    before = reciprocal_ranks(runtime.index())
    # People ask the questions of one set and vote on each answer's leading document. The refit that each
    # vote starts in the background is held back until the end: a refit landing in the middle of the loop
    # would change the later answers, and so the labels, from one run to the next.
    runtime.answers._on_vote = None
    for n, question in enumerate(voted):
        reply = runtime.answers.reply(question.query, channel="C0TEST", user=f"U{n:04d}")
        if reply.top is not None:
            runtime.answers.vote(reply.id, f"U{n:04d}", 1 if reply.top.path in question.relevant else -1)
    refit = runtime.refit_ranker()
    refit.join(timeout=300)

    assert store.load_ranker(minilm.model_id)[2]["votes"] == len(store.feedback_rows()) > len(voted) * 0.9
    learned = SearchIndex(store, minilm)
    learned.feedback_votes = learned.feedback_votes[:0]  # the ranker alone, without the memory of voted questions
    after = reciprocal_ranks(learned)
    runtime.close()
    return before, after


def test_votes_on_some_questions_raise_the_figures_on_other_questions(
    tmp_path: Path,
    sample_index: Store,
    minilm,  # noqa: ANN001
) -> None:
    # Both ways round, so that the verdict rests on every question the sample has: votes on the questions
    # and log lines of queries.jsonl, measured on the summaries and how-to questions; then the reverse.
    questions = load_queries(SAMPLE_KNOWLEDGE / "eval" / "queries.jsonl")
    rest = load_queries(SAMPLE_KNOWLEDGE / "eval" / "summaries.jsonl")
    rest += load_queries(SAMPLE_KNOWLEDGE / "eval" / "sections.jsonl")
    before, after = votes_on(tmp_path / "one", sample_index, minilm, questions, rest)
    back_before, back_after = votes_on(tmp_path / "two", sample_index, minilm, rest, questions)
    before, after = before + back_before, after + back_after

    raised = sum(a > b for a, b in zip(after, before, strict=True))
    lowered = sum(a < b for a, b in zip(after, before, strict=True))
    # MRR@10 over the questions not voted on, by at least two of them moving from second place to first, and more
    # of them answered better than worse. (The margin was 0.01 until a title vector of one incident, unrelated to
    # any of these questions, changed the fit enough to give 0.00999: a margin one refit's noise decides is not one.)
    assert sum(after) / len(after) >= sum(before) / len(before) + 0.005 and raised > lowered, (raised, lowered)
