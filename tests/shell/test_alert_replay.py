"""`/alert FILE` in `opsbot shell`: a payload file replayed as if Alertmanager had sent it."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import Chat

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "alertmanager"


def test_a_payload_file_is_posted_and_briefed_once_and_a_replay_changes_nothing(chat: Chat, tmp_path: Path) -> None:
    shown = chat.say(f"/alert {FIXTURES / 'pgbouncer-firing.json'}")
    assert "[FIRING:2] PgBouncerPoolExhausted" in shown and "checkout-api" in shown
    assert "Alert group ag-" in shown and "opened in" in shown
    # checkout-api has no channel of its own: settings.alerts_channel, named for its role, not shown as C04ALERTS1
    assert "in #alerts" in shown and "C04ALERTS1" not in shown
    again = chat.say(f"/alert {FIXTURES / 'pgbouncer-firing.json'}")
    assert "nothing new (a redelivery)" in again and "[FIRING" not in again
    resolved = chat.say(f"/alert {FIXTURES / 'pgbouncer-resolved.json'}")
    assert "[RESOLVED] PgBouncerPoolExhausted" in resolved


def test_a_file_that_is_not_a_payload_is_explained(chat: Chat, tmp_path: Path) -> None:
    (tmp_path / "x.json").write_text('{"version": "3"}', encoding="utf-8")
    assert "not an Alertmanager webhook payload: version" in chat.say(f"/alert {tmp_path / 'x.json'}")
    assert "cannot read" in chat.say(f"/alert {tmp_path / 'missing.json'}")
    assert "Usage: /alert FILE" in chat.say("/alert")
