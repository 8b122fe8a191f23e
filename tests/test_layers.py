"""STYLE's dependency rule, checked: Slack libraries only inside bot/slack/, click only inside bot/cli/."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import ROOT

BOT = ROOT / "bot"
ONLY_INSIDE = {"slack_bolt": BOT / "slack", "slack_sdk": BOT / "slack", "click": BOT / "cli"}


def imported_packages(path: Path) -> set[str]:
    """Top-level packages a module imports, lazy imports inside functions included."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found


def test_slack_and_click_are_imported_only_by_their_adapters() -> None:
    misplaced = sorted(
        f"{path.relative_to(ROOT)} imports {package}"
        for path in BOT.rglob("*.py")
        for package in imported_packages(path) & set(ONLY_INSIDE)
        if not path.is_relative_to(ONLY_INSIDE[package])
    )
    assert misplaced == []


def test_the_check_sees_the_adapters_own_imports() -> None:
    assert "slack_bolt" in imported_packages(BOT / "slack" / "shell_dispatch.py")
    assert "click" in imported_packages(BOT / "cli" / "slack_commands.py")
