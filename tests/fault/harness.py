"""Real `opsbot serve` processes for the fault suite: knowledge, database, start, kill, drive, inspect.

A session indexes one small knowledge folder once (tests/fault/conftest.py); each scenario gets a Cluster:
its own folder with a copy of that database, the fake Slack Web API behind a FaultProxy, and as many
`opsbot serve` processes (HTTP mode, each on a free loopback port) as it starts. The processes run
`python -m bot serve` from the worktree under test, with a child environment built here (never the
machine's SLACK_*/OPSBOT_* variables, never a real token), and their combined output is copied to
one log file per process. The deploy runner is tests/fault/runner.py, which marks each run in the
scenario folder's runs.log. The database is read directly with sqlite3, read-only.
"""

from __future__ import annotations

import http.client
import json
import os
import random
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from bot.ops.requests import FINAL
from bot.slack.local.fake_api import FakeSlackAPI
from tests.fault.proxy import FaultProxy
from tests.fault.report import SCALE, SCALES
from tests.ops.fixtures import ALICE, BOB, CAROL, DAVE, ERIN, FRANK, GINA, ROSTER  # noqa: F401 - the scenarios import them from here
from tests.slack.conftest import BOT_TOKEN, HOOK_SECRET, SIGNING_SECRET, HookDriver, Response, SlackDriver

ROOT = Path(__file__).resolve().parents[2]
RUNNER = Path(__file__).resolve().parent / "runner.py"
PYTHON = sys.executable
T = TypeVar("T")

if SCALE not in SCALES:
    raise RuntimeError(f"OPSBOT_FAULT_SCALE={SCALE!r} must be small or full")
# How long after its owner died a running deploy may stay running (the owner's lease), and the slack on top.
LEASE_S = float(os.environ.get("OPSBOT_FAULT_LEASE_S") or 30)
LEASE_MARGIN_S = 30.0
TRACEBACK = "Traceback (most recent call last)"
PORT_TAKEN = "Address already in use"

APPROVERS = (BOB, CAROL, GINA, FRANK, ERIN)  # may approve quick/prod; BOB and GINA (web) any staging
OPS_CHANNEL = "C0FAULT001"
KILL_SERVICES = 100  # svc-000 ... one per SIGKILL iteration, so a deploy left running holds no one else's lock
MESSAGE_SERVICES = 30  # msg-00 ...: deploys whose summaries go through a faulty Slack (24 cases at full scale)
RUNBOOK = """\
---
title: Disk full on a database host
services: [quick]
---
# Disk full on a database host

## Symptoms
Writes fail with "No space left on device" and the DiskFull alert fires for the primary.

## Fix
Delete old WAL archives under /var/lib/postgresql/archive, then grow the volume by 20%.
"""


def scaled(small: T, full: T) -> T:
    """The loop count (or size) for this run's scale: OPSBOT_FAULT_SCALE=small (default) or full."""
    return full if SCALE == "full" else small


def runner_command(mode: str) -> str:
    """A services.yaml command running tests/fault/runner.py in ``mode``."""
    argv = ["{python}", str(RUNNER), mode, "{service}", "{version}", "{env}", "{request_id}"]
    return json.dumps(argv)


def services_yaml() -> str:
    """Every service the scenarios deploy; each uses the fault runner."""
    deploy, rollback = runner_command("deploy"), runner_command("rollback")
    staging = "staging: {approvals: 1, approvers: [web]}"
    lines = [
        "settings:",
        "  request_ttl_minutes: 30",
        "services:",
        "  quick:",
        f"    owners: [{ALICE}]",
        "    environments:",
        f"      {staging}",
        f"      prod: {{approvals: 2, approvers: [web, sre, {ERIN}]}}",
        f"    deploy: {{command: {deploy}, timeout: 120}}",
        f"    rollback: {{command: {rollback}, timeout: 120}}",
        "  holiday:",
        "    environments:",
        "      staging:",
        "        approvals: 1",
        "        approvers: [web]",
        "        freeze:",
        '          - {start: "2000-01-01T00:00:00Z", end: "2099-01-01T00:00:00Z", reason: fault suite freeze}',
        f"    deploy: {{command: {deploy}, timeout: 120}}",
        "  leaky:",
        f"    environments: {{{staging}}}",
        f"    deploy: {{command: {runner_command('secrets')}, timeout: 120}}",
        "  stuck:",
        f"    environments: {{{staging}}}",
        f"    deploy: {{command: {runner_command('drip')}, timeout: 5}}",
    ]
    for name in [f"svc-{n:03d}" for n in range(KILL_SERVICES)] + [f"msg-{n:02d}" for n in range(MESSAGE_SERVICES)]:
        lines += [f"  {name}:", f"    environments: {{{staging}}}", f"    deploy: {{command: {deploy}, timeout: 120}}"]
    return "\n".join(lines) + "\n"


def make_knowledge(root: Path) -> Path:
    """A small knowledge folder: services.yaml, the roster and one runbook."""
    (root / "runbooks").mkdir(parents=True, exist_ok=True)
    (root / "services.yaml").write_text(services_yaml(), encoding="utf-8")
    (root / "experts.yaml").write_text(ROSTER, encoding="utf-8")
    (root / "runbooks" / "disk-full.md").write_text(RUNBOOK, encoding="utf-8")
    return root


def child_env(db: Path, knowledge: Path, api_url: str, onnx_cache: Path, **extra: str) -> dict[str, str]:
    """The whole environment of an opsbot child: test secrets only, the worktree first on the import path."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
        "HOME": os.environ.get("HOME", "/root"),
        "LANG": "C.UTF-8",
        "PYTHONPATH": str(ROOT),
        "PYTHONUNBUFFERED": "1",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "SLACK_BOT_TOKEN": BOT_TOKEN,
        "SLACK_SIGNING_SECRET": SIGNING_SECRET,
        "SLACK_API_URL": api_url,
        "OPSBOT_DB": str(db),
        "OPSBOT_KNOWLEDGE": str(knowledge),
        "OPSBOT_HOOK_SECRET": HOOK_SECRET,
        # The ONNX export is made once per cache; a serve then loads its model in 0.2 s instead of 4 s of CPU,
        # which is what lets a scenario restart processes a hundred times on two cores.
        "OPSBOT_ENCODER": "onnx",
        "OPSBOT_ONNX_CACHE": str(onnx_cache),
        "OPSBOT_LOG_LEVEL": "INFO",
    }
    return env | extra


_handed_out: set[int] = set()
_ports_lock = threading.Lock()


def free_port() -> int:
    """A loopback port free now and never handed out before in this session (a child started without waiting
    has not bound its port yet, and the kernel may offer that port again)."""
    with _ports_lock:
        while True:
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = int(s.getsockname()[1])
            if port not in _handed_out:
                _handed_out.add(port)
                return port


def wait_until(probe: Callable[[], T], timeout: float, interval: float = 0.1) -> T | None:
    """Poll ``probe`` until it returns something truthy (returned) or ``timeout`` passes (None)."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() >= deadline:
            return None
        time.sleep(interval)


# -- processes ----------------------------------------------------------------------------------------


class LogPump:
    """Copies a child's output, line by line, to a file as it comes."""

    def __init__(self, stream: Any, path: Path) -> None:
        self.path = path
        self._thread = threading.Thread(target=self._copy, args=(stream,), daemon=True, name=f"log-{path.name}")
        self._thread.start()

    def _copy(self, stream: Any) -> None:
        with self.path.open("ab") as out:
            for line in iter(stream.readline, b""):
                out.write(line)
                out.flush()

    def join(self, timeout: float = 5) -> None:
        self._thread.join(timeout)


@dataclass
class Serve:
    """One `opsbot serve` process."""

    name: str
    port: int
    process: subprocess.Popen
    log_path: Path
    pump: LogPump
    started: float = field(default_factory=time.monotonic)
    killed_at: float | None = None  # wall time of our SIGKILL
    served: bool = False  # it answered /healthz at least once

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def healthz(self, timeout: float = 5) -> tuple[int, dict]:
        """The /healthz status and JSON; (0, {}) when nothing answers."""
        response = http_request(self.url, "GET", "/healthz", timeout=timeout)
        try:
            return response.status, json.loads(response.body or "{}")
        except ValueError:
            return response.status, {}

    def wait_healthy(self, timeout: float = 60) -> float:
        """Seconds until /healthz answers; AssertionError (with the log) if the process dies or never answers."""
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            if not self.alive():
                raise AssertionError(f"{self.name} exited {self.process.returncode}:\n{self.log()[-3000:]}")
            if self.healthz(timeout=1)[0]:
                self.served = True
                return time.monotonic() - started
            time.sleep(0.05)
        raise AssertionError(f"{self.name} did not answer /healthz in {timeout}s:\n{self.log()[-3000:]}")

    def kill(self) -> float:
        """SIGKILL, as the OOM killer or a node failure would; returns the wall time of the kill."""
        self.killed_at = time.time()
        if self.alive():
            self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)
        self.pump.join()
        return self.killed_at

    def stop(self) -> None:
        if self.alive():
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self.pump.join()

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace") if self.log_path.exists() else ""

    def slack(self, proxy: FaultProxy) -> FaultSlack:
        return FaultSlack(self.url, proxy)  # type: ignore[arg-type]

    def hooks(self) -> HookDriver:
        return HookDriver(self.url)


def http_request(
    base_url: str, verb: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None, timeout: float = 30
) -> Response:
    """One request on its own connection; a dropped connection is status 0 with the error as its body."""
    parts = urlsplit(base_url)
    started = time.perf_counter()
    connection = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port or 80, timeout=timeout)
    try:
        connection.request(verb, path, body=body if verb != "GET" else None, headers=headers or {})
        response = connection.getresponse()
        text = response.read().decode("utf-8", errors="replace")
        return Response(response.status, text, time.perf_counter() - started)
    except (OSError, http.client.HTTPException) as exc:
        return Response(0, f"{type(exc).__name__}: {exc}", time.perf_counter() - started)
    finally:
        connection.close()


class FaultSlack(SlackDriver):
    """tests/slack's SlackDriver (the same signed payloads), sending over http.client: a dropped connection
    is a Response with status 0, and response_urls point at the proxy (``api`` is the FaultProxy)."""

    def post(
        self,
        body: str,
        content_type: str,
        *,
        timestamp: int | None = None,
        secret: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> Response:
        from tests.slack.conftest import sign

        ts = int(time.time()) if timestamp is None else timestamp
        sent = {
            "Content-Type": content_type,
            "X-Slack-Request-Timestamp": str(ts),
            "X-Slack-Signature": sign(body, ts, secret or self.secret),
            **(headers or {}),
        }
        return http_request(self.base_url, "POST", "/slack/events", body.encode(), sent)

    def command_named(
        self, command: str, text: str, user: str = ALICE, channel: str = OPS_CHANNEL, name: str | None = None
    ) -> tuple[Response, str]:
        """A slash command; returns the response and the name of its response_url (``name``, when given, so a
        proxy rule can be set for it before it is sent)."""
        response = self.command(command, text, user=user, channel=channel, name=name)
        return response, self.sent[-1]

    def approve(self, request_id: str, user: str, channel: str = OPS_CHANNEL, message_ts: str = "") -> Response:
        from bot.slack import ids

        return self.click(ids.DEPLOY_APPROVE, request_id, user=user, channel=channel, message_ts=message_ts or "1.0")


# -- a scenario's processes and database ----------------------------------------------------------


@dataclass(frozen=True)
class Run:
    """One run of the fault runner, from runs.log."""

    request_id: str
    pid: int
    started: float
    ended: float | None = None
    code: int | None = None


class Cluster:
    """One scenario: a folder, a copy of the session's database, the fake Slack API behind a proxy, processes."""

    def __init__(self, base: Base, root: Path, name: str = "") -> None:
        self.base = base
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self.db_path = root / "opsbot.db"
        copy_db(base.db, self.db_path)
        self.api = FakeSlackAPI().start()
        self.proxy = FaultProxy(self.api.port).start()
        self.processes: list[Serve] = []
        self._counter = 0
        self.name = name or root.name

    # -- processes ------------------------------------------------------------------------------

    def env(self, **extra: str) -> dict[str, str]:
        return child_env(self.db_path, self.base.knowledge, self.proxy.url, self.base.onnx_cache, **extra)

    def start(
        self,
        wait: bool = True,
        env: dict[str, str] | None = None,
        preexec: Callable[[], None] | None = None,
        cwd: Path | None = None,
    ) -> Serve:
        """`opsbot serve --host 127.0.0.1 --port P` in the scenario folder (the runner's working directory)."""
        for _attempt in range(3):  # a free port can be taken by someone else before the child binds it
            self._counter += 1
            port = free_port()
            log_path = self.root / f"serve-{self._counter}.log"
            process = subprocess.Popen(
                [PYTHON, "-m", "bot", "serve", "--host", "127.0.0.1", "--port", str(port)],
                env=env or self.env(),
                cwd=cwd or self.root,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                preexec_fn=preexec,
            )
            serve = Serve(f"serve-{self._counter}", port, process, log_path, LogPump(process.stdout, log_path))
            self.processes.append(serve)
            if not wait:
                return serve
            try:
                serve.wait_healthy()
                return serve
            except AssertionError:
                if "cannot listen" not in serve.log():
                    raise
        raise AssertionError("no free port for opsbot serve after 3 attempts")

    def cli(self, *args: str, timeout: float = 120, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        """`opsbot ARGS` in the scenario folder, to completion."""
        return subprocess.run(
            [PYTHON, "-m", "bot", *args],
            env=env or self.env(),
            cwd=self.root,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def close(self) -> None:
        self.proxy.release()
        for serve in self.processes:
            serve.stop()
        self.proxy.stop()
        self.api.stop()

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def lost_port_races(self) -> list[Serve]:
        """Processes that never served because someone else bound their port first (the harness started
        another in their place); their traceback is the harness's doing, not a finding."""
        return [s for s in self.processes if not s.served and not s.alive() and PORT_TAKEN in s.log()]

    def tracebacks(self) -> list[str]:
        """Each process log holding a Python traceback, with the lines around the first one."""
        found = []
        raced = self.lost_port_races()
        for serve in self.processes:
            if serve in raced:
                continue
            text = serve.log()
            at = text.find(TRACEBACK)
            if at >= 0:
                found.append(f"{serve.name}: {text[max(0, at - 300) : at + 1500]}")
        return found

    def logs(self) -> str:
        return "\n".join(serve.log() for serve in self.processes)

    # -- the database, read-only ----------------------------------------------------------------

    def query(self, sql: str, params: Iterable[Any] = ()) -> list[dict]:
        return query(self.db_path, sql, params)

    def request(self, request_id: str) -> dict | None:
        rows = self.query("SELECT * FROM deploy_requests WHERE id = ?", [request_id])
        return rows[0] if rows else None

    def requests(self, service: str | None = None) -> list[dict]:
        if service is None:
            return self.query("SELECT * FROM deploy_requests ORDER BY created_at, id")
        return self.query("SELECT * FROM deploy_requests WHERE service = ? ORDER BY created_at, id", [service])

    def decisions(self, request_id: str) -> list[dict]:
        return self.query("SELECT * FROM deploy_decisions WHERE request_id = ?", [request_id])

    def locks(self) -> list[dict]:
        return self.query("SELECT * FROM deploy_locks")

    def audit(self) -> list[dict]:
        return self.query("SELECT * FROM audit ORDER BY id")

    def wait_for_request(self, service: str, known: set[str] | None = None, timeout: float = 30) -> dict | None:
        """The newest request for ``service`` not in ``known``, once its lazy handler recorded it."""

        def probe() -> dict | None:
            fresh = [r for r in self.requests(service) if r["id"] not in (known or set())]
            return fresh[-1] if fresh else None

        return wait_until(probe, timeout)

    def wait_for_posted(self, request_id: str, timeout: float = 15) -> dict:
        """The request's row once its message is posted (it has a message_ts), else as it is after ``timeout``."""
        row = wait_until(lambda: (r := self.request(request_id)) and r["message_ts"] and r, timeout)
        return row or self.request(request_id) or {}

    def wait_for_status(self, request_id: str, statuses: Iterable[str], timeout: float) -> dict | None:
        wanted = set(statuses)
        return wait_until(lambda: (r := self.request(request_id)) and r["status"] in wanted and r, timeout)

    # -- the runner's marks ---------------------------------------------------------------------

    def runs(self) -> dict[str, list[Run]]:
        """Every run of the fault runner per request id, from runs.log."""
        return read_runs(self.root / "runs.log")

    def wait_for_run(self, request_id: str, ended: bool = False, timeout: float = 30) -> Run | None:
        def probe() -> Run | None:
            runs = self.runs().get(request_id) or []
            return next((r for r in runs if r.ended is not None or not ended), None)

        return wait_until(probe, timeout, interval=0.05)


def read_runs(path: Path) -> dict[str, list[Run]]:
    runs: dict[str, list[Run]] = {}
    if not path.exists():
        return runs
    ends: dict[tuple[str, int], tuple[float, int]] = {}
    starts: list[tuple[str, int, float]] = []
    for line in path.read_text(encoding="utf-8").splitlines():
        words = line.split()
        if len(words) == 4 and words[0] == "start":
            starts.append((words[1], int(words[2]), float(words[3])))
        elif len(words) == 5 and words[0] == "end":
            ends[(words[1], int(words[2]))] = (float(words[4]), int(words[3]))
    for request_id, pid, started in starts:
        ended, code = ends.get((request_id, pid), (None, None))
        runs.setdefault(request_id, []).append(Run(request_id, pid, started, ended, code))
    return runs


def query(path: Path, sql: str, params: Iterable[Any] = ()) -> list[dict]:
    """Rows as dicts, on a short-lived connection that never writes."""
    conn = sqlite3.connect(path, timeout=30)
    try:
        conn.execute("PRAGMA query_only = 1")
        conn.row_factory = sqlite3.Row
        return [dict(r) for r in conn.execute(sql, list(params)).fetchall()]
    finally:
        conn.close()


def copy_db(source: Path, target: Path) -> None:
    """A consistent copy (SQLite's backup API), with no WAL left beside it."""
    for suffix in ("", "-wal", "-shm"):
        Path(f"{target}{suffix}").unlink(missing_ok=True)
    src = sqlite3.connect(source)
    dst = sqlite3.connect(target)
    try:
        src.backup(dst)
        dst.execute("PRAGMA journal_mode=WAL")
    finally:
        dst.close()
        src.close()


def snapshot(path: Path, tables: Iterable[str]) -> dict[str, list[tuple]]:
    """The rows of ``tables``, sorted, to compare before and after (the /healthz write probe's time left out)."""
    conn = sqlite3.connect(path, timeout=30)
    try:
        rows = {t: sorted(map(tuple, conn.execute(f"SELECT * FROM {t}").fetchall()), key=repr) for t in tables}
    finally:
        conn.close()
    if "meta" in rows:
        rows["meta"] = [r for r in rows["meta"] if r[0] != "write_probe_at"]
    return rows


def dump_text(path: Path) -> str:
    """Every value of every table, as text (blobs decoded loosely), to search for what must not be stored."""
    conn = sqlite3.connect(path, timeout=30)
    out: list[str] = []
    try:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        for table in tables:
            try:
                rows = conn.execute(f'SELECT * FROM "{table}"').fetchall()
            except sqlite3.DatabaseError:
                continue
            for row in rows:
                for value in row:
                    if isinstance(value, bytes):
                        out.append(value.decode("latin-1"))
                    elif value is not None:
                        out.append(str(value))
    finally:
        conn.close()
    return "\n".join(out)


def integrity(path: Path) -> list[str]:
    """Problems PRAGMA integrity_check and the full-text index's own check find; [] when sound."""
    conn = sqlite3.connect(path, timeout=30)
    try:
        problems = [r[0] for r in conn.execute("PRAGMA integrity_check").fetchall() if r[0] != "ok"]
        try:
            conn.execute("INSERT INTO chunks_fts(chunks_fts) VALUES ('integrity-check')")
            conn.rollback()
        except sqlite3.DatabaseError as exc:
            problems.append(f"chunks_fts: {exc}")
        return problems
    finally:
        conn.close()


# -- processes left behind ------------------------------------------------------------------------


def processes_carrying(needles: Iterable[str]) -> list[tuple[int, str]]:
    """(pid, command line) of every live process whose command line holds one of ``needles``."""
    wanted = [n.encode() for n in needles if n]
    if not wanted:
        return []
    found = []
    me = os.getpid()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        try:
            raw = (entry / "cmdline").read_bytes()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state == "Z":  # a zombie has finished; its parent just has not reaped it
            continue
        if any(n in raw for n in wanted):
            found.append((int(entry.name), raw.replace(b"\0", b" ").decode(errors="replace").strip()))
    return found


def kill_processes(pids: Iterable[int]) -> None:
    for pid in pids:
        try:
            os.killpg(os.getpgid(pid), signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


# -- the session's indexed database ---------------------------------------------------------------


@dataclass(frozen=True)
class Base:
    """The knowledge folder and the database `opsbot index` built from it, once per session."""

    root: Path
    knowledge: Path
    db: Path
    onnx_cache: Path
    index_seconds: float
    serve_seconds: float  # how long a serve took to answer /healthz here (the first, cold one)
    ready_seconds: float  # and to report its model loaded


def build_base(root: Path, onnx_cache: Path) -> Base:
    """Index the fault knowledge once (exporting the ONNX model into ``onnx_cache`` the first time)."""
    knowledge = make_knowledge(root / "knowledge")
    db = root / "base.db"
    env = child_env(db, knowledge, "http://127.0.0.1:9/api/", onnx_cache)
    started = time.monotonic()
    result = subprocess.run(
        [PYTHON, "-m", "bot", "index", "--nice", "0"], env=env, cwd=root, capture_output=True, text=True, timeout=600
    )
    index_seconds = time.monotonic() - started
    if result.returncode != 0:
        raise AssertionError(f"opsbot index failed:\n{result.stdout}\n{result.stderr}")
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    base = Base(root, knowledge, db, onnx_cache, index_seconds, 0.0, 0.0)
    # One serve, to measure what a start costs on this machine (the README's budget depends on it).
    with Cluster(base, root / "probe") as probe:
        started = time.monotonic()
        serve = probe.start()
        healthy = time.monotonic() - started
        ready = wait_until(lambda: serve.healthz()[1].get("ready"), 120, interval=0.05)
        ready_seconds = time.monotonic() - started if ready else -1.0
    return Base(root, knowledge, db, onnx_cache, index_seconds, healthy, ready_seconds)


def reset_dir(path: Path) -> Path:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


def pick(rng: random.Random, options: Iterable[T]) -> T:
    return rng.choice(list(options))


def is_final(status: str | None) -> bool:
    return status in FINAL


class StatePoller:
    """Watches deploy_requests in the background and notes when each request was first seen final."""

    def __init__(self, db_path: Path, interval: float = 0.25) -> None:
        self.db_path = db_path
        self.interval = interval
        self.final_at: dict[str, float] = {}
        self.status: dict[str, str] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="state-poller")
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                rows = query(self.db_path, "SELECT id, status FROM deploy_requests")
            except sqlite3.Error:
                continue
            now = time.time()
            for row in rows:
                self.status[row["id"]] = row["status"]
                if is_final(row["status"]):
                    self.final_at.setdefault(row["id"], now)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


def chunks(items: list[T], size: int) -> Iterator[list[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
