"""Read a knowledge directory (runbooks, incidents, roster) into plain models.

Every file is read on its own: a broken file becomes a Problem with its path and line,
and everything else still loads. Each kind of file is parsed in ``bot.runbook_file``, ``bot.record_files``
(incidents, the roster, channels.yaml) and ``bot.services_file``; this module walks the directory,
and ``bot.knowledge_xref`` checks the services incidents, runbooks and the roster name against services.yaml.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from bot.knowledge_fields import FileProblem, FileProblems, name_list
from bot.knowledge_xref import NamedService, named_services, other_services, roster_services, service_name_problems
from bot.models import Expert, Incident, KnowledgeBase, Problem
from bot.record_files import (
    incident_document,
    parse_channels,
    parse_incident,
    parse_roster,
    parse_roster_rotations,
    team_slips,
)
from bot.runbook_file import parse_runbook
from bot.services_file import read_services_file
from bot.text import FrontMatterError, content_hash, safe_load, split_front_matter
from bot.yaml_lines import duplicate_keys

KNOWLEDGE_ENTRIES = ("runbooks", "incidents", "experts.yaml", "services.yaml", "channels.yaml")
YAML_FILES = ("experts.yaml", "services.yaml", "channels.yaml")


def root_problem(root: Path) -> str | None:
    """Why ``root`` is not a knowledge folder, or None. Indexing a folder replaces the whole index with what it
    holds: a wrong one (``knowledge/runbooks``, the current folder) would empty it without a word."""
    if root.exists() and not root.is_dir():
        return f"{str(root)!r} is a file, not a knowledge directory; pass the folder with runbooks/ in it."
    if not root.is_dir():
        return f"knowledge directory {str(root)!r} does not exist; pass a folder with runbooks/ in it."
    if not any(os.path.lexists(root / entry) for entry in KNOWLEDGE_ENTRIES):  # a link to nowhere is reported later
        if misnamed := [f"{name[:-5]}.yml" for name in YAML_FILES if os.path.lexists(root / f"{name[:-5]}.yml")]:
            return (
                f"{str(root)!r} holds {', '.join(misnamed)}, and opsbot reads only {', '.join(YAML_FILES)}: rename "
                "them (.yaml, not .yml); nothing was changed."
            )
        return (
            f"{str(root)!r} is not a knowledge folder: it holds none of runbooks/, incidents/, experts.yaml, "
            "services.yaml or channels.yaml. Pass the folder that holds them (knowledge/, not knowledge/runbooks/); "
            "nothing was changed."
        )
    return None


def load_knowledge(root: Path) -> KnowledgeBase:
    """Load every runbook, incident and the roster under ``root``."""
    kb = KnowledgeBase(root=str(root))
    named: list[NamedService] = []  # the services each file, person and rota names, checked against services.yaml
    runbooks = root / "runbooks"
    found = _files(kb, root, runbooks, (".md",)) if _is_folder(kb, root, runbooks) else []
    # What a file that does not load names is still checked, so that `check` shows every problem of every file at
    # once, not a service slip only after the file's other problem is fixed.
    broken: dict[str, tuple[str, ...]] = {}  # a file that did not load -> the responders it names
    for path in found:  # README.MD counts as much as readme.md
        _collect(kb, root, path, lambda p, rel, text: _add_runbook(kb, rel, text, named), named, broken)
    incident_dir = root / "incidents"
    if _is_folder(kb, root, incident_dir):
        files = _files(kb, root, incident_dir, (".md", ".yaml", ".yml"))
        seen: dict[str, str] = {}
        for path in files:
            _collect(kb, root, path, lambda p, rel, text: _add_incident(kb, rel, text, seen, named), named, broken)
    _misnamed_files(kb, root)
    roster = root / "experts.yaml"
    roster_text = None  # its teams are checked against those services.yaml relies on, once that is read
    entries: list[int] = []
    if _is_file(kb, root, roster) and (text := _read(kb, "experts.yaml", roster)) is not None:
        roster_text = text
        kb.experts, problems = parse_roster("experts.yaml", text, entries)
        kb.problems.extend(problems)
        if problems and not kb.experts:
            kb.failed_paths.add("experts.yaml")
        kb.rotations, kb.unread_rotas, problems = parse_roster_rotations("experts.yaml", text, kb.experts)
        kb.problems.extend(problems)
        named += roster_services("experts.yaml", text, kb.experts, entries, kb.rotations)
    services = root / "services.yaml"
    relied_on: set[str] = set()  # the teams and people services.yaml names
    if _is_file(kb, root, services) and (text := _read(kb, "services.yaml", services)) is not None:
        roster = None if "experts.yaml" in kb.failed_paths else kb.experts  # a broken roster is reported already
        found = read_services_file("services.yaml", text, roster)
        kb.services, kb.deploy_settings = found.services, found.settings
        kb.problems.extend(found.problems)
        relied_on = found.named
        if found.failed:
            kb.failed_paths.add("services.yaml")
        elif found.names:  # without services.yaml, or with none in it, no name can be told wrong
            kb.problems += service_name_problems(found.names, named)
            kb.notes += [note] if (note := other_services(found.names, named)) else []
    if roster_text is not None:
        kb.problems += team_slips("experts.yaml", roster_text, kb.experts, entries, relied_on)
    channels = root / "channels.yaml"
    if _is_file(kb, root, channels) and (text := _read(kb, "channels.yaml", channels)) is not None:
        kb.channels, problems = parse_channels("channels.yaml", text)
        kb.problems.extend(problems)
        if problems and not kb.channels:  # unreadable as a whole: the modes it gave before stay
            kb.failed_paths.add("channels.yaml")
    _check_responders(kb, broken)
    return kb


def _misnamed_files(kb: KnowledgeBase, root: Path) -> None:
    """A problem for experts.yml, services.yml or channels.yml: opsbot reads only the .yaml names, and without this
    the roster or the services would be missing with `check` saying nothing was wrong."""
    for name in YAML_FILES:
        misnamed = f"{name[:-5]}.yml"
        if not os.path.lexists(root / misnamed):
            continue
        if os.path.lexists(root / name):
            fix = f"opsbot reads {name}: move what it holds there and remove it (it is not read)"
        else:  # renamed by mistake: what was indexed from the .yaml stays, as for a file that cannot be read
            fix = f"opsbot reads {name}: rename it (it is not read; what was indexed from {name} is kept)"
            kb.failed_paths.add(name)
        kb.problems.append(Problem(misnamed, f"found {misnamed}; {fix}."))


def _rel(root: Path, path: Path) -> str:
    return path.relative_to(root).as_posix()


def _is_file(kb: KnowledgeBase, root: Path, path: Path) -> bool:
    """Whether ``path`` is a file to read (see ``_is_there``): the roster, the services, the channels."""
    return _is_there(kb, root, path, folder=False)


def _is_folder(kb: KnowledgeBase, root: Path, folder: Path) -> bool:
    """Whether ``folder`` is there to be listed (see ``_is_there``): runbooks/, incidents/."""
    return _is_there(kb, root, folder, folder=True)


def _is_there(kb: KnowledgeBase, root: Path, path: Path, folder: bool) -> bool:
    """Whether ``path`` is there as a folder (or a file) to read. None there: nothing of its kind. A link to nowhere
    (a share not mounted) or the other kind of entry in its place is a Problem (``_unreadable``)."""
    if path.is_dir() if folder else path.is_file():
        return True
    if os.path.lexists(path):
        _unreadable(kb, root, path, folder)
    return False


def _unreadable(kb: KnowledgeBase, root: Path, path: Path, folder: bool) -> None:
    """Report ``path`` (a link to nowhere, or the other kind of entry in its place) and keep what was indexed from it:
    its path (a folder's ending in "/") goes into ``failed_paths``."""
    rel = _rel(root, path) + ("/" if folder else "")
    if path.is_symlink() and not path.exists():
        why = f"a link to {os.readlink(path)}, which does not exist"
        fix = "mount or create what it points to, or remove the link"
    elif folder:
        why, fix = "it is a file, not a folder", "make it a folder"
    else:
        why, fix = "it is not a file", "make it a file"
    what = "folder" if folder else "file"
    kb.problems.append(Problem(rel, f"{what} cannot be read ({why}): {fix}; what was indexed from it is kept."))
    kb.failed_paths.add(rel)


def _files(kb: KnowledgeBase, root: Path, folder: Path, suffixes: tuple[str, ...]) -> list[Path]:
    """The files under ``folder`` ending in one of ``suffixes``, sorted; a folder that cannot be listed is a Problem.

    Its path, ending in "/", goes into ``failed_paths``, so indexing keeps what the index holds from under it
    rather than removing those documents as if their files had been deleted.
    """

    def unreadable(exc: OSError) -> None:
        rel = _rel(root, Path(exc.filename)) + "/"
        kb.problems.append(Problem(rel, f"folder cannot be read ({exc.strerror}): fix its permissions."))
        kb.failed_paths.add(rel)

    found: list[Path] = []
    seen: set[str] = set()  # the real folders walked: a link back up (a loop) or to a folder seen is walked once
    for folder_path, folders, names in os.walk(folder, onerror=unreadable, followlinks=True):
        real = os.path.realpath(folder_path)
        if real in seen:
            folders[:] = []
            continue
        seen.add(real)
        # A linked folder (a team's runbook repository linked in) is read like any other, as linked files are.
        for name in names:
            path = Path(folder_path) / name
            if Path(name).suffix.lower() in suffixes:
                # Only a regular file is read: a FIFO named x.md would hang `opsbot index` and `check` for ever.
                if _is_there(kb, root, path, folder=False):
                    found.append(path)
            elif Path(name).suffix.lower() == ".markdown":  # the other Markdown ending: passed over, it is missed
                why = f"is not read: opsbot reads Markdown files ending in .md; rename it to {Path(name).stem}.md"
                kb.problems.append(Problem(_rel(root, path), f"{why}."))
            elif path.is_symlink() and not path.exists():  # a linked folder whose share is not mounted
                _unreadable(kb, root, path, folder=True)
    return sorted(path for path in found if _utf8_name(kb, root, path))


def _utf8_name(kb: KnowledgeBase, root: Path, path: Path) -> bool:
    """Whether the path's name is UTF-8; if not, a Problem. Such a name (latin-1 bytes from unzip or a Windows
    share) cannot be stored or shown as text, so the file is left out."""
    rel = _rel(root, path)
    try:
        rel.encode("utf-8")
    except UnicodeEncodeError:
        shown = os.fsencode(rel).decode("utf-8", "backslashreplace")
        kb.problems.append(Problem(shown, "the file name is not UTF-8; rename it (the file is left out)."))
        return False
    return True


def _read(kb: KnowledgeBase, rel: str, path: Path) -> str | None:
    """A file's text without a byte-order mark, or None with a Problem when it cannot be read."""
    try:
        text = path.read_text(encoding="utf-8").removeprefix("\ufeff")
        _check_duplicate_keys(kb, rel, text)
        return text
    except UnicodeDecodeError:
        kb.problems.append(Problem(rel, "is not UTF-8 text; save it as UTF-8."))
    except OSError as exc:
        kb.problems.append(Problem(rel, f"cannot be read: {exc.strerror}"))
    kb.failed_paths.add(rel)
    return None


def _check_duplicate_keys(kb: KnowledgeBase, rel: str, text: str) -> None:
    """A problem for each key given twice in a YAML file or a Markdown file's front matter."""
    offset = 0
    if rel.lower().endswith(".md"):
        try:
            front = split_front_matter(text)
        except FrontMatterError:
            return  # reported when the file is parsed
        text, offset = front.block, front.block_line - 1
    elif not rel.lower().endswith((".yaml", ".yml")):
        return
    for key, line, first in duplicate_keys(text):
        kb.problems.append(
            Problem(
                rel,
                f"{key}: given twice (also at line {first + offset}); YAML keeps only this one, so the first "
                "one's settings are lost. Merge the two into one.",
                line + offset,
            )
        )


def _collect(
    kb: KnowledgeBase,
    root: Path,
    path: Path,
    parse: Any,
    named: list[NamedService] | None = None,
    broken: dict[str, tuple[str, ...]] | None = None,
) -> None:
    """Parse one file into ``kb``; when it does not load, its problems, and (given ``named`` and ``broken``) the
    services and responders it names all the same, to be checked with the others'."""
    rel = _rel(root, path)
    text = _read(kb, rel, path)
    if text is None:
        return
    try:
        parse(path, rel, text)
        return
    except FileProblems as exc:
        kb.problems += [Problem(rel, str(p), p.line) for p in exc.problems]
    except (FileProblem, FrontMatterError) as exc:
        kb.problems.append(Problem(rel, str(exc), exc.line))
    except (ValueError, TypeError) as exc:  # e.g. YAML's own date parsing: 2025-02-30
        kb.problems.append(Problem(rel, f"has a value that cannot be read: {exc}"))
    kb.failed_paths.add(rel)
    if named is not None and broken is not None:
        kind = "incident" if rel.startswith("incidents/") else "runbook"
        fields = _fields_as_written(rel, text)
        named += named_services(rel, kind, text, _names(fields.get("services")))
        broken[rel] = _names(fields.get("responders"))


def _fields_as_written(rel: str, text: str) -> dict:
    """The top-level fields of a YAML file or of a Markdown file's front matter, as YAML reads them; {} when even
    that fails (the file's problem says why)."""
    try:
        data = safe_load(split_front_matter(text).block if rel.lower().endswith(".md") else text)
    except Exception:  # noqa: BLE001 - any failure here is the file's own problem, reported already
        return {}
    return data if isinstance(data, dict) else {}


def _names(value: object) -> tuple[str, ...]:
    """A field's names, read as every list of names is (``name_list``); none when it holds none."""
    try:
        return name_list(value, "names")
    except FileProblem:  # reported with the file's other problems
        return ()


def _add_runbook(kb: KnowledgeBase, rel: str, text: str, named: list[NamedService]) -> None:
    notes: list[tuple[str, int]] = []
    document = parse_runbook(rel, text, notes)
    kb.documents.append(document)
    named += named_services(rel, "runbook", text, document.services)
    kb.problems += [Problem(rel, note, line) for note, line in notes]  # the runbook is read all the same


def _add_incident(kb: KnowledgeBase, rel: str, text: str, seen: dict[str, str], named: list[NamedService]) -> None:
    notes: list[str | FileProblem] = []
    incident = parse_incident(rel, text, notes)
    if incident.id in seen:
        raise FileProblem(f"incident id {incident.id} is also used by {seen[incident.id]}; ids must be unique.")
    seen[incident.id] = rel
    kb.problems += [Problem(rel, str(note), getattr(note, "line", None)) for note in notes]  # the rest is read
    kb.incidents.append(incident)
    kb.documents.append(incident_document(incident, content_hash(text)))
    named += named_services(rel, "incident", text, incident.services)


UNKNOWN_SHOWN = 5  # people named in the one-line summary of responders missing from the roster


def _check_responders(kb: KnowledgeBase, broken: dict[str, tuple[str, ...]]) -> None:
    """One problem naming how many responders are not on the roster, and the first few, rather than one a file.
    A roster member's name written for their id is reported in its file, in the files that did not load too
    (``broken``: each one's responders as written).

    Real history names people who have left: their incidents still count in statistics, and they are never suggested.
    """
    if not kb.experts:
        return
    misspelt = _misspelt_responders(kb, [(i.path, i.responders) for i in kb.incidents] + list(broken.items()))
    unknown = [r for r in unknown_responders(kb.experts, kb.incidents) if r not in misspelt]
    if unknown:
        people = ", ".join(unknown[:UNKNOWN_SHOWN]) + (", ..." if len(unknown) > UNKNOWN_SHOWN else "")
        files = sum(1 for i in kb.incidents if any(r in set(unknown) for r in i.responders))
        kb.problems.append(
            Problem(
                "experts.yaml",
                f"{len(unknown)} responder(s) in {files} incident(s) are not on the roster ({people}); their "
                "incidents still count, but they are never suggested. Add whoever still helps to experts.yaml.",
            )
        )


MENTION = re.compile(r"^<@([A-Za-z0-9]+)(?:\|[^>]*)?>$")


def _misspelt_responders(kb: KnowledgeBase, files: list[tuple[str, tuple[str, ...]]]) -> set[str]:
    """Responders written as a roster member's name, their id in another case or a Slack mention (<@U...>): each
    reported in its incident file (``files``: each file's path and responders) with the id to write; returns those
    spellings."""
    by_spelling: dict[str, Expert] = {}
    for e in kb.experts:
        by_spelling.setdefault(e.name.strip().lower(), e)
        by_spelling.setdefault(e.id.lower(), e)
    known = {e.id for e in kb.experts}
    misspelt: set[str] = set()
    for path, responders in files:
        for who in responders:
            if who in known:
                continue
            mention = MENTION.match(who.strip())
            expert = by_spelling.get((mention[1] if mention else who.strip().lstrip("@")).lower())
            if expert is None:
                continue
            misspelt.add(who)
            message = (
                f"responder {who!r} is {expert.name} on the roster: write their Slack id {expert.id}, "
                "or they get no credit for this incident"
            )
            kb.problems.append(Problem(path, message, _line_naming(Path(kb.root) / path, who)))
    return misspelt


def _line_naming(path: Path, text: str) -> int | None:
    """The line of the file where responder ``text`` is written (from the `responders` key on), or None."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return None
    start = next((n for n, line in enumerate(lines) if "responders" in line), 0)
    return next((n for n, line in enumerate(lines[start:], start + 1) if text in line), None)


def unknown_responders(experts: list[Expert], incidents: list[Incident]) -> list[str]:
    """Responders of ``incidents`` who are not on the roster, in order of first appearance."""
    known = {e.id for e in experts}
    return list(dict.fromkeys(r for i in incidents for r in i.responders if r not in known))
