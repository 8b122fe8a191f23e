"""Deploy history commands: deploys, audit, dora (notify-deploy, which records a deploy, is in notify.py)."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any

import click

from bot.cli.base import _open_store, handle_errors, main, refuse_blank
from bot.errors import OpsbotError
from bot.text import terminal_text

log = logging.getLogger(__name__)


def _check_names(store: Any, service: str | None, env: str | None) -> None:
    """Refuse a --service or --env that neither services.yaml nor the deploy history knows."""
    configs = store.service_configs()
    history = store.deployed_names()  # not the rows: their output can run to gigabytes
    services = set(configs) | {name for name, _ in history}
    envs = {e for c in configs.values() for e in (c.get("environments") or {})} | {env for _, env in history}
    if service and service not in services:
        known = ", ".join(sorted(services)) or "none yet: add services to services.yaml and run `opsbot index`"
        raise OpsbotError(f"no service {service!r} in services.yaml or the deploy history; known services: {known}.")
    if env and envs and env not in envs:
        raise OpsbotError(f"no environment {env!r}; known environments: {', '.join(sorted(envs))}.")


def _when(value: str | None) -> str:
    return value.replace("T", " ")[:16] if value else "-"


def _took(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.1f} min"


def _status(request: Any, now: datetime) -> str:
    """The request's status as a reader needs it: a pending one past its expiry says so (`opsbot serve` ends it at
    its next sweep, or the next request for the environment does; until then it holds the lock)."""
    if request.flags:
        return f"{request.status} (flagged)"
    if request.status == "pending" and request.expires_at and datetime.fromisoformat(request.expires_at) <= now:
        return "pending, past its expiry"
    return request.status


def format_deploys_table(requests: list, names: dict[str, str], now: datetime | None = None) -> str:
    """A plain-text table of deploy requests, one per line, columns as wide as their longest value."""
    now = now or datetime.now(UTC)
    header = ("ID", "KIND", "SERVICE", "ENV", "FROM → TO", "STATUS", "REQUESTER", "APPROVERS", "STARTED", "DURATION")
    rows = [
        (
            r.id,
            r.kind,
            r.service,
            r.env,
            f"{r.from_version or '?'} → {r.version}",
            _status(r, now),
            names.get(r.requester, r.requester),
            ", ".join(names.get(a, a) for a in r.approvers) or "-",
            _when(r.started_at) if r.start_known else "-",
            _took(r.duration_s),
        )
        for r in requests
    ]
    widths = [max(len(str(row[n])) for row in [header, *rows]) for n in range(len(header))]
    return "\n".join(
        "  ".join(str(v).ljust(w) for v, w in zip(row, widths, strict=True)).rstrip() for row in [header, *rows]
    )


@main.command(name="deploys")
@click.option("--service", default=None, help="Only this service.")
@click.option("--env", default=None, help="Only this environment (staging, prod ...).")
@click.option("-n", "--limit", type=click.IntRange(1, 10000), default=20, show_default=True, help="How many requests.")
@click.option("--json", "as_json", is_flag=True, help="Print the requests as JSON.")
@click.option("--now", "standing", is_flag=True, help="Where --service stands instead: what runs in each environment.")
@click.pass_context
@handle_errors
def deploys_list(
    ctx: click.Context, service: str | None, env: str | None, limit: int, as_json: bool, standing: bool
) -> None:
    """List recent deploy and rollback requests, from Slack and from CI, newest first; or, with --now, where a
    service stands in each environment (as `/deploy SERVICE` in Slack).

    \b
    Example:
      opsbot deploys
      opsbot deploys --service checkout-api --env prod --limit 50
      opsbot deploys --json
      opsbot deploys --now --service checkout-api
    """
    from dataclasses import asdict

    from bot.ops.requests import recent_requests

    refuse_blank(ctx)
    if standing and not service:
        raise OpsbotError("--now needs --service NAME: where that service stands in each environment.")
    store = _open_store(ctx)
    if standing:
        try:
            _print_standing(store, service or "", env, as_json)
        finally:
            store.close()
        return
    try:
        _check_names(store, service, env)
        requests = recent_requests(store, service, env, limit)
        names = {e.id: e.name for e in store.load_experts()}
    finally:
        store.close()
    if as_json:
        click.echo(json.dumps([asdict(r) | {"duration_s": r.duration_s} for r in requests], indent=2))
        return
    if not requests:
        scope = " ".join(filter(None, [service, env]))
        click.echo(f"No deploy requests{' for ' + scope if scope else ''} yet.")
        return
    click.echo(format_deploys_table(requests, names))
    for r in requests:
        if r.flags:  # what a CI deploy broke: a freeze, someone else's lock
            click.echo(f"{r.id} flagged: {'; '.join(r.flags)}")


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print the audit trail as JSON.")
@click.option("--csv", "as_csv", is_flag=True, help="Print the audit trail as CSV (for a spreadsheet).")
@click.pass_context
@handle_errors
def audit(ctx: click.Context, as_json: bool, as_csv: bool) -> None:
    """Print the deploy audit trail: who requested, approved, rejected and ran what, and when.

    People are shown by their roster name; --json keeps their Slack ids (--csv has both).

    \b
    Example:
      opsbot audit
      opsbot audit --csv > audit.csv
      opsbot audit --json
    """
    import csv
    import io

    if as_json and as_csv:
        raise OpsbotError("choose one of --json and --csv.")
    store = _open_store(ctx)
    try:
        names = {e.id: e.name for e in store.load_experts()}
        rows = store.each_audit_row()  # every row, streamed: the trail is printed whole, however long
        if as_json:
            click.echo(json.dumps(list(rows), indent=2))
            return

        def who(user: object) -> str:
            """A roster id as the person's name; "ci:NAME" as a pipeline; anything else as recorded."""
            text = str(user)
            return f"CI ({text[3:]})" if text.startswith("ci:") else names.get(text, text)

        if as_csv:
            out = io.StringIO()
            writer = csv.writer(out, lineterminator="\n")
            writer.writerow(["at", "actor", "actor_name", "action", "request_id", "details"])
            for row in rows:
                details = json.dumps(row["details"], sort_keys=True)
                writer.writerow([row["at"], row["actor"], who(row["actor"]), row["action"], row["request_id"], details])
                click.echo(out.getvalue(), nl=False)
                out.seek(0)
                out.truncate()
            click.echo(out.getvalue(), nl=False)
            return
        empty = True
        for row in rows:
            empty = False
            details = " ".join(
                f"{k}={', '.join(map(who, v)) if isinstance(v, list) else who(v)}" for k, v in row["details"].items()
            )
            line = f"{row['at']}  {who(row['actor'])}  {row['action']}  {row['request_id']}  {details}".rstrip()
            click.echo(terminal_text(line))  # a reason typed in Slack may hold what a terminal would act on
        if empty:
            click.echo("The audit trail is empty: no deploy has been requested yet.")
    finally:
        store.close()


@main.command(name="dora")
@click.option("--service", default=None, help="Only this service (default: all).")
@click.option(
    "--env", default=None, help="The environment (default: services.yaml's settings.incident_env, normally prod)."
)
@click.option("--days", type=click.IntRange(1, 3650), default=30, show_default=True, help="The period, in days.")
@click.option("--json", "as_json", is_flag=True, help="Print the figures as JSON.")
@click.pass_context
@handle_errors
def dora_figures(ctx: click.Context, service: str | None, env: str | None, days: int, as_json: bool) -> None:
    """Show the four DORA figures: deploy frequency, change failure rate, time to restore, lead time.

    A change failed when its deploy failed, or a rollback or an incident on the service followed
    within the failure window (`failure_window_hours` in services.yaml, 24 by default).

    \b
    Example:
      opsbot dora
      opsbot dora --service checkout-api --days 90
      opsbot dora --env staging --json
    """
    from dataclasses import asdict

    from bot.ops.metrics import days_text, dora, duration_text
    from bot.services import ConfigProblem, parse_settings

    refuse_blank(ctx)
    store = _open_store(ctx)
    try:
        try:
            settings = parse_settings(json.loads(store.get_meta("deploy_settings") or "null"))
        except (ConfigProblem, ValueError) as exc:
            raise OpsbotError(
                f"the stored deploy settings cannot be read ({exc}); fix `settings:` in services.yaml and run "
                "`opsbot index`."
            ) from None
        env = env or settings.incident_env  # production, as incidents count it (prod unless set otherwise)
        _check_names(store, service, env)
        figures = dora(
            store,
            service=service,
            env=env,
            days=days,
            failure_window_hours=settings.failure_window_hours,
            incident_env=settings.incident_env,
        )
    finally:
        store.close()
    if as_json:
        extra = {
            "change_failure_rate": figures.change_failure_rate,
            "per_week": figures.per_week,
            "failure_window_hours": settings.failure_window_hours,
            "line": figures.line(),
        }
        click.echo(json.dumps(asdict(figures) | extra, indent=2))
        return
    click.secho(f"{service or 'All services'} in {env}, last {days_text(days)}", bold=True)
    click.echo(figures.line())
    click.echo(f"  deploys in the period: {figures.deploys_period} ({figures.per_week:.1f} a week)")
    click.echo(
        f"  changes: {figures.changes}, of which failed: {figures.failed_changes} (failed, rolled back, or the "
        f"last deploy before an incident of its service, within {settings.failure_window_hours} h)"
    )
    restore = "n/a" if figures.time_to_restore_min is None else duration_text(figures.time_to_restore_min)
    lead = "n/a" if figures.lead_time_h is None else duration_text(figures.lead_time_h * 60)
    click.echo(f"  time to restore (median of incidents and failed deploys): {restore}")
    click.echo(f"  lead time (median, commit to deploy): {lead}")


@main.command()
@click.argument("request_id")
@click.option("--reason", default="", help="Why, for the audit log and the request's message.")
@click.pass_context
@handle_errors
def withdraw(ctx: click.Context, request_id: str, reason: str) -> None:
    """Withdraw a deploy or rollback request that waits for approval: it is rejected, its lock released.

    For a request whose message is gone (typed in an `opsbot shell` since closed) or whose requester is away
    while it holds the service's lock. A request that waits for its pipeline's report (a webhook with
    await_report) is given up on instead: marked abandoned, its lock released; the pipeline is not stopped,
    and its report still settles the request if it comes. Nothing else can be withdrawn, so this never makes
    anything run. The audit log records it as withdrawn by cli:YOUR-LOGIN.

    \b
    Example:
      opsbot deploys --limit 5
      opsbot withdraw dep-20261206-7273cf --reason "typed in a shell session that was closed"
    """
    from bot.ops.deploys import DeployService

    if not request_id.strip():
        raise OpsbotError("give the request's id, as `opsbot deploys` lists it (dep-YYYYMMDD-xxxxxx).")
    store = _open_store(ctx)
    try:
        request = DeployService.from_store(store).withdraw(request_id.strip(), f"cli:{login()}", reason)
    finally:
        store.close()
    what = f"{request.id} ({request.kind} {request.service} {request.version} to {request.env})"
    if request.status == "abandoned":
        click.echo(
            f"Stopped waiting for the pipeline of {what}: it is abandoned and its lock released. The pipeline was "
            "not stopped; check it, and its report still settles the request if it comes."
        )
        return
    click.echo(f"Withdrew {what}; its lock is released and nothing will run.")


def login() -> str:
    """Who runs this command, as the system knows them (not $USER, which anyone can set): letters, digits, . _ -."""
    import os
    import re

    try:
        import pwd

        name = pwd.getpwuid(os.geteuid()).pw_name
    except (ImportError, KeyError, AttributeError):  # no passwd entry (a container's uid), or not Unix
        name = f"uid-{os.geteuid()}" if hasattr(os, "geteuid") else "unknown"
    return re.sub(r"[^A-Za-z0-9._-]", "_", name)[:64] or "unknown"


def _print_standing(store: Any, service: str, env: str | None, as_json: bool) -> None:
    """--now: per environment, what runs (the run that put it there), a failed run after it, the request holding
    the lock. Read only: a request past its expiry is shown so, not ended (`opsbot serve` or the next request does)."""
    from bot.ops.deploys import DeployService

    deploys = DeployService.from_store(store)
    states = deploys.where_things_stand(service, settle=False)
    if env:
        states = [s for s in states if s.env == env]
        if not states:
            raise OpsbotError(f"{service} has no environment {env!r}.")
    if as_json:

        def brief(r: Any) -> dict | None:
            return None if r is None else {"id": r.id, "version": r.version, "status": r.status, "kind": r.kind}

        shown = [
            {"env": s.env, "current": brief(s.current), "failed": brief(s.failed), "active": brief(s.active)}
            for s in states
        ]
        click.echo(json.dumps({"service": service, "environments": shown}, indent=2))
        return
    now = datetime.now(UTC)
    click.echo(f"{service}, by opsbot's record")
    for s in states:
        runs = (
            f"runs {s.current.version} ({s.current.id}, finished {_when(s.current.finished_at)} UTC)"
            if s.current
            else "nothing deployed by opsbot yet"
        )
        click.echo(f"  {s.env}: {runs}")
        if s.failed is not None:
            click.echo(
                f"    then {s.failed.version} {s.failed.status.replace('_', ' ')} ({s.failed.id}, "
                f"{_when(s.failed.finished_at)} UTC): it may be partly rolled out"
            )
        if s.active is not None:
            a = s.active
            who = deploys.names().get(a.requester, a.requester)
            click.echo(f"    {a.kind} of {a.version}: {_status(a, now)} ({a.id}, requested by {who})")
