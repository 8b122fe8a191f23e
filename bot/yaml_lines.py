"""Where in a YAML file something is: the line of a key path, of a key, of a parse error; and how it is read.

experts.yaml, services.yaml and channels.yaml are read with ``load``; incidents and front matter with
``bot.text.load_yaml``, which leaves every date as text for opsbot to parse. Either way a date that does not exist
(``left: 2026-02-29``, ``end: 2026-12-32 10:00:00``) comes back as the text written, never as the bare ValueError
YAML's own reading raises, and the field that holds it reports it on its line, saying why (``real_date_problem``).
"""

from __future__ import annotations

import calendar
import re
from typing import Any

import yaml

from bot.text import SafeLoader


class _Loader(SafeLoader):
    """Safe YAML with aliases bounded, reading dates as dates, and a date that does not exist as its text."""

    def construct_yaml_timestamp(self, node: yaml.ScalarNode) -> Any:
        try:
            return super().construct_yaml_timestamp(node)
        except (ValueError, OverflowError):
            return self.construct_scalar(node)


_Loader.add_constructor("tag:yaml.org,2002:timestamp", _Loader.construct_yaml_timestamp)


def load(text: str) -> Any:
    """A roster, services.yaml or channels.yaml (see the module's docstring); raises yaml.YAMLError."""
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader is a SafeLoader


DATE_SHAPE = re.compile(r"\s*(\d{4})-(\d{1,2})-(\d{1,2})(?:(?:[Tt]|\s+)(\d{1,2}):(\d{1,2})(?::(\d{1,2}))?)?")


def real_date_problem(value: object) -> str | None:
    """Why a value written as a date (and time) names none that exists, such as "February 2026 has 28 days";
    None when it does, or when it is not written as a date at all (the caller's own message covers that)."""
    found = DATE_SHAPE.match(value) if isinstance(value, str) else None
    if found is None:
        return None
    year, month, day = (int(found[n]) for n in (1, 2, 3))
    if year < 1:
        return "there is no year 0; years start at 0001"
    if not 1 <= month <= 12:
        return f"there is no month {month}; months are 01 to 12"
    days = calendar.monthrange(year, month)[1]
    if not 1 <= day <= days:
        return f"{calendar.month_name[month]} {year} has {days} days"
    hour, minute, second = (int(found[n] or 0) for n in (4, 5, 6))
    if hour > 23 or minute > 59 or second > 59:
        return f"{found[4]}:{found[5]}{':' + found[6] if found[6] else ''} is not a time of day (00:00 to 23:59)"
    return None


def key_line(text: str, key: str) -> int:
    """The 0-based line of the first ``key:`` in ``text`` (0 when there is none)."""
    for number, line in enumerate(text.splitlines()):
        if re.match(rf"^\s*-?\s*['\"]?{re.escape(key)}['\"]?\s*:", line):
            return number
    return 0


def yaml_problem(exc: yaml.YAMLError) -> str:
    return getattr(exc, "problem", None) or str(exc).splitlines()[0]


def yaml_error_line(exc: yaml.YAMLError) -> int | None:
    """The 1-based line of a YAML error. An error found at the end of the file (an unclosed `[` or quote) is
    placed where the unclosed part began, not on a line after the last one."""
    mark = getattr(exc, "problem_mark", None)
    if mark is None:
        return None
    line = mark.line + 1
    buffer = getattr(mark, "buffer", None)
    if buffer:
        text = buffer.rstrip("\0")
        last = max(1, len(text.splitlines()))
        if line > last or mark.pointer >= len(text):  # at the end, with or without a last line break
            context = getattr(exc, "context_mark", None)
            line = context.line + 1 if context is not None and context.line < last else min(line, last)
    return line


def compose(text: str) -> yaml.Node | None:
    try:
        return yaml.compose(text)
    except (yaml.YAMLError, RecursionError):  # nested hundreds deep: reading it says so (bot.text.BoundedAliases)
        return None


def path_line(node: yaml.Node | None, key: str) -> int | None:
    """The 1-based line of the deepest node on a key path such as ``services.web.environments.prod.freeze[0]``.

    Following the path (rather than searching for its last name) finds prod's `approvals:`, not
    staging's above it, and a missing key points at its parent instead of a later service.
    """
    line = None
    for name, index in re.findall(r"([^.\[\]]+)|\[(\d+)\]", key):
        if name:
            found = _mapping_value(node, name)
            if found is None:
                break
            key_node, node = found
            line = key_node.start_mark.line + 1
        else:
            if not isinstance(node, yaml.SequenceNode) or int(index) >= len(node.value):
                break
            node = node.value[int(index)]
            line = node.start_mark.line + 1
    return line


def _mapping_value(node: yaml.Node | None, name: str) -> tuple[yaml.Node, yaml.Node] | None:
    """The key and value nodes of ``name`` in a mapping, looking through `<<:` merges."""
    if not isinstance(node, yaml.MappingNode):
        return None
    for key_node, value in node.value:
        if getattr(key_node, "value", None) == name:
            return key_node, value
    for key_node, value in node.value:
        if getattr(key_node, "value", None) == "<<":
            for merged in value.value if isinstance(value, yaml.SequenceNode) else [value]:
                found = _mapping_value(merged, name)
                if found is not None:
                    return found
    return None


def duplicate_keys(text: str) -> list[tuple[str, int, int]]:
    """Keys given twice in one mapping, as (key path, 1-based line, line of the first): YAML keeps only the last,
    so whatever the first held (a service's environments, a person's team) would be lost without a word."""
    root = compose(text)
    found: list[tuple[str, int, int]] = []
    seen_nodes: set[int] = set()

    def walk(node: yaml.Node | None, path: str) -> None:
        if node is None or id(node) in seen_nodes:  # an alias is the node it names: walked once
            return
        seen_nodes.add(id(node))
        if isinstance(node, yaml.MappingNode):
            first: dict[str, int] = {}
            for key_node, value in node.value:
                name = str(getattr(key_node, "value", ""))
                line = key_node.start_mark.line + 1
                if isinstance(key_node, yaml.ScalarNode) and name != "<<":
                    if name in first:
                        found.append((f"{path}.{name}" if path else name, line, first[name]))
                    else:
                        first[name] = line
                walk(value, f"{path}.{name}" if path else name)
        elif isinstance(node, yaml.SequenceNode):
            for n, item in enumerate(node.value):
                walk(item, f"{path}[{n}]")

    walk(root, "")
    return found
