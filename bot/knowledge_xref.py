"""Service names that must match across knowledge files: those incidents, runbooks and the roster name, against
services.yaml.

Everything that joins a file to a service compares names exactly: an incident counts in a service's change
failure rate and in who resolved its incidents, a runbook is labelled with its services for search, a person of
the roster owns their services (for expert suggestions) and a rota is on call for its own. A name that looks like
a slip of one services.yaml defines (`chekout-api`, `Checkout_API`) joins nothing, without a word, so it is a
problem. A name close to none of them is taken as a service opsbot does not deploy (retired, or run by
another team): old incidents name those legitimately, so it is only noted.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable
from dataclasses import dataclass

import yaml

from bot.models import Expert, Problem, Rotation
from bot.text import FrontMatterError, split_front_matter
from bot.yaml_lines import compose, path_line

# A slip is in one word of a name: the names have the same words but one, and that word is similar by difflib's
# ratio (2*matches/total characters): one letter missing, added, swapped or doubled in a word of five letters or
# more stays at 0.8 or above (chekout: 0.93). Comparing whole names instead would call discovery/ec2 a slip of
# discovery/file (0.81, from the shared prefix); two different words are further apart (fanin and fanout: 0.55).
SIMILAR = 0.8
SEPARATORS = re.compile(r"[-_./]+")
DIGITS = re.compile(r"\d+")
SHOWN = 10  # other services named in the note, the most named first


@dataclass(frozen=True)
class NamedService:
    """A service name as an incident, a runbook, a person or a rota of the roster gives it, with the line it is on."""

    path: str
    kind: str  # "incident", "runbook", "person" or "rotation"
    name: str
    line: int | None
    key: str = "services"  # where in the file, as the problem starts: `person #3 (U05E4TY6MF): services`
    who: str = ""  # the person's name or the rota's team, for what the slip breaks


def named_services(rel: str, kind: str, text: str, names: Iterable[str]) -> list[NamedService]:
    """``names`` (a file's `services:`, in order) with the line each is written on, in a YAML file or front matter."""
    offset = 0
    if rel.lower().endswith(".md"):
        try:
            front = split_front_matter(text)
        except FrontMatterError:
            return []  # the file did not load, so it names nothing
        text, offset = front.block, front.block_line - 1
    root = compose(text)
    return [
        NamedService(rel, kind, name, line + offset if line else None)
        for name, line in _with_lines(root, "services", names)
    ]


def roster_services(
    rel: str, text: str, experts: list[Expert], entries: list[int], rotations: list[Rotation]
) -> list[NamedService]:
    """The services each person of the roster owns and each rota covers, with their lines.

    ``entries`` is each loaded person's place in the `people:` list (parse_roster skips broken entries).
    """
    root = compose(text)  # once: a roster of hundreds of people is one file
    people = "people" if isinstance(root, yaml.MappingNode) else ""  # `people:`, or the file is the list
    out = []
    for expert, index in zip(experts, entries, strict=True):
        key = f"person #{index + 1} ({expert.id}): services"
        for name, line in _with_lines(root, f"{people}[{index}].services", expert.services):
            out.append(NamedService(rel, "person", name, line, key, expert.name))
    for rotation in rotations:
        at = f"rotations.{rotation.team}.services"
        for name, line in _with_lines(root, at, rotation.services):
            out.append(NamedService(rel, "rotation", name, line, at, rotation.team))
    return out


def _with_lines(root: yaml.Node | None, at: str, names: Iterable[str]) -> list[tuple[str, int | None]]:
    """Each of ``names``, the list at key path ``at``, with its 1-based line."""
    # path_line gives the key's line when the names are one comma-separated string
    return [(name, path_line(root, f"{at}[{n}]")) for n, name in enumerate(names)]


def near_service(name: str, defined: Iterable[str]) -> str | None:
    """The defined service ``name`` looks like a slip of, or None when it looks like another service."""
    defined = sorted(defined)
    squashed = _squash(name)
    same = [d for d in defined if _squash(d) == squashed]
    if same:  # only case or separators differ: Checkout_API, checkoutapi
        return same[0]
    words = SEPARATORS.split(name.lower())
    best: tuple[float, str] | None = None
    for candidate in defined:
        other = SEPARATORS.split(candidate.lower())
        differ = [(a, b) for a, b in zip(words, other, strict=False) if a != b]
        if len(other) != len(words) or len(differ) != 1:
            continue  # a word more or less (checkout-api-v2), or two words changed: another service
        word, its = differ[0]
        if DIGITS.sub("#", word) == DIGITS.sub("#", its):
            continue  # only the numbers differ: shard-1 and shard-2, auth-v1 and auth-v2
        ratio = difflib.SequenceMatcher(None, word, its).ratio()
        if ratio >= SIMILAR and (best is None or ratio > best[0]):
            best = (ratio, candidate)
    return best[1] if best else None


def _squash(name: str) -> str:
    return SEPARATORS.sub("", name.lower())


WHAT_IT_BREAKS = {
    "incident": "this incident counts for none of {close}'s figures (change failure rate, who resolved its incidents)",
    "runbook": "this runbook is not labelled {close}, so a search or alert naming {close} does not match it by service",
    "person": "{who} is not an owner of {close}, so expert suggestions for {close} miss their ownership signal",
    "rotation": "the {who} rota does not cover {close}, so /oncall {close} and the on-call signal of expert "
    "suggestions find a rota for {close} only through services.yaml `team:` or its owners' teams",
}


def service_name_problems(defined: Iterable[str], named: list[NamedService]) -> list[Problem]:
    """A problem for each name in ``named`` that looks like a slip of a service services.yaml ``defined``."""
    defined = set(defined)
    problems = []
    for found in named:
        if found.name in defined or (close := near_service(found.name, defined)) is None:
            continue
        problems.append(
            Problem(
                found.path,
                f"{found.key}: `{found.name}` is not a service of services.yaml; did you mean `{close}`? As written, "
                f"{WHAT_IT_BREAKS[found.kind].format(close=close, who=found.who)}. Correct the name, or, if "
                f"`{found.name}` is another service, add it to services.yaml (with only owners: it is not deployable).",
                found.line,
            )
        )
    return problems


NAMED_BY = {"incident": "incidents", "runbook": "runbooks", "person": "the roster", "rotation": "the roster"}


def other_services(defined: Iterable[str], named: list[NamedService]) -> str | None:
    """One line naming the services ``named`` that are neither defined nor a slip of a defined one, or None."""
    defined = set(defined)
    files: dict[str, set[str]] = {}
    kinds: set[str] = set()
    for found in named:
        if found.name not in defined and near_service(found.name, defined) is None:
            files.setdefault(found.name, set()).add(found.path)
            kinds.add(found.kind)
    if not files:
        return None
    *some, last = dict.fromkeys(by for kind, by in NAMED_BY.items() if kind in kinds)
    by = f"{', '.join(some)} or {last} name" if some else f"{last} name{'s' if last == 'the roster' else ''}"
    ranked = sorted(files.items(), key=lambda item: (-len(item[1]), item[0]))  # the most named first
    listed = ", ".join(f"{name} ({len(paths)} file{'s' if len(paths) != 1 else ''})" for name, paths in ranked[:SHOWN])
    listed += ", ..." if len(ranked) > SHOWN else ""
    return (
        f"{by} {len(files)} service(s) services.yaml does not define, taken as services opsbot "
        f"does not deploy: {listed}. Add any that opsbot should know to services.yaml."
    )
