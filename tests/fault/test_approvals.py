"""a. Approval storms across two processes; b. a second process must leave the first one's deploy alone."""

from __future__ import annotations

import random
from concurrent.futures import ThreadPoolExecutor

import pytest

from bot.ops.requests import FINAL
from bot.slack import ids
from tests.fault.harness import ALICE, APPROVERS, BOB, DAVE, GINA, Cluster, scaled, wait_until
from tests.fault.report import COLLECTOR

pytestmark = pytest.mark.fault
CLICKS = 50


def test_approval_storm_from_two_processes_runs_the_deploy_exactly_once(cluster: Cluster) -> None:
    rng = random.Random(14)
    storms = scaled(2, 10)
    first, second = cluster.start(), cluster.start()
    drivers = [first.slack(cluster.proxy), second.slack(cluster.proxy)]
    with COLLECTOR.scenario("a. approval storm") as s:
        s.note(
            f"{storms} storms of {CLICKS} concurrent Approve clicks for one prod request (2 approvals needed), "
            "half to each of 2 serve processes, from 5 approvers, the requester and a non-approver"
        )
        known: set[str] = set()
        for n in range(storms):
            response, _ = drivers[n % 2].command_named("/deploy", f"quick 1.{n}.0-ms300 prod", user=ALICE)
            s.check("slash command acknowledged", response.status == 200, f"/deploy answered {response.status}")
            row = cluster.wait_for_request("quick", known)
            if not s.check("request recorded", row is not None, f"storm {n}: no request row"):
                continue
            request_id = row["id"]
            known.add(request_id)
            clickers = [APPROVERS[i % len(APPROVERS)] for i in range(CLICKS - 4)] + [ALICE, ALICE, DAVE, DAVE]
            rng.shuffle(clickers)

            def click(
                i: int, request_id: str = request_id, clickers: list[str] = clickers, ts: str = row["message_ts"]
            ) -> int:
                return drivers[i % 2].approve(request_id, clickers[i], message_ts=ts).status

            with ThreadPoolExecutor(CLICKS) as pool:
                statuses = list(pool.map(click, range(CLICKS)))
            s.tried += CLICKS
            s.check("every click acknowledged", statuses == [200] * CLICKS, f"statuses {sorted(set(statuses))}")
            final = cluster.wait_for_status(request_id, FINAL, timeout=90)
            s.check(
                "request ends succeeded",
                final is not None and final["status"] == "succeeded",
                f"{request_id} is {final['status'] if final else 'still ' + str(cluster.request(request_id))}",
            )
            runs = cluster.runs().get(request_id, [])
            s.check("runner ran exactly once", len(runs) == 1, f"{request_id} ran {len(runs)} times")
            approvers = {d["user"] for d in cluster.decisions(request_id) if d["decision"] == "approve"}
            s.check("only approvers' decisions recorded", approvers <= set(APPROVERS), f"approvals by {approvers}")
        s.check("no second run later", wait_until(lambda: any(len(r) > 1 for r in cluster.runs().values()), 2) is None)
        s.check("no traceback in the process logs", not cluster.tracebacks(), "\n".join(cluster.tracebacks())[:1500])
    assert s.ok, s.failure()


def test_a_process_starting_on_the_same_database_leaves_a_running_deploy_alone(cluster: Cluster) -> None:
    repeats = scaled(1, 2)
    owner = cluster.start()
    with COLLECTOR.scenario("b. two processes, one database") as s:
        s.note("a 5 s deploy runs in process A; process B starts on the same database while it runs")
        for n in range(repeats):
            a = owner.slack(cluster.proxy)
            known = {r["id"] for r in cluster.requests("quick")}
            a.command_named("/deploy", f"quick 2.{n}.0-ms5000 staging", user=ALICE)
            row = cluster.wait_for_request("quick", known)
            assert row is not None, f"no request recorded:\n{owner.log()[-2000:]}"
            request_id = row["id"]
            a.approve(request_id, BOB, message_ts=row["message_ts"])
            run = cluster.wait_for_run(request_id, timeout=30)
            assert run is not None, f"the deploy never started:\n{owner.log()[-2000:]}"
            s.tried += 1

            newcomer = cluster.start()  # its start-up is where deploys left running are looked at
            status = (cluster.request(request_id) or {}).get("status")
            s.check(
                "A's running deploy is not marked interrupted when B starts",
                status == "running",
                f"{request_id} is {status} right after B started (A is alive, its runner is running)",
            )
            held = [lock["request_id"] for lock in cluster.locks() if lock["service"] == "quick"]
            s.check("the lock stays held while it runs", held == [request_id], f"quick/staging locks: {held}")

            b = newcomer.slack(cluster.proxy)
            before = {r["id"] for r in cluster.requests("quick")}
            _, name = b.command_named("/deploy", f"quick 2.{n}.1 staging", user=GINA)
            told = wait_until(
                lambda name=name, before=before: (
                    cluster.api.responses(name) or [r for r in cluster.requests("quick") if r["id"] not in before]
                ),
                30,
            )
            told = cluster.api.responses(name)
            second = [r for r in cluster.requests("quick") if r["id"] not in before]
            s.check(
                "a second /deploy for the same service and env is refused while it runs",
                not second,
                f"B accepted {[(r['id'], r['status']) for r in second]} while {request_id} ran",
            )
            s.check(
                "the refusal is explained to the user",
                bool(told) and "lock" in str(told).lower(),
                f"response_url got {told}",
            )
            for extra in second:  # withdraw it, so the next round starts with the lock free
                b.click(ids.DEPLOY_REJECT, extra["id"], user=GINA, message_ts=extra["message_ts"] or "1.0")
                cluster.wait_for_status(extra["id"], FINAL, timeout=30)

            ended = cluster.wait_for_run(request_id, ended=True, timeout=60)
            s.check("the runner finished", ended is not None, f"{request_id} runner did not end")
            final = cluster.wait_for_status(request_id, FINAL, timeout=30)
            s.check(
                "A's success is recorded",
                final is not None and final["status"] == "succeeded",
                f"{request_id} ended {final['status'] if final else 'running'} though its runner exited 0",
            )
            thread = [m for m in cluster.api.messages(owner_channel(row)) if m.get("thread_ts") == row["message_ts"]]
            said = [m.get("text", "") for m in thread if "nterrupted" in m.get("text", "")]
            s.check("nobody is told it was interrupted", not said, f"thread says {said}")
            owner.stop()  # the next round: B owns the next deploy and a new process starts beside it
            owner = newcomer
        s.check("no traceback in the process logs", not cluster.tracebacks(), "\n".join(cluster.tracebacks())[:1500])
    assert s.ok, s.failure()


def owner_channel(row: dict) -> str:
    return row["channel"] or "C0FAULT001"
