"""What `opsbot bench slack` reads about the index job it runs next to the bot."""

from __future__ import annotations

import os
import sys

import pytest

from bot.tools.bench_slack import _cpu_seconds, _niceness

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")


def test_the_niceness_and_cpu_time_of_a_process_are_read_from_proc() -> None:
    assert _niceness(os.getpid()) == os.getpriority(os.PRIO_PROCESS, 0)
    assert _cpu_seconds(os.getpid()) > 0  # this interpreter has run imports at least


def test_a_process_that_is_gone_gives_none() -> None:
    assert _niceness(2**22 + 1) is None and _cpu_seconds(2**22 + 1) is None  # above Linux's pid_max
