"""The local terminal chat: what you type goes through the same Bolt handlers as Slack, against a fake Slack.

Plain text becomes a direct message to opsbot, `/ask ...` a slash command, a number a button click; each
is signed like Slack signs it and handed to ``app.dispatch``. What the handlers send to the (fake) Slack
Web API is rendered as terminal text, buttons numbered so they can be pressed.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
import secrets
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from types import TracebackType
from typing import Any, TypeVar
from urllib.parse import unquote, urlencode

from slack_bolt import App, BoltRequest, BoltResponse
from slack_sdk import WebClient

from bot.config import Secret
from bot.errors import InvalidRequest
from bot.render import Button, Post, Style, plain, render_post, render_text_object
from bot.runtime import Runtime
from bot.slack.app import create_app
from bot.slack.fake_api import BOT_ID, BOT_USER_ID, RESPONSE_URL_METHOD, TEAM_ID, Call, FakeSlackAPI
from bot.slack.manifest import SLASH_COMMANDS

SHELL_TOKEN = "xoxb-local-shell"
DEFAULT_USER = "USHELL001"  # who you are when the roster is empty
DM_CHANNEL = "DSHELL001"  # your direct messages with opsbot
COMMAND_CHANNEL = "CSHELL001"  # where slash commands run, so "Share in channel" has a channel
COMMAND_CHANNEL_NAME = "shell"
APP_ID = "ASHELL001"
REPLY_TIMEOUT_S = 60.0  # the first answer may wait for the model to load
LOADING_NOTICE_S = 1.0
QUIET_S = 0.3  # after the handlers finish, how long nothing new must arrive before the prompt returns
POLL_S = 0.02
SHOWN_METHODS = frozenset(
    {"chat.postMessage", "chat.postEphemeral", "chat.update", "chat.delete", RESPONSE_URL_METHOD}
    | {"views.open", "views.push", "views.update"}
)
CHANNEL_NAMES = {COMMAND_CHANNEL: COMMAND_CHANNEL_NAME, DM_CHANNEL: "directmessage"}
ROSTER_HINT = 4  # how many roster members an error message suggests

T = TypeVar("T")


# -- roster ------------------------------------------------------------------------------------------------


def check_user(user: str, roster: Mapping[str, str]) -> str:
    """The roster id meant by ``user`` (an id, or a name matching one person); InvalidRequest otherwise."""
    wanted = user.strip()
    if wanted.upper() in roster:
        return wanted.upper()
    by_name = [
        uid for uid, name in roster.items() if wanted and wanted.lower() in name.lower().split() + [name.lower()]
    ]
    if len(by_name) == 1:
        return by_name[0]
    if not roster:
        raise InvalidRequest(
            f"{wanted!r} is not on the roster, and the roster is empty: add people to experts.yaml "
            "and run `opsbot index`."
        )
    some = ", ".join(f"{uid} ({name})" for uid, name in list(roster.items())[:ROSTER_HINT])
    more = f" and {len(roster) - ROSTER_HINT} more in experts.yaml" if len(roster) > ROSTER_HINT else ""
    raise InvalidRequest(f"{wanted!r} is not on the roster; use a Slack user id from experts.yaml: {some}{more}.")


def sign(body: str, timestamp: int, secret: str) -> str:
    """The X-Slack-Signature Slack sends: v0= HMAC-SHA256 of v0:timestamp:body."""
    base = f"v0:{timestamp}:{body}".encode()
    return "v0=" + hmac.new(secret.encode(), base, hashlib.sha256).hexdigest()


# -- the session -------------------------------------------------------------------------------------------


class TrackedExecutor(ThreadPoolExecutor):
    """The handlers' thread pool, counting work in flight so the shell knows when they are done."""

    def __init__(self) -> None:
        super().__init__(max_workers=5, thread_name_prefix="opsbot-shell")
        self._busy = 0
        self._idle = threading.Condition()

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        """Run ``fn`` in the pool, counted until it finishes."""
        with self._idle:
            self._busy += 1
        try:
            future = super().submit(fn, *args, **kwargs)
        except BaseException:
            self._finished(None)
            raise
        future.add_done_callback(self._finished)
        return future

    def _finished(self, _: Future[Any] | None) -> None:
        """One piece of work ended: wake whoever waits for the pool to go idle."""
        with self._idle:
            self._busy -= 1
            self._idle.notify_all()

    def wait_idle(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for every handler to finish; True when none is running."""
        with self._idle:
            return self._idle.wait_for(lambda: self._busy == 0, timeout)


@dataclass
class _Target:
    """A pressable button and the post it is on."""

    button: Button
    post: Post


class Shell:
    """A terminal conversation with opsbot through the real Bolt app, against a local fake Slack Web API.

    The runtime's settings are replaced by a copy with a per-session random signing secret and the
    fake's token and URL, so no real Slack credential is ever used.
    """

    def __init__(
        self,
        runtime: Runtime,
        write: Callable[[str], Any] = print,
        user: str | None = None,
        style: Style = plain,
        echo: bool = False,
        reply_timeout: float = REPLY_TIMEOUT_S,
    ) -> None:
        self.runtime = runtime
        self.write = write
        self.style = style
        self.echo = echo  # repeat each line after the prompt, for piped input and transcripts
        self.reply_timeout = reply_timeout
        self.roster = {e.id: e.name for e in runtime.store.load_experts()}  # in roster order
        self.user = check_user(user, self.roster) if user else next(iter(self.roster), DEFAULT_USER)
        self.fake = FakeSlackAPI()
        self.app: App | None = None
        self._executor = TrackedExecutor()
        self._secret = ""
        self._seen = 0  # fake API calls already shown
        self._buttons: list[_Target] = []
        self._origins: dict[str, Post] = {}  # response_url name -> the message it acts on
        self._thread = ""  # ts of your last direct message, for /reply
        self._last_ts = 0.0
        self._ids = itertools.count(1)

    # -- lifecycle ---------------------------------------------------------------------------------------

    def start(self) -> Shell:
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
        self.app = create_app(self.runtime, client=client, listener_executor=self._executor)
        return self

    def close(self) -> None:
        """Let running handlers finish briefly, then stop the pool and the fake API."""
        idle = self._executor.wait_idle(2.0)
        self._executor.shutdown(wait=False, cancel_futures=True)
        if idle:  # else leave the (daemon) fake serving, so a handler still waiting for the model ends quietly
            self.fake.stop()

    def __enter__(self) -> Shell:
        """Start for the duration of a with block."""
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        """Close when the with block ends."""
        self.close()

    # -- reading lines -----------------------------------------------------------------------------------

    @property
    def prompt(self) -> str:
        """The prompt: who you act as."""
        return f"{self.roster.get(self.user, 'you')}> "

    def run(self, lines: Iterable[str]) -> None:
        """Greet, then handle each line until /quit or the end of input."""
        who = f"{self.roster[self.user]} ({self.user})" if self.user in self.roster else self.user
        loading = "" if self.runtime.ready else " The model is loading in the background."
        self.write(f"opsbot shell: you are {who}. Type a question, /ask ..., or /help. Ctrl-D leaves.{loading}")
        for line in lines:
            try:
                if not self.handle(line):
                    break
            except KeyboardInterrupt:
                self.write(
                    self.style("(interrupted; an answer still on its way shows up after your next line)", dim=True)
                )

    def handle(self, line: str) -> bool:
        """Act on one typed line; False when the shell should end."""
        self._show_late()
        line = line.strip()
        if not line:
            return True
        if self.echo:
            self.write(f"{self.prompt}{line}")
        word, _, rest = line.partition(" ")
        rest = rest.strip()
        if word in ("/quit", "/exit"):
            return False
        if line.isdigit():
            self.press(int(line))
        elif word == "/press":
            self.press(int(rest) if rest.isdigit() else 0)
        elif word == "/help":
            self.write(self.help_text())
        elif word == "/user":
            self.switch_user(rest)
        elif word == "/reply":
            self.reply(rest)
        elif word.startswith("/") and "/" not in word[1:]:  # "/var/log/... full" is a path, not a command
            self.command(word, rest)
        else:
            self.message(line)
        return True

    def help_text(self) -> str:
        """What can be typed, and who you act as."""
        commands = "\n".join(f"  {f'{c} {hint}':<34} {what}" for c, what, hint in SLASH_COMMANDS)
        who = f"{self.roster[self.user]} ({self.user})" if self.user in self.roster else self.user
        return (
            "Type a question, or paste an alert or a log line: it goes to opsbot as a direct message.\n"
            f"Slack commands (run in #{COMMAND_CHANNEL_NAME}, answered as in Slack):\n{commands}\n"
            "Buttons are numbered: type 1, 2 ... (or /press 1) to press one.\n"
            "Shell commands:\n"
            f"  {'/reply TEXT':<34} follow up in the thread of your last message\n"
            f"  {'/user [ID]':<34} act as another roster member (now: {who})\n"
            f"  {'/help':<34} this text\n"
            f"  {'/quit':<34} leave (or Ctrl-D)"
        )

    def switch_user(self, user: str) -> None:
        """Act as another roster member, or say who you are and who you could be."""
        if not user:
            some = ", ".join(f"{uid} ({name})" for uid, name in list(self.roster.items())[:ROSTER_HINT])
            self.write(f"You are {self.user}. " + (f"Roster: {some} ..." if some else "The roster is empty."))
            return
        try:
            self.user = check_user(user, self.roster)
        except InvalidRequest as exc:
            self.write(f"Sorry: {exc}")
            return
        self.write(f"You are now {self.roster[self.user]} ({self.user}).")

    # -- what Slack would send -----------------------------------------------------------------------------

    def message(self, text: str, thread_ts: str = "") -> None:
        """Send a direct message to opsbot (in a thread when ``thread_ts`` is given)."""
        ts = self._next_ts()
        event = {
            "type": "message",
            "user": self.user,
            "text": text,
            "channel": DM_CHANNEL,
            "channel_type": "im",
            "ts": ts,
            "event_ts": ts,
        }
        if thread_ts:
            event["thread_ts"] = thread_ts
        else:
            self._thread = ts
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
        self._converse(json.dumps(body), "application/json")

    def reply(self, text: str) -> None:
        """Follow up in the thread of your last direct message."""
        if not self._thread:
            self.write("Nothing to follow up on yet: ask a question first.")
        elif not text:
            self.write("Usage: /reply TEXT, a follow-up in the thread of your last question.")
        else:
            self.message(text, thread_ts=self._thread)

    def command(self, name: str, text: str) -> None:
        """Run a slash command as Slack would send it, when the app declares it."""
        known = [c for c, _, _ in SLASH_COMMANDS]
        if name not in known:
            self.write(
                f"Unknown command {name}. opsbot's Slack commands: {', '.join(known)}; "
                "the shell's own: /help, /user, /reply, /press, /quit."
            )
            return
        url = f"cmd-{next(self._ids)}"
        self._origins[url] = Post(channel=COMMAND_CHANNEL, ephemeral=True)
        form = {
            "token": "local",
            "team_id": TEAM_ID,
            "team_domain": "local",
            "channel_id": COMMAND_CHANNEL,
            "channel_name": COMMAND_CHANNEL_NAME,
            "user_id": self.user,
            "user_name": self.roster.get(self.user, self.user).lower(),
            "command": name,
            "text": text,
            "api_app_id": APP_ID,
            "response_url": self.fake.response_url(url),
            "trigger_id": f"{url}.shell",
        }
        self._converse(urlencode(form), "application/x-www-form-urlencoded", origin=self._origins[url])

    def press(self, number: int) -> None:
        """Click button ``number`` of the latest message that had buttons."""
        if not self._buttons:
            self.write("There is no button to press: ask a question first.")
            return
        if not 1 <= number <= len(self._buttons):
            self.write(f"There is no button [{number}]; the buttons are [1] to [{len(self._buttons)}].")
            return
        target = self._buttons[number - 1]
        button, post = target.button, target.post
        url = f"act-{next(self._ids)}"
        self._origins[url] = post
        ts = post.ts or self._next_ts()
        channel = post.channel or COMMAND_CHANNEL
        payload: dict[str, Any] = {
            "type": "block_actions",
            "team": {"id": TEAM_ID, "domain": "local"},
            "user": {"id": self.user, "username": self.user.lower(), "team_id": TEAM_ID},
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
        self.write(self.style(f"(you pressed {button.label})", dim=True))
        self._converse(urlencode({"payload": json.dumps(payload)}), "application/x-www-form-urlencoded")

    # -- dispatching and showing what came back --------------------------------------------------------

    def _converse(self, body: str, content_type: str, origin: Post | None = None) -> None:
        """Dispatch a signed request, show its acknowledgement, then what the handlers send until they are done."""
        assert self.app is not None, "call start() first"
        started = time.monotonic()
        timestamp = int(time.time())
        headers = {
            "content-type": [content_type],
            "x-slack-request-timestamp": [str(timestamp)],
            "x-slack-signature": [sign(body, timestamp, self._secret)],
        }
        response = self.app.dispatch(BoltRequest(body=body, headers=headers))
        turn: list[_Target] = []
        self._show(self._ack_posts(response, origin), turn)
        self._await_replies(started, turn)
        if turn:
            self._buttons = turn

    def _show_late(self) -> None:
        """Show what arrived after the last turn ended (a slow answer, a background job's update)."""
        turn: list[_Target] = []
        self._show(self._new_posts(), turn)
        if turn:
            self._buttons = turn

    def _ack_posts(self, response: BoltResponse, origin: Post | None) -> list[Post]:
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

    def _await_replies(self, started: float, turn: list[_Target]) -> None:
        """Show posts as they arrive, until the handlers are done and nothing new came for QUIET_S."""
        last_new = time.monotonic()
        noticed = False
        while True:
            idle = self._executor.wait_idle(POLL_S)
            posts = self._new_posts()
            now = time.monotonic()
            if posts:
                self._show(posts, turn)
                last_new = now
            if idle and now - last_new >= QUIET_S:
                return
            if not idle and not noticed and now - started > LOADING_NOTICE_S and not self.runtime.ready:
                self.write(self.style("(loading the model…)", dim=True))
                noticed = True
            if now - started > self.reply_timeout:
                self.write(self.style("(no answer yet; it shows up after your next line)", dim=True))
                return

    def _new_posts(self) -> list[Post]:
        """What opsbot sent to Slack since last time, as posts."""
        calls = self.fake.calls()
        new, self._seen = calls[self._seen :], len(calls)
        return [post for call in new if call.method in SHOWN_METHODS for post in self._posts_of(call)]

    def _posts_of(self, call: Call) -> list[Post]:
        """One recorded Web API or response_url call as what a person would see."""
        body, answer = call.body, call.answer
        if not call.ok:
            return [Post(note=f"opsbot's {call.method} call failed: {call.error}")]
        blocks = body.get("blocks") if isinstance(body.get("blocks"), list) else []
        common = {"text": str(body.get("text", "")), "blocks": blocks, "channel": str(body.get("channel", ""))}
        if call.method == "chat.postMessage":
            return [Post(**common, ts=str(answer.get("ts", "")), thread_ts=str(body.get("thread_ts", "")))]
        if call.method == "chat.postEphemeral":
            ts = str(answer.get("message_ts", ""))
            return [Post(**common, ts=ts, thread_ts=str(body.get("thread_ts", "")), ephemeral=True)]
        if call.method == "chat.update":
            self._forget_buttons(common["channel"], str(body.get("ts", "")))
            return [Post(**common, ts=str(body.get("ts", "")), updated=True)]
        if call.method == "chat.delete":
            self._forget_buttons(common["channel"], str(body.get("ts", "")))
            return [Post(note="opsbot deleted a message")]
        if call.method == RESPONSE_URL_METHOD:
            return self._response_posts(call)
        view = body.get("view") if isinstance(body.get("view"), dict) else {}
        title = render_text_object(view.get("title"))
        return [Post(note=f"opsbot opened a form, {title!r}: forms can't be filled in the shell yet")]

    def _forget_buttons(self, channel: str, ts: str, post: Post | None = None) -> None:
        """Buttons of a message that was replaced or deleted can no longer be pressed."""
        self._buttons = [
            t for t in self._buttons if t.post is not post and not (ts and (t.post.channel, t.post.ts) == (channel, ts))
        ]

    def _response_posts(self, call: Call) -> list[Post]:
        """A post to a response_url: replaces, deletes or adds to the message it came from."""
        body = call.body
        origin = self._origins.get(unquote(call.path.rsplit("/", 1)[-1])) or Post(channel=COMMAND_CHANNEL)
        if body.get("delete_original"):
            self._forget_buttons(origin.channel, origin.ts, origin)
            where = "only you could see" if origin.ephemeral else "with the button you pressed"
            return [Post(note=f"opsbot removed the message {where}")]
        blocks = body.get("blocks") if isinstance(body.get("blocks"), list) else []
        post = Post(text=str(body.get("text", "")), blocks=blocks, channel=origin.channel)
        if body.get("replace_original") and (origin.text or origin.blocks):  # same message, same visibility
            self._forget_buttons(origin.channel, origin.ts, origin)
            post.ts, post.thread_ts, post.ephemeral, post.updated = origin.ts, origin.thread_ts, origin.ephemeral, True
        if "response_type" in body or not post.updated:  # a new response_url message is ephemeral by default
            post.ephemeral = body.get("response_type") != "in_channel"
        return [post]

    def _show(self, posts: list[Post], turn: list[_Target]) -> None:
        """Write posts, numbering their buttons after those already shown this turn."""
        channel_names = {COMMAND_CHANNEL: COMMAND_CHANNEL_NAME}
        names = {**self.roster, BOT_USER_ID: "opsbot"}
        for post in posts:
            text, buttons = render_post(post, names, self.style, len(turn) + 1, channel_names, home=DM_CHANNEL)
            turn.extend(_Target(b, post) for b in buttons)
            self.write(text if post.note else f"\n{text}")

    def _next_ts(self) -> str:
        """A Slack timestamp for a message you send, always later than the previous one."""
        self._last_ts = max(time.time(), self._last_ts + 0.000001)
        return f"{self._last_ts:.6f}"
