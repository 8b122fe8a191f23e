"""Rows of the outbox claimed in memory while the database refuses writes, beside claims in the database."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from bot.slack.outbox_worker import _Durable
from bot.store import Store
from bot.store.outbox import OutboxRow


def test_a_claim_in_memory_never_takes_the_row_a_claim_in_the_database_is_taking(tmp_path: Path) -> None:
    # Two threads of one process at the moment the disk frees up: one claims in the database again, the other
    # still claims in memory. Found reviewing the in-memory claims: both could hold one row, and send it twice.
    store = Store(tmp_path / "outbox.db")
    now = time.time()
    row = OutboxRow("chat.postMessage", {"channel": "C1", "text": "x"}, "C1", created_at=now, expires_at=now + 3600)
    row.next_at = now
    row_id = store.add_outbox(row)
    durable = _Durable(store, "host:1:abcd", 30.0)
    real, inside = store.claim_outbox, threading.Event()

    def slow_claim(*args: object, **kwargs: object) -> OutboxRow | None:
        inside.set()
        time.sleep(0.3)  # the window in which the other thread reads
        return real(*args, **kwargs)  # type: ignore[arg-type]

    store.claim_outbox = slow_claim  # type: ignore[method-assign]
    in_memory: list[OutboxRow | None] = []

    def other_thread() -> None:
        inside.wait(5)
        in_memory.append(durable.claim_unwritten(now, []))

    other = threading.Thread(target=other_thread)
    other.start()
    claimed = durable.claim(now)
    other.join(5)

    assert claimed is not None and claimed.id == row_id
    assert in_memory == [None]
    store.close()
