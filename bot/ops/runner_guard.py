"""The runner's guard: runs a deploy command and stops its whole process group when opsbot dies.

opsbot starts this file (by path, standard library only) as the leader of a new session, with the read
end of a pipe whose write end only the opsbot process holds. The command runs as the guard's child in the
same process group. When opsbot exits for any reason, SIGKILL included, the kernel closes the write end,
the guard reads end-of-file and stops the group: SIGTERM, then SIGKILL after a grace period (a SIGTERM to
the guard, from the process that finds the run's lease ran out, stops everything at once). So a deploy
never runs on, unseen, after the process that reports it is gone. When the command exits, whatever it left
running (a step it put in the background) is stopped the same way before the guard exits, so nothing of a
deploy outlives its run and its lock. On Linux the guard is its descendants' subreaper: a process that left
the group (`setsid`, a daemon's double fork) is still the guard's descendant, found and stopped with the rest.

Usage: python runner_guard.py --request ID --watch FD -- COMMAND [ARG ...]
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time

GRACE_S = 5.0
PR_SET_CHILD_SUBREAPER = 36  # linux/prctl.h
REAP_EVERY_S = 1.0
STOPPED: list[int] = []  # SIGTERM from outside: the owner's lease ran out and another process stops this run


def become_subreaper() -> bool:
    """Adopt the orphans among the command's descendants (Linux), so one that left the group is still found."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes  # here: a Python built without it still runs deploys, as before

        return ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except (ImportError, OSError, AttributeError):
        return False


def stop_group(child: subprocess.Popen) -> None:
    """SIGTERM the group and the guard's descendants, wait a little (less if the guard is told to stop), then
    SIGKILL everything, the guard included."""
    terminate(left_running())
    deadline = time.monotonic() + GRACE_S
    while child.poll() is None and time.monotonic() < deadline and not STOPPED:
        time.sleep(0.05)
    kill_all()
    os.killpg(0, signal.SIGKILL)


def terminate(left: list[int] | None) -> None:
    """SIGTERM ``left``; without /proc to list them (None), the guard's group, the guard not counting itself."""
    if left is not None:
        signal_all(left, signal.SIGTERM)
        return
    handler = signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        os.killpg(0, signal.SIGTERM)
    finally:
        signal.signal(signal.SIGTERM, handler)


def _live(pid: str, state: str) -> bool:
    """Running, or a thread group whose main thread ended while other threads run on (shown as a zombie)."""
    if state not in ("Z", "X"):
        return True
    try:
        return len(os.listdir(f"/proc/{pid}/task")) > 1
    except OSError:
        return False


def left_running() -> list[int] | None:
    """The guard's other live processes (Linux /proc): its process group, and its descendants, those that moved
    to a group or session of their own included. After the command exits, what it left behind. None without
    a /proc to read (not Linux)."""
    me, group = os.getpid(), os.getpgid(0)
    children: dict[int, list[int]] = {}
    found = set()
    try:
        entries = os.listdir("/proc")
    except OSError:
        return None
    for entry in entries:
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()  # after the name: state, ppid, pgrp, ...
        except (OSError, IndexError):
            continue
        if not _live(entry, fields[0]):
            continue
        children.setdefault(int(fields[1]), []).append(int(entry))
        if int(fields[2]) == group:
            found.add(int(entry))
    below, walked = list(children.get(me, ())), set()
    while below:  # every descendant, those of group members found above included
        pid = below.pop()
        if pid in walked:
            continue
        walked.add(pid)
        found.add(pid)
        below.extend(children.get(pid, ()))
    return sorted(found)


def signal_all(pids: list[int], signum: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, signum)
        except (ProcessLookupError, PermissionError):
            pass


def kill_all() -> None:
    """SIGKILL what is left, pass after pass: each pass kills what the one before missed (a fork in between)."""
    left = left_running()
    for _ in range(100):
        if not left:
            break
        signal_all(left, signal.SIGKILL)
        time.sleep(0.01)
        reap()
        left = left_running()


def reap(command: int | None = None) -> None:
    """Collect the exit status of adopted orphans that died, so they leave the process table.

    While the command runs (``command``, its pid), only the others: its own status is the deploy's outcome,
    which subprocess reads (a status reaped here would read as 0, success).
    """
    if command is None:
        while True:
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if not pid:
                return
    me = os.getpid()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == command:
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
            if fields[0] == "Z" and int(fields[1]) == me:
                os.waitpid(int(entry), os.WNOHANG)
        except (OSError, IndexError, ChildProcessError):
            continue


def stop_left_running() -> None:
    """Stop what the command left running: SIGTERM, a grace period (cut short if the guard is told to stop),
    then SIGKILL (not the guard)."""
    reap()
    left = left_running()
    if left is None:  # no /proc: the group is all that can be reached
        terminate(None)
        return
    if not left:
        return
    print(
        f"opsbot: the command exited and left {len(left)} process{'es' if len(left) > 1 else ''} running "
        f"(pid {', '.join(map(str, left))}); stopping them, as nothing of a deploy may outlive its run",
        flush=True,
    )
    deadline = time.monotonic() + GRACE_S
    terminate(left)
    while left and time.monotonic() < deadline and not STOPPED:
        time.sleep(0.05)
        reap()
        left = left_running()
    kill_all()


def main(argv: list[str]) -> int:
    signal.signal(signal.SIGTERM, lambda signum, frame: STOPPED.append(signum))
    adopting = become_subreaper()
    if len(argv) < 6 or argv[0] != "--request" or argv[2] != "--watch" or argv[4] != "--":
        print("usage: runner_guard.py --request ID --watch FD -- COMMAND [ARG ...]", file=sys.stderr)
        return 2
    watch = int(argv[3])
    command = argv[5:]
    try:
        child = subprocess.Popen(command, stdin=subprocess.DEVNULL)
    except OSError as exc:
        print(f"could not start {command[0]}: {exc.strerror}", flush=True)
        return 127
    poller = select.poll()
    poller.register(watch, select.POLLIN | select.POLLHUP | select.POLLERR)
    next_reap = time.monotonic() + REAP_EVERY_S
    while True:
        if adopting and time.monotonic() >= next_reap:  # orphans that ended meanwhile leave no zombies
            reap(child.pid)
            next_reap = time.monotonic() + REAP_EVERY_S
        code = child.poll()
        if code is not None:
            stop_left_running()
            return code if code >= 0 else 128 - code
        if STOPPED:  # the owner is long gone: no grace period, everything goes at once
            kill_all()
            os.killpg(0, signal.SIGKILL)
        for _, _ in poller.poll(200):
            if not os.read(watch, 64):  # end of file: the opsbot process that owns this deploy is gone
                stop_group(child)
                return 137


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
