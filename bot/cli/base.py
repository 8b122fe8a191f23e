"""The ``opsbot`` group and what every command shares: settings, error handling, opening the store.

The command line is the only place that turns errors into exit codes.
"""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable
from typing import Any

import click

from bot.config import Settings
from bot.errors import OpsbotError
from bot.logs import configure_logging

log = logging.getLogger(__name__)


def handle_errors(func: Callable[..., Any]) -> Callable[..., Any]:
    """Print an OpsbotError as a clear message and exit 1; never a traceback."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except OpsbotError as exc:
            click.echo(f"Error: {exc}", err=True)
            sys.exit(1)

    return wrapper


def load_settings(ctx: click.Context, **overrides: Any) -> Settings:
    """Settings are read when a command runs, so `--help` works even while they are broken."""
    ctx.ensure_object(dict)
    if "settings" not in ctx.obj:
        settings = Settings.from_env()
        configure_logging(settings.log_level)
        ctx.obj["settings"] = settings
    return ctx.obj["settings"].with_overrides(**overrides)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="opsbot")
@click.pass_context
@handle_errors
def main(ctx: click.Context) -> None:
    """opsbot: answers from your runbooks and incidents, in Slack and here.

    \b
    Example:
      opsbot index knowledge/
      opsbot ask "pgbouncer says too many clients"
    """
    ctx.ensure_object(dict)


def _open(settings: Settings):  # noqa: ANN202
    from bot.encoder import make_encoder
    from bot.store import Store

    return Store(settings.db_path), make_encoder(settings)


def _open_store(ctx: click.Context):  # noqa: ANN202
    from bot.store import Store

    return Store(load_settings(ctx).db_path)
