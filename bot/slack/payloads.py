"""What Slack sends to the request URL, checked before the Bolt app reads it.

Slack posts four kinds of body to /slack/events:

- Events API: a JSON object, ``{"type": "event_callback", "event_id": "Ev..", "team_id": "T..",
  "authorizations": [{"team_id": "T..", "user_id": "U..", ...}], "event": {"type": "app_mention", "user": "U..",
  "text": "..", "channel": "C..", "ts": "1700000000.000100"}}``; or ``{"type": "url_verification",
  "challenge": ".."}`` when the URL is saved; or ``{"type": "app_rate_limited", ...}``.
- Slash commands: a form, ``command=/ask&text=..&user_id=U..&channel_id=C..&team_id=T..&response_url=..``.
- Interactivity: a form with one field, ``payload``, holding a JSON object whose ``type`` says what happened:
  ``block_actions`` (``user`` object, ``actions`` list of ``{"action_id", "block_id", "value", ...}``,
  ``channel`` and ``container`` objects, ``response_url``), ``view_submission`` and ``view_closed`` (a ``view``
  object with ``id``, ``type`` and ``callback_id``), ``shortcut`` and ``message_action`` (``callback_id``),
  ``block_suggestion`` (``action_id``) and the legacy dialog and attachment types (``callback_id``).
- ``ssl_check=1&token=..`` when the URL is saved.

The checks cover what Bolt's routing and opsbot's handlers read, with the types Slack gives them: ids, timestamps
and texts are strings; ``user``, ``channel``, ``team`` and ``enterprise`` are an id or an object with a string
``id``; ``event``, ``message``, ``view`` and the like are objects; ``authorizations`` and ``actions`` are lists of
objects. A signed body of another shape was crafted or cut short, and the server answers it 400; without these
checks, Bolt and the handlers fail on it with a 500, a dropped connection or a traceback in the log.
"""

from __future__ import annotations

import json
import re
from typing import Any
from urllib.parse import parse_qsl

from slack_bolt import BoltContext, BoltRequest
from slack_bolt.request.internals import build_context

from bot.slack import ids

# Fields that are strings wherever Slack sends them (NULLABLE ones may be null, as in org-wide installs).
STRINGS = frozenset(
    {
        "type",
        "subtype",
        "team_id",
        "user_id",
        "channel_id",
        "enterprise_id",
        "event_id",
        "event_ts",
        "ts",
        "thread_ts",
        "message_ts",
        "callback_id",
        "action_id",
        "block_id",
        "value",
        "command",
        "response_url",
        "trigger_id",
        "challenge",
        "channel_type",
        "bot_id",
        "api_app_id",
        "reaction",
        "function_execution_id",
        "bot_access_token",
        "user_team",
        "source_team",
    }
)
NULLABLE = frozenset({"enterprise", "enterprise_id", "team", "thread_ts", "bot_id"})
REFERENCES = ("user", "channel", "team", "enterprise")  # an id, or an object holding it as "id"
OBJECTS = (  # nested objects Bolt or opsbot read fields of; checked like the body
    "event",
    "message",
    "previous_message",
    "item",
    "view",
    "container",
    "assistant_thread",
    "function_data",
    "workflow_step",
)
LISTS = ("authorizations", "actions", "response_urls")  # lists of objects
URL = re.compile(r"https?://[^\s]+\Z")  # where handlers post their answers (respond)
MAX_DEPTH = 6  # Slack nests a message in an event at most; deeper is crafted
# The fields opsbot's event handlers read, as Slack always sends them for these events.
EVENT_FIELDS = {"app_mention": ("channel", "ts"), "message": ("channel", "ts"), "reaction_added": ("reaction",)}
# Every button opsbot posts with these action ids carries a value (an answer, deploy or expert id): a click
# without one did not come from such a button.
VALUED_ACTIONS = frozenset(
    {
        ids.FEEDBACK_UP,
        ids.FEEDBACK_DOWN,
        ids.SHARE_ANSWER,
        ids.INVITE_EXPERT,
        ids.DEPLOY_APPROVE,
        ids.DEPLOY_REJECT,
        ids.DEPLOY_ROLLBACK,
        ids.INCIDENT_ROLLBACK,
    }
)
EVENT_BODY_TYPES = frozenset({"event_callback", "url_verification", "app_rate_limited"})
CALLBACK_TYPES = frozenset(
    {
        "shortcut",
        "message_action",
        "interactive_message",
        "dialog_submission",
        "dialog_cancellation",
        "dialog_suggestion",
        "workflow_step_edit",
    }
)


class MalformedPayload(ValueError):
    """A body that is not what Slack sends; the message names the field at fault, never its contents."""


def read_slack_body(body: bytes, content_type: str) -> dict[str, Any]:
    """The body as the Bolt app reads it, once it has the shape Slack gives it; else MalformedPayload saying why.

    JSON or form is decided as Bolt decides it (the media type, or a body starting with "{"), so what is
    checked here is what the app will see.
    """
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise MalformedPayload("the body is not UTF-8 text") from None
    if not text:
        raise MalformedPayload("the body is empty")
    if content_type.split(";")[0] == "application/json" or text.startswith("{"):
        data = _json(text, "the body")
        check_event_body(data)
        return data
    form = dict(parse_qsl(text, keep_blank_values=True))
    if "payload" in form:
        data = _json(form["payload"], "payload")
        check_interaction(data)
        return data
    if "command" in form:
        check_command(form)
        return form
    if form.get("ssl_check") == "1":
        return form
    raise MalformedPayload("a form without command or payload: not a slash command nor an interaction")


def check_slack_body(data: dict[str, Any]) -> None:
    """Any body as Bolt parsed it (a command form, an event or an interaction); MalformedPayload if not Slack's."""
    if "command" in data and "type" not in data:
        check_command(data)
    elif data.get("type") in EVENT_BODY_TYPES:
        check_event_body(data)
    elif data.get("ssl_check") != "1":
        check_interaction(data)


def check_event_body(data: dict[str, Any]) -> None:
    """An Events API body: url_verification, or an event_callback whose event has what its handler reads."""
    kind = _string(data, "type", "the body")
    _check_object(data, "body")
    if kind == "url_verification":
        _string(data, "challenge", "the body")
    if kind != "event_callback":
        return
    event = data.get("event")
    if not isinstance(event, dict):
        raise MalformedPayload("event_callback without an event object")
    event_type = _string(event, "type", "event")
    for name in EVENT_FIELDS.get(event_type, ()):
        _string(event, name, "event")
    if event_type in EVENT_FIELDS:
        for name in ("user", "text"):
            if name in event and not isinstance(event[name], str):
                raise MalformedPayload(f"event.{name} is not a string")
    if event_type == "reaction_added":
        item = event.get("item")
        if not isinstance(item, dict):
            raise MalformedPayload("reaction_added without an item object")
        if "channel" in item and not isinstance(item["channel"], str):
            raise MalformedPayload("item.channel is not a string")


def check_command(form: dict[str, Any]) -> None:
    """A slash command: Slack always sends these fields, and the handlers answer through response_url."""
    _check_object(form, "the slash command")
    for name in ("command", "user_id", "channel_id", "response_url"):
        _string(form, name, "the slash command")
    if not isinstance(form.get("text"), str):  # empty when the command was typed alone
        raise MalformedPayload("the slash command has no text")
    if not form["command"].startswith("/"):
        raise MalformedPayload("command does not start with /")


def check_interaction(data: Any) -> None:
    """An interactivity payload: a type, who acted, and what the type's routing and handlers read."""
    kind = _string(data, "type", "payload")
    _check_object(data, "payload")
    for name in ("channel", "team", "enterprise"):  # objects in interactions, never bare ids as in events
        if data.get(name) is not None and not isinstance(data[name], dict):
            raise MalformedPayload(f"payload.{name} is not an object")
    if kind in ("block_actions", "view_submission", "view_closed", "shortcut", "message_action", "block_suggestion"):
        user = data.get("user")
        if not isinstance(user, dict) or not isinstance(user.get("id"), str):
            raise MalformedPayload(f"{kind} without a user object holding an id")
    if kind == "block_actions":
        actions = data.get("actions")
        if not isinstance(actions, list) or not actions:
            raise MalformedPayload("block_actions without actions")
        for n, action in enumerate(actions):
            action_id = _string(action, "action_id", f"actions[{n}]")
            if action_id in VALUED_ACTIONS:
                _string(action, "value", f"actions[{n}]")
    elif kind in ("view_submission", "view_closed"):
        view = data.get("view")
        if not isinstance(view, dict):
            raise MalformedPayload(f"{kind} without a view object")
        for name in ("id", "type", "callback_id"):
            _string(view, name, "view")
    elif kind == "block_suggestion":
        _string(data, "action_id", "payload")
    elif kind in CALLBACK_TYPES:
        _string(data, "callback_id", "payload")


def _json(text: str, what: str) -> dict[str, Any]:
    try:
        data = json.loads(text)
    except (ValueError, RecursionError):  # RecursionError: nested deeper than Python's parser goes
        raise MalformedPayload(f"{what} is not JSON") from None
    if not isinstance(data, dict):
        raise MalformedPayload(f"{what} is JSON but not an object")
    if not _valid_unicode(data):
        raise MalformedPayload(f"{what} holds text that is not valid Unicode (a lone surrogate escape)")
    return data


def _valid_unicode(data: Any) -> bool:
    """No string in ``data`` holds half a surrogate pair: JSON's \\ud800 escapes allow it, UTF-8 (and Slack) not."""
    stack = [data]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return False
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return True


def _string(data: Any, name: str, where: str) -> str:
    """``data[name]``, which must be a string, and one that is not empty: Slack's ids and types never are."""
    if not isinstance(data, dict):
        raise MalformedPayload(f"{where} is not an object")
    value = data.get(name)
    if not isinstance(value, str) or not value:
        raise MalformedPayload(f"{where} has no {name} string")
    return value


def _check_object(data: dict[str, Any], where: str, depth: int = 0) -> None:
    """The fields Bolt and the handlers read, with Slack's types, in ``data`` and the objects nested in it."""
    if depth > MAX_DEPTH:
        raise MalformedPayload(f"{where} is nested too deeply")
    for name in STRINGS.intersection(data):
        value = data[name]
        if not isinstance(value, str) and not (value is None and name in NULLABLE):
            raise MalformedPayload(f"{where}.{name} is not a string")
    if "response_url" in data and not URL.match(data["response_url"]):
        raise MalformedPayload(f"{where}.response_url is not an http(s) URL")
    for name in REFERENCES:
        value = data.get(name)
        if value is None:
            if name in data and name not in NULLABLE:
                raise MalformedPayload(f"{where}.{name} is null")
        elif isinstance(value, dict):
            if "id" in value and not isinstance(value["id"], str):
                raise MalformedPayload(f"{where}.{name}.id is not a string")
        elif not isinstance(value, str):
            raise MalformedPayload(f"{where}.{name} is neither an id nor an object")
    for name in OBJECTS:
        if name in data:
            if not isinstance(data[name], dict):
                raise MalformedPayload(f"{where}.{name} is not an object")
            _check_object(data[name], name, depth + 1)
    for name in LISTS:
        if name in data:
            items = data[name]
            if not isinstance(items, list):
                raise MalformedPayload(f"{where}.{name} is not a list")
            for n, item in enumerate(items):
                if not isinstance(item, dict):
                    raise MalformedPayload(f"{name}[{n}] is not an object")
                _check_object(item, f"{name}[{n}]", depth + 1)


class SlackRequest(BoltRequest):
    """A Bolt request whose form body is read by its fields.

    Bolt reads any form body that contains the word "payload" anywhere as an interaction, and finds it empty
    when there is no payload field: `/ask why is the payload too large` became an empty request. Here a
    form is an interaction only when it has a ``payload`` field. Lazy listeners get a copy made the same way.
    """

    def __init__(self, body: str, **kwargs: Any) -> None:
        super().__init__(body=body, **kwargs)
        if self.content_type != "application/json" and not body.startswith("{"):
            form = dict(parse_qsl(body, keep_blank_values=True))
            self.body = json.loads(form["payload"]) if "payload" in form else form
            self.context = build_context(BoltContext(kwargs.get("context") or {}), self.body)

    def to_copyable(self) -> SlackRequest:
        return SlackRequest(
            body=self.raw_body,
            query=self.query,
            headers=self.headers,
            context=self.context.to_copyable(),
            mode=self.mode,
        )
