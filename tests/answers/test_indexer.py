"""Incremental indexing: only new or changed text is embedded, nothing is lost to a broken file."""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from bot.answers.incident_vectors import incident_text, incident_vector_hash
from bot.answers.indexer import INDEX_FORMAT, build_chunks, index_incident, index_knowledge, title_embed_text
from bot.answers.search import SearchIndex
from bot.answers.training import encoded_form, training_queries
from bot.errors import InvalidRequest
from bot.knowledge import load_knowledge
from bot.models import Incident
from bot.ops.incidents import IncidentService
from bot.record_files import incident_document
from bot.store import SLACK_PREFIX, IndexBusy, Store, migrations
from tests.conftest import FakeEncoder

POOL_RUNBOOK = """---
title: Connection pool exhausted
services: [checkout-api]
tags: [postgres, pgbouncer]
---
# Connection pool exhausted

PgbouncerPoolExhausted fires when clients wait more than two seconds for a server connection.

## Diagnosis

Run SHOW POOLS on the pgbouncer admin console and look at cl_waiting.

## Fix

Raise default_pool_size for the checkout database and reload pgbouncer.

## Escalate

Page the database on-call if waiting clients keep growing.
"""

LAG_RUNBOOK = """# Kafka consumer lag

KafkaConsumerLagHigh means consumers fall behind producers.

## Scale out

Add consumer replicas up to the partition count.
"""

INCIDENT = """id: INC-2025-0042
title: Checkout 502s after gateway deploy
date: 2025-04-12T19:42:00Z
severity: 2
services: [checkout-api]
responders: [U03F8K2LQ1]
summary: Checkout returned 502s for 38 minutes.
root_cause: The gateway build exhausted its connection pool.
resolution: Rolled back to 1.4.1.
"""

INCIDENT_MD = """---
id: INC-2026-0007
title: Login failures after JWT key rotation
date: 2026-03-01T08:15:00Z
severity: 1
services: [auth-service]
responders: [U04C2RN8VD]
---
## Summary
Nobody could log in for 20 minutes.

## Root cause
The new key was used before it was published.

## Resolution
Re-published the JWKS.
"""

ROSTER = """people:
  - id: U03F8K2LQ1
    name: Priya Raman
    team: payments
  - id: U04C2RN8VD
    name: Daniel Okafor
    team: platform
"""

POOL = "runbooks/postgres/pool.md"
LAG = "runbooks/kafka/lag.md"
INC_YAML = "incidents/2025/INC-2025-0042.yaml"
INC_MD = "incidents/2026/INC-2026-0007.md"


def write(root: Path, rel: str, text: str) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


@pytest.fixture
def knowledge(tmp_path: Path) -> Path:
    root = tmp_path / "knowledge"
    write(root, POOL, POOL_RUNBOOK)
    write(root, LAG, LAG_RUNBOOK)
    write(root, INC_YAML, INCIDENT)
    write(root, INC_MD, INCIDENT_MD)
    write(root, "experts.yaml", ROSTER)
    return root


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    store = Store(tmp_path / "index.db")
    yield store
    store.close()


def expected_texts(root: Path) -> set[str]:
    """Every text an index of ``root`` needs a vector for: each title, each chunk, each incident (for experts),
    and the queries the ranker is fitted on."""
    kb = load_knowledge(root)
    texts = {title_embed_text(d) for d in kb.documents}
    texts |= {to_embed for d in kb.documents for _, to_embed in build_chunks(d)}
    texts |= {incident_text(i) for i in kb.incidents}
    return texts | query_texts(root)


def query_texts(root: Path, section: str | None = None) -> set[str]:
    """What the encoder sees of the ranker's training queries (those made from one section, if given)."""
    queries = training_queries(load_knowledge(root).documents)
    return {encoded_form(q.text) for q in queries if section is None or q.section == section}


def chunk_texts(store: Store, path: str) -> list[str]:
    return [r[0] for r in store.db.execute("SELECT text FROM chunks WHERE doc_path = ? ORDER BY ord", [path])]


def table_count(store: Store, table: str) -> int:
    return store.db.execute(f"SELECT count(*) FROM {table}").fetchone()[0]


def test_first_index_embeds_everything(store: Store, knowledge: Path, fake_encoder: FakeEncoder) -> None:
    report = index_knowledge(store, fake_encoder, knowledge)

    expected = expected_texts(knowledge)
    assert sorted(set(fake_encoder.encoded)) == sorted(expected)
    assert len(fake_encoder.encoded) == len(expected)  # nothing twice
    for phrase in ("cl_waiting", "Raise default_pool_size", "Add consumer replicas", "Re-published the JWKS"):
        assert any(phrase in text for text in fake_encoder.encoded), phrase
    assert "Connection pool exhausted" in fake_encoder.encoded
    assert report.problems == []
    assert (report.runbooks, report.incidents, report.experts) == (2, 2, 2)
    assert (report.added, report.updated, report.unchanged, report.removed) == (4, 0, 0, 0)
    assert report.embedded == len(expected)
    assert report.reused == 0
    assert set(store.document_hashes()) == {POOL, LAG, INC_YAML, INC_MD}
    assert store.counts() == {"runbook": 2, "incident": 2, "chunks": 12}
    assert table_count(store, "chunks_fts") == 12
    assert table_count(store, "embeddings") == len(expected)
    assert store.get_meta("model") == "fake-encoder"


def test_second_run_embeds_nothing(store: Store, knowledge: Path, fake_encoder: FakeEncoder) -> None:
    index_knowledge(store, fake_encoder, knowledge)
    fake_encoder.calls.clear()

    report = index_knowledge(store, fake_encoder, knowledge)

    assert fake_encoder.calls == []
    assert (report.added, report.updated, report.unchanged, report.removed, report.embedded) == (0, 0, 4, 0, 0)
    assert store.counts() == {"runbook": 2, "incident": 2, "chunks": 12}


def test_editing_one_section_reembeds_only_that_section(
    store: Store, knowledge: Path, fake_encoder: FakeEncoder
) -> None:
    index_knowledge(store, fake_encoder, knowledge)
    before = {r[0]: r[1] for r in store.db.execute("SELECT heading, embed_hash FROM chunks WHERE doc_path = ?", [POOL])}
    fake_encoder.calls.clear()
    edited = POOL_RUNBOOK.replace("and reload pgbouncer.", "and run RELOAD on the pgbouncer admin console.")
    write(knowledge, POOL, edited)

    report = index_knowledge(store, fake_encoder, knowledge)

    text, *queries = fake_encoder.encoded
    assert text.startswith("Connection pool exhausted. Fix.\n")
    assert "run RELOAD on the pgbouncer admin console" in text
    # ... and the ranker's queries made from that section, none from the others
    assert queries and set(queries) <= query_texts(knowledge, "Fix")
    assert (report.updated, report.unchanged, report.embedded) == (1, 3, 1 + len(queries))
    after = {r[0]: r[1] for r in store.db.execute("SELECT heading, embed_hash FROM chunks WHERE doc_path = ?", [POOL])}
    assert after.keys() == before.keys()
    assert {h for h in after if after[h] != before[h]} == {"Fix"}
    assert "Raise default_pool_size for the checkout database and run RELOAD on the pgbouncer admin console." in (
        chunk_texts(store, POOL)
    )
    # the old vector of the Fix section is no longer needed and is dropped
    assert table_count(store, "embeddings") == len(expected_texts(knowledge))


def test_adding_a_section_embeds_only_the_new_section(store: Store, knowledge: Path, fake_encoder: FakeEncoder) -> None:
    index_knowledge(store, fake_encoder, knowledge)
    fake_encoder.calls.clear()
    write(knowledge, POOL, POOL_RUNBOOK.replace("## Fix", "## Check clients\n\nCount connections per pod.\n\n## Fix"))

    index_knowledge(store, fake_encoder, knowledge)

    text, *queries = fake_encoder.encoded
    assert text == "Connection pool exhausted. Check clients.\nCount connections per pod."
    assert set(queries) <= query_texts(knowledge)  # sections after it get their turn of the ranker's queries
    assert len(chunk_texts(store, POOL)) == 5


def test_moving_a_file_reuses_its_vectors(store: Store, knowledge: Path, fake_encoder: FakeEncoder) -> None:
    index_knowledge(store, fake_encoder, knowledge)
    fake_encoder.calls.clear()
    (knowledge / "runbooks" / "streaming").mkdir()
    (knowledge / LAG).rename(knowledge / "runbooks/streaming/lag.md")

    report = index_knowledge(store, fake_encoder, knowledge)

    assert fake_encoder.calls == []
    assert (report.added, report.removed, report.reused) == (1, 1, 3)
    assert set(store.document_hashes()) == {POOL, "runbooks/streaming/lag.md", INC_YAML, INC_MD}


def test_removing_a_file_removes_its_document(store: Store, knowledge: Path, fake_encoder: FakeEncoder) -> None:
    index_knowledge(store, fake_encoder, knowledge)
    (knowledge / LAG).unlink()

    report = index_knowledge(store, fake_encoder, knowledge)

    assert report.removed == 1
    assert set(store.document_hashes()) == {POOL, INC_YAML, INC_MD}
    assert chunk_texts(store, LAG) == []
    assert table_count(store, "chunks_fts") == table_count(store, "chunks") == 10
    assert store.counts()["runbook"] == 1
    assert table_count(store, "embeddings") == len(expected_texts(knowledge))


def test_malformed_runbook_is_reported_and_its_document_kept(
    store: Store, knowledge: Path, fake_encoder: FakeEncoder
) -> None:
    index_knowledge(store, fake_encoder, knowledge)
    hashes = store.document_hashes()
    old_chunks = chunk_texts(store, POOL)
    embeddings = table_count(store, "embeddings")
    fake_encoder.calls.clear()
    write(knowledge, POOL, POOL_RUNBOOK.replace("tags: [postgres, pgbouncer]", "tags: [postgres, pgbouncer"))

    report = index_knowledge(store, fake_encoder, knowledge)

    assert [p.path for p in report.problems] == [POOL]
    assert report.problems[0].line is not None
    assert report.removed == 0
    assert store.document_hashes() == hashes
    assert chunk_texts(store, POOL) == old_chunks
    assert table_count(store, "embeddings") == embeddings
    assert fake_encoder.calls == []


def test_malformed_incident_keeps_its_stored_incident(store: Store, knowledge: Path, fake_encoder: FakeEncoder) -> None:
    index_knowledge(store, fake_encoder, knowledge)
    write(knowledge, INC_YAML, INCIDENT.replace("severity: 2", "severity: sev-two"))

    report = index_knowledge(store, fake_encoder, knowledge)

    assert [(p.path, p.line) for p in report.problems] == [(INC_YAML, 4)]
    assert store.incident_count() == 2
    assert INC_YAML in store.document_hashes()
    title = store.db.execute("SELECT title FROM incidents WHERE id = 'INC-2025-0042'").fetchone()[0]
    assert title == "Checkout 502s after gateway deploy"


def test_fixing_a_malformed_file_indexes_it_again(store: Store, knowledge: Path, fake_encoder: FakeEncoder) -> None:
    index_knowledge(store, fake_encoder, knowledge)
    write(knowledge, POOL, "---\ntitle: [broken\n---\nText.\n")
    index_knowledge(store, fake_encoder, knowledge)
    fixed = POOL_RUNBOOK.replace("Page the database on-call", "Page the DBA on-call")
    write(knowledge, POOL, fixed)
    fake_encoder.calls.clear()

    report = index_knowledge(store, fake_encoder, knowledge)

    assert report.problems == []
    assert report.updated == 1
    assert "Page the DBA on-call" in fake_encoder.encoded[0]
    assert set(fake_encoder.encoded[1:]) <= query_texts(knowledge, "Escalate")


def test_changing_the_model_reembeds_everything(store: Store, knowledge: Path, fake_encoder: FakeEncoder) -> None:
    index_knowledge(store, fake_encoder, knowledge)
    other = FakeEncoder(dim=32, model_id="fake-encoder-v2")

    report = index_knowledge(store, other, knowledge)

    assert sorted(set(other.encoded)) == sorted(expected_texts(knowledge))
    assert report.unchanged == 0 and report.updated == 4
    assert store.get_meta("model") == "fake-encoder-v2"
    ids, paths, matrix, _ = store.load_vectors("fake-encoder-v2")
    assert matrix.shape == (12, 32)
    assert set(paths) == {POOL, LAG, INC_YAML, INC_MD}

    other.calls.clear()
    index_knowledge(store, other, knowledge)
    assert other.calls == []


def test_kept_document_stays_searchable_after_a_model_change(
    store: Store, knowledge: Path, fake_encoder: FakeEncoder
) -> None:
    index_knowledge(store, fake_encoder, knowledge)
    write(knowledge, POOL, "---\ntitle: [broken\n---\nText.\n")
    other = FakeEncoder(model_id="fake-encoder-v2")

    index_knowledge(store, other, knowledge)

    _, paths, _, _ = store.load_vectors("fake-encoder-v2")
    assert POOL in paths


def test_experts_and_incidents_are_stored(store: Store, knowledge: Path, fake_encoder: FakeEncoder) -> None:
    index_knowledge(store, fake_encoder, knowledge)

    assert store.expert_count() == 2
    assert store.incident_count() == 2
    rows = {r[0]: r[1:] for r in store.db.execute("SELECT id, severity, path, responders FROM incidents")}
    assert rows == {
        "INC-2025-0042": (2, INC_YAML, '["U03F8K2LQ1"]'),
        "INC-2026-0007": (1, INC_MD, '["U04C2RN8VD"]'),
    }


def test_removed_incident_and_roster_entries_leave_the_store(
    store: Store, knowledge: Path, fake_encoder: FakeEncoder
) -> None:
    index_knowledge(store, fake_encoder, knowledge)
    (knowledge / INC_MD).unlink()
    write(knowledge, "experts.yaml", "\n".join(ROSTER.splitlines()[:4]) + "\n")

    index_knowledge(store, fake_encoder, knowledge)

    assert store.incident_count() == 1
    assert store.expert_count() == 1
    (knowledge / "experts.yaml").unlink()
    index_knowledge(store, fake_encoder, knowledge)
    assert store.expert_count() == 0


def test_broken_roster_keeps_the_stored_experts(store: Store, knowledge: Path, fake_encoder: FakeEncoder) -> None:
    index_knowledge(store, fake_encoder, knowledge)
    write(knowledge, "experts.yaml", "people:\n  - id: U03F8K2LQ1\n    name: [Priya\n")

    report = index_knowledge(store, fake_encoder, knowledge)

    assert [p.path for p in report.problems] == ["experts.yaml"]
    assert store.expert_count() == 2


def test_emptied_roster_clears_the_stored_experts(store: Store, knowledge: Path, fake_encoder: FakeEncoder) -> None:
    index_knowledge(store, fake_encoder, knowledge)
    write(knowledge, "experts.yaml", "people: []\n")

    report = index_knowledge(store, fake_encoder, knowledge)

    assert report.problems == []
    assert store.expert_count() == 0


def test_missing_knowledge_directory_is_an_invalid_request(
    store: Store, tmp_path: Path, fake_encoder: FakeEncoder
) -> None:
    with pytest.raises(InvalidRequest, match="does not exist"):
        index_knowledge(store, fake_encoder, tmp_path / "nowhere")
    assert fake_encoder.calls == []


def test_migrations_are_recorded_and_reopening_is_fine(
    tmp_path: Path, knowledge: Path, fake_encoder: FakeEncoder
) -> None:
    path = tmp_path / "reopen.db"
    store = Store(path)
    index_knowledge(store, fake_encoder, knowledge)
    applied = store.db.execute("SELECT migration_set, name, applied_at FROM _sqlite_migrations ORDER BY id").fetchall()
    assert migrations.pending(store.db) == []
    store.close()

    reopened = Store(path)
    try:
        again = reopened.db.execute(
            "SELECT migration_set, name, applied_at FROM _sqlite_migrations ORDER BY id"
        ).fetchall()
        names = [n for _, n, _ in applied]
        assert {s for s, _, _ in applied} == {"opsbot"}
        assert names[:2] == ["m001_knowledge", "m002_incidents_and_roster"]
        assert names == sorted(names) and all(re.fullmatch(r"m\d{3}_[a-z_]+", n) for n in names)
        assert names == [m.name for m in migrations.applied(reopened.db)]
        assert again == applied
        assert migrations.pending(reopened.db) == []
        assert reopened.counts() == {"runbook": 2, "incident": 2, "chunks": 12}
        assert reopened.expert_count() == 2
        fake_encoder.calls.clear()
        index_knowledge(reopened, fake_encoder, knowledge)
        assert fake_encoder.calls == []
    finally:
        reopened.close()


def test_an_older_database_learns_the_word_count_of_its_sections(
    tmp_path: Path, knowledge: Path, fake_encoder: FakeEncoder
) -> None:
    path = tmp_path / "old.db"
    store = Store(path)
    index_knowledge(store, fake_encoder, knowledge)
    # Put the database back to how migration 7 left it: no words column, m008 not applied.
    store.db.execute("ALTER TABLE chunks DROP COLUMN words")
    store.db.execute("DELETE FROM _sqlite_migrations WHERE name = 'm008_chunk_words'")
    store.db.conn.commit()
    store.close()

    reopened = Store(path)
    rows = reopened.db.execute("SELECT text, words FROM chunks").fetchall()
    assert rows and all(words == len(text.split()) for text, words in rows)
    _, _, _, words = reopened.load_vectors(fake_encoder.model_id)
    assert sorted(words) == sorted(w for _, w in rows)
    reopened.close()


def test_a_roster_change_alone_tells_running_bots_to_reload(
    store: Store, knowledge: Path, fake_encoder: FakeEncoder
) -> None:
    index_knowledge(store, fake_encoder, knowledge)
    version = store.get_meta("index_version")
    index_knowledge(store, fake_encoder, knowledge)
    assert store.get_meta("index_version") == version  # nothing changed: nothing to reload

    roster = (knowledge / "experts.yaml").read_text(encoding="utf-8")
    (knowledge / "experts.yaml").write_text(roster.replace("team: platform", "team: data"), encoding="utf-8")
    report = index_knowledge(store, fake_encoder, knowledge)
    assert report.embedded == 0
    assert store.get_meta("index_version") != version


def test_running_bots_are_told_to_reload_only_once_the_expert_blends_are_written(
    store: Store, knowledge: Path, fake_encoder: FakeEncoder, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Before, the index version changed first: a bot reloading in between kept the old blends until the next change.
    from bot.answers import indexer

    index_knowledge(store, fake_encoder, knowledge)
    version = store.get_meta("index_version")
    real, seen = indexer.refit_blends, []

    def blends_then_look(*args: object) -> object:
        seen.append(store.get_meta("index_version"))
        return real(*args)

    monkeypatch.setattr(indexer, "refit_blends", blends_then_look)
    write(knowledge, "runbooks/kube/job.md", "# KubeJobFailed\n\nThe job failed; read its pod's logs.\n")
    index_knowledge(store, fake_encoder, knowledge)
    assert len(seen) == 1 and store.get_meta("index_version") not in (version, seen[0])  # changed after them


def test_a_new_index_format_rewrites_documents_without_embedding_again(
    store: Store, knowledge: Path, fake_encoder: FakeEncoder
) -> None:
    write(knowledge, "runbooks/kube/job.md", "# KubeJobFailed\n\nThe job failed; read its pod's logs.\n")
    index_knowledge(store, fake_encoder, knowledge)
    # As an index written before alert routes existed would look:
    store.db.execute("UPDATE documents SET alerts = '[]'")
    store.set_meta("index_format", "1")
    fake_encoder.calls.clear()

    report = index_knowledge(store, fake_encoder, knowledge)

    assert report.updated == report.runbooks + report.incidents and report.embedded == 0
    assert fake_encoder.calls == []
    assert store.alert_routes() == {
        "kubejobfailed": ["runbooks/kube/job.md"],
        "inc-2025-0042": [INC_YAML],  # an incident answers to its id
        "inc-2026-0007": [INC_MD],
    }


def test_words_in_html_comments_are_not_searchable_and_an_older_index_is_rewritten(
    store: Store, knowledge: Path, fake_encoder: FakeEncoder
) -> None:
    write(knowledge, "runbooks/db.md", "# Pool full\n\nRaise max_connections. <!-- template: describe the zebra -->\n")
    index_knowledge(store, fake_encoder, knowledge)
    index = SearchIndex(store, fake_encoder)
    assert index.search("raise max_connections", mode="bm25").hits
    assert not index.search("zebra", mode="bm25").hits

    # An index written when comments were indexed has an older format: every document is read again.
    store.set_meta("index_format", "4")
    report = index_knowledge(store, fake_encoder, knowledge)

    assert report.updated == report.runbooks + report.incidents
    assert store.get_meta("index_format") == INDEX_FORMAT


def test_a_title_short_form_the_runbook_spells_out_is_stored_with_its_words_and_an_older_index_learns_them(
    store: Store, knowledge: Path, fake_encoder: FakeEncoder
) -> None:
    write(
        knowledge,
        "runbooks/hpp.md",
        "# HPPNotReady\n\n## Meaning\n\nThe hostpath provisioner (HPP) is not ready. A persistent volume (PV) waits.\n",
    )
    write(knowledge, "runbooks/cdi.md", "# CDINotReady\n\nThe importer is not ready.\n")
    index_knowledge(store, fake_encoder, knowledge)
    paths = ["runbooks/hpp.md", "runbooks/cdi.md"]
    # PV is spelled out too, but is not a word of the title; CDI is in a title, but its runbook never spells it out.
    assert store.title_words(paths)[1] == [{"hpp": ("hostpath", "provision")}, {}]
    docs = {d.path: d for d in load_knowledge(knowledge).documents}
    # The title's vector is made from the title as its reader knows it.
    assert title_embed_text(docs["runbooks/hpp.md"]) == "HPP (hostpath provisioner) Not Ready"
    assert title_embed_text(docs["runbooks/cdi.md"]) == "CDI Not Ready"
    index = SearchIndex(store, fake_encoder)  # what the ranker's features read
    assert index.stats.title_aliases[index.doc_index["runbooks/hpp.md"]] == {"hpp": ("hostpath", "provision")}

    # An index written before short forms were read has none: the new format reads every document again.
    store.db.execute("UPDATE documents SET title_aliases = '{}'")
    store.set_meta("index_format", "6")
    index_knowledge(store, fake_encoder, knowledge)
    assert store.title_words(paths)[1][0] == {"hpp": ("hostpath", "provision")}


def test_a_title_that_begins_with_a_short_form_or_says_a_word_in_small_letters(
    store: Store, knowledge: Path, fake_encoder: FakeEncoder
) -> None:
    write(knowledge, "runbooks/ssp.md", "# SSPDown\n\nThe scheduling, scale and performance (SSP) operator is down.\n")
    write(knowledge, "runbooks/it.md", "# Ask IT about it\n\nThe information technology (IT) desk helps.\n")
    write(knowledge, "runbooks/hpp.md", "# HPPNotReady\n\nThe hostpath provisioner (HPP) is not ready.\n")
    docs = {d.path: d for d in load_knowledge(knowledge).documents}
    # SSPDown has no small letter to end its acronym with: a defined short form at its start counts.
    assert title_embed_text(docs["runbooks/ssp.md"]) == "SSP (scheduling scale and performance) Down"
    # "it" in small letters is a word, not the short form IT.
    assert title_embed_text(docs["runbooks/it.md"]) == "Ask IT (information technology) about it"
    write(
        knowledge,
        "runbooks/cpu.md",
        "# CPUs throttled\n\nThe control plane (CP) and the VMIs of a virtual machine instance (VMI).\n",
    )
    docs = {d.path: d for d in load_knowledge(knowledge).documents}
    # A plural is its short form's, or nothing: CPUs is not the CP of a control plane.
    assert title_embed_text(docs["runbooks/cpu.md"]) == "CPUs throttled"
    index_knowledge(store, fake_encoder, knowledge)
    (ssp, hpp), aliases = store.title_words(["runbooks/ssp.md", "runbooks/hpp.md"])
    assert set(ssp) == {"sspdown", "ssp", "down"} and aliases[0] == {"ssp": ("schedul", "scale", "perform")}
    # HPPNotReady is split by its small letters; the identifier whole is not read as HPP and one word "NotReady".
    assert hpp == ("hppnotreadi", "hpp", "not", "readi") and aliases[1] == {"hpp": ("hostpath", "provision")}


def test_a_lost_title_vector_is_made_again_of_the_text_it_was_made_of(
    store: Store, knowledge: Path, fake_encoder: FakeEncoder
) -> None:
    write(knowledge, "runbooks/hpp.md", "# HPPNotReady\n\nThe hostpath provisioner (HPP) is not ready.\n")
    index_knowledge(store, fake_encoder, knowledge)
    title_hash = store.db.execute("SELECT title_hash FROM documents WHERE path = 'runbooks/hpp.md'").fetchone()[0]
    # As an older opsbot's overlapping runs leave it: the title's vector pruned.
    store.db.execute("DELETE FROM embeddings WHERE hash = ?", [title_hash])
    fake_encoder.calls.clear()
    index_knowledge(store, fake_encoder, knowledge)
    assert ["HPP (hostpath provisioner) Not Ready"] in fake_encoder.calls
    assert store.known_embeddings(fake_encoder.model_id, {title_hash: ""}) == {title_hash}

    # A title stored by an older opsbot without that text is not embedded under a hash of other words.
    store.db.execute("UPDATE documents SET title_embed = '' WHERE path = 'runbooks/hpp.md'")
    store.db.execute("DELETE FROM embeddings WHERE hash = ?", [title_hash])
    fake_encoder.calls.clear()
    index_knowledge(store, fake_encoder, knowledge)
    assert fake_encoder.calls == [] and not store.known_embeddings(fake_encoder.model_id, {title_hash: ""})


def test_a_new_index_format_reads_slack_incidents_again_and_refits_the_ranker(
    store: Store, knowledge: Path, fake_encoder: FakeEncoder
) -> None:
    index_knowledge(store, fake_encoder, knowledge)
    incident = Incident(
        id="INC-2026-0099",
        title="WMS outage at the Dublin warehouse",
        date=datetime(2026, 11, 2, tzinfo=UTC),
        severity=2,
        services=(),
        responders=("U0A",),
        summary="The warehouse management system (WMS) stopped taking stock movements.",
        root_cause="",
        resolution="Restarted the WMS bridge.",
        path=f"{SLACK_PREFIX}INC-2026-0099",
    )
    index_incident(store, fake_encoder, incident)
    index_knowledge(store, fake_encoder, knowledge)  # the ranker fitted with the incident
    path = incident.path
    assert store.title_words([path])[1] == [{"wm": ("warehous", "manag", "system")}]
    # As a database indexed by the previous format looks, with a ranker a running bot refitted on it since: its key
    # is that of today's documents.
    store.db.execute("UPDATE documents SET title_aliases = '{}', title_embed = ''")
    store.set_meta("index_format", "6")
    report = index_knowledge(store, fake_encoder, knowledge)

    assert store.title_words([path])[1] == [{"wm": ("warehous", "manag", "system")}]
    assert store.db.execute("SELECT title_embed FROM documents WHERE path = ?", [path]).fetchone()[0] == (
        "INC-2026-0099 WMS (warehouse management system) outage at the Dublin warehouse"
    )
    assert report.ranker is not None  # refitted, though no document's content changed


def test_a_database_at_m013_without_m012_gets_the_ranker_tables_on_opening(
    tmp_path: Path, knowledge: Path, fake_encoder: FakeEncoder
) -> None:
    path = tmp_path / "main.db"
    store = Store(path)
    # As a database migrated by a build without the learned ranker looks: m013 applied, m012 never.
    store.db.execute("ALTER TABLE documents DROP COLUMN title_terms")
    store.db.execute("DROP TABLE ranker_queries")
    store.db.execute("DROP TABLE rankers")
    store.db.execute("DELETE FROM _sqlite_migrations WHERE name = 'm012_learned_ranking'")
    store.db.conn.commit()
    assert "m013_roster_time" in {m.name for m in migrations.applied(store.db)}
    store.close()

    reopened = Store(path)
    try:
        assert migrations.applied(reopened.db)[-1].name == "m012_learned_ranking"
        assert migrations.pending(reopened.db) == []
        report = index_knowledge(reopened, fake_encoder, knowledge)
        assert report.runbooks == 2 and reopened.load_ranker(fake_encoder.model_id) is not None
    finally:
        reopened.close()


def test_an_incident_resolved_in_slack_keeps_its_vectors_when_another_process_prunes_meanwhile(
    store: Store, knowledge: Path, fake_encoder: FakeEncoder, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`opsbot index` in another process prunes vectors no section uses; the incident being indexed here (a resolve,
    or the catch-up at a start) must not lose the vectors it just stored to that."""
    index_knowledge(store, fake_encoder, knowledge)
    incidents = IncidentService(store, set())
    live = incidents.declare("Badge readers offline at the north gate", "UALICE0001")
    _, past = incidents.resolve(live, "UALICE0001", "Restarted the badge controller")
    other = Store(store.path)  # the other process's connection to the same file
    pruners: list[threading.Thread] = []
    save = store.save_embeddings

    def save_then_let_the_other_process_prune(model: str, vectors: dict) -> None:
        save(model, vectors)
        pruner = threading.Thread(target=other.prune_embeddings, args=(model,))
        pruner.start()
        pruner.join(2.0)  # it prunes at once, or waits for this write to end
        pruners.append(pruner)

    monkeypatch.setattr(store, "save_embeddings", save_then_let_the_other_process_prune)
    index_incident(store, fake_encoder, past)
    for pruner in pruners:
        pruner.join(60)
    other.close()

    _, paths, _, _ = store.load_vectors(fake_encoder.model_id)
    doc = f"slack:{past.id}"
    assert paths.count(doc) == len(build_chunks(incident_document(past, "")))  # every section has its vector
    assert store.known_embeddings(fake_encoder.model_id, [incident_vector_hash(past)])  # the expert model's too


def test_a_model_change_keeps_the_incident_of_a_broken_file(
    store: Store, knowledge: Path, fake_encoder: FakeEncoder
) -> None:
    index_knowledge(store, fake_encoder, knowledge)
    kept = next(i for i in load_knowledge(knowledge).incidents if i.path == INC_YAML)
    write(knowledge, INC_YAML, INCIDENT.replace("severity: 2", "severity: sev-two"))
    other = FakeEncoder(model_id="fake-encoder-v2")

    report = index_knowledge(store, other, knowledge)

    assert [p.path for p in report.problems] == [INC_YAML]
    assert {i.id for i in store.load_incidents()} == {"INC-2025-0042", "INC-2026-0007"}
    assert INC_YAML in store.document_hashes()
    assert store.known_embeddings("fake-encoder-v2", [incident_vector_hash(kept)])  # the expert model's vector too


def chunks_without_a_vector(store: Store, model: str) -> list[tuple[str, str]]:
    sql = (
        "SELECT c.doc_path, c.heading FROM chunks c WHERE NOT EXISTS "
        "(SELECT 1 FROM embeddings e WHERE e.hash = c.embed_hash AND e.model = ?)"
    )
    return [tuple(r) for r in store.db.execute(sql, [model]).fetchall()]


def test_a_second_index_run_is_refused_while_one_runs_and_leaves_no_section_without_a_vector(
    store: Store, knowledge: Path, fake_encoder: FakeEncoder, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Run B starts while run A has stored new vectors but not yet the sections that use them: B must not prune them."""
    index_knowledge(store, fake_encoder, knowledge)
    write(knowledge, LAG, LAG_RUNBOOK + "\n## Rollback\n\nRoll back the consumer deploy when lag began after it.\n")
    other = Store(store.path)  # the other process's connection to the same file
    refused: list[str] = []
    save = store.save_embeddings

    def save_then_let_another_run_start(model: str, vectors: dict) -> None:
        save(model, vectors)
        if not refused:
            with pytest.raises(IndexBusy) as caught:
                index_knowledge(other, FakeEncoder(), knowledge)
            refused.append(str(caught.value))

    monkeypatch.setattr(store, "save_embeddings", save_then_let_another_run_start)
    index_knowledge(store, fake_encoder, knowledge)
    other.close()

    assert "another `opsbot index`" in refused[0] and "run it again" in refused[0]
    assert chunks_without_a_vector(store, fake_encoder.model_id) == []
    assert index_knowledge(store, FakeEncoder(), knowledge).added == 0  # the lock is let go at the end of a run


def test_a_second_index_run_through_a_link_to_the_database_is_refused_too(store: Store, tmp_path: Path) -> None:
    # Before, the lock was named after the path given: a run through a link to the same file locked another file.
    link = tmp_path / "linked.db"
    link.symlink_to(store.path)
    other = Store(link)
    with store.index_lock():
        with pytest.raises(IndexBusy):
            with other.index_lock():
                pass
    other.close()


def test_an_index_run_embeds_sections_left_without_a_vector(
    store: Store, knowledge: Path, fake_encoder: FakeEncoder
) -> None:
    index_knowledge(store, fake_encoder, knowledge)
    hole = store.db.execute("SELECT embed_hash FROM chunks WHERE doc_path = ? ORDER BY ord", [LAG]).fetchone()[0]
    with store.transaction():
        store.db.execute("DELETE FROM embeddings WHERE hash = ?", [hole])
    fake_encoder.calls.clear()

    report = index_knowledge(store, fake_encoder, knowledge)

    assert report.unchanged == 4
    assert len(fake_encoder.encoded) == 1 and "Kafka consumer lag" in fake_encoder.encoded[0]
    assert chunks_without_a_vector(store, fake_encoder.model_id) == []


class OtherModel(FakeEncoder):
    """Another model with as many dimensions: the same words land elsewhere."""

    def encode(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        return super().encode([" ".join(f"b{word}" for word in text.split()) for text in texts], batch_size)


def test_a_model_change_embeds_the_votes_questions_again(knowledge: Path, store: Store) -> None:
    """A vote moves its document on the same question and is a label for the ranker, both through its question's
    vector; the old model's vector means nothing to the new model, even with as many dimensions. So are the votes
    a bot still on the old model records after the index changed model: the next run embeds them again."""
    first, second = FakeEncoder(model_id="model-a"), OtherModel(model_id="model-b")
    index_knowledge(store, first, knowledge)
    question, later = "checkout requests time out on the pgbouncer pool", "kafka consumers fall behind"
    old_bot = SearchIndex(store, first)
    store.record_feedback("ans-1", "U04C2RN8VD", question, POOL, 1, old_bot.embed_query(question), "model-a")

    index_knowledge(store, second, knowledge)
    new_bot = SearchIndex(store, second)
    assert [q for q, *_ in store.votes_for_training("model-b")] == [question]
    (stored,) = [vector for *_, vector in store.votes_for_training("model-b")]
    assert float(stored @ new_bot.embed_query(question)) == pytest.approx(1.0, abs=1e-5)

    store.record_feedback("ans-2", "U04C2RN8VD", later, LAG, 1, old_bot.embed_query(later), "model-a")
    assert [q for q, *_ in store.votes_for_training("model-b")] == [question]  # not mixed in by the new model
    index_knowledge(store, second, knowledge)
    vectors = {q: vector for q, _, _, vector in store.votes_for_training("model-b")}
    assert float(vectors[later] @ new_bot.embed_query(later)) == pytest.approx(1.0, abs=1e-5)
