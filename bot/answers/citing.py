"""What an answer shows of a document: the section to cite, and a snippet of it."""

from __future__ import annotations

import bisect
import math
import re

from bot.models import SearchHit
from bot.store import StoredChunk
from bot.text import STOPWORDS, keyword_terms

SNIPPET_MARKUP = re.compile(r"```[\w+-]*|\*\*|__")  # code fences (with their language) and bold markers
# The section cited for a document: BM25 among that document's own sections (k1, b, as FTS5's own BM25),
# its heading counting twice its body: a heading names what the section is about.
CITE_BM25 = (1.2, 0.75)
CITE_HEADING_WEIGHT = 2.0


def local_keyword_scores(lengths: list[int], counts: list[dict[str, tuple[int, int]]], stems: list[str]) -> list[float]:
    """BM25 of the query's words over one document's sections, document frequencies counted among those sections.

    Which document to show is decided by the whole index; which of its sections to cite is a choice
    among its own sections. Words that stand in all of them (the service, the product) say little
    about that choice, while a word only one section has ("replay", "verify") says much. ``lengths``
    are the sections' word counts, ``counts`` each section's {stem: (in heading, in body)}.
    """
    k1, b = CITE_BM25
    n = len(lengths)
    if not n:
        return []
    lengths = [max(length, 1) for length in lengths]
    average = sum(lengths) / n
    frequency = {t: sum(1 for c in counts if t in c) for t in stems}
    scores = []
    for length, found in zip(lengths, counts, strict=True):
        score = 0.0
        for term, (heading, body) in found.items():
            if term not in frequency:
                continue
            tf = body + CITE_HEADING_WEIGHT * heading
            idf = math.log(1 + (n - frequency[term] + 0.5) / (frequency[term] + 0.5))
            score += idf * tf * (k1 + 1) / (tf + k1 * (1 - b + b * length / average))
        scores.append(score)
    return scores


def make_snippet(text: str, query: str, width: int = 240, stopwords: frozenset[str] = STOPWORDS) -> str:
    """A short window of ``text`` where the most query words stand together (the earliest such place).

    Code fences and bold markers are dropped: cut out of their block, a fence would turn the rest
    of a Slack message into code, and the excerpt is read as plain text on the command line too.
    """
    plain = SNIPPET_MARKUP.sub(lambda m: " " if m.group().startswith("`") else "", text)
    flat = re.sub(r"\s+", " ", plain).strip()
    if len(flat) <= width:
        return flat
    lower = flat.lower()
    terms = [t for t in keyword_terms(query, stopwords) if len(t) > 3]
    found = sorted((m.start(), t) for t in terms for m in re.finditer(re.escape(t), lower))
    best, first = 0, None
    reach = width * 3 // 4  # the window starts a little before the first word it shows
    for i, (position, _) in enumerate(found):
        end = bisect.bisect_left(found, (position + reach, ""), i)
        covered = len({t for _, t in found[i:end]})
        if covered > best:
            best, first = covered, position
    start = max(0, first - width // 4) if first is not None else 0
    start = flat.rfind(" ", 0, start) + 1 if start else 0
    piece = flat[start : start + width].rsplit(" ", 1)[0]
    return ("…" if start else "") + piece + "…"


def make_hit(
    chunk: StoredChunk,
    score: float,
    query: str,
    similarity: float,
    alert: str = "",
    quoted: bool = False,
    linked: bool = False,
) -> SearchHit:
    """The result shown for a document: ``chunk`` is the section cited, ``similarity`` the document's best cosine."""
    return SearchHit(
        path=chunk.doc_path,
        kind=chunk.kind,
        title=chunk.title,
        section=chunk.heading,
        snippet=make_snippet(chunk.text, query),
        score=round(float(score), 6),
        url=chunk.url,
        incident_id=chunk.incident_id,
        anchor=chunk.anchor,
        services=chunk.services,
        similarity=round(similarity, 4),
        alert=alert,
        quoted=quoted,
        linked=linked,
    )
