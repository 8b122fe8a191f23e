"""On-call rotations in experts.yaml: validation with clear errors, and who is on call now and next."""

from __future__ import annotations

from datetime import UTC, date, datetime, time
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from bot.errors import InvalidRequest
from bot.knowledge import load_knowledge
from bot.rota import Rota, on_call, shift_at, turns_of

PRIYA, DANIEL, SOFIA, TOMAS = "U03F8K2LQ1", "U04C2RN8VD", "U04B7QW2XA", "U05E4TY6MF"
LONDON = ZoneInfo("Europe/London")
PEOPLE = f"""people:
  - id: {PRIYA}
    name: Priya Raman
    team: platform
  - id: {DANIEL}
    name: Daniel Okafor
    team: platform
  - id: {SOFIA}
    name: Sofia Lindqvist
    team: platform
  - id: {TOMAS}
    name: Tomás
    team: commerce
    left: 2025-06-30
"""
ROTA = f"""rotations:
  platform:
    members: [{PRIYA}, {DANIEL}, {SOFIA}]
    handoff: monday 09:00
    timezone: Europe/London
    start: 2026-01-05
    services: [storage/remote]
"""


def load(tmp_path: Path, rotations: str = ROTA):  # noqa: ANN201
    (tmp_path / "experts.yaml").write_text(PEOPLE + rotations, encoding="utf-8")
    return load_knowledge(tmp_path)


def london(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=LONDON)


def test_a_rota_is_read_with_its_fields(tmp_path: Path) -> None:
    kb = load(tmp_path)
    assert kb.problems == []
    (rota,) = kb.rotations
    assert (rota.team, rota.members, rota.handoff_day, rota.handoff_time) == (
        "platform",
        (PRIYA, DANIEL, SOFIA),
        0,
        "09:00",
    )
    assert (rota.timezone, rota.start, rota.services) == ("Europe/London", date(2026, 1, 5), ("storage/remote",))
    assert kb.experts[3].left == date(2025, 6, 30)


def test_members_take_turns_from_one_handoff_to_the_next(tmp_path: Path) -> None:
    (rota,) = load(tmp_path).rotations
    assert shift_at(rota, london("2026-01-05T08:59")) is None  # before the rota's first handoff
    first = shift_at(rota, london("2026-01-05T09:00"))
    assert first is not None and first.person == PRIYA
    assert (first.start, first.end) == (london("2026-01-05T09:00"), london("2026-01-12T09:00"))
    assert shift_at(rota, london("2026-01-12T08:59")).person == PRIYA
    assert shift_at(rota, london("2026-01-12T09:00")).person == DANIEL
    assert shift_at(rota, london("2026-01-19T10:00")).person == SOFIA
    assert shift_at(rota, london("2026-01-26T10:00")).person == PRIYA  # round again


def test_the_handoff_stays_at_local_time_across_summer_time(tmp_path: Path) -> None:
    (rota,) = load(tmp_path).rotations
    # Summer time began on Sunday 29 March 2026: Monday's handoff is 09:00 BST, 08:00 UTC.
    before = shift_at(rota, datetime(2026, 3, 30, 7, 59, tzinfo=UTC))
    after = shift_at(rota, datetime(2026, 3, 30, 8, 0, tzinfo=UTC))
    assert before is not None and after is not None and before.person != after.person
    assert after.start.astimezone(UTC) == datetime(2026, 3, 30, 8, 0, tzinfo=UTC)


def test_now_and_next(tmp_path: Path) -> None:
    (rota,) = load(tmp_path).rotations
    answer = on_call(rota, london("2026-01-14T15:00"))
    assert answer.now.person == DANIEL and answer.now.end == london("2026-01-19T09:00")
    assert answer.next.person == SOFIA and answer.next.start == london("2026-01-19T09:00")
    early = on_call(rota, london("2025-12-01T10:00"))
    assert early.now is None and early.next.person == PRIYA and early.next.start == london("2026-01-05T09:00")


def test_an_override_covers_part_of_a_shift(tmp_path: Path) -> None:
    rotations = ROTA + (
        f"    overrides:\n      - {{person: {SOFIA}, start: 2026-01-14T18:00, end: 2026-01-16T09:00}}\n"
        f"      - {{person: {PRIYA}, start: '2026-01-15T00:00:00Z', end: '2026-01-15T06:00:00Z'}}\n"
    )
    kb = load(tmp_path, rotations)
    assert kb.problems == []
    (rota,) = kb.rotations
    assert shift_at(rota, london("2026-01-14T17:59")).person == DANIEL
    answer = on_call(rota, london("2026-01-14T12:00"))
    assert answer.now.person == DANIEL and answer.now.end == london("2026-01-14T18:00")  # cut short by the cover
    assert answer.next.person == SOFIA and answer.next.override
    covering = shift_at(rota, london("2026-01-14T20:00"))
    assert covering.person == SOFIA and covering.override
    assert covering.end == datetime(2026, 1, 15, 0, 0, tzinfo=UTC)  # the later override wins from here
    assert shift_at(rota, datetime(2026, 1, 15, 3, 0, tzinfo=UTC)).person == PRIYA
    assert shift_at(rota, datetime(2026, 1, 15, 7, 0, tzinfo=UTC)).person == SOFIA
    assert shift_at(rota, london("2026-01-16T09:00")).person == DANIEL  # back to the rota
    # Who follows a cover starts when the cover ends, not when their own shift began days before.
    after_inner = shift_at(rota, datetime(2026, 1, 15, 7, 0, tzinfo=UTC))
    assert after_inner.start == datetime(2026, 1, 15, 6, 0, tzinfo=UTC)  # Sofia again, once Priya's hours ended
    during = on_call(rota, london("2026-01-15T12:00"))
    assert during.now.person == SOFIA and during.now.end == london("2026-01-16T09:00")
    assert (during.next.person, during.next.start) == (DANIEL, london("2026-01-16T09:00"))
    assert shift_at(rota, london("2026-01-16T12:00")).start == london("2026-01-16T09:00")


@pytest.mark.parametrize(
    ("rotations", "message", "line"),
    [
        (
            ROTA.replace("  platform:", "  platfrom:"),
            "rotations.platfrom: no one on the roster is in team 'platfrom'; teams on the roster: commerce, platform",
            16,
        ),
        (
            ROTA.replace(f"[{PRIYA}, {DANIEL}, {SOFIA}]", "[U0NOBODY01]"),
            "rotations.platform.members: no member is on the roster; list the roster ids who take turns, in order: "
            "members: [U04C2RN8VD, ...]",
            17,
        ),
        (
            ROTA.replace("monday 09:00", "mondays at 9"),
            "rotations.platform.handoff: 'mondays at 9' must be a weekday and a 24-hour time, hours and minutes, "
            "for example handoff: monday 09:00",
            18,
        ),
        (
            ROTA.replace("Europe/London", "Europe/Londres"),
            "rotations.platform.timezone: 'Europe/Londres' is not an IANA time zone such as Europe/London",
            19,
        ),
        (  # a folder of the time zone database, not a zone: was an IsADirectoryError traceback
            ROTA.replace("Europe/London", "Europe"),
            "rotations.platform.timezone: 'Europe' is not an IANA time zone such as Europe/London",
            19,
        ),
        (
            ROTA.replace("2026-01-05", "2026-01-07"),
            "rotations.platform.start: 2026-01-07 is a wednesday, but shifts are handed over on monday: give the "
            "handoff day on which the first member's first shift begins",
            20,
        ),
        (
            ROTA.replace("    start: 2026-01-05\n", ""),
            "rotations.platform.start: None is not a date such as 2026-01-05",
            16,
        ),
    ],
    ids=[
        "unknown-team",
        "no-member-on-roster",
        "bad-handoff",
        "bad-timezone",
        "region-folder",
        "start-not-handoff-day",
        "no-start",
    ],
)
def test_a_rota_that_cannot_be_read_is_reported_with_its_line_and_the_roster_still_loads(
    tmp_path: Path, rotations: str, message: str, line: int
) -> None:
    kb = load(tmp_path, rotations)
    assert [(p.path, p.message, p.line) for p in kb.problems] == [("experts.yaml", message, line)]
    assert kb.rotations == [] and len(kb.experts) == 4
    assert kb.unread_rotas == [rotations.split(":")[1].split()[-1]]  # for /oncall to say it is there and broken


LEFT_OUT = "; this override is left out until it is fixed"
COVER = f"    overrides:\n      - {{person: {SOFIA}, start: 2026-01-14T18:00, end: 2026-01-16T09:00}}\n"


@pytest.mark.parametrize(
    ("rotations", "message", "line", "members", "services", "covers"),
    [
        (
            ROTA.replace(f"{DANIEL}, {SOFIA}]", f"{DANIEL}, U0NOBODY01]"),
            "rotations.platform.members[2]: 'U0NOBODY01' is not on the roster; use a roster id from `people:`; "
            "left out, the rota goes round the others",
            17,
            (PRIYA, DANIEL),
            ("storage/remote",),
            0,
        ),
        (
            ROTA.replace(f"{DANIEL}, {SOFIA}]", f"{DANIEL}, U04B7QW2XB]"),
            "rotations.platform.members[2]: 'U04B7QW2XB' is not on the roster (did you mean U04B7QW2XA, Sofia "
            "Lindqvist?); use a roster id from `people:`; left out, the rota goes round the others",
            17,
            (PRIYA, DANIEL),
            ("storage/remote",),
            0,
        ),
        (
            ROTA.replace(f"{DANIEL}, {SOFIA}]", f"{DANIEL}, {PRIYA}]"),
            f"rotations.platform.members[2]: {PRIYA} is listed again; left out, as each member takes one turn a round",
            17,
            (PRIYA, DANIEL),
            ("storage/remote",),
            0,
        ),
        (
            ROTA + COVER.replace("end: 2026-01-16T09:00", "end: 2026-01-14T09:00"),
            f"rotations.platform.overrides[0].end: must be after start (2026-01-14T18:00){LEFT_OUT}",
            23,
            (PRIYA, DANIEL, SOFIA),
            ("storage/remote",),
            0,
        ),
        (
            ROTA + COVER.replace("end: 2026-01-16T09:00", "end: 2026-12-32T10:00"),
            "rotations.platform.overrides[0].end: '2026-12-32T10:00' is not a real date and time (December 2026 has "
            f"31 days); write one such as 2026-11-27T18:00{LEFT_OUT}",
            23,
            (PRIYA, DANIEL, SOFIA),
            ("storage/remote",),
            0,
        ),
        (  # open-ended at the calendar's end: before, passed check and index, then crashed every /oncall
            ROTA + COVER.replace("end: 2026-01-16T09:00", "end: 9999-12-31T23:59"),
            "rotations.platform.overrides[0].end: '9999-12-31T23:59' must be a date in the years 1970 to 9000 (for "
            f"no end in sight, a far one such as 2100-01-01){LEFT_OUT}",
            23,
            (PRIYA, DANIEL, SOFIA),
            ("storage/remote",),
            0,
        ),
        (
            ROTA + COVER.replace(f"person: {SOFIA}", "person: U04B7QW2XB"),
            "rotations.platform.overrides[0].person: 'U04B7QW2XB' is not on the roster (did you mean U04B7QW2XA, "
            f"Sofia Lindqvist?); use a roster id from `people:`{LEFT_OUT}",
            23,
            (PRIYA, DANIEL, SOFIA),
            ("storage/remote",),
            0,
        ),
        (  # the cover itself holds: only the note is left out
            ROTA + COVER.replace("}\n", ", reason: xmas}\n"),
            "rotations.platform.overrides[0].reason: unknown field, left out with what it holds; an override has "
            "person, start, end",
            23,
            (PRIYA, DANIEL, SOFIA),
            ("storage/remote",),
            1,
        ),
        (
            ROTA + COVER.replace("overrides:", "overides:"),
            "rotations.platform.overides: unknown field, left out with what it holds; did you mean `overrides`?",
            22,
            (PRIYA, DANIEL, SOFIA),
            ("storage/remote",),
            0,
        ),
        (
            ROTA.replace("storage/remote", "storage remote, checkout-api"),
            "rotations.platform.services[0]: service name 'storage remote': use letters, digits, '.', '_' and '-', "
            "with '/' between parts (like checkout-api or storage/remote), up to 100 characters; left out",
            21,
            (PRIYA, DANIEL, SOFIA),
            ("checkout-api",),
            0,
        ),
        (
            ROTA.replace("    services:", "    members_extra: 1\n    services:"),
            "rotations.platform.members_extra: unknown field, left out with what it holds; a rota has members, "
            "handoff, timezone, start, services, overrides",
            21,
            (PRIYA, DANIEL, SOFIA),
            ("storage/remote",),
            0,
        ),
    ],
    ids=[
        "member-not-on-roster",
        "member-id-slip",
        "member-twice",
        "override-ends-first",
        "override-date-that-does-not-exist",
        "override-at-the-calendars-end",
        "override-person-slip",
        "override-with-a-reason",
        "overrides-misspelt",
        "bad-service",
        "unknown-field",
    ],
)
def test_a_bad_member_override_or_field_is_reported_and_left_out_and_the_rota_still_loads(
    tmp_path: Path, rotations: str, message: str, line: int, members: tuple, services: tuple, covers: int
) -> None:
    """Dropping the whole rota for one slip took the team off call: /oncall said there was no such rota."""
    kb = load(tmp_path, rotations)
    assert [(p.path, p.message, p.line) for p in kb.problems] == [("experts.yaml", message, line)]
    (rota,) = kb.rotations
    assert (rota.team, rota.members, rota.services, len(rota.overrides)) == ("platform", members, services, covers)
    assert kb.unread_rotas == []


@pytest.mark.parametrize(
    ("written", "read"),
    [
        ("    services: [storage/remote]\n", "    services: storage/remote\n"),  # one name, as everywhere else
        ("handoff: monday 09:00", "handoff: monday 9:00"),
        ("handoff: monday 09:00", "handoff: Mon 09:00"),
    ],
    ids=["one-service-as-text", "one-digit-hour", "short-weekday"],
)
def test_a_rota_written_another_plain_way_reads_the_same(tmp_path: Path, written: str, read: str) -> None:
    expected = load(tmp_path).rotations
    kb = load(tmp_path, ROTA.replace(written, read))
    assert kb.problems == [] and kb.rotations == expected


def test_the_sample_roster_has_rotations_that_load() -> None:
    from tests.conftest import SAMPLE_KNOWLEDGE

    kb = load_knowledge(SAMPLE_KNOWLEDGE)
    assert not [p for p in kb.problems if p.path == "experts.yaml"]
    assert kb.rotations and all(on_call(r).now or on_call(r).next for r in kb.rotations)


def test_index_stores_the_rotations_and_who_left(tmp_path: Path, fake_encoder) -> None:  # noqa: ANN001
    from bot.answers.indexer import index_knowledge
    from bot.store import Store

    rotations = ROTA + f"    overrides:\n      - {{person: {SOFIA}, start: 2026-01-14T18:00, end: 2026-01-16T09:00}}\n"
    kb = load(tmp_path, rotations)
    store = Store(tmp_path / "o.db")
    try:
        index_knowledge(store, fake_encoder, tmp_path)
        assert store.load_rotations() == kb.rotations
        assert [e.left for e in store.load_experts()] == [None, None, None, date(2025, 6, 30)]
        (tmp_path / "experts.yaml").write_text(PEOPLE, encoding="utf-8")  # the rotations removed
        index_knowledge(store, fake_encoder, tmp_path)
        assert store.load_rotations() == []
    finally:
        store.close()


def test_a_bad_services_or_skills_value_keeps_the_person_and_their_rota(tmp_path: Path) -> None:
    people = PEOPLE.replace("    name: Priya Raman\n", "    name: Priya Raman\n    services: [checkout api]\n").replace(
        "    name: Daniel Okafor\n", "    name: Daniel Okafor\n    skills: {postgres: expert}\n"
    )
    (tmp_path / "experts.yaml").write_text(people + ROTA, encoding="utf-8")
    kb = load_knowledge(tmp_path)
    assert [(p.message, p.line) for p in kb.problems] == [
        (
            f"person #1 ({PRIYA}): service name 'checkout api': use letters, digits, '.', '_' and '-', with '/' "
            "between parts (like checkout-api or storage/remote), up to 100 characters (`services` left out)",
            2,
        ),
        (
            f"person #2 ({DANIEL}): `skills` must be a list of names, for example skills: [postgres, kafka] "
            "(`skills` left out)",
            6,
        ),
    ]
    assert [(e.id, e.services, e.skills) for e in kb.experts[:2]] == [(PRIYA, (), ()), (DANIEL, (), ())]
    (rota,) = kb.rotations
    assert rota.members == (PRIYA, DANIEL, SOFIA)


def test_someone_leaving_later_stays_on_the_rota_until_their_left_day_then_their_turns_are_skipped(
    tmp_path: Path,
    fake_encoder,  # noqa: ANN001
) -> None:
    from bot.answers.indexer import index_knowledge
    from bot.store import Store

    people = PEOPLE.replace("    name: Daniel Okafor\n", "    name: Daniel Okafor\n    left: 2999-01-16\n")
    (tmp_path / "experts.yaml").write_text(people + ROTA, encoding="utf-8")
    kb = load_knowledge(tmp_path)
    assert kb.problems == []  # serving their notice: not refused
    (rota,) = kb.rotations
    assert shift_at(rota, london("2999-01-15T12:00")).person == DANIEL  # his turn, before his last day
    cover = on_call(rota, london("2999-01-16T12:00"))  # he has left: the next member takes the rest of his turn
    # ... and then has her own: on call until it ends, handing over to Priya then (before, "until Mon 21 Jan",
    # with Priya next from the 28th, read as a week with nobody on call)
    assert (cover.now.person, cover.now.start, cover.now.end) == (
        SOFIA,
        london("2999-01-16T00:00"),
        london("2999-01-28T09:00"),
    )
    assert (cover.next.person, cover.next.start) == (PRIYA, london("2999-01-28T09:00"))
    assert shift_at(rota, london("2999-01-16T12:00")).end == london("2999-01-21T09:00")  # the turn itself
    assert shift_at(rota, london("2999-02-05T12:00")).person == SOFIA  # his next turn too
    store = Store(tmp_path / "o.db")
    try:
        index_knowledge(store, fake_encoder, tmp_path)
        assert store.load_rotations() == [rota]
    finally:
        store.close()


def test_someone_leaving_during_their_turn_is_on_call_until_their_left_day_begins_then_the_next_member(
    tmp_path: Path,
) -> None:
    people = PEOPLE.replace("    name: Daniel Okafor\n", "    name: Daniel Okafor\n    left: 2999-01-16\n")
    (tmp_path / "experts.yaml").write_text(people + ROTA, encoding="utf-8")
    (rota,) = load_knowledge(tmp_path).rotations

    answer = on_call(rota, london("2999-01-15T12:00"))  # his turn runs to Mon 21 Jan 09:00, but he leaves on the 16th

    assert (answer.now.person, answer.now.start, answer.now.end) == (
        DANIEL,
        london("2999-01-14T09:00"),
        london("2999-01-16T00:00"),
    )
    assert (answer.next.person, answer.next.start) == (SOFIA, london("2999-01-16T00:00"))
    assert shift_at(rota, london("2999-01-15T23:59")).end == shift_at(rota, london("2999-01-16T00:00")).start


def test_an_override_ends_when_its_person_leaves_decided_in_the_rotas_time_zone(tmp_path: Path) -> None:
    """Tomás, in Tokyo, leaves on 20 January: his cover ends at the start of that day in London, the rota's zone, as
    a member's turn would; a cover of his that would begin after it never starts."""
    people = PEOPLE.replace("    left: 2025-06-30\n", "    left: 2999-01-20\n    timezone: Asia/Tokyo\n")
    rotations = ROTA + (
        f"    overrides:\n      - {{person: {TOMAS}, start: 2999-01-18T09:00, end: 2999-01-25T09:00}}\n"
        f"      - {{person: {TOMAS}, start: 2999-02-01T09:00, end: 2999-02-03T09:00}}\n"
    )
    (tmp_path / "experts.yaml").write_text(people + rotations, encoding="utf-8")
    kb = load_knowledge(tmp_path)
    assert kb.problems == []
    (rota,) = kb.rotations

    covering = on_call(rota, london("2999-01-19T12:00"))

    assert (covering.now.person, covering.now.override, covering.now.end) == (TOMAS, True, london("2999-01-20T00:00"))
    assert (covering.next.person, covering.next.start) == (DANIEL, london("2999-01-20T00:00"))
    assert shift_at(rota, london("2999-01-19T23:59")).person == TOMAS
    assert shift_at(rota, london("2999-01-20T00:00")).person == DANIEL  # 15:00 on the 20th in Tokyo: decided in London
    assert shift_at(rota, london("2999-01-22T12:00")).person == SOFIA
    assert shift_at(rota, london("2999-02-02T12:00")).person != TOMAS


def test_an_override_in_the_hour_summer_time_repeats_is_compared_by_instant_not_wall_clock() -> None:
    """01:30 BST (00:30 UTC) comes before 01:10 GMT (01:10 UTC), though 01:10 reads earlier on the clock."""
    from bot.models import Override, Rotation

    cover = Override(SOFIA, datetime(2026, 10, 25, 1, 10, tzinfo=UTC).astimezone(LONDON), london("2026-10-25T03:00"))
    rota = Rotation("payments", (PRIYA, DANIEL), 6, "01:30", "Europe/London", date(2026, 10, 4), overrides=(cover,))

    answer = on_call(rota, datetime(2026, 10, 25, 0, 0, tzinfo=UTC))  # 01:00 BST, before the handoff

    assert answer.now.person == PRIYA and answer.now.end.astimezone(UTC) == datetime(2026, 10, 25, 0, 30, tzinfo=UTC)
    assert answer.next.person == DANIEL and not answer.next.override
    assert shift_at(rota, datetime(2026, 10, 25, 1, 10, tzinfo=UTC)).person == SOFIA


@pytest.mark.parametrize(
    ("start", "night", "handoff"),
    [
        (date(2026, 10, 4), datetime(2026, 10, 25, tzinfo=UTC), datetime(2026, 10, 25, 0, 30, tzinfo=UTC)),
        (date(2026, 3, 1), datetime(2026, 3, 29, tzinfo=UTC), datetime(2026, 3, 29, 1, 30, tzinfo=UTC)),
    ],
    ids=["repeated-hour", "skipped-hour"],
)
def test_a_handoff_in_the_hour_summer_time_repeats_or_skips_hands_over_once(
    start: date, night: datetime, handoff: datetime
) -> None:
    """01:30 happens twice when summer time ends (the first one counts), and not at all when it begins (the
    time after the gap counts): the pager changes hands once, and every shift holds the time it is asked for."""
    from datetime import timedelta

    from bot.models import Rotation

    rota = Rotation("payments", (PRIYA, DANIEL), 6, "01:30", "Europe/London", start)
    shifts = [(night + timedelta(minutes=m), shift_at(rota, night + timedelta(minutes=m))) for m in range(0, 180, 5)]
    assert all(s.start <= at < s.end for at, s in shifts), [(at, s) for at, s in shifts if not s.start <= at < s.end]
    changes = [at for (_, a), (at, b) in zip(shifts, shifts[1:], strict=False) if a.person != b.person]
    assert changes == [handoff]
    before, after = shift_at(rota, handoff - timedelta(minutes=1)), shift_at(rota, handoff)
    # Compared in UTC: Python never finds a time in a repeated hour equal to one in another zone.
    assert before.end.astimezone(UTC) == after.start.astimezone(UTC) == handoff
    assert after.end.astimezone(LONDON).replace(tzinfo=None) == datetime.combine(
        handoff.date() + timedelta(7), time(1, 30)
    )


def test_the_only_member_of_a_rota_is_on_call_with_no_handover_said(tmp_path: Path) -> None:
    from bot.rota import describe

    (rota,) = load(tmp_path, ROTA.replace(f"[{PRIYA}, {DANIEL}, {SOFIA}]", f"[{PRIYA}]")).rotations
    answer = on_call(rota, london("2026-03-04T12:00"))
    assert answer.now.person == PRIYA and answer.next is None
    assert describe(answer, {PRIYA: "Priya Raman"}) == ("Priya Raman (U03F8K2LQ1) with no handover in the rota", "")


def test_a_member_who_left_is_reported_and_the_rota_still_loads_without_them(tmp_path: Path) -> None:
    # Before, the whole rota was dropped at the next index: /oncall said the team had none, and its on-call person
    # left the briefings, although the runtime skips a leaver's turns.
    kb = load(tmp_path, ROTA.replace(f"{DANIEL}, {SOFIA}]", f"{DANIEL}, {TOMAS}]"))
    message = (
        f"rotations.platform.members[2]: {TOMAS} left on 2025-06-30; take them out of the rota (their turns are "
        "skipped)"
    )
    assert [(p.path, p.message, p.line) for p in kb.problems] == [("experts.yaml", message, 17)]
    (rota,) = kb.rotations
    people = {on_call(rota, london(f"2026-03-{d:02d}T12:00")).now.person for d in range(2, 31)}
    assert TOMAS not in people and people == {PRIYA, DANIEL}


def test_oncall_for_a_rota_that_cannot_be_read_says_it_is_there_and_what_to_do(tmp_path: Path) -> None:
    """Before, such a rota was answered as if it did not exist: "no rota or service called 'platform'"."""
    from bot.errors import InvalidRequest
    from bot.rota import Rota

    kb = load(tmp_path, ROTA.replace("monday 09:00", "monday"))
    rota = Rota(kb.rotations, kb.experts, {}, {}, kb.unread_rotas)
    fix = "`opsbot check` says what to fix; then run `opsbot index`."
    with pytest.raises(InvalidRequest) as told:
        rota.lookup("platform")
    assert (
        str(told.value)
        == f"the platform rota in experts.yaml has a problem, so it is not read and nobody is on call from it: {fix}"
    )
    with pytest.raises(InvalidRequest) as told:
        rota.lookup()
    assert str(told.value) == f"no rota in experts.yaml can be read (platform), so nobody is on call from one: {fix}"


def test_an_override_and_the_same_persons_own_shift_meeting_are_one_stretch_on_call(tmp_path: Path) -> None:
    """Before, "until" was the end of the first and the next person came a week later, with a gap that was not there."""
    cover = ROTA + (
        f"    overrides:\n      - {{person: {SOFIA}, start: 2026-01-17T09:00, end: 2026-01-19T09:00}}\n"
        f"      - {{person: {SOFIA}, start: 2026-01-26T09:00, end: 2026-01-27T09:00}}\n"
    )
    (rota,) = load(tmp_path, cover).rotations

    before_her_week = on_call(rota, london("2026-01-18T12:00"))  # covering Daniel, then her own week
    in_her_week = on_call(rota, london("2026-01-20T12:00"))  # her own week, then covering Priya's first day

    assert (before_her_week.now.person, before_her_week.now.end, before_her_week.now.override) == (
        SOFIA,
        london("2026-01-27T09:00"),  # through her week and the second cover
        True,
    )
    assert (in_her_week.now.person, in_her_week.now.end, in_her_week.now.override) == (
        SOFIA,
        london("2026-01-27T09:00"),
        False,
    )
    assert (in_her_week.next.person, in_her_week.next.start) == (PRIYA, london("2026-01-27T09:00"))


def test_a_persons_turns_are_the_one_they_are_on_and_their_next_each_as_one_stretch(tmp_path: Path) -> None:
    # Rota from Mon 5 Jan: Priya, Daniel, Sofia, a week each. Sofia covers Daniel's weekend before her own week.
    cover = ROTA + f"    overrides:\n      - {{person: {SOFIA}, start: 2026-01-17T09:00, end: 2026-01-19T09:00}}\n"
    (rota,) = load(tmp_path, cover).rotations

    daniel = turns_of(rota, DANIEL, london("2026-01-13T12:00"))  # his own week, cut short by her cover
    sofia = turns_of(rota, SOFIA, london("2026-01-13T12:00"))  # not yet: the cover and her week are one turn
    priya = turns_of(rota, PRIYA, london("2026-01-06T12:00"))

    assert daniel.now is not None and (daniel.now.start, daniel.now.end) == (
        london("2026-01-12T09:00"),
        london("2026-01-17T09:00"),
    )
    assert daniel.next is not None and (daniel.next.start, daniel.next.end) == (
        london("2026-02-02T09:00"),
        london("2026-02-09T09:00"),
    )
    assert sofia.now is None and sofia.next is not None
    assert (sofia.next.start, sofia.next.end, sofia.next.override) == (
        london("2026-01-17T09:00"),
        london("2026-01-26T09:00"),
        True,
    )
    assert priya.now is not None and priya.now.end == london("2026-01-12T09:00")
    assert priya.next is not None and priya.next.start == london("2026-01-26T09:00")
    # before the rota starts: no turn now, the first one next
    first = turns_of(rota, DANIEL, london("2026-01-01T12:00"))
    assert first.now is None and first.next is not None and first.next.start == london("2026-01-12T09:00")


def test_turns_are_asked_of_roster_members_on_the_rotas_that_have_them(tmp_path: Path) -> None:
    kb = load(tmp_path, ROTA.replace(f", {SOFIA}]", "]"))
    rota = Rota(kb.rotations, kb.experts, {}, {})
    assert [t.team for t in rota.turns(DANIEL, london("2026-01-13T12:00"))] == ["platform"]
    assert rota.turns(SOFIA, london("2026-01-13T12:00")) == []  # on the roster, on no rota
    with pytest.raises(InvalidRequest, match="U0NOBODY1> is not on the roster"):
        rota.turns("U0NOBODY1")


@pytest.mark.parametrize("left", ["0001-01-01", "9999-12-31"])
def test_a_left_day_off_the_rotas_calendar_is_a_problem_of_the_roster(tmp_path: Path, left: str) -> None:
    # Year 1 passed check and index, then `opsbot oncall` crashed with OverflowError in the rota's time zone.
    people = PEOPLE.replace("    name: Sofia Lindqvist\n", f"    name: Sofia Lindqvist\n    left: {left}\n")
    (tmp_path / "experts.yaml").write_text(people + ROTA, encoding="utf-8")
    kb = load_knowledge(tmp_path)
    assert [(p.message, p.line) for p in kb.problems][0] == (
        f"person #3: left {left} must be a day in the years 1970 to 9000: the day they left, such as 2025-06-30",
        8,
    )


@pytest.mark.parametrize(("left", "on_call_then"), [(date(1, 1, 1), PRIYA), (date(9999, 12, 31), SOFIA)])
def test_a_left_day_off_the_calendar_in_an_older_index_answers_without_overflowing(
    left: date, on_call_then: str
) -> None:
    from bot.models import Rotation

    # Berlin is ahead of UTC: the start of 1 January of year 1 there is before the calendar begins.
    rota = Rotation("platform", (PRIYA, SOFIA), 0, "09:00", "Europe/Berlin", date(2026, 1, 5), leaving=((SOFIA, left),))
    answer = on_call(rota, datetime(2026, 1, 14, 12, tzinfo=UTC))  # Sofia's week
    assert answer.now.person == on_call_then


def test_a_service_is_looked_up_by_its_exact_name_before_one_in_other_capitals(tmp_path: Path) -> None:
    # Before, either of two services differing only in case could answer, depending on the run's hash seed.
    from bot.errors import InvalidRequest
    from bot.models import Rotation
    from bot.rota import Rota

    kb = load(tmp_path)
    rotations = [
        Rotation("platform", (PRIYA, DANIEL), 0, "09:00", "Europe/London", date(2026, 1, 5)),
        Rotation("commerce", (SOFIA,), 0, "09:00", "Europe/London", date(2026, 1, 5)),
    ]
    rota = Rota(
        rotations, kb.experts, {}, {"checkout-api": "platform", "Checkout-API": "commerce", "ledger": "commerce"}
    )

    assert [r.team for r in rota.lookup("checkout-api")] == ["platform"]
    assert [r.team for r in rota.lookup("Checkout-API")] == ["commerce"]
    assert [r.team for r in rota.lookup("LEDGER")] == ["commerce"]  # the only one in any capitals
    with pytest.raises(InvalidRequest) as told:
        rota.lookup("CHECKOUT-API")
    assert str(told.value) == (
        "'CHECKOUT-API' could be Checkout-API or checkout-api, which differ only in capitals: write the one you mean "
        "exactly."
    )


def test_a_service_no_rota_covers_is_answered_with_who_owns_it(tmp_path: Path) -> None:
    from bot.models import Rotation

    kb = load(tmp_path)
    rotations = [Rotation("night", (PRIYA,), 0, "09:00", "Europe/London", date(2026, 1, 5), services=("api",))]
    # owners from services.yaml: a person, a team (each of its members), someone who has left
    owners = {"ledger": [DANIEL], "search": ["platform"], "orphan": [], "old": [TOMAS]}
    rota = Rota(rotations, kb.experts, owners, {"orphan": "nobody-here"})
    told = {}
    for service in ("ledger", "search", "orphan", "old"):
        with pytest.raises(InvalidRequest) as raised:
            rota.lookup(service)
        told[service] = str(raised.value)
    fix = "to a rota's `services:` in experts.yaml."
    reach = "reach them directly, or add it"
    assert told["ledger"] == f"no rota covers ledger. Its owner is Daniel Okafor (platform team): {reach} {fix}"
    assert told["search"] == (
        "no rota covers search. Its owners are Daniel Okafor (platform team), Priya Raman (platform team) and "
        f"Sofia Lindqvist (platform team): {reach} {fix}"
    )
    assert told["orphan"] == told["old"].replace("old", "orphan") == f"no rota covers orphan: add it {fix}"
