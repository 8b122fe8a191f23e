"""Running deploys under faults: a lease per running deploy, a guard that stops an orphaned runner, an outcome
that is recorded even when the database refuses the first writes. Real processes, real signals."""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import json
import logging
import os
import random
import signal
import sqlite3
import string
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from types import SimpleNamespace

import pytest

from bot.answers.indexer import index_knowledge
from bot.ops import runner as deploy_runner
from bot.ops.deploys import DeployService
from bot.ops.requests import DeployRequest
from bot.redact import Redactor
from bot.runtime import DEPLOY_WORKERS
from bot.store import Store
from bot.workers import TrackedPool
from tests.conftest import ROOT, FakeEncoder
from tests.fakes import Clock
from tests.ops.fixtures import ALICE, BOB, after_crash, make_knowledge, runner_service

SLOW = '["{python}", "-c", "import sys, time; time.sleep(int(sys.argv[1].split(\'.\')[0]))", "{version}"]'


def approved_python(tmp_path: Path, code: str, timeout: int = 60) -> tuple[DeployService, Store, DeployRequest]:
    """A deploy of `job` to staging whose command runs ``code`` in Python, requested and approved."""
    deploys, store = runner_service(tmp_path, json.dumps(["{python}", "-c", code]), timeout=timeout)
    request = deploys.request("deploy", "job", "staging", "1.0.0", ALICE)
    assert deploys.approve(request.id, BOB).start
    return deploys, store, request


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is gone for our purpose
        return Path(f"/proc/{pid}/stat").read_text().split(")")[1].split()[0] != "Z"
    except OSError:
        return False


def wait_until(predicate, timeout: float) -> bool:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def in_another_process(db: Path, code: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh Python process with ``deploys``, a DeployService of its own on ``db``."""
    prelude = (
        "import json, sys\n"
        "from bot.ops.deploys import DeployService\n"
        "from bot.store import Store\n"
        f"deploys = DeployService.from_store(Store({str(db)!r}))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-c", prelude + code], capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT
    )


def test_the_runner_dies_with_the_process_that_runs_it(tmp_path: Path) -> None:
    deploys, store = runner_service(tmp_path, SLOW)
    db = Path(store.path)
    code = (
        f"request = deploys.request('deploy', 'job', 'staging', '60.0.0', {ALICE!r})\n"
        f"deploys.approve(request.id, {BOB!r})\n"
        "print(request.id, flush=True)\n"
        "deploys.execute(request.id)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    prelude = (
        "from bot.ops.deploys import DeployService\nfrom bot.store import Store\n"
        f"deploys = DeployService.from_store(Store({str(db)!r}))\n"
    )
    owner = subprocess.Popen([sys.executable, "-c", prelude + code], stdout=subprocess.PIPE, text=True, env=env)
    assert owner.stdout is not None
    request_id = owner.stdout.readline().strip()
    assert wait_until(lambda: (store.deploy_row(request_id) or {}).get("runner_pid"), 20)
    guard = store.deploy_row(request_id)["runner_pid"]
    assert wait_until(lambda: _children(guard), 10)
    [command] = _children(guard)

    owner.send_signal(signal.SIGKILL)  # no clean-up code runs in the owner
    owner.wait(timeout=10)

    assert wait_until(lambda: not alive(command) and not alive(guard), 15), "the deploy command outlived its owner"
    assert store.deploy_row(request_id)["status"] == "running"  # until its lease runs out
    clock = Clock()
    [interrupted] = after_crash(store, clock).recover_interrupted()
    assert interrupted.id == request_id and interrupted.status == "interrupted"
    assert store.lock_holder("job", "staging") is None
    store.close()


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            if ppid == pid:
                found.append(int(entry.name))
    return found


def test_a_second_process_leaves_a_live_deploy_alone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(deploy_runner, "LEASE_S", 2.0)
    monkeypatch.setattr(deploy_runner, "RENEW_EVERY_S", 0.2)
    deploys, store = runner_service(tmp_path, SLOW)
    request = deploys.request("deploy", "job", "staging", "6.0.0", ALICE)
    assert deploys.approve(request.id, BOB).start
    done: list = []
    runner = threading.Thread(target=lambda: done.append(deploys.execute(request.id)))
    runner.start()
    time.sleep(3)  # longer than the lease: only renewals keep it

    other = in_another_process(
        Path(store.path),
        "print(json.dumps([r.id for r in deploys.recover_interrupted()]))\n"
        "try:\n"
        f"    deploys.request('deploy', 'job', 'staging', '1.0.0', {ALICE!r})\n"
        "    print('requested')\n"
        "except Exception as exc:\n"
        "    print(type(exc).__name__, exc)\n",
    )

    assert other.returncode == 0, other.stderr
    interrupted, second = other.stdout.splitlines()
    assert json.loads(interrupted) == []
    assert second.startswith("PermissionDenied") and "job staging is locked" in second
    runner.join(timeout=30)
    assert done[0].status == "succeeded"
    store.close()


@contextlib.contextmanager
def guard_with_an_escaper(tmp_path: Path, request_id: str) -> Iterator[tuple[subprocess.Popen, int, int]]:
    """A guard whose command starts a process in a session of its own that ignores SIGTERM, then sleeps:
    yields the guard, that process's pid and the write end of the guard's lifeline (open until closed)."""
    pid_file = tmp_path / "escaped.pid"
    command = (
        "import subprocess, sys, time\n"
        "d = subprocess.Popen([sys.executable, '-c', 'import signal, time; signal.signal(signal.SIGTERM, "
        "signal.SIG_IGN); time.sleep(60)'], start_new_session=True)\n"
        f"open({str(pid_file)!r}, 'w').write(str(d.pid))\n"
        "time.sleep(60)\n"
    )
    lifeline_read, lifeline_write = os.pipe()
    guard = subprocess.Popen(
        [sys.executable, str(deploy_runner.GUARD), "--request", request_id, "--watch", str(lifeline_read), "--"]
        + [sys.executable, "-c", command],
        start_new_session=True,
        pass_fds=(lifeline_read,),
    )
    os.close(lifeline_read)
    try:
        assert wait_until(lambda: pid_file.exists() and pid_file.read_text(), 10)
        yield guard, int(pid_file.read_text()), lifeline_write
    finally:
        if pid_file.exists() and pid_file.read_text():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid_file.read_text()), signal.SIGKILL)
        with contextlib.suppress(OSError):
            os.close(lifeline_write)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the guard adopts orphans through Linux's prctl")
def test_a_lease_that_ran_out_stops_what_the_orphaned_command_moved_out_of_its_group(tmp_path: Path) -> None:
    deploys, store = runner_service(tmp_path, SLOW)
    request = deploys.request("deploy", "job", "staging", "60.0.0", ALICE)
    assert deploys.approve(request.id, BOB).start
    # the guard's lifeline stays open: as if its owner hung, not died
    with guard_with_an_escaper(tmp_path, request.id) as (guard, escaped, _):
        with store.transaction():
            store.update_deploy(request.id, runner_pid=guard.pid)

        recovered = after_crash(store, Clock()).recover_interrupted()

        assert [r.status for r in recovered] == ["interrupted"]
        assert guard.wait(timeout=10) == -signal.SIGKILL
        assert wait_until(lambda: not alive(escaped), 3), f"pid {escaped}, in a session of its own, still runs"
    store.close()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the guard adopts orphans through Linux's prctl")
def test_when_opsbot_dies_the_guard_stops_what_the_command_moved_out_of_its_group(tmp_path: Path) -> None:
    with guard_with_an_escaper(tmp_path, "r1") as (guard, escaped, lifeline):
        os.close(lifeline)  # what the kernel does when opsbot dies, SIGKILL included

        assert guard.wait(timeout=10) == -signal.SIGKILL
        assert wait_until(lambda: not alive(escaped), 3), f"pid {escaped}, in a session of its own, still runs"


def sleeping_guard(request_id: str, lifeline: int) -> subprocess.Popen:
    """A deploy guard for ``request_id`` whose command sleeps a minute, watching the pipe end ``lifeline``."""
    return subprocess.Popen(
        [sys.executable, str(deploy_runner.GUARD), "--request", request_id, "--watch", str(lifeline), "--"]
        + [sys.executable, "-c", "import time; time.sleep(60)"],
        start_new_session=True,
        pass_fds=(lifeline,),
    )


def test_a_lease_that_ran_out_stops_the_orphaned_guard(tmp_path: Path) -> None:
    deploys, store = runner_service(tmp_path, SLOW)
    request = deploys.request("deploy", "job", "staging", "60.0.0", ALICE)
    assert deploys.approve(request.id, BOB).start
    keep_read, keep_write = os.pipe()  # the guard's lifeline stays open: as if its owner hung, not died
    guard = sleeping_guard(request.id, keep_read)
    os.close(keep_read)
    with store.transaction():
        store.update_deploy(request.id, runner_pid=guard.pid)

    running_before = guard.poll() is None  # what a failure below needs to say (it failed once, under load)

    recovered = after_crash(store, Clock()).recover_interrupted()

    assert [r.status for r in recovered] == ["interrupted"], (recovered, running_before)
    code = guard.wait(timeout=10)
    # SIGKILL from its own stop, or SIGTERM when it had not yet set its handler (its group is killed after it)
    assert code in (-signal.SIGKILL, -signal.SIGTERM), f"the guard ended with {code}; running before: {running_before}"
    os.close(keep_write)
    store.close()


def test_orphaned_guards_are_all_stopped_and_a_process_that_took_a_guards_pid_is_left_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    keep_read, keep_write = os.pipe()  # the lifelines stay open: as if their owner hung, not died
    guards = [sleeping_guard(f"dep-20261206-00000{n}", keep_read) for n in (1, 2)]
    stranger = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
    os.close(keep_read)
    seen: list[tuple[str, int]] = []  # in order: the guards told to stop, and the polls of whether they have
    kill, running = deploy_runner.os.kill, deploy_runner._running
    monkeypatch.setattr(deploy_runner.os, "kill", lambda pid, sig: (seen.append(("told", pid)), kill(pid, sig))[1])
    monkeypatch.setattr(deploy_runner, "_running", lambda pid: (seen.append(("polled", pid)), running(pid))[1])
    try:
        stopped = deploy_runner.stop_orphans(
            [
                ("dep-20261206-000001", guards[0].pid),
                ("dep-20261206-000002", guards[1].pid),
                ("dep-20261206-000003", stranger.pid),  # a pid reused by something that is no guard
                ("dep-20261206-000004", None),
            ]
        )

        assert stopped == ["dep-20261206-000001", "dep-20261206-000002"]
        # every guard was told before the wait began: one wait for all of them, not one each
        first_poll = next(i for i, (what, _) in enumerate(seen) if what == "polled")
        assert {pid for what, pid in seen[:first_poll] if what == "told"} == {g.pid for g in guards}
        for guard in guards:
            assert guard.wait(timeout=10) in (-signal.SIGKILL, -signal.SIGTERM)
        assert stranger.poll() is None
    finally:
        for process in (*guards, stranger):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
        os.close(keep_write)


def test_processes_the_command_leaves_behind_are_stopped_when_it_exits(tmp_path: Path) -> None:
    pid_file = tmp_path / "left-behind.pid"
    leaves = (
        "import subprocess, sys\n"
        "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
        f"open({str(pid_file)!r}, 'w').write(str(p.pid))\n"
        "print('started the migration in the background', flush=True)\n"
    )
    deploys, store, request = approved_python(tmp_path, leaves)
    started = time.monotonic()

    done = deploys.execute(request.id)

    left = int(pid_file.read_text())
    assert wait_until(lambda: not alive(left), 3), f"pid {left}, left behind by the deploy, still runs"
    assert time.monotonic() - started < 4
    assert done.status == "succeeded" and done.exit_code == 0, done.log_tail
    assert "left 1 process running" in done.log_tail
    # the next deploy of the service and environment runs alone
    assert deploys.request("deploy", "job", "staging", "1.0.1", ALICE).status == "pending"
    store.close()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the guard adopts orphans through Linux's prctl")
def test_a_process_the_command_moved_to_a_session_of_its_own_is_stopped_too(tmp_path: Path) -> None:
    """`setsid` takes a process out of the command's group; the guard still finds it as its descendant (it is
    their subreaper, so the orphan is re-parented to it, not to init) and stops it."""
    pid_file = tmp_path / "escaped.pid"
    escapes = (
        "import subprocess, sys\n"
        'code = \'import subprocess, sys, time; p = subprocess.Popen([sys.executable, "-c", "import time; '
        "time.sleep(60)\"]); print(p.pid, flush=True); time.sleep(60)'\n"
        "d = subprocess.Popen([sys.executable, '-c', code], start_new_session=True, stdout=subprocess.PIPE,"
        " stderr=subprocess.DEVNULL)\n"
        "grandchild = d.stdout.readline().strip().decode()\n"
        f"open({str(pid_file)!r}, 'w').write(str(d.pid) + ' ' + grandchild)\n"
        "print('started the worker in a session of its own', flush=True)\n"
    )
    deploys, store, request = approved_python(tmp_path, escapes)
    try:
        done = deploys.execute(request.id)
        pids = [int(p) for p in pid_file.read_text().split()]
        assert wait_until(lambda: not any(alive(p) for p in pids), 3), f"{pids} left behind by the deploy still run"
    finally:
        for pid in [int(p) for p in pid_file.read_text().split()] if pid_file.exists() else []:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    assert done.status == "succeeded" and done.exit_code == 0, done.log_tail
    assert "left 2 processes running" in done.log_tail
    assert store.lock_holder("job", "staging") is None
    store.close()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the guard adopts orphans through Linux's prctl")
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reaping reads /proc")
def test_the_guards_reaping_leaves_the_commands_exit_status_to_it() -> None:
    """While the command runs, the guard reaps adopted orphans but never the command: a status reaped there
    reads as 0 (success) to subprocess."""
    spec = importlib.util.spec_from_file_location("shipped_runner_guard", deploy_runner.GUARD)
    guard = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(guard)
    command = subprocess.Popen([sys.executable, "-c", "import sys; sys.exit(3)"])
    other = subprocess.Popen([sys.executable, "-c", "pass"])  # stands for an orphan that ended

    def zombie(pid: int) -> bool:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"

    assert wait_until(lambda: zombie(command.pid) and zombie(other.pid), 10)

    guard.reap(command.pid)

    assert not Path(f"/proc/{other.pid}").exists(), "the ended orphan was not reaped"
    assert command.wait(timeout=5) == 3


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the guard adopts orphans through Linux's prctl")
def test_a_process_whose_main_thread_ended_while_its_threads_run_is_stopped_too(tmp_path: Path) -> None:
    """Linux shows such a process as a zombie (state Z); its threads run on, and so must not be taken as gone."""
    beat = tmp_path / "heartbeat"
    pid_file = tmp_path / "worker.pid"
    worker = (
        "import ctypes, threading, time\n"
        "def beat():\n"
        "    while True:\n"
        f"        open({str(beat)!r}, 'a').write('x')\n"
        "        time.sleep(0.05)\n"
        "threading.Thread(target=beat).start()\n"
        "time.sleep(0.2)\n"
        "ctypes.CDLL(None).pthread_exit(None)\n"
    )
    code = (
        "import subprocess, sys, time\n"
        f"d = subprocess.Popen([sys.executable, '-c', {worker!r}], start_new_session=True)\n"
        f"open({str(pid_file)!r}, 'w').write(str(d.pid))\n"
        "time.sleep(1)\n"
    )
    deploys, store, request = approved_python(tmp_path, code)
    try:
        done = deploys.execute(request.id)
        time.sleep(0.3)
        size = beat.stat().st_size
        time.sleep(0.5)
        assert beat.stat().st_size == size, "the worker's thread still writes after the deploy ended"
    finally:
        with contextlib.suppress(ProcessLookupError, ValueError, OSError):
            os.kill(int(pid_file.read_text()), signal.SIGKILL)
    assert done.status == "succeeded" and "left 1 process running" in done.log_tail, done.log_tail
    store.close()


def test_orphans_that_end_while_the_command_runs_leave_no_zombies_and_the_outcome_stands(tmp_path: Path) -> None:
    """A step that backgrounds work in a subshell hands the guard an orphan; when it ends, the guard reaps it
    while the command still runs, and the command's own failure is still the deploy's outcome."""
    code = (
        "import os, subprocess, sys, time\n"
        "guard = os.getppid()\n"
        "out = subprocess.run(['sh', '-c', 'sleep 0.5 & echo $!'], capture_output=True, text=True).stdout\n"
        "adopted = open('/proc/' + out.strip() + '/stat').read().rsplit(')', 1)[1].split()[1] == str(guard)\n"
        "print('adopted by the guard:', adopted, flush=True)\n"
        "for _ in range(5):\n"
        "    subprocess.run(['sh', '-c', 'sleep 0.1 &'])\n"  # the subshell exits: its `sleep` is orphaned
        "time.sleep(1.5)\n"
        "zombies = 0\n"
        "for entry in os.listdir('/proc'):\n"
        "    try:\n"
        "        fields = open('/proc/' + entry + '/stat').read().rsplit(')', 1)[1].split()\n"
        "    except (OSError, IndexError):\n"
        "        continue\n"
        "    zombies += fields[0] == 'Z' and int(fields[1]) == guard\n"
        "print('zombies of the guard:', zombies, flush=True)\n"
        "sys.exit(3)\n"
    )
    deploys, store, request = approved_python(tmp_path, code)

    done = deploys.execute(request.id)

    assert "adopted by the guard: True" in done.log_tail, done.log_tail
    assert "zombies of the guard: 0" in done.log_tail, done.log_tail
    assert done.status == "failed" and done.exit_code == 3, (done.status, done.exit_code)
    assert not done.never_started  # it ran, and failed: a change that failed
    store.close()


def test_a_command_that_cannot_be_started_fails_the_deploy_saying_why_and_frees_the_lock(tmp_path: Path) -> None:
    deploys, store = runner_service(tmp_path, '["{python}", "-c", "print(1)"]')
    # A runner that passed no check (services.yaml is checked when it is indexed): an argument holds a NUL.
    config = deploys.services["job"]
    deploys.services["job"] = dataclasses.replace(
        config, deploy=dataclasses.replace(config.deploy, argv=("{python}", "-c", "print(1)", "a\0b"))
    )
    request = deploys.request("deploy", "job", "staging", "1.0.0", ALICE)
    assert deploys.approve(request.id, BOB).start

    done = deploys.execute(request.id)

    assert done.status == "failed" and done.exit_code is None and done.never_started
    assert "could not start" in done.log_tail and "null byte" in done.log_tail
    assert store.lock_holder("job", "staging") is None
    assert deploys.request("deploy", "job", "staging", "1.0.1", ALICE).status == "pending"
    store.close()


def test_a_command_that_ran_and_exited_127_saying_could_not_start_is_a_failed_change(tmp_path: Path) -> None:
    # Before, any exit 127 whose last line began "could not start " was taken for the guard's word that the command
    # never started: a rollout that had begun showed no exit code, no Roll back button, and no failed change.
    code = "import sys; print('rolling out'); print('could not start pod web-2: ImagePullBackOff'); sys.exit(127)"
    deploys, store, request = approved_python(tmp_path, code)

    done = deploys.execute(request.id)

    assert done.status == "failed" and done.exit_code == 127 and not done.never_started
    assert done.log_tail == "rolling out\ncould not start pod web-2: ImagePullBackOff"
    store.close()


class SlowRedactor(Redactor):
    """Scrubs a line holding "blob" slowly, as a multi-megabyte line of minified JSON is scrubbed."""

    def line(self, line: str) -> str:
        if "blob" in line:
            time.sleep(2.5)
        return super().line(line)


def test_the_last_lines_are_stored_even_when_scrubbing_lags_behind_the_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(deploy_runner, "Redactor", SlowRedactor)
    code = "import sys; print('blob: 3 MB of minified JSON'); print('error: disk full on /var/lib/app'); sys.exit(3)"
    deploys, store, request = approved_python(tmp_path, code, timeout=20)

    done = deploys.execute(request.id)

    assert (done.status, done.exit_code) == ("failed", 3)
    assert done.log_tail.splitlines() == ["blob: 3 MB of minified JSON", "error: disk full on /var/lib/app"]
    store.close()


def test_long_lines_are_cut_in_memory_and_in_the_stored_tail(tmp_path: Path) -> None:
    code = (
        "import sys\n"
        "for n in range(20):\n"
        "    print('step %d token=hunter2-very-secret ' % n + 'x' * 300_000, flush=True)\n"
        "print('done')\n"
    )
    deploys, store, request = approved_python(tmp_path, code, timeout=30)
    started = time.monotonic()

    done = deploys.execute(request.id)

    assert done.status == "succeeded"
    assert time.monotonic() - started < 5
    lines = done.log_tail.splitlines()
    assert lines[-1] == "done"
    assert len(done.log_tail) <= deploy_runner.LOG_TAIL_CHARS
    assert lines[0] == "… earlier output cut"
    step = lines[-2]
    assert step.startswith("step 19 token=*** xxx") and "hunter2" not in done.log_tail
    kept, cut = step.split(" … ")
    assert len(kept) == deploy_runner.LINE_CHARS
    assert cut == f"{len('step 19 token=*** ') + 300_000 - deploy_runner.LINE_CHARS:,} characters cut"
    store.close()


def approved_job(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[DeployService, Store, DeployRequest]:
    """An approved deploy that prints 42, its database writes retried at once."""
    monkeypatch.setattr(deploy_runner, "RETRY_MAX_S", 0.05)
    deploys, store = runner_service(tmp_path, '["{python}", "-c", "print(42)"]')
    request = deploys.request("deploy", "job", "staging", "1.0.0", ALICE)
    assert deploys.approve(request.id, BOB).start
    return deploys, store, request


def failing_first(times: int, real: object, error: str) -> object:
    """``real`` (a method), raising SQLite's ``error`` the first ``times`` calls."""
    failures = iter(range(times))

    def call(self: object, *args: object, **kwargs: object) -> object:
        if next(failures, None) is not None:
            raise sqlite3.OperationalError(error)
        return real(self, *args, **kwargs)  # type: ignore[operator]

    return call


def test_the_outcome_is_recorded_once_the_database_takes_writes_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    deploys, store, request = approved_job(tmp_path, monkeypatch)
    monkeypatch.setattr(Store, "finish_run", failing_first(3, Store.finish_run, "database or disk is full"))

    done = deploys.execute(request.id)

    assert done.status == "succeeded" and done.log_tail == "42"
    assert store.lock_holder("job", "staging") is None
    assert sum("could not record deploy outcome" in r.message for r in caplog.records) == 3
    store.close()


def test_a_start_check_that_meets_a_busy_database_waits_for_it_and_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # Before, the error left the worker unlogged: the request stayed running with its lock, and the sweep later
    # called it interrupted "because its process stopped".
    deploys, store, request = approved_job(tmp_path, monkeypatch)
    busy = failing_first(3, DeployService.start_check, "database is locked")
    monkeypatch.setattr(DeployService, "start_check", busy)
    pool = TrackedPool(1, "test-deploys")
    future = deploy_runner.queue(pool, deploys, request.id, lambda: deploys.execute(request.id))

    assert future.result(timeout=30).status == "succeeded"
    assert sum("before its start" in r.message for r in caplog.records) == 3
    assert store.lock_holder("job", "staging") is None

    # Whatever else escapes a run is logged with its request, not lost in the pool.
    other = deploys.request("deploy", "job", "staging", "1.0.1", ALICE)
    assert deploys.approve(other.id, BOB).start

    def broken() -> None:
        raise RuntimeError("a bug")

    deploy_runner.queue(pool, deploys, other.id, broken).exception(timeout=30)
    assert wait_until(lambda: any(other.id in r.message and "a bug" in r.message for r in caplog.records), 5)
    pool.shutdown()
    store.close()


def test_an_outcome_arriving_after_another_process_gave_up_is_still_recorded(tmp_path: Path) -> None:
    deploys, store = runner_service(tmp_path, '["{python}", "-c", "import time; time.sleep(1); print(7)"]')
    request = deploys.request("deploy", "job", "staging", "1.0.0", ALICE)
    assert deploys.approve(request.id, BOB).start
    done: list = []
    runner = threading.Thread(target=lambda: done.append(deploys.execute(request.id)))
    runner.start()
    time.sleep(0.3)
    # A lease renewal lost to a full disk: another process found the lease expired and gave up on it.
    with store.transaction():
        store.transition(request.id, "running", "interrupted", finished_at="2026-11-02T10:00:00+00:00")
        store.release_lock(request.id)

    runner.join(timeout=20)

    assert done[0].status == "succeeded" and done[0].log_tail == "7"
    [finished] = [r for r in store.audit_rows() if r["action"] == "deploy.finished"]
    assert finished["details"]["recorded_late"] is True
    store.close()


def test_a_running_deploy_of_another_owner_is_not_executed_here(tmp_path: Path) -> None:
    deploys, store = runner_service(tmp_path, '["{python}", "-c", "print(1)"]')
    request = deploys.request("deploy", "job", "staging", "1.0.0", ALICE)
    assert deploys.approve(request.id, BOB).start
    elsewhere = DeployService.from_store(store, owner="another-process")

    with pytest.raises(Exception, match="run by another opsbot process"):
        elsewhere.execute(request.id)
    store.close()


def test_progress_that_hangs_never_delays_the_timeout(tmp_path: Path) -> None:
    deploys, store = runner_service(
        tmp_path, '["{python}", "-c", "import time\\nwhile True: print(1, flush=True); time.sleep(0.1)"]', timeout=2
    )
    request = deploys.request("deploy", "job", "staging", "1.0.0", ALICE)
    assert deploys.approve(request.id, BOB).start
    release = threading.Event()

    def hung_slack(current: object, output: str) -> None:
        release.wait(30)  # chat.update that never answers

    started = time.monotonic()
    done = deploys.execute(request.id, progress=hung_slack)
    took = time.monotonic() - started
    release.set()

    assert done.status == "timed_out"
    assert took < 6, f"a 2 s timeout was enforced after {took:.1f} s"
    store.close()


def test_secrets_printed_by_the_runner_reach_neither_the_database_nor_the_progress(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(deploy_runner, "PROGRESS_EVERY_S", 0.05)
    rng = random.Random(7)
    alphabet = string.ascii_letters + string.digits + "+/"
    key_lines = ["".join(rng.choice(alphabet) for _ in range(64)) for _ in range(76)]
    github = "github_pat_" + "".join(rng.choice(string.ascii_letters + string.digits) for _ in range(70))
    stripe = "sk_live_" + "".join(rng.choice(string.ascii_letters + string.digits) for _ in range(32))
    password = "".join(rng.choice(string.ascii_letters) for _ in range(18))
    printed = [
        "-----BEGIN RSA PRIVATE KEY-----",
        *key_lines,
        "-----END RSA PRIVATE KEY-----",
        f"export GITHUB_TOKEN={github}",
        f"stripe key {stripe}",
        f"mysql -p{password} -h db",
        f'{{"password": "{password}"}}',
        "done",
    ]
    script = tmp_path / "leaky.py"
    script.write_text(
        f"import sys, time\nfor line in {printed!r}:\n    print(line, flush=True)\n    time.sleep(0.01)\n",
        encoding="utf-8",
    )
    deploys, store = runner_service(tmp_path, f'["{{python}}", "{script}"]')
    request = deploys.request("deploy", "job", "staging", "1.0.0", ALICE)
    assert deploys.approve(request.id, BOB).start
    shown: list[str] = []

    done = deploys.execute(request.id, progress=lambda current, output: shown.append(output))

    assert done.status == "succeeded"
    everything = "\n".join([done.log_tail, *shown, json.dumps(store.deploy_row(request.id))])
    secrets = [*key_lines, github, stripe, password]
    leaked = [s for s in secrets if s in everything]
    assert leaked == [], f"{len(leaked)} secret values leaked"
    assert shown and "private key removed" in done.log_tail and "done" in done.log_tail
    store.close()


def _gated_services(tmp_path: Path, gate: Path, count: int) -> tuple[DeployService, Store]:
    """``count`` services whose deploy waits until ``gate`` exists, so the test decides when a worker is free."""
    wait = f"import os, time\nwhile not os.path.exists({str(gate)!r}): time.sleep(0.05)"
    command = json.dumps(["{python}", "-c", wait])
    services = "services:\n" + "".join(
        f"  s{i}:\n    environments:\n      staging: {{approvals: 1, approvers: [web]}}\n"
        f"    deploy: {{command: {command}, timeout: 120}}\n"
        for i in range(count)
    )
    store = Store(tmp_path / "queue.db")
    report = index_knowledge(store, FakeEncoder(), make_knowledge(tmp_path / "queue-knowledge", services))
    assert report.problems == []
    return DeployService.from_store(store, clock=Clock()), store


def test_an_approved_deploy_waiting_for_a_free_worker_keeps_its_lease_and_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(deploy_runner, "LEASE_S", 1.0)  # 30 s in production, scaled down
    monkeypatch.setattr(deploy_runner, "RENEW_EVERY_S", 0.2)
    gate = tmp_path / "gate"
    deploys, store = _gated_services(tmp_path, gate, 5)
    pool = TrackedPool(DEPLOY_WORKERS, "opsbot-deploy")  # the runtime's deploy pool: four workers
    futures = []
    for i in range(5):  # five teams deploy five services at once: the fifth waits for a worker
        request = deploys.request("deploy", f"s{i}", "staging", "1.0.0", ALICE)
        assert deploys.approve(request.id, BOB).start
        work = partial(deploys.execute, request.id)
        futures.append((request.id, deploy_runner.queue(pool, deploys, request.id, work)))
    queued_id, queued = futures[-1]
    lease_then = store.deploy_row(queued_id)["lease_until"]
    assert wait_until(lambda: time.time() > lease_then + 1.0, 10)  # the approval's lease ran out long ago

    assert not queued.running() and not queued.done()  # still waiting for a worker
    assert deploys.recover_interrupted() == []  # this process's own sweeper
    elsewhere = DeployService.from_store(store, owner="another-process")
    assert elsewhere.recover_interrupted() == []  # another process sees a renewed lease
    assert store.deploy_row(queued_id)["lease_until"] > time.time()

    gate.touch()
    outcomes = {request_id: future.result(timeout=60) for request_id, future in futures}
    assert {r.status for r in outcomes.values()} == {"succeeded"}, {i: r.note for i, r in outcomes.items()}
    assert not any(deploy_runner.is_live(request_id) for request_id, _ in futures)
    assert store.lock_holder("s4", "staging") is None
    pool.shutdown()
    store.close()


def test_a_deploy_queued_by_a_process_that_died_is_interrupted_not_lost(tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    _, store = _gated_services(tmp_path, gate, 1)
    ran = tmp_path / "ran"
    owner = in_another_process(
        Path(store.path),
        "import os, threading\n"
        "from concurrent.futures import ThreadPoolExecutor\n"
        "from bot.ops import runner\n"
        "runner.LEASE_S, runner.RENEW_EVERY_S = 1.0, 0.2\n"
        "pool = ThreadPoolExecutor(1)\n"
        "pool.submit(threading.Event().wait)  # the only worker is busy for good\n"
        f"request = deploys.request('deploy', 's0', 'staging', '1.0.0', {ALICE!r})\n"
        f"assert deploys.approve(request.id, {BOB!r}).start\n"
        f"runner.queue(pool, deploys, request.id, lambda: open({str(ran)!r}, 'w').close())\n"
        "print(request.id, flush=True)\n"
        "os._exit(0)  # dies while the request waits for a worker\n",
    )
    assert owner.returncode == 0, owner.stderr
    request_id = owner.stdout.strip()
    assert store.deploy_row(request_id)["status"] == "running"
    deploys = DeployService.from_store(store, clock=Clock())  # the restart, or any other process

    interrupted: list = []
    assert wait_until(lambda: interrupted.extend(deploys.recover_interrupted()) or interrupted, 30)

    assert [(r.id, r.status) for r in interrupted] == [(request_id, "interrupted")]
    assert store.lock_holder("s0", "staging") is None
    assert not ran.exists()  # never run, by the dead process or by this one
    with pytest.raises(Exception, match="is interrupted, not running"):
        deploys.execute(request_id)
    store.close()


def test_a_daemon_holding_the_output_open_does_not_hold_the_deploy_to_its_timeout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The command starts a process in a session of its own that keeps its output open and writes nothing, then
    exits: the run ends after DRAIN_S of quiet, not at its timeout, and releases the lock."""
    monkeypatch.setattr(deploy_runner, "DRAIN_S", 0.5)
    code = (
        "import subprocess, sys\n"
        "d = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(20)'], start_new_session=True)\n"
        "print('started the worker daemon', d.pid, flush=True)\n"
    )
    deploys, store, request = approved_python(tmp_path, code, timeout=15)
    started = time.monotonic()
    try:
        done = deploys.execute(request.id)
        took = time.monotonic() - started
    finally:
        for line in (store.deploy_row(request.id) or {}).get("log_tail", "").splitlines():
            if line.startswith("started the worker daemon"):
                with contextlib.suppress(ProcessLookupError):  # stopped by the guard, on Linux
                    os.kill(int(line.split()[-1]), signal.SIGKILL)
    assert done.status == "succeeded" and took < 8, f"took {took:.1f} s"
    assert store.lock_holder("job", "staging") is None
    store.close()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the guard adopts escaped processes on Linux")
def test_a_timeout_stops_what_the_command_started_in_a_session_of_its_own(tmp_path: Path) -> None:
    # Before, the timeout SIGKILLed the guard with its group at once: the process that had left the group, which
    # only the guard could find, deployed on after the run was recorded timed out and its lock released.
    pid_file = tmp_path / "escaped.pid"
    code = (
        "import subprocess, sys, time\n"
        "d = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'], start_new_session=True)\n"
        f"open({str(pid_file)!r}, 'w').write(str(d.pid))\n"
        "print('worker started', flush=True)\n"
        "time.sleep(60)\n"
    )
    deploys, store, request = approved_python(tmp_path, code, timeout=3)
    try:
        assert deploys.execute(request.id).status == "timed_out"
        assert wait_until(lambda: not alive(int(pid_file.read_text())), 3)
    finally:
        if pid_file.exists():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid_file.read_text()), signal.SIGKILL)
        store.close()


def test_a_command_whose_guard_is_killed_is_stopped_before_the_run_is_recorded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Before, a guard killed mid-run (the OOM killer, a kill -9) left the command deploying, unwatched, while the
    # run was recorded failed and the lock released for the next deploy.
    monkeypatch.setattr(deploy_runner, "DRAIN_S", 0.5)
    pid_file = tmp_path / "cmd.pid"
    code = f"import os, time\nopen({str(pid_file)!r}, 'w').write(str(os.getpid()))\nprint('rolling out', flush=True)\n"
    deploys, store, request = approved_python(tmp_path, code + "time.sleep(30)\n", timeout=60)

    def kill_guard() -> None:
        assert wait_until(lambda: (store.deploy_row(request.id) or {}).get("runner_pid") and pid_file.exists(), 20)
        os.kill(store.deploy_row(request.id)["runner_pid"], signal.SIGKILL)

    killer = threading.Thread(target=kill_guard)
    killer.start()
    try:
        done = deploys.execute(request.id)
        killer.join()
        assert done.status == "failed" and store.lock_holder("job", "staging") is None
        assert not alive(int(pid_file.read_text()))
    finally:
        if pid_file.exists():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid_file.read_text()), signal.SIGKILL)
        store.close()


def test_progress_on_a_full_disk_logs_once_when_it_fails_and_once_when_it_recovers(
    caplog: pytest.LogCaptureFixture,
) -> None:
    full = sqlite3.OperationalError("database or disk is full")
    outcomes: list[Exception | None] = [full, full, full, None, full, ValueError("a bug in the message")]
    calls: list[str] = []

    def progress(current: object, output: str) -> None:
        calls.append(output)
        if outcome := outcomes[len(calls) - 1]:
            raise outcome

    caplog.set_level(logging.INFO, logger="bot.ops.runner")
    reporter = deploy_runner._Reporter(SimpleNamespace(id="d-1"), progress)  # type: ignore[arg-type]
    for n in range(len(outcomes)):
        reporter.show(f"line {n}")
        assert wait_until(lambda n=n: len(calls) == n + 1, 5)
    logged = lambda: [r for r in caplog.records if r.name == "bot.ops.runner"]  # noqa: E731
    assert wait_until(lambda: len(logged()) >= 4, 5)  # the last call's line is written after it returns
    reporter.close()

    lines = [(r.levelname, r.getMessage(), bool(r.exc_info)) for r in logged()]
    assert lines == [
        (
            "WARNING",
            "progress reports failing until the database takes writes again request_id=d-1 "
            "reason=database or disk is full",
            False,
        ),
        ("INFO", "progress reports recovered request_id=d-1", False),
        (
            "WARNING",
            "progress reports failing until the database takes writes again request_id=d-1 "
            "reason=database or disk is full",
            False,
        ),
        ("ERROR", "progress report failed request_id=d-1", True),  # not a write failure: its traceback
    ]


def test_a_line_the_scrubber_fails_on_is_left_out_and_the_rest_of_the_output_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A scrubber's bug (an empty quoted password raised once) killed the output's reader: the command blocked on a
    # full pipe and was stopped at its timeout, its output lost.
    printer = "print('connecting'); print('BREAKS'); [print('line', i) for i in range(20000)]"
    deploys, store = runner_service(tmp_path, json.dumps(["{python}", "-c", printer]), timeout=20)
    real = Redactor.line

    def fragile(self: object, line: str) -> str:
        if "BREAKS" in line:
            raise RuntimeError("generator raised StopIteration")
        return real(self, line)  # type: ignore[arg-type]

    monkeypatch.setattr(Redactor, "line", fragile)
    request = deploys.request("deploy", "job", "staging", "1.0.0", ALICE)
    assert deploys.approve(request.id, BOB).start

    done = deploys.execute(request.id)

    assert done.status == "succeeded", done.log_tail
    assert "line 19999" in done.log_tail and "BREAKS" not in done.log_tail
    store.close()
