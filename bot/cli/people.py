"""People commands: experts (who to pull in) and oncall (who is on call)."""

from __future__ import annotations

import json
import logging
from typing import Any

import click

from bot.cli.base import _open, _open_store, handle_errors, load_settings, main, refuse_blank
from bot.errors import InvalidRequest, OpsbotError

log = logging.getLogger(__name__)


@main.command()
@click.argument("text", nargs=-1, required=True)
@click.option("--service", "services", multiple=True, help="A service involved (repeatable).")
@click.option("-n", "limit", type=click.IntRange(1, 20), default=3, show_default=True, help="How many people.")
@click.option("--json", "as_json", is_flag=True, help="Print the suggestions as JSON.")
@click.pass_context
@handle_errors
def experts(ctx: click.Context, text: tuple[str, ...], services: tuple[str, ...], limit: int, as_json: bool) -> None:
    """Suggest who to pull in, with the reasons: similar incidents they resolved, ownership, skills.

    \b
    Example:
      opsbot experts "pgbouncer pool exhausted, checkout 503s" --service checkout-api
      opsbot experts --json "kafka consumer lag on orders"
      opsbot experts "same as INC-2025-0019 again"    # a past incident by its id: who resolved it, and the like
    """
    from bot.runtime import Runtime

    refuse_blank(ctx)
    if not " ".join(text).strip():
        raise OpsbotError('describe the problem, for example `opsbot experts "ALERT OR ERROR TEXT" --service NAME`.')
    settings = load_settings(ctx, one_shot=True)
    store, encoder = _open(settings, create=False)
    runtime = Runtime(settings, encoder=encoder, store=store)
    try:
        if not store.expert_count():
            raise OpsbotError("the roster is empty: add people to knowledge/experts.yaml and run `opsbot index`.")
        # Not remembered: an admin trying questions here would move people down in Slack's load spreading.
        suggestions = runtime.answers.suggest_experts(
            " ".join(text), list(services) or None, limit=limit, remember=False
        )
    finally:
        runtime.close()
    if as_json:
        click.echo(json.dumps([_suggestion_dict(s) for s in suggestions], indent=2))
        return
    if not suggestions:
        click.echo("Nobody matches: no similar past incidents, owners or skills. Name the service or paste the alert.")
    for n, s in enumerate(suggestions, start=1):
        flags = f"  [{'; '.join(s.flags)}]" if s.flags else ""
        click.secho(f"{n}. {s.expert.name} ({s.expert.id}, {s.expert.team})  score {s.score:.2f}{flags}", bold=True)
        for reason in s.reasons():
            click.echo(f"   - {reason}")


def _suggestion_dict(s: Any) -> dict:
    return {
        "id": s.expert.id,
        "name": s.expert.name,
        "team": s.expert.team,
        "score": s.score,
        "reasons": s.reasons(),
        "incidents": [
            {
                "id": i.id,
                "similarity": i.similarity,
                "main_resolver": i.main_resolver,
                "date": i.date.isoformat() if i.date else None,
            }
            for i in s.incidents
        ],
        "owns": list(s.owns),
        "skills": list(s.skills),
        "on_call": [{"team": shift.team, "until": shift.end.isoformat()} for shift in s.on_call],
        "last_resolved": s.last_resolved.isoformat() if s.last_resolved else None,
        "flags": list(s.flags),
    }


@main.command()
@click.argument("target", required=False, default="")
@click.option("--at", "at", default=None, metavar="WHEN", help="Ask about another time (ISO, e.g. 2026-12-24T20:00Z).")
@click.option("--person", default=None, metavar="NAME", help="One person's turns instead (a roster name or id).")
@click.option("--json", "as_json", is_flag=True, help="Print the answer as JSON.")
@click.pass_context
@handle_errors
def oncall(ctx: click.Context, target: str, at: str | None, person: str | None, as_json: bool) -> None:
    """Who is on call now and who is next: every rota, one team's, or the rota covering a service; or, with
    --person, when someone is on call (their turn now, if any, and their next).

    \b
    Example:
      opsbot oncall
      opsbot oncall payments
      opsbot oncall checkout-api --at 2026-12-24T20:00Z
      opsbot oncall --person "Daniel Okafor"
    """
    from datetime import UTC, datetime

    from bot.rota import Rota, asked_time, describe, parse_at

    refuse_blank(ctx)
    asked = None if at is None else parse_at(at)
    when, then = asked or datetime.now(UTC), asked_time(asked)
    if person is not None and target:
        raise OpsbotError("give a team or service, or --person, not both.")
    store = _open_store(ctx)
    try:
        rota = Rota.from_store(store)
        if person is not None:
            _print_turns(rota, person, when, as_json, then)
            return
        try:
            answers = rota.answer(target, when)
        except InvalidRequest:  # not a team or a service: someone's name (`opsbot oncall Daniel`)
            if not target or rota.person_named(target) is None:
                raise
            _print_turns(rota, target, when, as_json, then)
            return
    finally:
        store.close()
    names = {e.id: e.name for e in rota.experts}
    if as_json:
        click.echo(json.dumps([_oncall_dict(a) for a in answers], indent=2))
        return
    width = max(len(a.team) for a in answers)
    for answer in answers:
        now, following = describe(answer, names)
        click.echo(f"{answer.team:<{width}}  {now or 'nobody on call from the rota'}")
        if following:
            click.echo(f"{'':<{width}}  next: {following}")


def _oncall_dict(answer: Any) -> dict:
    def shift(s: Any) -> dict | None:
        if s is None:
            return None
        return {"person": s.person, "from": s.start.isoformat(), "until": s.end.isoformat(), "override": s.override}

    return {"team": answer.team, "timezone": answer.timezone, "now": shift(answer.now), "next": shift(answer.next)}


def _print_turns(rota: Any, person: str, when: Any, as_json: bool, then: str = "now") -> None:
    """--person: their turns on every rota that has them."""
    from bot.rota import describe_turns

    person_id = rota.person_named(person)
    if person_id is None:
        wanted = person.strip().removeprefix("@").strip().lower()
        close = sorted(e.name for e in rota.experts if wanted and wanted in e.name.lower())
        hint = f"; did you mean {' or '.join(close)}?" if close else "; give a name or an id from experts.yaml."
        raise OpsbotError(f"no one on the roster is called {person!r}{hint}")
    (expert,) = [e for e in rota.experts if e.id == person_id]
    turns = rota.turns(expert.id, when)
    if as_json:
        click.echo(json.dumps([_oncall_dict(t) | {"person": expert.id} for t in turns], indent=2))
        return
    if not turns:
        click.echo(f"{expert.name} ({expert.id}) is on no on-call rota in experts.yaml.")
        return
    width = max(len(t.team) for t in turns)
    click.echo(f"{expert.name} ({expert.id})")
    for t in turns:
        click.echo(f"  {t.team:<{width}}  {describe_turns(t, then)}")
