"""A webhook whose pipeline reports back (`await_report: true`): the request keeps its service's lock from the
trigger until the pipeline's report settles it, survives a restart, and is abandoned when no report comes."""

from __future__ import annotations

import contextlib
import errno
import http.client
import json
import logging
import socket
import ssl
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from datetime import timedelta
from http.server import ThreadingHTTPServer
from pathlib import Path

import pytest

from bot.answers.indexer import index_knowledge
from bot.errors import PermissionDenied
from bot.ops import runner
from bot.ops.ci_deploys import abandon_stale, record_ci_event
from bot.ops.ci_events import EventProblem, parse_event
from bot.ops.deploys import DeployService
from bot.ops.metrics import dora
from bot.ops.requests import DeployRequest
from bot.slack.deploy_posts import SlackAnnouncer
from bot.store import Store
from tests.conftest import FakeEncoder
from tests.fakes import Clock, eventually
from tests.ops.fixtures import ALICE, BOB, GINA, actions, after_crash, make_knowledge


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def hooked(tmp_path: Path, ci: ThreadingHTTPServer, clock: Clock) -> Iterator[tuple[DeployService, Store]]:
    """Service ``hook``: its staging deploy triggers a pipeline that sends the request's id back."""
    services = f"""\
settings: {{stale_ci_hours: 2}}
services:
  hook:
    environments:
      staging: {{approvals: 1, approvers: [web]}}
    deploy:
      webhook: {{url: "http://127.0.0.1:{ci.server_port}/run", body: {{id: "{{request_id}}"}}, await_report: true}}
  slow:
    environments:
      staging: {{approvals: 1, approvers: [web]}}
    deploy:
      webhook: {{url: "http://127.0.0.1:{ci.server_port}/run", body: {{id: "{{request_id}}"}}, await_report: true}}
      timeout: 1
"""
    store = Store(tmp_path / "hook.db")
    report = index_knowledge(store, FakeEncoder(), make_knowledge(tmp_path / "k", services))
    assert report.problems == []
    yield DeployService.from_store(store, clock=clock), store
    store.close()


def report(deploys: DeployService, status: str, request_id: str, version: str = "2.0.0", **more: str) -> object:
    body = {"event_id": f"ev-{status}-{len(deploys.store.audit_rows())}", "service": "hook", "env": "staging"}
    body |= {"version": version, "status": status, "request_id": request_id, "actor": "gitlab", **more}
    return record_ci_event(deploys, parse_event(json.dumps(body), deploys.ci_services(), deploys.ci_environments()))


def handed_off(deploys: DeployService, version: str = "2.0.0", kind: str = "deploy") -> str:
    """A request approved and run: its pipeline was triggered, and its report is awaited. Its id."""
    request = deploys.request(kind, "hook", "staging", version, ALICE)
    assert deploys.approve(request.id, BOB).start
    assert deploys.execute(request.id).status == "awaiting_ci"
    return request.id


def test_a_taken_trigger_keeps_the_lock_and_a_restart_leaves_the_request_waiting(
    hooked: tuple[DeployService, Store], ci: ThreadingHTTPServer, clock: Clock
) -> None:
    deploys, store = hooked
    rid = handed_off(deploys)

    row = store.deploy_row(rid)
    assert (row["status"], row["finished_at"], row["exit_code"]) == ("awaiting_ci", None, 0)
    assert row["log_tail"].endswith("HTTP 202\nqueued")  # the trigger's answer
    assert ci.bodies == [{"id": rid}] and store.lock_holder("hook", "staging") == rid
    assert actions(store)[-2:] == ["deploy.started", "deploy.handed_off"]  # not finished: nothing is known yet
    with pytest.raises(PermissionDenied, match=f"locked by Alice Archer's deploy {rid}, whose pipeline is deploying"):
        deploys.request("deploy", "hook", "staging", "2.0.1", BOB)

    assert after_crash(store, clock).recover_interrupted() == []  # no process of opsbot's runs it: nothing to lose
    assert store.deploy_row(rid)["status"] == "awaiting_ci" and store.lock_holder("hook", "staging") == rid
    assert dora(store, "hook", "staging", now=clock.now).changes == 0
    assert deploys.current_version("hook", "staging") is None


def test_the_report_settles_the_request_with_the_pipelines_outcome_and_frees_the_service(
    hooked: tuple[DeployService, Store], clock: Clock
) -> None:
    deploys, store = hooked
    rid = handed_off(deploys)
    clock.advance(minutes=20)

    started = report(deploys, "started", rid)
    assert started.action == "reported" and store.deploy_row(rid)["status"] == "awaiting_ci"
    done = report(
        deploys, "succeeded", rid, commit_sha="9c1d2e3f", commit_time=(clock.now - timedelta(hours=3)).isoformat()
    )

    row = store.deploy_row(rid)
    assert done.action == "reported" and (row["status"], row["finished_at"]) == ("succeeded", clock.now.isoformat())
    assert (row["commit_sha"], row["exit_code"]) == ("9c1d2e3f", None)
    assert store.lock_holder("hook", "staging") is None and deploys.current_version("hook", "staging") == "2.0.0"
    assert actions(store)[-2:] == ["deploy.ci_started", "deploy.reported"]
    figures = dora(store, "hook", "staging", now=clock.now)
    assert (figures.changes, figures.failed_changes) == (1, 0) and figures.lead_time_h == pytest.approx(3.0)
    assert report(deploys, "succeeded", rid, commit_sha="9c1d2e3f").action == "duplicate"  # a retried step
    deploys.request("deploy", "hook", "staging", "2.0.1", BOB)  # the service is free again


def test_no_report_within_the_hours_abandons_it_and_a_late_report_still_settles_it(
    hooked: tuple[DeployService, Store], clock: Clock
) -> None:
    deploys, store = hooked
    rid = handed_off(deploys)

    clock.advance(hours=1, minutes=59)
    assert abandon_stale(deploys) == []
    clock.advance(minutes=2)
    (abandoned,) = abandon_stale(deploys)

    assert (abandoned.id, abandoned.status) == (rid, "abandoned") and store.lock_holder("hook", "staging") is None
    assert "sent no report within 2 hours" in abandoned.note
    assert dora(store, "hook", "staging", now=clock.now).changes == 0  # its outcome is unknown: not counted

    late = report(deploys, "failed", rid)

    assert late.request.status == "failed" and late.request.finished_at == clock.now.isoformat()
    assert (dora(store, "hook", "staging", now=clock.now).failed_changes, store.lock_holder("hook", "staging")) == (
        1,
        None,
    )


def test_a_late_report_after_a_later_run_of_the_service_is_refused(
    hooked: tuple[DeployService, Store], clock: Clock
) -> None:
    deploys, store = hooked
    rid = handed_off(deploys)
    clock.advance(hours=3)
    abandon_stale(deploys)
    later = handed_off(deploys, "2.0.1")

    with pytest.raises(EventProblem, match=rf"{later} \(deploy of 2.0.1\) ran in hook staging after {rid}"):
        report(deploys, "failed", rid)
    assert store.deploy_row(rid)["status"] == "abandoned"


def test_a_report_that_comes_before_the_triggers_answer_settles_it_and_the_run_leaves_it(
    hooked: tuple[DeployService, Store], ci: ThreadingHTTPServer
) -> None:
    deploys, store = hooked
    request = deploys.request("deploy", "hook", "staging", "2.0.0", ALICE)
    assert deploys.approve(request.id, BOB).start
    answered = ci.answer
    sent = []

    class Fast(tuple):  # the pipeline reports failure before the trigger's 202 reaches opsbot
        def __iter__(self):  # noqa: ANN204
            sent.append(report(deploys, "failed", request.id))
            return iter(answered)

    ci.answer = Fast(answered)
    ended = deploys.execute(request.id)

    assert sent[0].action == "reported" and ended.status == "failed"  # the run's answer did not overwrite it
    assert store.lock_holder("hook", "staging") is None and "HTTP 202" in ended.log_tail  # yet it is kept
    assert "deploy.handed_off" not in actions(store) and actions(store)[-1] == "deploy.reported"


def test_withdraw_stops_waiting_for_a_pipeline_that_never_reports(hooked: tuple[DeployService, Store]) -> None:
    deploys, store = hooked
    rid = handed_off(deploys)

    gone = deploys.withdraw(rid, "cli:ops", "pipeline hung")

    assert gone.status == "abandoned" and store.lock_holder("hook", "staging") is None
    assert gone.note == "given up on from the command line by ops: pipeline hung"
    assert actions(store)[-1] == "deploy.withdrawn"
    assert report(deploys, "succeeded", rid).request.status == "succeeded"  # the pipeline's word still counts


def test_a_report_on_a_request_whose_process_stopped_mid_trigger_settles_it_and_frees_the_service(
    hooked: tuple[DeployService, Store], clock: Clock
) -> None:
    deploys, store = hooked
    request = deploys.request("deploy", "hook", "staging", "2.0.0", ALICE)
    assert deploys.approve(request.id, BOB).start
    with store.transaction():  # the trigger went out, and the process died before its answer came
        assert store.mark_triggered(request.id, deploys.owner, clock.now.isoformat())
    assert after_crash(store, clock).recover_interrupted() == []
    assert store.deploy_row(request.id)["status"] == "awaiting_ci"  # the pipeline may be deploying: wait for it

    settled = report(deploys, "succeeded", request.id)

    assert settled.request.status == "succeeded" and deploys.current_version("hook", "staging") == "2.0.0"
    assert store.lock_holder("hook", "staging") is None


def test_a_request_whose_process_stalled_before_its_trigger_went_out_is_cancelled_and_never_sent(
    hooked: tuple[DeployService, Store], ci: ThreadingHTTPServer, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    deploys, store = hooked
    request = deploys.request("deploy", "hook", "staging", "2.0.0", ALICE)
    assert deploys.approve(request.id, BOB).start
    recovered = []
    body = runner.webhook_body

    def stalled(*args: object) -> dict:  # the worker stalls as it prepares the body; another process takes it for dead
        with monkeypatch.context() as m:
            m.setattr(runner, "is_live", lambda _id: False)
            recovered.extend(after_crash(store, clock).recover_interrupted())
        return body(*args)

    monkeypatch.setattr(runner, "webhook_body", stalled)

    ended = deploys.execute(request.id)

    assert recovered == [] and ended.status == "cancelled"  # not interrupted: nothing can have started
    assert "stopped before it sent the trigger, so nothing was sent" in ended.note
    assert ci.bodies == [] and store.deploy_row(request.id)["triggered_at"] == ""  # nothing went out
    assert store.lock_holder("hook", "staging") is None and deploys.failed_version("hook", "staging") is None


def settled(deploys: DeployService, clock: Clock, version: str) -> str:
    rid = handed_off(deploys, version)
    clock.advance(minutes=5)
    report(deploys, "succeeded", rid, version=version)
    clock.advance(minutes=5)
    return rid


def test_a_late_report_on_an_interrupted_request_after_a_later_run_is_refused(
    hooked: tuple[DeployService, Store], clock: Clock
) -> None:
    deploys, store = hooked
    settled(deploys, clock, "1.0.0")
    lost = deploys.request("deploy", "hook", "staging", "2.0.0", ALICE)
    assert deploys.approve(lost.id, BOB).start
    with store.transaction():  # interrupted by an opsbot that did not wait for reports: its lock released
        store.update_deploy(lost.id, status="interrupted", finished_at=clock.now.isoformat())
        store.release_lock(lost.id)
    clock.advance(minutes=5)
    settled(deploys, clock, "2.1.0")

    with pytest.raises(EventProblem, match=r"\(deploy of 2.1.0\) ran in hook staging after"):
        report(deploys, "succeeded", lost.id, version="2.0.0")
    assert deploys.current_version("hook", "staging") == "2.1.0"


def test_after_an_abandoned_hand_off_a_rollback_goes_back_to_the_last_good_version(
    hooked: tuple[DeployService, Store], clock: Clock
) -> None:
    deploys, store = hooked
    settled(deploys, clock, "0.9.0")
    settled(deploys, clock, "1.0.0")
    handed_off(deploys, "2.0.0")
    clock.advance(hours=3)
    abandon_stale(deploys)  # 2.0.0's outcome is unknown: it may well be live

    back = deploys.request("rollback", "hook", "staging", None, ALICE)

    assert (back.from_version, back.version) == ("2.0.0", "1.0.0")


def test_a_process_that_stops_mid_trigger_leaves_the_request_holding_the_lock_until_the_report(
    hooked: tuple[DeployService, Store], ci: ThreadingHTTPServer, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    deploys, store = hooked
    first = deploys.request("deploy", "hook", "staging", "2.0.0", ALICE)
    assert deploys.approve(first.id, BOB).start
    answered, meanwhile = ci.answer, {}

    class Slow(tuple):  # the trigger is in flight when another process takes this one for dead
        def __iter__(self):  # noqa: ANN204
            monkeypatch.setattr("bot.ops.runner.is_live", lambda _id: False)
            meanwhile["recovered"] = after_crash(store, clock).recover_interrupted()
            monkeypatch.undo()
            meanwhile["row"] = store.deploy_row(first.id)
            with pytest.raises(PermissionDenied, match="whose pipeline is deploying it"):
                deploys.request("deploy", "hook", "staging", "2.0.1", GINA)
            return iter(answered)

    ci.answer = Slow(answered)
    ended = deploys.execute(first.id)

    assert meanwhile["recovered"] == [] and meanwhile["row"]["status"] == "awaiting_ci"
    assert "whether the pipeline started is unknown" in meanwhile["row"]["note"]
    assert (ended.status, ended.note) == ("awaiting_ci", "") and "HTTP 202" in ended.log_tail  # now it is known
    assert store.lock_holder("hook", "staging") == first.id
    assert actions(store).count("deploy.handed_off") == 1


def test_no_report_in_time_frees_the_lock_for_the_next_request_without_the_sweep(
    hooked: tuple[DeployService, Store], clock: Clock
) -> None:
    deploys, store = hooked
    rid = handed_off(deploys)
    clock.advance(hours=2, minutes=1)  # stale_ci_hours is 2; only `opsbot serve` sweeps

    deploys.request("deploy", "hook", "staging", "2.0.1", ALICE)

    assert store.deploy_row(rid)["status"] == "abandoned" and actions(store)[-2] == "deploy.abandoned"


def test_an_abandoned_rollback_is_audited_as_a_rollback(hooked: tuple[DeployService, Store], clock: Clock) -> None:
    deploys, store = hooked
    settled(deploys, clock, "0.9.0")
    settled(deploys, clock, "1.0.0")
    handed_off(deploys, "0.9.0", "rollback")
    clock.advance(hours=3)

    abandon_stale(deploys)

    assert actions(store)[-1] == "rollback.abandoned"


def test_a_rollback_whose_pipeline_reports_rollback_failed_is_settled_failed(
    hooked: tuple[DeployService, Store], clock: Clock
) -> None:
    # Before, `rollback_failed` settled the rollback as succeeded: 0.9.0 was taken to run, and the outage as ended.
    deploys, store = hooked
    settled(deploys, clock, "0.9.0")
    settled(deploys, clock, "1.0.0")
    back = handed_off(deploys, "0.9.0", "rollback")

    done = report(deploys, "rollback_failed", back, version="0.9.0")

    assert done.action == "reported" and store.deploy_row(back)["status"] == "failed"
    assert deploys.current_version("hook", "staging") == "1.0.0" and store.lock_holder("hook", "staging") is None
    assert actions(store)[-1] == "rollback.reported"


def test_abandoning_is_said_in_the_requests_thread_and_the_deploys_channel(
    hooked: tuple[DeployService, Store], clock: Clock
) -> None:
    deploys, store = hooked
    said: list[tuple[str, str, str]] = []

    class Web:
        def post(self, channel: str, text: str, blocks: object = None, **more: object) -> None:
            said.append(("post", channel, text))

        def update(self, channel: str, text: str, blocks: object = None, **more: object) -> None:
            said.append(("update", channel, text))

    deploys.announcer = SlackAnnouncer(Web())
    rid = handed_off(deploys)
    with store.transaction():
        store.update_deploy(rid, channel="C0OPS0001", message_ts="1700000000.000100")
    said.clear()
    clock.advance(hours=3)

    abandon_stale(deploys)

    posts = [text for kind, _, text in said if kind == "post"]
    assert len(posts) == 1 and "no report from its pipeline" in posts[0] and "outcome is unknown" in posts[0]
    assert any(kind == "update" and "Abandoned" in text for kind, _, text in said)  # the run's thread message


def test_serve_warns_when_the_reports_its_services_wait_for_cannot_arrive(
    hooked: tuple[DeployService, Store], caplog: pytest.LogCaptureFixture
) -> None:
    from bot.cli.slack import _warn_unheard_reports

    class Runtime:
        def deploys(self) -> DeployService:
            return hooked[0]

    with caplog.at_level(logging.WARNING, logger="bot.cli.slack"):
        _warn_unheard_reports(Runtime(), hooks_served=True)
        assert caplog.records == []
        _warn_unheard_reports(Runtime(), hooks_served=False)

    (warned,) = caplog.records
    assert "services=hook,slow wait for their pipeline's report" in warned.getMessage()
    assert "OPSBOT_HOOK_SECRET" in warned.getMessage()


def test_after_an_abandoned_rollback_the_next_rollback_still_leaves_the_current_version(
    hooked: tuple[DeployService, Store], clock: Clock
) -> None:
    deploys, store = hooked
    settled(deploys, clock, "1.0.0")
    settled(deploys, clock, "2.0.0")
    handed_off(deploys, "1.0.0", "rollback")
    clock.advance(hours=3)
    abandon_stale(deploys)  # a rollback that may have run leaves 2.0.0 or 1.0.0: the choice stays the people's

    again = deploys.request("rollback", "hook", "staging", None, ALICE)

    assert (again.from_version, again.version) == ("2.0.0", "1.0.0")


def test_a_pipeline_overdue_when_a_rollback_is_asked_is_given_up_on_before_the_versions_are_chosen(
    hooked: tuple[DeployService, Store], clock: Clock
) -> None:
    deploys, store = hooked
    settled(deploys, clock, "0.9.0")
    settled(deploys, clock, "1.0.0")
    rid = handed_off(deploys, "2.0.0")
    clock.advance(hours=3)  # no sweep ran (`opsbot shell`)

    named = deploys.request("rollback", "hook", "staging", "1.0.0", ALICE)  # not "what hook already runs"

    assert store.deploy_row(rid)["status"] == "abandoned" and (named.from_version, named.version) == ("2.0.0", "1.0.0")


def test_a_late_report_after_a_later_abandoned_request_is_refused(
    hooked: tuple[DeployService, Store], clock: Clock
) -> None:
    deploys, store = hooked
    first = handed_off(deploys, "2.0.0")
    clock.advance(hours=3)
    abandon_stale(deploys)
    handed_off(deploys, "2.1.0")
    clock.advance(hours=3)
    abandon_stale(deploys)  # 2.1.0 may be what runs now

    with pytest.raises(EventProblem, match=r"\(deploy of 2.1.0\) ran in hook staging after"):
        report(deploys, "succeeded", first)
    assert deploys.current_version("hook", "staging") is None


def test_a_ci_rollback_while_the_pipeline_was_awaited_counts_after_it_not_when_opsbot_gave_up(
    hooked: tuple[DeployService, Store], clock: Clock
) -> None:
    deploys, store = hooked
    settled(deploys, clock, "1.0.0")
    handed_off(deploys, "2.0.0")
    clock.advance(minutes=30)
    body = {"event_id": "rb-1", "service": "hook", "env": "staging", "version": "1.0.0", "status": "rolled_back"}
    record_ci_event(deploys, parse_event(json.dumps(body), deploys.ci_services(), deploys.ci_environments()))
    clock.advance(hours=3)
    abandon_stale(deploys)  # hours after the rollback that undid it

    assert deploys.failed_version("hook", "staging") is None  # the rollback to 1.0.0 came after 2.0.0
    figures = dora(store, "hook", "staging", now=clock.now)
    assert (figures.changes, figures.failed_changes) == (1, 0)  # 1.0.0 was not undone


def test_a_trigger_answered_after_the_request_was_given_up_on_says_what_became_of_it(
    hooked: tuple[DeployService, Store], ci: ThreadingHTTPServer, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    deploys, store = hooked
    outcomes = []
    for version, answer in (("2.0.0", (500, {}, "pipeline disabled")), ("2.0.1", (202, {}, "queued"))):
        request = deploys.request("deploy", "hook", "staging", version, ALICE)
        assert deploys.approve(request.id, BOB).start

        class Slow(tuple):  # while the trigger waits for its answer, the process is taken for dead, then withdrawn
            def __iter__(self, rid: str = request.id):  # noqa: ANN204
                with monkeypatch.context() as m:
                    m.setattr(runner, "is_live", lambda _id: False)
                    assert after_crash(store, clock).recover_interrupted() == []
                assert deploys.withdraw(rid, "cli:ops").status == "abandoned"
                return iter(self.answer)

        Slow.answer = answer
        ci.answer = Slow(answer)
        outcomes.append(deploys.execute(request.id))
        clock.advance(minutes=5)

    failed, taken = outcomes
    assert failed.status == "failed" and "HTTP Error 500" in failed.log_tail  # nothing started: a definite failure
    assert taken.status == "awaiting_ci" and taken.note == ""  # it did start: waited for again, with the lock
    assert store.lock_holder("hook", "staging") == taken.id


def test_a_trigger_whose_answer_never_comes_is_handed_off_as_unknown(
    hooked: tuple[DeployService, Store], ci: ThreadingHTTPServer
) -> None:
    deploys, store = hooked
    answered = ci.answer

    class Hung(tuple):
        def __iter__(self):  # noqa: ANN204
            time.sleep(1.5)  # past the runner's timeout of 1 s: CI got the POST, opsbot got no answer
            return iter(answered)

    ci.answer = Hung(answered)
    request = deploys.request("deploy", "slow", "staging", "2.0.0", ALICE)
    assert deploys.approve(request.id, BOB).start

    ended = deploys.execute(request.id)

    assert ended.status == "awaiting_ci" and "whether the pipeline started is unknown" in ended.note
    assert "no answer came" in ended.log_tail and store.lock_holder("slow", "staging") == request.id


def approved_at(deploys: DeployService, service: str, url: str) -> tuple[DeployService, DeployRequest]:
    """Point ``service``'s webhook at ``url``; a deploy service that reads it, and an approved request of 2.0.0."""
    configs = deploys.store.service_configs()
    configs[service]["deploy"]["webhook"]["url"] = url
    with deploys.store.transaction():
        deploys.store.replace_services(configs)
    deploys = DeployService.from_store(deploys.store, clock=deploys.clock)
    request = deploys.request("deploy", service, "staging", "2.0.0", ALICE)
    assert deploys.approve(request.id, BOB).start
    return deploys, request


def test_a_trigger_that_never_left_fails_at_once(hooked: tuple[DeployService, Store], ci: ThreadingHTTPServer) -> None:
    deploys, store = hooked
    deploys, request = approved_at(deploys, "hook", "http://127.0.0.1:80x/run")  # a port http.client refuses

    ended = deploys.execute(request.id)

    assert ended.status == "failed" and "could not trigger" in ended.log_tail and ci.bodies == []
    assert store.lock_holder("hook", "staging") is None


def test_a_gateway_that_timed_out_behind_a_proxy_leaves_the_start_unknown(
    hooked: tuple[DeployService, Store], ci: ThreadingHTTPServer
) -> None:
    deploys, store = hooked
    ci.answer = (504, {}, "upstream timed out")
    request = deploys.request("deploy", "hook", "staging", "2.0.0", ALICE)
    assert deploys.approve(request.id, BOB).start

    ended = deploys.execute(request.id)

    assert ended.status == "awaiting_ci" and "whether the pipeline started is unknown" in ended.note
    assert "gateway answered HTTP Error 504" in ended.log_tail and store.lock_holder("hook", "staging") == request.id


def given_up_mid_trigger(
    deploys: DeployService,
    store: Store,
    clock: Clock,
    ci: ThreadingHTTPServer,
    monkeypatch: pytest.MonkeyPatch,
    meanwhile: Callable[[], object] = lambda: None,
    service: str = "hook",
) -> DeployRequest:
    """Request 2.0.0 of ``service`` and run it; while its trigger waits for CI's 202, another process takes this one
    for dead and an admin withdraws it, then ``meanwhile`` runs."""
    request = deploys.request("deploy", service, "staging", "2.0.0", ALICE)
    assert deploys.approve(request.id, BOB).start
    answer = ci.answer

    class Slow(tuple):
        def __iter__(self):  # noqa: ANN204
            ci.answer = answer  # what runs meanwhile is answered at once
            with monkeypatch.context() as m:
                m.setattr(runner, "is_live", lambda _id: False)
                assert after_crash(store, clock).recover_interrupted() == []
            assert deploys.withdraw(request.id, "cli:ops").status == "abandoned"
            meanwhile()
            return iter(answer)

    ci.answer = Slow(answer)
    try:
        return deploys.execute(request.id)
    finally:
        ci.answer = answer


def test_an_answer_after_the_request_was_given_up_on_leaves_it_when_nothing_new_is_known_or_another_ran_since(
    hooked: tuple[DeployService, Store], ci: ThreadingHTTPServer, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    deploys, store = hooked
    unanswered = given_up_mid_trigger(deploys, store, clock, ci, monkeypatch, lambda: time.sleep(1.5), service="slow")
    assert unanswered.status == "abandoned" and store.lock_holder("slow", "staging") is None  # the withdrawal stands
    assert "no answer came" in unanswered.log_tail

    def deploy_another() -> None:
        clock.advance(minutes=5)
        settled(deploys, clock, "2.1.0")

    ran_since = given_up_mid_trigger(deploys, store, clock, ci, monkeypatch, deploy_another)
    assert ran_since.status == "abandoned" and deploys.current_version("hook", "staging") == "2.1.0"
    assert store.lock_holder("hook", "staging") is None and "HTTP 202" in ran_since.log_tail
    assert actions(store)[-1] == "deploy.answered_late"


def test_an_older_database_interrupts_a_run_in_flight_as_before_and_does_not_show_past_withdrawals_again(
    hooked: tuple[DeployService, Store], clock: Clock
) -> None:
    deploys, store = hooked
    withdrawn = deploys.request("deploy", "hook", "staging", "1.0.0", ALICE)
    deploys.withdraw(withdrawn.id, "cli:ops")
    running = deploys.request("deploy", "hook", "staging", "2.0.0", ALICE)
    assert deploys.approve(running.id, BOB).start  # approved by the older opsbot, which then died
    # Back to how the older opsbot left the database: m019 not applied, nothing it adds.
    store.db.execute("ALTER TABLE deploy_requests DROP COLUMN triggered_at")
    store.db.execute("ALTER TABLE deploy_requests DROP COLUMN runner_kind")
    store.db.execute("DELETE FROM audit WHERE action LIKE '%.shown'")
    store.db.execute("DROP INDEX IF EXISTS idx_audit_action")
    store.db.execute("DROP INDEX IF EXISTS idx_audit_request_id")
    store.db.execute("DELETE FROM _sqlite_migrations WHERE name = 'm019_deploy_triggered'")
    store.db.conn.commit()
    path = store.path
    store.close()

    reopened = Store(path)
    try:
        again = DeployService.from_store(reopened, clock=clock)
        (interrupted,) = after_crash(reopened, clock).recover_interrupted()  # it knew no await_report: as before
        assert interrupted.id == running.id and interrupted.status == "interrupted"
        assert again.show_withdrawn() == []  # withdrawn before the upgrade: not posted again
    finally:
        reopened.close()


def test_what_runs_a_request_is_the_one_approved(
    hooked: tuple[DeployService, Store], ci: ThreadingHTTPServer, clock: Clock
) -> None:
    deploys, store = hooked
    request = deploys.request("deploy", "hook", "staging", "2.0.0", ALICE)
    assert deploys.approve(request.id, BOB).start
    assert store.deploy_row(request.id)["runner_kind"] == "webhook-report"
    configs = store.service_configs()
    del configs["hook"]["deploy"]["webhook"]["await_report"]  # changed before the run began
    with store.transaction():
        store.replace_services(configs)

    ended = DeployService.from_store(store, clock=clock).execute(request.id)

    assert ended.status == "cancelled" and "changed what runs it since it was approved" in ended.note
    assert "(a webhook that awaits its report, now a webhook)" in ended.note
    assert ci.bodies == [] and store.lock_holder("hook", "staging") is None


def test_withdrawals_of_requests_made_in_the_shell_are_not_shown_in_a_workspace(
    hooked: tuple[DeployService, Store],
) -> None:
    deploys, store = hooked
    shell = deploys.request("deploy", "hook", "staging", "1.0.0", ALICE, channel="CSHELL001")
    deploys.withdraw(shell.id, "cli:ops")
    slack = deploys.request("deploy", "hook", "staging", "1.0.1", ALICE, channel="C0OPS0001")
    deploys.withdraw(slack.id, "cli:ops")

    assert deploys.show_withdrawn(elsewhere=("CSHELL001", "DSHELL001")) == [slack.id]
    assert deploys.show_withdrawn(elsewhere=("CSHELL001", "DSHELL001")) == []  # once


def test_an_error_after_the_trigger_went_out_leaves_the_start_unknown(
    hooked: tuple[DeployService, Store], ci: ThreadingHTTPServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    deploys, store = hooked
    request = deploys.request("deploy", "hook", "staging", "2.0.0", ALICE)
    assert deploys.approve(request.id, BOB).start

    def unreachable(self: http.client.HTTPConnection) -> None:  # as an ssl alert or EHOSTUNREACH on the read
        raise OSError(errno.EHOSTUNREACH, "No route to host")

    monkeypatch.setattr(http.client.HTTPConnection, "getresponse", unreachable)
    ended = deploys.execute(request.id)

    # it went out whole (the server records it in a thread of its own, unanswered: wait for it)
    assert eventually(lambda: list(ci.bodies), lambda seen: seen) == [{"id": request.id}]
    assert ended.status == "awaiting_ci"
    assert "whether the pipeline started is unknown" in ended.note


def test_an_accepted_trigger_whose_page_never_finishes_is_handed_off(hooked: tuple[DeployService, Store]) -> None:
    deploys, store = hooked
    listener = socket.create_server(("127.0.0.1", 0))
    got: list[bytes] = []

    def stall() -> None:  # answers 202 with a body it never finishes
        conn, _ = listener.accept()
        got.append(conn.recv(65536))
        conn.sendall(b"HTTP/1.1 202 Accepted\r\nContent-Length: 100\r\n\r\nqueu")
        time.sleep(2)
        conn.close()

    threading.Thread(target=stall, daemon=True).start()
    deploys, request = approved_at(deploys, "slow", f"http://127.0.0.1:{listener.getsockname()[1]}/run")

    ended = deploys.execute(request.id)
    listener.close()

    assert got and ended.status == "awaiting_ci" and ended.note == ""  # CI took it: the status line said so
    assert "HTTP 202" in ended.log_tail and "body could not be read" in ended.log_tail


def test_a_proxy_that_garbles_the_tunnel_fails_the_trigger_since_nothing_reached_ci(
    hooked: tuple[DeployService, Store], monkeypatch: pytest.MonkeyPatch
) -> None:
    deploys, store = hooked
    proxy = socket.create_server(("127.0.0.1", 0))

    def garble() -> None:  # answers CONNECT with what is not HTTP
        conn, _ = proxy.accept()
        conn.recv(65536)
        conn.sendall(b"garbage\r\n\r\n")
        conn.close()

    threading.Thread(target=garble, daemon=True).start()
    via = urllib.request.ProxyHandler({"https": f"http://127.0.0.1:{proxy.getsockname()[1]}"})
    opener = urllib.request.build_opener(via, runner._NoRedirect, runner._HTTPHandler, runner._HTTPSHandler)
    monkeypatch.setattr(runner, "_webhook_opener", opener)
    deploys, request = approved_at(deploys, "hook", "https://ci.invalid/run")

    ended = deploys.execute(request.id)
    proxy.close()

    assert ended.status == "failed" and "BadStatusLine" in ended.log_tail
    assert store.lock_holder("hook", "staging") is None


def test_a_server_that_refuses_the_trigger_for_want_of_a_client_certificate_fails_it(
    hooked: tuple[DeployService, Store], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # TLS 1.3 checks a client certificate after the client's handshake is done: the request is written out whole,
    # then the server's alert comes where the answer would. It refused the trigger, so nothing reached CI.
    deploys, store = hooked
    cert, key = tmp_path / "ci.pem", tmp_path / "ci.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True,
    )  # fmt: skip
    server_side = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_side.minimum_version = ssl.TLSVersion.TLSv1_3
    server_side.load_cert_chain(cert, key)
    server_side.verify_mode = ssl.CERT_REQUIRED
    server_side.load_verify_locations(cert)  # a client certificate it would take; opsbot sends none
    listener = socket.create_server(("127.0.0.1", 0))
    refused: list[str] = []

    def demand_a_certificate() -> None:
        conn, _ = listener.accept()
        tls = server_side.wrap_socket(conn, server_side=True, do_handshake_on_connect=False)
        try:
            tls.do_handshake()
        except ssl.SSLError as exc:
            refused.append(exc.reason or "")
            raw = socket.socket(fileno=tls.detach())  # the alert is sent: hold the line until the client closes it
            raw.settimeout(5)
            with contextlib.suppress(OSError), raw:
                while raw.recv(4096):
                    pass
        finally:
            tls.close()

    threading.Thread(target=demand_a_certificate, daemon=True).start()
    client_side = ssl.create_default_context(cafile=str(cert))
    opener = urllib.request.build_opener(
        runner._NoRedirect, runner._HTTPHandler, runner._HTTPSHandler(context=client_side)
    )
    monkeypatch.setattr(runner, "_webhook_opener", opener)
    deploys, request = approved_at(deploys, "hook", f"https://127.0.0.1:{listener.getsockname()[1]}/run")

    ended = deploys.execute(request.id)
    listener.close()

    assert eventually(lambda: list(refused), lambda seen: seen) == ["PEER_DID_NOT_RETURN_A_CERTIFICATE"]
    assert ended.status == "failed" and "CERTIFICATE_REQUIRED" in ended.log_tail, ended.log_tail
    assert store.lock_holder("hook", "staging") is None


def test_a_report_naming_a_command_run_is_refused_though_services_yaml_now_awaits_reports(
    hooked: tuple[DeployService, Store], clock: Clock
) -> None:
    deploys, store = hooked
    configs = store.service_configs()
    hook = configs["hook"]["deploy"]
    configs["hook"]["deploy"] = {"command": ["true"]}
    with store.transaction():
        store.replace_services(configs)
    commands = DeployService.from_store(store, clock=clock)
    request = commands.request("deploy", "hook", "staging", "2.0.0", ALICE)
    assert commands.approve(request.id, BOB).start  # its command runs now
    configs["hook"]["deploy"] = hook  # and services.yaml moves to a pipeline that reports back
    with store.transaction():
        store.replace_services(configs)

    with pytest.raises(EventProblem, match="is running in opsbot: its own run's outcome is not recorded yet"):
        report(DeployService.from_store(store, clock=clock), "succeeded", request.id)
    assert store.lock_holder("hook", "staging") == request.id
