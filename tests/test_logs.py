"""opsbot's log lines: no Slack token reaches them, wherever in the record it is."""

from __future__ import annotations

import io
import logging

import pytest

from bot.logs import configure_logging, redact_tokens


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


@pytest.mark.parametrize("prefix", ["xoxb", "xoxp", "xoxe", "xoxc", "xoxd", "xapp"])
def test_every_kind_of_slack_token_is_redacted(prefix: str) -> None:
    """Refresh (xoxe-), client (xoxc-) and cookie (xoxd-) tokens too, not only bot, user and app ones."""
    assert redact_tokens(f"refreshing with {prefix}-1-AbCdEf0123456789 now") == f"refreshing with {prefix}-*** now"
