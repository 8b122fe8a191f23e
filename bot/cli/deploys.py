"""Deploy commands: deploys, audit, dora, notify-deploy."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import click

from bot.cli.base import _open_store, handle_errors, main, open_db, refuse_blank
from bot.config import Settings
from bot.errors import OpsbotError

log = logging.getLogger(__name__)


def _check_names(store: Any, service: str | None, env: str | None) -> None:
    """Refuse a --service or --env that neither services.yaml nor the deploy history knows."""
    configs = store.service_configs()
    history = store.all_deploys()
    services = set(configs) | {r["service"] for r in history}
    envs = {e for c in configs.values() for e in (c.get("environments") or {})} | {r["env"] for r in history}
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


def format_deploys_table(requests: list, names: dict[str, str]) -> str:
    """A plain-text table of deploy requests, one per line, columns as wide as their longest value."""
    header = ("ID", "KIND", "SERVICE", "ENV", "FROM → TO", "STATUS", "REQUESTER", "APPROVERS", "STARTED", "DURATION")
    rows = [
        (
            r.id,
            r.kind,
            r.service,
            r.env,
            f"{r.from_version or '?'} → {r.version}",
            f"{r.status} (flagged)" if r.flags else r.status,
            names.get(r.requester, r.requester),
            ", ".join(names.get(a, a) for a in r.approvers) or "-",
            _when(r.started_at),
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
@click.pass_context
@handle_errors
def deploys_list(ctx: click.Context, service: str | None, env: str | None, limit: int, as_json: bool) -> None:
    """List recent deploy and rollback requests, from Slack and from CI, newest first.

    \b
    Example:
      opsbot deploys
      opsbot deploys --service checkout-api --env prod --limit 50
      opsbot deploys --json
    """
    from dataclasses import asdict

    from bot.ops.requests import recent_requests

    refuse_blank(ctx)
    store = _open_store(ctx)
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
        rows = store.audit_rows()
    finally:
        store.close()
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if as_csv:
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(["at", "actor", "action", "request_id", "details"])
        for row in rows:
            details = json.dumps(row["details"], sort_keys=True)
            writer.writerow([row["at"], row["actor"], row["action"], row["request_id"], details])
        click.echo(out.getvalue(), nl=False)
        return
    if not rows:
        click.echo("The audit trail is empty: no deploy has been requested yet.")
    for row in rows:
        details = " ".join(
            f"{k}={','.join(map(str, v)) if isinstance(v, list) else v}" for k, v in row["details"].items()
        )
        click.echo(f"{row['at']}  {row['actor']}  {row['action']}  {row['request_id']}  {details}".rstrip())


@main.command(name="dora")
@click.option("--service", default=None, help="Only this service (default: all).")
@click.option("--env", default="prod", show_default=True, help="The environment.")
@click.option("--days", type=click.IntRange(1, 3650), default=30, show_default=True, help="The period, in days.")
@click.option("--json", "as_json", is_flag=True, help="Print the figures as JSON.")
@click.pass_context
@handle_errors
def dora_figures(ctx: click.Context, service: str | None, env: str, days: int, as_json: bool) -> None:
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

    from bot.ops.metrics import dora
    from bot.services import ConfigProblem, parse_settings

    refuse_blank(ctx)
    store = _open_store(ctx)
    try:
        _check_names(store, service, env)
        try:
            settings = parse_settings(json.loads(store.get_meta("deploy_settings") or "null"))
        except (ConfigProblem, ValueError) as exc:
            raise OpsbotError(
                f"the stored deploy settings cannot be read ({exc}); fix `settings:` in services.yaml and run "
                "`opsbot index`."
            ) from None
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
    click.secho(f"{service or 'All services'} in {env}, last {days} days", bold=True)
    click.echo(figures.line())
    click.echo(f"  deploys in the period: {figures.deploys_period} ({figures.per_week:.1f} a week)")
    click.echo(
        f"  changes: {figures.changes}, of which failed: {figures.failed_changes} (failed, rolled back, or followed "
        f"by an incident within {settings.failure_window_hours} h)"
    )
    restore = "n/a" if figures.time_to_restore_min is None else f"{figures.time_to_restore_min:.0f} min"
    lead = "n/a" if figures.lead_time_h is None else f"{figures.lead_time_h:.1f} h"
    click.echo(f"  time to restore (median of incidents and failed deploys): {restore}")
    click.echo(f"  lead time (median, commit to deploy): {lead}")


@main.command(name="notify-deploy")
@click.option("--service", required=True, help="The service deployed (as named in services.yaml).")
@click.option("--env", required=True, help="The environment, e.g. prod.")
@click.option("--version", "version", required=True, help="The version deployed.")
@click.option(
    "--status",
    type=click.Choice(["started", "succeeded", "failed", "rolled_back"]),
    default="succeeded",
    show_default=True,
    help="started when the pipeline begins; succeeded, failed or rolled_back when it ends.",
)
@click.option("--event-id", default=None, help="Unique per event; a replay is ignored (default: a random id).")
@click.option("--commit-sha", default=None, help="The commit deployed.")
@click.option("--commit-time", default=None, help="When it was committed (ISO 8601): DORA lead time.")
@click.option("--started-at", default=None, help="When the deploy started (ISO 8601; default now).")
@click.option("--finished-at", default=None, help="When it finished (ISO 8601; default now).")
@click.option("--actor", default=None, help="Who triggered the pipeline.")
@click.option("--pipeline-url", default=None, help="Link to the pipeline run.")
@click.option("--change", "changes", multiple=True, help="One change shipped (repeatable).")
@click.option("--url", default=None, help="The hook URL (default $OPSBOT_HOOK_URL): http://HOST:3000/hooks/deploy.")
@click.option(
    "--db",
    "db_path",
    type=click.Path(dir_okay=False),
    default=None,
    help="Record straight into this opsbot database instead (no Slack message).",
)
@click.pass_context
@handle_errors
def notify_deploy(
    ctx: click.Context,
    service: str,
    env: str,
    version: str,
    status: str,
    event_id: str | None,
    commit_sha: str | None,
    commit_time: str | None,
    started_at: str | None,
    finished_at: str | None,
    actor: str | None,
    pipeline_url: str | None,
    changes: tuple[str, ...],
    url: str | None,
    db_path: str | None,
) -> None:
    """Report a deploy from CI/CD: signs the event with $OPSBOT_HOOK_SECRET and POSTs it to opsbot.

    Send --status started when the pipeline begins deploying and succeeded, failed or rolled_back
    when it ends (same service, env and version): opsbot posts the progress and the summary in Slack,
    and the deploy counts in `opsbot deploys` and `opsbot dora`. With --db the event is recorded
    straight into a database file instead, without Slack.

    \b
    Example:
      export OPSBOT_HOOK_URL=http://opsbot.internal:3000/hooks/deploy OPSBOT_HOOK_SECRET=...
      opsbot notify-deploy --service checkout-api --env prod --version 1.4.2 --status started
      opsbot notify-deploy --service checkout-api --env prod --version 1.4.2 --status succeeded \\
        --commit-sha 3f9c2e1 --commit-time 2026-11-20T09:12:00Z --change "Retry card auth once"
      opsbot notify-deploy --db opsbot.db --service checkout-api --env prod --version 1.4.2
    """
    import http.client
    import urllib.error
    import urllib.request

    from bot.ops.ci_events import SIGNATURE_HEADER, TIMESTAMP_HEADER, build_event, sign

    # Empty metadata (--commit-sha "$SHA" with SHA unset) means "not known"; these would silently change meaning.
    refuse_blank(ctx, "service", "env", "version", "event_id", "url", "db_path")
    if db_path is not None and url is not None:
        raise OpsbotError("--db records into a database instead of sending to --url: give one of them.")
    if status == "started" and finished_at:
        raise OpsbotError("--finished-at is for the event that ends the deploy: leave it out of --status started.")
    event = build_event(
        service,
        env,
        version,
        status,
        event_id,
        commit_sha=commit_sha,
        commit_time=commit_time,
        started_at=started_at,
        finished_at=finished_at,
        actor=actor,
        pipeline_url=pipeline_url,
        changes=list(changes),
    )
    body = json.dumps(event).encode()
    if db_path is not None:
        answer = _record_event_locally(Path(db_path), body)
    else:
        settings = Settings.from_env(require_model=False)
        target = url or settings.hook_url
        if not target:
            raise OpsbotError("give --url or set OPSBOT_HOOK_URL (e.g. http://opsbot.internal:3000/hooks/deploy).")
        if not target.startswith(("http://", "https://")):
            raise OpsbotError(f"--url {target!r} must start with http:// or https://.")
        if not settings.hook_secret:
            raise OpsbotError("set OPSBOT_HOOK_SECRET to the secret the opsbot server has, to sign the event.")
        timestamp = str(int(time.time()))
        try:
            request = urllib.request.Request(
                target,
                data=body,
                method="POST",
                headers={
                    "Content-Type": "application/json",
                    TIMESTAMP_HEADER: timestamp,
                    SIGNATURE_HEADER: sign(str(settings.hook_secret), timestamp, body),
                },
            )
            with urllib.request.urlopen(request, timeout=30) as response:
                reply = response.read()
        except urllib.error.HTTPError as error:
            raise OpsbotError(f"opsbot refused the event (HTTP {error.code}): {_hook_error(error)}") from None
        except (urllib.error.URLError, OSError) as error:
            raise OpsbotError(f"could not reach {target}: {getattr(error, 'reason', error)}") from None
        except (ValueError, http.client.InvalidURL) as error:  # a bad port, a space, an unclosed [
            source = "--url" if url else "OPSBOT_HOOK_URL"
            raise OpsbotError(f"{source} {target!r} is not a valid URL ({error}).") from None
        except http.client.HTTPException as error:
            raise OpsbotError(
                f"{target} did not answer over HTTP ({error!r}): check that it is opsbot's address."
            ) from None
        try:
            answer = json.loads(reply or b"{}")
        except ValueError:
            answer = None
        if not isinstance(answer, dict):
            raise OpsbotError(
                f"{target} answered, but not as opsbot does (no JSON object): check that it is opsbot's /hooks/deploy."
            )
    click.echo(_describe_hook_answer(event, answer))


def _record_event_locally(db_path: Path, body: bytes) -> dict:
    from bot.ops.ci_events import EventProblem, parse_event
    from bot.ops.deploys import DeployService

    if not db_path.exists():
        raise OpsbotError(f"{db_path} does not exist: give the opsbot database file (OPSBOT_DB), after `opsbot index`.")
    store = open_db(db_path, "--db")
    try:
        deploys = DeployService.from_store(store)
        try:
            parsed = parse_event(body, deploys.ci_services(), deploys.ci_environments())
        except EventProblem as exc:
            raise OpsbotError(f"{exc}{_option_of(exc.field)}") from None
        from bot.ops.ci_deploys import record_ci_event

        return record_ci_event(deploys, parsed).as_json()
    finally:
        store.close()


def _hook_error(error: Any) -> str:
    try:
        answer = json.loads(error.read() or b"{}")
    except ValueError:
        return error.reason or "no details"
    return f"{answer.get('error') or error.reason}{_option_of(answer.get('field') or '')}"


def _option_of(field: str) -> str:
    """The notify-deploy option that sets an event field, to name in an error: " (--commit-sha)"."""
    if not field or field == "body":
        return ""
    return " (--change)" if field == "changes" else f" (--{field.replace('_', '-')})"


def _describe_hook_answer(event: dict, answer: dict) -> str:
    what = f"{event['service']} {event['version']} to {event['env']}"
    if answer.get("duplicate"):
        return f"{what}: event {event['event_id']} was already recorded; nothing changed."
    verb = {"started": "running", "finished": "finished", "recorded": "recorded"}.get(answer.get("action", ""), "sent")
    arrow = f"{answer.get('from_version') or '?'} → {answer.get('version')}"
    return f"{what}: {verb} as {answer.get('id')} ({answer.get('kind')} {arrow}, {answer.get('status')})."
