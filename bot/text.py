"""Text handling shared by indexing and search: front matter, sections, normalisation."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote, urlsplit

import yaml

from bot.models import Section

HEADING_OPEN = re.compile(r"(#{1,6})(\s+)(.*)")  # the closing #s are cut by heading_of, in linear time
FENCE = re.compile(r"^\s*(```|~~~)")
HTML_TAG = re.compile(r"</?[a-zA-Z][^<>]*>")
MD_LINK = re.compile(r"\[([^\[\]]*)\]\((?:[^()\n]|\([^()\n]*\))*\)")  # one level of brackets in a URL
REF_LINK_DEF = re.compile(r"^[ \t]*(?:-[ \t]*)?\[[^\]\n]+\]:?[ \t]*\(?https?://\S+\)?[ \t]*$", re.M)
URL = re.compile(r"https?://\S+")
# What a terminal would act on rather than show, in text from elsewhere (typed in Slack, an alert's labels, a runbook):
# control characters but line breaks and tabs, and the bidirectional overrides and isolates that reorder a line.
TERMINAL_CONTROL = r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]"
# A name a question may hold whole: an alert (KubePodCrashLooping), an incident id (INC-2025-0019).
QUERY_TOKEN = re.compile(r"[A-Za-z][A-Za-z0-9_.:-]*[A-Za-z0-9]")
SLACK_MENTION = re.compile(r"<@([UW][A-Z0-9]+)(?:\|[^>]*)?>")  # <@U04C2RN8VD>, or <@U04C2RN8VD|daniel>
# A CamelCase identifier is a whole word of ASCII letters and digits whose leading letters hold a small letter
# followed by a capital (KubePodCrashLooping, k8sPod is not). Found word by word, in linear time: the one pattern
# it replaced took quadratic time on a long run of letters, and a pasted 40,000-character token stalled searches.
WORD_RUN = re.compile(r"\w+")
LEADING_LETTERS = re.compile(r"[A-Za-z]*")
SMALL_THEN_CAPITAL = re.compile(r"[a-z][A-Z]")
CAMEL_PART = re.compile(r"[A-Z]+(?=[A-Z][a-z])|[A-Z]?[a-z]+|[A-Z]+|\d+")

# Volatile tokens in alerts and logs: they change from one firing to the next, so they
# must not decide a match. Order matters: the specific shapes go before plain numbers.
_K8S_ALNUM = "bcdfghjklmnpqrstvwxz2456789"
VOLATILE = [
    re.compile(r"\b\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(?::\d{2}(?:[.,]\d+)?)?(?:Z|[+-]\d{2}:?\d{2})?"),
    re.compile(r"\b[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b", re.I),
    re.compile(r"\b(?:\d{1,3}\.){3}\d{1,3}(?::\d+)?\b"),
    re.compile(r"\b(?:[0-9a-f]{1,4}:){3,7}[0-9a-f]{1,4}\b", re.I),
    re.compile(r"\b(?=[0-9a-f]*\d)(?=[0-9a-f]*[a-f])[0-9a-f]{7,64}\b", re.I),
    re.compile(r"\b0x[0-9a-f]+\b", re.I),
    # host names: node-12.dc2.example.net, ip-10-0-3-17.eu-west-1.compute.internal
    # (with a digit somewhere, so service names such as pgbouncer.databases.svc stay)
    # (labels and names bounded as DNS bounds them, so a long run of letters and dashes costs linear time)
    re.compile(r"\b(?=[\w.-]{0,253}\d)[a-z0-9][a-z0-9-]{0,62}(?:\.[a-z0-9-]{1,63}){2,}\b", re.I),
    re.compile(r"\d{1,2}:\d{2}(?::\d{2})?\b"),
    re.compile(r"(?<![\w.])[-+]?\d+(?:[.,]\d+)?(?:\s?(?:%|[kmgtpe]i?b|[kmgtpe]i|ms|ns|us|[smhdw]))?(?!\w)", re.I),
]
# Kubernetes pod and replica-set suffixes: checkout-api-7d9f8c6b5-x2kqp -> checkout-api
# With a replica-set hash in front, the pod's own suffix may be letters only; alone, it needs a digit.
POD_SUFFIX = re.compile(
    rf"(?<=[a-z0-9])(?:-(?=[{_K8S_ALNUM}]*\d)[{_K8S_ALNUM}]{{6,10}}-[{_K8S_ALNUM}]{{5}}"
    rf"|-(?=[{_K8S_ALNUM}]*\d)[{_K8S_ALNUM}]{{5}})\b"
)


# Values YAML aliases (*name) may add to a knowledge file. Aliases are how services.yaml shares settings (`<<:`),
# a few hundred values at most; nested ones multiply, so a file of 600 bytes can stand for a billion values.
MAX_ALIAS_VALUES = 50_000


class BoundedAliases:
    """A loader mixin that refuses a document whose aliases expand to more than MAX_ALIAS_VALUES values, or that
    nests lists and mappings deeper than Python's recursion allows (a few hundred `[`: a problem, not a crash)."""

    def get_single_data(self) -> Any:
        try:
            return super().get_single_data()  # type: ignore[misc]
        except RecursionError:
            raise yaml.constructor.ConstructorError(
                problem="it nests lists or mappings hundreds of levels deep; write it flatter"
            ) from None
        except (ValueError, KeyError, AttributeError, TypeError, OverflowError) as exc:
            # An explicit tag with a value it cannot take (`!!int abc`, `!!bool maybe`, `!!timestamp foo`): YAML's
            # constructors fail with Python's errors, not YAML's. A problem of the file, not a crash of the load.
            raise yaml.constructor.ConstructorError(
                problem=f"a value cannot be read as its tag says ({type(exc).__name__}: {exc}); remove the tag (!!…) "
                "or fix the value"
            ) from None

    def get_single_node(self) -> yaml.Node | None:
        node = super().get_single_node()  # type: ignore[misc]
        if node is not None:
            sizes: dict[int, int] = {}
            added = _expanded_size(node, sizes) - len(sizes)
            if added > MAX_ALIAS_VALUES:
                raise yaml.constructor.ConstructorError(
                    problem=f"its aliases (*name) expand to more than {MAX_ALIAS_VALUES:,} values; write the "
                    "values out, or share fewer through aliases",
                    problem_mark=node.start_mark,
                )
        return node


def _expanded_size(node: yaml.Node, sizes: dict[int, int]) -> int:
    """How many values ``node`` stands for once every alias in it is expanded; each distinct node is counted once."""
    if id(node) in sizes:
        return sizes[id(node)]
    sizes[id(node)] = 1  # a node that holds itself (a recursive alias) counts once
    if isinstance(node, yaml.SequenceNode):
        total = 1 + sum(_expanded_size(child, sizes) for child in node.value)
    elif isinstance(node, yaml.MappingNode):
        total = 1 + sum(_expanded_size(k, sizes) + _expanded_size(v, sizes) for k, v in node.value)
    else:
        total = 1
    sizes[id(node)] = total
    return total


class SafeLoader(BoundedAliases, yaml.SafeLoader):
    """yaml.SafeLoader with aliases bounded."""


def safe_load(text: str) -> Any:
    """``yaml.safe_load``, with aliases bounded (BoundedAliases)."""
    return yaml.load(text, Loader=SafeLoader)  # noqa: S506 - a SafeLoader


class _Loader(BoundedAliases, yaml.SafeLoader):
    """Safe YAML that leaves dates as text, so opsbot parses them and can say which line is wrong."""


_Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def load_yaml(text: str) -> object:
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader is a SafeLoader


@dataclass(frozen=True)
class FrontMatter:
    data: dict
    body: str
    body_line: int  # 1-based line number where the body starts
    block: str = ""  # the YAML between the --- lines, as written
    block_line: int = 0  # 1-based line number of its first line


class FrontMatterError(ValueError):
    def __init__(self, message: str, line: int | None) -> None:
        super().__init__(message)
        self.line = line


def content_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def split_front_matter(text: str) -> FrontMatter:
    """Separate a leading ``---`` YAML block from Markdown; raise FrontMatterError when it is broken.

    Blank lines above the opening ``---`` are allowed: an editor or a template leaves them, and reading the
    block as body text would drop the title, services and alerts it names without a word.
    """
    lines = text.splitlines(keepends=True)
    top = 0
    while top < len(lines) and not lines[top].strip():
        top += 1
    if top == len(lines) or lines[top].strip() != "---":
        return FrontMatter({}, text, 1)
    for i in range(top + 1, len(lines)):
        if lines[i].strip() in ("---", "..."):
            block = "".join(lines[top + 1 : i])
            try:
                data = load_yaml(block) or {}
            except yaml.YAMLError as exc:
                if top:  # below blank lines, a --- may be a Markdown rule after all
                    return FrontMatter({}, text, 1)
                mark = getattr(exc, "problem_mark", None)
                line = top + (mark.line + 2 if mark is not None else 2)
                problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
                raise FrontMatterError(f"front matter is not valid YAML: {problem}", line) from exc
            if not isinstance(data, dict):
                if top:
                    return FrontMatter({}, text, 1)
                raise FrontMatterError("front matter must be a mapping of keys such as title: and services:", top + 2)
            return FrontMatter(data, "".join(lines[i + 1 :]), i + 2, block, top + 2)
    raise FrontMatterError("front matter starts with --- but has no closing --- line", top + 1)


def slugify(text: str) -> str:
    """A heading's anchor as GitHub makes it, the link a runbook's readers and alerts' `runbook_url`s use: lower
    case, punctuation dropped (letters of any script, digits, `_` and `-` kept), each space a hyphen.
    "Raise `max_connections`" is #raise-max_connections, "Roll back / revert" #roll-back--revert."""
    return ANCHOR_DROPPED.sub("", text.strip().lower()).replace(" ", "-")


ANCHOR_DROPPED = re.compile(r"[^\w\- ]")


def anchor_key(anchor: str) -> str:
    """An anchor as compared with another: runs of hyphens as one, none at the ends (GitLab's anchors collapse
    them, GitHub's keep them: #roll-back-revert and #roll-back--revert name one section)."""
    return re.sub(r"[\s-]+", "-", anchor.lower()).strip("-")


def clean_markdown(text: str) -> str:
    """Drop markup that carries no meaning for search: HTML tags, link targets, bare URLs."""
    text = REF_LINK_DEF.sub("", text)
    text = HTML_TAG.sub(" ", text)
    text = MD_LINK.sub(r"\1", text)
    text = URL.sub(" ", text)
    text = re.sub(r"[ \t]+", " ", text)
    return re.sub(r"\n{3,}", "\n\n", text).strip()


def heading_of(line: str) -> tuple[int, str] | None:
    """A Markdown heading line's level and text, its closing #s cut (`## Steps ##`), or None.

    As ``^(#{1,6})\\s+(.+?)\\s*#*\\s*$`` reads it, without its backtracking: that took cubic time on a run of
    spaces inside a heading (a minute for 4,000).
    """
    m = HEADING_OPEN.fullmatch(line)
    if m is None:
        return None
    space, rest = m.group(2), m.group(3)
    if not rest:  # the text is at least one character: one of the spaces, when there are two
        return (len(m.group(1)), space[1:2]) if len(space) >= 2 else None
    text = rest.rstrip().rstrip("#").rstrip()
    return len(m.group(1)), text or rest[:1]


def first_heading(body: str) -> str:
    """The text of the first heading a reader sees: not one inside code or an HTML comment ("" if none)."""
    in_fence = False
    for line in drop_comments(body).splitlines():
        if FENCE.match(line):
            in_fence = not in_fence
        elif not in_fence and (found := heading_of(line)) is not None:
            return found[1].strip()
    return ""


def _without_comments(prose: str) -> str:
    """``prose`` with each complete ``<!-- ... -->`` replaced by its line breaks, in one pass.

    A regular expression would search to the end of the text for each unclosed ``<!--``: a file with
    thousands of them took seconds per hundred kilobytes to index.
    """
    kept, pos = [], 0
    while (start := prose.find("<!--", pos)) >= 0 and (end := prose.find("-->", start + 4)) >= 0:
        kept += [prose[pos:start], "\n" * prose.count("\n", start, end)]
        pos = end + 3
    return "".join(kept) + prose[pos:]


def drop_comments(body: str) -> str:
    """Markdown without its HTML comments, which a reader of the rendered runbook never sees.

    A template's "<!-- say what this alert means -->" or an editor's note is not what the runbook says, and
    text kept in a comment for another edition of the document would count twice. Comments inside fenced
    code are code and stay; an unclosed ``<!--`` is left as it is, as nothing says where it was meant to end.
    """
    if "<!--" not in body:
        return body
    parts, prose, in_fence = [], [], False
    for line in body.splitlines(keepends=True):
        fence = bool(FENCE.match(line))
        if not (in_fence or fence):
            prose.append(line)
            continue
        if not in_fence:  # a fence opens: the prose before it is done
            parts.append(_without_comments("".join(prose)))
            prose = []
        parts.append(line)
        in_fence = in_fence != fence
    parts.append(_without_comments("".join(prose)))
    return "".join(parts)


def split_sections(body: str, title: str) -> list[Section]:
    """Split Markdown into sections by heading, each carrying its heading path.

    A single top-level heading is the document's title, so it is left out of the paths.
    Headings inside fenced code blocks are code, not structure.
    """
    parsed: list[tuple[int, str, list[str]]] = []
    level, heading, buf, in_fence = 0, "", [], False
    for line in drop_comments(body).splitlines():
        if FENCE.match(line):
            in_fence = not in_fence
        found = None if in_fence else heading_of(line)
        if found is not None:
            parsed.append((level, heading, buf))
            level, heading, buf = found[0], found[1].strip(), []
        else:
            buf.append(line)
    parsed.append((level, heading, buf))

    h1_count = sum(1 for lvl, _, _ in parsed if lvl == 1)
    stack: list[tuple[int, str]] = []
    sections: list[Section] = []
    slugs: dict[str, int] = {}  # a heading's anchor -> how many headings had it before, empty sections too
    for lvl, head, lines in parsed:
        anchor = ""
        if lvl:
            while stack and stack[-1][0] >= lvl:
                stack.pop()
            stack.append((lvl, head))
            anchor = slugify(head)
            seen = slugs.get(anchor, 0)
            slugs[anchor] = seen + 1
            if seen:  # the second `## Steps` of a page is #steps-1, as code hosts and wikis number them
                anchor = f"{anchor}-{seen}"
        path = [h for lv, h in stack if not (lv == 1 and h1_count == 1)]
        text = clean_markdown("\n".join(lines))
        heading_path = " > ".join(path)
        if not text:
            continue
        sections.append(Section(heading=heading_path, text=text, anchor=anchor))
    return sections


def window_words(text: str, size: int = 160, overlap: int = 32) -> list[str]:
    """Cut long text into overlapping windows of words so each fits the encoder's input."""
    words = text.split()
    if len(words) <= size + overlap // 2:
        return [text]
    step = size - overlap
    return [" ".join(words[i : i + size]) for i in range(0, max(len(words) - overlap, 1), step)]


def is_camel(word: str) -> bool:
    """Whether a whole word (a run of \\w) is a CamelCase identifier."""
    return word.isascii() and word.isalnum() and bool(SMALL_THEN_CAPITAL.search(LEADING_LETTERS.match(word)[0]))


def camel_words(text: str) -> list[str]:
    """The CamelCase identifiers of a text, in order."""
    return [m[0] for m in WORD_RUN.finditer(text) if is_camel(m[0])]


def split_camel(text: str) -> str:
    """Add the words of CamelCase identifiers: KubePodCrashLooping -> Kube Pod Crash Looping."""
    extra = [" ".join(CAMEL_PART.findall(word)) for word in camel_words(text)]
    return text if not extra else text + "\n" + "\n".join(extra)


def strip_volatile(text: str) -> str:
    """Remove what changes between two firings of one alert: numbers, ids, hashes, IPs, pod suffixes."""
    text = URL.sub(" ", text)
    text = POD_SUFFIX.sub("", text)
    for pattern in VOLATILE:
        text = pattern.sub(" ", text)
    text = re.sub(r"[\"'`{}\[\]()<>=|]", " ", text)
    return re.sub(r"\s+", " ", text).strip()


# namespace/name references to one Kubernetes object (checkout/backup-etcd-2901) say which object, not what
# happened. A reference has a dash or a digit, or follows an object kind, so "read/write" and "and/or" stay.
OBJECT_REF = re.compile(r"(?<![\w/.-])(?:(\w+)\s+)?([a-z0-9][a-z0-9-]*/[a-z0-9][a-z0-9.-]*)(?![\w/])", re.I)
OBJECT_KINDS = frozenset(
    "pod job cronjob deployment statefulset daemonset replicaset service ingress pvc persistentvolumeclaim hpa".split()
)


def _drop_ref(m: re.Match[str]) -> str:
    before, ref = m.group(1), m.group(2)
    if re.search(r"[-\d]", ref) or (before or "").lower() in OBJECT_KINDS:
        return f"{before} " if before else " "
    return m.group(0)


def drop_object_refs(text: str) -> str:
    """Remove namespace/name object references: they name one instance, not the kind of problem."""
    return re.sub(r"\s+", " ", OBJECT_REF.sub(_drop_ref, text)).strip()


def spell_identifiers(text: str) -> str:
    """Replace CamelCase identifiers by their words: KubePodCrashLooping -> Kube Pod Crash Looping."""
    return WORD_RUN.sub(lambda m: " ".join(CAMEL_PART.findall(m[0])) if is_camel(m[0]) else m[0], text)


def normalize_query(text: str) -> str:
    """The form of a question or pasted alert that the encoder sees: what happened, not to which instance."""
    return dense_form(strip_volatile(text) or text.strip())


def dense_form(stripped: str) -> str:
    """``normalize_query`` of a text whose volatile tokens are already stripped."""
    return spell_identifiers(drop_object_refs(stripped) or stripped)


# Function words: they say nothing about which runbook is meant. Words that tell one alert from its sibling
# stay searchable: negations and quantifiers (not, no, any, some, all, few, more, only) and directions
# (down, up, out, off, over, under, before, after), as in NotReady, TargetDown, Some vs Any members down.
STOPWORDS = frozenset(
    """a about am an and are as at be because been being between both but by can could did do does doing
    during each for from further had has have having he her here hers herself him himself his how i if in
    into is it its itself just me my myself now of on or our ours ourselves she should so such than that the
    their theirs them themselves then there these they this those through to was we were what when where
    which while who whom why will with would you your yours yourself yourselves also get got may might must
    shall via per""".split()
)
WORD = re.compile(r"[^\W\d_][^\W_]+")  # a letter, then letters or digits, in any script: as the full-text index reads


def keyword_terms(text: str, stopwords: frozenset[str], limit: int = 24) -> list[str]:
    """Distinct lower-case search terms of a query, stopwords removed, in order of appearance."""
    seen: dict[str, None] = {}
    for word in WORD.findall(split_camel(text)):
        w = word.lower()
        if w not in stopwords and len(w) > 1:
            seen.setdefault(w, None)
    return list(seen)[:limit]


def parse_date(value: Any) -> datetime | None:
    """An ISO 8601 time (or a YAML datetime) as an aware datetime; naive means UTC; None when it is not one."""
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    try:
        parsed = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


# -- names -----------------------------------------------------------------------------------------

SERVICE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(?:/[A-Za-z0-9][A-Za-z0-9._-]*)*$")
SERVICE_NAME_MAX = 100


def service_name_problem(name: object) -> str | None:
    """Why ``name`` cannot name a service, or None when it can."""
    text = str(name)
    if len(text) > SERVICE_NAME_MAX or not SERVICE_NAME.match(text):
        return (
            f"service name {text[:SERVICE_NAME_MAX]!r}: use letters, digits, '.', '_' and '-', with '/' between "
            f"parts (like checkout-api or storage/remote), up to {SERVICE_NAME_MAX} characters"
        )
    return None


def linked_runbook(url: str, runbook_urls: dict[str, str]) -> tuple[str, str] | None:
    """The runbook (path) whose front-matter `url` is the page ``url`` links to, and the section anchor ``url``
    names (its #fragment, "" without one); None when no runbook has that url.

    Pages are compared by host, port and path (a trailing slash, the case of the host and http against https
    do not matter), and query string: the address a wiki gives a page, whichever way it was copied.
    """
    wanted, anchor = _page_key(url)
    if not wanted:
        return None
    for path, own in sorted(runbook_urls.items()):
        key, own_anchor = _page_key(own)
        if key == wanted:
            return path, anchor or own_anchor
    return None


def _page_key(url: str) -> tuple[str, str]:
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        return "", ""
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        return "", ""
    where = parts.hostname.lower() + (f":{port}" if port not in (None, 80, 443) else "")
    query = f"?{parts.query}" if parts.query else ""
    return f"{where}{parts.path.rstrip('/')}{query}", unquote(parts.fragment).lower()


def terminal_text(text: str) -> str:
    """``text`` for a terminal: what it would act on (an escape sequence, a right-to-left override) shown as a code,
    ``<U+001B>``, instead. For what the CLI prints of text others wrote; `opsbot shell` keeps its own colours."""
    return re.sub(TERMINAL_CONTROL, lambda m: f"<U+{ord(m[0]):04X}>", text)
