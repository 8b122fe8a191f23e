"""`opsbot index` makes way for a bot serving on the same machine: it runs at lower CPU priority."""

from __future__ import annotations

import os

import pytest

from tests.conftest import SAMPLE_KNOWLEDGE, invoke


@pytest.fixture
def nice_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    monkeypatch.setattr(os, "nice", lambda increment: calls.append(increment) or increment)
    return calls


@pytest.mark.parametrize(("args", "expected"), [((), [10]), (("--nice", "5"), [5]), (("--nice", "0"), [])])
def test_index_runs_nicer_by_default_and_as_asked(
    nice_calls: list[int], args: tuple[str, ...], expected: list[int]
) -> None:
    result = invoke("index", *args, "no-such-dir")  # lowered before any work: no model is loaded to see it
    assert result.exit_code == 1
    assert nice_calls == expected


def test_nice_outside_the_unix_range_is_refused(nice_calls: list[int]) -> None:
    result = invoke("index", "--nice", "20", str(SAMPLE_KNOWLEDGE))
    assert result.exit_code == 2
    assert "--nice" in result.stderr
    assert nice_calls == []


def test_index_help_explains_the_priority() -> None:
    result = invoke("index", "--help")
    assert "--nice" in result.stdout and "opsbot index --nice 0" in result.stdout
