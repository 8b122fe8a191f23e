"""The layers, checked: each arrow points down, and the adapters stay adapters.

- Slack libraries only inside bot/slack/, click only inside bot/cli/.
- Domain modules never import an adapter (bot.slack, bot.cli, bot.shell) or a tool (bot.tools).
- Slack modules go through domain verbs: no `runtime.store`, no service's `.store`, nothing private.
- The import graph of bot/ has no cycles (lazy imports inside functions count; TYPE_CHECKING ones do not).
"""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import ROOT

BOT = ROOT / "bot"
ONLY_INSIDE = {"slack_bolt": BOT / "slack", "slack_sdk": BOT / "slack", "click": BOT / "cli"}
ADAPTERS = ("bot.slack", "bot.cli", "bot.shell", "bot.tools", "bot.__main__")
# The Slack app's wiring hands the database to the outbox (SlackWeb keeps posts there); nothing else may.
STORE_ALLOWED = {BOT / "slack" / "app.py": "SlackWeb(client, runtime.store)"}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> list[tuple[str, int]]:
    """(module, line) of every import, lazy ones included, TYPE_CHECKING blocks left out."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped.update(id(n) for stmt in node.body for n in ast.walk(stmt))
    found = []
    own = module_name(path) if path.is_relative_to(ROOT) else path.stem
    package = own if path.name == "__init__.py" else own.rpartition(".")[0]
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parents = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parents + ([base] if base else []))
            found.append((base, node.lineno))
            found += [(f"{base}.{alias.name}", node.lineno) for alias in node.names]  # `from bot.slack import ids`
    return found


def modules() -> dict[str, Path]:
    return {module_name(path): path for path in BOT.rglob("*.py")}


def test_slack_and_click_are_imported_only_by_their_adapters() -> None:
    misplaced = sorted(
        f"{path.relative_to(ROOT)}:{line} imports {name}"
        for path in BOT.rglob("*.py")
        for name, line in imports(path)
        if name.split(".")[0] in ONLY_INSIDE and not path.is_relative_to(ONLY_INSIDE[name.split(".")[0]])
    )
    assert misplaced == []


def test_domain_modules_never_import_an_adapter_or_a_tool() -> None:
    known = modules()
    misplaced = sorted(
        f"{path.relative_to(ROOT)}:{line} imports {name}"
        for module, path in known.items()
        if not module.startswith(ADAPTERS)
        for name, line in imports(path)
        if name.startswith(ADAPTERS) and name in known
    )
    assert misplaced == []


def test_slack_modules_use_domain_verbs_not_the_store() -> None:
    found = []
    for path in (BOT / "slack").rglob("*.py"):
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            code = line.split("#")[0]
            allowed = STORE_ALLOWED.get(path)
            if "runtime.store" in code and not (allowed and allowed in code):
                found.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
            if any(f"{owner}.store" in code or f"{owner}._" in code for owner in ("deploys", "incidents", "runtime")):
                if not (allowed and allowed in code):
                    found.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert found == []


def test_the_import_graph_of_bot_has_no_cycles() -> None:
    known = modules()
    graph = {
        module: sorted({name for name, _ in imports(path) if name in known and name != module})
        for module, path in known.items()
    }
    cycles: list[list[str]] = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for nxt in graph[node]:
            if state.get(nxt) == 1:
                cycles.append(path[path.index(nxt) :] + [nxt])
            elif nxt not in state:
                visit(nxt)
        path.pop()
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module)
    assert [" -> ".join(c) for c in cycles] == []


def test_the_checks_see_lazy_imports_and_skip_type_checking_ones(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import bot.cli\n"
        "def f():\n    from bot.slack import ids\n",
        encoding="utf-8",
    )
    names = {name for name, _ in imports(sample)}
    assert {"bot.slack", "bot.slack.ids"} <= names and "bot.cli" not in names
    assert "slack_bolt" in {n.split(".")[0] for n, _ in imports(BOT / "slack" / "local" / "shell_dispatch.py")}


def test_block_builders_need_neither_the_store_nor_the_model() -> None:
    """Building Block Kit is a pure function of what it is given: no database, no encoder, no runtime."""
    heavy = ("bot.store", "bot.answers", "bot.runtime", "bot.ops")
    reached: set[str] = set()
    todo = [m for m in modules() if m.startswith("bot.slack.blocks")]
    while todo:
        name = todo.pop()
        if name in reached or name not in modules():
            continue
        reached.add(name)
        todo += [n for n, _ in imports(modules()[name]) if n.startswith("bot.")]
    assert sorted(m for m in reached if m.startswith(heavy)) == []
