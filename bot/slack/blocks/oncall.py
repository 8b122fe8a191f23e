"""The on-call answer: who is on call now and next, per rota (pure functions)."""

from __future__ import annotations

from bot.rota import OnCall, Turns, describe, describe_turns
from bot.slack.blocks.mrkdwn import MAX_TEXT, context, escape, section

MAX_SECTIONS = 40  # of Slack's 50 blocks a message may hold


def build_oncall_blocks(
    answers: list[OnCall] | tuple[OnCall, ...], names: dict[str, str], then: str = "now"
) -> list[dict]:
    """One line per rota: who is on call until when, and who is next from when (in the rota's time zone).
    ``then``: the time asked about as said ("now", "at Thu 24 Dec 20:00 UTC")."""
    lines = []
    for answer in answers:
        now, following = describe(answer, {k: escape(v) for k, v in names.items()}, mention=True)
        line = f"*{escape(answer.team)}*: " + (now or f"nobody on call from the rota {then}")
        if following:
            line += f"\n    next: {following}"
        lines.append(line)
    # As many whole lines as fit in each section (a cut at the limit would lose rotas and break a mention), and
    # as many sections as Slack's 50 blocks leave room for; the rest are counted.
    # "now": asked "who is on call on Saturday?", this is still the answer for now, and says so
    sections: list[list[str]] = [[f":pager: *On call {escape(then)}*"]]
    for line in lines:
        if sum(len(t) + 1 for t in sections[-1]) + len(line) > MAX_TEXT:
            sections.append([])
        sections[-1].append(line[:MAX_TEXT])
    if len(sections) > MAX_SECTIONS:
        left = sum(len(s) for s in sections[MAX_SECTIONS:])
        sections = sections[:MAX_SECTIONS]
        sections[-1].append(f"…and {left} more rotas: `/oncall TEAM` shows one.")
    return [
        *(section("\n".join(part)) for part in sections),
        context(
            "From the rotations in experts.yaml; times are each rota's own time zone. For another time: "
            "`/oncall TEAM --at YYYY-MM-DDTHH:MMZ`."
        ),
    ]


def oncall_fallback_text(answers: list[OnCall] | tuple[OnCall, ...], names: dict[str, str], then: str = "now") -> str:
    """Plain text for notifications: "On call: payments: Priya Raman; platform: Daniel Okafor" (names escaped, so a
    <!channel> in experts.yaml stays text)."""
    parts = [f"{a.team}: {names.get(a.now.person, a.now.person) if a.now else 'nobody'}" for a in answers]
    when = "" if then == "now" else f" {then}"
    return escape(f"On call{when}: " + "; ".join(parts))


def build_turns_blocks(name: str, turns: list[Turns], then: str = "now") -> list[dict]:
    """A person's turns: per rota that has them, whether they are on call ``then`` and their next turn."""
    if not turns:
        text = f":pager: {escape(name)} is on no on-call rota in experts.yaml."
        return [section(text)]
    lines = [f":pager: *Turns on call: {escape(name)}*"]
    lines += [f"*{escape(t.team)}*: {escape(describe_turns(t, then))}" for t in turns]
    return [
        section("\n".join(lines)[:MAX_TEXT]),
        context("From the rotations in experts.yaml; times are each rota's own time zone."),
    ]


def turns_fallback_text(name: str, turns: list[Turns], then: str = "now") -> str:
    parts = [f"{t.team}: {'on call' if t.now else 'not on call'} {then}" for t in turns] or ["on no rota"]
    return escape(f"{name}: " + "; ".join(parts))
