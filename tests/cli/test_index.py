"""`opsbot index` makes way for a bot serving on the same machine: it runs at lower CPU priority."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import bot.cli.knowledge as knowledge_cli
from bot.errors import OpsbotError
from tests.conftest import SAMPLE_KNOWLEDGE, invoke


@pytest.fixture
def nice_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    monkeypatch.setattr(os, "nice", lambda increment: calls.append(increment) or increment)
    return calls


@pytest.mark.parametrize(("args", "expected"), [((), [10]), (("--nice", "5"), [5]), (("--nice", "0"), [])])
def test_index_runs_nicer_by_default_and_as_asked(
    nice_calls: list[int], args: tuple[str, ...], expected: list[int], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "runbooks").mkdir()
    opened: list[int] = []

    def stop_before_work(settings: object) -> None:  # lowered before any work: no model is loaded to see it
        opened.append(len(nice_calls))
        raise OpsbotError("stopped before any work")

    monkeypatch.setattr(knowledge_cli, "_open", stop_before_work)
    result = invoke("index", *args, str(tmp_path))
    assert result.exit_code == 1 and "stopped before any work" in result.stderr
    assert nice_calls == expected and opened == [len(expected)]


def test_a_wrong_folder_is_refused_before_anything_runs(nice_calls: list[int]) -> None:
    result = invoke("index", "no-such-dir")
    assert result.exit_code == 1 and "does not exist" in result.stderr
    assert nice_calls == []


def test_nice_outside_the_unix_range_is_refused(nice_calls: list[int]) -> None:
    result = invoke("index", "--nice", "20", str(SAMPLE_KNOWLEDGE))
    assert result.exit_code == 2
    assert "--nice" in result.stderr
    assert nice_calls == []


def test_index_help_explains_the_priority() -> None:
    result = invoke("index", "--help")
    assert "--nice" in result.stdout and "opsbot index --nice 0" in result.stdout
