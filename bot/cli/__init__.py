"""The ``opsbot`` command line: a thin layer over the domain modules, one module per group of commands."""

from bot.cli import alerts, deploys, incidents, knowledge, measure, notify, people, slack  # noqa: F401 - they register the commands
from bot.cli.base import main

__all__ = ["main"]
