"""Wiring of the Bolt app: a few lines that connect the handlers to the runtime."""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import Executor

from slack_bolt import App, BoltResponse
from slack_bolt.middleware.authorization.single_team_authorization import SingleTeamAuthorization
from slack_sdk import WebClient
from slack_sdk.web import SlackResponse

from bot.errors import OpsbotError
from bot.runtime import Runtime
from bot.slack import alerts, answers, deploys, incidents, oncall
from bot.slack.alerts import AlertDesk
from bot.slack.delivery import RetryPolicy, call_web_api, call_while_waiting
from bot.slack.listeners import Listeners
from bot.slack.payloads import MalformedPayload, check_slack_body
from bot.slack.web import SlackWeb
from bot.store.base import is_busy, is_write_failure
from bot.workers import TrackedPool

log = logging.getLogger(__name__)
SLOW_WORKERS = 2  # searches, deploys and posts in parallel; more only makes two cores thrash


class OpsbotApp(App):
    """The Bolt app, with the SlackWeb its handlers post through (started with the app), the desk that takes
    Alertmanager's notifications, and the pool its lazy listeners run on (drained when `opsbot serve` stops)."""

    web: SlackWeb
    alerts: AlertDesk
    work: Executor


def create_client(runtime: Runtime) -> WebClient:
    """A Web API client for the configured base URL: no retry handlers and a 10 s timeout.

    Nothing retries inline any more, so no listener thread sleeps for Slack's Retry-After: posts go
    through the outbox (``SlackWeb``), which retries on threads of its own.
    """
    return WebClient(
        token=runtime.settings.slack_bot_token or None,
        base_url=runtime.settings.slack_api_url,
        timeout=RetryPolicy().timeout_s,  # type: ignore[arg-type]
        retry_handlers=[],
    )


AUTH_ATTEMPTS = 3  # auth.test before serving: a rate limit or a 5xx is tried again, a refused token is not
AUTH_WAIT_S = 10.0  # at most this long between two tries


def verify_bot_token(
    client: WebClient,
    policy: RetryPolicy | None = None,
    sleep: Callable[[float], None] = time.sleep,
    unreachable_ok: bool = False,
) -> SlackResponse | None:
    """Slack's auth.test for the bot token, before anything is served: Bolt would otherwise make this call inside
    the first request, holding its acknowledgement for up to the client's timeout (Slack gives up after 3 s), and a
    failure there would drop that request. A token Slack refuses is an OpsbotError that says which setting to fix.
    With ``unreachable_ok`` (HTTP mode: CI events and alerts are taken and posts queued while Slack is away), a Slack
    that cannot be reached is logged and None returned: Bolt then asks in the first request, as before."""
    policy = policy or RetryPolicy()
    outcome = call_while_waiting(
        lambda attempt: call_web_api(client, "auth.test", {}, policy, attempt), AUTH_ATTEMPTS, AUTH_WAIT_S, sleep
    )
    if outcome.ok:
        return outcome.response
    if outcome.retry_in is None:  # invalid_auth, token_revoked, account_inactive, ...
        raise OpsbotError(
            f"Slack refused SLACK_BOT_TOKEN ({outcome.error}): copy the Bot User OAuth Token (xoxb-...) from the "
            "Slack app's OAuth & Permissions page, and reinstall the app if it was revoked."
        )
    if unreachable_ok:
        log.warning("could not check SLACK_BOT_TOKEN with Slack error=%s: serving anyway", outcome.error)
        return None
    raise OpsbotError(
        f"could not check SLACK_BOT_TOKEN with Slack ({outcome.error}): check the network and SLACK_API_URL, "
        "then start again."
    )


def create_app(
    runtime: Runtime,
    client: WebClient | None = None,
    listener_executor: Executor | None = None,
    web: SlackWeb | None = None,
    auth: SlackResponse | None = None,
) -> OpsbotApp:
    """The Bolt app for ``runtime``, and its started SlackWeb as ``app.web``; nothing is created at import time.

    Every listener's ack function only acknowledges, and the work is lazy, so the acknowledgement
    runs in the thread that received the request (``process_before_response``): no hand-off to
    another pool, and none of Bolt's 10 ms polling for the acknowledgement. The lazy work runs on a
    pool of its own (``SLOW_WORKERS``); ``listener_executor`` replaces it (the local shell passes one
    that counts work in flight, so it knows when the handlers are done). Handlers get ``web`` when they
    are registered; its delivery threads are its own, so that pool never waits for Slack to accept a post.
    ``web`` defaults to one on the runtime's database (the local shell passes one kept in memory). ``auth`` is
    the bot token's auth.test answer (``verify_bot_token``), so that no request waits for it.
    """
    settings = runtime.settings
    client = client or create_client(runtime)
    web = web or SlackWeb(client, runtime.store)
    work = listener_executor or TrackedPool(SLOW_WORKERS, "opsbot-work")  # counted: a stop waits for it
    app = OpsbotApp(
        client=client,
        signing_secret=settings.slack_signing_secret or None,
        process_before_response=True,
        token_verification_enabled=False,
        raise_error_for_unhandled_request=False,
        listener_executor=work,
    )
    if auth is not None:  # Bolt asks auth.test in the first request that lacks it
        for middleware in app._middleware_list:
            if isinstance(middleware, SingleTeamAuthorization):
                middleware.auth_test_result = auth

    @app.middleware
    def refuse_malformed(body: dict, next: object) -> BoltResponse | None:  # noqa: A002 - Bolt's name
        """A body without the shape Slack sends (see bot.slack.payloads) reaches no listener: 400, one log line.

        The HTTP server checks first (some shapes break Bolt before any middleware runs); this covers Socket
        Mode. An empty body is Bolt's reading of a form it could not place, which Bolt answers itself (404).
        """
        if body:
            try:
                check_slack_body(body)
            except MalformedPayload as exc:
                log.warning("slack request malformed reason=%s", exc)
                return BoltResponse(status=400, body={"error": f"malformed request: {exc}"})
        return next()  # type: ignore[operator]

    @app.middleware
    def answer_each_event_once(body: dict, next: object) -> BoltResponse | None:  # noqa: A002 - Bolt's name
        """Slack retries events it thinks were lost (X-Slack-Retry-Num); each event id is handled once."""
        event_id = body.get("event_id") if body.get("type") == "event_callback" else None
        try:
            first_time = not event_id or runtime.first_time_seen(event_id)
        except sqlite3.OperationalError as exc:
            if not is_write_failure(exc) and not is_busy(exc):
                raise
            # Answering a retried event twice is better than answering nothing, or too late for Slack, while the
            # database is full or another process holds its write lock.
            log.warning("event not recorded event_id=%s reason=%s", event_id, exc)
            first_time = True
        if not first_time:
            log.info("duplicate event skipped event_id=%s", event_id)
            return BoltResponse(status=200, body="")
        return next()  # type: ignore[operator]

    @app.error
    def answer_failure(error: Exception, body: dict) -> BoltResponse:
        """A listener or middleware failed: 400 and one warning line when the body is not what Slack sends
        (expected of crafted input), else 500 with the traceback (a bug)."""
        try:
            check_slack_body(body or {})
        except MalformedPayload as exc:
            log.warning("slack request malformed reason=%s error=%s", exc, type(error).__name__)
            return BoltResponse(status=400, body={"error": f"malformed request: {exc}"})
        if isinstance(error, MalformedPayload):
            log.warning("slack request malformed reason=%s", error)
            return BoltResponse(status=400, body={"error": f"malformed request: {error}"})
        log.error("slack request failed error=%s", type(error).__name__, exc_info=error)
        return BoltResponse(status=500, body={"error": "opsbot failed on this request; its log says why."})

    on = Listeners(app, web)
    answers.register(on, runtime, web)
    deploys.register(on, runtime, web)
    incidents.register(on, runtime, web)
    oncall.register(on, runtime, web)
    app.alerts = alerts.register(on, runtime, web)
    app.work = work
    app.web = web.start()  # after every register(): after-delivery hooks are known before the first delivery
    return app
