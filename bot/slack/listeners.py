"""Registering listeners, and the one place where a listener's failure is handled.

Every slash command, button and event is registered through ``Listeners``: its acknowledgement runs at once
in the request's thread, its work lazily, and whatever the work raises is handled by ``report_failure``: a
user's mistake (``OpsbotError``) is explained to them, a database that refuses writes or stayed locked is said so
in one log line, and anything else is logged with an error id that the apology quotes. Handlers never catch for this
themselves.
"""

from __future__ import annotations

import inspect
import json
import logging
import uuid
from collections.abc import Callable
from typing import Any

from slack_bolt import Ack, App

from bot.errors import OpsbotError
from bot.slack.blocks.answers import build_error_text
from bot.slack.web import SlackWeb
from bot.store.base import is_busy, is_write_failure

log = logging.getLogger(__name__)
Handler = Callable[..., None]
ACK_WAIT_S = 0.5  # the longest an acknowledgement waits for the store, which a write may hold for 30 s


def _where(body: dict) -> tuple[str, str]:
    """The channel and user of any kind of Slack payload (an id in events, an object in interactions, the dialog's
    private_metadata in a view submission)."""
    event = body.get("event") if isinstance(body.get("event"), dict) else {}

    def named(name: str) -> str:
        value = event.get(name) or body.get(f"{name}_id") or body.get(name) or ""
        value = value.get("id", "") if isinstance(value, dict) else value
        return value if isinstance(value, str) else ""

    return named("channel") or _dialog_channel(body), named("user")


def _dialog_channel(body: dict) -> str:
    """The channel a submitted dialog was opened from, kept in its private_metadata: a view submission names no
    channel of its own, and without it a failure could be told to nobody."""
    view = body.get("view") if isinstance(body.get("view"), dict) else {}
    try:
        meta = json.loads(view.get("private_metadata") or "{}")
    except (TypeError, ValueError):
        return ""
    channel = meta.get("channel") if isinstance(meta, dict) else None
    return channel if isinstance(channel, str) else ""


def clicked_channel(body: dict) -> str:
    """The channel of a button press (its message's channel, or the container's)."""
    return (body.get("channel") or {}).get("id") or (body.get("container") or {}).get("channel_id", "")


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


def report_failure(web: SlackWeb, body: dict, name: str, exc: Exception) -> None:
    """The one error listener: what the person who caused ``body`` is told, and what the log says."""
    channel, user = _where(body)
    if isinstance(exc, OpsbotError):  # the user's input or state: say what is wrong
        text = f"Sorry: {exc}"
    elif is_write_failure(exc):  # a full disk or a read-only database: an operational fault, not a bug
        log.error(
            "handler could not write the database handler=%s user=%s channel=%s reason=%s", name, user, channel, exc
        )
        text = (
            f"Sorry: opsbot cannot save anything right now, its database refuses writes ({exc}). "
            "Nothing was changed; try again once the disk is fixed (opsbot's /healthz says when)."
        )
    elif is_busy(exc):  # another process kept the write lock past the wait: also a fault of operation, not a bug
        log.error("handler found the database busy handler=%s user=%s channel=%s reason=%s", name, user, channel, exc)
        text = (
            "Sorry: opsbot's database was busy (another process held its write lock for too long). "
            "Nothing was changed; try again in a moment (click again, or send the command again)."
        )
    else:
        error_id = uuid.uuid4().hex[:8]
        log.error(
            "handler failed error_id=%s handler=%s user=%s channel=%s",
            error_id,
            name,
            user,
            channel,
            exc_info=exc,
        )
        text = build_error_text(error_id)
    try:
        tell_requester(web, body, text)
    except Exception:
        log.exception("could not tell the user handler=%s", name)


def just_ack(ack: Ack) -> None:
    """The acknowledgement of work that shows its result by itself."""
    ack()


class Listeners:
    """Registers one app's listeners: acknowledgement at once, work lazily, failures to ``report_failure``."""

    def __init__(self, app: App, web: SlackWeb) -> None:
        self.app = app
        self.web = web

    def command(self, name: str, work: Handler, ack: Handler = just_ack) -> None:
        self.app.command(name)(ack=ack, lazy=[self._reported(work)])

    def action(self, action_id: str, work: Handler, ack: Handler = just_ack) -> None:
        self.app.action(action_id)(ack=ack, lazy=[self._reported(work)])

    def event(self, name: str, work: Handler, ack: Handler = just_ack) -> None:
        self.app.event(name)(ack=ack, lazy=[self._reported(work)])

    def view(self, callback_id: str, work: Handler, ack: Handler = just_ack) -> None:
        """A submitted dialog (modal): ``ack`` closes it or shows errors on its fields, ``work`` acts on it."""
        self.app.view(callback_id)(ack=ack, lazy=[self._reported(work)])

    def _reported(self, work: Handler) -> Handler:
        """``work`` with its failures reported. Bolt passes arguments by the names in the signature it reads, and
        tells lazy functions apart by name: the wrapper keeps ``work``'s name and asks for ``body`` as well, so a
        failure can always be reported to whoever caused it."""
        web = self.web
        signature = inspect.signature(work)
        wanted = set(signature.parameters)

        def run(**kwargs: Any) -> None:
            body = kwargs.get("body") or {}
            try:
                work(**{k: v for k, v in kwargs.items() if k in wanted})
            except Exception as exc:
                report_failure(web, body, work.__name__, exc)

        run.__name__ = run.__qualname__ = work.__name__
        parameters = list(signature.parameters.values())
        if "body" not in wanted:
            parameters.append(inspect.Parameter("body", inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None))
        run.__signature__ = signature.replace(parameters=parameters)  # type: ignore[attr-defined]
        return run
