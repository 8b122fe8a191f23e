"""Wiring of the Bolt app: a few lines that connect the handlers to the runtime."""

from __future__ import annotations

import logging
from concurrent.futures import Executor, ThreadPoolExecutor

from slack_bolt import App, BoltResponse
from slack_sdk import WebClient
from slack_sdk.http_retry.builtin_handlers import (
    ConnectionErrorRetryHandler,
    RateLimitErrorRetryHandler,
    ServerErrorRetryHandler,
)

from bot.runtime import Runtime
from bot.slack import actions, commands, deploys, events, incidents

log = logging.getLogger(__name__)
SLOW_WORKERS = 2  # searches, deploys and posts in parallel; more only makes two cores thrash


def create_client(runtime: Runtime) -> WebClient:
    """A Web API client for the configured base URL, retrying 429s, 5xx and connection errors."""
    client = WebClient(token=runtime.settings.slack_bot_token or None, base_url=runtime.settings.slack_api_url)
    client.retry_handlers = [
        ConnectionErrorRetryHandler(max_retry_count=2),
        RateLimitErrorRetryHandler(max_retry_count=3),
        ServerErrorRetryHandler(max_retry_count=2),
    ]
    return client


def create_app(runtime: Runtime, client: WebClient | None = None, listener_executor: Executor | None = None) -> App:
    """The Bolt app for ``runtime``; nothing is created at import time.

    Every listener's ack function only acknowledges, and the work is lazy, so the acknowledgement
    runs in the thread that received the request (``process_before_response``): no hand-off to
    another pool, and none of Bolt's 10 ms polling for the acknowledgement. The lazy work runs on a
    pool of its own (``SLOW_WORKERS``); ``listener_executor`` replaces it (the local shell passes one
    that counts work in flight, so it knows when the handlers are done).
    """
    settings = runtime.settings
    work = listener_executor or ThreadPoolExecutor(max_workers=SLOW_WORKERS, thread_name_prefix="opsbot-work")
    app = App(
        client=client or create_client(runtime),
        signing_secret=settings.slack_signing_secret or None,
        process_before_response=True,
        token_verification_enabled=False,
        raise_error_for_unhandled_request=False,
        listener_executor=work,
    )

    @app.middleware
    def answer_each_event_once(body: dict, next: object) -> BoltResponse | None:  # noqa: A002 - Bolt's name
        """Slack retries events it thinks were lost (X-Slack-Retry-Num); each event id is handled once."""
        event_id = body.get("event_id") if body.get("type") == "event_callback" else None
        if event_id and not runtime.store.first_time_seen(event_id):
            log.info("duplicate event skipped event_id=%s", event_id)
            return BoltResponse(status=200, body="")
        return next()  # type: ignore[operator]

    events.register(app, runtime)
    commands.register(app, runtime)
    actions.register(app, runtime)
    deploys.register(app, runtime)
    incidents.register(app, runtime)
    return app
