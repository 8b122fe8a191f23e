"""h. A database that refuses writes (disk full), and a database folder opsbot may not write to.

Disk full: the serve child runs with RLIMIT_FSIZE of one page. A limit just above the database's size is not
enough in WAL mode: writes go to the -wal file, which may then grow to that size before anything fails.
With one page SQLite still reads everything, but cannot append a frame to the WAL, so every write fails
(EFBIG: Python ignores SIGXFSZ). The test first proves that with a plain sqlite3 child under the same limit.

Both start with the -wal and -shm files in place, held by a connection of the test: the disk filled up
while opsbot was running. (Without them a serve cannot even read: creating the 32 KiB -shm file is a write.)

Read-only: the database's folder has mode 0555 and opsbot runs without the capabilities that let root ignore
file modes (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_FOWNER, dropped from its bounding set before exec),
so SQLite cannot create the -wal and -shm files beside the database. Running it as `nobody` instead is not
possible here: the virtualenv's interpreter lives under /root, which nobody may not enter.
"""

from __future__ import annotations

import ctypes
import os
import resource
import shutil
import sqlite3
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.fault.harness import ALICE, OPS_CHANNEL, PYTHON, Cluster, copy_db, free_port, scaled, wait_until
from tests.fault.report import COLLECTOR

pytestmark = pytest.mark.fault
PAGE = 4096
PR_CAPBSET_DROP = 24  # <linux/prctl.h>
CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_FOWNER = 1, 2, 3  # <linux/capability.h>
WRITE_PROBE = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], timeout=5)
assert conn.execute("SELECT count(*) FROM chunks").fetchone()[0] > 0
try:
    with conn:
        conn.execute("INSERT INTO events_seen (event_id, at) VALUES ('probe', 'now')")
except sqlite3.Error as exc:
    print("refused:", exc)
else:
    print("written")
"""


def limit_file_size(size: int) -> Callable[[], None]:
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (size, size))

    return apply


def drop_file_capabilities() -> None:
    """Before exec: a root child keeps uid 0 but loses the capabilities that bypass file modes."""
    if os.geteuid() != 0:
        return
    libc = ctypes.CDLL(None, use_errno=True)
    for capability in (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_FOWNER):
        if libc.prctl(PR_CAPBSET_DROP, capability, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP) failed")


def hold_open(path: Path) -> sqlite3.Connection:
    """A reader connection that keeps the -wal and -shm files in place (as a running opsbot had them)."""
    conn = sqlite3.connect(path)
    conn.execute("SELECT count(*) FROM meta").fetchone()
    return conn


def test_a_full_database_is_reported_not_ready_and_answered_with_an_apology(cluster: Cluster) -> None:
    holder = hold_open(cluster.db_path)
    probe = subprocess.run(
        [PYTHON, "-c", WRITE_PROBE, str(cluster.db_path)],
        preexec_fn=limit_file_size(PAGE),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert probe.stdout.startswith("refused:"), f"the limit did not stop writes: {probe.stdout} {probe.stderr}"
    serve = cluster.start(preexec=limit_file_size(PAGE))
    slack = serve.slack(cluster.proxy)
    with COLLECTOR.scenario("h1. disk full") as s:
        s.note(f"serve child under RLIMIT_FSIZE={PAGE} (probe: {probe.stdout.strip()[:80]})")
        response, ts = slack.mention("disk full on the database host, writes failing", channel=OPS_CHANNEL)
        s.tried += 1
        s.check("the mention is acknowledged below 500", 0 < response.status < 500, f"answered {response}")
        answered = wait_until(
            lambda: (
                [m for m in cluster.api.messages(OPS_CHANNEL) if m.get("thread_ts") == ts]
                or [e for e in cluster.api.ephemerals(OPS_CHANNEL) if e.get("text")]
            ),
            30,
        )
        s.check("a mention gets an answer or a clear apology", bool(answered), "nothing was posted, not even ephemeral")
        _, name = slack.command_named("/deploy", "quick 9.9.9 staging", user=ALICE)
        s.tried += 1
        asked = time.monotonic()
        told = wait_until(lambda: cluster.api.responses(name), 15)
        s.check(
            "a /deploy is refused with an explanation within 15 s",
            bool(told),
            "no answer on the response_url after 15 s",
        )
        s.note(f"the /deploy answer came after {time.monotonic() - asked:.1f} s" if told else "no /deploy answer")
        s.check("nothing runs", not cluster.runs(), f"{cluster.runs()}")
        status = wait_until(lambda: serve.healthz()[0] == 503 or None, scaled(3, 10))
        code, health = serve.healthz()
        s.check("/healthz reports not ready (503)", bool(status), f"/healthz answered {code} {health}")
        s.check("the process keeps serving", serve.alive(), f"exited {serve.process.returncode}")
        s.check("no traceback in the process log", not cluster.tracebacks(), "\n".join(cluster.tracebacks())[:1500])
    holder.close()
    assert s.ok, s.failure()


def test_a_read_only_database_folder_stops_serve_with_one_clear_line(cluster: Cluster) -> None:
    folder = Path(tempfile.mkdtemp(prefix="opsbot-readonly-"))
    try:
        db = folder / "opsbot.db"
        copy_db(cluster.db_path, db)
        folder.chmod(0o555)  # the file itself stays writable: only the folder is closed
        env = cluster.env(OPSBOT_DB=str(db))
        with COLLECTOR.scenario("h2. read-only database directory") as s:
            s.note("database folder mode 0555; serve without CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_FOWNER")
            result = subprocess.run(
                [PYTHON, "-m", "bot", "serve", "--host", "127.0.0.1", "--port", str(free_port())],
                env=env,
                cwd=folder,
                preexec_fn=drop_file_capabilities,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=120,
            )
            s.tried += 1
            output = (result.stdout + result.stderr).strip()
            lines = [line for line in output.splitlines() if line.strip()]
            s.check("serve exits 1", result.returncode == 1, f"exit code {result.returncode}")
            s.check("no traceback", "Traceback" not in output, output[-1500:])
            s.check(
                "one clear line that names the database",
                len(lines) == 1 and lines[0].startswith("Error:") and str(folder) in lines[0],
                f"{len(lines)} line(s): {output[-600:]}",
            )
    finally:
        folder.chmod(0o755)
        shutil.rmtree(folder, ignore_errors=True)
    assert s.ok, s.failure()
