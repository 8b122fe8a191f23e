"""What the fake Slack Web API answers: the workspace's messages, channels and users, and each method.

A mixin of ``FakeSlackAPI`` (bot/slack/local/fake_api.py), which owns the state these methods read and
change (``_messages``, ``_channels``, ``_users``, the counters) and calls them with its lock held.
"""

from __future__ import annotations

import time
from typing import Any

Answer = dict[str, Any]
Body = dict[str, Any]
BOT_USER_ID = "UBOT0001"
BOT_ID = "BBOT0001"
TEAM_ID = "T0000001"
TEAM_NAME = "Fake"
WORKSPACE_URL = "https://fake.slack.com/"
FIRST_TS_MICROS = 1_700_000_000_000_000
TS_STEP_MICROS = 100
UNKNOWN_HERE = "channel_unknown_to_this_stand_in"  # conversations.info of a channel a strict fake never saw


class SlackMethods:
    """Slack's Web API methods, answered from the fake workspace's state."""

    socket_url: str
    strict_channels: bool
    _messages: dict[str, list[dict[str, Any]]]
    _channels: dict[str, dict[str, Any]]
    _users: dict[str, dict[str, Any]]
    _ts_counter: int
    _id_counter: int

    def _next_ts(self) -> str:
        """A unique, increasing Slack timestamp such as 1700000000.000100."""
        self._ts_counter += 1
        micros = FIRST_TS_MICROS + self._ts_counter * TS_STEP_MICROS
        return f"{micros // 1_000_000}.{micros % 1_000_000:06d}"

    def _next_id(self, prefix: str) -> str:
        """A unique id such as C1000001."""
        self._id_counter += 1
        return f"{prefix}{self._id_counter}"

    def channel_names(self) -> dict[str, str]:
        """The ids and names of the channels created in this workspace (conversations.create)."""
        return {cid: str(channel.get("name", cid)) for cid, channel in list(self._channels.items())}

    # -- method answers (called with the lock held) ----------------------------------------------

    def _auth_test(self, body: Body) -> Answer:
        return {
            "ok": True,
            "url": WORKSPACE_URL,
            "team": TEAM_NAME,
            "user": "opsbot",
            "team_id": TEAM_ID,
            "user_id": BOT_USER_ID,
            "bot_id": BOT_ID,
        }

    def _chat_post_message(self, body: Body) -> Answer:
        channel = body.get("channel")
        if not channel:
            return {"ok": False, "error": "channel_not_found"}
        if not any(body.get(key) for key in ("text", "blocks", "attachments", "markdown_text")):
            return {"ok": False, "error": "no_text"}
        message: dict[str, Any] = {"type": "message", "user": BOT_USER_ID, "bot_id": BOT_ID, "ts": self._next_ts()}
        message["text"] = body.get("text", "")
        for key in ("blocks", "attachments", "thread_ts", "metadata"):
            if key in body:
                message[key] = body[key]
        self._messages.setdefault(channel, []).append(message)
        return {"ok": True, "channel": channel, "ts": message["ts"], "message": dict(message)}

    def _chat_post_ephemeral(self, body: Body) -> Answer:
        if not body.get("channel"):
            return {"ok": False, "error": "channel_not_found"}
        if not body.get("user"):
            return {"ok": False, "error": "user_not_in_channel"}
        return {"ok": True, "message_ts": self._next_ts()}

    def _chat_update(self, body: Body) -> Answer:
        channel, ts = body.get("channel", ""), body.get("ts", "")
        message = self._find_message(channel, ts)
        if message is None:  # lenient: tests often update messages from payload fixtures
            message = {"type": "message", "user": BOT_USER_ID, "bot_id": BOT_ID, "ts": ts}
        for key in ("text", "blocks", "attachments", "metadata"):
            if key in body:
                message[key] = body[key]
        return {"ok": True, "channel": channel, "ts": ts, "text": message.get("text", ""), "message": dict(message)}

    def _chat_delete(self, body: Body) -> Answer:
        channel, ts = body.get("channel", ""), body.get("ts", "")
        self._messages[channel] = [m for m in self._messages.get(channel, []) if m["ts"] != ts]
        return {"ok": True, "channel": channel, "ts": ts}

    def _chat_get_permalink(self, body: Body) -> Answer:
        channel, ts = body.get("channel", ""), str(body.get("message_ts", ""))
        permalink = f"{WORKSPACE_URL}archives/{channel}/p{ts.replace('.', '')}"
        return {"ok": True, "channel": channel, "permalink": permalink}

    def _conversations_create(self, body: Body) -> Answer:
        channel_id = self._next_id("C")
        name = str(body.get("name", channel_id.lower()))
        if any(c.get("name") == name for c in self._channels.values()):
            return {"ok": False, "error": "name_taken"}
        channel = _channel(channel_id, name) | {"creator": BOT_USER_ID, "created": int(time.time())}
        channel["is_private"] = str(body.get("is_private", "")).lower() in ("1", "true")
        self._channels[channel_id] = channel
        return {"ok": True, "channel": dict(channel)}

    def _users_conversations(self, body: Body) -> Answer:
        """The channels opsbot is a member of (all on one page)."""
        members = [dict(c) for c in self._channels.values() if c.get("is_member")]
        return {"ok": True, "channels": members, "response_metadata": {"next_cursor": ""}}

    def _conversations_info(self, body: Body) -> Answer:
        channel_id = str(body.get("channel", ""))
        if channel_id not in self._channels and self.strict_channels:
            return {"ok": False, "error": UNKNOWN_HERE}
        return {"ok": True, "channel": dict(self._channels.get(channel_id) or _channel(channel_id, channel_id.lower()))}

    def _conversations_invite(self, body: Body) -> Answer:
        channel_id = str(body.get("channel", ""))
        return {"ok": True, "channel": dict(self._channels.get(channel_id) or _channel(channel_id, channel_id.lower()))}

    def _conversations_open(self, body: Body) -> Answer:
        return {"ok": True, "channel": {"id": self._next_id("D"), "is_im": True}}

    def _conversations_replies(self, body: Body) -> Answer:
        channel, ts = body.get("channel", ""), body.get("ts", "")
        thread = [m for m in self._messages.get(channel, []) if ts in (m["ts"], m.get("thread_ts"))]
        thread.sort(key=lambda m: _ts_key(m["ts"]))
        return {"ok": True, "messages": [dict(m) for m in thread], "has_more": False}

    def _conversations_history(self, body: Body) -> Answer:
        channel = body.get("channel", "")
        top = [m for m in self._messages.get(channel, []) if m.get("thread_ts", m["ts"]) == m["ts"]]
        top.sort(key=lambda m: _ts_key(m["ts"]), reverse=True)
        return {"ok": True, "messages": [dict(m) for m in top], "has_more": False}

    def _users_info(self, body: Body) -> Answer:
        user_id = body.get("user")
        if not user_id:
            return {"ok": False, "error": "user_not_found"}
        return {"ok": True, "user": dict(self._users.get(user_id) or _default_user(user_id))}

    def _view(self, body: Body) -> Answer:
        view = body.get("view")
        view = dict(view) if isinstance(view, dict) else {}
        view_id = str(body.get("view_id") or self._next_id("V"))
        return {"ok": True, "view": {**view, "id": view_id, "team_id": TEAM_ID, "hash": f"hash-{self._next_ts()}"}}

    def _find_message(self, channel: str, ts: str) -> dict[str, Any] | None:
        return next((m for m in self._messages.get(channel, []) if m["ts"] == ts), None)


# -- parsing and masking (pure functions) ---------------------------------------------------------


def _ts_key(ts: str) -> tuple[int, int]:
    seconds, _, micros = ts.partition(".")
    return int(seconds or 0), int(micros or 0)


def _channel(channel_id: str, name: str) -> dict[str, Any]:
    return {"id": channel_id, "name": name, "is_channel": True, "is_private": False, "is_member": True}


def _default_user(user_id: str) -> dict[str, Any]:
    name = user_id.lower()
    profile = {"real_name": f"User {user_id}", "display_name": name, "email": f"{name}@example.com"}
    return {
        "id": user_id,
        "team_id": TEAM_ID,
        "name": name,
        "real_name": profile["real_name"],
        "tz": "UTC",
        "is_bot": False,
        "deleted": False,
        "profile": profile,
    }
