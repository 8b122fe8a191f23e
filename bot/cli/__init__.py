"""The ``opsbot`` command line: a thin layer over the domain modules, one module per group of commands."""

from bot.cli import knowledge_commands, ops_commands, slack_commands  # noqa: F401 - they register the commands
from bot.cli.base import main

__all__ = ["main"]
