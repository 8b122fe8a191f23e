"""What keyword search asks the full-text index: which of the query's words, and in which phrases."""

from __future__ import annotations

import re
from dataclasses import dataclass

from bot.text import STOPWORDS

FTS_TOKEN = re.compile(r"[^\W_]+")  # a word as the full-text index's tokenizer cuts it
WHOLE_QUERY_TERMS = 12  # longer queries (a pasted log excerpt) are not looked up whole: costly, and never quoted


@dataclass(frozen=True)
class Ranking:
    """How candidates are gathered; how they are ranked is learned (``ranker.py``)."""

    candidates: int = 200  # chunks fetched by keyword search
    max_terms: int = 16  # the rarest query words searched by keyword
    common_fraction: float = 0.1  # words in more than this share of sections are skipped ...
    common_floor: int = 200  # ... unless the index is so small that they are still rare in absolute terms
    min_section_words: int = 6  # shorter sections ("TODO", "See X") only echo the title: not section evidence
    near: int = 2  # how many words may stand between two adjacent query words for a phrase match
    bm25_weights: tuple[float, float, float] = (4.0, 2.0, 1.0)  # title, heading, body
    feedback_similarity: float = 0.75  # a vote on a question at least this close in meaning (cosine) counts for it


def select_terms(
    terms: list[str], counts: dict[str, int], size: int, common_fraction: float, common_floor: int, max_terms: int
) -> list[str]:
    """The query words worth a full-text lookup, in query order (``counts``: how many sections hold each).

    Words found nowhere cannot match; words found in more than ``common_fraction`` of the ``size``
    sections (and more than ``common_floor``) say little and cost the most to score. The rarest
    ``max_terms`` are kept, and at least two whatever their counts.
    """
    present = [t for t in terms if counts.get(t, 0) > 0]
    limit = max(common_fraction * max(size, 1), common_floor)
    selective = [t for t in present if counts[t] <= limit]
    if len(selective) < 2:
        selective = sorted(present, key=lambda t: counts[t])[:2]
    keep = set(sorted(selective, key=lambda t: counts[t])[:max_terms])
    return [t for t in present if t in keep]


def keyword_match(words: list[str], terms: list[str], near: int) -> str:
    """An FTS5 query for ``terms``, with adjacent query ``words`` that are both terms also as a near-phrase.

    "target discovery" standing together in a section is stronger evidence than the two words apart.
    """
    kept = set(terms)
    pairs = [f'NEAR("{a}" "{b}", {near})' for a, b in zip(words, words[1:], strict=False) if a in kept and b in kept]
    return " OR ".join([f'"{t}"' for t in terms] + pairs)


def whole_query_match(stripped: str) -> str:
    """An FTS5 query for every distinct word of the query within the query's own span, in any order ("" if none).

    A one-line alert summary is often a sentence of the runbook written for it; finding all of
    its words together is stronger evidence than finding them apart. Stopwords may differ, so
    the window is as long as the query's span in words, and the order is free.
    """
    tokens = [t.lower() for t in FTS_TOKEN.findall(stripped)]
    content = [i for i, t in enumerate(tokens) if t not in STOPWORDS and len(t) > 1 and not t.isdigit()]
    terms = list(dict.fromkeys(tokens[i] for i in content))
    if not 2 <= len(terms) <= WHOLE_QUERY_TERMS:
        return ""
    span = content[-1] - content[0] + 1
    return "NEAR(" + " ".join(f'"{t}"' for t in terms) + f", {span})"


def phrase_match(text: str) -> str:
    """An FTS5 query for ``text`` word for word, as a phrase in a heading or body ("" for fewer than two words).

    Punctuation and case do not count, and words match as the index stems them, as a reader would
    say two passages read the same.
    """
    tokens = [t.lower() for t in FTS_TOKEN.findall(text)]
    return '{heading body} : "' + " ".join(tokens) + '"' if len(tokens) >= 2 else ""
