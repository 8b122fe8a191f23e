"""The runtime's deploy and incident services: built once per index version, rebuilt after `opsbot index`."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from bot.answers import indexer
from bot.answers.indexer import index_knowledge
from bot.config import Settings
from bot.runtime import NotReady, Runtime
from bot.store import Store
from tests.conftest import FakeEncoder
from tests.ops.fixtures import SERVICES, make_knowledge

RUNBOOK = "---\ntitle: Web is slow\nservices: [web]\n---\n# Web is slow\n\n## Fix\nRestart the web pods.\n"
DISK = "# Disk full\n\n## Symptoms\nThe ledger disk is full: writes fail with ENOSPC.\n\n## Fix\nDelete old archives.\n"
API_SERVICE = """\
  api:
    owners: [UALICE0001]
    environments:
      staging: {approvals: 1, approvers: [web]}
    deploy: {command: ["{python}", "-c", "print(1)"]}
"""
INCIDENT = """\
id: INC-2026-0042
title: Label printers jammed
date: 2026-11-20T08:00:00Z
severity: 3
services: [label-printing]
responders: [UALICE0001]
summary: The warehouse label printers jammed.
root_cause: A driver update.
resolution: Rolled the driver back.
"""


@dataclass
class Indexed:
    knowledge: Path
    store: Store
    encoder: FakeEncoder
    runtime: Runtime

    def reindex(self) -> None:
        """What `opsbot index` does, from another process's point of view: the stored knowledge changes."""
        index_knowledge(self.store, self.encoder, self.knowledge)


def indexed_runtime(tmp_path: Path, files: dict[str, str], **settings: object) -> Runtime:
    """A runtime over the test organisation plus these knowledge files (path -> text), indexed with the fake encoder."""
    knowledge = make_knowledge(tmp_path / "knowledge")
    for name, text in files.items():
        (knowledge / name).parent.mkdir(parents=True, exist_ok=True)
        (knowledge / name).write_text(text, encoding="utf-8")
    store = Store(tmp_path / "opsbot.db")
    encoder = FakeEncoder()
    index_knowledge(store, encoder, knowledge)
    config = Settings(knowledge_dir=knowledge, db_path=tmp_path / "opsbot.db", model="unused", **settings)  # type: ignore[arg-type]
    return Runtime(config, encoder=encoder, store=store)  # type: ignore[arg-type]


@pytest.fixture
def indexed(tmp_path: Path) -> Iterator[Indexed]:
    runtime = indexed_runtime(tmp_path, {"runbooks/web-slow.md": RUNBOOK})
    yield Indexed(runtime.settings.knowledge_dir, runtime.store, runtime.encoder, runtime)  # type: ignore[arg-type]
    runtime.store.close()


def test_repeated_calls_reuse_the_configuration_built_for_this_index_version(indexed: Indexed) -> None:
    runtime = indexed.runtime
    deploys, incidents = runtime.deploys(), runtime.incidents()

    assert runtime.deploys() is deploys and runtime.incidents() is incidents
    # Not read again: a change written behind the index's back is not seen until the index version moves.
    indexed.store.replace_services({})
    assert sorted(runtime.deploys().services) == ["strict", "web"]
    assert "web" in runtime.incidents().known_services


def test_a_reindex_that_changed_the_knowledge_is_picked_up_by_the_running_bot(indexed: Indexed) -> None:
    runtime = indexed.runtime
    deploys, incidents = runtime.deploys(), runtime.incidents()
    assert "api" not in deploys.services and "label-printing" not in incidents.known_services

    (indexed.knowledge / "services.yaml").write_text(SERVICES + API_SERVICE, encoding="utf-8")
    (indexed.knowledge / "incidents").mkdir()
    (indexed.knowledge / "incidents" / "INC-2026-0042.yaml").write_text(INCIDENT, encoding="utf-8")
    indexed.reindex()

    assert runtime.deploys() is not deploys and sorted(runtime.deploys().services) == ["api", "strict", "web"]
    assert runtime.incidents() is not incidents and "label-printing" in runtime.incidents().known_services
    assert runtime.deploys() is runtime.deploys()  # and cached again for the new version


def test_a_reindex_that_changed_nothing_keeps_the_cached_configuration(indexed: Indexed) -> None:
    deploys = indexed.runtime.deploys()
    indexed.reindex()
    assert indexed.runtime.deploys() is deploys


def test_a_reindex_that_changed_only_services_yaml_is_picked_up(indexed: Indexed) -> None:
    runtime = indexed.runtime
    assert "api" not in runtime.deploys().services
    (indexed.knowledge / "services.yaml").write_text(SERVICES + API_SERVICE, encoding="utf-8")
    indexed.reindex()
    assert "api" in runtime.deploys().services


def test_an_answer_that_names_experts_encodes_the_question_once(tmp_path: Path) -> None:
    runtime = indexed_runtime(tmp_path, {"incidents/INC-2026-0042.yaml": INCIDENT}, min_similarity=0.0)
    encoder = runtime.encoder
    runtime.experts_model()  # trained before the question, so only the question's own encodes are counted
    encoder.calls.clear()

    reply = runtime.answers.reply("label printers jammed in the warehouse")

    assert reply.incidents and reply.experts
    assert encoder.encoded == ["label printers jammed in the warehouse"]
    runtime.close()


def loading_runtime(tmp_path: Path, encoder: FakeEncoder) -> Runtime:
    """A runtime over indexed knowledge whose background loading runs ``encoder.load``."""
    knowledge = make_knowledge(tmp_path / "knowledge")
    store = Store(tmp_path / "opsbot.db")
    index_knowledge(store, FakeEncoder(), knowledge)
    settings = Settings(knowledge_dir=knowledge, db_path=tmp_path / "opsbot.db", model="unused")
    return Runtime(settings, encoder=encoder, store=store)  # type: ignore[arg-type]


def test_closing_waits_for_the_loader_that_still_reads_the_store(tmp_path: Path) -> None:
    gate = threading.Event()

    class SlowLoading(FakeEncoder):
        def load(self) -> None:
            gate.wait(5)

    runtime = loading_runtime(tmp_path, SlowLoading())
    runtime.start_loading()
    threading.Timer(0.2, gate.set).start()

    runtime.close()  # would close the connection under the loader's reads without waiting

    assert runtime.ready  # the loader finished its reads before the store was closed


def test_a_loading_that_fails_once_the_bot_is_closing_is_one_line_not_a_traceback(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # `opsbot serve` whose Slack refused the app token exits while the model still loads; the interpreter's exit
    # then broke the loader's import of torch ("operator prims::bitwise_xor does not exist"), logged as a failure.
    gate, closing = threading.Event(), threading.Event()

    class CutShort(FakeEncoder):
        def load(self) -> None:
            gate.wait(5)
            raise RuntimeError("operator prims::bitwise_xor does not exist")

    runtime = loading_runtime(tmp_path, CutShort())
    runtime.start_loading()
    threading.Timer(0.2, lambda: (closing.wait(5), gate.set())).start()
    caplog.set_level("INFO", logger="bot.runtime")

    runtime.stopping()  # as `opsbot serve` does when its start failed
    closing.set()
    assert runtime.close(5)  # the loader, then the store

    (said,) = [r for r in caplog.records if r.name == "bot.runtime" and r.getMessage().startswith("loading")]
    assert said.levelname == "INFO" and said.exc_info is None
    assert "opsbot is stopping" in said.getMessage() and "bitwise_xor" in said.getMessage()
    with pytest.raises(NotReady, match="could not be loaded"):  # a question waiting on it is still told
        runtime.index(0)


def test_a_loading_that_fails_while_the_bot_runs_is_logged_with_its_traceback(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    class Broken(FakeEncoder):
        def load(self) -> None:
            raise RuntimeError("weights missing")

    runtime = loading_runtime(tmp_path, Broken())
    with pytest.raises(NotReady, match="weights missing"):
        runtime.index(5)

    (said,) = [r for r in caplog.records if r.getMessage() == "loading failed"]
    assert said.levelname == "ERROR" and said.exc_info is not None
    runtime.close()


def test_a_section_holding_the_questions_words_together_is_kept_below_the_similarity_floor(tmp_path: Path) -> None:
    files = {
        "runbooks/scheduler-down.md": "# Scheduler down\n\n## Meaning\n\nThe scheduler has disappeared from "
        "Prometheus target discovery, so nothing scrapes it and new pods wait in Pending until a replica is back.\n",
        "runbooks/targets.md": "# Prometheus targets\n\n## Meaning\n\nA Prometheus target can be dropped from "
        "discovery. The scheduler is one target among many; when it disappeared last time, nobody noticed for a day.\n",
    }
    # A floor no bag-of-words cosine reaches: only the section that holds the question's words stays.
    runtime = indexed_runtime(tmp_path, files, min_similarity=0.99)

    reply = runtime.answers.reply("the scheduler disappeared from Prometheus target discovery")

    assert [h.path for h in reply.runbooks] == ["runbooks/scheduler-down.md"]
    assert reply.runbooks[0].quoted and reply.runbooks[0].section == "Meaning"
    runtime.close()


def test_a_resolved_incident_a_stopped_process_did_not_index_is_indexed_at_the_next_start(tmp_path: Path) -> None:
    first = indexed_runtime(tmp_path, {"runbooks/web-slow.md": RUNBOOK}, min_similarity=0.0)
    incidents = first.incidents()
    learned = incidents.declare("Badge readers offline at the north gate", "UALICE0001")
    _, past = incidents.resolve(learned, "UALICE0001", "Restarted the badge controller")
    first.learn_from(past)
    # Resolved and committed, then the process died before learn_from: not a past incident, not searchable.
    missed = incidents.declare("Label printers jammed in the warehouse", "UALICE0001")
    incidents.resolve(missed, "UALICE0001", "Rolled the printer driver back")
    still_open = incidents.declare("Label printers jammed again", "UALICE0001")
    incidents.cancel(incidents.declare("Printers: declared twice", "UALICE0001"), "UALICE0001")
    assert {i.id for i in incidents.store.load_incidents()} == {learned.id}
    first.close()

    encoder = FakeEncoder()
    second = Runtime(first.settings, encoder=encoder, store=Store(tmp_path / "opsbot.db"))  # type: ignore[arg-type]
    second.start_loading()

    reply = second.answers.reply("label printers jammed in the warehouse")

    assert missed.id in [h.incident_id for h in reply.incidents]
    # Neither the open nor the cancelled one.
    assert {i.id for i in second.store.load_incidents()} == {missed.id, learned.id}
    assert still_open.id not in {i.id for i in second.store.load_incidents()}
    assert not any("Badge readers" in text for text in encoder.encoded)  # the learned one is not embedded again
    assert second.learn_missed() == []  # nothing left to catch up
    second.close()


def test_a_refit_after_votes_stops_when_the_bot_closes_and_the_next_start_makes_it(tmp_path: Path) -> None:
    topics = ("queue backlog", "disk full", "certificate expiry", "dns failures", "cache misses")
    files = {
        f"runbooks/{t.replace(' ', '-')}.md": f"# {t.title()}\n\n## Fix\nLook at the {t} dashboard.\n" for t in topics
    }
    runtime = indexed_runtime(tmp_path, {"runbooks/web-slow.md": RUNBOOK, **files}, min_similarity=0.0)
    reply = runtime.answers.reply("web is slow, restart the pods?")
    assert reply.top is not None and runtime.store.load_ranker(runtime.encoder.model_id)[2]["votes"] == 0
    index = runtime.index()
    searching, go_on = threading.Event(), threading.Event()
    search = index.signals

    def held(*args: object, **kwargs: object) -> object:  # the refit's first search waits for the test
        searching.set()
        go_on.wait(10)
        return search(*args, **kwargs)

    index.signals = held  # type: ignore[method-assign]
    runtime.answers.vote(reply.id, "UALICE0001", 1)  # starts a refit in the background
    assert searching.wait(10)
    closing = threading.Thread(target=runtime.close)
    closing.start()
    threading.Timer(0.2, go_on.set).start()
    closing.join(10)

    assert not closing.is_alive()
    store = Store(tmp_path / "opsbot.db")
    model = runtime.encoder.model_id
    assert store.load_ranker(model)[2]["votes"] == 0  # stopped before it stored anything: the vote is not fitted
    assert len(store.feedback_rows()) == 1  # ... but it is kept

    second = Runtime(runtime.settings, encoder=FakeEncoder(), store=store)  # type: ignore[arg-type]
    assert second.votes_unfitted()
    second.start_loading()
    second.index()
    assert second._refit is not None
    second._refit.join(30)
    assert store.load_ranker(model)[2]["votes"] == 1 and not second.votes_unfitted()
    second.close()


def test_an_index_with_another_model_leaves_the_running_bot_answering_and_says_so(
    indexed: Indexed, caplog: pytest.LogCaptureFixture
) -> None:
    """`opsbot index` run with another OPSBOT_MODEL (another shell, a deploy script) while the bot serves."""
    runtime = indexed.runtime
    runtime.start_loading()
    before = runtime.index().size
    assert before > 0 and runtime.index_problem() == ""

    index_knowledge(indexed.store, FakeEncoder(model_id="fake-encoder-v2"), indexed.knowledge)

    index = runtime.index()
    assert index.size == before
    assert [h.path for h in index.search("restart the web pods", k=1, mode="dense").hits] == ["runbooks/web-slow.md"]
    problem = runtime.index_problem()
    assert "fake-encoder-v2" in problem and "fake-encoder" in problem and "OPSBOT_MODEL" in problem
    assert any(r.levelname == "ERROR" and "fake-encoder-v2" in r.getMessage() for r in caplog.records)


def test_a_reindex_stopped_while_its_ranker_is_fitted_leaves_a_running_bot_answering_from_the_new_text(
    indexed: Indexed, monkeypatch: pytest.MonkeyPatch
) -> None:
    runbook = indexed.knowledge / "runbooks" / "disk.md"
    runbook.write_text(DISK)
    (indexed.knowledge / "runbooks" / "queue.md").write_text("# Queue backlog\n\n## Fix\nAdd consumers.\n")
    indexed.reindex()  # disk.md's rows are not the last: rewritten, they get new ids
    runtime = indexed.runtime
    runtime.start_loading()
    assert [h.path for h in runtime.answers.reply("ledger disk full ENOSPC").runbooks] == ["runbooks/disk.md"]
    runbook.write_text(DISK + "\nCheck the inodes too: df -i.\n")

    def stopped(*args: object, **kwargs: object) -> None:  # Ctrl-C, or the deploy that replaces the host
        raise KeyboardInterrupt

    monkeypatch.setattr(indexer, "_store_training_queries", stopped)
    with pytest.raises(KeyboardInterrupt):
        indexed.reindex()

    reply = runtime.answers.reply("ledger disk full ENOSPC")
    assert [h.path for h in reply.runbooks] == ["runbooks/disk.md"]  # its rows were rewritten, not lost
