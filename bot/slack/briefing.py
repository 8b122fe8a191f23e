"""The briefing shared by `/incident declare` and alerts from Alertmanager: related runbook sections, similar past
incidents with how they were resolved, who to pull in (on call flagged), the services' recent deploys with Rollback.

Each part is built on its own and guarded: one that fails (the model not loaded, an unknown service) is replaced by
a line saying so, and the others are still shown.
"""

from __future__ import annotations

import dataclasses
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from bot.errors import OpsbotError
from bot.ops.requests import DeployRequest
from bot.runtime import Runtime
from bot.slack.blocks.answers import build_experts_blocks, experts_fallback_text
from bot.slack.blocks.incidents import build_deploys_blocks, build_knowledge_blocks
from bot.slack.blocks.mrkdwn import context

log = logging.getLogger(__name__)
RECENT_HOURS = 24
Message = tuple[str, list[dict]]


@dataclass
class Shown:
    """What a briefing's knowledge part showed, for the parts posted after it to agree with."""

    similar: int | None = None  # past incidents shown as similar; None while unknown (not built, or it failed)


def knowledge_message(
    runtime: Runtime, query: str, channel: str, asker: str, runbook_url: str = "", shown: Shown | None = None
) -> Message:
    """Runbook sections and similar past incidents for ``query``, with how those were resolved; the runbook that
    ``runbook_url`` links to comes first. ``shown`` is told how many past incidents were shown."""
    reply = runtime.answers.reply(query, channel=channel, user=asker, runbook_url=runbook_url)
    resolutions = runtime.incidents().past_resolutions()
    similar = [(h, resolutions.get(h.incident_id, "")) for h in reply.incidents]
    if shown is not None:
        shown.similar = len(similar)
    text = f"{len(reply.runbooks)} runbook section(s), {len(similar)} similar past incident(s)"
    return text, build_knowledge_blocks(list(reply.runbooks), similar)


def experts_message(
    runtime: Runtime,
    query: str,
    services: tuple[str, ...],
    asker: str = "",
    remember: bool = True,
    shown: Shown | None = None,
) -> Message:
    """Who to pull in, with why; whoever asked is never suggested to themselves, whoever is on call is shown.

    ``remember``: the first place counts for spreading the load (a person asked; not an alert's automatic post).
    ``shown``: what the knowledge part above showed. When it said that no past incident is similar, no incident
    a person resolved is said to look like this either: each is the nearest, though not close.
    """
    suggestions = runtime.answers.suggest_experts(query, list(services) or None, asker=asker, remember=remember)
    if shown is not None and shown.similar == 0:
        suggestions = [
            dataclasses.replace(s, incidents=tuple(dataclasses.replace(i, close=False) for i in s.incidents))
            for s in suggestions
        ]
    return experts_fallback_text(suggestions), build_experts_blocks(query, suggestions, can_invite=True)


def deploys_message(
    services: tuple[str, ...], deploys: list[DeployRequest], origin: dict[str, str], action_id: str
) -> Message:
    """The services' recent deploys, with a Rollback button (``action_id``) on each that succeeded."""
    return f"{len(deploys)} deploy(s) in the last 24 h", build_deploys_blocks(services, deploys, origin, action_id)


def guarded_part(what: str, build: Callable[[], Message]) -> Message:
    """One part of a briefing; if it fails the others are still posted (the incident or alert is recorded already)."""
    try:
        return build()
    except OpsbotError as exc:
        text = f"No {what}: {exc}"
    except Exception:
        error_id = uuid.uuid4().hex[:8]
        log.exception("briefing part failed part=%s error_id=%s", what, error_id)
        text = f"Could not load the {what} (error id `{error_id}`)."
    return text, [context(text)]
