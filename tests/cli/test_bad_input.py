"""Bad input and broken environments on the command line: a clear message, never a traceback or lost data."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

import bot.cli.knowledge as knowledge_cli
import bot.cli.slack as slack_cli
from bot.store import Store
from tests.conftest import ROOT, SAMPLE_KNOWLEDGE, FakeEncoder, assert_clean_failure, invoke


@pytest.fixture
def small_knowledge(tmp_path: Path) -> Path:
    """Three runbooks in two folders and the incidents of 2025, copied from the sample."""
    root = tmp_path / "knowledge"
    for folder in ("runbooks/auth-service", "runbooks/cdn", "incidents/2025"):
        shutil.copytree(SAMPLE_KNOWLEDGE / folder, root / folder)
    return root


@pytest.fixture
def tiny_knowledge(tmp_path: Path) -> Path:
    """Two runbooks and two incidents from the sample: quick to index."""
    root = tmp_path / "knowledge"
    shutil.copytree(SAMPLE_KNOWLEDGE / "runbooks/auth-service", root / "runbooks/auth-service")
    for name in ("INC-2025-0001.yaml", "INC-2025-0005.md"):
        (root / "incidents").mkdir(exist_ok=True)
        shutil.copy(SAMPLE_KNOWLEDGE / "incidents/2025" / name, root / "incidents" / name)
    return root


@pytest.fixture
def fake_index(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """`opsbot index` with the fake encoder into tmp_path/index.db (returned)."""
    db = tmp_path / "index.db"
    monkeypatch.setattr(knowledge_cli, "_open", lambda settings: (Store(db), FakeEncoder()))
    return db


@pytest.fixture
def lock_folder(monkeypatch: pytest.MonkeyPatch) -> Callable[[Path], None]:
    """Make a folder unlistable, as chmod 000 does for anyone but root (the tests may run as root)."""
    locked: set[str] = set()
    real_scandir = os.scandir

    def scandir(path: object = ".") -> object:
        if os.path.abspath(os.fspath(path)) in locked:  # type: ignore[arg-type]
            raise PermissionError(13, "Permission denied", os.fspath(path))  # type: ignore[arg-type]
        return real_scandir(path)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "scandir", scandir)
    return lambda folder: locked.add(str(folder.resolve()))


def stored_paths(db: Path) -> set[str]:
    store = Store(db)
    try:
        return set(store.document_hashes())
    finally:
        store.close()


@pytest.mark.parametrize("folder", ["runbooks/cdn", "runbooks", "incidents"])
def test_an_unreadable_folder_is_a_problem_and_its_documents_stay_indexed(
    small_knowledge: Path, fake_index: Path, lock_folder: Callable[[Path], None], folder: str
) -> None:
    assert invoke("index", "--nice", "0", str(small_knowledge)).exit_code == 0
    before = stored_paths(fake_index)
    lock_folder(small_knowledge / folder)

    checked = invoke("check", str(small_knowledge))
    indexed = invoke("index", "--nice", "0", str(small_knowledge))

    assert checked.exit_code == 1 and f"{folder}/: folder cannot be read (Permission denied)" in checked.stdout
    assert indexed.exit_code == 0, indexed.output
    assert f"Warning: {folder}/: folder cannot be read (Permission denied): fix its permissions." in indexed.stderr
    assert "0 removed" in indexed.stdout
    assert stored_paths(fake_index) == before


def test_a_database_of_a_newer_opsbot_is_refused_and_left_unchanged(tmp_path: Path) -> None:
    db = tmp_path / "opsbot.db"
    Store(db).close()
    with sqlite3.connect(db) as conn:  # what a later release's migration leaves behind
        conn.execute(
            "INSERT INTO _sqlite_migrations (migration_set, name, applied_at) VALUES ('opsbot', ?, '')", ["m099_future"]
        )
    conn.close()
    before = db.read_bytes()

    result = invoke("feedback", env={"OPSBOT_DB": str(db)})

    assert_clean_failure(result, "was written by a newer opsbot", "m099_future", "upgrade opsbot", "OPSBOT_DB")
    assert db.read_bytes() == before


@pytest.mark.parametrize("args", [("ask", "login failures"), ("ask", "--mode", "bm25", "login failures"), ("shell",)])
def test_an_index_of_another_model_is_named_instead_of_finding_nothing(
    small_knowledge: Path, fake_index: Path, monkeypatch: pytest.MonkeyPatch, args: tuple[str, ...]
) -> None:
    assert invoke("index", "--nice", "0", str(small_knowledge)).exit_code == 0  # with the model "fake-encoder"
    other = lambda settings, create=True: (Store(fake_index), FakeEncoder(model_id="other-model"))  # noqa: E731
    monkeypatch.setattr(knowledge_cli, "_open", other)
    monkeypatch.setattr(slack_cli, "_open", other)

    result = invoke(*args)

    assert_clean_failure(result, "built with the model fake-encoder", "now gives other-model", "run `opsbot index`")


def test_shell_with_stdin_closed_says_where_questions_come_from(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLACK_", "OPSBOT_"))}
    env |= {"OPSBOT_DB": str(tmp_path / "opsbot.db"), "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "bot", "shell"]

    result = subprocess.run(  # fd 0 closed before Python starts, as `opsbot shell <&-` does: sys.stdin is None
        command, env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path, preexec_fn=lambda: os.close(0)
    )

    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.startswith("Error: standard input is closed: run `opsbot shell` in a terminal, or pipe")


def test_shell_turns_bytes_that_are_not_utf8_into_text_it_can_store(monkeypatch: pytest.MonkeyPatch) -> None:
    typed = iter(["pgbouncer \udcff\udcfe too many clients"])  # how Python reads the bytes ff fe from a pipe

    def fake_input(prompt: str) -> str:
        try:
            return next(typed)
        except StopIteration:
            raise EOFError from None

    monkeypatch.setattr("builtins.input", fake_input)

    lines = list(slack_cli._typed_lines(None, interactive=False))

    assert lines == ["pgbouncer ?? too many clients"]
    assert lines[0].encode("utf-8")


@pytest.mark.parametrize(
    ("content", "message"),
    [(b"\xff\xfe{}\n", "is not UTF-8 text (byte 0); save it as UTF-8."), (None, "is a folder; give the JSON-lines")],
)
def test_eval_says_why_a_query_file_cannot_be_read(
    small_knowledge: Path, tmp_path: Path, content: bytes | None, message: str
) -> None:
    queries = tmp_path / "queries.jsonl"
    if content is None:
        queries.mkdir()
    else:
        queries.write_bytes(content)

    result = invoke("eval", "--knowledge", str(small_knowledge), "--queries", str(queries), "--mode", "bm25")

    assert_clean_failure(result, f"query file {str(queries)!r} {message}")


def test_a_blank_knowledge_folder_argument_is_refused_not_taken_for_the_current_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runbooks").mkdir()  # the current folder even looks like a knowledge folder
    for command in ("index", "check"):
        result = invoke(command, "  ")
        assert result.exit_code == 2 and "is blank: pass the knowledge folder" in result.stderr, result.output
        assert "Traceback" not in result.output
    assert not (tmp_path / "opsbot.db").exists()


def test_a_file_given_as_the_knowledge_folder_is_named_a_file(tmp_path: Path) -> None:
    note = tmp_path / "notes.md"
    note.write_text("# not a folder\n")
    assert_clean_failure(invoke("check", str(note)), "is a file, not a knowledge directory")
    assert_clean_failure(invoke("index", str(note)), "is a file, not a knowledge directory")
    queries = tmp_path / "q.jsonl"
    queries.write_text('{"query": "x", "relevant": ["runbooks/a.md"]}\n')
    assert_clean_failure(invoke("eval", "--knowledge", str(note), "--queries", str(queries)), "is a file")
    missing = invoke("eval", "--knowledge", str(tmp_path / "nope"), "--queries", str(queries))
    assert_clean_failure(missing, "does not exist; pass --knowledge the folder with runbooks/")


def test_opsbot_db_of_spaces_is_refused_rather_than_naming_a_file_of_spaces(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert_clean_failure(invoke("ask", "pgbouncer", env={"OPSBOT_DB": "   "}), "OPSBOT_DB is blank")
    assert list(tmp_path.iterdir()) == []


def test_opsbot_db_inside_a_file_names_the_file_rather_than_the_folders_permissions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "notes.txt").write_text("mine\n", encoding="utf-8")
    result = invoke("ask", "pgbouncer", env={"OPSBOT_DB": "notes.txt/opsbot.db"})
    assert_clean_failure(result, "'notes.txt' is a file, not a folder", "choose a path inside a folder")
    assert "permissions" not in result.output
    assert (tmp_path / "notes.txt").read_text(encoding="utf-8") == "mine\n"


def test_an_empty_question_is_refused_before_the_model_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_model(settings: object) -> None:
        raise AssertionError("the model was loaded for an empty question")

    monkeypatch.setattr(knowledge_cli, "_open", no_model)
    assert_clean_failure(invoke("ask", "  "), "the question is empty")


def test_a_file_name_that_is_not_utf8_is_a_problem_for_check_and_left_out_by_index(
    tiny_knowledge: Path, fake_index: Path
) -> None:
    """Latin-1 bytes in a name (unzip, a Windows share) cannot be stored as a path: both commands say to rename it."""
    folder = os.fsencode(tiny_knowledge / "runbooks" / "auth-service")
    with open(folder + b"/caf\xe9-latency.md", "w", encoding="utf-8") as handle:
        handle.write("# Cafe latency\n\nRestart the cafe.\n")
    message = "runbooks/auth-service/caf\\xe9-latency.md: the file name is not UTF-8; rename it (the file is left out)."

    checked = invoke("check", str(tiny_knowledge))
    indexed = invoke("index", "--nice", "0", str(tiny_knowledge))

    assert checked.exit_code == 1 and message in checked.stdout
    assert indexed.exit_code == 0, indexed.output
    assert f"Warning: {message}" in indexed.stderr
    assert "runbooks/auth-service/jwt-key-rotation.md" in stored_paths(fake_index)  # the files after it are indexed


@pytest.mark.parametrize("folder", ["runbooks", "incidents"])
def test_a_dangling_folder_link_is_a_problem_and_its_documents_stay_indexed(
    tiny_knowledge: Path, fake_index: Path, tmp_path: Path, folder: str
) -> None:
    """`runbooks -> /mnt/wiki/runbooks` with the share not mounted: not "no runbooks", which would empty the index."""
    assert invoke("index", "--nice", "0", str(tiny_knowledge)).exit_code == 0
    before = stored_paths(fake_index)
    shutil.move(tiny_knowledge / folder, tmp_path / "share")
    (tiny_knowledge / folder).symlink_to(tmp_path / "unmounted" / folder)

    checked = invoke("check", str(tiny_knowledge))
    indexed = invoke("index", "--nice", "0", str(tiny_knowledge))

    message = f"{folder}/: folder cannot be read (a link to {tmp_path / 'unmounted' / folder}, which does not exist)"
    assert checked.exit_code == 1 and message in checked.stdout
    assert indexed.exit_code == 0, indexed.output
    assert f"Warning: {message}" in indexed.stderr and "0 removed" in indexed.stdout
    assert stored_paths(fake_index) == before


def test_a_dangling_link_to_a_team_folder_inside_runbooks_is_a_problem_and_its_documents_stay_indexed(
    tiny_knowledge: Path, fake_index: Path, tmp_path: Path
) -> None:
    # Before, os.walk listed the link among the file names and the suffix filter dropped it without a word: the
    # team's runbooks were removed from the index as if deleted.
    share = tmp_path / "share" / "auth-service"
    shutil.move(tiny_knowledge / "runbooks/auth-service", share)
    (tiny_knowledge / "runbooks/auth-service").symlink_to(share)
    assert invoke("index", "--nice", "0", str(tiny_knowledge)).exit_code == 0
    before = stored_paths(fake_index)
    assert any(p.startswith("runbooks/auth-service/") for p in before)
    shutil.move(share, tmp_path / "moved")

    checked = invoke("check", str(tiny_knowledge))
    indexed = invoke("index", "--nice", "0", str(tiny_knowledge))

    message = f"runbooks/auth-service/: folder cannot be read (a link to {share}, which does not exist)"
    assert checked.exit_code == 1 and message in checked.stdout
    assert indexed.exit_code == 0 and "0 removed" in indexed.stdout and stored_paths(fake_index) == before


@pytest.mark.parametrize("name", ["experts.yaml", "services.yaml", "channels.yaml"])
@pytest.mark.parametrize("broken", ["dangling link", "folder"])
def test_a_config_file_that_is_a_link_to_nowhere_or_a_folder_is_a_problem_and_what_it_held_stays(
    tiny_knowledge: Path, fake_index: Path, tmp_path: Path, name: str, broken: str
) -> None:
    # Before, such a file was skipped without a word, and the index then held no roster, services or channels.
    for config in ("experts.yaml", "services.yaml", "channels.yaml"):
        shutil.copy(SAMPLE_KNOWLEDGE / config, tiny_knowledge / config)
    assert invoke("index", "--nice", "0", str(tiny_knowledge)).exit_code == 0
    store = Store(fake_index)
    try:
        held = (store.load_experts(), store.service_configs(), store.channel_answer_modes())
    finally:
        store.close()
    (tiny_knowledge / name).unlink()
    if broken == "folder":
        (tiny_knowledge / name).mkdir()
    else:
        (tiny_knowledge / name).symlink_to(tmp_path / "unmounted" / name)

    checked = invoke("check", str(tiny_knowledge))
    indexed = invoke("index", "--nice", "0", str(tiny_knowledge))

    assert checked.exit_code == 1 and f"{name}: file cannot be read (" in checked.stdout
    assert indexed.exit_code == 0 and f"Warning: {name}: file cannot be read" in indexed.stderr
    store = Store(fake_index)
    try:
        assert (store.load_experts(), store.service_configs(), store.channel_answer_modes()) == held
    finally:
        store.close()


def test_an_argument_that_is_not_utf8_is_refused_with_a_message_not_a_traceback(tmp_path: Path) -> None:
    # Before, `opsbot ask` ended in a tokenizer TypeError, and `opsbot index` of such a folder did all its work and
    # then failed writing the folder's name.
    for args in ([b"ask", b"checkout \xff latency"], [b"index", bytes(tmp_path) + b"/k\xe9"]):
        done = subprocess.run(
            [sys.executable.encode(), b"-m", b"bot", *args],
            cwd=ROOT,
            capture_output=True,
            env={**os.environ, "OPSBOT_DB": str(tmp_path / "o.db"), "HF_HUB_OFFLINE": "1"},
            timeout=120,
        )
        assert done.returncode == 1 and b"Traceback" not in done.stderr, done.stderr
        assert b"is not UTF-8 text; type it again in UTF-8" in done.stderr
