"""What Slack shows of a deploy, for every state change the deploy service announces.

``SlackAnnouncer.announce`` runs inside the transaction of the change (``DeployService.announce``), and
every post and edit it makes is an outbox row written in that same transaction: a state change and the
message that shows it are stored together, so a process killed right after an approval, a finish or an
interruption loses neither. SlackWeb delivers them, with retries, from threads of its own.
"""

from __future__ import annotations

import logging
import sqlite3

from bot.errors import OpsbotError
from bot.ops.deploys import DeployService
from bot.ops.requests import AUTO_ROLLBACK_NOTE, DeployRequest
from bot.slack.blocks.deploys import (
    INTERRUPTED_TEXT,
    RequestView,
    build_ci_deploy_blocks,
    build_deploy_request_blocks,
    build_deploy_summary_blocks,
    build_progress_text,
    emergency_text,
    request_fallback_text,
    summary_fallback_text,
)
from bot.slack.blocks.mrkdwn import escape
from bot.slack.web import Notify, SlackWeb

log = logging.getLogger(__name__)
MESSAGE_HOOK = "deploy-message"  # after-delivery hook: remember where a request's message was posted


def message_key(request_id: str) -> str:
    """The outbox key of a request's message (its thread holds the progress and the summary)."""
    return f"deploy:{request_id}"


def progress_key(request_id: str) -> str:
    """The outbox key of the thread message that follows a run's output."""
    return f"deploy:{request_id}:progress"


class SlackAnnouncer:
    """Turns the deploy service's events into posts and edits through one SlackWeb."""

    def __init__(self, web: SlackWeb) -> None:
        self.web = web

    def announce(self, event: str, request: DeployRequest, deploys: DeployService) -> None:
        if request.source == "ci":
            self._ci(event, request, deploys)
            return
        if event == "requested":
            self._post_request(request, deploys)
            return
        self.refresh(request, deploys)  # first, so the buttons are gone before anything else shows
        if event == "started":
            command = view_of(deploys, request).command
            self.web.post(
                self._channel(request, deploys),
                build_progress_text(request, command, ""),
                key=progress_key(request.id),
                **_thread(request),
            )
        elif event == "interrupted" and request.channel:
            self.web.post(request.channel, INTERRUPTED_TEXT, **_thread(request))
        elif event == "finished":
            if request.started_at:  # the run began: its thread message shows how it ended
                self._finish_progress(request, deploys)
            self._post_summary(request, deploys)
        elif event in ("handed-off", "trigger-answered"):  # the trigger's answer ends the run message; no summary yet
            self._finish_progress(request, deploys)
        elif event == "abandoned":  # no report came: say so where the request's people look, and in deploys
            self._finish_progress(request, deploys)
            self._tell(request, deploys, abandoned_text(request))
        elif event == "settled":  # the report the lock waited for
            self._finish_progress(request, deploys)
            self._post_summary(request, deploys, reported="settled")
        elif event == "reported":  # the pipeline it triggered settled it otherwise than its run showed
            self._post_summary(request, deploys, reported="changed")

    def _finish_progress(self, request: DeployRequest, deploys: DeployService) -> None:
        """The run's thread message as the run ended: the outcome, and the output's tail (a webhook's answer)."""
        command = view_of(deploys, request).command
        text = build_progress_text(request, command, request.log_tail, final=True)
        self.web.update(self._channel(request, deploys), text, update_of=progress_key(request.id))

    def show_progress(self, request: DeployRequest, deploys: DeployService, output: str) -> None:
        """A newer view of the run's output; older edits not sent yet are dropped, and so is this one once the run
        has ended: the finish stores the final log edit in its own transaction, and nothing may come after it."""
        command = view_of(deploys, request).command
        text = build_progress_text(request, command, output)
        channel = self._channel(request, deploys)
        deploys.while_running(request.id, lambda: self.web.update(channel, text, update_of=progress_key(request.id)))

    def refresh(self, request: DeployRequest, deploys: DeployService) -> None:
        """Show the request's current state in its message (newest state last: changes are serialised)."""
        if not request.channel and not request.message_ts:
            return
        blocks = build_deploy_request_blocks(request, view_of(deploys, request))
        text = request_fallback_text(request)
        if request.message_ts:
            self.web.update(request.channel, text, blocks, ts=request.message_ts)
        else:  # posted, but not yet known where: the outbox finds it by its key
            self.web.update(request.channel, text, blocks, update_of=message_key(request.id))

    # -- requests from Slack -----------------------------------------------------------------------------

    def _post_request(self, request: DeployRequest, deploys: DeployService) -> None:
        """In the channel it was asked from; where opsbot may not post, in the deploys channel, saying so."""
        fallback = deploys_channel(deploys, request)
        where = request.channel or fallback
        if not where:  # submit() refuses such a request before it is recorded
            log.warning("no channel to post deploy request id=%s", request.id)
            return
        self.web.post(
            where,
            request_fallback_text(request),
            build_deploy_request_blocks(request, view_of(deploys, request)),
            key=message_key(request.id),
            after=(MESSAGE_HOOK, {"request_id": request.id}),
            notify=Notify(channel=request.channel, user=request.requester),
            fallback_channel=fallback,
        )

    def _post_summary(self, request: DeployRequest, deploys: DeployService, reported: str = "") -> None:
        """The summary in the request's thread and in the deploys channel (the service's own, if it has one)."""
        try:
            line = deploys.figures(request.service, request.env).line()
        except sqlite3.Error:
            raise  # the summary is stored with the change or neither is: the database decides
        except Exception:  # a bug in the figures must not cost the summary itself
            log.exception("DORA figures failed id=%s", request.id)
            line = "DORA: unavailable (opsbot's log says why)"
        blocks = build_deploy_summary_blocks(request, view_of(deploys, request), line, reported)
        self._tell(request, deploys, summary_fallback_text(request), blocks)

    def _tell(
        self, request: DeployRequest, deploys: DeployService, text: str, blocks: list[dict] | None = None
    ) -> None:
        """Post in the request's thread and in the deploys channel (the service's own, if it has one)."""
        channel = deploys_channel(deploys, request)
        if request.channel:
            broadcast = channel == request.channel  # one message serves both when they are the same channel
            self.web.post(request.channel, text, blocks, reply_broadcast=broadcast, **_thread(request))
            if broadcast:
                return
        if channel:
            self.web.post(channel, text, blocks)

    def _channel(self, request: DeployRequest, deploys: DeployService) -> str:
        return request.channel or deploys_channel(deploys, request)

    # -- deploys reported by CI/CD -------------------------------------------------------------------------

    def _ci(self, event: str, request: DeployRequest, deploys: DeployService) -> None:
        channel = deploys_channel(deploys, request)
        if not channel:
            log.info("no deploys channel for id=%s: set settings.deploys_channel in services.yaml", request.id)
            return
        blocks = build_ci_deploy_blocks(request, view_of(deploys, request))
        text = request_fallback_text(request)
        if event == "ci-started":
            after = (MESSAGE_HOOK, {"request_id": request.id})
            self.web.post(channel, text, blocks, key=message_key(request.id), after=after)
            return
        if event in ("ci-finished", "abandoned"):
            if request.message_ts:
                self.web.update(request.channel or channel, text, blocks, ts=request.message_ts)
            else:
                self.web.update(channel, text, blocks, update_of=message_key(request.id))
        if event in ("ci-finished", "ci-recorded"):
            self._post_summary(request, deploys)


def abandoned_text(request: DeployRequest) -> str:
    return (
        f":grey_question: *{escape(request.title)}*: no report from its pipeline ({escape(request.note)}). The "
        f"outcome is unknown and {escape(request.service)} {escape(request.env)} is free for other deploys: check the "
        "pipeline. Its report, if it comes, still settles the request."
    )


def view_of(deploys: DeployService, request: DeployRequest) -> RequestView:
    """What will run and who may approve, as the current services.yaml says (the deploy service decides)."""
    command = deploys.shown_command(request) or "(no longer in services.yaml)"
    who = deploys.who_may_approve(request)
    may_approve = (", ".join(who[:-1]) + " or " + who[-1]) if len(who) > 1 else "".join(who)
    if not may_approve:
        config = deploys.services.get(request.service)
        if config is None or request.env not in config.environments:
            may_approve = "nobody (no longer in services.yaml)"
        else:
            may_approve = f"nobody else on the roster (add approvers for {request.env} in services.yaml)"
    approvals = (len(deploys.valid_approvers(request)), deploys.approvals_needed(request))
    emergency = deploys.emergency_recorded(request)
    shown = ""
    if emergency is not None:
        e = emergency
        shown = emergency_text(request.service, e.incident, e.severity, e.approvals, e.usual, e.private)
    offer = rollback_offer(deploys, request)
    over = over_failed_text(deploys, request)
    return RequestView(command, may_approve, deploys.names(), note_of(request), shown, offer, approvals, over)


STATUS_WORDS = {"failed": "failed", "timed_out": "timed out", "interrupted": "was interrupted"}


def over_failed_text(deploys: DeployService, request: DeployRequest) -> str:
    """Under a pending deploy whose service's newest run in the environment failed: From is the last version that
    succeeded, but the failed one may be half rolled out, and this deploy goes over both."""
    if request.kind != "deploy" or request.status != "pending":
        return ""
    failed = deploys.failed_run(request.service, request.env)
    if failed is None:
        return ""
    version, status = failed
    ended = STATUS_WORDS.get(status, "was abandoned (its pipeline never reported)")
    after = f" after {escape(request.from_version)}" if request.from_version else ""
    return (
        f":warning: {escape(version)}, the newest run in {escape(request.env)}, {ended}{after} and may be partly "
        "rolled out: this deploy goes over whatever runs now."
    )


def rollback_offer(deploys: DeployService, request: DeployRequest) -> str:
    """After a failed deploy, the version a Rollback button offers: the last good one; "" when there is none."""
    if request.kind != "deploy" or request.status not in ("failed", "timed_out"):
        return ""
    if request.never_started:  # nothing ran: the service runs what it ran before, and an older version is no fix
        return ""
    try:
        return deploys.rollback_target(request.service, request.env)
    except OpsbotError:  # nothing succeeded there yet: no button
        return ""


def note_of(request: DeployRequest) -> str:
    """The note under a request: which version opsbot chose for a rollback, and how to choose another; or why it
    was withdrawn from the command line."""
    if request.status == "rejected" and request.rejected_by.startswith("cli:") and request.note != AUTO_ROLLBACK_NOTE:
        return f"Why: {escape(request.note)}" if request.note else ""
    if request.note != AUTO_ROLLBACK_NOTE:
        return ""
    return (
        f":information_source: opsbot chose *{request.version}*: the last version of {request.service} that "
        f"succeeded in {request.env} before {request.from_version or 'the current one'}. Name a version to roll "
        f"back elsewhere: `/rollback {request.service} {request.env} VERSION`."
    )


def deploys_channel(deploys: DeployService, request: DeployRequest) -> str:
    config = deploys.services.get(request.service)
    return (config.channel if config else "") or deploys.settings.channel


def _thread(request: DeployRequest) -> dict:
    """Where a reply to the request's message goes: its ts when known, else its outbox key."""
    return {"thread_ts": request.message_ts} if request.message_ts else {"thread_of": message_key(request.id)}
