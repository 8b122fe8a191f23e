"""The storage layer: every SQL statement of opsbot lives in this package.

SQLite through sqlite-utils, schema changes as numbered migrations (``schema.py``). ``Store`` is one
connection made of a part per concern: knowledge, roster, conversations, deploys, live incidents, alerts
from Alertmanager, the outbox of posts to Slack.
"""

from __future__ import annotations

from bot.store.alerts import AlertStore
from bot.store.base import StoreBase
from bot.store.conversations import ConversationStore
from bot.store.deploys import DeployStore
from bot.store.knowledge import ChunkRow, IndexBusy, KnowledgeStore, StoredChunk
from bot.store.live_incidents import LiveIncidentStore
from bot.store.outbox import OutboxStore
from bot.store.roster import SLACK_PREFIX, RosterStore
from bot.store.schema import TOKENIZER, migrations

__all__ = ["SLACK_PREFIX", "TOKENIZER", "ChunkRow", "IndexBusy", "Store", "StoredChunk", "migrations"]


class Store(
    KnowledgeStore,
    RosterStore,
    ConversationStore,
    DeployStore,
    LiveIncidentStore,
    AlertStore,
    OutboxStore,
    StoreBase,
):
    """A connection to the opsbot database, safe to share between threads."""
