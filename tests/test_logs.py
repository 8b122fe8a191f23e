"""opsbot's log lines: no Slack token reaches them, wherever in the record it is."""

from __future__ import annotations

import io
import logging

from bot.logs import configure_logging


def test_a_token_is_redacted_from_the_message_its_arguments_and_the_traceback() -> None:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    root.handlers = []  # a CLI test may have configured logging already: this test sees its own handler
    try:
        configure_logging("INFO")
        (handler,) = root.handlers
        stream = io.StringIO()
        handler.setStream(stream)  # type: ignore[attr-defined]
        try:
            raise ValueError("could not use xoxb-1234-5678-secretsecret")
        except ValueError:
            logging.getLogger("bot.test").exception("call failed token=%s", "xapp-1-A0-secretsecret")
    finally:
        root.handlers, root.level = handlers, level
    text = stream.getvalue()
    assert "call failed token=xapp-***" in text and "ValueError: could not use xoxb-***" in text
    assert "secret" not in text
