"""Every slow handler runs inside a guard: a failure is logged with an id and the user is told."""

from __future__ import annotations

import functools
import logging
import uuid
from collections.abc import Callable
from typing import Any

from bot.errors import OpsbotError
from bot.slack.blocks import build_error_text
from bot.slack.web import SlackWeb
from bot.store.base import is_write_failure

log = logging.getLogger(__name__)
Handler = Callable[..., None]


def _where(body: dict) -> tuple[str, str]:
    """The channel and user of any kind of Slack payload (an id in events, an object in interactions)."""
    event = body.get("event") if isinstance(body.get("event"), dict) else {}

    def named(name: str) -> str:
        value = event.get(name) or body.get(f"{name}_id") or body.get(name) or ""
        value = value.get("id", "") if isinstance(value, dict) else value
        return value if isinstance(value, str) else ""

    return named("channel"), named("user")


def tell_requester(web: SlackWeb, body: dict, text: str) -> None:
    """An ephemeral message to whoever caused this request: through its response_url, else in its channel."""
    if body.get("response_url"):
        web.respond(body["response_url"], text, replace_original=False)
        return
    channel, user = _where(body)
    if channel and user:
        web.tell_user(channel, user, text)
    else:
        log.warning("nobody to tell: the request names no channel and user text=%r", text[:80])


def guard(web: SlackWeb) -> Callable[[Handler], Handler]:
    """The decorator of one app's slow handlers: a failure becomes a logged error id and a short apology.

    The apology goes through ``web`` (the outbox).
    """

    def decorate(func: Handler) -> Handler:
        @functools.wraps(func)
        def wrapper(**kwargs: Any) -> None:
            body: dict = kwargs.get("body") or {}

            def tell(text: str) -> None:
                tell_requester(web, body, text)

            try:
                func(**kwargs)
            except OpsbotError as exc:  # the user's input or state: say what is wrong
                tell(f"Sorry: {exc}")
            except Exception as exc:
                channel, user = _where(body)
                if is_write_failure(exc):  # a full disk or a read-only database: an operational fault, not a bug
                    log.error(
                        "handler could not write the database handler=%s user=%s channel=%s reason=%s",
                        func.__name__,
                        user,
                        channel,
                        exc,
                    )
                    text = (
                        f"Sorry: opsbot cannot save anything right now, its database refuses writes ({exc}). "
                        "Nothing was changed; try again once the disk is fixed (opsbot's /healthz says when)."
                    )
                else:
                    error_id = uuid.uuid4().hex[:8]
                    log.exception(
                        "handler failed error_id=%s handler=%s user=%s channel=%s",
                        error_id,
                        func.__name__,
                        user,
                        channel,
                    )
                    text = build_error_text(error_id)
                try:
                    tell(text)
                except Exception:
                    log.exception("could not tell the user handler=%s", func.__name__)

        return wrapper

    return decorate

