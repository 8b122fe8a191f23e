"""Pure functions that build Block Kit payloads (dicts), tested without Slack."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from bot.models import SearchHit
from bot.slack import ids
from bot.slack.blocks.mrkdwn import MAX_TEXT, confirm, escape, link
from bot.slack.blocks.oncall import build_oncall_blocks, oncall_fallback_text

if TYPE_CHECKING:  # types only: building blocks needs neither the model nor the store
    from bot.answers.experts import Suggestion
    from bot.answers.replies import Reply


def _hit_text(hit: SearchHit) -> str:
    title = link(hit.url, escape(hit.title)) if hit.url else f"*{escape(hit.title)}*"
    if hit.incident_id:
        title = f"*{hit.incident_id}* · {title}"
    where = f"_{escape(hit.section)}_" if hit.section else ""
    if where and hit.section_url != hit.url:  # link the section itself
        where = link(hit.section_url, where)
    snippet = escape(hit.snippet)
    source = f"`{escape(hit.path)}`" + (f" · {where}" if where else "")
    if hit.alert and hit.kind == "runbook":  # an incident named by its id shows the id already
        source += f" · runbook for `{escape(hit.alert)}`"
    elif hit.quoted:
        source += " · contains your words"
    text = f"{title}\n>{snippet}\n{source}"
    return text[:MAX_TEXT]


def build_answer_blocks(reply: Reply, shared_by: str | None = None, with_share: bool = False) -> list[dict]:
    """An answer: runbook sections, then similar past incidents, then how it was found and the buttons."""
    if reply.oncall:  # "who is on call for X": the rota answers, not the runbooks
        return build_oncall_blocks(reply.oncall, reply.names)
    if not reply.found:
        return build_nothing_found_blocks(reply.question, reply.hint_service)
    blocks: list[dict] = [_shared_by_block(shared_by)] if shared_by else []
    if reply.runbooks:
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": "*Runbooks*"}})
        blocks.extend({"type": "section", "text": {"type": "mrkdwn", "text": _hit_text(h)}} for h in reply.runbooks)
    if reply.incidents:
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": "*Similar past incidents*"}})
        blocks.extend({"type": "section", "text": {"type": "mrkdwn", "text": _hit_text(h)}} for h in reply.incidents)
    if reply.experts:
        names = "; ".join(f"*{escape(s.expert.name)}* ({escape(short_reason(s))})" for s in reply.experts)
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": f"*Who could help:* {names}"}})
    blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": how_found(reply)}]})
    if reply.unsaved:  # votes and sharing look the answer up by its id: without it saved, they would fail
        text = f"opsbot could not save this answer ({escape(reply.unsaved)}), so feedback is off for it."
        blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": text}]})
        return blocks
    buttons = [
        {
            "type": "button",
            "action_id": ids.FEEDBACK_UP,
            "text": {"type": "plain_text", "text": "👍 Helpful"},
            "value": reply.id,
        },
        {
            "type": "button",
            "action_id": ids.FEEDBACK_DOWN,
            "text": {"type": "plain_text", "text": "👎 Not helpful"},
            "value": reply.id,
        },
    ]
    if with_share:
        buttons.insert(
            0,
            {
                "type": "button",
                "action_id": ids.SHARE_ANSWER,
                "style": "primary",
                "text": {"type": "plain_text", "text": "Share in channel"},
                "value": reply.id,
            },
        )
    blocks.append({"type": "actions", "block_id": ids.ANSWER_ACTIONS_BLOCK, "elements": buttons})
    return blocks


def _shared_by_block(user: str) -> dict:
    return {"type": "context", "elements": [{"type": "mrkdwn", "text": f"Shared by <@{user}>"}]}


def shown_answer(reply: Reply) -> dict:
    """What an answer that can be shared shows, saved with it: its text, and its blocks without the Share button."""
    return {"text": answer_fallback_text(reply), "blocks": build_answer_blocks(reply)}


def build_shared_answer_blocks(shown: dict, shared_by: str) -> list[dict]:
    """The answer ``shown_answer`` saved, as shared in the channel: the same blocks, said to be shared by whom."""
    return [_shared_by_block(shared_by), *shown["blocks"]]


def how_found(reply: Reply) -> str:
    """The context line: how the answer was found, so people can judge it."""
    a = reply.answer
    follow = "this thread's first question and yours, " if "\n" in reply.question else ""
    changed = (
        " Volatile values (numbers, IPs, pod names) were ignored." if a.normalized_query != a.query.strip() else ""
    )
    vote = "" if reply.unsaved else " Vote below to improve later answers."
    return (
        f"Found by meaning and by keywords ({a.mode} search over {follow}{reply.documents} documents) "
        f"in {a.encode_ms + a.search_ms:.0f} ms.{changed}{vote}"
    )


def answer_fallback_text(reply: Reply) -> str:
    """Plain text for notifications and clients that cannot show blocks."""
    if reply.oncall:
        return oncall_fallback_text(reply.oncall, reply.names)
    if not reply.found:
        return "I found nothing relevant in the runbooks or past incidents."
    top = reply.top
    assert top is not None
    return f"Best match: {escape(top.title)} ({escape(top.citation)})"


def build_nothing_found_blocks(question: str, service: str = "") -> list[dict]:
    """Nothing relevant found: say so, and what to try (``service``: one of the user's, as an example)."""
    example = f" (for example `{escape(service)}`)" if service else ""
    text = (
        "I found nothing relevant in the runbooks or past incidents, so I won't guess.\n"
        f"Try: naming the service{example}, pasting the exact alert or error line, "
        "or using the words your dashboards use."
    )
    return [
        {"type": "section", "text": {"type": "mrkdwn", "text": text}},
        {"type": "context", "elements": [{"type": "mrkdwn", "text": f"Searched for: {escape(question)[:200]}"}]},
    ]


def build_usage_blocks(example: str = "") -> list[dict]:
    """How to use /ask; ``example``: a question about the user's own runbooks."""
    text = (
        f"*Usage:* `/ask QUESTION`, for example `/ask {escape(example or 'what the alert or error says')}`.\n"
        "You can also paste an alert or a log line, mention me in a channel, or send me a direct message."
    )
    return [{"type": "section", "text": {"type": "mrkdwn", "text": text}}]


# A message that asks what opsbot is, rather than something opsbot should search for.
HELP_REQUEST = re.compile(r"(?i)^\s*(help|usage|commands|what can you do|hi|hello|hey)\s*[?!.]*\s*$")
HELP_TEXT = "opsbot answers from your runbooks and past incidents, runs deploys after approval, and works incidents."


def build_help_blocks() -> list[dict]:
    """What opsbot does and every command it has, for "help" (or a bare hello) in a mention or DM."""
    from bot.slack.manifest import SLASH_COMMANDS  # the same list the app's manifest registers

    commands = "\n".join(f"• `{c} {escape(hint)}`: {escape(what)}" for c, what, hint in SLASH_COMMANDS)
    text = (
        f"*{HELP_TEXT}*\n"
        "Ask a question, or paste an alert or a log line: mention me in a channel, send me a direct message, "
        "or use `/ask`. I reply in the thread with the runbook sections that answer it, similar past "
        "incidents and who could help; vote 👍 or 👎 on an answer to improve later ones."
    )
    return [
        {"type": "section", "text": {"type": "mrkdwn", "text": text}},
        {"type": "section", "text": {"type": "mrkdwn", "text": f"*Commands*\n{commands}"}},
    ]


def build_error_text(error_id: str) -> str:
    return (
        f"Sorry, something went wrong on my side (error id `{error_id}`). "
        "Please try again; if it keeps happening, give the error id to whoever runs opsbot."
    )


def build_vote_ack_text(vote: int, changed: bool, path: str) -> str:
    if not changed:
        return "You already voted that way on this answer."
    word = "helpful" if vote > 0 else "not helpful"
    return f"Thanks: noted `{path}` as {word}. Later answers to similar questions take it into account."


def short_reason(suggestion: Suggestion) -> str:
    """The strongest reason in a few words."""
    if suggestion.on_call:
        return f"on call for {suggestion.on_call[0].team}"
    if suggestion.incidents:
        return f"resolved {suggestion.incidents[0].id}"
    if suggestion.owns:
        return f"owns {suggestion.owns[0]}"
    if suggestion.skills:
        return f"knows {suggestion.skills[0]}"
    return "on the roster"


def experts_fallback_text(suggestions: list[Suggestion]) -> str:
    """Plain text for notifications: "Suggested: Daniel Okafor, Priya Raman" (names escaped: <!channel> stays text)."""
    return f"Suggested: {', '.join(escape(s.expert.name) for s in suggestions) or 'nobody'}"


def build_experts_blocks(text: str, suggestions: list[Suggestion], can_invite: bool = True) -> list[dict]:
    """Suggested people, each with the reasons and an Invite button that asks for confirmation."""
    text = " ".join(text.split())  # one line: an alert's name and annotations arrive on several
    if not suggestions:
        return [
            {
                "type": "section",
                "text": {
                    "type": "mrkdwn",
                    "text": (
                        f"I couldn't find anyone for _{escape(text[:200])}_: "
                        "no similar past incidents, owners or skills. Try naming the service or pasting the alert."
                    ),
                },
            }
        ]
    blocks: list[dict] = [
        {"type": "section", "text": {"type": "mrkdwn", "text": f"*Who could help with:* _{escape(text[:200])}_"}}
    ]
    for s in suggestions:
        lines = [f"*{escape(s.expert.name)}* · {escape(s.expert.team)} · score {s.score:.2f}"]
        lines += [f"• {escape(r)}" for r in s.reasons()]
        lines += [f":warning: {escape(flag)}" for flag in s.flags]
        block: dict = {"type": "section", "text": {"type": "mrkdwn", "text": "\n".join(lines)[:MAX_TEXT]}}
        if can_invite:
            block["accessory"] = {
                "type": "button",
                "action_id": ids.INVITE_EXPERT,
                "text": {"type": "plain_text", "text": "Invite"},
                "value": s.expert.id,
                "confirm": confirm(
                    "Invite to this channel?", f"This adds *{escape(s.expert.name)}* to the channel.", "Invite"
                ),
            }
        blocks.append(block)
    blocks.append(
        {
            "type": "context",
            "elements": [
                {
                    "type": "mrkdwn",
                    "text": (
                        "Ranked by who resolved similar past incidents (recent ones count more), who has been "
                        "active lately, service ownership, listed skills and the on-call rota, weighted as this "
                        "team's own history showed best; people away or outside their hours rank lower."
                    ),
                }
            ],
        }
    )
    return blocks
