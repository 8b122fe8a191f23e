"""The local terminal chat: what you type goes through the same Bolt handlers as Slack, against a fake Slack.

Plain text becomes a direct message to opsbot, `/ask ...` a slash command, a number a button click; the
Slack side (payloads, signing, ``app.dispatch``, reading back the fake Web API) is
``bot.slack.local.shell_dispatch``. This module reads lines and writes what came back as terminal text, buttons
numbered so they can be pressed.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from bot.errors import InvalidRequest
from bot.runtime import Runtime
from bot.shell.render import Button, Post, Style, plain, render_post
from bot.slack.local.fake_methods import BOT_USER_ID
from bot.slack.local.shell_dispatch import (
    COMMAND_CHANNEL,
    COMMAND_CHANNEL_NAME,
    DM_CHANNEL,
    Delivery,
    LocalSlack,
)
from bot.slack.manifest import SLASH_COMMANDS

DEFAULT_USER = "USHELL001"  # who you are when the roster is empty
REPLY_TIMEOUT_S = 60.0  # the first answer may wait for the model to load
LOADING_NOTICE_S = 1.0
QUIET_S = 0.3  # after the handlers finish, how long nothing new must arrive before the prompt returns
POLL_S = 0.02
ROSTER_HINT = 4  # how many roster members an error message suggests


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


# -- the session -------------------------------------------------------------------------------------------


@dataclass
class _Target:
    """A pressable button and the post it is on."""

    button: Button
    post: Post


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
        self.write = write
        self.style = style
        self.echo = echo  # repeat each line after the prompt, for piped input and transcripts
        self.reply_timeout = reply_timeout
        self.roster = {e.id: e.name for e in runtime.store.load_experts()}  # in roster order
        self.user = check_user(user, self.roster) if user else next(iter(self.roster), DEFAULT_USER)
        self.slack = LocalSlack(runtime)
        self._buttons: list[_Target] = []
        self._thread = ""  # ts of your last direct message, for /reply

    # -- lifecycle ---------------------------------------------------------------------------------------

    def start(self) -> Shell:
        """Start the fake Slack Web API and the Bolt app."""
        self.slack.start()
        return self

    def close(self) -> None:
        """Let running handlers finish briefly, then stop them and the fake API."""
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
        commands = "\n".join(
            f"  {usage:<34} {what}" if len(usage) <= 34 else f"  {usage}\n  {'':<34} {what}"
            for usage, what in ((f"{c} {hint}", what) for c, what, hint in SLASH_COMMANDS)
        )
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

    # -- what you do in Slack ---------------------------------------------------------------------------------

    def message(self, text: str, thread_ts: str = "") -> None:
        """Send a direct message to opsbot (in a thread when ``thread_ts`` is given)."""
        started = time.monotonic()
        ts, acks = self.slack.send_message(self.user, text, thread_ts)
        if not thread_ts:
            self._thread = ts
        self._turn(started, acks)

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
        started = time.monotonic()
        user_name = self.roster.get(self.user, self.user).lower()
        self._turn(started, self.slack.send_command(self.user, user_name, name, text))

    def press(self, number: int) -> None:
        """Click button ``number`` of the latest message that had buttons."""
        if not self._buttons:
            self.write("There is no button to press: ask a question first.")
            return
        if not 1 <= number <= len(self._buttons):
            self.write(f"There is no button [{number}]; the buttons are [1] to [{len(self._buttons)}].")
            return
        started = time.monotonic()
        target = self._buttons[number - 1]
        self.write(self.style(f"(you pressed {target.button.label})", dim=True))
        self._turn(started, self.slack.click(self.user, target.button, target.post))

    # -- showing what came back ---------------------------------------------------------------------------

    def _turn(self, started: float, acks: list[Delivery]) -> None:
        """Show a request's acknowledgement, then what the handlers send until they are done."""
        turn: list[_Target] = []
        self._show(self._posts(acks), turn)
        self._await_replies(started, turn)
        if turn:
            self._buttons = turn

    def _show_late(self) -> None:
        """Show what arrived after the last turn ended (a slow answer, a background job's update)."""
        turn: list[_Target] = []
        self._show(self._posts(self.slack.new_deliveries()), turn)
        if turn:
            self._buttons = turn

    def _await_replies(self, started: float, turn: list[_Target]) -> None:
        """Show posts as they arrive, until the handlers are done and nothing new came for QUIET_S."""
        last_new = time.monotonic()
        noticed = False
        while True:
            idle = self.slack.wait_idle(POLL_S)
            posts = self._posts(self.slack.new_deliveries())
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

    def _posts(self, deliveries: list[Delivery]) -> list[Post]:
        """The posts to show; buttons of the messages they replaced or removed can no longer be pressed."""
        for delivery in deliveries:
            if delivery.replaces is not None:
                self._forget_buttons(delivery.replaces)
        return [d.post for d in deliveries]

    def _forget_buttons(self, gone: Post) -> None:
        """Drop the buttons of ``gone``: the same post, or the message with its channel and ts."""
        self._buttons = [
            t
            for t in self._buttons
            if t.post is not gone and not (gone.ts and (t.post.channel, t.post.ts) == (gone.channel, gone.ts))
        ]

    def _show(self, posts: list[Post], turn: list[_Target]) -> None:
        """Write posts, numbering their buttons after those already shown this turn."""
        channel_names = {COMMAND_CHANNEL: COMMAND_CHANNEL_NAME}
        names = {**self.roster, BOT_USER_ID: "opsbot"}
        for post in posts:
            text, buttons = render_post(post, names, self.style, len(turn) + 1, channel_names, home=DM_CHANNEL)
            turn.extend(_Target(b, post) for b in buttons)
            self.write(text if post.note else f"\n{text}")
