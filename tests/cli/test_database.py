"""`opsbot serve` and the other commands on a database they cannot write: one clear line and exit 1.

Run as real processes that cannot write the folder. Root writes anywhere, so as root the process runs without the
capabilities that let it (setpriv drops CAP_DAC_OVERRIDE and friends): it then obeys the folder's and the file's
permission bits like any user.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import pytest

from bot.cli.base import handle_errors
from bot.store import Store
from tests.conftest import ROOT

DROP_CAPABILITIES = ["setpriv", "--bounding-set=-dac_override,-dac_read_search,-fowner"]


def serve() -> tuple[str, ...]:
    """`opsbot serve` on a free port (it fails before listening, but checks the port first)."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return ("serve", "--host", "127.0.0.1", "--port", str(port))


def unprivileged() -> list[str]:
    """The prefix that runs a command without the power to write what its permissions forbid."""
    if os.geteuid() != 0:
        return []
    if shutil.which("setpriv") is None:
        pytest.skip("running as root without setpriv: no way to make a folder unwritable to the process")
    return DROP_CAPABILITIES


def run_opsbot(db: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLACK_", "OPSBOT_"))}
    env |= {
        "OPSBOT_DB": str(db),
        "PYTHONPATH": str(ROOT),
        "SLACK_BOT_TOKEN": "xoxb-test",
        "SLACK_SIGNING_SECRET": "a-signing-secret",
    }
    command = [*unprivileged(), sys.executable, "-m", "bot", *args]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=120, cwd=db.parent.parent)


@pytest.fixture
def locked_folder(tmp_path: Path) -> Iterator[Path]:
    """A folder the process cannot write, holding an opsbot database it cannot write either."""
    folder = tmp_path / "data"
    folder.mkdir()
    Store(folder / "opsbot.db").close()
    (folder / "opsbot.db").chmod(0o444)
    folder.chmod(0o555)
    probe = subprocess.run(
        [*unprivileged(), sys.executable, "-c", f"open({str(folder / 'x')!r}, 'w')"], capture_output=True
    )
    if probe.returncode == 0:
        folder.chmod(0o755)
        pytest.skip("this process can write a read-only folder: nothing to test")
    yield folder
    folder.chmod(0o755)


def assert_one_line(result: subprocess.CompletedProcess[str], message: str) -> None:
    assert result.returncode == 1, result.stderr
    assert result.stderr == message + "\n"
    assert "Traceback" not in result.stdout + result.stderr


def test_serve_in_a_read_only_folder_says_so_in_one_line(locked_folder: Path) -> None:
    db = locked_folder / "new.db"
    result = run_opsbot(db, *serve())
    assert_one_line(
        result,
        f"Error: cannot write the database {db} (unable to open database file): check the folder's permissions "
        "or set OPSBOT_DB to a writable path.",
    )


def test_serve_and_other_commands_on_a_read_only_database_say_so_in_one_line(locked_folder: Path) -> None:
    db = locked_folder / "opsbot.db"
    for args in (serve(), ("deploys",), ("channels", "list")):
        result = run_opsbot(db, *args)
        assert result.returncode == 1, (args, result.stderr)
        assert result.stderr.startswith(f"Error: cannot write the database {db} ("), (args, result.stderr)
        assert result.stderr.endswith("): check the folder's permissions or set OPSBOT_DB to a writable path.\n")
        assert result.stderr.count("\n") == 1 and "Traceback" not in result.stdout + result.stderr


def test_serve_on_a_file_that_is_not_a_database_says_so_in_one_line(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    notes = tmp_path / "data" / "notes.txt"
    notes.write_text("not a database, just notes\n" * 100)
    result = run_opsbot(notes, *serve())
    assert_one_line(
        result,
        f"Error: {str(notes)!r} is not an opsbot database (file is not a database); "
        "point OPSBOT_DB at the file `opsbot index` writes.",
    )


def test_another_programs_database_is_refused_and_left_as_it_was(tmp_path: Path) -> None:
    # Before, any command migrated it: 36 tables added to another app's file, its journal switched to WAL, and one
    # whose table opsbot also has (`audit`) was left half migrated behind a traceback.
    for table in ("invoices", "audit"):
        db = tmp_path / f"{table}.db"
        with closing(sqlite3.connect(db)) as other:
            other.execute(f"CREATE TABLE {table} (id INTEGER PRIMARY KEY, what TEXT)")
            other.execute(f"INSERT INTO {table} (what) VALUES ('kept')")
            other.commit()
        for args in (("deploys",), ("audit",)):
            result = run_opsbot(db, *args)
            assert_one_line(
                result,
                f"Error: {str(db)!r} is not an opsbot database (it holds another program's tables: {table}); "
                "point OPSBOT_DB at the file `opsbot index` writes.",
            )
        with closing(sqlite3.connect(db)) as other:
            tables = [r[0] for r in other.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
            assert tables == [table] and other.execute("PRAGMA journal_mode").fetchone()[0] == "delete"


def test_commands_opening_a_new_database_at_once_all_succeed(tmp_path: Path) -> None:
    # Before, two commands migrating one new database at the same moment (a first start, an upgrade) raced, and the
    # loser ended in a traceback: "database is locked".
    db = tmp_path / "opsbot.db"
    db.touch()  # an empty file is an empty database: every command migrates it
    env = {**os.environ, "OPSBOT_DB": str(db), "HF_HUB_OFFLINE": "1"}
    runs = [
        subprocess.Popen(
            [sys.executable, "-m", "bot", "deploys"],
            env=env,
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    answers = [run.communicate(timeout=120) for run in runs]
    assert [run.returncode for run in runs] == [0] * 4, answers
    assert all("Traceback" not in err for _, err in answers)
    assert Store(db).get_meta("no such key", "none") == "none"


def test_reading_commands_run_while_another_process_holds_the_write_lock(tmp_path: Path) -> None:
    # Before, opening the database tried a write first: every command, reading ones too, waited 30 s for the lock
    # and ended in a traceback, "database is locked".
    (tmp_path / "data").mkdir()
    db = tmp_path / "data" / "opsbot.db"
    Store(db).close()
    with closing(sqlite3.connect(db, isolation_level=None)) as holder:
        holder.execute("BEGIN IMMEDIATE")  # an operator's sqlite3 session, a VACUUM
        for args in (("deploys",), ("audit",), ("incidents", "list")):
            started = time.monotonic()
            result = run_opsbot(db, *args)
            assert result.returncode == 0, result.stderr
            assert "Traceback" not in result.stderr and time.monotonic() - started < 15


def test_a_command_that_meets_the_write_lock_held_too_long_says_so_in_one_line(
    capsys: pytest.CaptureFixture[str],
) -> None:
    @handle_errors
    def write_something() -> None:
        raise sqlite3.OperationalError("database is locked")  # as a write says after waiting 30 s for the lock

    with pytest.raises(SystemExit) as exit_:
        write_something()
    assert exit_.value.code == 1
    assert capsys.readouterr().err == (
        "Error: another process (an opsbot command or serve, a sqlite3 session) holds the database's write lock, "
        "so this command stopped and its last change was not saved; try again once that process is done.\n"
    )
