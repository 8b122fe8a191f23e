"""The one place where a listener's failure is handled: what the person is told, what the log says."""

from __future__ import annotations

import logging
import sqlite3

import pytest

from bot.slack.listeners import report_failure


class TellingWeb:
    """Records what SlackWeb would send to the person who caused a request."""

    def __init__(self) -> None:
        self.responses: list[str] = []

    def respond(self, response_url: str, text: str, replace_original: bool = False) -> None:
        self.responses.append(text)


def test_a_database_locked_past_the_wait_is_told_as_busy_not_as_a_bug(caplog: pytest.LogCaptureFixture) -> None:
    # Before: "Sorry, something went wrong on my side (error id ...)" and a traceback, for an approval clicked while
    # another process held the database's write lock for more than 30 s.
    web = TellingWeb()
    click = {"type": "block_actions", "user": {"id": "UCAROL0003"}, "channel": {"id": "C0OPS"}, "response_url": "u"}

    report_failure(web, click, "approve", sqlite3.OperationalError("database is locked"))  # type: ignore[arg-type]

    assert web.responses == [
        "Sorry: opsbot's database was busy (another process held its write lock for too long). "
        "Nothing was changed; try again in a moment (click again, or send the command again)."
    ]
    (line,) = caplog.records
    assert line.levelno == logging.ERROR and line.exc_info is None
    assert line.getMessage() == (
        "handler found the database busy handler=approve user=UCAROL0003 channel=C0OPS reason=database is locked"
    )
