"""Fitting the expert model's blend on a team's own history, at index time, and keeping it in the store.

The fit itself (signals, grid, score) is in ``bot.answers.expert_blend``; here the questions are made from the
model's incidents (each newer incident asked against the older ones) and the result is stored with a
fingerprint of the history it was fitted on, so `opsbot index` fits again only when that changed.
"""

from __future__ import annotations

import logging
import sqlite3
import time

import numpy as np

from bot.answers.encoder import Encoder
from bot.answers.expert_blend import (
    FALLBACK_SERVICES,
    FALLBACK_TEXT,
    FOLDS,
    MIN_VALIDATION,
    Blends,
    Questions,
    fit_blend,
    idle_days,
    service_overlap,
)
from bot.answers.experts import ExpertModel, question_words, train
from bot.answers.incident_vectors import WordIndex, incident_vector_hash, incident_words
from bot.models import Expert, Incident, Rotation
from bot.store.base import is_write_failure
from bot.text import content_hash

log = logging.getLogger(__name__)


def validation_questions(model: ExpertModel, start: float, end: float, with_services: bool) -> Questions | None:
    """The incidents between the ``start`` and ``end`` shares of the history (oldest first) as questions
    against all older ones; None when there is nothing to ask."""
    order = sorted(range(len(model.incidents)), key=lambda i: (model.days[i], model.incidents[i].id))
    train, asked = order[: int(len(order) * start)], order[int(len(order) * start) : int(len(order) * end)]
    asked = [i for i in asked if any(r in model.column for r in model.incidents[i].responders)]
    if not train or not asked:
        return None
    texts = [f"{model.incidents[i].title}. {model.incidents[i].summary}" for i in asked]
    words = WordIndex([incident_words(model.incidents[i]) for i in train]).similarity(list(map(question_words, texts)))
    involved = []
    fixed = np.zeros((len(asked), len(model.experts), 3))
    candidates = np.ones((len(asked), len(model.experts)), dtype=bool)
    relevant = np.zeros((len(asked), len(model.experts)), dtype=bool)
    for row, (i, text) in enumerate(zip(asked, texts, strict=True)):
        incident = model.incidents[i]
        named = set(model.services_in(text)) | (set(incident.services) if with_services else set())
        involved.append(named)
        fixed[row] = model.fixed_signals(text, sorted(named), incident.date)[0]
        for n, expert in enumerate(model.experts):
            candidates[row, n] = not expert.has_left(incident.date)
        for person in incident.responders:
            if person in model.column:
                relevant[row, model.column[person]] = True
    idle = idle_days(model.roles[train], model.days[train], model.days[asked])
    questions = Questions(
        dense=(model.vectors[asked] @ model.vectors[train].T).astype(np.float64),
        words=words,
        now_days=model.days[asked],
        incident_days=model.days[train],
        roles=model.roles[train],
        overlap=service_overlap(involved, [model.incident_services[i] for i in train]),
        fixed=fixed,
        idle=idle,
        relevant=relevant,
        candidates=candidates,
    )
    return questions


def fit_blends(model: ExpertModel, basis: str = "") -> Blends:
    """Fit the blends on time splits of the model's own incidents (see expert_blend), or keep the fallback."""
    text_folds = [f for f in (validation_questions(model, a, b, False) for a, b in FOLDS) if f is not None]
    asked = sum(int(f.relevant.shape[0]) for f in text_folds)
    if asked < MIN_VALIDATION:
        note = (
            f"fallback weights: {len(model.incidents)} incidents give {asked} newer ones with a roster responder "
            f"to validate on, fewer than {MIN_VALIDATION}"
        )
        return Blends(basis=basis, note=note)
    service_folds = [f for f in (validation_questions(model, a, b, True) for a, b in FOLDS) if f is not None]
    text, text_result = fit_blend(text_folds, FALLBACK_TEXT)
    services, services_result = fit_blend(service_folds, FALLBACK_SERVICES)
    note = (
        f"fitted on {len(model.incidents)} incidents: each of the newest {round((1 - FOLDS[0][0]) * 100)}% "
        f"({asked} with a roster responder) asked against all older ones"
    )
    return Blends(text, services, True, basis, note, {"text": text_result, "services": services_result})


BLENDS_META = "expert_blends"  # the fitted blends, as JSON, with the basis they were fitted on


def history_basis(
    model_id: str,
    incidents: list[Incident],
    experts: list[Expert],
    service_owners: dict[str, list[str]],
    service_teams: dict[str, str],
    rotations: list[Rotation],
) -> str:
    """A fingerprint of everything the blends are fitted on: incidents, roster, ownership, rotas, the model."""
    parts = (
        model_id,
        [(i.id, i.date.isoformat(), i.responders, i.services, incident_vector_hash(i)) for i in incidents],
        experts,
        sorted(service_owners.items()),
        sorted(service_teams.items()),
        rotations,
    )
    return content_hash(repr(parts))


def load_model(store: object, encoder: Encoder) -> ExpertModel:
    """The expert model on what ``store`` holds, with the blends `opsbot index` fitted (fitted now if none are)."""
    model = train(
        store.load_experts(),
        store.load_incidents(),
        encoder,
        store.service_owners(),
        store=store,
        blends=Blends(),
        rotations=store.load_rotations(),
        service_teams=store.service_teams(),
    )
    stored = Blends.from_json(store.get_meta(BLENDS_META))
    if stored is not None:
        # Fitted on the history at the last `opsbot index`: an incident resolved in Slack since changes little.
        model.blends = stored
        return model
    basis = history_basis(
        encoder.model_id, model.incidents, model.experts, model.service_owners, model.service_teams, model.rotations
    )
    model.blends = fit_blends(model, basis)
    try:
        store.set_meta(BLENDS_META, model.blends.to_json())
    except sqlite3.OperationalError as exc:
        if not is_write_failure(exc):
            raise
        # Suggestions still use the fit; the next start fits again.
        log.warning("expert blends not saved reason=%s", exc)
    return model


def refit_blends(store: object, encoder: Encoder) -> Blends | None:
    """At index time: fit the blends on the stored history when it changed since the last fit; None: no roster."""
    experts = store.load_experts()
    if not experts:
        return None
    incidents, owners, teams, rotations = (
        store.load_incidents(),
        store.service_owners(),
        store.service_teams(),
        store.load_rotations(),
    )
    basis = history_basis(encoder.model_id, incidents, experts, owners, teams, rotations)
    stored = Blends.from_json(store.get_meta(BLENDS_META))
    if stored is not None and stored.basis == basis:
        return stored
    started = time.perf_counter()
    model = train(experts, incidents, encoder, owners, store, Blends(), rotations, teams)
    blends = fit_blends(model, basis)
    store.set_meta(BLENDS_META, blends.to_json())
    log.info(
        "expert blends fitted fitted=%s seconds=%.2f note=%s", blends.fitted, time.perf_counter() - started, blends.note
    )
    return blends
