"""The ``opsbot`` command line, driven through click's CliRunner with the real MiniLM model.

The sample knowledge is too big to index for every test, so a small copy of it (six runbooks,
six incidents and the roster) is indexed once per module and its database reused by the ask tests.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import sqlite3
import time
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner, Result

from bot.answers.encoder import SentenceTransformerEncoder
from bot.cli import main
from bot.config import Settings
from bot.runtime import Runtime
from bot.store import Store
from tests.conftest import SAMPLE_KNOWLEDGE, assert_clean_failure, invoke

SUBSET_RUNBOOKS = (
    "postgres/connection-pool-exhausted.md",
    "kafka/consumer-lag.md",
    "networking/tls-certificate-expiry.md",
    "redis/memory-and-evictions.md",
    "kubernetes/node-disk-pressure.md",
    "notifications/sms-provider-outage.md",
)
SUBSET_INCIDENTS = (
    "2025/INC-2025-0001.yaml",
    "2025/INC-2025-0002.yaml",
    "2025/INC-2025-0003.yaml",
    "2025/INC-2025-0004.yaml",
    "2025/INC-2025-0005.md",
    "2025/INC-2025-0006.yaml",
)
SUBSET_DOCS = len(SUBSET_RUNBOOKS) + len(SUBSET_INCIDENTS)

# Four runbooks on topics far enough apart that every mode should rank them right.
EVAL_RUNBOOKS = {
    "disk-full.md": """---
title: Build agent disk full
services: [ci]
---
# Build agent disk full

The CI build agents keep Docker layers and workspace checkouts on a 200 GB volume.

## Symptoms
Jobs fail with `No space left on device` while pulling images or writing artifacts.

## Fix
Run `docker system prune -af` on the agent and delete stale workspaces under /var/ci/work.
""",
    "cert-expiry.md": """---
title: TLS certificate expired
services: [edge]
---
# TLS certificate expired

Browsers show `NET::ERR_CERT_DATE_INVALID` and clients log `x509: certificate has expired`.

## Fix
Renew the certificate with certbot, reload nginx, and check the new notAfter date with openssl.
""",
    "dns.md": """---
title: DNS lookups failing inside the cluster
services: [platform]
---
# DNS lookups failing inside the cluster

Pods log `getaddrinfo EAI_AGAIN` or `no such host` when resolving service names.

## Fix
Check that the CoreDNS pods are running and restart them; scale CoreDNS up if it is CPU throttled.
""",
    "queue-backlog.md": """---
title: Email queue backlog
services: [mailer]
---
# Email queue backlog

Password reset and receipt emails arrive late because the RabbitMQ queue `mail.outbound` keeps growing.

## Fix
Add mailer workers and check the SMTP relay's rate limit before purging anything.
""",
}
# Five answerable queries, and one whose answer is not in the knowledge at all, so the
# expected figures are exact: R@1 = 5/6 overall, 2/2 for logs, 3/4 for questions.
EVAL_QUERIES = [
    {
        "id": "disk",
        "query": "CI job failed: no space left on device",
        "relevant": ["runbooks/disk-full.md"],
        "kind": "log",
    },
    {"id": "cert", "query": "x509: certificate has expired", "relevant": ["runbooks/cert-expiry.md"], "kind": "log"},
    {
        "id": "dns",
        "query": "pods cannot resolve service names, CoreDNS",
        "relevant": ["runbooks/dns.md"],
        "kind": "question",
    },
    {
        "id": "mail",
        "query": "password reset emails are arriving very late",
        "relevant": ["runbooks/queue-backlog.md"],
        "kind": "question",
    },
    {
        "id": "renew",
        "query": "how do I renew the TLS certificate",
        "relevant": ["runbooks/cert-expiry.md"],
        "kind": "question",
    },
    {
        "id": "approval",
        "query": "who approves production database migrations",
        "relevant": ["runbooks/change-approval.md"],
        "kind": "question",
    },
]
TABLE_ROW = re.compile(
    r"^(?P<mode>hybrid|dense|bm25)\s+(?P<group>\S+)\s+(?P<n>\d+)\s+(?P<r1>[\d.]+)\s+(?P<r3>[\d.]+)\s+"
    r"(?P<r5>[\d.]+)\s+(?P<mrr>[\d.]+)(?:\s+(?P<shown1>[\d.]+)\s+(?P<shown>[\d.]+))?$"
)


@dataclass(frozen=True)
class IndexedSubset:
    knowledge: Path
    db: Path
    first_run: Result


def write_files(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return root


def write_queries(path: Path, queries: list[dict]) -> Path:
    path.write_text("".join(json.dumps(q) + "\n" for q in queries), encoding="utf-8")
    return path


def ask_json(*args: str) -> dict:
    result = invoke("ask", "--json", *args)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def subset(tmp_path_factory: pytest.TempPathFactory) -> IndexedSubset:
    """A copy of part of the sample knowledge, indexed once through ``opsbot index``."""
    root = tmp_path_factory.mktemp("cli-subset")
    knowledge = root / "knowledge"
    for rel in SUBSET_RUNBOOKS:
        (knowledge / "runbooks" / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(SAMPLE_KNOWLEDGE / "runbooks" / rel, knowledge / "runbooks" / rel)
    for rel in SUBSET_INCIDENTS:
        (knowledge / "incidents" / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(SAMPLE_KNOWLEDGE / "incidents" / rel, knowledge / "incidents" / rel)
    shutil.copy(SAMPLE_KNOWLEDGE / "experts.yaml", knowledge / "experts.yaml")
    db = root / "opsbot.db"
    # Module fixtures run before the autouse (function-scoped) clean environment, so clean up here too.
    with pytest.MonkeyPatch.context() as mp:
        for name in list(os.environ):
            if name.startswith(("SLACK_", "OPSBOT_")):
                mp.delenv(name)
        mp.chdir(root)
        result = invoke("index", str(knowledge), env={"OPSBOT_DB": str(db)})
    assert result.exit_code == 0, result.output
    return IndexedSubset(knowledge, db, result)


@pytest.fixture
def subset_db(subset: IndexedSubset, monkeypatch: pytest.MonkeyPatch) -> IndexedSubset:
    """Point OPSBOT_DB at the indexed subset for one test."""
    monkeypatch.setenv("OPSBOT_DB", str(subset.db))
    return subset


@pytest.fixture(scope="module")
def eval_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A tiny knowledge directory written for the eval tests, and its query file."""
    root = tmp_path_factory.mktemp("cli-eval")
    knowledge = write_files(root / "knowledge", {f"runbooks/{name}": text for name, text in EVAL_RUNBOOKS.items()})
    return knowledge, write_queries(root / "queries.jsonl", EVAL_QUERIES)


# -- help ------------------------------------------------------------------


def test_every_command_has_help_with_an_example() -> None:
    assert {"index", "ask", "eval"} <= set(main.commands)
    for name in sorted(main.commands):
        result = invoke(name, "--help")
        assert result.exit_code == 0, f"{name}: {result.output}"
        assert "Example" in result.stdout, f"`opsbot {name} --help` shows no example"
        assert f"opsbot {name}" in result.stdout, f"the example of {name} does not run `opsbot {name}`"


def test_group_help_has_an_example() -> None:
    result = invoke("--help")
    assert result.exit_code == 0
    assert "Example" in result.stdout
    for name in main.commands:
        assert name in result.stdout


def test_help_points_at_no_folder_outside_the_users_checkout() -> None:
    """No help text names ../shared or another machine's folders; eval's says what its files must hold."""
    for name in sorted(main.commands):
        assert "../" not in invoke(name, "--help").stdout, name
    shown = " ".join(invoke("eval", "--help").stdout.split())
    assert "A folder in the knowledge format (runbooks/, incidents/, experts.yaml)" in shown
    assert '{"query": TEXT, "relevant": [PATH, ...]}' in shown


def test_command_help_works_with_a_bad_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPSBOT_TOP_K", "abc")
    result = invoke("ask", "--help")
    assert result.exit_code == 0, result.output
    assert "Example" in result.stdout


# -- index -----------------------------------------------------------------


def test_index_prints_counts(subset: IndexedSubset) -> None:
    people = len(yaml.safe_load((subset.knowledge / "experts.yaml").read_text(encoding="utf-8"))["people"])
    out = subset.first_run.stdout
    assert f"{len(SUBSET_RUNBOOKS)} runbooks, {len(SUBSET_INCIDENTS)} incidents, {people} people" in out
    match = re.search(r"\((\d+) added, 0 updated, 0 unchanged, 0 removed; (\d+) sections embedded, 0 reused\)", out)
    assert match, out
    assert int(match.group(1)) == SUBSET_DOCS
    # At least one section and one title per document.
    assert int(match.group(2)) >= 2 * SUBSET_DOCS
    assert "all-MiniLM-L6-v2" in out
    assert "Warning" not in subset.first_run.stderr


def test_index_second_run_embeds_nothing(subset_db: IndexedSubset) -> None:
    result = invoke("index", str(subset_db.knowledge))
    assert result.exit_code == 0, result.output
    assert f"(0 added, 0 updated, {SUBSET_DOCS} unchanged, 0 removed; 0 sections embedded" in result.stdout

    report = json.loads(invoke("index", "--json", str(subset_db.knowledge)).stdout)
    assert (report["added"], report["updated"], report["unchanged"], report["removed"]) == (0, 0, SUBSET_DOCS, 0)
    assert report["embedded"] == 0
    assert report["runbooks"] == len(SUBSET_RUNBOOKS)
    assert report["incidents"] == len(SUBSET_INCIDENTS)
    assert report["problems"] == []


def test_index_json_reports_added_then_unchanged(eval_files: tuple[Path, Path]) -> None:
    knowledge, _ = eval_files
    first = invoke("index", "--json", str(knowledge))
    assert first.exit_code == 0, first.output
    report = json.loads(first.stdout)
    assert report["added"] == len(EVAL_RUNBOOKS)
    assert report["unchanged"] == 0
    assert report["embedded"] > len(EVAL_RUNBOOKS)
    assert "Embedding sections" not in first.output  # no progress bar mixed into JSON runs

    again = json.loads(invoke("index", "--json", str(knowledge)).stdout)
    assert (again["added"], again["unchanged"], again["embedded"]) == (0, len(EVAL_RUNBOOKS), 0)
    assert again["reused"] == 0  # nothing changed, so nothing was even looked up


def test_index_missing_directory_is_a_clear_error() -> None:
    result = invoke("index", "no-such-dir")
    assert_clean_failure(result, "knowledge directory 'no-such-dir' does not exist")
    assert result.stdout == ""


@pytest.mark.parametrize("inside", ["runbooks", "incidents", "."])
def test_a_folder_that_is_not_a_knowledge_folder_is_refused_and_the_index_kept(
    subset: IndexedSubset, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, inside: str
) -> None:
    db = tmp_path / "copy.db"
    shutil.copy(subset.db, db)
    monkeypatch.setenv("OPSBOT_DB", str(db))
    monkeypatch.chdir(tmp_path)  # "." holds only the database copy
    before = Store(db).document_hashes()
    folder = "." if inside == "." else str(subset.knowledge / inside)

    for command in (("index", folder), ("index", "--strict", folder), ("check", folder)):
        result = invoke(*command)
        assert_clean_failure(result, "is not a knowledge folder", "knowledge/, not knowledge/runbooks/")

    assert Store(db).document_hashes() == before and len(before) > 0


def test_index_warns_about_malformed_files_and_indexes_the_rest(tmp_path: Path) -> None:
    knowledge = write_files(
        tmp_path / "kb",
        {
            "runbooks/dns.md": EVAL_RUNBOOKS["dns.md"],
            # Line 3: a colon inside a plain value is not valid YAML.
            "runbooks/broken.md": "---\ntitle: Broken\nservices: checkout: api\n---\n# Broken\n\nZanzibar text.\n",
            "incidents/INC-2025-0100.yaml": (
                "id: INC-2025-0100\ntitle: Something\ndate: 2025-01-01T00:00:00Z\nseverity: 9\nservices: [x]\n"
                "responders: [U03F8K2LQ1]\nsummary: s\nroot_cause: r\nresolution: z\n"
            ),
        },
    )
    result = invoke("index", str(knowledge))
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output
    warnings = [line for line in result.stderr.splitlines() if line.startswith("Warning: ")]
    assert any(w.startswith("Warning: runbooks/broken.md:3: front matter is not valid YAML") for w in warnings), (
        warnings
    )
    assert "Warning: incidents/INC-2025-0100.yaml:4: severity 9 must be 1 (worst) to 4" in warnings
    assert "1 runbooks, 0 incidents" in result.stdout
    assert "(1 added," in result.stdout

    # The good runbook is searchable, the broken one is not in the index.
    found = ask_json("--mode", "bm25", "CoreDNS getaddrinfo")
    assert found["hits"][0]["path"] == "runbooks/dns.md"
    assert ask_json("--mode", "bm25", "Zanzibar")["hits"] == []


# -- ask -------------------------------------------------------------------


def test_ask_puts_the_right_runbook_first(subset_db: IndexedSubset) -> None:
    result = invoke("ask", "PgbouncerPoolExhausted: cl_waiting 310, clients fail with query_wait_timeout")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == "1. pgbouncer / Postgres connection pool exhausted"
    assert lines[1].strip().startswith("runbooks/postgres/connection-pool-exhausted.md")
    assert "(score " not in lines[1]  # scores are for --all
    assert re.search(r"^\(hybrid search; encode \d+ ms, search \d+ ms\)$", lines[-1])


def test_ask_and_experts_log_only_warnings_unless_opsbot_log_level_is_set(
    subset_db: IndexedSubset, caplog: pytest.LogCaptureFixture
) -> None:
    # Before, every `opsbot ask` printed "model loaded ..." (and `experts` four such lines) around the answer.
    import logging

    for command in (["ask", "pgbouncer too many clients"], ["experts", "pgbouncer too many clients"]):
        with caplog.at_level(logging.NOTSET):  # caplog's own handler takes all; the root level decides
            caplog.clear()
            assert invoke(*command).exit_code == 0
            assert logging.getLogger().level == logging.WARNING
            assert not [r for r in caplog.records if r.levelno < logging.WARNING]
            caplog.clear()
            assert invoke(*command, env={"OPSBOT_LOG_LEVEL": "INFO"}).exit_code == 0
            assert any("model loaded" in r.getMessage() for r in caplog.records)
    assert invoke("deploys").exit_code == 0
    assert logging.getLogger().level == logging.INFO  # other commands keep INFO


def test_ask_shows_runbooks_then_past_incidents_as_slack_does_whatever_the_ranker_put_first(
    subset_db: IndexedSubset,
) -> None:
    question = "checkout-api-7d9f8c6b5-x2kqp OOMKilled"  # the ranker puts a past incident first
    ranked = ask_json("--all", question)["hits"]
    assert ranked[0]["kind"] == "incident" and ranked[0]["relevant"]
    shown = ask_json(question)["hits"]
    kinds = [h["kind"] for h in shown]
    assert kinds == sorted(kinds, key=lambda kind: kind != "runbook") and kinds[0] == "runbook", kinds
    lines = invoke("ask", question).stdout.splitlines()
    assert lines[0] == f"1. {shown[0]['title']}" and lines[1].strip().startswith(shown[0]["path"])


def test_ask_says_when_the_cited_section_holds_the_whole_question(subset_db: IndexedSubset) -> None:
    quoted = "the client certificate payments-gateway presents to Paylane for mutual TLS renews only if a human does it"
    lines = invoke("ask", "-k", "3", quoted).stdout.splitlines()
    assert lines[0] == "1. TLS certificate expiring or expired"
    assert lines[2] == "   this section contains every word of the question"
    assert "presents to Paylane for mutual TLS" in lines[3]
    assert lines.count("   this section contains every word of the question") == 1
    assert ask_json(quoted)["hits"][0]["quoted"] is True


@pytest.mark.parametrize(
    ("question", "expected"),
    [
        ("redis is evicting keys and used_memory is near maxmemory", "runbooks/redis/memory-and-evictions.md"),
        ("kafka consumer group lag keeps growing", "runbooks/kafka/consumer-lag.md"),
        ("x509: certificate has expired or is not yet valid", "runbooks/networking/tls-certificate-expiry.md"),
        ("node has DiskPressure and pods are being evicted", "runbooks/kubernetes/node-disk-pressure.md"),
    ],
)
def test_ask_finds_the_runbook(subset_db: IndexedSubset, question: str, expected: str) -> None:
    hits = ask_json(question)["hits"]
    assert hits[0]["path"] == expected, [h["path"] for h in hits]


def test_ask_json_hits_carry_their_source(subset_db: IndexedSubset) -> None:
    answer = ask_json("--all", "SMS verification codes are not delivered")
    assert answer["query"] == "SMS verification codes are not delivered"
    assert answer["mode"] == "hybrid"
    hits = answer["hits"]
    assert len(hits) == 5  # the default OPSBOT_TOP_K
    assert not answer["declined"] and hits[0]["relevant"] and not hits[-1]["relevant"]
    for hit in hits:
        assert {"path", "section", "snippet", "score", "citation"} <= set(hit)
        assert (subset_db.knowledge / hit["path"]).is_file()
        assert hit["snippet"]
        assert isinstance(hit["score"], float)
        label = hit["incident_id"] or hit["path"]
        assert hit["citation"] == (f"{label} § {hit['section']}" if hit["section"] else label)
    assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)
    assert len({h["path"] for h in hits}) == len(hits)  # one hit per document
    # The runbook and the past incident about the same outage are both right answers.
    assert "runbooks/notifications/sms-provider-outage.md" in [h["path"] for h in hits[:2]]


def test_ask_links_the_cited_section_of_a_runbook_with_a_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    knowledge = write_files(
        tmp_path / "knowledge",
        {
            "runbooks/disk.md": "---\ntitle: Build agent disk full\nurl: https://wiki.example.com/ci/disk\n---\n"
            "# Build agent disk full\n\nThe CI build agents keep Docker layers on a 200 GB volume.\n\n"
            "## Free space\n\nRun `docker system prune -af` on the agent and delete stale workspaces.\n",
            "runbooks/dns.md": "# DNS\n\nPods cannot resolve service names when CoreDNS is down.\n",
        },
    )
    monkeypatch.setenv("OPSBOT_DB", str(tmp_path / "opsbot.db"))
    assert invoke("index", str(knowledge)).exit_code == 0
    lines = invoke("ask", "-k", "2", "how do I prune docker on the build agent").stdout.splitlines()
    assert lines[:3] == [
        "1. Build agent disk full",
        "   runbooks/disk.md § Free space",
        "   https://wiki.example.com/ci/disk#free-space",
    ]
    hits = ask_json("--all", "-k", "2", "how do I prune docker on the build agent")["hits"]
    assert hits[0]["section_url"] == "https://wiki.example.com/ci/disk#free-space"
    dns = next(h for h in hits if h["path"] == "runbooks/dns.md")
    assert dns["url"] == dns["section_url"] == ""  # no url: no link, and no line for it
    assert sum(line.startswith("   https://") for line in lines) == 1


def test_ask_declines_an_off_topic_question_as_slack_does_and_all_shows_the_scores(
    subset_db: IndexedSubset, minilm: SentenceTransformerEncoder
) -> None:
    question = "what is a good recipe for sourdough bread"
    runtime = Runtime(Settings(db_path=subset_db.db, model="unused"), encoder=minilm)
    try:
        slack_found = runtime.answers.reply(question).found
        on_topic = runtime.answers.reply("pgbouncer pool exhausted")
    finally:
        runtime.close()

    declined = invoke("ask", question)
    everything = invoke("ask", "--all", question)

    assert not slack_found and on_topic.found  # what Slack does with the same index
    assert declined.exit_code == 0, declined.output
    assert declined.stdout.startswith("I found nothing relevant in the runbooks or past incidents, so I won't guess")
    assert "(score" not in declined.stdout and "`opsbot ask --all` lists the closest documents" in declined.stdout
    assert ask_json(question)["declined"] is True and ask_json(question)["hits"] == []
    assert everything.stdout.count("not relevant enough to show in Slack") == 5
    assert re.search(r"\(score -?\d+\.\d{3}, similarity -?\d\.\d{2}; not relevant", everything.stdout)
    shown = [h["path"] for h in ask_json("pgbouncer pool exhausted")["hits"]]
    assert {h.path for h in on_topic.runbooks + on_topic.incidents} <= set(shown)  # the same documents as Slack


def test_ask_k_limits_the_hits(subset_db: IndexedSubset) -> None:
    assert len(ask_json("-k", "2", "pgbouncer pool exhausted")["hits"]) == 2

    text = invoke("ask", "-k", "2", "pgbouncer pool exhausted").stdout
    numbered = [line for line in text.splitlines() if re.match(r"^\d+\. ", line)]
    assert [line.split(".")[0] for line in numbered] == ["1", "2"]


def test_ask_top_k_comes_from_the_environment(subset_db: IndexedSubset, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPSBOT_TOP_K", "3")
    assert len(ask_json("--all", "pgbouncer pool exhausted")["hits"]) == 3
    assert len(ask_json("-k", "1", "pgbouncer pool exhausted")["hits"]) == 1  # the option wins


def test_ask_rejects_k_out_of_range(subset_db: IndexedSubset) -> None:
    result = invoke("ask", "-k", "0", "pgbouncer")
    assert result.exit_code == 2
    assert "-k" in result.stderr
    assert "Traceback" not in result.output


def test_ask_on_an_empty_index_says_to_index_first() -> None:
    Store(os.environ["OPSBOT_DB"]).close()  # a database, with nothing indexed in it
    result = invoke("ask", "pgbouncer says too many clients")
    assert_clean_failure(result, "the index is empty", "run `opsbot index` first")


@pytest.mark.parametrize(
    ("value", "problem"),
    [("abc", "OPSBOT_TOP_K='abc' is not a whole number"), ("0", "OPSBOT_TOP_K=0 is out of range")],
)
def test_ask_with_a_bad_top_k_is_a_configuration_error(
    subset_db: IndexedSubset, monkeypatch: pytest.MonkeyPatch, value: str, problem: str
) -> None:
    monkeypatch.setenv("OPSBOT_TOP_K", value)
    result = invoke("ask", "pgbouncer")
    assert_clean_failure(result, "not configured correctly", problem, "1 to 50")
    assert result.stdout == ""


def test_every_bad_setting_is_reported_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPSBOT_TOP_K", "abc")
    monkeypatch.setenv("OPSBOT_LOG_LEVEL", "LOUD")
    result = invoke("ask", "pgbouncer")
    assert_clean_failure(result, "OPSBOT_TOP_K", "OPSBOT_LOG_LEVEL='LOUD'")


# -- eval ------------------------------------------------------------------


def table_rows(output: str) -> dict[tuple[str, str], dict[str, float]]:
    rows = {}
    for line in output.splitlines():
        if m := TABLE_ROW.match(line):
            rows[(m["mode"], m["group"])] = {
                k: float(m[k]) for k in ("n", "r1", "r3", "r5", "mrr", "shown1", "shown") if m[k]
            }
    return rows


def test_eval_prints_a_table_per_mode(eval_files: tuple[Path, Path]) -> None:
    knowledge, queries = eval_files
    result = invoke("eval", "--knowledge", str(knowledge), "--queries", str(queries))
    assert result.exit_code == 0, result.output
    header = result.stdout.splitlines()[0].split()
    assert header == ["mode", "queries", "n", "R@1", "R@3", "R@5", "MRR@10", "Shw@1", "Shown"]
    rows = table_rows(result.stdout)
    assert set(rows) == {(m, g) for m in ("hybrid", "dense", "bm25") for g in ("all", "log", "question")}
    for mode in ("hybrid", "dense", "bm25"):
        assert rows[(mode, "all")]["n"] == 6
        assert rows[(mode, "all")]["r1"] == 0.833, mode
        assert rows[(mode, "log")]["r1"] == 1.0, mode
        ranked = {k: v for k, v in rows[(mode, "question")].items() if not k.startswith("shown")}
        assert ranked == {"n": 4, "r1": 0.75, "r3": 0.75, "r5": 0.75, "mrr": 0.75}, mode
    # What a reply shows is measured in hybrid mode only, the mode Slack answers in.
    assert "shown1" not in rows[("dense", "all")] and "shown1" not in rows[("bm25", "all")]
    # Here every query's first document is above the floor, so the reply shows what the ranking put first.
    assert rows[("hybrid", "all")]["shown1"] == rows[("hybrid", "all")]["r1"] == 0.833
    assert rows[("hybrid", "log")]["shown"] == 1.0 and "Shw@1, Shown: what a reply shows" in result.stdout
    assert "approval" not in result.stdout  # misses are only listed on request


def test_eval_lists_misses_for_one_mode(eval_files: tuple[Path, Path]) -> None:
    knowledge, queries = eval_files
    result = invoke("eval", "--knowledge", str(knowledge), "--queries", str(queries), "--mode", "bm25", "--misses")
    assert result.exit_code == 0, result.output
    assert {mode for mode, _ in table_rows(result.stdout)} == {"bm25"}
    misses = [line for line in result.stdout.splitlines() if line.startswith("[")]
    assert len(misses) == 1
    assert misses[0].startswith("[bm25] approval: got ")
    assert misses[0].endswith("want ['runbooks/change-approval.md']")


def test_eval_json(eval_files: tuple[Path, Path]) -> None:
    knowledge, queries = eval_files
    result = invoke("eval", "--knowledge", str(knowledge), "--queries", str(queries), "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert set(data["modes"]) == {"hybrid", "dense", "bm25"}
    assert data["modes"]["hybrid"]["all"]["mrr@10"] == pytest.approx(5 / 6, abs=1e-3)
    assert data["modes"]["hybrid"]["all"]["queries"] == 6
    assert data["modes"]["hybrid"]["all"]["shown@1"] == pytest.approx(5 / 6, abs=1e-3)
    assert "shown@1" not in data["modes"]["bm25"]["all"]
    assert [m["id"] for m in data["modes"]["hybrid"]["misses"]] == ["approval"]
    assert data["index"]["runbooks"] == len(EVAL_RUNBOOKS)
    assert data["index"]["added"] == len(EVAL_RUNBOOKS)


def test_eval_leaves_the_users_index_alone(eval_files: tuple[Path, Path], tmp_path: Path) -> None:
    knowledge, queries = eval_files
    result = invoke("eval", "--knowledge", str(knowledge), "--queries", str(queries), "--mode", "bm25")
    assert result.exit_code == 0, result.output
    assert not (tmp_path / "opsbot.db").exists()


def test_eval_index_db_is_kept_and_a_second_run_embeds_nothing(eval_files: tuple[Path, Path], tmp_path: Path) -> None:
    knowledge, queries = eval_files
    args = ("eval", "--knowledge", str(knowledge), "--queries", str(queries), "--mode", "bm25", "--json")
    first = invoke(*args, "--index-db", str(tmp_path / "kept.db"))
    assert first.exit_code == 0, first.output
    assert json.loads(first.stdout)["index"]["embedded"] > 0 and (tmp_path / "kept.db").exists()
    second = invoke(*args, "--index-db", str(tmp_path / "kept.db"))
    assert json.loads(second.stdout)["index"]["embedded"] == 0
    refused = invoke("eval", "--task", "experts", "--knowledge", str(knowledge), "--index-db", str(tmp_path / "x.db"))
    assert_clean_failure(refused, "--index-db only applies to --task search")


def test_eval_never_indexes_into_a_database_it_did_not_make(
    eval_files: tuple[Path, Path], subset: IndexedSubset, tmp_path: Path
) -> None:
    # Before, `--index-db` naming the bot's own database replaced its knowledge, roster and rotas, and said ok.
    live = tmp_path / "live.db"
    with closing(sqlite3.connect(subset.db)) as source, closing(sqlite3.connect(live)) as target:
        source.backup(target)

    def database_text(path: Path) -> str:
        with closing(sqlite3.connect(path)) as db:
            return "\n".join(line for line in db.iterdump() if "write_probe_at" not in line)

    before = database_text(live)
    knowledge, queries = eval_files
    args = ("eval", "--knowledge", str(knowledge), "--queries", str(queries), "--mode", "bm25")

    result = invoke(*args, "--index-db", str(live))

    assert_clean_failure(result, f"--index-db {live} is a database `opsbot eval` did not make")
    assert database_text(live) == before
    empty = tmp_path / "from-mktemp.db"
    empty.touch()  # an empty file, as mktemp makes: a new database, taken
    assert invoke(*args, "--index-db", str(empty)).exit_code == 0


@pytest.mark.parametrize("where", ["notes.txt", "no-such-dir/kept.db"])
def test_eval_index_db_that_cannot_be_used_names_the_option(
    eval_files: tuple[Path, Path], tmp_path: Path, where: str
) -> None:
    knowledge, queries = eval_files
    (tmp_path / "notes.txt").write_text("not a database\n", encoding="utf-8")
    args = ("eval", "--knowledge", str(knowledge), "--queries", str(queries), "--mode", "bm25")

    result = invoke(*args, "--index-db", str(tmp_path / where))

    assert_clean_failure(result, str(tmp_path / where), "--index-db")
    assert "OPSBOT_DB" not in result.stderr


def test_eval_malformed_queries_names_the_line(eval_files: tuple[Path, Path], tmp_path: Path) -> None:
    knowledge, _ = eval_files
    queries = tmp_path / "bad.jsonl"
    queries.write_text(json.dumps(EVAL_QUERIES[0]) + '\n{"id": "b", "query": oops}\n', encoding="utf-8")
    result = invoke("eval", "--knowledge", str(knowledge), "--queries", str(queries))
    assert_clean_failure(result, f"{queries}:2: not valid JSON")


def test_eval_a_blank_query_names_its_line_before_anything_is_indexed(
    eval_files: tuple[Path, Path], tmp_path: Path
) -> None:
    knowledge, _ = eval_files
    queries = tmp_path / "blank.jsonl"
    blank = {"id": "b", "query": "   ", "relevant": ["runbooks/disk-full.md"]}
    queries.write_text(json.dumps(EVAL_QUERIES[0]) + "\n" + json.dumps(blank) + "\n", encoding="utf-8")
    result = invoke(
        "eval", "--knowledge", str(knowledge), "--queries", str(queries), "--index-db", str(tmp_path / "e.db")
    )
    assert_clean_failure(result, f'{queries}:2: "query" is empty')
    assert not (tmp_path / "e.db").exists()


def test_eval_missing_knowledge_is_a_clear_error(eval_files: tuple[Path, Path], tmp_path: Path) -> None:
    _, queries = eval_files
    result = invoke("eval", "--knowledge", str(tmp_path / "nowhere"), "--queries", str(queries))
    assert_clean_failure(result, "knowledge directory", "does not exist")


def bm25_eval_of_the_disk_query_and(knowledge: Path, queries: Path, other: dict) -> tuple[str, ...]:
    """`opsbot eval --mode bm25` arguments for a file of two queries: the disk runbook's, and ``other``."""
    disk = {"id": "disk", "query": "docker no space left on device", "relevant": ["runbooks/disk-full.md"]}
    write_queries(queries, [disk, other])
    return ("eval", "--knowledge", str(knowledge), "--queries", str(queries), "--mode", "bm25")


def test_eval_names_relevant_paths_that_no_document_has(eval_files: tuple[Path, Path], tmp_path: Path) -> None:
    knowledge, _ = eval_files
    queries = tmp_path / "typo.jsonl"
    typo = {"id": "typo", "query": "docker no space left on device", "relevant": ["runbook/disk-full.md"]}
    args = bm25_eval_of_the_disk_query_and(knowledge, queries, typo)
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    assert table_rows(result.stdout)[("bm25", "all")]["r1"] == 0.5  # still scored, as a miss
    assert f"1 relevant path(s) of {queries} are no document of {knowledge}" in result.stderr
    assert "runbook/disk-full.md" in result.stderr and "runbooks/disk-full.md" not in result.stderr
    assert json.loads(invoke(*args, "--json").stdout)["modes"]["bm25"]["unknown_relevant"] == ["runbook/disk-full.md"]


def test_eval_can_rank_one_kind_of_document(eval_files: tuple[Path, Path], tmp_path: Path) -> None:
    knowledge, _ = eval_files
    past = {"id": "past", "query": "the outage last spring", "relevant": ["incidents/INC-1.yaml"]}
    args = bm25_eval_of_the_disk_query_and(knowledge, tmp_path / "kinds.jsonl", past)
    result = invoke(*args, "--documents", "runbooks")
    assert result.exit_code == 0, result.output
    assert table_rows(result.stdout)[("bm25", "all")]["n"] == 1
    assert "1 queries skipped: none of their relevant documents are runbooks." in result.stdout

    data = json.loads(invoke(*args, "--documents", "runbooks", "--json").stdout)
    assert data["documents"] == "runbooks"
    assert data["modes"]["bm25"]["skipped"] == 1
    assert data["modes"]["bm25"]["all"]["recall@1"] == 1.0

    _, runbook_queries = eval_files
    only_runbooks = ("eval", "--knowledge", str(knowledge), "--queries", str(runbook_queries), "--mode", "bm25")
    failed = invoke(*only_runbooks, "--documents", "incidents")
    assert_clean_failure(failed, "no query has a relevant document under incidents/")
    result = invoke(*args, "--documents", "people")
    assert result.exit_code == 2 and "Invalid value for '--documents'" in result.stderr


def test_eval_refuses_options_of_the_other_task(eval_files: tuple[Path, Path]) -> None:
    knowledge, queries = eval_files
    result = invoke("eval", "--task", "experts", "--knowledge", str(knowledge), "--documents", "runbooks")
    assert_clean_failure(result, "--documents only applies to --task search")
    search = ("eval", "--knowledge", str(knowledge), "--queries", str(queries))
    result = invoke(*search, "--with-services", "--relevant", "main")
    assert_clean_failure(result, "--relevant, --with-services only apply to --task experts", "change --task")


def test_eval_experts_refuses_time_split_options_with_a_query_file(eval_files: tuple[Path, Path]) -> None:
    knowledge, queries = eval_files
    experts = ("eval", "--task", "experts", "--knowledge", str(knowledge), "--queries", str(queries))
    assert_clean_failure(
        invoke(*experts, "--relevant", "main", "--with-services"),
        "--relevant, --with-services only apply to the time split (without --queries); a query file gives its own "
        '"relevant" people and "services": leave them out or drop --queries.',
    )
    assert_clean_failure(
        invoke(*experts, "--relevant", "all"), "--relevant only applies to the time split", "leave it out"
    )


def test_eval_experts_refuses_a_date_outside_the_calendars_working_years(tmp_path: Path) -> None:
    # Before, a date near year 9999 overflowed in the ranking, in a traceback.
    queries = write_queries(
        tmp_path / "experts.jsonl",
        [{"query": "pgbouncer pool exhausted", "relevant": ["U04C2RN8VD"], "date": "9999-12-31T23:59:59"}],
    )
    result = invoke("eval", "--task", "experts", "--knowledge", str(SAMPLE_KNOWLEDGE), "--queries", str(queries))
    assert_clean_failure(result, "experts.jsonl:1: \"date\" '9999-12-31T23:59:59' must fall in the years 1970 to 9000")


def test_eval_query_kind_all_is_counted_once(eval_files: tuple[Path, Path], tmp_path: Path) -> None:
    knowledge, _ = eval_files
    queries = write_queries(
        tmp_path / "kinds.jsonl",
        [
            {"query": "docker no space left on device", "relevant": ["runbooks/disk-full.md"], "kind": "all"},
            {"query": "who approves production migrations", "relevant": ["runbooks/change-approval.md"]},
        ],
    )
    result = invoke("eval", "--knowledge", str(knowledge), "--queries", str(queries), "--mode", "bm25", "--json")
    assert result.exit_code == 0, result.output
    overall = json.loads(result.stdout)["modes"]["bm25"]["all"]
    assert overall["queries"] == 2
    assert overall["recall@1"] == 0.5


def test_eval_measures_the_cited_section_where_queries_label_it(eval_files: tuple[Path, Path], tmp_path: Path) -> None:
    knowledge, _ = eval_files
    fix = "runbooks/disk-full.md#fix"
    queries = write_queries(
        tmp_path / "sections.jsonl",
        [
            {
                "id": "prune",
                "query": "docker system prune stale workspaces",
                "relevant": ["runbooks/disk-full.md"],
                "sections": [fix],
                "kind": "howto",
            },
            {
                "id": "pull",
                "query": "no space left on device pulling images",
                "relevant": ["runbooks/disk-full.md"],
                "sections": [fix],
                "kind": "howto",
            },
            {"id": "cert", "query": "x509: certificate has expired", "relevant": ["runbooks/cert-expiry.md"]},
        ],
    )
    args = ("eval", "--knowledge", str(knowledge), "--queries", str(queries), "--mode", "bm25")
    result = invoke(*args, "--misses")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[0].split()[-2:] == ["Sec@1", "of"]
    assert re.search(r"^bm25\s+all\s+3\s+1\.000 .* 0\.500\s+2$", result.stdout, re.M), result.stdout
    # The second query finds the right runbook but cites its symptoms, not the fix it asks for.
    assert f"[bm25] pull: right document, cited runbooks/disk-full.md#symptoms want ['{fix}']" in result.stdout
    assert "[bm25] prune" not in result.stdout

    data = json.loads(invoke(*args, "--json").stdout)["modes"]["bm25"]
    assert data["all"]["section@1"] == 0.5 and data["all"]["sectioned"] == 2
    assert data["howto"]["section@1"] == 0.5
    assert [m["id"] for m in data["section_misses"]] == ["pull"]

    plain = invoke("eval", "--knowledge", str(knowledge), "--queries", str(eval_files[1]), "--mode", "bm25")
    assert "Sec@1" not in plain.stdout  # no column when no query labels sections


@pytest.mark.parametrize(
    ("sections", "message"),
    [
        ("runbooks/disk-full.md#fix", '"sections" must be a list of "path#anchor" strings'),
        (["runbooks/disk-full.md"], 'has no "#anchor"'),
        (["runbooks/dns.md#fix"], 'is in a document that "relevant" does not list'),
    ],
)
def test_eval_malformed_sections_name_the_line(
    eval_files: tuple[Path, Path], tmp_path: Path, sections: object, message: str
) -> None:
    knowledge, _ = eval_files
    good = {"query": "disk full", "relevant": ["runbooks/disk-full.md"]}
    queries = write_queries(tmp_path / "bad.jsonl", [good, {**good, "sections": sections}])
    result = invoke("eval", "--knowledge", str(knowledge), "--queries", str(queries))
    assert_clean_failure(result, f"{queries}:2: ", message)


def test_shell_answers_typed_questions_and_commands(subset_db: IndexedSubset) -> None:
    result = CliRunner().invoke(
        main, ["shell"], input="/help\n/ask\n/foo x\n/ask pgbouncer too many clients\n/quit\nnever read\n"
    )
    assert result.exit_code == 0, result.output
    assert "you are Priya Raman (U03F8K2LQ1)" in result.output  # the first roster member
    assert "Priya Raman> /ask pgbouncer too many clients" in result.output  # piped lines are echoed
    assert "Usage: `/ask QUESTION`" in result.output
    assert "Unknown command /foo" in result.output
    assert "Looking for: pgbouncer too many clients" in result.output
    assert "`runbooks/postgres/connection-pool-exhausted.md`" in result.output
    assert "[1] Share in channel  [2] 👍 Helpful  [3] 👎 Not helpful" in result.output
    assert "\x1b[" not in result.output  # no colour codes when the output is not a terminal
    assert "never read" not in result.output


def test_shell_starts_at_once_while_another_process_holds_the_write_lock(subset_db: IndexedSubset) -> None:
    # Before, it re-announced an earlier session's pending requests in a write transaction even with none pending,
    # and every line typed was lost after 30 s to "another process holds the database's write lock".
    with closing(sqlite3.connect(subset_db.db, isolation_level=None)) as holder:
        holder.execute("BEGIN IMMEDIATE")  # an operator's sqlite3 session, a VACUUM
        started = time.monotonic()
        result = CliRunner().invoke(main, ["shell"], input="/help\n")
        holder.execute("ROLLBACK")
    assert result.exit_code == 0, result.output
    assert "you are Priya Raman" in result.output and "/ask QUESTION" in result.output
    assert time.monotonic() - started < 20


def test_shell_acts_as_the_user_given_and_refuses_others(subset_db: IndexedSubset) -> None:
    result = CliRunner().invoke(main, ["shell", "--user", "U04C2RN8VD"], input="/help\n")
    assert result.exit_code == 0, result.output
    assert "you are Daniel Okafor (U04C2RN8VD)" in result.output
    result = invoke("shell", "--user", "UNOBODY")
    assert_clean_failure(result, "UNOBODY is not on the roster", "Priya Raman (U03F8K2LQ1)")


def test_shell_on_an_empty_index_says_to_index_first() -> None:
    Store(os.environ["OPSBOT_DB"]).close()  # a database, with nothing indexed in it
    result = invoke("shell")
    assert_clean_failure(result, "the index is empty", "run `opsbot index` first")


def test_shell_where_no_database_is_says_so_and_makes_none() -> None:
    result = invoke("shell")
    assert_clean_failure(result, "does not exist: opsbot's database is made by `opsbot index`")
    assert not Path(os.environ["OPSBOT_DB"]).exists()


def test_bench_search_reports_latency_split_and_memory() -> None:
    result = CliRunner().invoke(main, ["bench", "search", "--sizes", "40", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    (row,) = report["search"]
    assert row["chunks"] == 40
    assert row["encode_ms"]["p50"] > 0 and row["search_ms"]["p50"] > 0
    assert row["total_ms"]["p50"] >= row["search_ms"]["p50"]
    assert row["index_memory_mb"] >= 0 and report["peak_rss_mb"] > 0


def test_bench_rejects_bad_sizes() -> None:
    result = CliRunner().invoke(main, ["bench", "search", "--sizes", "ten"])
    assert result.exit_code == 1
    assert "--sizes 'ten' must be whole numbers" in result.output
    too_large = invoke("bench", "search", "--sizes", "1000,50000000")
    assert_clean_failure(too_large, "--sizes 50000000 is over the limit of 1,000,000 chunks", "give smaller sizes")


@pytest.mark.parametrize("what", ["index", "experts"])
def test_bench_refuses_sizes_where_the_corpus_is_fixed(what: str) -> None:
    assert_clean_failure(invoke("bench", what, "--sizes", "5000"), f"--sizes does not apply to `opsbot bench {what}`")


def test_experts_command_explains_each_suggestion(subset_db: IndexedSubset) -> None:
    result = invoke("experts", "pgbouncer pool exhausted on pg-main", "--service", "checkout-api")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert re.match(r"^1\. .+ \(U[A-Z0-9]+, \w+\)  score \d\.\d\d", lines[0])
    # the database expert and the service owner lead (load spreading may swap them after earlier tests)
    assert {lines[0].split(" (")[0][3:], next(ln for ln in lines[1:] if ln.startswith("2. ")).split(" (")[0][3:]} == {
        "Daniel Okafor",
        "Priya Raman",
    }
    assert "resolved INC-" in result.stdout and "owns checkout-api" in result.stdout
    rows = json.loads(invoke("experts", "--json", "pgbouncer pool exhausted").stdout)
    assert rows[0]["id"] == "U04C2RN8VD" and rows[0]["incidents"] and rows[0]["reasons"]
    bad = invoke("experts", "slow", "--service", "chekout-api")
    assert bad.exit_code == 1 and "unknown service 'chekout-api'" in bad.output and "Traceback" not in bad.output


def test_experts_on_the_command_line_is_not_counted_as_a_first_place_for_load_spreading(
    subset_db: IndexedSubset,
) -> None:
    """Trying questions from the command line must not move people down in what Slack suggests."""
    store = Store(subset_db.db)
    try:
        before = store.recent_first_suggestions(limit=1000)
        asked = [invoke("experts", "--json", "pgbouncer pool exhausted", "--service", "checkout-api") for _ in range(3)]
        assert all(r.exit_code == 0 for r in asked), asked[0].output
        assert json.loads(asked[0].stdout)
        assert store.recent_first_suggestions(limit=1000) == before
    finally:
        store.close()


def test_eval_experts_prints_the_learned_ranking_and_every_baseline() -> None:
    result = CliRunner().invoke(main, ["eval", "--task", "experts", "--knowledge", str(SAMPLE_KNOWLEDGE), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert set(report["rankings"]) == {
        "learned",
        "tfidf_knn",
        "tfidf_knn_ownership",
        "recent_activity",
        "ownership",
        "most_frequent",
    }
    assert report["split"].startswith("time split") and report["with_services"] is False
    table = CliRunner().invoke(main, ["eval", "--task", "experts", "--knowledge", str(SAMPLE_KNOWLEDGE)]).output
    for label in ("opsbot learned", "TF-IDF nearest past incidents", "most active in the last year", "blend: "):
        assert label in table
    # The second run embeds nothing: every vector comes from the cache beside the database.
    assert "embedded 0, reused 42 from the cache" in table  # 29 incidents and 13 questions
    missing = CliRunner().invoke(main, ["eval", "--knowledge", str(SAMPLE_KNOWLEDGE)])
    assert missing.exit_code == 1 and "--queries is required for the search task" in missing.output


def test_experts_refuses_an_empty_problem_with_a_command_line_example() -> None:
    assert_clean_failure(invoke("experts", "  "), 'for example `opsbot experts "ALERT OR ERROR TEXT" --service NAME`')
    assert_clean_failure(invoke("experts", "pool exhausted", "--service", ""), "--service is empty")


def test_shell_refuses_an_empty_user() -> None:
    assert_clean_failure(invoke("shell", "--user", ""), "--user is empty", "leave the option out")


def test_a_file_that_is_not_a_database_is_a_clear_error(tmp_path: Path) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("not sqlite\n")
    for args in (["feedback"], ["channels", "list"], ["experts", "pool exhausted"], ["shell"]):
        result = invoke(*args, env={"OPSBOT_DB": str(notes)})
        assert_clean_failure(result, f"{str(notes)!r} is not an opsbot database", "point OPSBOT_DB at")


# -- serve, manifest, channels -------------------------------------------------

HTTP_INSTALL = {"SLACK_BOT_TOKEN": "xoxb-test", "SLACK_SIGNING_SECRET": "test-signing-secret"}
SOCKET_MODE = {"SLACK_BOT_TOKEN": "xoxb-test", "SLACK_APP_TOKEN": "xapp-test"}


@pytest.fixture
def no_start(monkeypatch: pytest.MonkeyPatch) -> None:
    """`opsbot serve` must stop before it starts anything: a test that got that far fails, never hangs."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("serve went on to start the app")

    monkeypatch.setattr("bot.runtime.Runtime", refuse)


def test_serve_refuses_options_of_the_other_mode(no_start: None) -> None:
    result = invoke("serve", "--hooks-port", "3001", env=HTTP_INSTALL)
    assert_clean_failure(result, "--hooks-port is for Socket Mode", "leave --hooks-port out")
    assert_clean_failure(
        invoke("serve", "--port", "3001", env=SOCKET_MODE), "--port is for HTTP installs", "--hooks-port"
    )
    result = invoke("serve", "--host", "127.0.0.1", env=SOCKET_MODE)
    assert_clean_failure(result, "--host only applies to --hooks-port")
    assert_clean_failure(invoke("serve", "--host", "", env=HTTP_INSTALL), "--host is empty")


def test_serve_says_when_its_port_is_taken(no_start: None) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        http = invoke("serve", "--host", "127.0.0.1", "--port", str(port), env=HTTP_INSTALL)
        hooks = invoke("serve", "--host", "127.0.0.1", "--hooks-port", str(port), env=SOCKET_MODE)
    assert_clean_failure(http, f"cannot listen on 127.0.0.1:{port}", "choose another --port")
    assert_clean_failure(hooks, f"cannot listen on 127.0.0.1:{port}", "choose another --hooks-port")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "give --url https://YOUR-HOST, the public address where Slack reaches `opsbot serve`"),
        (["--name", "ops"], "or --socket-mode for an install that needs no public address"),
        (["--socket-mode", "--url", "https://ops.example.org"], "--url is for HTTP installs"),
        (["--url", ""], "--url is empty"),
        (["--url", "http://ops.example.org"], "must be the https:// address of `opsbot serve`"),
        (["--url", "ops.example.org"], "must be the https:// address of `opsbot serve`"),
        (["--url", "https://[::1"], "must be the https:// address of `opsbot serve`"),
        (["--url", "https://ops.example.org:99999"], "must be the https:// address of `opsbot serve`"),
        (["--url", "https://ops.example.org:https"], "must be the https:// address of `opsbot serve`"),
        (["--url", "https://ops.example.org/slack/events"], "leave /slack/events out"),
        (["--url", "https://ops.example.org?env=prod"], "leave out the query (?env=prod)"),
        (["--url", "https://ops.example.org/opsbot?"], "leave out the query (?)"),
        (["--url", "https://ops.example.org#x"], "leave out the fragment (#x)"),
        (["--url", "https://ops:s3cret@ops.example.org"], "leave out the user info (the part before @)"),
        (["--name", " "], "--name is empty"),
    ],
)
def test_manifest_refuses_what_it_would_ignore_or_slack_would_refuse(args: list[str], message: str) -> None:
    result = invoke("manifest", *args)
    assert_clean_failure(result, message)
    assert "s3cret" not in result.output


def test_channels_set_refuses_a_direct_message() -> None:
    Store(os.environ["OPSBOT_DB"]).close()
    result = invoke("channels", "set", "D04ALERTS1", "all")
    assert_clean_failure(result, "D04ALERTS1 is a direct message", "ids starting with C or G")
    assert invoke("channels", "list").stdout.startswith("No channel settings")


def test_eval_shows_the_problems_of_the_knowledge_and_a_relevant_file_that_failed_to_load(tmp_path: Path) -> None:
    # Before, the text output said nothing of a file that failed to load, and blamed the query file's path.
    files = {f"runbooks/{name}": text for name, text in EVAL_RUNBOOKS.items()}
    files["runbooks/broken.md"] = "---\ntitle: [unclosed\n---\n# Broken\n\nA runbook whose front matter is broken.\n"
    knowledge = write_files(tmp_path / "knowledge", files)
    queries = tmp_path / "q.jsonl"
    broken = {"id": "broken", "query": "front matter is broken", "relevant": ["runbooks/broken.md"]}
    result = invoke(*bm25_eval_of_the_disk_query_and(knowledge, queries, broken))
    assert result.exit_code == 0, result.output
    assert "Warning: runbooks/broken.md" in result.stderr
    assert "1 of them failed to load (above): fix them, or run `opsbot check" in result.stderr


def test_what_the_shell_decides_is_audited_as_the_shell_s_with_the_login_that_ran_it(
    subset_db: IndexedSubset, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # /user acts as anyone on the roster: before, a request approved in the shell under two other names was audited
    # exactly as if those people had clicked in Slack.
    from bot.cli.deploys import login
    from bot.shell.repl import Shell

    seen: list[str] = []
    start = Shell.__init__

    def spy(self: Shell, runtime: object, *args: object, **kwargs: object) -> None:
        seen.append(runtime.store.audit_via)  # type: ignore[attr-defined]
        start(self, runtime, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Shell, "__init__", spy)
    assert CliRunner().invoke(main, ["shell"], input="/quit\n").exit_code == 0
    assert seen == [f"opsbot shell ({login()})"]

    store = Store(tmp_path / "audit.db")
    try:
        store.audit_via = seen[0]
        with store.transaction():
            store.audit("U04C2RN8VD", "deploy.approved", "dep-1")
        assert store.audit_rows()[-1]["details"] == {"via": seen[0]}
    finally:
        store.close()
