"""`opsbot bench alerts` at a small scale: its storm posts one briefed message per group and loses none."""

from __future__ import annotations

from pathlib import Path

from bot.tools.bench_alerts import bench_alerts
from tests.conftest import FakeEncoder

KNOWLEDGE = Path(__file__).resolve().parents[2] / "knowledge"


def test_a_small_storm_is_briefed_once_per_group_with_nothing_lost() -> None:
    result = bench_alerts(FakeEncoder(), KNOWLEDGE, groups=4, per_group=3, parallel=4)
    assert (result["groups"], result["alerts"], result["briefed_groups"]) == (4, 12, 4)
    assert (result["duplicate_posts"], result["lost_groups"], result["slack_429s"]) == (0, 0, 3)
    assert result["http_statuses"] == [200] and result["recorded_groups"] == 8
    assert 0 < result["firing_to_message_ms"]["p50"] <= result["firing_to_briefing_ms"]["p95"]
