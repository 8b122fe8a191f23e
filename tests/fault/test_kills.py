"""c. SIGKILL `opsbot serve` (two processes, one database) and `opsbot index` at random points.

Each serve iteration deploys its own service (svc-NNN), so a deploy a dead process left running holds no
lock the next iteration needs. A process is killed before the Approve click, right after it, while the
runner runs or right after it ended, and a new one is started at once; the other process carries on. A
request the dead process left pending is approved again on the survivor, as a person would click again.
Meanwhile, in a thread, `opsbot index` is killed at random points on a database of its own.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest

from bot.ops.requests import FINAL, new_row
from tests.fault.harness import (
    ALICE,
    BOB,
    LEASE_MARGIN_S,
    LEASE_S,
    PYTHON,
    Base,
    Cluster,
    Serve,
    StatePoller,
    integrity,
    kill_processes,
    processes_carrying,
    scaled,
    snapshot,
    wait_until,
)
from tests.fault.report import COLLECTOR, Scenario

pytestmark = pytest.mark.fault
MOMENTS = ("before the click", "right after the click", "during the run", "right after the run")
ORPHAN_GRACE_S = 3.0  # how long a runner may outlive the opsbot process that started it
SEED = int(os.environ.get("OPSBOT_FAULT_SEED") or 1414)
DEPLOY_TABLES = ("deploy_requests", "deploy_decisions", "deploy_locks", "audit")


class OrphanWatch:
    """After each kill, checks (ORPHAN_GRACE_S later) that no runner of the dead process's requests survives."""

    def __init__(self, scenario: Scenario) -> None:
        self.scenario = scenario
        self.timers: list[threading.Timer] = []

    def after_kill(self, serve: Serve, request_ids: list[str]) -> None:
        timer = threading.Timer(ORPHAN_GRACE_S, self._check, args=(serve.name, request_ids))
        timer.daemon = True
        timer.start()
        self.timers.append(timer)

    def _check(self, name: str, request_ids: list[str]) -> None:
        survivors = processes_carrying(request_ids)
        self.scenario.check(
            "no runner outlives the process that started it",
            not survivors,
            f"{ORPHAN_GRACE_S:.0f} s after {name} was killed, still running: {[c for _, c in survivors]}",
        )
        kill_processes(pid for pid, _ in survivors)  # it was reported; it must not disturb what follows

    def join(self) -> None:
        for timer in self.timers:
            timer.join(ORPHAN_GRACE_S + 5)


def test_sigkill_serve_and_index_at_random_points(cluster: Cluster, fault_base: Base, tmp_path: Path) -> None:
    """Both loops at once (index kills on a database of their own): the machine has two cores, and the serve
    loop mostly waits for runners."""
    outcome: dict[str, Scenario | BaseException] = {}

    def index_side() -> None:
        try:
            with Cluster(fault_base, tmp_path / "index") as index_cluster:
                outcome["index"] = kill_index_at_random_points(index_cluster)
        except BaseException as exc:  # reported after the serve loop, not lost in the thread
            outcome["index"] = exc

    thread = threading.Thread(target=index_side, name="index-kills")
    thread.start()
    try:
        serve_side = kill_serve_at_random_points(cluster)
    finally:
        thread.join()
    index = outcome["index"]
    if isinstance(index, BaseException):
        raise index
    assert serve_side.ok and index.ok, "\n".join(s.failure() for s in (serve_side, index) if not s.ok)


def kill_serve_at_random_points(cluster: Cluster) -> Scenario:
    rng = random.Random(SEED)
    iterations = scaled(5, 100)
    procs = [cluster.start(), cluster.start()]
    poller = StatePoller(cluster.db_path)
    owner: dict[str, Serve] = {}  # which process clicked Approve (and so runs the deploy)
    died: dict[str, float] = {}  # request id -> when the process running it was killed
    moments: list[str] = []
    tally = dict.fromkeys(MOMENTS, 0)
    with COLLECTOR.scenario("c1. SIGKILL serve at random points") as s:
        watch = OrphanWatch(s)
        s.note(
            f"{iterations} kills of one of 2 serve processes (seed {SEED}); runner 0.3-2.5 s (4-7 s when killed "
            "during the run); "
            f"a deploy whose owner died must be final within the lease ({LEASE_S:.0f} s) + {LEASE_MARGIN_S:.0f} s"
        )

        def ensure(i: int) -> Serve:
            if not procs[i].alive():
                procs[i] = cluster.start()
            procs[i].wait_healthy()
            return procs[i]

        def kill(victim_index: int) -> None:
            victim = procs[victim_index]
            at = victim.kill()
            survivor = ensure(1 - victim_index)
            mine = [rid for rid, serve in owner.items() if serve is victim]
            for rid in mine:
                status = (cluster.request(rid) or {}).get("status")
                if status == "pending":  # the click died with the process: click again on the survivor
                    owner[rid] = survivor
                    row = cluster.request(rid) or {}
                    survivor.slack(cluster.proxy).approve(rid, BOB, message_ts=row.get("message_ts", ""))
                elif status == "running":
                    died.setdefault(rid, at)
            watch.after_kill(victim, mine)
            procs[victim_index] = cluster.start(wait=False)  # restarted at once; its start-up overlaps the next step

        for i in range(iterations):
            if i % len(MOMENTS) == 0:
                moments = list(MOMENTS)
                rng.shuffle(moments)
            moment = moments[i % len(MOMENTS)]
            tally[moment] += 1
            target_index = i % 2
            target = ensure(target_index)
            ensure(1 - target_index)
            service, duration_ms = f"svc-{i:03d}", rng.randint(300, 2500)
            if moment == "during the run":  # long enough that a runner left behind is still running when looked for
                duration_ms = rng.randint(4000, 7000)
            target.slack(cluster.proxy).command_named(
                "/deploy", f"{service} 1.0.{i}-ms{duration_ms} staging", user=ALICE
            )
            row = wait_until(lambda service=service: [r for r in cluster.requests(service) if r["message_ts"]], 30)
            if not s.check("every /deploy is recorded and posted", bool(row), f"{service}: no request within 30 s"):
                continue
            request_id = row[0]["id"]
            s.tried += 1
            if moment == "before the click":
                owner[request_id] = target  # nothing clicked yet: kill() approves it on the survivor
                kill(target_index)
                continue
            owner[request_id] = target
            target.slack(cluster.proxy).approve(request_id, BOB, message_ts=row[0]["message_ts"])
            if moment == "right after the click":
                time.sleep(rng.uniform(0, 0.3))
            elif moment == "during the run":
                if cluster.wait_for_run(request_id, timeout=15):
                    time.sleep(rng.uniform(0.1, 1.0))
            else:
                cluster.wait_for_run(request_id, ended=True, timeout=20)
            kill(target_index)

        requests = cluster.requests()
        ids = [r["id"] for r in requests]
        last_death = max(died.values(), default=time.time())
        wait_until(
            lambda: all(poller.status.get(i) in FINAL for i in ids),
            max(60, last_death + LEASE_S + LEASE_MARGIN_S - time.time()),
        )
        poller.stop()
        watch.join()
        runs = cluster.runs()
        requests = {r["id"]: r for r in cluster.requests()}
        for request_id, row in requests.items():
            mine = runs.get(request_id, [])
            s.check("no request ran twice", len(mine) <= 1, f"{request_id} ran {len(mine)} times")
            if mine:
                approvals = {
                    d["user"]
                    for d in cluster.decisions(request_id)
                    if d["decision"] == "approve" and d["user"] != row["requester"]
                }
                s.check(
                    "nothing ran without its approvals",
                    len(approvals) >= row["approvals_needed"],
                    f"{request_id} ran with approvals {sorted(approvals)} of {row['approvals_needed']} needed",
                )
            s.check("every request ends in a final state", row["status"] in FINAL, f"{request_id} is {row['status']}")
            if mine and request_id in died and mine[0].ended is not None:
                s.check(
                    "no runner outlives the process that started it",
                    mine[0].ended <= died[request_id] + ORPHAN_GRACE_S,
                    f"{request_id}'s runner went on and finished {mine[0].ended - died[request_id]:.1f} s "
                    "after its process was killed",
                )
            if request_id in died and request_id in poller.final_at:
                late = poller.final_at[request_id] - died[request_id]
                s.check(
                    "final within the lease after its owner died",
                    late <= LEASE_S + LEASE_MARGIN_S,
                    f"{request_id} became final {late:.0f} s after its owner died",
                )
            if row["status"] == "interrupted" and row["message_ts"]:
                said = [
                    m
                    for m in cluster.api.messages(row["channel"])
                    if m.get("thread_ts") == row["message_ts"] and "nterrupted" in (m.get("text") or "")
                ]
                s.check("an interrupted request says so in its thread", bool(said), f"{request_id}: nothing said")
            if mine and mine[0].ended is not None and request_id not in died:
                expected = "succeeded" if mine[0].code == 0 else "failed"
                s.check(
                    "a deploy whose process lived records its runner's outcome",
                    row["status"] == expected,
                    f"{request_id} is {row['status']}; its runner exited {mine[0].code} while its process lived",
                )
        s.check("locks are released", not cluster.locks(), f"locks left: {cluster.locks()}")
        left = processes_carrying(ids)
        s.check("no runner is left at the end", not left, f"{[c for _, c in left]}")
        kill_processes(pid for pid, _ in left)
        s.check("no traceback in the process logs", not cluster.tracebacks(), "\n".join(cluster.tracebacks())[:1500])
        s.note(f"kills: {tally}; {len(died)} deploys were running when their process died; {len(runs)} runs")
        if raced := cluster.lost_port_races():
            s.note(f"{len(raced)} start(s) lost their port to another process and were started again")
    return s


def kill_index_at_random_points(cluster: Cluster) -> Scenario:
    rng = random.Random(SEED + 1)
    iterations = scaled(5, 100)
    knowledge = cluster.root / "knowledge"
    shutil.copytree(cluster.base.knowledge, knowledge)
    env = cluster.env(OPSBOT_KNOWLEDGE=str(knowledge))
    seed_deploy_history(cluster)
    before = snapshot(cluster.db_path, DEPLOY_TABLES)
    with COLLECTOR.scenario("c2. SIGKILL index at random points") as s:
        change_knowledge(knowledge, rng, 0)
        started = time.monotonic()
        first = cluster.cli("index", "--nice", "0", env=env)
        full = time.monotonic() - started
        assert first.returncode == 0, first.stderr
        killed = 0
        for i in range(iterations):
            change_knowledge(knowledge, rng, i + 1)
            started = time.monotonic()
            process = subprocess.Popen(
                [PYTHON, "-m", "bot", "index", "--nice", "0"],
                env=env,
                cwd=cluster.root,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            # Killing it while Python still imports tests nothing: the point is picked once the database is open.
            opened = wait_until(lambda p=process: holds_open(p.pid, cluster.db_path) or p.poll() is not None, full)
            left = max(0.05, full - (time.monotonic() - started)) if opened else full
            time.sleep(rng.uniform(0, left * 1.1))
            if process.poll() is None:
                process.kill()
                killed += 1
            process.wait(30)
            s.tried += 1
            problems = integrity(cluster.db_path)
            s.check("the database is intact after the kill", not problems, f"iteration {i}: {problems[:3]}")
            same = snapshot(cluster.db_path, DEPLOY_TABLES) == before
            s.check("deploy tables are untouched", same, f"iteration {i}: deploy tables changed")
            if i % 10 == 9 or i == iterations - 1:
                done = cluster.cli("index", "--nice", "0", env=env)
                s.check("`opsbot index` completes after a kill", done.returncode == 0, done.stderr[-500:])
        answer = cluster.cli("ask", "--json", "disk full on the database host", env=env)
        hits = json.loads(answer.stdout)["hits"] if answer.returncode == 0 else []
        s.check(
            "search answers from the index after the kills",
            any(h["path"].endswith("disk-full.md") for h in hits),
            f"ask exited {answer.returncode}: {answer.stderr[-300:]}",
        )
        s.note(f"{killed} of {iterations} runs killed mid-way (a full run took {full:.1f} s)")
    return s


def holds_open(pid: int, path: Path) -> bool:
    """Whether process ``pid`` has ``path`` open."""
    try:
        return any(os.readlink(fd) == str(path) for fd in Path(f"/proc/{pid}/fd").iterdir())
    except OSError:
        return False


def change_knowledge(knowledge: Path, rng: random.Random, n: int) -> None:
    """Give `opsbot index` something to do: one runbook rewritten, another added or removed."""
    words = "pgbouncer kafka redis checkout latency saturation eviction rollback pool lag disk replica".split()
    body = " ".join(rng.choice(words) for _ in range(300))
    (knowledge / "runbooks" / f"churn-{n % 3}.md").write_text(
        f"---\ntitle: Churn {n}\nservices: [quick]\n---\n# Churn {n}\n\n## Steps\n{body}\n", encoding="utf-8"
    )
    stale = knowledge / "runbooks" / f"churn-{(n + 1) % 3}.md"
    if rng.random() < 0.5:
        stale.unlink(missing_ok=True)


def seed_deploy_history(cluster: Cluster) -> None:
    """A few deploy rows and their audit, written through the store as opsbot writes them."""
    from bot.store import Store

    store = Store(cluster.db_path)
    try:
        with store.transaction():
            for n in range(5):
                store.insert_deploy(
                    new_row(
                        f"dep-seed-{n}",
                        service="quick",
                        env="staging",
                        version=f"0.{n}.0",
                        requester=ALICE,
                        status="succeeded",
                        approvals_needed=1,
                        created_at=f"2026-01-0{n + 1}T10:00:00+00:00",
                        started_at=f"2026-01-0{n + 1}T10:01:00+00:00",
                        finished_at=f"2026-01-0{n + 1}T10:02:00+00:00",
                        channel="C0FAULT001",
                        exit_code=0,
                    )
                )
                store.audit(ALICE, "deploy.requested", f"dep-seed-{n}")
    finally:
        store.close()
