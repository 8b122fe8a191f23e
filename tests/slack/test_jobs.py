"""The background jobs of `opsbot serve`: a full disk is said once when it starts failing them and once when it ends."""

from __future__ import annotations

import logging
import sqlite3
import threading

import pytest

from bot.slack import jobs


def test_a_sweep_on_a_full_disk_logs_once_when_it_fails_and_once_when_it_recovers(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    full = sqlite3.OperationalError("database or disk is full")
    outcomes: list[Exception | None] = [full, full, full, None, full, ValueError("a bug in the sweep")]
    swept = threading.Semaphore(0)
    rounds: list[int] = []

    def sweep(runtime: object) -> list:
        rounds.append(1)
        outcome = outcomes[len(rounds) - 1] if len(rounds) <= len(outcomes) else None
        swept.release()
        if outcome:
            raise outcome
        return []

    monkeypatch.setattr(jobs, "sweep_expired", sweep)
    monkeypatch.setattr(jobs, "post_digest_if_due", lambda runtime, web: None)

    class NoSilences:  # the silence and quiet checkers, jobs of their own: not what this test watches
        def __init__(self, runtime: object, web: object) -> None:
            pass

        def check_silences(self) -> None:
            pass

        def check_quiet(self) -> None:
            pass

    monkeypatch.setattr(jobs, "AlertDesk", NoSilences)
    monkeypatch.setattr(jobs, "SWEEP_EVERY_S", 0.01)
    caplog.set_level(logging.INFO, logger="bot.slack.jobs")

    running = jobs.start(object(), object())  # type: ignore[arg-type]
    for _ in range(len(outcomes) + 1):  # one more round: the last outcome's line is written before it starts
        assert swept.acquire(timeout=5)
    assert running.stop(timeout=5)

    lines = [(r.levelname, r.getMessage(), bool(r.exc_info)) for r in caplog.records if r.name == "bot.slack.jobs"]
    failing = (
        "WARNING",
        "background job failing until the database takes writes again job=deploy-sweeper "
        "reason=database or disk is full",
        False,
    )
    assert lines[:4] == [
        failing,
        ("INFO", "background job recovered job=deploy-sweeper", False),
        failing,
        ("ERROR", "background job failed job=deploy-sweeper", True),  # not a write failure: its traceback
    ]
