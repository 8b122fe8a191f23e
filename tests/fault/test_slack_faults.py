"""g. Slack failing under opsbot, through the fault proxy: every message must still arrive, and a deploy's
timeout must hold while chat.update hangs.

Each case has a channel (or a response_url) of its own, so the proxy's rules hit only that case's calls
and the cases run side by side: a mention's answer, an /ask answer and a deploy's summary, each with one
fault (429 with Retry-After, 500 nine times, 502, 504, an HTML error page, a connection reset, and at full
scale a 30 s hang). A small run tries four of them.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass

import pytest

from bot.ops.requests import FINAL
from bot.slack.delivery import RetryPolicy
from tests.fault import proxy as faults
from tests.fault.harness import ALICE, BOB, Cluster, Serve, processes_carrying, scaled, wait_until
from tests.fault.proxy import Fault, ProxyStats
from tests.fault.report import COLLECTOR, Scenario

pytestmark = pytest.mark.fault
CLIENT_TIMEOUT_S = RetryPolicy().timeout_s  # how long opsbot's outbox waits for one call
FAULTS: list[tuple[str, Fault, int]] = [  # (label, fault, how many calls in a row it hits)
    ("429 Retry-After 1", faults.status(429, retry_after=1), 2),
    ("500 x9", faults.status(500), 9),
    ("502", faults.status(502), 1),
    ("504", faults.status(504), 1),
    ("HTML 503 page", faults.html(503), 2),
    ("reset", faults.reset(), 2),
    ("reset after Slack got it", faults.reset(forward=True), 1),
]
SURFACES = ("mention answer", "/ask answer", "deploy summary")


@dataclass
class Case:
    """One fault on one surface, and how to tell that its message arrived."""

    n: int
    surface: str
    label: str
    fault: Fault
    times: int
    channel: str = ""
    name: str = ""  # the response_url of an /ask
    ts: str = ""  # the mention's ts, or the deploy request's message ts
    request_id: str = ""

    @property
    def title(self) -> str:
        return f"{self.surface} / {self.label}"


def arrived(cluster: Cluster, case: Case) -> bool:
    if case.surface == "mention answer":
        return any(m.get("thread_ts") == case.ts for m in cluster.api.messages(case.channel))
    if case.surface == "/ask answer":
        return any(b.get("blocks") for b in cluster.api.responses(case.name))  # an apology has text only
    if not case.ts:
        return False
    return any(
        m.get("thread_ts") == case.ts and (m.get("text") or "").endswith(": succeeded")
        for m in cluster.api.messages(case.channel)
    )


def start_case(cluster: Cluster, serve: Serve, case: Case) -> None:
    """Set the case's rule and send what makes opsbot post (for a deploy: the rule once the run started)."""
    slack = serve.slack(cluster.proxy)
    if case.surface == "mention answer":
        cluster.proxy.add("chat.postMessage", case.fault, case.times, channel=case.channel)
        _, case.ts = slack.mention("disk full on the database host, writes failing", channel=case.channel)
    elif case.surface == "/ask answer":
        case.name = f"ask-{case.n}"
        cluster.proxy.add("response_url", case.fault, case.times, name=case.name)
        slack.command_named("/ask", "disk full on the database host", channel=case.channel, name=case.name)
    else:
        service = f"msg-{case.n:02d}"
        slack.command_named("/deploy", f"{service} 4.{case.n}.0-ms3000 staging", user=ALICE, channel=case.channel)
        row = cluster.wait_for_request(service)
        if row is None:
            return
        case.request_id = row["id"]
        case.ts = cluster.wait_for_posted(row["id"]).get("message_ts", "")
        slack.approve(row["id"], BOB, channel=case.channel, message_ts=case.ts)
        # From the progress message on, the summary and the updates of this request face the fault.
        cluster.api.wait_for("chat.postMessage", timeout=30, predicate=lambda c: c.body.get("thread_ts") == case.ts)
        cluster.proxy.add("chat.postMessage", case.fault, case.times, channel=case.channel)
        cluster.proxy.add("chat.update", case.fault, case.times, channel=case.channel)


def run_cases(cluster: Cluster, groups: list[tuple[Scenario, list[Case]]], deadline_s: float) -> None:
    """Start every case (spread over 3 processes), wait for their messages, then judge each group's scenario."""
    serves = [cluster.start() for _ in range(3)]
    every = [case for _, cases in groups for case in cases]
    with ThreadPoolExecutor(len(every)) as pool:  # a deploy case waits for its run to start: not one after another
        list(pool.map(lambda n: start_case(cluster, serves[n % len(serves)], every[n]), range(len(every))))
    for s, cases in groups:
        s.tried += len(cases)
    started = time.monotonic()
    wait_until(lambda: all(arrived(cluster, c) for c in every), deadline_s, interval=0.5)
    waited = time.monotonic() - started
    for s, cases in groups:
        s.note(f"waited {waited:.0f} s (at most {deadline_s:.0f} s) for the messages")
        for case in cases:
            ok = arrived(cluster, case)
            s.lose(0 if ok else 1, f"{case.title}: never arrived", invariant="every expected message arrives")
        ends = [cluster.request(c.request_id) for c in cases if c.request_id]
        s.check(
            "deploys still run to their end",
            all(r and r["status"] == "succeeded" for r in ends),
            f"{[(r['id'], r['status']) for r in ends if r and r['status'] != 'succeeded']}",
        )
        channels = {c.channel for c in cases}
        s.note("proxy: " + ProxyStats.of([e for e in cluster.proxy.events if e.channel in channels]).line())


def test_every_message_arrives_through_failing_slack(cluster: Cluster) -> None:
    # A small run leaves out the long ones (500 x9 may take a retrying sender a minute), and its deadline is short.
    chosen = FAULTS if scaled(False, True) else [FAULTS[0], FAULTS[2], FAULTS[4], FAULTS[5]]
    cases = [
        Case(n, surface, label, fault, times, channel=f"C0G{n:07d}")
        for n, (surface, (label, fault, times)) in enumerate((surface, item) for item in chosen for surface in SURFACES)
    ]
    # At full scale a 30 s hang joins them, reported on its own line: it runs alongside, not after.
    hangs = [
        Case(len(cases) + n, surface, "30 s hang", faults.hang(30), 1, channel=f"C0H{n:07d}")
        for n, surface in enumerate(SURFACES)
    ]
    with (
        COLLECTOR.scenario("g1. Slack faults: messages delivered") as s,
        COLLECTOR.scenario("g3. Slack faults: 30 s hang") if scaled(False, True) else nullcontext() as hung,
    ):
        s.note(f"{len(cases)} cases: {', '.join(label for label, _, _ in chosen)} on {', '.join(SURFACES)}")
        groups = [(s, cases)]
        if hung is not None:
            hung.note(f"a 30 s hang before Slack sees the call (opsbot gives up after {CLIENT_TIMEOUT_S:.0f} s)")
            groups.append((hung, hangs))
        run_cases(cluster, groups, deadline_s=scaled(30, 120))
    failed = [x for x, _ in groups if not x.ok]
    assert not failed, "\n".join(x.failure() for x in failed)


def test_a_deploy_times_out_on_time_while_chat_update_hangs(cluster: Cluster) -> None:
    hang_s = scaled(10, 30)
    serve = cluster.start()
    slack = serve.slack(cluster.proxy)
    channel = "C0STUCK001"
    with COLLECTOR.scenario("g2. Slack faults: timeout while chat.update hangs") as s:
        s.note(f"runner prints for 60 s under a 5 s timeout; every chat.update of its channel hangs {hang_s} s")
        slack.command_named("/deploy", "stuck 5.0.0-ms60000 staging", user=ALICE, channel=channel)
        row = cluster.wait_for_request("stuck")
        assert row is not None, serve.log()[-2000:]
        ts = cluster.wait_for_posted(row["id"]).get("message_ts", "")
        slack.approve(row["id"], BOB, channel=channel, message_ts=ts)
        run = cluster.wait_for_run(row["id"], timeout=30)
        assert run is not None, serve.log()[-2000:]
        # From now on (the first progress update comes 2 s into the run) every update of the channel hangs.
        cluster.proxy.add("chat.update", faults.hang(hang_s, forward=True), times=None, channel=channel)
        s.tried += 1
        gone = wait_until(lambda: not processes_carrying([row["id"]]), 5 + hang_s + 15, interval=0.1)
        stopped_after = time.time() - run.started if gone else None
        s.check(
            "the runner is stopped within 2 s of its 5 s timeout",
            stopped_after is not None and stopped_after <= 5 + 2,
            f"stopped after {stopped_after:.1f} s" if stopped_after else "still running",
        )
        final = cluster.wait_for_status(row["id"], FINAL, timeout=hang_s * 3 + 30)
        s.check("the request ends timed out", final is not None and final["status"] == "timed_out", str(final))
    assert s.ok, s.failure()
