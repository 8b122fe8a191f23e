"""Running an approved deploy: its runner under a guard, its lease kept alive, its outcome never lost.

An approved deploy belongs to the process that approved it. That process renews the deploy's lease every
few seconds from the moment it queues it for a free worker (``queue``) until its outcome is recorded; another
opsbot process on the same database, or this one, marks it interrupted only once the lease ran out
(``DeployService.recover_interrupted``). The command runs under
``bot/ops/runner_guard.py``, which stops its whole process group when this process dies. Output is scrubbed line
by line as it arrives (``bot.redact.Redactor``, which removes private keys whole), before anything is
kept, tailed, shown or stored. The final write is retried until the
database takes it.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import logging
import os
import re
import signal
import socket
import sqlite3
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, Future
from contextlib import contextmanager
from datetime import UTC
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from bot.config import secret_setting
from bot.errors import InvalidRequest
from bot.redact import Redactor, scrub
from bot.services import ConfigProblem, Runner, fill_body, fill_in
from bot.store.base import is_write_failure

if TYPE_CHECKING:
    from bot.ops.deploy_rules import DeployRules
    from bot.ops.deploys import DeployService
    from bot.ops.requests import DeployRequest, Progress

log = logging.getLogger(__name__)
LEASE_S = 30.0  # a deploy whose process has not renewed it for this long is taken as interrupted
RENEW_EVERY_S = 5.0
ORPHAN_STOP_S = 1.0  # how long a guard told to stop (orphaned, or timed out) gets, before its group is killed
PROGRESS_EVERY_S = 2.0
LOG_TAIL_LINES = 40
LOG_TAIL_CHARS = 64 * 1024  # the most of the tail stored in a deploy's row, its newest output
LINE_CHARS = 4096  # the most of one line kept, after scrubbing; the rest is counted, not kept
READ_CHARS = 16 * 1024  # the most of one line read and scrubbed; the rest of a longer line is read past, counted
CUT_TAIL = "… earlier output cut"
PROGRESS_LINES = 8
KEPT_LINES = 2000  # output kept in memory while it runs; only the tail is stored
# Query keys of the runner's own URL whose values are treated as known secrets: any key that holds one of these
# words (auth_code, passcode, token_v2). Broader than what scrubbing takes for a credential in printed text
# (``bot.redact_line.is_credential_query_key``): this is opsbot's own URL, where masking too much costs nothing.
CREDENTIAL_KEY = re.compile(r"(?i)(?:code|sig|signature|token|key|secret|pass|auth|credential|session)")
DRAIN_S = 5.0  # after the command ends, the least time its output already written is given to be read and scrubbed
GUARD = Path(__file__).with_name("runner_guard.py")
RETRY_MAX_S = 30.0

_held: dict[str, _Lease] = {}  # request id -> its lease keeper, while this process has it queued or running
_held_lock = threading.Lock()
_owner: tuple[int, str] | None = None
T = TypeVar("T")


def process_owner() -> str:
    """This process's name as the owner of the deploys it runs (a new one after a fork)."""
    global _owner
    if _owner is None or _owner[0] != os.getpid():
        _owner = (os.getpid(), f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}")
    return _owner[1]


def owner_alive(owner: str, since: float) -> bool:
    """Whether ``owner`` (another opsbot process's ``process_owner()``), which held a run since ``since`` (epoch
    seconds), still runs on this host. Its lease may have run out because the database refused the renewals (a full
    disk, a long lock) or the process was paused, not because it died: its deploy is running, and stopping it would
    break a rollout half-way. The process must be opsbot and have started before ``since``: one that took a dead
    owner's pid since is not it. A process of another host cannot be seen from here (not alive, as before), nor can
    this process's own past (``is_live`` says)."""
    host, _, rest = owner.partition(":")
    pid = rest.partition(":")[0]
    if host != socket.gethostname() or not (pid.isascii() and pid.isdigit()) or int(pid) == os.getpid():
        return False
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        started = _process_start(int(pid))
    except (OSError, ValueError, IndexError):
        return False
    is_opsbot = any(arg.endswith(b"opsbot") or arg == b"bot" for arg in argv)
    return is_opsbot and started < since + 1  # ``since`` is stored to the second, cut down


def _process_start(pid: int) -> float:
    """When process ``pid`` started (epoch seconds), from /proc: the boot time and its start in clock ticks."""
    lines = Path("/proc/stat").read_text().splitlines()
    boot = next(float(line.split()[1]) for line in lines if line.startswith("btime"))
    stat = Path(f"/proc/{pid}/stat").read_text()
    ticks = int(stat[stat.rindex(")") + 2 :].split()[19])  # field 22; the name before ")" may hold spaces
    return boot + ticks / os.sysconf("SC_CLK_TCK")


def is_live(request_id: str) -> bool:
    """Whether this process holds the request: queued for a free worker, or running it right now."""
    with _held_lock:
        return request_id in _held


class _Lease:
    """Renews one request's lease every few seconds from a thread of its own, whatever its holder waits for."""

    def __init__(self, deploys: DeployService, request_id: str) -> None:
        self.deploys = deploys
        self.request_id = request_id
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._renew, name=f"opsbot-lease-{request_id}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _renew(self) -> None:
        deploys = self.deploys
        while not self._stop.wait(RENEW_EVERY_S):
            try:
                with deploys.store.transaction():
                    deploys.store.renew_lease(self.request_id, deploys.owner, deploys.lease_clock() + LEASE_S)
            except sqlite3.Error as exc:  # a full disk: keep trying, the run goes on
                log.warning("could not renew deploy lease id=%s error=%s", self.request_id, exc)


def _hold(deploys: DeployService, request_id: str) -> None:
    """Count the request as this process's and keep its lease, unless that is already so."""
    with _held_lock:
        if request_id in _held:
            return
        lease = _held[request_id] = _Lease(deploys, request_id)
    lease.start()


def _release(request_id: str) -> None:
    """Stop keeping the request's lease (a no-op the second time): it ended, or it will never run here."""
    with _held_lock:
        lease = _held.pop(request_id, None)
    if lease is not None:
        lease.stop()


@contextmanager
def _kept(deploys: DeployService, request_id: str) -> Iterator[None]:
    _hold(deploys, request_id)
    try:
        yield
    finally:
        _release(request_id)


def queue(pool: Executor, deploys: DeployService, request_id: str, work: Callable[[], T]) -> Future[T]:
    """Hand an approved request's run (``work``, which calls ``execute``) to ``pool``.

    This process keeps the request's lease and counts it as its own from now until ``work`` ends or the pool
    drops it, so a wait for a free worker never looks like a dead process. If this process dies while the
    request waits, the lease runs out and another process (or the restart) interrupts it, as a running one.
    """
    _hold(deploys, request_id)
    try:
        future = pool.submit(work)
    except BaseException:
        _release(request_id)
        raise
    future.add_done_callback(lambda done: _ended(request_id, done))
    return future


def _ended(request_id: str, done: Future) -> None:
    """The run left the pool: its hold goes, and a failure nobody else will read is logged with the request."""
    _release(request_id)
    failure = None if done.cancelled() else done.exception()
    if failure is not None:
        log.error("deploy run failed id=%s error=%s", request_id, scrub(repr(failure)), exc_info=failure)


def command_for(deploys: DeployRules, request: DeployRequest) -> tuple[Runner, list[str]]:
    runner = deploys.runner_of(request.kind, request.service)
    if runner is None:
        raise InvalidRequest(f"{request.service} has no {request.kind} runner in services.yaml now.")
    values = {
        "service": request.service,
        "version": request.version,
        "env": request.env,
        "request_id": request.id,
        "python": sys.executable,
    }
    try:
        argv = [fill_in(arg, values, "command") for arg in runner.argv]
    except ConfigProblem as exc:
        raise InvalidRequest(f"{request.service}'s command in services.yaml cannot be filled in: {exc}.") from None
    return runner, argv


def webhook_body(runner: Runner, request: DeployRequest) -> dict:
    """The JSON body a webhook runner posts for the request; InvalidRequest names a value that cannot be filled in."""
    values = {"service": request.service, "version": request.version, "env": request.env, "request_id": request.id}
    try:
        return fill_body(runner.body, values)
    except ConfigProblem as exc:
        raise InvalidRequest(f"{request.service}'s webhook in services.yaml cannot be filled in: {exc}.") from None


def describe(deploys: DeployRules, request: DeployRequest) -> str:
    """What will run, as people read it."""
    deploys._service_env(request.service, request.env)
    runner, argv = command_for(deploys, request)
    if runner.kind == "webhook":
        return f"POST {public_url(runner.url)}"
    return " ".join("python" if a == sys.executable else a for a in argv)


def execute(deploys: DeployService, request_id: str, progress: Progress | None = None) -> DeployRequest:
    """Run a request ``approve`` moved to running, in this process; its final state, lock released, audited."""
    request = deploys.get(request_id)
    if request.status != "running":
        raise InvalidRequest(f"{request_id} is {request.status}, not running.")
    if request.owner and request.owner != deploys.owner:
        raise InvalidRequest(f"{request_id} is run by another opsbot process ({request.owner}).")
    with _kept(deploys, request_id):
        why = _start_check(deploys, request)
        now_kind = deploys.runner_kind(request.kind, request.service)
        if why is None and request.runner_kind and request.runner_kind != now_kind:
            why = (
                f"services.yaml changed what runs it since it was approved ({RUNNER_WORDS.get(request.runner_kind)}, "
                f"now {RUNNER_WORDS.get(now_kind, 'nothing')}); request it again."
            )
        if why is not None:
            return _finish(deploys, request, "cancelled", None, "", note=f"not started: {why}")
        try:
            runner, argv = command_for(deploys, request)
            data = json.dumps(webhook_body(runner, request)).encode() if runner.kind == "webhook" else b""
        except Exception as exc:  # noqa: BLE001 - any failure to prepare is this deploy's failure, reported
            why = scrub(f"could not prepare the run: {exc}")
            log.error("deploy not started id=%s service=%s error=%s", request_id, request.service, why)
            return _finish(deploys, request, NOT_STARTED, None, why, note=why)
        secret = secret_setting(runner.secret_env) if runner.secret_env else ""
        if runner.secret_env and not secret:  # before, the header went out empty and CI was left to refuse it
            why = (
                f"could not prepare the run: {runner.secret_env}, the secret its webhook sends (secret_env in "
                "services.yaml), is set neither in opsbot's environment nor in its .env; set it and request again."
            )
            log.error("deploy not started id=%s service=%s error=%s", request_id, request.service, why)
            return _finish(deploys, request, NOT_STARTED, None, why, note=why)
        secrets = (secret,) if secret else ()
        note = ""
        if runner.kind == "webhook":
            if not _mark_triggered(deploys, request_id):
                log.warning("deploy not triggered id=%s: no longer running in this process", request_id)
                return deploys.get(request_id)
            status, exit_code, lines = _trigger_webhook(runner, data, secret)
            unanswered = status == UNANSWERED
            if unanswered:
                status, note = ("awaiting_ci", unknown_start(request_id)) if runner.await_report else ("failed", "")
            elif status == "succeeded" and runner.await_report:  # the pipeline deploys now, and will say how it went
                status = "awaiting_ci"
        else:
            status, exit_code, lines = _run_command(deploys, runner, argv, request, progress, secrets)
            unanswered = False
        return _finish(deploys, request, status, exit_code, _tail(lines), note=note, unanswered=unanswered)


RUNNER_WORDS = {"command": "a command", "webhook": "a webhook", "webhook-report": "a webhook that awaits its report"}
UNANSWERED = "unanswered"  # a trigger sent whose answer never came: CI may or may not have taken it
NOT_STARTED = "not_started"  # failed before anything ran: the command could not start, or CI refused the trigger
GATEWAY_GAVE_UP = (502, 504)  # a proxy's answer that it passed the trigger on and heard nothing back


def unknown_start(request_id: str) -> str:
    """The note of a request whose pipeline may or may not have started."""
    return f"whether the pipeline started is unknown; if it did not, `opsbot withdraw {request_id}` releases the lock"


def _start_check(deploys: DeployService, request: DeployRequest) -> str | None:
    """The policy at the start, read again until the database answers (busy past its timeout, a failing disk):
    nothing has run yet, so waiting is safe, and the lease is kept meanwhile."""
    while True:
        try:
            return deploys.start_check(request)
        except sqlite3.Error as exc:
            log.error("could not check deploy id=%s before its start error=%s; retrying", request.id, exc)
            time.sleep(RETRY_MAX_S / 10)


def _mark_triggered(deploys: DeployService, request_id: str) -> bool:
    """Record that the trigger goes out now; False when the request no longer runs in this process (then it must
    not go out: another process took this one for dead and ended the request)."""
    now = deploys.clock().astimezone(UTC).isoformat(timespec="seconds")
    while True:
        try:
            with deploys.store.transaction():
                return deploys.store.mark_triggered(request_id, deploys.owner, now)
        except sqlite3.Error as exc:  # a full disk: nothing was sent yet, so waiting is safe
            log.error("could not record the trigger of deploy id=%s error=%s; retrying", request_id, exc)
            time.sleep(RETRY_MAX_S / 10)


def _tail(lines: list[str]) -> str:
    """The newest LOG_TAIL_LINES lines, at most LOG_TAIL_CHARS characters of them, whole lines only."""
    tail = "\n".join(lines[-LOG_TAIL_LINES:])
    if len(tail) <= LOG_TAIL_CHARS:
        return tail
    kept = tail[-(LOG_TAIL_CHARS - len(CUT_TAIL) - 1) :]
    return CUT_TAIL + "\n" + kept.partition("\n")[2]


def _cut(line: str, unread: int = 0) -> str:
    """A line of output as it is kept: its first LINE_CHARS characters, saying how many more it had."""
    more = max(len(line) - LINE_CHARS, 0) + unread
    return f"{line[:LINE_CHARS]} … {more:,} characters cut" if more else line


def _finish(
    deploys: DeployService,
    request: DeployRequest,
    status: str,
    exit_code: int | None,
    tail: str,
    note: str = "",
    unanswered: bool = False,
) -> DeployRequest:
    """Record the outcome, release the lock and audit it; a failing write is retried until the database takes it.

    ``awaiting_ci``: a webhook's pipeline took the trigger and will report the outcome, so the request has not
    finished and keeps the lock (``ci_deploys`` settles it when the report comes, ``abandon_stale`` if none does).
    ``unanswered``: the trigger was sent and no answer came. ``NOT_STARTED``: failed, and marked as never begun.
    """
    pause = 0.5
    attempt = 0
    never_started = status == NOT_STARTED
    status = "failed" if never_started else status
    handed_off = status == "awaiting_ci"
    finished_at = None if handed_off else deploys.clock().astimezone(UTC).isoformat(timespec="seconds")
    while True:
        attempt += 1
        try:
            with deploys.store.transaction():
                before = deploys.store.deploy_row(request.id)
                was = before["status"] if before else ""
                ended_at = finished_at
                if before and was in ("interrupted", "abandoned") and before["triggered_at"]:
                    # a webhook's answer after the request was given up on
                    if _keep_given_up(deploys, request, before, status, tail, unanswered):
                        recorded = False
                        break
                    if not handed_off:  # the trigger's outcome dates from when it was sent
                        ended_at = before["triggered_at"]
                recorded = deploys.store.finish_run(
                    request.id,
                    deploys.owner,
                    status,
                    finished_at=ended_at,
                    exit_code=exit_code,
                    log_tail=tail,
                    note=note,
                    lease_until=None,
                    never_started=int(never_started),
                )
                if recorded and handed_off:
                    _handed_off(deploys, request, was, exit_code)
                elif not recorded and handed_off and before and not before["log_tail"]:
                    # the pipeline's report settled it before the trigger's answer came: keep the answer all the same
                    deploys.store.update_deploy(request.id, log_tail=tail)
                    deploys.announce("trigger-answered", request.id)
                elif recorded:
                    deploys.store.release_lock(request.id)
                    details: dict = {"status": status, "exit_code": exit_code}
                    if before and before["status"] == "interrupted":  # another process gave up on it meanwhile
                        details["recorded_late"] = True
                    if note:
                        details["reason"] = note
                    deploys.store.audit("opsbot", f"{request.kind}.finished", request.id, **details)
                    deploys.announce("finished", request.id)
            break
        except sqlite3.Error as exc:
            # The outcome is only in memory now: say it in the log each time, and keep trying.
            log.error(
                "could not record deploy outcome id=%s status=%s exit_code=%s attempt=%d error=%s; retrying",
                request.id,
                status,
                exit_code,
                attempt,
                exc,
            )
            time.sleep(pause)
            pause = min(pause * 2, RETRY_MAX_S)
    if not recorded:
        log.warning("deploy outcome not recorded id=%s status=%s: no longer this process's deploy", request.id, status)
    log.info("deploy finished id=%s status=%s exit_code=%s", request.id, status, exit_code)
    return deploys.get(request.id)


def _keep_given_up(
    deploys: DeployService, request: DeployRequest, row: dict, status: str, tail: str, unanswered: bool
) -> bool:
    """Whether a webhook's answer that came after its request was given up on (interrupted, abandoned) leaves the
    request as it is: when no answer came after all (nothing new is known), when another run of the service has
    started since (what runs now is that run's), or when the trigger was taken but another request holds the lock
    by now. Then only the answer is kept, audited. Otherwise the answer settles it: an error fails it, an accepted
    trigger makes it wait for its pipeline again, the lock retaken."""
    later = deploys.store.runs_started_after(request.service, request.env, row["started_at"] or "", request.id)
    holder = None
    if not unanswered and not later and status == "awaiting_ci":
        holder = deploys.store.take_lock(request.service, request.env, request.id, request.requester)
        if holder == request.id:
            holder = None
    if not (unanswered or later or holder):
        return False
    why = "no answer came" if unanswered else f"{later[0]['id']} ran since" if later else f"{holder} holds the lock"
    log.warning("deploy id=%s answered after it was given up on; left as it was: %s", request.id, why)
    deploys.store.update_deploy(request.id, log_tail=tail)
    deploys.store.audit("opsbot", f"{request.kind}.answered_late", request.id, answer=status, left_as_is=why)
    deploys.announce("trigger-answered", request.id)
    return True


def _handed_off(deploys: DeployService, request: DeployRequest, was: str, exit_code: int | None) -> None:
    """The trigger was taken: the request waits for its pipeline's report, holding the lock."""
    if was != "awaiting_ci":  # recovered after a stop, it was handed off already: this is the trigger's answer
        deploys.store.audit("opsbot", f"{request.kind}.handed_off", request.id, exit_code=exit_code)
    deploys.announce("handed-off", request.id)


class _Reporter:
    """Shows progress from a thread of its own, newest output only, so a slow Slack never delays the run."""

    def __init__(self, request: DeployRequest, progress: Progress | None) -> None:
        self.request = request
        self.progress = progress
        self._latest: str | None = None
        self._wake = threading.Condition()
        self._done = False
        self._thread = threading.Thread(target=self._loop, name=f"opsbot-progress-{request.id}", daemon=True)
        if progress is not None:
            self._thread.start()

    def show(self, text: str) -> None:
        with self._wake:
            self._latest = text
            self._wake.notify()

    def close(self) -> None:
        with self._wake:
            self._done = True
            self._wake.notify()

    def _loop(self) -> None:
        assert self.progress is not None
        refused = False  # the database refuses the reports' writes (a full disk): said when it starts and ends only
        while True:
            with self._wake:
                self._wake.wait_for(lambda: self._latest is not None or self._done)
                if self._done:
                    return
                text, self._latest = self._latest, None
            try:
                self.progress(self.request, text or "")
            except Exception as exc:  # showing progress must never stop the deploy or keep its lock
                if not is_write_failure(exc):
                    log.exception("progress report failed request_id=%s", self.request.id)
                elif not refused:
                    refused = True
                    log.warning(
                        "progress reports failing until the database takes writes again request_id=%s reason=%s",
                        self.request.id,
                        exc,
                    )
                continue
            if refused:
                refused = False
                log.info("progress reports recovered request_id=%s", self.request.id)


def _run_command(
    deploys: DeployService,
    runner: Runner,
    argv: list[str],
    request: DeployRequest,
    progress: Progress | None,
    secrets: tuple[str, ...],
) -> tuple[str, int | None, list[str]]:
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "LANG": "C.UTF-8",
        "OPSBOT_REQUEST_ID": request.id,
        "OPSBOT_SERVICE": request.service,
        "OPSBOT_ENV": request.env,
        "OPSBOT_VERSION": request.version,
    }
    watch_read, watch_write = os.pipe()  # the guard's lifeline: closed by the kernel when this process dies
    guard = [sys.executable, "-I", "-S", str(GUARD), "--request", request.id, "--watch", str(watch_read), "--"]
    lines: deque[str] = deque(maxlen=KEPT_LINES)
    try:
        process = subprocess.Popen(
            guard + argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=deploys.workdir,
            text=True,
            errors="replace",
            start_new_session=True,
            pass_fds=(watch_read,),
        )
    except (OSError, ValueError) as exc:  # ValueError: an argument holds a NUL character
        os.close(watch_write)
        why = exc.strerror if isinstance(exc, OSError) else str(exc)
        log.error("deploy command not started id=%s error=%s", request.id, why)
        return NOT_STARTED, None, [f"could not start {argv[0]}: {why}"]
    finally:
        os.close(watch_read)
    _record_runner(deploys, request.id, process.pid)

    redactor = Redactor(secrets)  # one per run: it follows a private key across lines

    read_so_far = [0]  # lines and pieces read: whether the reader still gets output (see _drain)

    def read() -> None:
        stdout = process.stdout
        assert stdout is not None
        while raw := stdout.readline(READ_CHARS):
            read_so_far[0] += 1
            unread = 0
            while not raw.endswith("\n"):  # a line longer than READ_CHARS: read past the rest, only counted
                more = stdout.readline(READ_CHARS)
                read_so_far[0] += 1
                if not more:
                    break
                unread += len(more.rstrip("\n"))
                if more.endswith("\n"):
                    break
            try:
                kept = redactor.line(raw)
            except Exception:  # noqa: BLE001 - a scrubber's bug must not stop the reading: the command would block
                log.exception("deploy output line not scrubbed id=%s", request.id)
                kept = "opsbot: a line of output could not be scrubbed, so it is left out"
            if kept:  # "" is a line of a private key already announced as removed
                lines.append(_cut(kept.rstrip("\r\n"), unread))

    reader = threading.Thread(target=read, name=f"opsbot-output-{request.id}", daemon=True)
    reader.start()
    reporter = _Reporter(request, progress)
    deadline = time.monotonic() + runner.timeout
    last_report = time.monotonic()
    try:
        while process.poll() is None:
            if time.monotonic() > deadline:
                _kill_group(process)
                process.wait()
                _drain(reader, lines, time.monotonic() + DRAIN_S, read_so_far)
                lines.append(
                    f"opsbot: stopped after the {runner.timeout} s timeout (if it needs longer, raise `timeout:` "
                    f"under {request.service}'s runner in services.yaml)"
                )
                return "timed_out", None, list(lines)
            if time.monotonic() - last_report >= PROGRESS_EVERY_S:
                last_report = time.monotonic()
                reporter.show("\n".join(list(lines)[-PROGRESS_LINES:]))
            time.sleep(0.05)
        # A guard killed while the command ran (the OOM killer, a `kill -9`) leaves the command running with
        # nobody to stop it, while the run is recorded and its lock released: the group goes with it.
        _end_group(process)
        # The reader may lag (a long line takes a while to scrub): its last lines are the error, so read to the
        # end, for as long as the run had left and output keeps coming, and never less than DRAIN_S.
        _drain(reader, lines, max(deadline, time.monotonic() + DRAIN_S), read_so_far)
    finally:
        reporter.close()
        os.close(watch_write)
    code = process.returncode
    # The guard's own word that the command never started: its only line. A command that ran may exit 127 too, and
    # say "could not start" of something of its own (a pod), after output of its own.
    if code == 127 and len(lines) == 1 and lines[0].startswith(f"could not start {argv[0]}: "):
        return NOT_STARTED, None, list(lines)
    return ("succeeded" if code == 0 else "failed"), code, list(lines)


def _drain(reader: threading.Thread, lines: deque[str], until: float, read_so_far: list[int]) -> None:
    """Wait until the reader has read the output to its end: until ``until`` (monotonic) while output keeps
    coming, and no longer than DRAIN_S of quiet. A process the command started in a session of its own (a
    daemon) may hold the output open and never write to it: waiting for it to the timeout held the lock for
    nothing. Says so when the end was not reached."""
    seen, quiet_since = read_so_far[0], time.monotonic()
    while reader.is_alive() and (now := time.monotonic()) < until:
        if read_so_far[0] != seen:
            seen, quiet_since = read_so_far[0], now
        elif now - quiet_since >= DRAIN_S:
            break
        reader.join(timeout=min(0.1, max(until - now, 0.0)))
    if reader.is_alive():  # something still holds the output open, or it is still being scrubbed
        lines.append("opsbot: the output was not read to its end in time; its last lines may be missing here")


def _record_runner(deploys: DeployService, request_id: str, pid: int) -> None:
    """Remember the runner's process group, so a process that finds this deploy orphaned can stop it."""
    try:
        with deploys.store.transaction():
            deploys.store.update_deploy(request_id, runner_pid=pid)
    except sqlite3.Error as exc:  # the guard still stops it when this process dies
        log.warning("could not record the runner pid id=%s error=%s", request_id, exc)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Answers a 3xx as an error instead of following it: a redirect would carry the secret header to wherever it
    points, as a GET that triggers nothing, and its page would pass for the CI system's answer."""

    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None


_sent = threading.local()  # whether this thread's trigger request was written out whole


class _Sent:
    """A connection that notes when its request has been written out whole: an error before that reached nobody (a
    proxy's bad answer to CONNECT, a refused header), one after it may come after CI took the trigger."""

    def request(self, *args: object, **kwargs: object) -> None:
        super().request(*args, **kwargs)  # type: ignore[misc]
        _sent.done = True


class _SentHTTPConnection(_Sent, http.client.HTTPConnection):
    pass


class _SentHTTPSConnection(_Sent, http.client.HTTPSConnection):
    pass


class _HTTPHandler(urllib.request.HTTPHandler):
    def http_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(_SentHTTPConnection, req)


class _HTTPSHandler(urllib.request.HTTPSHandler):
    def https_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        more = {"check_hostname": self._check_hostname} if hasattr(self, "_check_hostname") else {}  # Python 3.11
        return self.do_open(_SentHTTPSConnection, req, context=self._context, **more)


_webhook_opener = urllib.request.build_opener(_NoRedirect, _HTTPHandler, _HTTPSHandler)


def public_url(url: str) -> str:
    """The URL as it may be shown and logged: scheme://host/path, without a user, password or query string."""
    try:
        parts = urllib.parse.urlsplit(url)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "(a URL that cannot be read)"
    if ":" in host:
        host = f"[{host}]"
    return f"{parts.scheme}://{host}{port}{parts.path}"


def _url_secrets(url: str) -> tuple[str, ...]:
    """The credentials a URL may carry (its password, and query values under a key that names a credential:
    `?code=`, `?sig=`, `?token=`), to scrub wherever they show. Other query values (`?ref=production`) are
    words the webhook's answer repeats, not secrets."""
    try:
        parts = urllib.parse.urlsplit(url)
        password = parts.password
    except ValueError:
        return ()
    # Each as written in the URL (percent-encoded) and as sent or decoded: an answer may echo either form.
    raw = [value for key, value in _raw_query(parts.query) if CREDENTIAL_KEY.search(urllib.parse.unquote_plus(key))]
    found = [password or "", *raw]
    found += [urllib.parse.unquote(v) for v in found] + [urllib.parse.unquote_plus(v) for v in raw]
    if parts.username is not None:  # sent as HTTP basic auth: the header's value could be echoed too
        user = urllib.parse.unquote(parts.username) + ":" + urllib.parse.unquote(password or "")
        found.append(base64.b64encode(user.encode()).decode())
    kept = [v for v in dict.fromkeys(found) if len(v) >= 6]  # a short value is no secret, and is common
    return tuple(kept)


def _raw_query(query: str) -> list[tuple[str, str]]:
    """A URL's query as key and value pairs, the values as written (still percent-encoded)."""
    return [(key, value) for key, _, value in (part.partition("=") for part in query.split("&") if part)]


def _trigger_webhook(runner: Runner, data: bytes, secret: str) -> tuple[str, int | None, list]:
    """POST the body to the webhook, with ``secret`` (the value of its ``secret_env``) in its ``secret_header``; its
    URL is shown only as scheme://host/path, the rest of it being credentials."""
    shown = public_url(runner.url)
    secrets = (*((secret,) if secret else ()), *_url_secrets(runner.url))
    headers = {"Content-Type": "application/json"}
    if runner.secret_header and runner.secret_env:
        headers[runner.secret_header] = secret
    try:
        parts = urllib.parse.urlsplit(runner.url)
        url = runner.url
        if parts.username is not None:  # urllib does not send a URL's user: as HTTP basic auth, as curl does
            user = urllib.parse.unquote(parts.username) + ":" + urllib.parse.unquote(parts.password or "")
            headers.setdefault("Authorization", "Basic " + base64.b64encode(user.encode()).decode())
            url = urllib.parse.urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))
        req = urllib.request.Request(url, data=data, headers=headers, method="POST")
        _sent.done = False
        with _webhook_opener.open(req, timeout=runner.timeout) as response:
            try:
                text = response.read(4000).decode("utf-8", "replace")
            except (OSError, http.client.HTTPException) as exc:  # CI took it (the status came); its page did not
                text = f"(the answer's body could not be read: {exc!r})"
            output = f"triggered {shown}: HTTP {response.status}\n{text}"
            return "succeeded", 0, scrub(output, secrets).splitlines()  # at once: a key spans lines
    except urllib.error.HTTPError as exc:
        if exc.code in GATEWAY_GAVE_UP:  # a proxy passed the trigger on and got no answer: CI may have taken it
            return UNANSWERED, None, [scrub(f"sent the trigger to {shown}; its gateway answered {exc}", secrets)]
        if 300 <= exc.code < 400:
            location = exc.headers.get("Location")
            where = public_url(urllib.parse.urljoin(runner.url, location)) if location else "no address"
            why = (
                f"could not trigger {shown}: it answered HTTP {exc.code}, a redirect to {where}, which opsbot "
                "does not follow (the secret header would go with it); nothing was triggered. "
                "Set webhook.url in services.yaml to the address that takes the POST."
            )
            return NOT_STARTED, None, [scrub(why, secrets)]
        return NOT_STARTED, None, [scrub(f"could not trigger {shown}: {exc}", secrets)]
    except Exception as exc:  # noqa: BLE001 - any failure to trigger is the deploy's, reported in full
        if getattr(_sent, "done", False) and not _refused_by_tls(exc):  # it went out whole: CI may have taken it
            return UNANSWERED, None, [scrub(f"sent the trigger to {shown}, but no answer came: {exc!r}", secrets)]
        detail = exc if isinstance(exc, urllib.error.URLError) else repr(exc)  # urllib's own words say what it was
        return NOT_STARTED, None, [scrub(f"could not trigger {shown}: {detail}", secrets)]  # it never reached CI whole


def _refused_by_tls(exc: BaseException) -> bool:
    """A TLS alert from the server (TLS 1.3 checks a client certificate after the request is written): the
    connection was refused, so nothing reached CI."""
    return isinstance(exc, ssl.SSLError) and "ALERT" in str(getattr(exc, "reason", "") or "")


def _kill_group(process: subprocess.Popen) -> None:
    """Kill the command and everything it started, so nothing deploys on after a timeout: the guard is told first
    (SIGTERM), as it alone finds what left the group (a `setsid`, a daemon's double fork: it adopted them), and kills
    them and its group; what is left of the group after ORPHAN_STOP_S is killed here, as for an orphan."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(process.pid, signal.SIGTERM)
    deadline = time.monotonic() + ORPHAN_STOP_S
    while process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    _end_group(process)
    if process.poll() is None:
        process.kill()


def _end_group(process: subprocess.Popen) -> None:
    """SIGKILL what is left of the guard's process group: nothing once a guard has ended as it should, the command
    and its steps when the guard itself was killed (the OOM killer, a `kill -9`) while they ran."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)


def _running(pid: int) -> bool:
    """The process exists and is not a zombie (Linux /proc)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return False


def stop_orphans(runners: list[tuple[str, int | None]]) -> list[str]:
    """Stop the runners (request id, guard pid) whose owner died, where their guard is still there; the ids stopped.

    Each guard is told at once and all are waited for together, so however many there are, stopping them takes
    one wait of ORPHAN_STOP_S at most (the caller holds the database's write lock meanwhile).
    """
    told: list[tuple[str, int]] = []
    for request_id, pid in runners:
        if not pid:
            continue
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if str(GUARD).encode() not in cmdline or request_id.encode() not in cmdline:
            continue  # the pid was reused by something else
        try:  # the guard stops the command's descendants, those that left its group too (runner_guard.py)
            os.kill(pid, signal.SIGTERM)
        except (ProcessLookupError, PermissionError):
            continue
        told.append((request_id, pid))
    deadline = time.monotonic() + ORPHAN_STOP_S
    while time.monotonic() < deadline and any(_running(pid) for _, pid in told):
        time.sleep(0.02)
    for request_id, pid in told:
        try:  # what is left of the group (a guard of an older opsbot dies of SIGTERM and stops nothing)
            os.killpg(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        log.warning("stopped an orphaned deploy runner id=%s pid=%d", request_id, pid)
    return [request_id for request_id, _ in told]
