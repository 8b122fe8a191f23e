"""The expert model's logic on a made-up history (deterministic fake encoder): time, the fitted blend, who is
never suggested, the on-call lift. Ranking quality with the real model is in test_experts.py."""

from __future__ import annotations

import random
from datetime import UTC, date, datetime, timedelta

import numpy as np
import pytest

from bot.answers.expert_blend import FALLBACK_TEXT, Blends, reciprocal_ranks
from bot.answers.expert_fit import fit_blends
from bot.answers.experts import ExpertModel
from bot.answers.incident_vectors import embed_incidents
from bot.errors import InvalidRequest
from bot.models import Expert, Incident, Rotation
from tests.conftest import FakeEncoder

ANA, BEN, CAL, DIA = "U0ANA00001", "U0BEN00001", "U0CAL00001", "U0DIA00001"
GONE = "U0GONE0001"  # resolved incidents, not on the roster
START = datetime(2020, 1, 6, 10, 0, tzinfo=UTC)
HANDOVER = datetime(2022, 6, 1, tzinfo=UTC)  # Ana moved on; Ben has fixed the disks since
ASKED = datetime(2025, 1, 15, 12, 0, tzinfo=UTC)
DISK = "disk full on the storage node, no space left on device: {words}"
CSS = "stylesheet broken, buttons overlap in the checkout layout: {words}"
DETAILS = "writes volume inode quota log rotation backup snapshot compaction replica mount journal cache".split()
PEOPLE = [
    Expert(ANA, "Ana", "storage"),
    Expert(BEN, "Ben", "storage"),
    Expert(CAL, "Cal", "web", services=("web-ui",)),
    Expert(DIA, "Dia", "storage", left=date(2023, 1, 1)),
]


def history(weeks: int = 250) -> list[Incident]:
    """Weekly incidents: disks fixed by Ana (with Dia) until the handover, by Ben after; the web by Cal."""
    rng = random.Random(7)
    incidents = []
    for n in range(weeks):
        when = START + timedelta(days=7 * n)
        words = " ".join(rng.sample(DETAILS, 3))
        if n % 2:
            text, services, who = CSS.format(words=words), ("web-ui",), (CAL,)
        elif when < HANDOVER:
            text, services, who = DISK.format(words=words), ("storage",), (ANA, DIA) if n % 4 == 0 else (ANA,)
        else:
            text, services, who = DISK.format(words=words), ("storage",), (BEN, GONE) if n % 6 == 0 else (BEN,)
        incidents.append(
            Incident(f"INC-{when.year}-{n:04d}", text, when, 3, services, who, text, "", "fixed", f"i/{n}.yaml")
        )
    return incidents


def model_of(incidents: list[Incident], rotations: list[Rotation] | None = None, fit: bool = True) -> ExpertModel:
    encoder = FakeEncoder()
    model = ExpertModel(PEOPLE, incidents, embed_incidents(incidents, encoder), rotations=rotations or [])
    if fit:
        model.blends = fit_blends(model)
    return model


def ask(model: ExpertModel, text: str, services: list[str] | None = None, **kwargs: object) -> list:
    return model.rank(text, FakeEncoder().encode([text])[0], services, now=ASKED, **kwargs)


@pytest.fixture(scope="module")
def fitted() -> ExpertModel:
    return model_of(history())


def test_the_blend_is_fitted_on_the_teams_own_history_and_learns_that_expertise_moves(fitted: ExpertModel) -> None:
    blends = fitted.blends
    assert blends.fitted and blends.note.startswith("fitted on 250 incidents: each of the newest 40%")
    # The disk fixer changed: only a finite half-life gets the newer incidents right.
    assert blends.text.half_life_days > 0 and blends.services.half_life_days > 0
    assert blends.validation["text"]["queries"] == 100 and blends.validation["text"]["top1"] > 0.9
    assert (
        abs(
            sum(
                getattr(blends.text, s)
                for s in ("similarity", "words", "recency", "service_history", "ownership", "skills", "on_call")
            )
            - 1
        )
        < 0.01
    )


def test_recent_resolvers_first_and_stale_ones_flagged_with_dates(fitted: ExpertModel) -> None:
    ranked = ask(fitted, "disk full on a storage node, no space left on device")
    assert ranked[0].expert.id == BEN
    assert ranked[0].last_resolved is not None and ranked[0].last_resolved.year == 2024
    ana = next(s for s in ranked if s.expert.id == ANA)  # far below Ben, and flagged with when she last fixed one
    assert ana.score < ranked[0].score / 10
    assert "last resolved something similar 32 months ago (2022-05-23)" in ana.flags
    assert ranked[0].reasons()[0].startswith("resolved INC-2024-0248 (0.87, Oct 2024), ")
    assert not ranked[0].flags  # three months ago is recent


def test_people_who_left_and_responders_missing_from_the_roster_are_never_suggested(fitted: ExpertModel) -> None:
    for services in (None, ["storage"]):
        ids = [s.expert.id for s in ask(fitted, "disk full on the storage node", services)]
        assert DIA not in ids and GONE not in ids
    # Before she left, Dia is a candidate like anyone else.
    before = fitted.rank("disk full on the storage node", FakeEncoder().encode(["disk full"])[0], now=HANDOVER)
    assert DIA in [s.expert.id for s in before]


def test_the_asker_is_never_suggested_to_themselves(fitted: ExpertModel) -> None:
    ranked = ask(fitted, "disk full on the storage node", exclude=(BEN,))
    assert BEN not in [s.expert.id for s in ranked] and ranked


def test_whoever_is_on_call_for_the_service_is_flagged_and_lifted() -> None:
    # Ana's week from Mon 13 Jan (her second turn); the rota covers the storage service.
    rota = Rotation("storage", (ANA, BEN), 0, "09:00", "UTC", date(2024, 12, 30), services=("storage",))
    model = model_of(history(), rotations=[rota])
    ranked = ask(model, "disk full on the storage node", ["storage"])
    ana = next(s for s in ranked if s.expert.id == ANA)
    assert [shift.person for shift in ana.on_call] == [ANA]
    assert ana.reasons()[0] == "on call for storage until Mon 20 Jan 09:00 UTC"
    without = ask(model_of(history()), "disk full on the storage node", ["storage"])
    before = next((s.score for s in without if s.expert.id == ANA), 0.0)
    assert ana.score > before
    # A problem on another service does not lift the storage rota.
    assert not any(s.on_call for s in ask(model, "stylesheet broken, buttons overlap", ["web-ui"]))


def test_a_small_history_keeps_the_documented_fallback() -> None:
    model = model_of(history(40))
    assert not model.blends.fitted
    assert model.blends.text == FALLBACK_TEXT
    assert model.blends.note == (
        "fallback weights: 40 incidents give 16 newer ones with a roster responder to validate on, fewer than 30"
    )


def test_a_signal_that_never_fires_keeps_its_fallback_weight(fitted: ExpertModel) -> None:
    # Nobody lists skills and there is no rota: the fit cannot measure them, so their ratio stays the fallback's.
    text = fitted.blends.text
    assert text.skills > 0 and text.on_call > 0
    assert text.skills / text.on_call == pytest.approx(FALLBACK_TEXT.skills / FALLBACK_TEXT.on_call, rel=1e-3)


def test_blends_survive_a_round_trip_through_json(fitted: ExpertModel) -> None:
    again = Blends.from_json(fitted.blends.to_json())
    assert again == fitted.blends
    assert Blends.from_json("{}") is None and Blends.from_json("not json") is None


def test_a_tie_counts_against_the_relevant_person_and_a_zero_score_is_not_ranked() -> None:
    scores = np.array([[0.5, 0.5, 0.1], [0.0, 0.3, 0.2], [0.4, 0.9, 0.1]])
    relevant = np.array([[True, False, False], [True, False, False], [False, False, True]])
    candidates = np.array([[True, True, True], [True, True, True], [True, False, True]])
    assert reciprocal_ranks(scores, relevant, candidates).tolist() == [0.5, 0.0, 0.5]


def test_an_unknown_service_names_the_closest_ones_not_all() -> None:
    many = [
        Incident(f"INC-2024-{n:04d}", "x", START, 3, (f"service-{n:02d}",), (ANA,), "x", "", "", f"{n}.yaml")
        for n in range(30)
    ]
    model = model_of(many, fit=False)
    with pytest.raises(InvalidRequest) as error:
        ask(model, "slow", ["servce-07"])
    assert str(error.value) == (
        "unknown service 'servce-07'; did you mean service-07 or service-27 or service-20? "
        "31 services are known (services.yaml, the roster and past incidents)."
    )
