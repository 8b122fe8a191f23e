"""What an answer shows: the relevance rule, judged per kind of document and in the ranker's order."""

from __future__ import annotations

from bot.answers.replies import relevant_hits
from bot.config import Settings
from bot.models import Answer, SearchHit


def hit(path: str, similarity: float, **kw: object) -> SearchHit:
    kind = "incident" if path.startswith("incidents/") else "runbook"
    score = float(kw.pop("score", 0.0))  # type: ignore[arg-type]
    return SearchHit(path, kind, path, "Summary", "", score, similarity=similarity, **kw)  # type: ignore[arg-type]


def shown(*hits: SearchHit) -> tuple[list[str], list[str]]:
    runbooks, incidents = relevant_hits(Answer("q", "q", hits, "hybrid"), Settings(min_similarity=0.35))
    return [h.path for h in runbooks], [h.path for h in incidents]


def test_an_incident_in_the_questions_own_words_does_not_hide_the_runbook_ranked_first() -> None:
    # The incident is far closer in meaning (it tells this very event); 0.7 of its 0.8 would hide the runbook.
    assert shown(hit("incidents/a.yaml", 0.8), hit("runbooks/oom.md", 0.45)) == (
        ["runbooks/oom.md"],
        ["incidents/a.yaml"],
    )


def test_a_lower_ranked_hit_closer_in_meaning_never_takes_the_first_ones_place() -> None:
    runbooks, _ = shown(hit("runbooks/first.md", 0.30), hit("runbooks/second.md", 0.60), hit("runbooks/third.md", 0.36))

    assert runbooks == ["runbooks/first.md", "runbooks/second.md"]  # third: below 0.7 of the best runbook


def test_nothing_above_the_floor_shows_nothing_and_marked_hits_stay() -> None:
    assert shown(hit("runbooks/a.md", 0.30), hit("incidents/b.yaml", 0.20)) == ([], [])
    assert shown(hit("runbooks/a.md", 0.10, alert="KubeJobFailed"), hit("runbooks/b.md", 0.20)) == (
        ["runbooks/a.md"],
        [],
    )
    assert shown(hit("runbooks/a.md", 0.60), hit("runbooks/b.md", 0.10, quoted=True))[0] == [
        "runbooks/a.md",
        "runbooks/b.md",
    ]


def learned(*hits: SearchHit) -> tuple[list[str], list[str]]:
    """As ``shown``, with the hits' scores being the fitted ranker's log-odds."""
    runbooks, incidents = relevant_hits(Answer("q", "q", hits, "hybrid", learned=True), Settings(min_similarity=0.35))
    return [h.path for h in runbooks], [h.path for h in incidents]


def test_an_incident_the_ranker_finds_far_less_likely_than_the_answer_is_left_out() -> None:
    quote = hit("runbooks/pool.md", 0.30, quoted=True, score=3.8)  # p 0.98
    vague = hit("incidents/oom.yaml", 0.35, score=-5.4)  # p 0.0045: 1/200 of the runbook's
    close = hit("incidents/pool.yaml", 0.35, score=-3.0)  # p 0.047: 1/21 of it

    assert learned(quote, vague) == (["runbooks/pool.md"], [])
    assert learned(quote, close, vague) == (["runbooks/pool.md"], ["incidents/pool.yaml"])
    # scores that are no ranker's (reciprocal-rank fusion before a fit) are not read as likelihoods
    assert shown(quote, vague) == (["runbooks/pool.md"], ["incidents/oom.yaml"])


def test_an_incident_the_question_names_and_runbooks_are_kept_however_unlikely() -> None:
    named = hit("incidents/inc-7.yaml", 0.20, alert="INC-2026-0007", score=-6.0)
    runbook = hit("runbooks/other.md", 0.50, score=-6.0)

    assert learned(hit("incidents/told.yaml", 0.8, score=4.0), runbook, named) == (
        ["runbooks/other.md"],
        ["incidents/told.yaml", "incidents/inc-7.yaml"],
    )


def test_a_placeholder_score_of_a_linked_runbook_is_not_read_as_the_rankers() -> None:
    linked = hit("runbooks/linked.md", 0.40, linked=True, score=0.0)  # put first by the alert's link, unscored
    real = hit("runbooks/real.md", 0.45, score=-2.0)  # p 0.12
    incident = hit("incidents/same-outage.yaml", 0.40, score=-5.0)  # p 0.0067: 1/18 of the real best

    runbooks, incidents = learned(linked, real, incident)

    assert (runbooks, incidents) == (["runbooks/linked.md", "runbooks/real.md"], ["incidents/same-outage.yaml"])
