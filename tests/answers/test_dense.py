"""Dense evidence per document: the best section, and the document as a whole with a hidden section taken out."""

from __future__ import annotations

import numpy as np

from bot.answers.dense import document_scores, section_scores


def unit(*values: float) -> np.ndarray:
    v = np.asarray(values, dtype=np.float32)
    return v / np.linalg.norm(v)


def test_a_document_as_a_whole_is_the_direction_of_its_sections_and_a_hidden_one_leaves_it() -> None:
    # Document 0: a section about the query's subject and one beside it; document 1: one section half-way.
    matrix = np.stack([unit(1, 0, 0), unit(0, 1, 0), unit(1, 1, 0)])
    chunk_doc = np.asarray([0, 0, 1])
    starts = np.asarray([0, 2])
    sums = np.add.reduceat(matrix, starts, axis=0)
    norms = np.linalg.norm(sums, axis=1)
    query = unit(1, 0, 0)
    sims = matrix @ query

    whole = document_scores(sims, starts, norms, matrix, chunk_doc)
    hidden = document_scores(sims, starts, norms, matrix, chunk_doc, frozenset({0}))

    assert np.allclose(whole, [np.sqrt(0.5), np.sqrt(0.5)], atol=1e-6)  # (1,1,0) both, in direction
    assert np.allclose(hidden, [0.0, np.sqrt(0.5)], atol=1e-6)  # only the other section of document 0 is left
    assert np.allclose(norms, np.linalg.norm(sums, axis=1))  # the index's own norms are not changed
    assert np.allclose(sims, matrix @ query)  # nor the cosines


def test_a_document_scores_as_the_cosine_with_the_sum_of_its_sections_with_any_hidden_left_out() -> None:
    rng = np.random.default_rng(3)
    matrix = rng.standard_normal((9, 16)).astype(np.float32)
    matrix /= np.linalg.norm(matrix, axis=1, keepdims=True)
    starts = np.asarray([0, 3, 4, 8])
    chunk_doc = np.repeat(np.arange(4), np.diff(np.append(starts, 9)))
    query = matrix[5] + 0.5 * matrix[1]
    query /= np.linalg.norm(query)
    hidden = frozenset({1, 5, 6})
    scores = document_scores(
        matrix @ query, starts, np.linalg.norm(np.add.reduceat(matrix, starts), axis=1), matrix, chunk_doc, hidden
    )
    for d, (start, end) in enumerate(zip(starts, [3, 4, 8, 9], strict=True)):
        kept = [p for p in range(start, end) if p not in hidden]
        whole = matrix[kept].sum(axis=0)
        assert abs(scores[d] - whole @ query / np.linalg.norm(whole)) < 1e-5


def test_a_document_whose_every_section_is_hidden_scores_zero_and_a_stub_counts_only_alone() -> None:
    matrix = np.stack([unit(1, 0), unit(0, 1)])
    starts = np.asarray([0, 1])
    norms = np.linalg.norm(np.add.reduceat(matrix, starts, axis=0), axis=1)
    scores = document_scores(matrix @ unit(1, 0), starts, norms, matrix, np.asarray([0, 1]), frozenset({0}))
    assert scores[0] == 0.0 and abs(scores[1]) < 1e-6

    sims = np.asarray([0.9, 0.2, 0.4], dtype=np.float32)
    stub = np.asarray([True, False, True])
    # Document 0 (sections 0 and 1) is judged by its real section; document 1 has only a stub, which stands.
    assert np.allclose(section_scores(sims, stub, np.asarray([0, 2])), [0.2, 0.4])
