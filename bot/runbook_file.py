"""A runbook as a Document: its title, sections, services and owners, and the alerts it answers."""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Any

from bot.knowledge_fields import FileProblem, name_list, web_address
from bot.models import Document
from bot.text import FrontMatter, content_hash, first_heading, split_front_matter, split_sections
from bot.yaml_lines import key_line as _key_line

ALERT_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_.:-]*[A-Za-z0-9]")
# A top heading that is one CamelCase word names the alert the runbook is for: "# KubeJobCompletion",
# "# SSPDown" (an acronym, then a word), also with a note in brackets after it: "# KubeMacPoolDown [Deprecated]",
# "# NodeDown (legacy)". A plain word ("# Overview", "# README") has no capital inside it, or no small letter.
# Read as its first word, then checked, in linear time (one pattern for it all took quadratic time on a long
# heading of letters, and a 64 KB one held `opsbot index` for a minute).
HEADING_WORD = re.compile(r"[A-Za-z][A-Za-z0-9]*")
HEADING_NOTE = re.compile(r"\s*(?:\[[^\]]*\]|\([^)]*\))")


def heading_alert(heading: str) -> str | None:
    """The alert a top heading names, when it is one CamelCase word (a note in brackets after it allowed)."""
    word = HEADING_WORD.match(heading)
    if word is None:
        return None
    name, rest = word[0], heading[word.end() :]
    if rest and not HEADING_NOTE.fullmatch(rest):
        return None
    has_small = any("a" <= c <= "z" for c in name)
    has_inner_capital = any("A" <= c <= "Z" for c in name[1:])
    return name if has_small and has_inner_capital else None


def _alerts(value: Any, heading: str, line: int, declared: bool = False) -> tuple[str, ...]:
    """The alert names a runbook answers: front matter ``alerts``, and a top heading that is an alert name unless
    ``alerts`` is written (``declared``): then it names them all, and `alerts: []` none (an overview page headed
    `# PgBouncer` is no runbook for an alert of that name)."""
    names = list(name_list(value, "alerts"))
    for name in names:
        if not ALERT_NAME.fullmatch(name):
            raise FileProblem(
                f"`alerts` entry {name!r} is not an alert name; use the name as Prometheus or your "
                "alerting tool sends it, one word without spaces, for example alerts: [PgbouncerPoolExhausted]",
                line,
            )
    named = None if declared else heading_alert(heading)
    if named and named.lower() not in {n.lower() for n in names}:
        names.append(named)
    return tuple(names)


RUNBOOK_KEYS = ("title", "services", "tags", "owners", "url", "alerts")


def misspelt_keys(fm: FrontMatter) -> list[tuple[str, int]]:
    """Front matter keys that look like a misspelt one of ``RUNBOOK_KEYS`` (`service:`, `titel:`), with their line.

    Other keys (a site generator's `weight:`, `draft:`) are left alone: runbooks are often published too.
    """
    found = []
    for key in fm.data:
        close = difflib.get_close_matches(str(key), RUNBOOK_KEYS, n=1, cutoff=0.75)
        if str(key) not in RUNBOOK_KEYS and close:
            message = f"front matter key `{key}` is not read; did you mean `{close[0]}`?"
            found.append((message, fm.block_line + _key_line(fm.block, str(key))))
    return found


def parse_runbook(rel: str, text: str, notes: list[tuple[str, int]] | None = None) -> Document:
    """A runbook: optional front matter, title from it, else the first heading, else the file name.

    ``notes`` gets what is wrong but does not stop the runbook from loading (a misspelt front matter key).
    """
    fm = split_front_matter(text)
    if notes is not None:
        notes += misspelt_keys(fm)
    title = fm.data.get("title")
    if title is not None and not isinstance(title, (str, int, float)):
        raise FileProblem("`title` must be text", 2)
    heading = first_heading(fm.body)
    title = str(title).strip() if title else heading or _title_from_name(rel)
    aliases = (heading,) if heading and heading.replace(" ", "").lower() != title.replace(" ", "").lower() else ()
    sections = split_sections(fm.body, title)
    if not sections:
        raise FileProblem("has no text to index; write at least one paragraph.", fm.body_line)
    return Document(
        path=rel,
        kind="runbook",
        title=title,
        sections=tuple(sections),
        content_hash=content_hash(text),
        services=name_list(fm.data.get("services"), "services"),
        tags=name_list(fm.data.get("tags"), "tags"),
        owners=name_list(fm.data.get("owners"), "owners"),
        url=_url(fm.data.get("url"), 1 + _key_line(text, "url"), notes),
        aliases=aliases,
        alerts=_alerts(fm.data.get("alerts"), heading, 1 + _key_line(text, "alerts"), "alerts" in fm.data),
    )


def _url(value: object, line: int, notes: list[tuple[str, int]] | None) -> str:
    """The runbook's link, or "" with a note when it is not a plain web address: the runbook still loads, unlinked."""
    try:
        return web_address(value, "url", line)
    except FileProblem as problem:
        if notes is not None:
            notes.append((f"{problem}; the runbook is indexed without its link until then.", problem.line or line))
        return ""


def _title_from_name(rel: str) -> str:
    stem = Path(rel).stem.replace("-", " ").replace("_", " ").strip()
    return stem[:1].upper() + stem[1:]
