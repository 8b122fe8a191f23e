"""The Slack app manifest: every command, scope and event the app needs."""

from __future__ import annotations

import yaml

from bot.slack.ids import EVENTS_PATH

SLASH_COMMANDS = [
    ("/ask", "Ask the runbooks and past incidents", "QUESTION or a pasted alert"),
    ("/experts", "Who to pull in for a problem", "TEXT [--service NAME]"),
    (
        "/oncall",
        "Who is on call now (or then) and next, or someone's turns",
        "[TEAM, SERVICE, @person or me] [--at WHEN]",
    ),
    ("/deploy", "Request a deploy (it runs once approved), or see what runs where", "SERVICE [VERSION ENV]"),
    ("/rollback", "Request a rollback (default: the previous good version)", "SERVICE ENV [VERSION]"),
    (
        "/incident",
        "Declare and work an incident",
        "declare TITLE [sev1-4] [--service NAME] [--env NAME] | status | note TEXT | update TEXT"
        " | assign @user lead|comms | severity 1-4 | service NAME | rootcause TEXT | resolve [RESOLUTION]"
        " | cancel [REASON] | list",
    ),
]
ESCAPED_COMMANDS = {"/incident"}  # Slack sends mentions as <@U123|name>, so `assign` gets the user id
BOT_SCOPES = [
    "app_mentions:read",  # mentions in channels
    "chat:write",  # answers, updates
    "chat:write.public",  # alerts from Alertmanager in a service's public channel, without inviting opsbot first
    "commands",  # slash commands
    "im:history",  # direct messages to the bot
    "im:read",
    "im:write",
    "channels:history",  # questions in channels that opted in to answers without a mention
    "groups:history",
    "users:read",
    "channels:manage",  # invite suggested experts into public channels; create incident channels
    "groups:write",  # ... and private ones
    "channels:read",  # whether the channel an incident is declared in is private (conversations.info) ...
    "groups:read",  # ... for a private one, which only then stays in it
    "mpim:read",  # ... and for a group DM
    "reactions:read",  # the pin emoji adds a message to an incident's timeline
]
BOT_EVENTS = ["app_mention", "message.im", "message.channels", "message.groups", "reaction_added"]


def build_manifest(
    name: str = "opsbot", base_url: str = "https://opsbot.example.com", socket_mode: bool = False
) -> dict:
    """A manifest for Slack's "create an app from a manifest"."""
    request_url = base_url.rstrip("/") + EVENTS_PATH
    commands = []
    for command, description, hint in SLASH_COMMANDS:
        escape = command in ESCAPED_COMMANDS
        entry = {"command": command, "description": description, "usage_hint": hint, "should_escape": escape}
        if not socket_mode:
            entry["url"] = request_url
        commands.append(entry)
    events: dict = {"bot_events": BOT_EVENTS}
    interactivity: dict = {"is_enabled": True}
    if not socket_mode:
        events["request_url"] = request_url
        interactivity["request_url"] = request_url
    return {
        "display_information": {
            "name": name,
            "description": "Answers from your runbooks and past incidents, and briefings on your alerts, in chat.",
            "background_color": "#2c2d30",
        },
        "features": {
            "app_home": {"messages_tab_enabled": True, "messages_tab_read_only_enabled": False},
            "bot_user": {"display_name": name, "always_online": True},
            "slash_commands": commands,
        },
        "oauth_config": {"scopes": {"bot": BOT_SCOPES}},
        "settings": {
            "event_subscriptions": events,
            "interactivity": interactivity,
            "org_deploy_enabled": False,
            "socket_mode_enabled": socket_mode,
            "token_rotation_enabled": False,
        },
    }


def manifest_yaml(**kwargs: object) -> str:
    return yaml.safe_dump(build_manifest(**kwargs), sort_keys=False, allow_unicode=True)
