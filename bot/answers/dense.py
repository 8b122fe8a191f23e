"""Dense evidence per document, from the cosines of the query with every section and the documents' vectors."""

from __future__ import annotations

import numpy as np

STUB = -2.0  # below any cosine: a stub section's place when the document has others


def section_scores(chunk_sims: np.ndarray, stub: np.ndarray, doc_starts: np.ndarray) -> np.ndarray:
    """Per document, its best section's similarity, not counting stub sections.

    A section of a few words ("TODO", "See the disk runbook") embeds as little more than
    its title, which already has a ranking of its own. A document made only of stubs keeps them.
    """
    best = np.maximum.reduceat(np.where(stub, STUB, chunk_sims), doc_starts)
    if (best <= STUB).any():
        best = np.where(best <= STUB, np.maximum.reduceat(chunk_sims, doc_starts), best)
    return best


def document_scores(
    qv: np.ndarray,
    doc_sums: np.ndarray,
    doc_norms: np.ndarray,
    matrix: np.ndarray,
    chunk_doc: np.ndarray,
    hidden: frozenset[int] = frozenset(),
) -> np.ndarray:
    """Cosine of the query with each document as a whole: the direction of the sum of its sections' vectors.

    A best section answers "is this said somewhere here"; the whole says what the document is about, which
    a question in other words than the runbook's matches better. ``hidden`` sections (a training query's
    own) are taken out of their document's sum.
    """
    dots, norms = doc_sums @ qv, doc_norms
    if hidden:
        positions = np.fromiter(hidden, dtype=np.int64, count=len(hidden))
        norms = norms.copy()
        for d in np.unique(chunk_doc[positions]):
            rest = doc_sums[d] - matrix[positions[chunk_doc[positions] == d]].sum(axis=0)
            dots[d], norms[d] = rest @ qv, np.linalg.norm(rest)
    return np.divide(dots, norms, out=np.zeros_like(dots), where=norms > 0)
