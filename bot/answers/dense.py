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
    chunk_sims: np.ndarray,
    doc_starts: np.ndarray,
    doc_norms: np.ndarray,
    matrix: np.ndarray,
    chunk_doc: np.ndarray,
    hidden: frozenset[int] = frozenset(),
) -> np.ndarray:
    """Cosine of the query with each document as a whole: the direction of the sum of its sections' vectors.

    A best section answers "is this said somewhere here"; the whole says what the document is about, which
    a question in other words than the runbook's matches better. The query's product with a sum of vectors
    is the sum of its products with each (``chunk_sims``, every section's cosine, none hidden), so no second
    pass over the vectors is made: ``doc_norms`` are the sums' lengths. ``hidden`` sections (a training
    query's own) are taken out of their document's sum.
    """
    dots, norms = np.add.reduceat(chunk_sims, doc_starts), doc_norms
    if hidden:
        positions = np.fromiter(hidden, dtype=np.int64, count=len(hidden))
        norms = norms.copy()
        ends = np.append(doc_starts[1:], len(chunk_sims))
        for d in np.unique(chunk_doc[positions]):
            kept = np.setdiff1d(np.arange(doc_starts[d], ends[d]), positions)
            dots[d] = chunk_sims[kept].sum()
            norms[d] = np.linalg.norm(matrix[kept].sum(axis=0))
    return np.divide(dots, norms, out=np.zeros_like(dots), where=norms > 0)
