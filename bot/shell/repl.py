"""The local terminal chat: what you type goes through the same Bolt handlers as Slack, against a fake Slack.

Plain text becomes a direct message to opsbot, `/ask ...` a slash command, a number a button click; `@Daniel`
or `@U04C2RN8VD` becomes the mention Slack would send. The Slack side (payloads, signing, ``app.dispatch``,
reading back the fake Web API) is ``bot.slack.local.shell_dispatch``. This module reads lines and writes what came
back as terminal text.

Buttons are numbered once for the session, in the order they appear: a number means the same button for as long
as its message is on screen, so a button of an earlier message can still be pressed. When opsbot updates a
message, its buttons that are still there keep their numbers; a removed message's buttons are gone.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from bot.errors import InvalidRequest
from bot.runtime import Runtime
from bot.shell.mentions import find_person, resolve_mentions, roster_examples
from bot.shell.render import Button, Post, Style, plain, render_post, terminal_safe
from bot.slack.local.fake_methods import BOT_USER_ID
from bot.slack.local.shell_dispatch import (
    COMMAND_CHANNEL,
    COMMAND_CHANNEL_NAME,
    DM_CHANNEL,
    Delivery,
    LocalSlack,
)
from bot.slack.manifest import SLASH_COMMANDS

log = logging.getLogger(__name__)
DEFAULT_USER = "USHELL001"  # who you are when the roster is empty
REPLY_TIMEOUT_S = 60.0  # the first answer may wait for the model to load
LEAVING_TIMEOUT_S = 60.0  # on leaving, how long the shell waits for what opsbot still does (the model may be loading)
LOADING_NOTICE_S = 1.0
QUIET_S = 0.3  # after the handlers finish, how long nothing new must arrive before the prompt returns
POLL_S = 0.02


# -- roster ------------------------------------------------------------------------------------------------


def check_user(user: str, roster: Mapping[str, str]) -> str:
    """The roster id meant by ``user`` (an id or a name, with or without @, matching one person); InvalidRequest
    otherwise."""
    return find_person(user, roster)


# -- the session -------------------------------------------------------------------------------------------


@dataclass
class _Target:
    """A pressable button and the post it is on."""

    button: Button
    post: Post


def _on(post: Post, width: int = 40) -> str:
    """Which message a button is on, by the start of its text: " (on Who could help with: db down)"."""
    first = post.text.strip().split("\n", 1)[0]
    return f" (on {first[:width]}{'…' if len(first) > width else ''})" if first else ""


def _same(a: Button, b: Button) -> bool:
    """The same button of a message shown again after an update (it keeps its number)."""
    return (a.action_id, a.value, a.url) == (b.action_id, b.value, b.url)


class Shell:
    """A terminal conversation with opsbot through the real Bolt app, against a local fake Slack Web API.

    ``slack`` (a ``LocalSlack``) replaces the runtime's settings by a copy with a per-session random
    signing secret and the fake's token and URL, so no real Slack credential is ever used.
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
        self.write = lambda text: write(terminal_safe(text))  # a payload's escape sequences never reach the terminal
        self.style = style
        self.echo = echo  # repeat each line after the prompt, for piped input and transcripts
        self.reply_timeout = reply_timeout
        self.roster = {e.id: e.name for e in runtime.store.load_experts()}  # in roster order
        self.user = check_user(user, self.roster) if user else next(iter(self.roster), DEFAULT_USER)
        self.slack = LocalSlack(runtime)
        self._buttons: dict[int, _Target] = {}  # the buttons on screen, by the number they are shown with
        self._gone: set[int] = set()  # numbers of buttons whose message was updated or removed
        self._numbers = itertools.count(1)
        self._thread = ""  # ts of your last direct message, for /reply
        self.unfinished = False  # left while opsbot was still at work (Ctrl-C while leaving, or too slow)
        self._closed = False

    # -- lifecycle ---------------------------------------------------------------------------------------

    def start(self) -> Shell:
        """Start the fake Slack Web API and the Bolt app."""
        self.slack.start()
        return self

    def close(self) -> None:
        """Let what opsbot still does for the lines typed finish and show it, then stop the handlers and the fake
        API: an answer or an incident's briefing cut off would be lost, its parts failing on a closed database.
        A second call does nothing (its stopped delivery would wait out the minute for posts another session
        left in the outbox)."""
        if self._closed:
            return
        self._closed = True
        if not self.slack.wait_idle(0.0):
            waiting = "(opsbot is still working on what you typed: leaving once it is done; Ctrl-C leaves now)"
            self.write(self.style(waiting, dim=True))
            deadline = time.monotonic() + LEAVING_TIMEOUT_S
            try:
                while not self.slack.wait_idle(POLL_S) and time.monotonic() < deadline:
                    self._show(self.slack.new_deliveries())
            except KeyboardInterrupt:
                pass
            self._show(self.slack.new_deliveries())
            self.unfinished = not self.slack.wait_idle(0.0)
            if self.unfinished:
                self.write(self.style("(left before opsbot was done: what it had not shown yet is dropped)", dim=True))
        self.slack.close()

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
        where = self.runtime.settings.db_path
        self.write(f"What you do here is kept in {where}, as from Slack: incidents, deploys and votes count.")
        self.show_pending()
        for line in lines:
            try:
                if not self.handle(line):
                    break
            except KeyboardInterrupt:
                self.write(
                    self.style("(interrupted; an answer still on its way shows up after your next line)", dim=True)
                )
            except Exception as exc:  # a bug in one line must not end the session, nor print a traceback
                log.debug("shell line failed", exc_info=True)
                self.write(self.style(f"(that line failed: {one_line(exc)}; the shell goes on)", dim=True))

    def show_pending(self) -> None:
        """Deploy requests an earlier session left waiting for approval, posted again with their buttons: their
        messages went with that session's stand-in Slack, and each still holds its service's lock."""
        started = time.monotonic()
        pending = self.runtime.deploys().announce_pending_again((COMMAND_CHANNEL, DM_CHANNEL))
        if pending:
            waiting = f"({len(pending)} deploy request(s) from an earlier session wait for approval:)"
            self.write(self.style(waiting, dim=True))
            self._await_replies(started)

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
        if line.isascii() and line.isdigit():  # "²" is a digit to isdigit, and no number to int
            self.press(int(line))
        elif word == "/press" and rest.isascii() and rest.isdigit():
            self.press(int(rest))
        elif word in ("/press", "/buttons"):
            self.write(("" if word == "/buttons" else "Usage: /press N, a button's number. ") + self.buttons_text())
        elif word == "/help":
            self.write(self.help_text())
        elif word == "/user":
            self.switch_user(rest)
        elif word == "/reply":
            self.reply(rest)
        elif word == "/alert":
            self.alert(rest)
        elif word.startswith("/") and "/" not in word[1:]:  # "/var/log/... full" is a path, not a command
            self.command(word, rest)
        else:
            self.message(line)
        return True

    def help_text(self) -> str:
        """What can be typed, and who you act as."""
        commands = "\n".join(
            f"  {usage:<34} {what}" if len(usage) <= 34 else f"  {usage}\n  {'':<34} {what}"
            for usage, what in ((f"{c} {hint}", what) for c, what, hint in SLASH_COMMANDS)
        )
        who = f"{self.roster[self.user]} ({self.user})" if self.user in self.roster else self.user
        return (
            "Type a question, or paste an alert or a log line: it goes to opsbot as a direct message.\n"
            f"Slack commands (run in #{COMMAND_CHANNEL_NAME}, answered as in Slack):\n{commands}\n"
            "Mention people as @Daniel (first name), @Daniel Okafor (full name) or @U04C2RN8VD (Slack id), as in\n"
            "experts.yaml; <@U04C2RN8VD> works too. @here and @channel are Slack's.\n"
            "Buttons are numbered once, in the order they appear: type a number (or /press N) to press that button,\n"
            "on the newest message or any earlier one still on screen. An updated message keeps its numbers.\n"
            "Shell commands:\n"
            f"  {'/reply TEXT':<34} follow up in the thread of your last message\n"
            f"  {'/alert FILE':<34} replay an Alertmanager webhook payload (JSON) as if it arrived\n"
            f"  {'/buttons':<34} list the buttons you can press now\n"
            f"  {'/user [NAME or ID]':<34} act as another roster member (now: {who})\n"
            f"  {'/help':<34} this text\n"
            f"  {'/quit':<34} leave (or Ctrl-D)"
        )

    def switch_user(self, user: str) -> None:
        """Act as another roster member, or say who you are and who you could be."""
        if not user:
            me = f"{self.roster[self.user]} ({self.user})" if self.user in self.roster else self.user
            roster = f"The roster: {roster_examples(self.roster)}." if self.roster else "The roster is empty."
            self.write(f"You are {me}. {roster} Switch with /user NAME or /user ID.")
            return
        try:
            self.user = check_user(user, self.roster)
        except InvalidRequest as exc:
            self.write(f"Sorry: {exc}")
            return
        self.write(f"You are now {self.roster[self.user]} ({self.user}).")

    # -- what you do in Slack ---------------------------------------------------------------------------------

    def message(self, text: str, thread_ts: str = "") -> None:
        """Send a direct message to opsbot (in a thread when ``thread_ts`` is given)."""
        text = self._mentions(text)
        if not text:
            return
        started = time.monotonic()
        ts, acks = self.slack.send_message(self.user, text, thread_ts)
        if not thread_ts:
            self._thread = ts
        self._turn(started, acks)

    def reply(self, text: str) -> None:
        """Follow up in the thread of your last direct message."""
        if not self._thread:
            # /ask answers only you, with no thread to follow up in, as in Slack: say what starts one
            self.write(
                "Nothing to follow up on yet: /reply follows a question typed as a message (a line without a "
                "leading /), not /ask, whose answer has no thread."
            )
        elif not text:
            self.write("Usage: /reply TEXT, a follow-up in the thread of your last question.")
        else:
            self.message(text, thread_ts=self._thread)

    def alert(self, path: str) -> None:
        """Replay an Alertmanager webhook payload file: its alert group is posted and briefed as in Slack."""
        if not path:
            self.write("Usage: /alert FILE, a JSON payload as Alertmanager's webhook sends it.")
            return
        try:
            body = Path(path).expanduser().read_bytes()
        except OSError as exc:
            self.write(f"Sorry: cannot read {path} ({exc.strerror or exc}).")
            return
        started = time.monotonic()
        self._turn(started, self.slack.send_alerts(body))

    def command(self, name: str, text: str) -> None:
        """Run a slash command as Slack would send it, when the app declares it."""
        known = [c for c, _, _ in SLASH_COMMANDS]
        if name not in known:
            self.write(
                f"Unknown command {name}. opsbot's Slack commands: {', '.join(known)}; "
                "the shell's own: /help, /user, /reply, /alert, /press, /buttons, /quit."
            )
            return
        resolved = self._mentions(text) if text else ""
        if text and not resolved:
            return
        started = time.monotonic()
        user_name = self.roster.get(self.user, self.user).lower()
        self._turn(started, self.slack.send_command(self.user, user_name, name, resolved))

    def _mentions(self, text: str) -> str:
        """``text`` with typed @Name and @ID as Slack's <@ID> mentions; "" (after saying why) when a name is
        nobody on the roster or several people, so nothing is sent."""
        try:
            return resolve_mentions(text, self.roster, (BOT_USER_ID, "opsbot"))
        except InvalidRequest as exc:
            self.write(f"Sorry: {exc} Nothing was sent.")
            return ""

    def press(self, number: int) -> None:
        """Click button ``number``, of any message still on screen."""
        target = self._buttons.get(number)
        if target is None:
            self.write(self._no_button(number))
            return
        started = time.monotonic()
        self.write(self.style(f"(you pressed [{number}] {target.button.label})", dim=True))
        self._turn(started, self.slack.click(self.user, target.button, target.post))

    def _no_button(self, number: int) -> str:
        """Why ``number`` cannot be pressed, and what can be."""
        on_screen = self.buttons_text()
        if number in self._gone:
            return f"Button [{number}] is gone: opsbot updated or removed its message. {on_screen}"
        if not self._buttons and not self._gone:
            return "There is no button to press: ask a question first."
        return f"There is no button [{number}]. {on_screen}"

    def buttons_text(self) -> str:
        """The buttons that can be pressed now, by number."""
        if not self._buttons:
            return "No button is on screen now."
        shown = ", ".join(f"[{n}] {t.button.label}{_on(t.post)}" for n, t in sorted(self._buttons.items()))
        return f"Buttons on screen: {shown}."

    # -- showing what came back ---------------------------------------------------------------------------

    def _turn(self, started: float, acks: list[Delivery]) -> None:
        """Show a request's acknowledgement, then what the handlers send until they are done."""
        self._show(acks)
        self._await_replies(started)

    def _show_late(self) -> None:
        """Show what arrived after the last turn ended (a slow answer, a background job's update)."""
        self._show(self.slack.new_deliveries())

    def _await_replies(self, started: float) -> None:
        """Show posts as they arrive, until the handlers are done and nothing new came for QUIET_S."""
        last_new = time.monotonic()
        noticed = False
        while True:
            idle = self.slack.wait_idle(POLL_S)
            deliveries = self.slack.new_deliveries()
            now = time.monotonic()
            if deliveries:
                self._show(deliveries)
                last_new = now
            if idle and now - last_new >= QUIET_S:
                return
            if not idle and not noticed and now - started > LOADING_NOTICE_S and not self.runtime.ready:
                self.write(self.style("(loading the model…)", dim=True))
                noticed = True
            if now - started > self.reply_timeout:
                self.write(self.style("(no answer yet; it shows up after your next line)", dim=True))
                return

    def _forget_buttons(self, gone: Post) -> dict[int, Button]:
        """Take the buttons of ``gone`` (the same post, or the message with its channel and ts) off the screen;
        returned by number, so an update of the message can show the same buttons under the same numbers."""
        taken = {
            n: t.button
            for n, t in self._buttons.items()
            if t.post is gone or (gone.ts and (t.post.channel, t.post.ts) == (gone.channel, gone.ts))
        }
        for n in taken:
            del self._buttons[n]
        self._gone.update(taken)
        return taken

    def _show(self, deliveries: list[Delivery]) -> None:
        """Write posts; a message's buttons get the next numbers, or keep theirs when it is an update."""
        names = {**self.roster, BOT_USER_ID: "opsbot", **self._channel_names()}
        for delivery in deliveries:
            post = delivery.post
            before = self._forget_buttons(delivery.replaces) if delivery.replaces is not None else {}

            def number(button: Button, post: Post = post, before: dict[int, Button] = before) -> int:
                """The button's number: kept from the message it updates, else the next one; now pressable."""
                n = next((k for k, b in before.items() if _same(b, button)), None)
                if n is None:
                    n = next(self._numbers)
                else:
                    del before[n]
                    self._gone.discard(n)
                self._buttons[n] = _Target(button, post)
                return n

            text, _ = render_post(post, names, self.style, channel_names=names, home=DM_CHANNEL, number=number)
            self.write(text if post.note else f"\n{text}")

    def _channel_names(self) -> dict[str, str]:
        """Channel ids to names: the shell's own, those opsbot created (incident channels), and services.yaml's.
        Slack knows the configured channels' names; the local workspace has only their ids, so it names each
        for what services.yaml sends there."""
        return {**self._configured_channels(), **self.slack.fake.channel_names(), COMMAND_CHANNEL: COMMAND_CHANNEL_NAME}

    def _configured_channels(self) -> dict[str, str]:
        """services.yaml's channel ids, named for what is posted there: deploys, alerts, or a service's name."""
        deploys, routing = self.runtime.deploys().settings, self.runtime.alerts().routing  # read from the store
        names = dict.fromkeys(filter(None, [routing.default_channel]), "alerts")
        names.update({channel: service for service, channel in routing.channels.items()})
        deploy_channels = [deploys.digest.channel if deploys.digest else "", deploys.channel]
        names.update(dict.fromkeys(filter(None, deploy_channels), "deploys"))
        return names


def one_line(exc: BaseException) -> str:
    """An exception as one short line: its kind and its message, newlines folded."""
    return " ".join(f"{type(exc).__name__}: {exc}".split())[:300]
