"""The Bolt app's wiring: acknowledgements never wait for the slow work."""

from __future__ import annotations

import json
from pathlib import Path

from bot.runtime import Runtime
from bot.slack.app import SLOW_WORKERS
from bot.slack.fake_api import FakeSlackAPI
from tests.conftest import FakeEncoder
from tests.slack.conftest import GatedEncoder, make_settings, start_bot


def test_commands_are_acknowledged_while_every_slow_worker_is_busy(tmp_path: Path, slack_api: FakeSlackAPI) -> None:
    encoder = GatedEncoder(FakeEncoder())  # every answer waits for the model until the gate opens
    runtime = Runtime(make_settings(tmp_path, slack_api), encoder=encoder)
    runtime.start_loading()
    server, slack = start_bot(runtime, slack_api)
    try:
        acks = [slack.command("/ask", f"disk full on node {n}") for n in range(SLOW_WORKERS + 3)]
        assert [a.status for a in acks] == [200] * len(acks)
        assert [json.loads(a.body)["text"] for a in acks][-1] == f"Looking for: disk full on node {SLOW_WORKERS + 2}"
        assert slack_api.calls("response_url") == []  # the slow work has not got past waiting for the model
        encoder.gate.set()
        assert len(slack_api.wait_for("response_url", count=len(acks), timeout=30)) == len(acks)
    finally:
        encoder.gate.set()
        server.stop()
        runtime.close()
