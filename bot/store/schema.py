"""The schema: numbered migrations, applied in order by name.

sqlite-utils records each applied migration by its function name in ``_sqlite_migrations``:
a migration is never renamed, reordered or edited once released; a change is a new function.
"""

from __future__ import annotations

from sqlite_utils import Database
from sqlite_utils.migrations import Migrations

migrations = Migrations("opsbot")
TOKENIZER = "porter unicode61 remove_diacritics 2"


def unknown_migrations(db: Database) -> list[str]:
    """The migrations applied to ``db`` that this version of opsbot does not have: a newer opsbot wrote it."""
    known = {m.name for m in migrations.pending(Database(memory=True))}
    return [m.name for m in migrations.applied(db) if m.name not in known]


@migrations()
def m001_knowledge(db: Database) -> None:
    db["meta"].create({"key": str, "value": str}, pk="key")
    db["documents"].create(
        {
            "path": str,
            "kind": str,
            "title": str,
            "url": str,
            "services": str,
            "tags": str,
            "owners": str,
            "incident_id": str,
            "title_hash": str,
            "content_hash": str,
            "indexed_at": str,
        },
        pk="path",
    )
    db["chunks"].create(
        {
            "id": int,
            "doc_path": str,
            "ord": int,
            "heading": str,
            "anchor": str,
            "text": str,
            "embed_hash": str,
        },
        pk="id",
        foreign_keys=[("doc_path", "documents", "path")],
    )
    db["chunks"].create_index(["doc_path"])
    db["chunks"].create_index(["embed_hash"])
    db["embeddings"].create({"model": str, "hash": str, "vector": bytes}, pk=("model", "hash"))
    db.execute(f"CREATE VIRTUAL TABLE chunks_fts USING fts5(title, heading, body, tokenize={TOKENIZER!r})")


@migrations()
def m002_incidents_and_roster(db: Database) -> None:
    db["incidents"].create(
        {
            "id": str,
            "title": str,
            "date": str,
            "severity": int,
            "services": str,
            "responders": str,
            "summary": str,
            "root_cause": str,
            "resolution": str,
            "duration_minutes": int,
            "timeline": str,
            "path": str,
        },
        pk="id",
    )
    db["experts"].create(
        {
            "id": str,
            "name": str,
            "team": str,
            "skills": str,
            "services": str,
            "timezone": str,
            "hours": str,
            "away": int,
        },
        pk="id",
    )


@migrations()
def m003_term_statistics(db: Database) -> None:
    # How many chunks hold each (stemmed) term: lets search skip terms that are everywhere.
    db.execute("CREATE VIRTUAL TABLE chunks_vocab USING fts5vocab(chunks_fts, 'row')")


@migrations()
def m004_conversations(db: Database) -> None:
    # Slack retries an event it thinks was lost; its id is remembered so it is answered once.
    db["events_seen"].create({"event_id": str, "at": str}, pk="event_id")
    db["answers"].create(
        {"id": str, "query": str, "paths": str, "channel": str, "user": str, "thread_ts": str, "at": str}, pk="id"
    )
    db["conversations"].create(
        {"channel": str, "thread_ts": str, "question": str, "at": str}, pk=("channel", "thread_ts")
    )
    db["feedback"].create(
        {"id": int, "user": str, "query": str, "path": str, "vote": int, "answer_id": str, "at": str, "vector": bytes},
        pk="id",
    )
    db["feedback"].create_index(["answer_id", "user"], unique=True)
    db["channel_settings"].create({"channel": str, "answer": str, "updated_by": str, "at": str}, pk="channel")


@migrations()
def m005_services_and_suggestions(db: Database) -> None:
    db["services"].create({"name": str, "owners": str, "config": str}, pk="name")
    db["incidents"].add_column("vector_hash", str)  # the expert model's vector of the incident
    # Who was suggested first, and when: spreads the load between equally good people.
    db["suggestions"].create({"id": int, "at": str, "text": str, "first": str, "ranked": str}, pk="id")


@migrations()
def m006_deploys(db: Database) -> None:
    db["deploy_requests"].create(
        {
            "id": str,
            "kind": str,  # deploy | rollback
            "service": str,
            "env": str,
            "version": str,
            "from_version": str,
            "requester": str,
            "status": str,  # pending, running, succeeded, failed, timed_out, rejected, expired, interrupted
            "approvals_needed": int,
            "created_at": str,
            "expires_at": str,
            "started_at": str,
            "finished_at": str,
            "channel": str,
            "message_ts": str,
            "exit_code": int,
            "log_tail": str,
            "source": str,  # slack | ci
            "commit_sha": str,
            "commit_time": str,
            "pipeline_url": str,
            "changes": str,
        },
        pk="id",
    )
    db["deploy_requests"].create_index(["service", "env", "status"])
    db["deploy_decisions"].create(
        {"request_id": str, "user": str, "decision": str, "at": str}, pk=("request_id", "user")
    )
    # One active request per service and environment: the primary key is the lock.
    db["deploy_locks"].create(
        {"service": str, "env": str, "request_id": str, "holder": str, "at": str}, pk=("service", "env")
    )
    db["audit"].create({"id": int, "at": str, "actor": str, "action": str, "request_id": str, "details": str}, pk="id")


@migrations()
def m007_live_incidents(db: Database) -> None:
    db["live_incidents"].create(
        {
            "id": str,
            "title": str,
            "severity": int,
            "services": str,
            "status": str,  # open | resolved
            "declared_by": str,
            "declared_at": str,
            "channel": str,
            "origin_channel": str,
            "roles": str,
            "resolved_at": str,
            "resolution": str,
        },
        pk="id",
    )
    db["live_incidents"].create_index(["channel"])
    db["incident_events"].create(
        {"id": int, "incident_id": str, "at": str, "actor": str, "kind": str, "text": str}, pk="id"
    )
    db["incident_events"].create_index(["incident_id"])


@migrations()
def m008_chunk_words(db: Database) -> None:
    # How many words a section has of its own: a "TODO" or "See X" section is not evidence of its own.
    db["chunks"].add_column("words", int)
    rows = db.execute("SELECT id, text FROM chunks").fetchall()
    db.conn.executemany("UPDATE chunks SET words = ? WHERE id = ?", [(len(text.split()), cid) for cid, text in rows])


@migrations()
def m009_alert_routes(db: Database) -> None:
    # The alert names a runbook declares it answers (front matter `alerts`, or an alert-name heading).
    db["documents"].add_column("alerts", str, not_null_default="[]")


@migrations()
def m010_deploy_leases(db: Database) -> None:
    # A running deploy belongs to the process that runs it, for as long as that process renews its lease;
    # only a deploy whose lease ran out (its process died) is marked interrupted by another process.
    db["deploy_requests"].add_column("owner", str, not_null_default="")
    db["deploy_requests"].add_column("lease_until", float)  # Unix seconds
    db["deploy_requests"].add_column("runner_pid", int)  # the runner's process group, to stop an orphan
    db["deploy_requests"].add_column("flags", str, not_null_default="[]")  # e.g. a CI deploy during a freeze
    db["deploy_requests"].add_column("note", str, not_null_default="")  # why it was cancelled or flagged


@migrations()
def m011_outbox(db: Database) -> None:
    # Everything opsbot posts to Slack, written before the call is made (bot/slack/web.py delivers it).
    # Times are epoch seconds (REAL): they are compared with the clock to the millisecond, never shown.
    db["outbox"].create(
        {
            "id": int,
            "method": str,  # chat.postMessage, chat.update, chat.postEphemeral, chat.delete or response_url
            "payload": str,  # JSON arguments; cleared once sent
            "url": str,  # the response_url of a response_url row: a short-lived capability, cleared once done
            "lane": str,  # ordering key: rows of one lane are delivered in the order written
            "key": str,  # names the message this row creates, for thread_of / update_of of later rows
            "thread_of": str,
            "update_of": str,
            "target": str,  # the message a chat.update edits: a newer update supersedes older pending ones
            "after": str,  # a hook registered with SlackWeb.on, run once sent
            "after_args": str,
            "notify": str,  # whom to tell when it fails for good (JSON); cleared once done
            "status": str,  # pending, sending, sent, failed, superseded
            "attempts": int,
            "created_at": float,
            "expires_at": float,
            "next_at": float,
            "last_error": str,
            "result_channel": str,
            "result_ts": str,
            "claimed_by": str,
            "claim_until": float,
            "done_at": float,
        },
        pk="id",
    )
    db["outbox"].create_index(["status", "next_at"])
    db["outbox"].create_index(["lane", "status", "id"])
    db["outbox"].create_index(["key", "id"])
    db["outbox"].create_index(["target", "status"])


@migrations()
def m012_learned_ranking(db: Database) -> None:
    # The words of each document's title as the full-text index stems them: the ranker compares them with a query's.
    db["documents"].add_column("title_terms", str, not_null_default="[]")
    # Queries made from the documents themselves to fit the ranker on; their vectors live in `embeddings`.
    db["ranker_queries"].create(
        {"id": int, "doc_path": str, "section": str, "kind": str, "text": str, "hash": str}, pk="id"
    )
    db["ranker_queries"].create_index(["hash"])
    # The fitted ranker, one per encoder model: its parameters, what it was fitted on, and its validation.
    db["rankers"].create({"model": str, "corpus_key": str, "params": str, "report": str, "fitted_at": str}, pk="model")


@migrations()
def m013_roster_time(db: Database) -> None:
    # The day someone left (their history is kept, they are never suggested) and the on-call rotations of
    # experts.yaml (one JSON spec per team).
    db["experts"].add_column("left_on", str)
    db["rotations"].create({"team": str, "spec": str}, pk="team")


@migrations()
def m014_alerts(db: Database) -> None:
    # Alertmanager notifications: one row per alert group (its groupKey), the alerts it holds now, what changed.
    db["alert_groups"].create(
        {
            "id": str,  # ag- and a digest of the groupKey: short enough for a button's value
            "group_key": str,
            "receiver": str,
            "external_url": str,  # the Alertmanager that sent it (silences go there only if it is allowed)
            "status": str,  # firing | resolved
            "service": str,
            "channel": str,
            "alertname": str,
            "severity": str,
            "group_labels": str,  # JSON
            "common_labels": str,
            "common_annotations": str,
            "digest": str,  # the status and every alert's fingerprint and status: a redelivery has the same
            "episode": int,  # a group firing again long after it resolved gets a new message
            "started_at": str,  # the episode's earliest startsAt
            "resolved_at": str,
            "received_at": str,
            "updated_at": str,
            "truncated": int,  # alerts Alertmanager left out of the notification (max_alerts)
            "message_channel": str,  # where its message is, once delivered
            "message_ts": str,
            "briefing": str,  # the briefing shown with it (JSON), "" until built
            "incident_id": str,  # declared from it in this episode
            "silence_id": str,
            "silenced_by": str,
            "silenced_until": str,
        },
        pk="id",
    )
    db["alert_groups"].create_index(["status"])
    db["alert_groups"].create_index(["updated_at"])
    db["alert_instances"].create(
        {
            "group_id": str,
            "fingerprint": str,
            "status": str,
            "labels": str,
            "annotations": str,
            "starts_at": str,
            "ends_at": str,
            "generator_url": str,
        },
        pk=("group_id", "fingerprint"),
    )
    db["alert_events"].create({"id": int, "group_id": str, "at": str, "actor": str, "kind": str, "text": str}, pk="id")
    db["alert_events"].create_index(["group_id"])
    # Incidents declared from an alert, with when the alert started firing: DORA's change-failure attribution.
    db["alert_incidents"].create(
        {"incident_id": str, "group_id": str, "service": str, "fired_at": str, "declared_at": str}, pk="incident_id"
    )


@migrations()
def m015_incident_env_and_cause(db: Database) -> None:
    # The environment an incident hit (a production incident never counts against a staging deploy), the root
    # cause recorded in Slack, and the status `cancelled` (declared by mistake: kept for the audit, never counted).
    db["live_incidents"].add_column("env", str, not_null_default="")
    db["live_incidents"].add_column("root_cause", str, not_null_default="")
    db["incidents"].add_column("env", str, not_null_default="")


@migrations()
def m016_emergency_rollbacks(db: Database) -> None:
    # The open incident whose emergency rule (services.yaml) let a rollback go with fewer approvals; "" when none.
    db["deploy_requests"].add_column("emergency", str, not_null_default="")


@migrations()
def m017_incidents_learned(db: Database) -> None:
    # When a resolved incident was first indexed: the start-up catch-up indexes only those never indexed, so an
    # incident whose exported file was deleted on purpose stays out. Those indexed already count as learned.
    db["live_incidents"].add_column("learned_at", str, not_null_default="")
    db.execute("UPDATE live_incidents SET learned_at = resolved_at WHERE id IN (SELECT id FROM incidents)")


@migrations()
def m018_feedback_model(db: Database) -> None:
    # The model a vote's question vector is by: a bot still on the previous model after `opsbot index` with a new
    # one records votes by the old model, which the next index run embeds again. "" for votes from before.
    db["feedback"].add_column("model", str, not_null_default="")


@migrations()
def m019_deploy_triggered(db: Database) -> None:
    # When a webhook runner sent its trigger (ISO UTC, "" before): a request whose process stopped after it may have
    # started a pipeline, one whose process stopped before it never did.
    db["deploy_requests"].add_column("triggered_at", str, not_null_default="")
    # What runs an approved request, recorded at the approval: command, webhook or webhook-report (one whose pipeline
    # reports back). "" for requests approved by an older opsbot (its runs in flight are interrupted, as before).
    db["deploy_requests"].add_column("runner_kind", str, not_null_default="")
    # The sweep shows in Slack what `opsbot withdraw` changed, once: by action, then by request. Withdrawals made
    # before it existed are not shown again (their messages were shown at a click, or are long gone).
    db["audit"].create_index(["action"], if_not_exists=True)
    db["audit"].create_index(["request_id"], if_not_exists=True)
    db.execute(
        "INSERT INTO audit (at, actor, action, request_id, details) SELECT at, 'opsbot', "
        "replace(action, '.withdrawn', '.shown'), request_id, '{\"before_upgrade\": true}' FROM audit "
        "WHERE action IN ('deploy.withdrawn', 'rollback.withdrawn')"
    )


@migrations()
def m020_alert_resolve_received(db: Database) -> None:
    # When opsbot received a group's resolve (ISO UTC, "" while it fires). Alertmanager sends the resolve up to
    # group_interval after the alerts' endsAt, so a late copy of the firing is judged from this, not from endsAt.
    # Groups resolved before it keep "": their resolved_at stands in.
    db["alert_groups"].add_column("resolve_received_at", str, not_null_default="")


@migrations()
def m021_pinned_messages(db: Database) -> None:
    # The Slack message a pinned timeline entry is (`channel:ts`; "" for other entries and for pins from before):
    # a message is added once however many react, and two messages with the same words are two entries.
    db["incident_events"].add_column("message", str, not_null_default="")


@migrations()
def m022_events_seen_by_time(db: Database) -> None:
    # events_seen gets a row for every event Slack sends (each message in each channel opsbot is in): pruned by
    # age at the serve sweep, which this index keeps a range delete.
    db["events_seen"].create_index(["at"], if_not_exists=True)


@migrations()
def m023_title_aliases(db: Database) -> None:
    # The short forms of each document's title that the document spells out ({"hpp": ["hostpath", "provision"]}),
    # stemmed: a query that says the words finds the title that abbreviates them. "{}" until the next index.
    db["documents"].add_column("title_aliases", str, not_null_default="{}")


@migrations()
def m024_title_embed_text(db: Database) -> None:
    # The text the title's vector is made of (title_hash is its hash): a lost vector is made again of this, not of
    # a title rebuilt without its incident id or short forms. "" until the next index (the title then, as before).
    db["documents"].add_column("title_embed", str, not_null_default="")


@migrations()
def m025_private_incidents(db: Database) -> None:
    # 1: the incident is worked in a private channel (or a DM, or a channel whose privacy Slack would not say):
    # shown and changed only there, and kept out of the index that every channel searches. -1: not known yet, for
    # the incidents declared before opsbot asked; private until Slack says otherwise (the next /incident asks).
    db["live_incidents"].add_column("private", int, not_null_default=0)
    db.execute("UPDATE live_incidents SET private = -1")


@migrations()
def m026_deploy_start_reported(db: Database) -> None:
    # 0: a CI run reported only at its finish, whose row takes the finish as its start (for ordering): its start
    # and duration are shown as not reported. Rows before this: 1, as they were shown.
    db["deploy_requests"].add_column("start_reported", int, not_null_default=1)


@migrations()
def m027_deploy_never_started(db: Database) -> None:
    # 1: a failed run that never began (its command could not start, its pipeline refused the trigger, the run could
    # not be prepared): it changed nothing, so it is no change in the DORA figures and nothing a rollback undoes.
    # Rows before this: 0, as they were counted.
    db["deploy_requests"].add_column("never_started", int, not_null_default=0)


@migrations()
def m028_answers_shown(db: Database) -> None:
    # What an answer showed (its text and blocks, JSON) when it can be shared: Share posts that very answer, not a
    # new search that a vote or an index run since may have changed. "" for answers saved before, and for the rest.
    db["answers"].add_column("shown", str, not_null_default="")


@migrations()
def m029_alert_groups_checked_at(db: Database) -> None:
    # When opsbot last asked Alertmanager whether a firing group's alerts still fire, having heard nothing of it for
    # a while (a resolve can be lost: Alertmanager restarted, or opsbot refused it). "" for never; rows before this too.
    db["alert_groups"].add_column("checked_at", str, not_null_default="")
    # When Alertmanager was found to list none of them: the group is resolved only if it still lists none a few
    # minutes later (a restarted Alertmanager has no alerts until Prometheus sends them again). "" for not.
    db["alert_groups"].add_column("missing_at", str, not_null_default="")
