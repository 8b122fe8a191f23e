"""Hybrid search on the shipped sample knowledge with the real MiniLM model."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from bot.answers.citing import make_snippet
from bot.answers.indexer import index_knowledge
from bot.answers.ranker import FEATURES, candidates, features
from bot.answers.replies import relevant_hits
from bot.answers.search import SearchIndex
from bot.config import Settings
from bot.errors import InvalidRequest
from bot.models import SearchHit
from bot.store import Store
from tests.conftest import FakeEncoder


@pytest.fixture(scope="module")
def index(sample_index: Store, minilm) -> SearchIndex:  # noqa: ANN001
    return SearchIndex(sample_index, minilm)


@pytest.mark.parametrize(
    ("question", "expected"),
    [
        ("FATAL: sorry, too many clients already", "runbooks/postgres/connection-pool-exhausted.md"),
        ("consumer group lag keeps growing on orders.placed", "runbooks/kafka/consumer-lag.md"),
        ("customers were charged twice for one order", "runbooks/payments-gateway/duplicate-charges.md"),
        ("x509: certificate has expired or is not yet valid", "runbooks/networking/tls-certificate-expiry.md"),
        ("how do I declare an incident and who is the incident commander", "runbooks/general/declaring-an-incident.md"),
        ("Waymark Maps returns HTTP 429 Too Many Requests", "runbooks/delivery-routing/maps-api-rate-limited.md"),
    ],
)
def test_the_right_runbook_comes_first(index: SearchIndex, question: str, expected: str) -> None:
    runbooks = [h.path for h in index.search(question, k=5).hits if h.kind == "runbook"]
    assert runbooks[0] == expected, runbooks


def test_a_pasted_alert_finds_the_past_incident_with_its_id(index: SearchIndex) -> None:
    answer = index.search("Paylane webhook deliveries failing: TLS handshake error, certificate expired", k=8)
    incidents = [h for h in answer.hits if h.kind == "incident"]
    assert "INC-2026-0011" in [h.incident_id for h in incidents]
    hit = next(h for h in incidents if h.incident_id == "INC-2026-0011")
    assert hit.path == "incidents/2026/INC-2026-0011.yaml"
    assert hit.citation.startswith("INC-2026-0011 § ")
    assert hit.section in ("Summary", "Root cause", "Resolution", "Timeline")


def test_hits_are_grouped_by_document_with_section_snippet_and_score(index: SearchIndex) -> None:
    answer = index.search("pgbouncer pool exhausted, checkout failing", k=6)
    paths = [h.path for h in answer.hits]
    assert len(paths) == len(set(paths)) == 6
    scores = [h.score for h in answer.hits]
    assert scores == sorted(scores, reverse=True)
    top = answer.hits[0]
    assert top.section and top.snippet and len(top.snippet) <= 245
    runbooks = [h.title for h in answer.hits if h.kind == "runbook"]  # past incidents of checkout failing so too
    assert runbooks[0] == "pgbouncer / Postgres connection pool exhausted"


def test_volatile_tokens_do_not_change_the_answer(index: SearchIndex) -> None:
    first = index.search(
        "pod checkout/checkout-api-7d9f8c6b5-x2kqp OOMKilled at 2026-03-02T08:15:00Z on 10.4.2.17, limit 512Mi"
    )
    second = index.search(
        "pod checkout/checkout-api-5c8b7d9f4-q7wzm OOMKilled at 2025-11-30T23:59:59Z on 10.9.0.3, limit 2Gi"
    )
    assert first.normalized_query == second.normalized_query
    assert [h.path for h in first.hits] == [h.path for h in second.hits]


def test_alert_names_are_spelled_out_for_the_encoder(index: SearchIndex) -> None:
    answer = index.search("KafkaConsumerGroupLagHigh")
    assert answer.normalized_query == "Kafka Consumer Group Lag High"
    assert answer.hits[0].path == "runbooks/kafka/consumer-lag.md"


@pytest.mark.parametrize("mode", ["dense", "bm25"])
def test_single_modes_answer_too(index: SearchIndex, mode: str) -> None:
    answer = index.search("redis evicting session keys, used_memory at maxmemory", mode=mode)
    assert answer.mode == mode
    assert "runbooks/redis/memory-and-evictions.md" in [h.path for h in answer.hits[:3]]
    if mode == "bm25":
        assert answer.encode_ms == 0.0


def test_bad_input_is_refused_with_a_clear_message(index: SearchIndex) -> None:
    with pytest.raises(InvalidRequest, match="empty"):
        index.search("   ")
    with pytest.raises(InvalidRequest, match="hybrid, dense, bm25"):
        index.search("pgbouncer", mode="fuzzy")


def test_a_query_of_only_stopwords_and_numbers_still_answers_by_meaning(index: SearchIndex) -> None:
    answer = index.search("it is 42 and 17 of them")
    assert answer.hits  # the dense side always has something to say; relevance is judged by the caller


# -- alert routing ---------------------------------------------------------------


def test_a_pasted_alert_gets_the_runbook_that_declares_it_first(index: SearchIndex) -> None:
    alert = "[FIRING:1] PostgresLockWaitsHigh pg-main (pg-main-0 checkout critical) 43 sessions waiting on locks"
    answer = index.search(alert, k=5)
    top = answer.hits[0]
    assert top.path == "runbooks/postgres/lock-contention.md"
    assert top.alert == "PostgresLockWaitsHigh"
    assert all(not h.alert for h in answer.hits[1:])
    # The name decides even when the words point elsewhere: the alert says which runbook its team wrote for it.
    mixed = index.search("KafkaConsumerLagHigh fired while pgbouncer said FATAL: sorry, too many clients already")
    assert mixed.hits[0].path == "runbooks/kafka/consumer-lag.md"
    assert "runbooks/postgres/connection-pool-exhausted.md" in [h.path for h in mixed.hits[1:4]]


def test_alert_routing_ignores_case_and_is_not_part_of_single_modes(index: SearchIndex) -> None:
    assert index.search("postgreslockwaitshigh on pg-main").hits[0].alert == "postgreslockwaitshigh"
    for mode in ("dense", "bm25"):
        assert not any(h.alert for h in index.search("PostgresLockWaitsHigh", mode=mode).hits)


# -- stub sections -----------------------------------------------------------------


def _runbooks_index(tmp_path: Path, encoder: FakeEncoder, runbooks: dict[str, str]) -> SearchIndex:
    """A knowledge directory of these runbooks (file name -> Markdown), indexed and loaded."""
    root = tmp_path / "knowledge" / "runbooks"
    root.mkdir(parents=True)
    for name, text in runbooks.items():
        (root / name).write_text(text, encoding="utf-8")
    store = Store(tmp_path / "search.db")
    index_knowledge(store, encoder, tmp_path / "knowledge")
    return SearchIndex(store, encoder)


def _stub_index(tmp_path: Path, encoder: FakeEncoder) -> SearchIndex:
    return _runbooks_index(
        tmp_path,
        encoder,
        {
            "disk-full.md": "# Disk full\n\n## Meaning\n\nThe volume crossed its static free space threshold and "
            "writes start failing.\n\n## Mitigation\n\nSee disk pressure.\n",
            "disk-pressure.md": "# Disk pressure\n\n## Meaning\n\nUsage grows steadily and the trend says the volume "
            "is full by morning.\n",
            "todo.md": "# Certificate rotation\n\nTo be written.\n",
        },
    )


def test_a_stub_section_neither_ranks_nor_is_cited(tmp_path: Path, fake_encoder: FakeEncoder) -> None:
    index = _stub_index(tmp_path, fake_encoder)
    query = "see disk pressure mitigation"
    _, sig = index.signals(query)
    full = index.doc_index["runbooks/disk-full.md"]
    start = int(index.doc_starts[full])
    meaning, mitigation = sig.chunk_sims[start], sig.chunk_sims[start + 1]
    assert mitigation > meaning  # the stub looks like the query: it repeats the title and a pointer
    assert sig.section[full] == pytest.approx(meaning)

    hit = next(h for h in index.search(query, k=3, mode="dense").hits if h.path == "runbooks/disk-full.md")
    assert hit.section == "Meaning"


def test_a_document_made_only_of_a_stub_is_still_found(tmp_path: Path, fake_encoder: FakeEncoder) -> None:
    index = _stub_index(tmp_path, fake_encoder)
    hits = index.search("certificate rotation", k=3, mode="dense").hits
    assert hits[0].path == "runbooks/todo.md"
    assert "To be written" in hits[0].snippet


# -- the whole query in one place ---------------------------------------------------


def _quoted_index(tmp_path: Path, encoder: FakeEncoder) -> SearchIndex:
    return _runbooks_index(
        tmp_path,
        encoder,
        {
            "scheduler-down.md": "# Scheduler down\n\n## Impact\n\nNew pods stay Pending until a scheduler is back."
            "\n\n## Meaning\n\nThe scheduler has disappeared from Prometheus target discovery, so nothing "
            "scrapes it.\n",
            "target-limit.md": "# Target limit hit\n\n## Meaning\n\nPrometheus dropped a target because the scrape "
            "config's limit was hit. The dropped target has not disappeared: it is still in service discovery, and "
            "shows there as dropped.\n",
        },
    )


def test_a_document_holding_the_whole_query_together_is_a_quote_and_cites_that_section(
    tmp_path: Path, fake_encoder: FakeEncoder
) -> None:
    index = _quoted_index(tmp_path, fake_encoder)
    scheduler = index.doc_index["runbooks/scheduler-down.md"]
    limit = index.doc_index["runbooks/target-limit.md"]
    query = "Target disappeared from Prometheus target discovery."
    _, sig = index.signals(query)
    # Both documents hold every word; only one holds them within the query's span of words.
    assert {scheduler, limit} <= set(sig.bm25)
    assert set(sig.whole) == {scheduler}
    docs, ranks = candidates(sig)
    quoted = features(sig, docs, ranks, index.stats)[:, FEATURES.index("quoted")]
    assert dict(zip(docs.tolist(), quoted.tolist(), strict=True)) == {scheduler: 1.0, limit: 0.0}

    hit = next(h for h in index.search(query, k=2).hits if h.path == "runbooks/scheduler-down.md")
    assert hit.section == "Meaning" and hit.quoted


def test_the_whole_query_signal_needs_two_to_twelve_words_and_hybrid_mode(
    tmp_path: Path, fake_encoder: FakeEncoder
) -> None:
    index = _quoted_index(tmp_path, fake_encoder)
    assert not index.signals("discovery")[1].whole  # one word is a keyword, not a quote
    assert index.signals("Prometheus discovery")[1].whole
    long_query = "the scheduler has disappeared from Prometheus target discovery " + " ".join(
        f"extra{i}" for i in range(12)
    )
    assert not index.signals(long_query)[1].whole  # a long log excerpt is not a quoted sentence
    for mode in ("dense", "bm25"):
        assert not index.signals("scheduler disappeared from Prometheus target discovery", mode)[1].whole
    # Stopwords and word order may differ; a word the document lacks may not.
    assert index.signals("discovery of Prometheus target: the scheduler disappeared")[1].whole
    assert not index.signals("controller disappeared from Prometheus target discovery")[1].whole


def test_words_that_many_documents_hold_together_are_a_common_phrase_not_a_quote(
    tmp_path: Path, fake_encoder: FakeEncoder
) -> None:
    escalation = (
        "# {0} outage\n\n## Escalation\n\nPage the incident commander on call and declare an incident "
        "in the incidents channel when {0} is down for customers.\n\n## Fix\n\nRestart {0}.\n"
    )
    names = ("cdn", "checkout", "ledger", "search")
    index = _runbooks_index(tmp_path, fake_encoder, {f"{n}.md": escalation.format(n) for n in names})
    query = "declare an incident and page the incident commander on call"
    _, sig = index.signals(query)
    assert len(sig.whole) == 4
    docs, ranks = candidates(sig)
    quoted = features(sig, docs, ranks, index.stats)[:, FEATURES.index("quoted")]
    assert sorted(quoted.tolist()) == [0.25] * 4  # the evidence is shared four ways
    assert not any(h.quoted for h in index.search(query, k=4).hits)


def test_a_quoted_runbook_sentence_finds_and_cites_its_section(index: SearchIndex) -> None:
    quoted = "the client certificate payments-gateway presents to Paylane for mutual TLS renews only if a human does it"
    top = index.search(quoted, k=3).hits[0]
    assert top.path == "runbooks/networking/tls-certificate-expiry.md"
    _, sig = index.signals(quoted)
    assert set(sig.whole) == {index.doc_index[top.path]}
    chunk_id = int(index.chunk_ids[sig.whole[index.doc_index[top.path]]])
    cited = index.store.chunks_by_id([chunk_id])[chunk_id]
    assert "presents to Paylane for mutual TLS" in cited.text
    assert top.section == cited.heading
    assert top.quoted and "presents to Paylane for mutual TLS" in top.snippet  # the snippet shows where
    assert not any(h.quoted for h in index.search(quoted, k=3, mode="bm25").hits)


# -- which section is cited ---------------------------------------------------------


def test_the_cited_section_is_chosen_by_the_words_only_it_has(tmp_path: Path, fake_encoder: FakeEncoder) -> None:
    # The escalation list mentions everything the runbook is about, so it is closest in meaning (here:
    # shares the most words) to any question; the replay procedure is what the question asks for.
    runbook = (
        "# Orders stuck in the dead letter queue\n\n"
        "## Signs\n\nOrders pile up in the dead letter queue and customers see no confirmation for them.\n\n"
        "## Replaying\n\nRun the replay tool against the queue for the orders, one batch at a time.\n\n"
        "## Escalation\n\nPage the orders team for stuck orders, orders you cannot replay, or orders "
        "the queue keeps, and tell the orders channel.\n"
    )
    index = _runbooks_index(
        tmp_path, fake_encoder, {"dlq.md": runbook, "other.md": "# Other\n\nUnrelated text here.\n"}
    )
    question = "how do I replay orders"
    assert index.search(question, k=1, mode="dense").hits[0].section == "Escalation"  # closest in meaning
    top = index.search(question, k=1).hits[0]
    assert top.path == "runbooks/dlq.md" and top.section == "Replaying"
    assert top.anchor == "replaying" and "replay tool" in top.snippet
    # "orders" stands in every section: among them it counts little, "replay" (and in a heading) much.
    _, sig = index.signals(question)
    start = int(index.doc_starts[index.doc_index["runbooks/dlq.md"]])
    scores = index.local_keyword_scores([start, start + 1, start + 2], sig.stems)
    assert scores[start + 1] > scores[start + 2] > scores[start] > 0
    assert top.similarity == pytest.approx(float(sig.section[index.doc_index["runbooks/dlq.md"]]), abs=1e-4)


def test_a_question_without_a_word_of_the_document_cites_the_closest_section(
    tmp_path: Path, fake_encoder: FakeEncoder
) -> None:
    index = _stub_index(tmp_path, fake_encoder)
    hit = next(h for h in index.search("trend says full by morning", k=3).hits if h.path == "runbooks/disk-pressure.md")
    assert hit.section == "Meaning"
    assert index.local_keyword_scores([0], []) == {0: 0.0}


@pytest.mark.parametrize(
    ("question", "path", "section"),
    [
        ("how do I scale out the kafka consumers for orders", "runbooks/kafka/consumer-lag.md", "Mitigation"),
        ("how do I restart a kafka consumer group", "runbooks/kafka/consumer-lag.md", "Mitigation"),
    ],
)
def test_a_how_to_question_cites_the_procedure_not_the_summary(
    index: SearchIndex, question: str, path: str, section: str
) -> None:
    hit = next(h for h in index.search(question, k=5).hits if h.kind == "runbook")
    assert (hit.path, hit.section) == (path, section)


def test_a_section_is_cited_for_its_own_words_not_the_tags_every_section_carries(index: SearchIndex) -> None:
    # The runbook is tagged crashloop, and the index adds its tags to every section: its two-line Related list,
    # the shortest section, held the question's word as densely as any and was cited.
    hit = index.search("how do I diagnose a crashloop", k=1).hits[0]
    assert hit.path == "runbooks/kubernetes/pod-crashloopbackoff.md"
    assert hit.section == "Diagnosis"  # no section says crashloop itself; Diagnosis is a letter from diagnose
    d = index.doc_index[hit.path]
    assert index.labels[d]["crashloop"] == 1 and index.labels[d]["kubernet"] == 1


def test_a_question_naming_an_alert_cites_the_section_its_other_words_ask_for(
    tmp_path: Path, fake_encoder: FakeEncoder
) -> None:
    # The alert's own words fill its Meaning section: they found the runbook, and said nothing of where in it.
    runbook = (
        "---\nalerts: [QueueBacklogHigh]\n---\n# Queue backlog high\n\n"
        "## Meaning\n\nQueueBacklogHigh fires when the queue backlog stays high: the backlog of the queue grows.\n\n"
        "## Diagnosis\n\nLook at the consumers' logs and their lag per partition before anything else.\n\n"
        "## What to check\n\nThe consumer group, its members and the last deploy of the consumer service.\n\n"
        "## Verification\n\nThe lag falls back under a thousand messages within ten minutes.\n"
    )
    index = _runbooks_index(tmp_path, fake_encoder, {"queue.md": runbook, "other.md": "# Other\n\nUnrelated text.\n"})
    assert index.search("what to check for QueueBacklogHigh", k=1).hits[0].section == "What to check"
    # The stemmer keeps diagnose (diagnos) and Diagnosis (diagnosi) a letter apart, verify and Verification too.
    assert index.search("how do I diagnose QueueBacklogHigh", k=1).hits[0].section == "Diagnosis"
    assert index.search("how do I verify QueueBacklogHigh is over", k=1).hits[0].section == "Verification"
    assert index.search("QueueBacklogHigh", k=1).hits[0].section == "Meaning"  # the name alone: the opening section


@pytest.mark.parametrize(
    ("alert", "path"),
    [
        ("PgbouncerPoolExhausted", "runbooks/postgres/connection-pool-exhausted.md"),
        ("CheckoutApiLatencyHigh", "runbooks/checkout-api/high-latency.md"),
    ],
)
def test_a_question_naming_an_alert_in_words_no_section_has_cites_by_meaning_without_the_name(
    index: SearchIndex, alert: str, path: str
) -> None:
    # No section says "fix": the opening section was cited, as for the name alone; the question less its name is
    # closest to the Mitigation section.
    fix = index.search(f"how do I fix {alert}", k=1).hits[0]
    assert (fix.path, fix.section) == (path, "Mitigation")
    alone = index.search(alert, k=1).hits[0]
    assert alone.path == path and alone.section != "Mitigation"  # the name alone: the opening section


def test_the_section_url_points_a_documents_url_at_the_cited_section() -> None:
    hit = SearchHit("runbooks/a.md", "runbook", "A", "Step 3: roll back", "", 1.0, anchor="step-3-roll-back")
    assert hit.section_url == ""  # no url, no link
    assert dataclasses.replace(hit, url="https://w.example/a").section_url == "https://w.example/a#step-3-roll-back"
    assert dataclasses.replace(hit, url="https://w.example/a#top").section_url == "https://w.example/a#top"
    assert dataclasses.replace(hit, url="https://w.example/a", anchor="").section_url == "https://w.example/a"


def test_a_snippet_drops_code_fences_and_bold_markers() -> None:
    text = (
        "1. **Not enough consumers**: scale out, up to the partition count:\n\n```bash\n"
        "kubectl -n fulfilment scale deployment/order-pipeline-consumer --replicas=12\n```\n"
        "The HPA scales back later; keep `snake_case` and 2 * 3 as they are.\n"
    )
    snippet = make_snippet(text, "scale out consumers")
    assert "```" not in snippet and "**" not in snippet
    assert snippet.startswith("1. Not enough consumers: scale out") and "kubectl -n fulfilment scale" in snippet
    assert "`snake_case`" in snippet and "2 * 3" in snippet


def test_a_snippet_shows_where_the_query_words_stand_together() -> None:
    text = (
        "Disk usage on Postgres grows every night. "
        + "Unrelated filler words about dashboards and owners. " * 12
        + "When the WAL volume fills, Postgres stops accepting writes and the WAL archiver falls behind."
    )
    snippet = make_snippet(text, "postgres WAL volume fills and stops writes", width=120)
    assert snippet.startswith("…") and "Postgres stops accepting writes" in snippet
    assert len(snippet) <= 122
    assert make_snippet(text, "nothing matches here", width=120).startswith("Disk usage on Postgres")


# -- names in the question: incident ids, alert names, deprecated runbooks ------------------


@pytest.mark.parametrize(
    "question",
    ["what was the root cause of INC-2025-0019", "inc-2025-0019", "INC-2025-0019: same again on pg-main?"],
)
def test_an_incident_id_finds_that_incident_first(index: SearchIndex, question: str) -> None:
    top = index.search(question, k=5).hits[0]
    assert top.incident_id == "INC-2025-0019"
    assert top.alert.upper() == "INC-2025-0019"  # kept in the answer whatever its cosine
    # the part asked about; the id alone, saying nothing more, cites the opening part, not whichever is closest to it
    wanted = {"what was the root cause of INC-2025-0019": "Root cause", "inc-2025-0019": "Summary"}
    assert top.section == wanted.get(question, top.section), top.section


@pytest.mark.parametrize(
    ("question", "expected"),
    [
        ("checkout-api-7d9f8c6b5-x2kqp OOMKilled", "runbooks/kubernetes/oomkilled-containers.md"),
        ("FATAL: sorry, too many clients already", "runbooks/postgres/connection-pool-exhausted.md"),
    ],
)
def test_the_readmes_examples_find_their_runbook_first(index: SearchIndex, question: str, expected: str) -> None:
    answer = index.search(question, k=6)
    runbooks = [h.path for h in answer.hits if h.kind == "runbook"]
    assert runbooks[0] == expected, runbooks  # first in the answer's Runbooks block
    assert expected in [h.path for h in answer.hits[:2]]  # behind at most a past incident of exactly that


def test_the_readmes_first_example_shows_no_past_incident_about_something_else(index: SearchIndex) -> None:
    answer = index.search("FATAL: sorry, too many clients already", k=6)
    unrelated = [h for h in answer.hits if h.kind == "incident" and "pgbouncer" not in h.title.lower()]
    assert unrelated and answer.learned  # the search finds incidents that merely share its vague words

    runbooks, incidents = relevant_hits(answer, Settings(min_similarity=0.35))

    assert [h.path for h in runbooks][:1] == ["runbooks/postgres/connection-pool-exhausted.md"]
    assert not {h.path for h in unrelated} & {h.path for h in incidents}, [h.title for h in incidents]


SIBLINGS = {
    "KubeJobFailed.md": "# KubeJobFailed\n\n## Meaning\n\nA Kubernetes job failed to complete: its pods exited "
    "with errors and the job hit its backoff limit.\n\n## Mitigation\n\nRead the failed pod logs, rerun the job.\n",
    "KubeJobCompletion.md": "# KubeJobCompletion\n\n## Meaning\n\nA job is taking more than twelve hours to "
    "complete; it is still running.\n\n## Mitigation\n\nCheck whether the job is stuck or just slow.\n",
    "KubeJobNotCompleted.md": "# KubeJobNotCompleted\n\n## Meaning\n\nThe job did not complete in the time "
    "expected of it.\n\n## Mitigation\n\nLook at the job's events and its pods.\n",
    "deprecated/KubeMacPoolDown.md": "# KubeMacPoolDown [Deprecated]\n\nStarting from 4.14 this runbook was "
    "replaced by the KubemacpoolDown runbook.\n\n## Meaning\n\nKubeMacPool is down; virtual machines cannot "
    "get MAC addresses.\n",
    "deprecated/VMCannotBeEvicted.md": "# VMCannotBeEvicted [Deprecated]\n\n## Meaning\n\nThe eviction strategy "
    "of a virtual machine is live migration but the machine is not migratable.\n",
    "KubemacpoolDown.md": "# KubemacpoolDown\n\n## Meaning\n\nThe kubemacpool manager pod is not running; new "
    "virtual machines get no MAC address.\n\n## Mitigation\n\nCheck the kubemacpool-mac-controller pods.\n",
    "VirtualMachineNotMigratable.md": "# Virtual machine not migratable\n\n## Meaning\n\nA virtual machine "
    "cannot be live migrated, so draining its node will not move it.\n",
    # Short forms that each runbook spells out once, as runbooks of one product tend to.
    "HPPNotReady.md": "# HPPNotReady\n\n## Meaning\n\nThe custom resource of the hostpath provisioner (HPP) "
    "reports that it cannot serve; new volumes wait.\n\n## Mitigation\n\nRead the conditions of the HPP "
    "resource and the events of its pods.\n",
    "HPPOperatorDown.md": "# HPPOperatorDown\n\n## Meaning\n\nNo pod of the hostpath provisioner (HPP) operator "
    "runs: the provisioner is not available to reconcile, and changes to it wait.\n\n## Mitigation\n\nCheck "
    "the operator's deployment.\n",
    "CDINotReady.md": "# CDINotReady\n\n## Meaning\n\nThe containerized data importer (CDI) reports a condition "
    "other than Available; data volumes do not import.\n\n## Mitigation\n\nRead the CDI resource's conditions.\n",
}


@pytest.fixture(scope="module")
def siblings(tmp_path_factory: pytest.TempPathFactory, minilm) -> SearchIndex:  # noqa: ANN001
    root = tmp_path_factory.mktemp("siblings") / "knowledge"
    for name, text in SIBLINGS.items():
        (root / "runbooks" / name).parent.mkdir(parents=True, exist_ok=True)
        (root / "runbooks" / name).write_text(text, encoding="utf-8")
    store = Store(root.parent / "siblings.db")
    index_knowledge(store, minilm, root)
    return SearchIndex(store, minilm)


@pytest.mark.parametrize("alert", ["KubeJobFailed", "KubeJobCompletion", "KubeJobNotCompleted", "VMCannotBeEvicted"])
def test_an_exact_alert_name_finds_its_runbook_first(siblings: SearchIndex, alert: str) -> None:
    for question in (alert, f"[FIRING:1] {alert} (prod-eu-1 batch/nightly-backup-29091 critical)"):
        top = siblings.search(question, k=3).hits[0]
        assert top.path.endswith(f"/{alert}.md") and top.alert == alert, question


def test_a_deprecated_runbook_is_found_by_its_alert_name(siblings: SearchIndex) -> None:
    hits = siblings.search("VMCannotBeEvicted firing for vm rhel9-db-01", k=3).hits
    assert hits[0].path == "runbooks/deprecated/VMCannotBeEvicted.md"
    assert hits[0].title == "VMCannotBeEvicted [Deprecated]"
    # Two runbooks answer to one alert name when only case tells them apart: both come before the rest,
    # the one spelled as the question spells it first (alert names are case-sensitive).
    for spelled, first in (("KubeMacPoolDown", "deprecated/KubeMacPoolDown"), ("KubemacpoolDown", "KubemacpoolDown")):
        both = siblings.search(f"{spelled} is firing", k=3).hits
        assert both[0].path == f"runbooks/{first}.md", spelled
        assert {h.path for h in both[:2]} == {"runbooks/deprecated/KubeMacPoolDown.md", "runbooks/KubemacpoolDown.md"}
        assert all(h.alert == spelled for h in both[:2]) and not both[2].alert


def test_a_question_that_spells_out_a_titles_short_form_finds_that_runbook(siblings: SearchIndex) -> None:
    # Each runbook says "hostpath provisioner (HPP)" once; the question never says HPP.
    question = "hostpath provisioner is not ready"
    assert siblings.search(question, k=3).hits[0].path == "runbooks/HPPNotReady.md"
    # The title is embedded as its runbook reads it: "HPP Not Ready" alone is further in meaning from the question
    # than "CDI Not Ready" is (0.23 against 0.30); "HPP (hostpath provisioner) Not Ready" is close to it.
    _, sig = siblings.signals(question)
    assert sig.title is not None
    title = {path: float(sig.title[d]) for path, d in siblings.doc_index.items()}
    assert title["runbooks/HPPNotReady.md"] > title["runbooks/CDINotReady.md"] + 0.3, title
    assert title["runbooks/HPPNotReady.md"] == max(title.values())


def test_keyword_search_reads_words_in_any_script(tmp_path: Path, fake_encoder: FakeEncoder) -> None:
    # Before, the query's words were cut with an ASCII pattern: "Überlastung" was searched as "berlastung", Cyrillic
    # not at all, though the full-text index holds them.
    root = tmp_path / "knowledge" / "runbooks"
    root.mkdir(parents=True)
    texts = {
        "de.md": "# Datenbank Überlastung\n\n## Symptome\n\nDie Verbindungsabbrüche häufen sich im Primärserver.\n",
        "ru.md": "# Диск переполнен\n\n## Симптомы\n\nДиск базы данных заполнен журналами.\n",
    }
    for name, text in texts.items():
        (root / name).write_text(text, encoding="utf-8")
    store = Store(tmp_path / "index.db")
    index_knowledge(store, fake_encoder, tmp_path / "knowledge")
    index = SearchIndex(store, fake_encoder)
    for query, wanted in (
        ("Verbindungsabbrüche", "runbooks/de.md"),
        ("Überlastung", "runbooks/de.md"),
        ("Диск переполнен", "runbooks/ru.md"),
    ):
        assert [h.path for h in index.search(query, mode="bm25").hits][:1] == [wanted], query
    store.close()
