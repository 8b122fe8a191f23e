"""Every slow handler runs inside ``guarded``: a failure is logged with an id and the user is told."""

from __future__ import annotations

import functools
import logging
import uuid
from collections.abc import Callable
from typing import Any

from slack_sdk import WebClient

from bot.errors import OpsbotError
from bot.slack.blocks import build_error_text

log = logging.getLogger(__name__)


def _where(body: dict) -> tuple[str, str]:
    """The channel and user of any kind of Slack payload (an id in events, an object in interactions)."""
    event = body.get("event") if isinstance(body.get("event"), dict) else {}

    def named(name: str) -> str:
        value = event.get(name) or body.get(f"{name}_id") or body.get(name) or ""
        value = value.get("id", "") if isinstance(value, dict) else value
        return value if isinstance(value, str) else ""

    return named("channel"), named("user")


def tell_user(client: WebClient, body: dict, text: str, respond: Callable[..., Any] | None = None) -> None:
    """An ephemeral message to whoever caused this request."""
    if respond is not None and body.get("response_url"):
        respond(text=text, response_type="ephemeral", replace_original=False)
        return
    channel, user = _where(body)
    if channel and user:
        client.chat_postEphemeral(channel=channel, user=user, text=text)


def guarded(func: Callable[..., None]) -> Callable[..., None]:
    """Turn a handler's failure into a logged error id and a short ephemeral apology; never swallow it."""

    @functools.wraps(func)
    def wrapper(**kwargs: Any) -> None:
        body: dict = kwargs.get("body") or {}
        client: WebClient = kwargs["client"]
        respond = kwargs.get("respond")
        try:
            func(**kwargs)
        except OpsbotError as exc:  # the user's input or state: say what is wrong
            tell_user(client, body, f"Sorry: {exc}", respond)
        except Exception:
            error_id = uuid.uuid4().hex[:8]
            channel, user = _where(body)
            log.exception(
                "handler failed error_id=%s handler=%s user=%s channel=%s", error_id, func.__name__, user, channel
            )
            try:
                tell_user(client, body, build_error_text(error_id), respond)
            except Exception:
                log.exception("could not tell the user about error_id=%s", error_id)

    return wrapper
