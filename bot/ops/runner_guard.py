"""The runner's guard: runs a deploy command and stops its whole process group when opsbot dies.

opsbot starts this file (by path, standard library only) as the leader of a new session, with the read
end of a pipe whose write end only the opsbot process holds. The command runs as the guard's child in the
same process group. When opsbot exits for any reason, SIGKILL included, the kernel closes the write end,
the guard reads end-of-file and stops the group: SIGTERM, then SIGKILL after a grace period. So a deploy
never runs on, unseen, after the process that reports it is gone. When the command exits, whatever it left
running in the group (a step it put in the background) is stopped the same way before the guard exits, so
nothing of a deploy outlives its run and its lock.

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


def stop_group(child: subprocess.Popen) -> None:
    """SIGTERM the group (the guard ignores it), wait a little, then SIGKILL everything, the guard included."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        os.killpg(0, signal.SIGTERM)
    except ProcessLookupError:
        pass
    deadline = time.monotonic() + GRACE_S
    while child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(0, signal.SIGKILL)


def left_running() -> list[int]:
    """The other live processes of the guard's process group (Linux /proc): what the command left behind."""
    me, group = os.getpid(), os.getpgid(0)
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()  # after the name: state, ppid, pgrp, ...
        except (OSError, IndexError):
            continue
        if fields[0] not in ("Z", "X") and int(fields[2]) == group:
            found.append(int(entry))
    return found


def stop_left_running() -> None:
    """Stop what the command left running in the group: SIGTERM, a grace period, then SIGKILL (not the guard)."""
    left = left_running()
    if not left:
        return
    print(
        f"opsbot: the command exited and left {len(left)} process{'es' if len(left) > 1 else ''} running "
        f"(pid {', '.join(map(str, left))}); stopping them, as nothing of a deploy may outlive its run",
        flush=True,
    )
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    deadline = time.monotonic() + GRACE_S
    os.killpg(0, signal.SIGTERM)
    while left and time.monotonic() < deadline:
        time.sleep(0.05)
        left = left_running()
    for _ in range(100):  # each pass kills what the one before missed (a fork in between)
        if not left:
            break
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.01)
        left = left_running()


def main(argv: list[str]) -> int:
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
    while True:
        code = child.poll()
        if code is not None:
            stop_left_running()
            return code if code >= 0 else 128 - code
        for _, _ in poller.poll(200):
            if not os.read(watch, 64):  # end of file: the opsbot process that owns this deploy is gone
                stop_group(child)
                return 137


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
