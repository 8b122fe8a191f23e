"""The weekly DORA digest: when it is due, and what it posts."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from bot.ops.ci_deploys import record_ci_event
from bot.ops.ci_events import parse_event
from bot.ops.digest import digest_due, weekly_figures
from bot.ops.metrics import Dora
from bot.runtime import Runtime
from bot.services import ConfigProblem, Digest, parse_settings
from bot.slack.app import create_client
from bot.slack.blocks.digest import build_digest_blocks
from bot.slack.jobs import post_digest, post_digest_if_due
from bot.slack.local.fake_api import FakeSlackAPI
from bot.slack.web import SlackWeb
from bot.store import Store

MONDAY_9 = Digest("C04DEPLOYS1", 0, "09:00", "Europe/London")


def test_the_digest_is_due_once_a_week_at_local_time() -> None:
    monday_0830 = datetime(2026, 11, 30, 8, 30, tzinfo=UTC)  # 08:30 in London (winter)
    monday_0905 = datetime(2026, 11, 30, 9, 5, tzinfo=UTC)
    tuesday = datetime(2026, 12, 1, 9, 5, tzinfo=UTC)
    assert digest_due(MONDAY_9, monday_0830, "") is None
    assert digest_due(MONDAY_9, monday_0905, "") == "2026-W49"
    assert digest_due(MONDAY_9, monday_0905, "2026-W49") is None  # posted already this week
    assert digest_due(MONDAY_9, tuesday, "2026-W49") is None


def test_a_digest_missed_while_opsbot_was_down_is_posted_later_that_week() -> None:
    # down from Monday 08:30 until the times below: 2026-W49's digest was not posted at 09:00
    for back in (datetime(2026, 12, 1, 7, 0, tzinfo=UTC), datetime(2026, 12, 6, 23, 0, tzinfo=UTC)):
        assert digest_due(MONDAY_9, back, "2026-W48") == "2026-W49"
    assert digest_due(MONDAY_9, datetime(2026, 12, 7, 8, 0, tzinfo=UTC), "2026-W49") is None  # W50, before 09:00
    thursday_9 = Digest("C04DEPLOYS1", 3, "09:00", "Europe/London")
    assert digest_due(thursday_9, datetime(2026, 12, 1, 12, 0, tzinfo=UTC), "2026-W48") is None  # not yet Thursday


def test_bad_digest_settings_name_the_key() -> None:
    for bad, key in [
        ({"day": "funday", "channel": "C1"}, "settings.weekly_digest.day"),
        ({"channel": "C1", "time": "9am"}, "settings.weekly_digest.time"),
        ({"time": "09:00"}, "settings.weekly_digest"),
    ]:
        try:
            parse_settings({"weekly_digest": bad})
        except ConfigProblem as exc:
            assert exc.key == key
        else:
            raise AssertionError(f"{bad} was accepted")


def test_the_digest_posts_every_deployable_service(runtime: Runtime, slack_api: FakeSlackAPI) -> None:
    web = SlackWeb(create_client(runtime), runtime.store).start()
    try:
        channel = post_digest(runtime, web)
        assert channel == "C04DEPLOYS1"
        (call,) = slack_api.wait_for("chat.postMessage")
    finally:
        web.stop()
    text = str(call.body["blocks"])
    assert "Weekly delivery figures (prod)" in text
    for service in ("checkout-api", "payments-gateway", "storefront-web", "order-pipeline"):
        assert f"*{service}*: Deploys:" in text
    assert "change failure rate" in text


def test_the_digest_leaves_out_services_not_deployed_to_its_environment(runtime: Runtime) -> None:
    configs = runtime.store.service_configs()
    configs["docs-site"] = {
        "owners": ["U03F8K2LQ1"],
        "environments": {"staging": {"approvals": 1, "approvers": ["payments"]}},
        "deploy": {"command": ["./deploy.sh", "{version}"]},
    }
    runtime.store.replace_services(configs)
    deploys = runtime.deploys()
    assert "docs-site" in deploys.services

    _, each = weekly_figures(deploys, "prod")
    _, staging = weekly_figures(deploys, "staging")

    assert "docs-site" not in [name for name, _ in each] and "checkout-api" in [name for name, _ in each]
    assert "docs-site" in [name for name, _ in staging]


def test_the_digest_shows_a_service_that_ci_deploys_to_its_environment_though_services_yaml_does_not(
    runtime: Runtime,
) -> None:
    # Before, its figures counted in "All services" and it had no line: the one failing service went unnamed.
    configs = runtime.store.service_configs()
    configs["docs-site"] = {"owners": ["U03F8K2LQ1"]}  # owners only: CI reports its deploys
    runtime.store.replace_services(configs)
    deploys = runtime.deploys()
    assert "docs-site" not in deploys.services and "docs-site" in deploys.ci_services()
    now = datetime.now(UTC)
    for n, status in enumerate(["succeeded", "failed"]):
        event = {
            "event_id": f"docs-{n}",
            "service": "docs-site",
            "env": "prod",
            "version": f"1.0.{n}",
            "status": status,
            "started_at": (now - timedelta(hours=5 - n, minutes=5)).isoformat(),
            "finished_at": (now - timedelta(hours=5 - n)).isoformat(),
        }
        record_ci_event(deploys, parse_event(json.dumps(event), deploys.ci_services(), deploys.ci_environments()))

    _, each = weekly_figures(deploys, "prod")
    _, staging = weekly_figures(deploys, "staging")

    shown = dict(each)
    assert (shown["docs-site"].changes, shown["docs-site"].failed_changes) == (2, 1)
    assert "docs-site" not in dict(staging)


@pytest.mark.parametrize("services", [0, 1, 30, 2000])
def test_the_digest_shows_every_service_or_says_how_many_more_within_slacks_limits(services: int) -> None:
    def figures(name: str | None) -> Dora:
        return Dora(name, "prod", 30, 3, 12, 12, 12, 1, 42.0, 5.5)

    each = [(f"service-{n:04d}-with-a-long-name", figures(f"service-{n:04d}")) for n in range(services)]
    blocks = build_digest_blocks("prod", (figures(None), each))

    assert len(blocks) <= 50
    texts = [b["text"]["text"] for b in blocks if b["type"] == "section"]
    assert all(len(t) <= 3000 for t in texts)
    listed = [line for t in texts[1:] for line in t.split("\n") if line.startswith("*service-")]
    assert listed == [f"*{name}*: {dora.line()}" for name, dora in each[: len(listed)]]
    more = [line for t in texts for line in t.split("\n") if line.startswith("… and ")]
    if len(listed) < services:
        assert more == [
            f"… and {services - len(listed)} more services: `opsbot dora --env prod --service NAME` shows each."
        ]
    else:
        assert more == []
    if not services:
        assert "No deployable services." in texts


def test_the_weekly_digest_is_posted_once_when_due_even_by_two_processes(
    runtime: Runtime, slack_api: FakeSlackAPI, tmp_path
) -> None:  # noqa: ANN001
    other = Runtime(runtime.settings, encoder=runtime.encoder, store=Store(runtime.store.path))  # a second process
    webs = [SlackWeb(create_client(r), r.store).start() for r in (runtime, other)]
    digest = runtime.deploys().settings.digest
    assert digest is not None and digest.channel == "C04DEPLOYS1"
    due = datetime(2026, 11, 30, 9, 5, tzinfo=UTC)  # the sample's digest: Mondays 09:00 London time
    try:
        assert post_digest_if_due(runtime, webs[0], now=datetime(2026, 11, 30, 8, 0, tzinfo=UTC)) is None
        weeks = [post_digest_if_due(r, w, now=due) for r, w in ((runtime, webs[0]), (other, webs[1]))]
        assert weeks == ["2026-W49", None]
        assert all(w.wait_idle(15) for w in webs)
    finally:
        for web in webs:
            web.stop()
        other.store.close()
    assert len(slack_api.calls("chat.postMessage")) == 1
