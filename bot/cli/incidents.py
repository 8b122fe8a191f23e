"""Incident commands: incidents list, show and export."""

from __future__ import annotations

import json
import logging
import os
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from bot.cli.base import _open_store, existing, handle_errors, load_settings, main, open_db, refuse_blank
from bot.errors import OpsbotError
from bot.text import SLACK_MENTION, terminal_text

log = logging.getLogger(__name__)


@main.group()
def incidents() -> None:
    """Incidents declared in Slack with /incident: list them, export resolved ones as knowledge files.

    \b
    Example:
      opsbot incidents list --all
      opsbot incidents show INC-2026-0042
      opsbot incidents export INC-2026-0042
    """


@incidents.command(name="list")
@click.option("--all", "show_all", is_flag=True, help="Resolved incidents too, not only the open ones.")
@click.option("--json", "as_json", is_flag=True, help="Print the incidents, timelines included, as JSON.")
@click.pass_context
@handle_errors
def incidents_list(ctx: click.Context, show_all: bool, as_json: bool) -> None:
    """List incidents declared in Slack, newest first (only the open ones unless --all).

    \b
    Example:
      opsbot incidents list
      opsbot incidents list --all --json
    """
    from bot.ops.incidents import IncidentService

    store = _open_store(ctx)
    try:
        found = [i for i in IncidentService.from_store(store).list_all() if show_all or i.is_open]
    finally:
        store.close()
    if as_json:
        click.echo(json.dumps([_live_incident_dict(i) for i in found], indent=2))
        return
    if not found:
        click.echo("No incidents declared in Slack yet." if show_all else "No open incidents.")
    for i in found:
        state = f"resolved after {i.minutes_to_restore} min" if i.status == "resolved" else i.status
        services = ", ".join(i.services) or "no service"
        private = "  private" if i.private else ""
        line = f"{i.id}  SEV{i.severity}  {state}  {i.title}  [{services}]  {i.env}  declared {i.declared_at}{private}"
        click.echo(terminal_text(line))  # a title typed in Slack may hold what a terminal would act on


def _live_incident_dict(i: Any) -> dict:
    return {
        "id": i.id,
        "title": i.title,
        "severity": i.severity,
        "status": i.status,
        "services": list(i.services),
        "env": i.env,
        "declared_by": i.declared_by,
        "declared_at": i.declared_at,
        "channel": i.channel,
        "private": i.private,
        "roles": i.roles,
        "resolved_at": i.resolved_at or None,
        "resolution": i.resolution or None,
        "root_cause": i.root_cause or None,
        "minutes_to_restore": i.minutes_to_restore,
        "responders": list(i.responders),
        "timeline": [dict(e) for e in i.events],
    }


@incidents.command(name="show")
@click.argument("incident_id", metavar="ID")
@click.option("--json", "as_json", is_flag=True, help="Print the incident, timeline included, as JSON.")
@click.pass_context
@handle_errors
def incidents_show(ctx: click.Context, incident_id: str, as_json: bool) -> None:
    """Show one incident declared in Slack: its state, roles, resolution, root cause and whole timeline, as
    `/incident status` does, with people by their names (for a postmortem, or when Slack is out of reach).

    \b
    Example:
      opsbot incidents show INC-2026-0042
      opsbot incidents show INC-2026-0042 --json
    """
    from bot.ops.incidents import IncidentService

    refuse_blank(ctx)
    if not incident_id.strip():
        raise OpsbotError("the incident id is empty: give one like INC-2026-0042 (`opsbot incidents list --all`).")
    store = _open_store(ctx)
    try:
        incident = IncidentService.from_store(store).find(incident_id, "")
        names = {e.id: e.name for e in store.load_experts()}
    finally:
        store.close()
    if as_json:
        click.echo(json.dumps(_live_incident_dict(incident), indent=2))
        return
    for line in incident_lines(incident, names):
        click.echo(terminal_text(line))


def incident_lines(incident: Any, names: dict[str, str]) -> list[str]:
    """An incident as text for the terminal: people by name, Slack's mentions and escapes undone."""

    def who(person: str) -> str:
        return names.get(person, person)

    def plain(text: str) -> str:
        return SLACK_MENTION.sub(lambda m: who(m[1]), text)

    def when(at: str) -> str:
        return datetime.fromisoformat(at).astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC") if at else "?"

    if incident.status == "resolved":
        state = f"resolved at {when(incident.resolved_at)}, after {incident.minutes_to_restore} min"
    else:
        state = incident.status
    roles = ", ".join(f"{role} {who(person)}" for role, person in sorted(incident.roles.items())) or "none"
    private = "  (private)" if incident.private else ""
    lines = [
        f"{incident.id} · SEV{incident.severity} · {plain(incident.title)}{private}",
        f"Status: {state} · Environment: {incident.env} · Services: {', '.join(incident.services) or 'none'}",
        f"Declared by {who(incident.declared_by)} at {when(incident.declared_at)} · Roles: {roles}",
    ]
    if incident.resolution:
        lines.append(f"Resolution: {plain(incident.resolution)}")
    if incident.root_cause:
        lines.append(f"Root cause: {plain(incident.root_cause)}")
    lines += ["", "Timeline"]
    for event in incident.events:
        lines.append(f"  {when(event.get('at', ''))}  {who(event.get('actor', ''))}: {plain(event.get('text', ''))}")
    return lines


@incidents.command(name="export")
@click.argument("ids", nargs=-1)
@click.option(
    "--out",
    type=click.Path(file_okay=False),
    default=None,
    help="Folder for the files (default: incidents/<year>/ in the knowledge directory).",
)
@click.option("--force", is_flag=True, help="Overwrite a file that exists with other content.")
@click.option("--service", default=None, help="The service of incidents declared without one.")
@click.pass_context
@handle_errors
def incidents_export(
    ctx: click.Context, ids: tuple[str, ...], out: str | None, force: bool, service: str | None
) -> None:
    """Write resolved incidents as knowledge/incidents YAML files named <ID>.yaml (default: every resolved one).

    The files are what `opsbot index` reads, so the incidents stay searchable after the database is rebuilt.
    A file that exists with other content is left alone unless --force.

    \b
    Example:
      opsbot incidents export
      opsbot incidents export INC-2026-0042 --out /tmp/incidents --force
    """
    from dataclasses import replace

    from bot.ops.incident_writeup import export_yaml, to_incident
    from bot.ops.incidents import IncidentService

    refuse_blank(ctx)
    if any(not i.strip() for i in ids):  # an empty id would name no incident, or the channel's
        raise OpsbotError("an incident id is empty: give ids like INC-2026-0042, or none for every resolved one.")
    settings = load_settings(ctx)
    store = open_db(existing(settings.db_path))
    try:
        found = IncidentService.from_store(store)
        resolved = [i for i in found.list_all() if i.status == "resolved"]
        # A private incident is written only when named: a file in the knowledge directory is searched by all.
        chosen = [found.find(i, "") for i in ids] if ids else [i for i in resolved if not i.private]
        private = [] if ids else [i.id for i in resolved if i.private]
        known = set(store.service_configs()) | {s for e in store.load_experts() for s in e.services}
        known |= {s for i in [*store.load_incidents(), *found.list_all()] for s in i.services}
    finally:
        store.close()
    if service is not None and service not in known:
        names = ", ".join(sorted(known)) or "none yet: add services to services.yaml and run `opsbot index`"
        raise OpsbotError(f"unknown service {service!r} for --service; known services: {names}.")
    if service is not None and chosen and all(live.services for live in chosen):
        which = ", ".join(live.id for live in chosen) if ids else "every resolved incident"
        raise OpsbotError(
            f"--service is for incidents declared without a service, and {which} names one: leave --service out."
        )
    if not chosen and not private:
        click.echo("No resolved incidents to export.")
    problems: list[str] = []
    for live in chosen:
        if live.is_open:
            problems.append(f"{live.id} is still open: resolve it first (/incident resolve RESOLUTION).")
            continue
        if live.status == "cancelled":
            problems.append(f"{live.id} was cancelled (declared by mistake): there is nothing to export.")
            continue
        if not live.services and service:
            live = replace(live, services=(service,))
        elif not live.services:
            problems.append(f"{live.id} names no service, and incident files need one: add --service NAME.")
            continue
        incident = to_incident(live)
        folder = Path(out) if out else settings.knowledge_dir / "incidents" / str(incident.date.year)
        path = folder / f"{live.id}.yaml"
        text = export_yaml(incident)
        try:
            if path.exists():
                if path.read_bytes() == text.encode("utf-8"):  # bytes: a file that is not UTF-8 is other content
                    click.echo(f"{path}: unchanged")
                    continue
                if not force:
                    problems.append(f"{path} exists with other content; pass --force to overwrite it.")
                    continue
            folder.mkdir(parents=True, exist_ok=True)
            write_whole(path, text)
        except OSError as exc:
            problems.append(f"{path} could not be written ({exc.strerror or exc}); choose another --out folder.")
            continue
        click.echo(f"wrote {path}")
    if private:
        click.echo(
            f"left out {len(private)} incident(s) worked in a private channel ({', '.join(private)}): a file in the "
            "knowledge directory is searchable from every channel; name one to export it."
        )
    if problems:
        raise OpsbotError("\n  ".join([f"{len(problems)} incident(s) not exported:", *problems]))


def _umask() -> int:
    current = os.umask(0o022)  # read by setting it: put back at once
    os.umask(current)
    return current


def write_whole(path: Path, text: str) -> None:
    """Write ``path`` whole or not at all: a full disk or a kill midway leaves the file as it was, never half of it."""
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        # mkstemp makes it readable by its owner alone: give it the mode of the file it replaces, or a new file's
        # (a bot running as another user must still read the knowledge folder).
        os.chmod(temporary, path.stat().st_mode & 0o7777 if path.exists() else 0o666 & ~_umask())
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
