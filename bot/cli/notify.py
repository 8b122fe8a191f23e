"""The notify-deploy command: a CI/CD pipeline reports a deploy, signed, to opsbot's hook or into a database."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import click

from bot.cli.base import handle_errors, main, open_db, refuse_blank
from bot.config import Settings
from bot.errors import OpsbotError


@main.command(name="notify-deploy")
@click.option("--service", required=True, help="The service deployed (as named in services.yaml).")
@click.option("--env", required=True, help="The environment, e.g. prod.")
@click.option("--version", "version", required=True, help="The version deployed.")
@click.option(
    "--status",
    type=click.Choice(["started", "succeeded", "failed", "rolled_back", "rollback_failed"]),
    default="succeeded",
    show_default=True,
    help="started when the pipeline begins; succeeded, failed, rolled_back or rollback_failed when it ends.",
)
@click.option("--event-id", default=None, help="Unique per event; a replay is ignored (default: a random id).")
@click.option("--commit-sha", default=None, help="The commit deployed.")
@click.option("--commit-time", default=None, help="When it was committed (ISO 8601): DORA lead time.")
@click.option("--started-at", default=None, help="When the deploy started (ISO 8601; default now).")
@click.option("--finished-at", default=None, help="When it finished (ISO 8601; default now).")
@click.option("--actor", default=None, help="Who triggered the pipeline.")
@click.option("--pipeline-url", default=None, help="Link to the pipeline run.")
@click.option("--change", "changes", multiple=True, help="One change shipped (repeatable).")
@click.option(
    "--request-id",
    default=None,
    help="The /deploy request that triggered this pipeline (its webhook's {request_id}): the event reports on "
    "that request instead of recording another deploy. Empty: the pipeline was not started by opsbot.",
)
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
    request_id: str | None,
    url: str | None,
    db_path: str | None,
) -> None:
    """Report a deploy from CI/CD: signs the event with $OPSBOT_HOOK_SECRET and POSTs it to opsbot.

    Send --status started when the pipeline begins deploying and succeeded, failed, rolled_back or
    rollback_failed when it ends (same service, env and version): opsbot posts the progress and the summary in Slack,
    and the deploy counts in `opsbot deploys` and `opsbot dora`. With --db the event is recorded
    straight into a database file instead, without Slack.

    \b
    Example:
      export OPSBOT_HOOK_URL=http://opsbot.internal:3000/hooks/deploy OPSBOT_HOOK_SECRET=...
      opsbot notify-deploy --service checkout-api --env prod --version 1.4.2 --status started
      opsbot notify-deploy --service checkout-api --env prod --version 1.4.2 --status succeeded \\
        --commit-sha 3f9c2e1 --commit-time 2026-11-20T09:12:00Z --change "Retry card auth once"
      opsbot notify-deploy --db opsbot.db --service checkout-api --env prod --version 1.4.2
      opsbot notify-deploy --service checkout-api --env prod --version 1.4.2 --status failed \\
        --request-id dep-20261120-3f9c2e
    """
    import http.client
    import urllib.error
    import urllib.request

    from bot.ops.ci_events import SIGNATURE_HEADER, TIMESTAMP_HEADER, build_event, sign
    from bot.ops.runner import public_url

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
        request_id=request_id,
    )
    body = json.dumps(event).encode()
    if db_path is not None:
        answer = _record_event_locally(Path(db_path), body)
    else:
        settings = Settings.from_env(require_model=False)
        target = url or settings.hook_url
        if not target:
            raise OpsbotError("give --url or set OPSBOT_HOOK_URL (e.g. http://opsbot.internal:3000/hooks/deploy).")
        source = "--url" if url else "OPSBOT_HOOK_URL"
        if _has_credentials(target):  # never echoed, here or below: a CI log keeps what it prints
            bare = f"{public_url(target)} with them" if "://" in target else "not shown, and no http:// either"
            raise OpsbotError(
                f"{source} holds a user, password or query string ({bare}): opsbot's hook "
                "takes none; events are signed with OPSBOT_HOOK_SECRET. Give the address alone."
            )
        if not target.startswith(("http://", "https://")):
            raise OpsbotError(f"{source} {target!r} must start with http:// or https://.")
        shown = target  # no user, password or query: safe to show
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
            raise OpsbotError(f"could not reach {shown}: {getattr(error, 'reason', error)}") from None
        except (ValueError, http.client.InvalidURL) as error:  # a bad port, a space, an unclosed [
            raise OpsbotError(f"{source} {shown!r} is not a valid URL ({error}).") from None
        except http.client.HTTPException as error:
            raise OpsbotError(
                f"{shown} did not answer over HTTP ({error!r}): check that it is opsbot's address."
            ) from None
        try:
            answer = json.loads(reply or b"{}")
        except ValueError:
            answer = None
        if not _is_opsbot_answer(answer):
            raise OpsbotError(
                f"{shown} answered, but not as opsbot does (no JSON object with the event's id): check that it is "
                "opsbot's /hooks/deploy."
            )
    click.echo(_describe_hook_answer(event, answer))


def _record_event_locally(db_path: Path, body: bytes) -> dict:
    import sqlite3

    from bot.ops.ci_events import EventProblem, parse_event
    from bot.ops.deploys import DeployService
    from bot.store.base import DatabaseUnavailable, is_write_failure

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

        try:
            return record_ci_event(deploys, parsed).as_json()
        except EventProblem as exc:  # it does not fit what is recorded: an event id used before, a run's times
            raise OpsbotError(f"{exc}{_option_of(exc.field)}") from None
        except sqlite3.OperationalError as exc:
            if not is_write_failure(exc):
                raise
            # The event and all it changes are one transaction, rolled back as a whole: sending it again is safe.
            failure = DatabaseUnavailable(str(db_path), str(exc), unwritable=True, source="--db")
            raise OpsbotError(
                f"{failure} The event was not recorded; send it again once the database can be written."
            ) from None
    finally:
        store.close()


def _is_opsbot_answer(answer: Any) -> bool:
    """What /hooks/deploy answers: ok, and the deploy's id and what was done, or that it was a duplicate.
    Anything else (a proxy's JSON, another service's) must not be reported as a success."""
    if not isinstance(answer, dict) or answer.get("ok") is not True:
        return False
    if answer.get("duplicate") is True:
        return True
    return isinstance(answer.get("id"), str) and isinstance(answer.get("action"), str)


def _has_credentials(url: str) -> bool:
    import urllib.parse

    if "://" not in url:  # without a scheme, `ci:pw@host` reads as a path: any @ or ? may be a credential
        return "@" in url or "?" in url
    try:
        parts = urllib.parse.urlsplit(url)
        return bool(parts.username or parts.password or parts.query)
    except ValueError:
        return "@" in url or "?" in url


def _hook_error(error: Any) -> str:
    """opsbot's error and the option that sets the field it names; the HTTP reason for any other body (also one
    cut short: a proxy's 502 that closed early)."""
    import http.client

    try:
        answer = json.loads(error.read() or b"{}")
    except (ValueError, OSError, http.client.HTTPException):
        answer = None
    reason = error.reason or "no details"
    if not isinstance(answer, dict) or not isinstance(answer.get("error"), str) or not answer["error"]:
        return reason
    field = answer.get("field")
    return f"{answer['error']}{_option_of(field if isinstance(field, str) else '')}"


def _option_of(field: str) -> str:
    """The notify-deploy option that sets an event field, to name in an error: " (--commit-sha)"."""
    if not field or field == "body":
        return ""
    return " (--change)" if field == "changes" else f" (--{field.replace('_', '-')})"


def _describe_hook_answer(event: dict, answer: dict) -> str:
    what = f"{event['service']} {event['version']} to {event['env']}"
    if answer.get("duplicate") and answer.get("id"):  # another event id, telling of a run already recorded
        return f"{what}: this run is already recorded, as {answer['id']} (a repeat of its report); nothing changed."
    if answer.get("duplicate"):
        return f"{what}: event {event['event_id']} was already recorded; nothing changed."
    verbs = {"started": "running", "finished": "finished", "recorded": "recorded", "reported": "reported on"}
    verb = verbs.get(answer.get("action", ""), "sent")
    arrow = f"{answer.get('from_version') or '?'} → {answer.get('version')}"
    return f"{what}: {verb} as {answer.get('id')} ({answer.get('kind')} {arrow}, {answer.get('status')})."
