"""The Slack side of `opsbot shell`: the real Bolt app against a local fake Slack Web API.

What a person does (a direct message, a slash command, a button click) is built as the payload Slack
would send, signed like Slack signs it and handed to ``app.dispatch``. What the handlers send back to the
(fake) Web API comes out as posts, ready for the terminal to render; the terminal part is ``bot.shell.repl``.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
import secrets
import time
import uuid
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import unquote, urlencode

from slack_bolt import App, BoltResponse
from slack_sdk import WebClient

from bot.config import Secret
from bot.ops.alert_payload import PayloadProblem, parse_notification
from bot.runtime import Runtime
from bot.shell.render import Button, Post, render_text_object
from bot.slack.app import create_app
from bot.slack.ids import INCIDENT_RESOLVE_VIEW
from bot.slack.local.fake_api import RESPONSE_URL_METHOD, Call, FakeSlackAPI
from bot.slack.local.fake_methods import BOT_ID, BOT_USER_ID, TEAM_ID
from bot.slack.payloads import SlackRequest
from bot.slack.web import SlackWeb
from bot.workers import TrackedPool

SHELL_TOKEN = "xoxb-local-shell"
DM_CHANNEL = "DSHELL001"  # your direct messages with opsbot
COMMAND_CHANNEL = "CSHELL001"  # where slash commands run, so "Share in channel" has a channel
COMMAND_CHANNEL_NAME = "shell"
APP_ID = "ASHELL001"
SHOWN_METHODS = frozenset(
    {"chat.postMessage", "chat.postEphemeral", "chat.update", "chat.delete", RESPONSE_URL_METHOD}
    | {"views.open", "views.push", "views.update"}
)
CHANNEL_NAMES = {COMMAND_CHANNEL: COMMAND_CHANNEL_NAME, DM_CHANNEL: "directmessage"}

T = TypeVar("T")


def sign(body: str, timestamp: int, secret: str) -> str:
    """The X-Slack-Signature Slack sends: v0= HMAC-SHA256 of v0:timestamp:body."""
    base = f"v0:{timestamp}:{body}".encode()
    return "v0=" + hmac.new(secret.encode(), base, hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class Delivery:
    """Something opsbot showed, and the earlier message it replaced or removed (whose buttons are gone)."""

    post: Post
    replaces: Post | None = None  # matched by identity, or by channel and ts


class LocalSlack:
    """opsbot's Bolt app wired to a local fake Slack Web API, driven as a person in Slack would drive it.

    ``start`` replaces the runtime's settings by a copy with a per-session random signing secret and the
    fake's token and URL, so no real Slack credential is ever used. Posts go through a SlackWeb kept in
    memory: the fake Slack ends with the session, and the database may be a running server's, whose
    outbox must never deliver the shell's posts (nor the shell deliver the server's).
    """

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        # Strict: the stand-in knows its own channels only, and never answers for a real workspace's (an older
        # incident's channel taken for public by the shell would be indexed, and searchable from every channel).
        self.fake = FakeSlackAPI(strict_channels=True)
        self.fake.add_channel(COMMAND_CHANNEL, COMMAND_CHANNEL_NAME)
        self.app: App | None = None
        self.web: SlackWeb | None = None
        self.executor = TrackedPool(5, "opsbot-shell")
        self._secret = ""
        self._seen = 0  # fake API calls already delivered
        self._origins: dict[str, Post] = {}  # response_url name -> the message it acts on
        self._last_ts = 0.0
        self._ids = itertools.count(1)

    def start(self) -> LocalSlack:
        """Start the fake Slack Web API and create the Bolt app with a per-session signing secret."""
        self.fake.start()
        self.runtime.settings = self.runtime.settings.with_overrides(
            slack_signing_secret=Secret(secrets.token_hex(32)),
            slack_bot_token=Secret(SHELL_TOKEN),
            slack_app_token=Secret(""),
            slack_api_url=self.fake.url,
        )
        self._secret = str(self.runtime.settings.slack_signing_secret)
        client = WebClient(base_url=self.fake.url, token=SHELL_TOKEN)
        self.web = SlackWeb(client, None)
        self.app = create_app(self.runtime, client=client, listener_executor=self.executor, web=self.web)
        return self

    def close(self) -> None:
        """Let running handlers and deliveries finish briefly, then stop them and the fake API."""
        idle = self.wait_idle(2.0)
        self.executor.shutdown(wait=False, cancel_futures=True)
        if self.web is not None:
            self.web.stop(timeout=1.0)
        if idle:  # else leave the (daemon) fake serving, so a handler still waiting for the model ends quietly
            self.fake.stop()

    def wait_idle(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the handlers, the deploys they started and their posts to Slack."""
        deadline = time.monotonic() + timeout

        def left() -> float:
            return max(deadline - time.monotonic(), 0.0)

        while True:
            pools = (self.executor, self.runtime.runners, self.runtime.briefings)
            if not all(pool.wait_idle(left()) for pool in pools):
                return False
            # The handlers and deploys are done, so everything they post is in the outbox already.
            if self.web is not None and not self.web.wait_idle(left()):
                return False
            if all(pool.busy == 0 for pool in pools):
                return True

    # -- what Slack would send -----------------------------------------------------------------------------

    def send_message(self, user: str, text: str, thread_ts: str = "") -> tuple[str, list[Delivery]]:
        """A direct message to opsbot (in a thread when ``thread_ts`` is given); its ts and the acknowledgement."""
        ts = self._next_ts()
        event = {
            "type": "message",
            "user": user,
            "text": text,
            "channel": DM_CHANNEL,
            "channel_type": "im",
            "ts": ts,
            "event_ts": ts,
        }
        if thread_ts:
            event["thread_ts"] = thread_ts
        body = {
            "token": "local",
            "team_id": TEAM_ID,
            "api_app_id": APP_ID,
            "type": "event_callback",
            "event_id": f"Ev{uuid.uuid4().hex[:16].upper()}",  # events_seen is kept across sessions
            "event_time": int(time.time()),
            "authorizations": [{"team_id": TEAM_ID, "user_id": BOT_USER_ID, "is_bot": True}],
            "event": event,
        }
        return ts, self._dispatch(json.dumps(body), "application/json")

    def send_command(self, user: str, user_name: str, name: str, text: str) -> list[Delivery]:
        """A slash command typed in the command channel, as Slack sends it; the acknowledgement."""
        url = f"cmd-{next(self._ids)}"
        self._origins[url] = Post(channel=COMMAND_CHANNEL, ephemeral=True)
        form = {
            "token": "local",
            "team_id": TEAM_ID,
            "team_domain": "local",
            "channel_id": COMMAND_CHANNEL,
            "channel_name": COMMAND_CHANNEL_NAME,
            "user_id": user,
            "user_name": user_name,
            "command": name,
            "text": text,
            "api_app_id": APP_ID,
            "response_url": self.fake.response_url(url),
            "trigger_id": f"{url}.shell",
        }
        return self._dispatch(urlencode(form), "application/x-www-form-urlencoded", origin=self._origins[url])

    def click(self, user: str, button: Button, post: Post) -> list[Delivery]:
        """A click on ``button`` of ``post``, as Slack sends it; the acknowledgement."""
        url = f"act-{next(self._ids)}"
        self._origins[url] = post
        ts = post.ts or self._next_ts()
        channel = post.channel or COMMAND_CHANNEL
        payload: dict[str, Any] = {
            "type": "block_actions",
            "team": {"id": TEAM_ID, "domain": "local"},
            "user": {"id": user, "username": user.lower(), "team_id": TEAM_ID},
            "api_app_id": APP_ID,
            "token": "local",
            "container": {"type": "message", "message_ts": ts, "channel_id": channel, "is_ephemeral": post.ephemeral},
            "trigger_id": f"{url}.shell",
            "channel": {"id": channel, "name": CHANNEL_NAMES.get(channel, channel)},
            "state": {"values": {}},
            "response_url": self.fake.response_url(url),
            "actions": [
                {
                    "type": "button",
                    "action_id": button.action_id,
                    "block_id": button.block_id,
                    "value": button.value,
                    "text": {"type": "plain_text", "text": button.label, "emoji": True},
                    "action_ts": f"{time.time():.6f}",
                }
            ],
        }
        if not post.ephemeral:  # Slack sends the message only for messages everyone sees
            message = {"type": "message", "user": BOT_USER_ID, "bot_id": BOT_ID, "ts": ts, "text": post.text}
            message.update({"blocks": post.blocks} | ({"thread_ts": post.thread_ts} if post.thread_ts else {}))
            payload["message"] = message
        return self._dispatch(urlencode({"payload": json.dumps(payload)}), "application/x-www-form-urlencoded")

    def send_alerts(self, body: bytes) -> list[Delivery]:
        """A notification from Alertmanager (a payload file), taken as /hooks/alertmanager takes it, without the
        token: the shell is local. What opsbot answered Alertmanager, as a note."""
        assert self.app is not None, "call start() first"
        try:
            notification = parse_notification(body)
        except PayloadProblem as exc:
            return [Delivery(Post(note=f"That is not an Alertmanager webhook payload: {exc}"))]
        status, answer = self.app.alerts.take(notification)  # type: ignore[attr-defined]
        if status != 200:
            return [Delivery(Post(note=f"opsbot answered HTTP {status}: {answer.get('error', answer)}"))]
        change = answer["change"]
        what = "nothing new (a redelivery)" if change == "unchanged" else f"{change} in <#{answer['channel']}>"
        return [Delivery(Post(note=f"Alert group {answer['group']} ({answer['status']}): {what}"))]

    def _dispatch(self, body: str, content_type: str, origin: Post | None = None) -> list[Delivery]:
        """Hand a signed request to the app; what its HTTP answer shows."""
        assert self.app is not None, "call start() first"
        timestamp = int(time.time())
        headers = {
            "content-type": [content_type],
            "x-slack-request-timestamp": [str(timestamp)],
            "x-slack-signature": [sign(body, timestamp, self._secret)],
        }
        response = self.app.dispatch(SlackRequest(body=body, headers=headers))
        return [Delivery(post) for post in _ack_posts(response, origin)]

    def _next_ts(self) -> str:
        """A Slack timestamp for a message you send, always later than the previous one."""
        self._last_ts = max(time.time(), self._last_ts + 0.000001)
        return f"{self._last_ts:.6f}"

    # -- what opsbot sent back -------------------------------------------------------------------------------

    def new_deliveries(self) -> list[Delivery]:
        """What opsbot sent to the Web API or a response_url since last time, as a person would see it."""
        calls = self.fake.calls()
        new, self._seen = calls[self._seen :], len(calls)
        return [delivery for call in new if call.method in SHOWN_METHODS for delivery in self._deliveries_of(call)]

    def _deliveries_of(self, call: Call) -> list[Delivery]:
        """One recorded Web API or response_url call."""
        body, answer = call.body, call.answer
        if not call.ok:
            return [Delivery(Post(note=f"opsbot's {call.method} call failed: {call.error}"))]
        blocks = body.get("blocks") if isinstance(body.get("blocks"), list) else []
        common = {"text": str(body.get("text", "")), "blocks": blocks, "channel": str(body.get("channel", ""))}
        if call.method == "chat.postMessage":
            return [Delivery(Post(**common, ts=str(answer.get("ts", "")), thread_ts=str(body.get("thread_ts", ""))))]
        if call.method == "chat.postEphemeral":
            ts = str(answer.get("message_ts", ""))
            return [Delivery(Post(**common, ts=ts, thread_ts=str(body.get("thread_ts", "")), ephemeral=True))]
        if call.method in ("chat.update", "chat.delete"):
            replaced = Post(channel=common["channel"], ts=str(body.get("ts", "")))
            if call.method == "chat.delete":
                return [Delivery(Post(note="opsbot deleted a message"), replaces=replaced)]
            return [Delivery(Post(**common, ts=replaced.ts, updated=True), replaces=replaced)]
        if call.method == RESPONSE_URL_METHOD:
            return [self._response_delivery(call)]
        view = body.get("view") if isinstance(body.get("view"), dict) else {}
        title = render_text_object(view.get("title"))
        fix = (  # the one form opsbot opens: what its fields are, typed on the command line instead
            "; type it on one line instead: /incident resolve INC-ID WHAT FIXED IT --root-cause WHAT CAUSED IT"
            if view.get("callback_id") == INCIDENT_RESOLVE_VIEW
            else ""
        )
        return [Delivery(Post(note=f"opsbot opened a form, {title!r}: forms can't be filled in the shell yet{fix}"))]

    def _response_delivery(self, call: Call) -> Delivery:
        """A post to a response_url: replaces, deletes or adds to the message it came from."""
        body = call.body
        origin = self._origins.get(unquote(call.path.rsplit("/", 1)[-1])) or Post(channel=COMMAND_CHANNEL)
        if body.get("delete_original"):
            where = "only you could see" if origin.ephemeral else "with the button you pressed"
            return Delivery(Post(note=f"opsbot removed the message {where}"), replaces=origin)
        blocks = body.get("blocks") if isinstance(body.get("blocks"), list) else []
        post = Post(text=str(body.get("text", "")), blocks=blocks, channel=origin.channel)
        replaces = None
        if body.get("replace_original") and (origin.text or origin.blocks):  # same message, same visibility
            replaces = origin
            post.ts, post.thread_ts, post.ephemeral, post.updated = origin.ts, origin.thread_ts, origin.ephemeral, True
        if "response_type" in body or not post.updated:  # a new response_url message is ephemeral by default
            post.ephemeral = body.get("response_type") != "in_channel"
        return Delivery(post, replaces=replaces)


def _ack_posts(response: BoltResponse, origin: Post | None) -> list[Post]:
    """The HTTP answer to a request: an acknowledgement message, an error, or nothing."""
    if response.status != 200:
        return [Post(note=f"opsbot answered HTTP {response.status}: {response.body or 'no body'}")]
    if not response.body:
        return []
    try:
        data = json.loads(response.body)
    except json.JSONDecodeError:
        return [Post(text=response.body, ephemeral=True)]
    if not isinstance(data, dict) or not (data.get("text") or data.get("blocks")):
        return []
    ephemeral = data.get("response_type") != "in_channel"
    post = origin or Post()
    post.text, post.blocks, post.ephemeral = str(data.get("text", "")), data.get("blocks") or [], ephemeral
    post.channel = post.channel or COMMAND_CHANNEL
    return [post]
