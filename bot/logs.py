"""Logging set-up: key=value lines, and no token ever reaches a log."""

from __future__ import annotations

import logging
import re

TOKEN = re.compile(r"\b(xox[a-z]|xapp)-[A-Za-z0-9-]+")
LINE_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"


def redact_tokens(text: str) -> str:
    """``text`` with anything shaped like a Slack token replaced by its prefix (``xoxb-***``)."""
    return TOKEN.sub(lambda m: f"{m.group(1)}-***", text)


class RedactingFormatter(logging.Formatter):
    """Redacts the whole formatted record: message, arguments and traceback alike.

    A filter sees only the message and its arguments; the traceback is formatted after every filter ran,
    so an exception whose text holds a token would reach the log whole."""

    def format(self, record: logging.LogRecord) -> str:
        return redact_tokens(super().format(record))


def configure_logging(level: str) -> None:
    """Configure the root logger once; library chatter stays at WARNING."""
    root = logging.getLogger()
    if not any(isinstance(h.formatter, RedactingFormatter) for h in root.handlers):
        handler = logging.StreamHandler()
        handler.setFormatter(RedactingFormatter(LINE_FORMAT))
        root.addHandler(handler)
    root.setLevel(level)
    for noisy in ("slack_sdk", "slack_bolt", "urllib3", "sentence_transformers", "transformers", "huggingface_hub"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLevelName(level)))
