"""The fault suite's report: what each scenario tried, which invariants held, what broke and what was lost.

Any test can record into the session's collector, not only those under tests/fault:

    with COLLECTOR.scenario("approval storm") as s:
        s.tried += 1
        s.check("ran exactly once", runs == 1, f"{request_id} ran {runs} times")
    assert s.ok, s.failure()

or, for a test that keeps its own counts, ``record("property: approval sequences", tried=1000, ...)``.
At the end of the session tests/fault/conftest.py prints the table and writes it to build/fault-report.md.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

SCALES = ("small", "full")
SCALE = (os.environ.get("OPSBOT_FAULT_SCALE") or "small").strip().lower()
MAX_SHOWN_VIOLATIONS = 12  # per scenario in the failure message and the markdown details
MAX_DETAIL = 1500  # characters of one violation's detail (a traceback, a response body)
# Scenarios the report names even when this session did not run them (written elsewhere, or full scale only).
EXPECTED = (
    "a. approval storm",
    "b. two processes, one database",
    "c1. SIGKILL serve at random points",
    "c2. SIGKILL index at random points",
    "d. hostile arguments",
    "e. fuzzed payloads",
    "f. secrets in runner output",
    "g1. Slack faults: messages delivered",
    "g2. Slack faults: timeout while chat.update hangs",
    "g3. Slack faults: 30 s hang",
    "h1. disk full",
    "h2. read-only database directory",
    "i. CI deploy events",
    "property: approval sequences",
)


@dataclass
class Scenario:
    """One scenario's counts, filled in while it runs."""

    name: str
    scale: str = ""
    tried: int = 0
    lost: int = 0
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)
    checks: dict[str, int] = field(default_factory=dict)  # invariant -> times checked
    failures: dict[str, int] = field(default_factory=dict)  # invariant -> times violated
    violations: list[str] = field(default_factory=list)  # what was seen, one line each
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def check(self, invariant: str, held: bool, detail: str = "") -> bool:
        """Count one check of ``invariant``; when it did not hold, keep ``detail`` as a violation."""
        with self._lock:
            self.checks[invariant] = self.checks.get(invariant, 0) + 1
            if not held:
                self.failures[invariant] = self.failures.get(invariant, 0) + 1
                detail = detail if len(detail) <= MAX_DETAIL else detail[:MAX_DETAIL] + " ..."
                self.violations.append(f"{invariant}: {detail}" if detail else invariant)
        return held

    def lose(self, count: int, detail: str, invariant: str = "no message lost") -> None:
        """Messages that never arrived are violations of ``invariant`` and add to the lost column."""
        with self._lock:
            self.lost += count
        self.check(invariant, count == 0, detail)

    def note(self, text: str) -> None:
        with self._lock:
            self.notes.append(text)

    @property
    def held(self) -> int:
        return sum(1 for name in self.checks if not self.failures.get(name))

    @property
    def ok(self) -> bool:
        return not self.violations

    def failure(self) -> str:
        """The assertion message of a scenario that broke an invariant."""
        shown = self.violations[:MAX_SHOWN_VIOLATIONS]
        more = len(self.violations) - len(shown)
        lines = [f"{self.name}: {len(self.violations)} violation(s) in {self.tried} tried"]
        lines += [f"  - {v}" for v in shown]
        if more:
            lines.append(f"  ... and {more} more")
        return "\n".join(lines)


class Collector:
    """Every scenario of the session, in the order they finished."""

    def __init__(self) -> None:
        self.scenarios: dict[str, Scenario] = {}
        self.scale = ""
        self.notes: list[str] = []  # about the whole session: what a serve start costs here, the budget
        self._lock = threading.Lock()

    @contextmanager
    def scenario(self, name: str) -> Iterator[Scenario]:
        """Time a scenario and keep it, even when the test fails half-way (that is reported too)."""
        current = Scenario(name, self.scale)
        started = time.monotonic()
        try:
            yield current
        except BaseException as exc:
            current.check("scenario completed", False, f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}")
            raise
        finally:
            current.seconds = time.monotonic() - started
            self.add(current)

    def add(self, scenario: Scenario) -> None:
        with self._lock:
            self.scenarios[scenario.name] = scenario

    def rows(self) -> list[Scenario | str]:
        """Recorded scenarios, then the names of expected ones this session did not run."""
        recorded: list[Scenario | str] = sorted(self.scenarios.values(), key=lambda s: s.name)
        return recorded + [name for name in EXPECTED if name not in self.scenarios]

    def dump(self) -> str:
        """The scenarios and notes as JSON: what a pytest-xdist worker hands to the controller."""
        keep = ("name", "scale", "tried", "lost", "seconds", "notes", "checks", "failures", "violations")
        scenarios = [{k: getattr(s, k) for k in keep} for s in self.scenarios.values()]
        return json.dumps({"scenarios": scenarios, "notes": self.notes})

    def merge(self, dumped: str) -> None:
        """Add what a worker collected (``dump``) to this session's report."""
        data = json.loads(dumped)
        for fields in data["scenarios"]:
            self.add(Scenario(**fields))
        with self._lock:
            self.notes.extend(n for n in data["notes"] if n not in self.notes)


COLLECTOR = Collector()


def record(
    name: str,
    tried: int,
    invariants: dict[str, int] | list[str],
    violations: list[str] | None = None,
    lost: int = 0,
    seconds: float = 0.0,
    notes: list[str] | None = None,
    collector: Collector = COLLECTOR,
) -> Scenario:
    """Record a scenario counted elsewhere; ``invariants`` names them (or maps each to how often it was checked).

    A violation line names its invariant first (``"ran once: dep-1 ran twice"``) so the table can say which held.
    """
    scenario = Scenario(name, collector.scale, tried=tried, lost=lost, seconds=seconds, notes=list(notes or []))
    counts = invariants if isinstance(invariants, dict) else dict.fromkeys(invariants, tried)
    scenario.checks = dict(counts)
    for line in violations or []:
        invariant = line.split(":", 1)[0]
        scenario.failures[invariant] = scenario.failures.get(invariant, 0) + 1
        scenario.checks.setdefault(invariant, 1)
        scenario.violations.append(line)
    collector.add(scenario)
    return scenario


def table_lines(collector: Collector) -> list[str]:
    """The summary as a markdown table (it reads well in a terminal too)."""
    lines = [
        "| scenario | scale | tried | invariants held | violations | lost | seconds | result |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for row in collector.rows():
        if isinstance(row, str):
            lines.append(f"| {row} | | | | | | | not run |")
            continue
        result = "held" if row.ok else "VIOLATED"
        lines.append(
            f"| {row.name} | {row.scale} | {row.tried} | {row.held}/{len(row.checks)} | {len(row.violations)} "
            f"| {row.lost} | {row.seconds:.0f} | {result} |"
        )
    return lines


def markdown(collector: Collector) -> str:
    """The table, then per scenario the invariants that broke and the notes."""
    out = [f"# opsbot fault suite ({collector.scale} scale)", "", *table_lines(collector), ""]
    out += [f"- {n}" for n in collector.notes]
    out += [""] if collector.notes else []
    for scenario in sorted(collector.scenarios.values(), key=lambda s: s.name):
        if scenario.ok and not scenario.notes:
            continue
        out.append(f"## {scenario.name}")
        for invariant, count in scenario.checks.items():
            failed = scenario.failures.get(invariant, 0)
            out.append(f"- {'VIOLATED' if failed else 'held'}: {invariant} ({failed} of {count} checks failed)")
        for line in scenario.violations[:MAX_SHOWN_VIOLATIONS]:
            out.append(f"  - {line}")
        if len(scenario.violations) > MAX_SHOWN_VIOLATIONS:
            out.append(f"  - ... and {len(scenario.violations) - MAX_SHOWN_VIOLATIONS} more")
        out += [f"- note: {n}" for n in scenario.notes]
        out.append("")
    return "\n".join(out)


def write_markdown(collector: Collector, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(markdown(collector), encoding="utf-8")
    return path
