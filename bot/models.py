"""Plain data objects passed between the layers."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any
from zoneinfo import ZoneInfo


@dataclass(frozen=True)
class Problem:
    """Something wrong with one knowledge file; the rest still loads."""

    path: str
    message: str
    line: int | None = None

    def __str__(self) -> str:
        where = f"{self.path}:{self.line}" if self.line else self.path
        return f"{where}: {self.message}"


@dataclass(frozen=True)
class Section:
    """One part of a document under a heading path, ready to be embedded."""

    heading: str  # "Diagnosis > Check the pool", "" for text before the first heading
    text: str
    anchor: str = ""


@dataclass(frozen=True)
class Document:
    """A runbook or an incident, as read from the knowledge directory."""

    path: str  # relative to the knowledge directory, with forward slashes
    kind: str  # "runbook" | "incident"
    title: str
    sections: tuple[Section, ...]
    content_hash: str
    services: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    owners: tuple[str, ...] = ()
    url: str = ""
    incident_id: str = ""
    aliases: tuple[str, ...] = ()  # other names: a top heading that differs from the title
    alerts: tuple[str, ...] = ()  # alert names this runbook answers: a pasted alert naming one gets it first

    @property
    def title_text(self) -> str:
        """The title with its aliases, as the encoder and full-text search see it."""
        return " / ".join((f"{self.incident_id} {self.title}".strip(), *self.aliases))


@dataclass(frozen=True)
class TimelineEntry:
    at: str
    event: str


@dataclass(frozen=True)
class Incident:
    """A past incident with who resolved it."""

    id: str
    title: str
    date: datetime
    severity: int
    services: tuple[str, ...]
    responders: tuple[str, ...]
    summary: str
    root_cause: str
    resolution: str
    path: str
    duration_minutes: int | None = None
    timeline: tuple[TimelineEntry, ...] = ()
    env: str = ""  # the environment it hit; "" is the default incident environment (settings.incident_env)


@dataclass(frozen=True)
class Expert:
    """A roster member; ``id`` is their Slack user id."""

    id: str
    name: str
    team: str
    skills: tuple[str, ...] = ()
    services: tuple[str, ...] = ()
    timezone: str = "UTC"
    hours: str = ""
    away: bool = False
    left: date | None = None  # left on this day: their history still counts in statistics, they are never suggested

    def has_left(self, at: datetime) -> bool:
        """Whether the person had left by ``at`` (from the start of their ``left`` day, in their time zone)."""
        if self.left is None:
            return False
        return at.astimezone(ZoneInfo(self.timezone)).date() >= self.left


@dataclass(frozen=True)
class Override:
    """Someone covering a rotation from ``start`` to ``end`` (aware datetimes)."""

    person: str
    start: datetime
    end: datetime


@dataclass(frozen=True)
class Rotation:
    """A team's weekly on-call rota: members in order, each on call from one handoff to the next."""

    team: str
    members: tuple[str, ...]
    handoff_day: int  # 0 = Monday
    handoff_time: str  # HH:MM, local to ``timezone``
    timezone: str
    start: date  # the handoff day on which the first member's first shift begins
    services: tuple[str, ...] = ()  # covered besides the team's own services
    overrides: tuple[Override, ...] = ()
    leaving: tuple[tuple[str, date], ...] = ()  # members with a `left:` still ahead: skipped from that day

    def left_by(self, person: str, at: datetime) -> bool:
        """Whether ``person`` had left by ``at`` (from the start of their `left:` day, in the rota's time zone)."""
        day = dict(self.leaving).get(person)
        return day is not None and at.astimezone(ZoneInfo(self.timezone)).date() >= day


@dataclass
class KnowledgeBase:
    """Everything read from one knowledge directory, with the problems found on the way."""

    root: str
    documents: list[Document] = field(default_factory=list)
    incidents: list[Incident] = field(default_factory=list)
    experts: list[Expert] = field(default_factory=list)
    rotations: list[Rotation] = field(default_factory=list)  # experts.yaml `rotations:`
    unread_rotas: list[str] = field(default_factory=list)  # teams whose rota is written but cannot be read
    problems: list[Problem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # worth knowing but not wrong: `opsbot check` still exits 0
    failed_paths: set[str] = field(default_factory=set)
    channels: dict[str, str] = field(default_factory=dict)  # channel id -> "all" | "mentions"
    services: dict[str, dict] = field(default_factory=dict)  # services.yaml: name -> its entry
    deploy_settings: dict | None = None  # services.yaml `settings:`


@dataclass(frozen=True)
class SearchHit:
    """One document in an answer, with its best section."""

    path: str
    kind: str
    title: str
    section: str
    snippet: str
    score: float
    url: str = ""
    incident_id: str = ""
    anchor: str = ""
    services: tuple[str, ...] = ()
    similarity: float = 0.0  # cosine of the question and the document's closest section: how close in meaning
    alert: str = ""  # the name in the question this document answers to: an alert it declares, or the incident's id
    quoted: bool = False  # the cited section holds every word of the (short) question close together
    linked: bool = False  # the runbook an alert's runbook_url links to (cited first, whatever the wording)

    @property
    def citation(self) -> str:
        label = self.incident_id or self.path
        return f"{label} § {self.section}" if self.section else label

    @property
    def section_url(self) -> str:
        """The document's ``url`` pointed at the cited section (its heading's anchor), when it has both.

        The anchor is the heading in lower case with other characters as hyphens, as wikis and code
        hosts make them for most headings; where one differs, the link still opens the page.
        """
        if not self.url or not self.anchor or "#" in self.url:
            return self.url
        return f"{self.url}#{self.anchor}"


@dataclass(frozen=True)
class Answer:
    """The result of asking a question."""

    query: str
    normalized_query: str
    hits: tuple[SearchHit, ...]
    mode: str
    encode_ms: float = 0.0
    search_ms: float = 0.0
    # The question's vector (a numpy array; None in bm25 mode): reused to suggest experts without encoding again.
    query_vector: Any = field(default=None, repr=False, compare=False)
    learned: bool = False  # the hits' scores are the fitted ranker's log-odds that each is the answer
