"""`opsbot check` and `opsbot index --strict` fail CI on a broken knowledge file; plain `index` says how many."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

import bot.cli.knowledge as knowledge_cli
from bot.answers import indexer
from bot.store import Store
from tests.conftest import SAMPLE_KNOWLEDGE, FakeEncoder, invoke

STAGING = "\n      staging: {approvals: 1, approvers: [commerce"
TYPOS = {"  deploys_channel:": "  deploys_chanel:", "    environments:" + STAGING: "    enviroments:" + STAGING}


@pytest.fixture
def broken(tmp_path: Path) -> Path:
    """The sample knowledge with two typos in services.yaml and an approver nobody on the roster matches."""
    root = tmp_path / "knowledge"
    shutil.copytree(SAMPLE_KNOWLEDGE, root)
    path = root / "services.yaml"
    text = path.read_text(encoding="utf-8")
    for old, new in TYPOS.items():
        assert old in text
        text = text.replace(old, new, 1)
    text = text.replace("approvers: [fulfilment, sre]", "approvers: [fulfillment, sre]", 1)
    path.write_text(text, encoding="utf-8")
    return root


def test_check_passes_the_sample_and_names_what_it_holds() -> None:
    result = invoke("check", str(SAMPLE_KNOWLEDGE))

    assert result.exit_code == 0, result.output
    assert "No problems in" in result.stdout and "10 services" in result.stdout


def test_check_reports_every_problem_at_once_and_exits_1(broken: Path) -> None:
    result = invoke("check", str(broken))

    assert result.exit_code == 1
    lines = result.stdout.splitlines()
    assert len(lines) == 3, result.stdout
    assert "settings: unknown key `deploys_chanel`; did you mean `deploys_channel`?" in lines[0]
    assert "services.catalog-search: unknown key `enviroments`; did you mean `environments`?" in lines[1]
    approvers = "services.order-pipeline.environments.prod.approvers"
    assert f"{approvers}: 'fulfillment' is neither a team nor a person" in lines[2]
    assert "did you mean `fulfilment`?" in lines[2]
    assert "3 problems in 1 file" in result.stderr
    assert "Traceback" not in result.output


FREEZE = '          - {start: "2026-12-23T18:00:00Z", end: "2026-12-27T08:00:00Z", reason: "Christmas peak"}\n'


@pytest.mark.parametrize(
    ("old", "new", "says"),
    [
        ("        freeze:\n" + FREEZE, "        freeze: 2026-12-24\n", "prod.freeze: must be a list of freezes"),
        ("        freeze:\n" + FREEZE, "        freeze: christmas\n", "prod.freeze: must be a list of freezes"),
        ("        freeze:\n" + FREEZE, "        freeze: {start: 2026-12-24T00:00Z}\n", "must be a list of freezes"),
        ("    owners: [U03F8K2LQ1]\n", "    owners: 5\n", "checkout-api.owners: must be a list of roster ids"),
    ],
)
def test_a_value_of_the_wrong_shape_is_one_problem_not_a_traceback(
    tmp_path: Path, old: str, new: str, says: str
) -> None:
    root = tmp_path / "knowledge"
    shutil.copytree(SAMPLE_KNOWLEDGE, root)
    path = root / "services.yaml"
    text = path.read_text(encoding="utf-8")
    assert old in text
    path.write_text(text.replace(old, new, 1), encoding="utf-8")

    result = invoke("check", str(root))

    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    (line,) = result.stdout.splitlines()
    assert line.startswith("services.yaml:") and says in line


@pytest.mark.parametrize(
    ("rel", "old", "new", "says", "at"),
    [
        (
            "experts.yaml",
            '    hours: "08:00-17:00"\n',
            '    hours: "08:00-17:00"\n    left: 2026-02-29\n',
            "person #15: left '2026-02-29' is not a real date (February 2026 has 28 days); write the day they left",
            "  - id: U08P1CK3XQ",  # a person's problem is on the line where they start
        ),
        (
            "experts.yaml",
            "    start: 2026-01-05\n  platform:",
            "    start: 2026-13-05\n  platform:",
            "rotations.payments.start: '2026-13-05' is not a real date (there is no month 13; months are 01 to 12)",
            "    start: 2026-13-05",
        ),
        (
            "experts.yaml",
            "end: 2026-12-28T10:00}",
            "end: 2026-12-32 10:00:00}",
            "overrides[0].end: '2026-12-32 10:00:00' is not a real date and time (December 2026 has 31 days)",
            "      - {person: U07M4AH6VN",
        ),
        (
            "services.yaml",
            FREEZE,
            '          - {start: 2026-02-30T18:00:00Z, end: 2026-12-27T08:00:00Z, reason: "Christmas peak"}\n',
            "freeze[0].start: '2026-02-30T18:00:00Z' is not a real date (February 2026 has 28 days)",
            "          - {start: 2026-02-30",
        ),
    ],
    ids=["left-feb-29", "rota-start-month-13", "override-end-dec-32", "freeze-feb-30"],
)
def test_a_date_that_does_not_exist_is_a_problem_on_its_line_not_a_traceback(
    tmp_path: Path, rel: str, old: str, new: str, says: str, at: str
) -> None:
    root = tmp_path / "knowledge"
    shutil.copytree(SAMPLE_KNOWLEDGE, root)
    path = root / rel
    text = path.read_text(encoding="utf-8")
    assert old in text
    text = text.replace(old, new, 1)
    path.write_text(text, encoding="utf-8")
    line = next(n for n, written in enumerate(text.splitlines(), 1) if written.startswith(at))

    result = invoke("check", str(root))

    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    assert any(ln.startswith(f"{rel}:{line}: ") and says in ln for ln in result.stdout.splitlines()), result.stdout


SEXAGESIMAL = "YAML reads an unquoted time such as 10:00 as 600 (minutes, in base 60)"


@pytest.mark.parametrize(
    ("written", "says"),
    [
        ("10:00", f'600 is a number: {SEXAGESIMAL}; quote it, as in time: "10:00"'),
        ("9", f'9 is a number: {SEXAGESIMAL}; quote it, as in time: "09:00"'),
        ("10:00:00", f'36000 is a number: {SEXAGESIMAL}; quote it, as in time: "10:00"'),
        ('"9am"', "'9am' must look like 09:00"),
    ],
    ids=["sexagesimal", "a-bare-hour", "with-seconds", "text"],
)
def test_an_unquoted_digest_time_read_by_yaml_as_a_number_is_told_to_be_quoted(
    tmp_path: Path, written: str, says: str
) -> None:
    root = tmp_path / "knowledge"
    shutil.copytree(SAMPLE_KNOWLEDGE, root)
    path = root / "services.yaml"
    text = path.read_text(encoding="utf-8")
    assert 'time: "09:00"' in text
    path.write_text(text.replace('time: "09:00"', f"time: {written}", 1), encoding="utf-8")

    result = invoke("check", str(root))

    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    assert result.stdout.splitlines() == [f"services.yaml:14: settings.weekly_digest.time: {says}"]


def test_check_json_lists_the_problems_with_their_lines(broken: Path) -> None:
    result = invoke("check", "--json", str(broken))

    assert result.exit_code == 1
    report = json.loads(result.stdout)
    assert report["ok"] is False
    assert [p["path"] for p in report["problems"]] == ["services.yaml"] * 3
    assert all(isinstance(p["line"], int) for p in report["problems"])


def test_check_of_a_missing_directory_is_a_clean_error(tmp_path: Path) -> None:
    result = invoke("check", str(tmp_path / "nowhere"))

    assert result.exit_code == 1 and "does not exist" in result.stderr


@pytest.fixture
def fake_index(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`opsbot index` with the fake encoder and no ranker fit: what is checked here is the exit code and the
    problems, not the embeddings or the ranking."""
    monkeypatch.setattr(knowledge_cli, "_open", lambda settings: (Store(tmp_path / "index.db"), FakeEncoder()))
    monkeypatch.setattr(indexer, "fit_ranker", lambda *args, **kwargs: {"skipped": "not measured here"})


def test_plain_index_indexes_what_is_valid_says_how_many_problems_and_exits_0(broken: Path, fake_index: None) -> None:
    result = invoke("index", "--nice", "0", str(broken))

    assert result.exit_code == 0, result.output
    assert result.stderr.count("Warning: services.yaml:") == 3
    assert "3 problems in 1 file (above): fix them and index again" in result.stderr


@pytest.mark.parametrize("json_flag", [(), ("--json",)])
def test_index_strict_exits_1_on_any_problem(broken: Path, fake_index: None, json_flag: tuple[str, ...]) -> None:
    result = invoke("index", "--nice", "0", "--strict", *json_flag, str(broken))

    assert result.exit_code == 1


def test_index_strict_exits_0_when_nothing_is_wrong(tmp_path: Path, fake_index: None) -> None:
    root = tmp_path / "small"
    (root / "runbooks").mkdir(parents=True)
    (root / "runbooks" / "disk.md").write_text("# Disk full\n\nDelete old logs.\n", encoding="utf-8")

    result = invoke("index", "--nice", "0", "--strict", str(root))

    assert result.exit_code == 0, result.output
