"""Slack-side commands: shell, serve, manifest, channels, feedback."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable, Iterator
from functools import partial
from typing import TYPE_CHECKING, Any

import click

from bot.cli.base import _open, _open_store, handle_errors, load_settings, main, refuse_blank, require_index, typed
from bot.cli.deploys import login
from bot.errors import OpsbotError

if TYPE_CHECKING:
    from urllib.parse import SplitResult

    from bot.runtime import Runtime

log = logging.getLogger(__name__)


@main.command()
@click.option(
    "--user", metavar="NAME", default=None, help="Act as this roster member: a name or Slack id from experts.yaml."
)
@click.pass_context
@handle_errors
def shell(ctx: click.Context, user: str | None) -> None:
    """Chat with opsbot in the terminal, through the same handlers as Slack.

    Plain text is a direct message to opsbot, slash commands such as /ask work as in Slack, and
    buttons are numbered: type the number to press one. You act as the first roster member
    unless --user says otherwise; /help lists the rest.

    \b
    Example:
      opsbot shell
      opsbot shell --user U04C2RN8VD
      echo "pgbouncer too many clients" | opsbot shell
    """
    from bot.runtime import Runtime
    from bot.shell.repl import Shell

    refuse_blank(ctx)
    if sys.stdin is None:  # started with stdin closed (<&-): there is nothing to read questions from
        raise OpsbotError(
            "standard input is closed: run `opsbot shell` in a terminal, or pipe questions into it "
            '(echo "QUESTION" | opsbot shell).'
        )
    settings = load_settings(ctx)
    root = logging.getLogger()
    level = root.level
    if settings.log_level != "DEBUG":
        root.setLevel(logging.WARNING)  # INFO lines would interleave with the conversation
    store, encoder = _open(settings, create=False)  # a shell in the wrong folder makes no empty database
    # /user acts as anyone on the roster: what the shell decides is audited as the shell's, with who ran it
    store.audit_via = f"opsbot shell ({login()})"
    runtime = Runtime(settings, encoder=encoder, store=store)
    try:
        require_index(store, encoder)
        interactive = sys.stdin.isatty()
        with Shell(runtime, write=click.echo, user=user, style=click.style, echo=not interactive) as chat:
            runtime.start_loading()  # the prompt appears at once; the first answer waits for the model
            chat.run(_typed_lines(chat, interactive))
        if chat.unfinished:  # left with Ctrl-C while opsbot still worked: what was cut off ends with the process,
            logging.disable(logging.CRITICAL)  # as the shell said, not with a traceback per part
    finally:
        runtime.close()  # after the loader: closing the store under it would crash
        root.setLevel(level)


def _typed_lines(chat: Any, interactive: bool) -> Iterator[str]:
    """Lines from stdin, with line editing and a prompt naming who you act as when it is a terminal."""
    if interactive:
        try:
            import readline  # noqa: F401 - gives input() history and line editing
        except ImportError:  # not on every platform
            pass
    while True:
        try:
            # Bytes that are not UTF-8 arrive as lone surrogates, which nothing downstream can store or send: as "?".
            yield input(chat.prompt if interactive else "").encode("utf-8", "replace").decode("utf-8")
        except EOFError:
            if interactive:
                click.echo()
            return
        except KeyboardInterrupt:  # Ctrl-C clears the line, as in a shell; Ctrl-D leaves
            click.echo()


@main.command()
@click.option("--port", type=click.IntRange(1, 65535), default=None, help="HTTP port (default $PORT, else 3000).")
@click.option("--host", default="0.0.0.0", show_default=True, help="HTTP address to listen on.")
@click.option(
    "--hooks-port",
    type=click.IntRange(1, 65535),
    default=None,
    help=(
        "Socket Mode: also serve /hooks/deploy, /hooks/alertmanager and /healthz (only those) on this port, for "
        "CI/CD deploy events and Alertmanager's notifications."
    ),
)
@click.pass_context
@handle_errors
def serve(ctx: click.Context, port: int | None, host: str, hooks_port: int | None) -> None:
    """Run the Slack app: Socket Mode when SLACK_APP_TOKEN is set, else HTTP on /slack/events.

    The process acknowledges requests at once; the model and the index load in the background.
    SIGTERM or Ctrl-C stops it in order: no new requests, the work in flight finishes (up to
    OPSBOT_STOP_GRACE_S seconds, default 20), and what is not posted yet waits in the outbox.
    Over HTTP, CI/CD deploy events arrive on /hooks/deploy (set OPSBOT_HOOK_SECRET) and Alertmanager's
    notifications on /hooks/alertmanager (set OPSBOT_ALERTMANAGER_TOKEN); in Socket Mode, give
    --hooks-port to listen for them.

    \b
    Example:
      SLACK_BOT_TOKEN=xoxb-... SLACK_SIGNING_SECRET=... opsbot serve --port 3000
      SLACK_BOT_TOKEN=xoxb-... SLACK_APP_TOKEN=xapp-... opsbot serve --hooks-port 3000
    """
    from bot.runtime import Runtime
    from bot.slack import jobs
    from bot.slack.app import create_app, create_client, verify_bot_token
    from bot.slack.serve import (
        HttpServer,
        StopSignals,
        close_socket_mode,
        connect_socket_mode,
        exit_now,
        socket_mode_handler,
        stop_serving,
    )

    settings = load_settings(ctx)
    missing = []
    if not settings.slack_bot_token:
        missing.append("SLACK_BOT_TOKEN (the bot token, xoxb-...; Slack app > OAuth & Permissions)")
    if not settings.slack_app_token and not settings.slack_signing_secret:
        missing.append("SLACK_SIGNING_SECRET (Slack app > Basic Information), or SLACK_APP_TOKEN for Socket Mode")
    if missing:
        raise OpsbotError(
            "cannot start the Slack app without " + " and ".join(missing) + ". Without a workspace, try `opsbot shell`."
        )
    refuse_blank(ctx)
    if settings.slack_app_token and port:
        raise OpsbotError(
            "--port is for HTTP installs; in Socket Mode (SLACK_APP_TOKEN is set) Slack needs no port: "
            "give --hooks-port to serve deploy events, or leave --port out."
        )
    if settings.slack_app_token and typed(ctx, "host") and not hooks_port:
        raise OpsbotError("in Socket Mode --host only applies to --hooks-port: give --hooks-port, or leave --host out.")
    if not settings.slack_app_token and hooks_port:
        raise OpsbotError(
            "--hooks-port is for Socket Mode (set SLACK_APP_TOKEN); over HTTP, /hooks/deploy is served on --port "
            "next to /slack/events: leave --hooks-port out."
        )
    if hooks_port:
        _check_can_listen(host, hooks_port, "--hooks-port")
    elif not settings.slack_app_token:
        _check_can_listen(host, port or settings.port, "--port" if port else "PORT")
    with StopSignals() as signals:  # from here on SIGTERM and SIGINT stop in order, once started
        runtime = Runtime(settings)
        client = create_client(runtime)
        # before serving, not inside the first request; over HTTP a Slack that cannot be reached does not stop the
        # hooks (CI events, alerts) and the outbox from working
        auth = verify_bot_token(client, unreachable_ok=not settings.slack_app_token)
        runtime.start_loading()
        app = create_app(runtime, client=client, auth=auth)
        # Deploys an earlier process left running are reported, never re-run; pending ones expire on time.
        jobs.report_interrupted(runtime)
        hooks_served = bool(settings.hook_secret) and (not settings.slack_app_token or bool(hooks_port))
        _warn_unheard_reports(runtime, hooks_served)
        background = jobs.start(runtime, app.web)
        app.alerts.resume()  # alert groups recorded before a stop get their briefing
        listeners: list[Callable[[float], bool]] = []  # each stops taking requests, given the time left
        try:
            if settings.slack_app_token:
                if hooks_port:
                    if not settings.hook_secret and not settings.alertmanager_token:
                        log.warning(
                            "--hooks-port given but neither OPSBOT_HOOK_SECRET nor OPSBOT_ALERTMANAGER_TOKEN is set: "
                            "deploy events and alerts will be refused"
                        )
                    hooks = HttpServer(app, runtime, host=host, port=hooks_port, slack_events=False).start()
                    listeners.append(hooks.stop)
                    paths = "/hooks/deploy,/hooks/alertmanager"
                    log.info("hooks listening host=%s port=%d paths=%s", host, hooks.port, paths)
                log.info("starting in Socket Mode api=%s", settings.slack_api_url)
                handler = socket_mode_handler(app, runtime)
                connect_socket_mode(handler)
                listeners.insert(0, partial(close_socket_mode, handler))
            else:
                server = HttpServer(app, runtime, host=host, port=port or settings.port).start()
                listeners.append(server.stop)
                log.info("listening host=%s port=%d path=/slack/events", host, server.port)
            reason = signals.wait()
        except BaseException:  # a start that failed: what did start stops, and the error is reported
            for stop in listeners:
                stop(0)
            app.web.stop()  # what is not delivered yet stays in the outbox for the next start
            background.stop(0)
            runtime.stopping()  # the model may still load as the process ends: that is no fault of its own
            raise
        stopped = stop_serving(app, runtime, background, listeners, reason, settings.stop_grace_s)
    if not stopped.clean:  # threads still at work would hold up the interpreter's exit: leave without them
        exit_now(0)


def _warn_unheard_reports(runtime: Runtime, hooks_served: bool) -> None:
    """Say so when services wait for their pipeline's report (``await_report``) that this process cannot hear."""
    deploys = runtime.deploys()
    waiting = sorted(
        name for name in deploys.services if any(deploys.awaits_report(kind, name) for kind in ("deploy", "rollback"))
    )
    if waiting and not hooks_served:
        log.warning(
            "services=%s wait for their pipeline's report (await_report), but /hooks/deploy is not served (set "
            "OPSBOT_HOOK_SECRET; in Socket Mode give --hooks-port): their deploys hold the lock until "
            "settings.stale_ci_hours pass",
            ",".join(waiting),
        )


def _check_can_listen(host: str, port: int, option: str) -> None:
    """Fail before loading anything when the address is taken or unknown, not with a traceback later."""
    import socket

    try:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:  # bound as the HTTP server binds
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((host, port))
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise OpsbotError(
            f"cannot listen on {host}:{port} ({reason}): choose another {option}, stop what uses it, or check --host."
        ) from None


@main.command()
@click.option("--url", default=None, help="The public https:// base address of `opsbot serve` (HTTP installs).")
@click.option("--socket-mode", is_flag=True, help="For Socket Mode installs (no public URL needed).")
@click.option("--name", default="opsbot", show_default=True, help="The app's name in Slack.")
@click.pass_context
@handle_errors
def manifest(ctx: click.Context, url: str | None, socket_mode: bool, name: str) -> None:
    """Print the Slack app manifest (YAML) to create the app in a workspace.

    An HTTP install needs --url, where Slack reaches `opsbot serve`; a Socket Mode install needs none.

    Alertmanager is not part of the manifest: point its webhook_configs at URL/hooks/alertmanager (or the
    --hooks-port of `opsbot serve` in Socket Mode), with OPSBOT_ALERTMANAGER_TOKEN as the bearer credentials.

    \b
    Example:
      opsbot manifest --socket-mode > manifest.yaml
      opsbot manifest --url https://opsbot.example.com
    """
    from urllib.parse import urlsplit

    from bot.slack.ids import EVENTS_PATH
    from bot.slack.manifest import manifest_yaml

    refuse_blank(ctx)
    if socket_mode and typed(ctx, "url"):
        raise OpsbotError(
            "--url is for HTTP installs; Socket Mode needs no public URL: leave out --url or --socket-mode."
        )
    if not socket_mode:
        if url is None:
            raise OpsbotError(
                "give --url https://YOUR-HOST, the public address where Slack reaches `opsbot serve` (the manifest "
                "points Slack's requests there), or --socket-mode for an install that needs no public address."
            )
        try:
            parts = urlsplit(url)
            parts.port  # noqa: B018 - read to check it: a port past 65535, or not a number, raises
        except ValueError:  # an unclosed [ of an IPv6 address, a port no address can have
            parts = urlsplit("")
        if parts.scheme != "https" or not parts.netloc or any(c.isspace() for c in url):
            raise OpsbotError(
                f"--url {url!r} must be the https:// address of `opsbot serve`, e.g. https://opsbot.example.com."
            )
        if parts.path.rstrip("/").endswith(EVENTS_PATH):
            raise OpsbotError(f"--url is the base address; {EVENTS_PATH} is added to it: leave {EVENTS_PATH} out.")
        extra = _url_extra(url, parts)
        if extra:
            raise OpsbotError(
                f"--url must be the plain base address of `opsbot serve`, e.g. https://opsbot.example.com: leave out "
                f"{extra}; {EVENTS_PATH} is added after the address, so Slack would post where opsbot does not answer."
            )
    click.echo(manifest_yaml(name=name, base_url=url or "", socket_mode=socket_mode))


def _url_extra(url: str, parts: SplitResult) -> str:
    """What a base URL must not have, as said to the user: a query, a fragment, user info (never its text)."""
    if "@" in parts.netloc:
        return "the user info (the part before @)"
    if "?" in url:
        return f"the query (?{parts.query})"
    if "#" in url:
        return f"the fragment (#{parts.fragment})"
    return ""


@main.group()
def channels() -> None:
    """Where opsbot answers without a mention: `all` questions, or `mentions` only (the default).

    \b
    Example:
      opsbot channels list
      opsbot channels set C04ALERTS1 all
    """


@channels.command(name="list")
@click.pass_context
@handle_errors
def channels_list(ctx: click.Context) -> None:
    """List channels with a setting.

    \b
    Example:
      opsbot channels list
    """
    store = _open_store(ctx)
    try:
        modes = store.channel_answer_modes()
    finally:
        store.close()
    if not modes:
        click.echo("No channel settings: opsbot answers mentions and DMs everywhere.")
    for channel, mode in sorted(modes.items()):
        click.echo(f"{channel}  {mode}")


@channels.command(name="set")
@click.argument("channel")
@click.argument("mode", type=click.Choice(["all", "mentions"]))
@click.pass_context
@handle_errors
def channels_set(ctx: click.Context, channel: str, mode: str) -> None:
    """Make opsbot answer all questions in CHANNEL, or only mentions.

    \b
    Example:
      opsbot channels set C04ALERTS1 all
    """
    from bot.record_files import channel_id_problem, parse_channels

    if problem := channel_id_problem(channel):
        raise OpsbotError(f"{problem}.")
    store = _open_store(ctx)
    try:
        store.set_channel_answer_mode(channel, mode, "cli")
    finally:
        store.close()
    click.echo(f"{channel}: {'answers questions without a mention' if mode == 'all' else 'answers mentions only'}.")
    # The knowledge directory's channels.yaml is applied by every `opsbot index`: say when it will undo this.
    path = load_settings(ctx).knowledge_dir / "channels.yaml"
    if path.is_file():
        in_file = parse_channels("channels.yaml", path.read_text(encoding="utf-8", errors="replace"))[0].get(channel)
        if in_file and in_file != mode:
            click.echo(
                f"Note: {path} sets {channel} to `{in_file}`, and the next `opsbot index` applies it again; "
                "change the file to keep this setting.",
                err=True,
            )


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print the votes as JSON.")
@click.pass_context
@handle_errors
def feedback(ctx: click.Context, as_json: bool) -> None:
    """List the 👍/👎 votes people gave answers in Slack.

    \b
    Example:
      opsbot feedback
      opsbot feedback --json
    """
    store = _open_store(ctx)
    try:
        rows = store.feedback_rows()
        names = {e.id: e.name for e in store.load_experts()}
    finally:
        store.close()
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo("No feedback yet.")
    for row in rows:
        vote = "👍" if row["vote"] > 0 else "👎"
        who = f"{names[row['user']]} ({row['user']})" if row["user"] in names else row["user"]  # the roster's name
        click.echo(f"{row['at']}  {vote}  {who}  {row['path']}  <- {row['query']!r}")
