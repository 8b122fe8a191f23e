"""The report's collector and table: what every fault scenario (and the lead's property tests) record into."""

from __future__ import annotations

import pytest

from tests.fault.report import Collector, markdown, record, table_lines

pytestmark = pytest.mark.fault


def test_a_scenario_counts_checks_violations_and_lost_messages() -> None:
    collector = Collector()
    collector.scale = "small"
    with collector.scenario("z. example") as s:
        s.tried += 3
        s.check("ran once", True)
        s.check("ran once", False, "dep-1 ran twice")
        s.check("lock released", True)
        s.lose(1, "mention answer never arrived")
    row = next(line for line in table_lines(collector) if "z. example" in line)
    assert row == "| z. example | small | 3 | 1/3 | 2 | 1 | 0 | VIOLATED |"
    assert not s.ok and "dep-1 ran twice" in s.failure()
    text = markdown(collector)
    assert "- VIOLATED: ran once (1 of 2 checks failed)" in text
    assert "- held: lock released (0 of 1 checks failed)" in text


def test_a_scenario_that_raises_is_kept_and_marked() -> None:
    collector = Collector()
    with pytest.raises(RuntimeError), collector.scenario("z. broken") as s:
        s.tried += 1
        raise RuntimeError("the serve process never answered")
    assert collector.scenarios["z. broken"].violations == [
        "scenario completed: RuntimeError: the serve process never answered"
    ]


def test_record_takes_counts_kept_elsewhere_and_expected_rows_show_when_not_run() -> None:
    collector = Collector()
    record(
        "property: approval sequences",
        tried=1000,
        invariants=["runs at most once", "approvals counted"],
        violations=["runs at most once: sequence 17 ran twice"],
        collector=collector,
    )
    lines = table_lines(collector)
    assert "| property: approval sequences |  | 1000 | 1/2 | 1 | 0 | 0 | VIOLATED |" in lines
    assert "| a. approval storm | | | | | | | not run |" in lines
