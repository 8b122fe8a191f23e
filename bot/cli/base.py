"""The ``opsbot`` group and what every command shares: settings, error handling, opening the store.

The command line is the only place that turns errors into exit codes.
"""

from __future__ import annotations

import functools
import logging
import sqlite3
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from bot.config import Settings
from bot.errors import OpsbotError
from bot.logs import configure_logging

if TYPE_CHECKING:
    from bot.store import Store

log = logging.getLogger(__name__)


def handle_errors(func: Callable[..., Any]) -> Callable[..., Any]:
    """Print an OpsbotError, or the database's write lock held too long by another process, as a clear message and
    exit 1; never a traceback."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except OpsbotError as exc:
            click.echo(f"Error: {exc}", err=True)
            sys.exit(1)
        except sqlite3.OperationalError as exc:
            from bot.store.base import is_busy

            if not is_busy(exc):
                raise
            click.echo(
                "Error: another process (an opsbot command or serve, a sqlite3 session) holds the database's write "
                "lock, so this command stopped and its last change was not saved; try again once that process is "
                "done.",
                err=True,
            )
            sys.exit(1)

    return wrapper


def load_settings(ctx: click.Context, *, one_shot: bool = False, **overrides: Any) -> Settings:
    """Settings are read when a command runs, so `--help` works even while they are broken.

    ``one_shot``: a command that prints its answer and ends (`ask`, `experts`) logs warnings and errors only,
    unless OPSBOT_LOG_LEVEL says otherwise: "model loaded" lines on the terminal are noise around an answer.
    """
    ctx.ensure_object(dict)
    if "settings" not in ctx.obj:
        settings = Settings.from_env()
        quiet = one_shot and not settings.log_level_given and settings.log_level == "INFO"
        configure_logging("WARNING" if quiet else settings.log_level)
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
    for arg in sys.argv[1:]:  # bytes that are not UTF-8 (a latin-1 terminal, a path from an unzip) reach no command
        if any("\udc80" <= c <= "\udcff" for c in arg):
            shown = arg.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
            raise OpsbotError(
                f"the argument '{shown}' is not UTF-8 text; type it again in UTF-8 (set your terminal to UTF-8), "
                "or rename the folder or file it names."
            )


def typed(ctx: click.Context, name: str) -> bool:
    """Whether the option ``name`` (its parameter name) was given on the command line, not left at its default."""
    return ctx.get_parameter_source(name) == click.core.ParameterSource.COMMANDLINE


def refuse_blank(ctx: click.Context, *names: str) -> None:
    """An option given as "" (or spaces) would act as if left out: say so instead (all options unless named)."""
    for param in ctx.command.params:
        if not isinstance(param, click.Option) or (names and param.name not in names):
            continue
        value = ctx.params.get(param.name)
        if any(isinstance(v, str) and not v.strip() for v in (value if isinstance(value, tuple) else (value,))):
            flag = max(param.opts, key=len)
            # a CI variable that is empty in this job (GitLab's $CI_ENVIRONMENT_NAME without `environment:`)
            fix = (
                "give a value (from a CI variable: check it is set in this job)"
                if param.required
                else ("give a value, or leave the option out")
            )
            raise OpsbotError(f"{flag} is empty: {fix}.")


def knowledge_folder(ctx: click.Context, param: click.Parameter, value: str | None) -> Path | None:
    """A DIRECTORY argument as a path; a blank one is refused (as a path it would be the current folder)."""
    if value is None:
        return None
    if not value.strip():
        raise click.BadParameter("is blank: pass the knowledge folder, or leave it out for $OPSBOT_KNOWLEDGE.")
    return Path(value)


def open_db(path: Path | str, source: str = "OPSBOT_DB") -> Store:
    """The store at ``path``; a file that is not an opsbot database, or that cannot be written, is one clear
    error naming ``source`` (where the path came from), not sqlite's traceback."""
    from bot.store import Store
    from bot.store.base import DatabaseUnavailable

    try:
        return Store(path)
    except DatabaseUnavailable as exc:
        raise exc.naming(source) from None


def _open(settings: Settings, create: bool = True):  # noqa: ANN202
    """The database and the encoder; ``create=False`` for a command that only reads (see ``existing``)."""
    from bot.answers.encoder import make_encoder

    return open_db(existing(settings.db_path) if not create else settings.db_path), make_encoder(settings)


def existing(path: Path | str) -> Path:
    """The database of a command that reads (or sets) what opsbot recorded: one that does not exist is refused, not
    made empty, so a command run in the wrong folder does not report that nothing ever happened."""
    if not Path(path).exists():
        raise OpsbotError(
            f"{path} does not exist: opsbot's database is made by `opsbot index`. Run this where it ran, or set "
            "OPSBOT_DB to its file."
        )
    return Path(path)


def _open_store(ctx: click.Context):  # noqa: ANN202
    return open_db(existing(load_settings(ctx).db_path))


def require_index(store: Store, encoder: Any) -> None:
    """Refuse to search an empty index, or one whose vectors another model made (every search would find nothing)."""
    if not store.counts()["chunks"]:
        raise OpsbotError("the index is empty; run `opsbot index` first.")
    indexed_with = store.get_meta("model")
    if indexed_with and indexed_with != encoder.model_id:
        raise OpsbotError(
            f"the index was built with the model {indexed_with}, and OPSBOT_MODEL now gives {encoder.model_id}: "
            "run `opsbot index` to embed the knowledge with it, or set OPSBOT_MODEL back."
        )
