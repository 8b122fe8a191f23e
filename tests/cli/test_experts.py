"""`opsbot oncall`, and `opsbot eval --task experts` on messy data (unknown services, people who left)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from bot.answers.indexer import index_knowledge
from bot.store import Store
from bot.tools.expert_eval import evaluate_experts
from tests.conftest import SAMPLE_KNOWLEDGE, FakeEncoder, assert_clean_failure, invoke

PRIYA, MARCUS, SOFIA = "U03F8K2LQ1", "U03H1M9TZ4", "U04B7QW2XA"
MID_JANUARY = "2026-01-14T12:00Z"  # the payments rota's second week (Marcus), the platform rota's second (Sofia)


@pytest.fixture
def indexed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The sample roster and services, indexed (with the fake encoder), as OPSBOT_DB."""
    knowledge = tmp_path / "knowledge"
    knowledge.mkdir()
    for name in ("experts.yaml", "services.yaml"):
        shutil.copy(SAMPLE_KNOWLEDGE / name, knowledge / name)
    store = Store(tmp_path / "oncall.db")
    index_knowledge(store, FakeEncoder(), knowledge)
    store.close()
    monkeypatch.setenv("OPSBOT_DB", str(tmp_path / "oncall.db"))
    return knowledge


def test_oncall_lists_every_rota_now_and_next(indexed: Path) -> None:
    result = invoke("oncall", "--at", MID_JANUARY)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == f"payments  Marcus Oyelaran ({MARCUS}) until Mon 19 Jan 09:00 Europe/London"
    assert lines[1] == f"          next: Priya Raman ({PRIYA}) from Mon 19 Jan 09:00 Europe/London"
    assert lines[2] == f"platform  Sofia Lindqvist ({SOFIA}) until Tue 20 Jan 10:00 Europe/Berlin"
    assert lines[4].startswith("commerce  ")


def test_oncall_for_a_service_finds_the_rota_that_covers_it(indexed: Path) -> None:
    result = invoke("oncall", "checkout-api", "--at", MID_JANUARY, "--json")
    assert result.exit_code == 0, result.output
    (payments,) = json.loads(result.stdout)
    assert payments["team"] == "payments" and payments["now"]["person"] == MARCUS
    assert payments["now"]["until"] == "2026-01-19T09:00:00+00:00" and payments["next"]["person"] == PRIYA
    # The override in the sample: Fatima covers the platform rota over Christmas.
    (platform,) = json.loads(invoke("oncall", "platform", "--at", "2026-12-25T12:00Z", "--json").stdout)
    assert platform["now"] == {
        "person": "U07M4AH6VN",
        "from": "2026-12-24T18:00:00+01:00",
        "until": "2026-12-29T10:00:00+01:00",  # the cover ends in her own week, which runs on to the handoff
        "override": True,
    }


def test_oncall_for_a_person_gives_their_turn_now_and_their_next(indexed: Path) -> None:
    result = invoke("oncall", "--person", "marcus", "--at", MID_JANUARY)  # a first name, in any case
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [
        f"Marcus Oyelaran ({MARCUS})",
        # the time asked about, as asked (it read "on call now", though --at asked about January)
        "  payments  on call at Wed 14 Jan 12:00 UTC until Mon 19 Jan 09:00 Europe/London; "
        "next from Mon 26 Jan 09:00 Europe/London until Mon 02 Feb 09:00 Europe/London",
    ]
    (payments,) = json.loads(invoke("oncall", "--person", PRIYA, "--at", MID_JANUARY, "--json").stdout)
    assert payments["now"] is None and payments["next"]["from"] == "2026-01-19T09:00:00+00:00"
    assert (
        invoke("oncall", "--person", "Hannah Weiss").stdout
        == "Hannah Weiss (U04D9XK3PE) is on no on-call rota in experts.yaml.\n"
    )
    assert_clean_failure(invoke("oncall", "--person", "Zed"), "no one on the roster is called 'Zed'")
    # a name that is no team or service is someone's: `opsbot oncall Marcus` as `--person Marcus`
    assert (
        invoke("oncall", "Marcus", "--at", MID_JANUARY).stdout
        == invoke("oncall", "--person", "Marcus", "--at", MID_JANUARY).stdout
    )
    assert_clean_failure(invoke("oncall", "payments", "--person", "Marcus"), "not both")


def test_oncall_mistakes_are_clear_errors(indexed: Path, tmp_path: Path) -> None:
    assert_clean_failure(invoke("oncall", "paymnts"), "no rota or service called 'paymnts'", "the rotas are payments")
    assert_clean_failure(invoke("oncall", "--at", "tomorrow"), "--at 'tomorrow' is not a date and time")
    (indexed / "experts.yaml").write_text(
        (SAMPLE_KNOWLEDGE / "experts.yaml").read_text(encoding="utf-8").split("\nrotations:")[0], encoding="utf-8"
    )
    store = Store(tmp_path / "oncall.db")
    index_knowledge(store, FakeEncoder(), indexed)
    store.close()
    assert_clean_failure(invoke("oncall"), "there is no on-call rota yet: add `rotations:` to experts.yaml")


def test_oncall_for_a_rota_that_cannot_be_read_says_it_is_there_and_broken(indexed: Path, tmp_path: Path) -> None:
    # Before, `opsbot oncall platform` said there was no rota or service called 'platform'.
    roster = (indexed / "experts.yaml").read_text(encoding="utf-8")
    (indexed / "experts.yaml").write_text(
        roster.replace("handoff: tuesday 10:00", "handoff: tuesday"), encoding="utf-8"
    )
    store = Store(tmp_path / "oncall.db")
    index_knowledge(store, FakeEncoder(), indexed)
    store.close()
    assert_clean_failure(
        invoke("oncall", "Platform"),
        "the platform rota in experts.yaml has a problem, so it is not read and nobody is on call from it: "
        "`opsbot check` says what to fix; then run `opsbot index`.",
    )
    assert invoke("oncall", "payments", "--at", MID_JANUARY).exit_code == 0  # the other rotas still answer


def test_oncall_before_a_cover_in_ones_own_week_gives_the_weeks_end_and_who_follows(indexed: Path) -> None:
    # Fatima's Christmas cover falls in her own week: before, "until Thu 24 Dec 18:00", then Daniel from the 29th.
    lines = invoke("oncall", "platform", "--at", "2026-12-23T12:00Z").stdout.splitlines()
    assert lines == [
        "platform  Fatima El Idrissi (U07M4AH6VN) until Tue 29 Dec 10:00 Europe/Berlin",
        "          next: Daniel Okafor (U04C2RN8VD) from Tue 29 Dec 10:00 Europe/Berlin",
    ]


def test_override_times_are_shown_in_the_rotas_time_zone_after_indexing(indexed: Path, tmp_path: Path) -> None:
    result = invoke("oncall", "platform", "--at", "2026-12-25T12:00Z")  # the sample's Christmas cover, local times
    assert result.stdout.splitlines()[0].endswith("until Tue 29 Dec 10:00 Europe/Berlin, covering"), result.output
    roster = (indexed / "experts.yaml").read_text(encoding="utf-8")
    utc = roster.replace(
        "start: 2026-12-24T18:00, end: 2026-12-28T10:00", "start: 2026-12-24T17:00Z, end: 2026-12-28T09:00Z"
    )
    assert utc != roster
    (indexed / "experts.yaml").write_text(utc, encoding="utf-8")
    store = Store(tmp_path / "oncall.db")
    index_knowledge(store, FakeEncoder(), indexed)
    store.close()
    result = invoke("oncall", "platform", "--at", "2026-12-25T12:00Z")  # written in UTC: shown in the rota's zone
    assert result.stdout.splitlines()[0].endswith("until Tue 29 Dec 10:00 Europe/Berlin, covering"), result.output
    (platform,) = json.loads(invoke("oncall", "platform", "--at", "2026-12-25T12:00Z", "--json").stdout)
    assert platform["now"]["from"] == "2026-12-24T18:00:00+01:00"


@pytest.mark.parametrize("at", ["9999-12-31T12:00Z", "9999-12-20", "0001-01-01T00:00+05:00"])
def test_oncall_at_a_time_near_the_ends_of_the_calendar_is_refused_clearly(indexed: Path, at: str) -> None:
    assert_clean_failure(
        invoke("oncall", "--at", at), f"--at {at!r} is out of range: give a time between the years 1970 and 9000"
    )


ROSTER = """people:
  - {id: U0ANA00001, name: Ana, team: storage, services: [storage/remote]}
  - {id: U0BEN00001, name: Ben, team: storage}
  - {id: U0CAL00001, name: Cal, team: web, left: 2024-01-01}
"""


def incident(n: int, who: list[str], services: list[str], month: int) -> str:
    return (
        f"id: INC-2024-{n:04d}\ntitle: remote write queue stuck {n}\ndate: 2024-{month:02d}-10T10:00:00Z\n"
        f"severity: 3\nservices: {json.dumps(services)}\nresponders: {json.dumps(who)}\n"
        "summary: remote write queue stuck, samples dropped\nroot_cause: a shard was wedged\nresolution: restarted\n"
    )


@pytest.fixture
def messy(tmp_path: Path) -> tuple[Path, Path]:
    """A history with people who left and are not on the roster, and a query file naming unknown services."""
    knowledge = tmp_path / "messy"
    (knowledge / "incidents").mkdir(parents=True)
    (knowledge / "experts.yaml").write_text(ROSTER, encoding="utf-8")
    people = [["U0ANA00001"], ["U0BEN00001", "U0OLD00001"], ["U0CAL00001"], ["U0OLD00002"], ["U0OLD00003"]]
    for n in range(10):
        who = people[n % len(people)] + ([f"U0GONE{n:04d}"] if n > 4 else [])
        path = knowledge / "incidents" / f"INC-2024-{n:04d}.yaml"
        path.write_text(incident(n, who, ["storage/remote"], n + 1), encoding="utf-8")
    queries = tmp_path / "queries.jsonl"
    lines = [
        {"id": "q1", "query": "remote write queue stuck", "relevant": ["U0ANA00001"], "services": ["storage/remote"]},
        {"id": "q2", "query": "remote write stuck", "relevant": ["U0BEN00001"], "services": ["tsdb/wal", "nope"]},
        {"id": "q3", "query": "queue stuck", "relevant": ["U0ANA00001"], "services": ["nope"], "date": "2025-01-02"},
        {"id": "q4", "query": "someone who left", "relevant": ["U0OLD00001"]},
    ]
    queries.write_text("".join(json.dumps(q) + "\n" for q in lines), encoding="utf-8")
    return knowledge, queries


def test_the_expert_eval_survives_real_data_and_says_what_it_used(messy: tuple[Path, Path], tmp_path: Path) -> None:
    knowledge, queries = messy
    encoder = FakeEncoder()
    result = evaluate_experts(knowledge, encoder, queries, cache=tmp_path / "cache.db")
    assert result["queries"] == 3 and result["skipped_queries"] == 1  # q4: nobody on the roster to find
    assert result["unknown_services"] == {"queries": 2, "count": 2, "first": ["nope", "tsdb/wal"]}
    assert result["unknown_responders"]["count"] == 8
    assert result["unknown_responders"]["first"] == [
        "U0OLD00001",
        "U0OLD00002",
        "U0OLD00003",
        "U0GONE0005",
        "U0GONE0006",
    ]
    assert result["with_services"] is True and result["services"] == "from the query file (1 of 3 queries)"
    assert result["encoder"] == "fake-encoder" and result["cache"]["embedded"] == 5  # alike texts share one vector
    assert result["blend"]["how"].startswith("fallback weights: 10 incidents")
    assert set(result["rankings"]) >= {"learned", "tfidf_knn", "tfidf_knn_ownership", "recent_activity"}

    again = FakeEncoder()
    second = evaluate_experts(knowledge, again, queries, cache=tmp_path / "cache.db")
    assert again.calls == [] and second["cache"] == {"path": str(tmp_path / "cache.db"), "embedded": 0, "reused": 5}
    assert second["rankings"] == result["rankings"]


def test_people_who_left_are_never_ranked_in_the_eval(messy: tuple[Path, Path], tmp_path: Path) -> None:
    knowledge, queries = messy
    lines = [{"id": "c", "query": "remote write queue stuck", "relevant": ["U0CAL00001"], "date": "2025-01-02"}]
    queries.write_text(json.dumps(lines[0]) + "\n", encoding="utf-8")
    result = evaluate_experts(knowledge, FakeEncoder(), queries, cache=tmp_path / "cache.db")
    # Cal left on 2024-01-01: asked in 2025, no ranking can name him.
    assert all(m["top3"] == 0 and m["mrr"] == 0 for m in result["rankings"].values())


def test_eval_experts_on_the_command_line_reports_skips_in_one_line_each(messy: tuple[Path, Path]) -> None:
    knowledge, queries = messy
    result = invoke("eval", "--task", "experts", "--knowledge", str(knowledge), "--queries", str(queries))
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "skipped 2 unknown service name(s) in 2 query(s): nope, tsdb/wal" in out
    assert "skipped 1 query(s) with nobody on the roster to find" in out
    assert "8 responder(s) of past incidents are not on the roster (never suggested): U0OLD00001, " in out
    assert len(out.splitlines()) == 14
    report = json.loads(
        invoke("eval", "--task", "experts", "--knowledge", str(knowledge), "--queries", str(queries), "--json").stdout
    )
    assert report["with_services"] is True and report["cache"]["embedded"] == 0


def test_an_unwritable_cache_only_costs_time(messy: tuple[Path, Path], tmp_path: Path) -> None:
    knowledge, queries = messy
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("a file where the cache's folder should be")
    result = evaluate_experts(knowledge, FakeEncoder(), queries, cache=blocked / "cache.db")
    assert result["cache"] == {"path": None, "embedded": 5, "reused": 0} and result["queries"] == 3
