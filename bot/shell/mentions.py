"""Who a name typed in the shell means: `@Daniel`, `@daniel okafor`, `@U04C2RN8VD` or `<@U04C2RN8VD>`.

Slack turns a mention picked from its menu into ``<@ID>`` before opsbot sees it; in the terminal people type
names, so the shell does that step itself, against the roster, and says so when a name is unknown or could
mean more than one person.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping

from bot.errors import InvalidRequest
from bot.text import SLACK_MENTION

ROSTER_HINT = 4  # how many roster members an error message suggests
SPECIAL = {"here": "<!here>", "channel": "<!channel>", "everyone": "<!everyone>"}
SLACK_ID = re.compile(r"[UW][A-Z0-9]{6,}")  # typed as @U04C2RN8VD: someone meant, even when mistyped
# "@" not inside a word (an e-mail address) nor a Slack token; up to three words, tried longest first.
TYPED = re.compile(r"(?<![\w<@/])@([^\W\d_][\w'-]*)((?: [^\W\d_][\w'-]*){0,2})")


def roster_examples(roster: Mapping[str, str]) -> str:
    """A few roster members as "Priya Raman (U03F8K2LQ1)", and how many more there are."""
    some = ", ".join(f"{name} ({uid})" for uid, name in list(roster.items())[:ROSTER_HINT])
    more = f" and {len(roster) - ROSTER_HINT} more in experts.yaml" if len(roster) > ROSTER_HINT else ""
    return some + more


def find_person(typed: str, roster: Mapping[str, str]) -> str:
    """The roster id ``typed`` means (an id, a mention, a full, first or last name, any case); InvalidRequest
    saying why when it is nobody on the roster or several people."""
    wanted = typed.strip()
    mention = SLACK_MENTION.fullmatch(wanted)
    bare = mention.group(1) if mention else wanted.removeprefix("@").strip()
    if bare.upper() in roster:
        return bare.upper()
    folded = bare.casefold()
    for match in (
        lambda name: name.casefold() == folded,
        lambda name: name.casefold().split()[0] == folded,
        lambda name: folded in name.casefold().split(),
    ):
        found = [uid for uid, name in roster.items() if name.strip() and match(name)]
        if len(found) == 1:
            return found[0]
        if len(found) > 1:
            who = " or ".join(f"{roster[uid]} ({uid})" for uid in found)
            raise InvalidRequest(
                f"{wanted} could be {who}: write the full name (@{roster[found[0]]}) or the Slack id (@{found[0]})."
            )
    if not roster:
        raise InvalidRequest(
            f"{wanted} is not on the roster, and the roster is empty: add people to experts.yaml and run "
            "`opsbot index`."
        )
    close = _close_names(bare, roster)
    hint = f" Did you mean @{close[0]}?" if close else ""
    raise InvalidRequest(
        f"{wanted} is not on the roster.{hint} Name someone by first or full name or Slack id, as in "
        f"experts.yaml: {roster_examples(roster)}."
    )


def resolve_mentions(text: str, roster: Mapping[str, str], bot: tuple[str, str] = ("", "")) -> str:
    """``text`` with each typed @Name or @ID written as Slack writes a mention (``<@ID>``); @here, @channel and
    @everyone as Slack's special mentions; ``bot`` is (bot user id, its name). InvalidRequest for a name
    that is nobody on the roster or several people."""
    bot_id, bot_name = bot
    people = {**roster, **({bot_id: bot_name} if bot_id else {})}

    def replace(match: re.Match[str]) -> str:
        first, rest = match.group(1), match.group(2).split()
        if first.casefold() in SPECIAL:
            return SPECIAL[first.casefold()] + "".join(f" {w}" for w in rest)
        for used in range(len(rest), 0, -1):  # "@Daniel Okafor said" is Daniel Okafor, then "said"
            uid = _exact(" ".join([first, *rest[:used]]), people)
            if uid:
                return f"<@{uid}>" + "".join(f" {w}" for w in rest[used:])
        if bot_id and first.casefold() == bot_name.casefold():
            return f"<@{bot_id}>" + "".join(f" {w}" for w in rest)
        try:
            uid = find_person(f"@{first}", roster)
        except InvalidRequest as exc:
            # Slack sends an @word not picked from its menu as text: a pasted log line's @timestamp or @babel/core
            # is no one. Only a misspelt name (@Danial) or one shared by several people would be sent wrongly.
            if not SLACK_ID.fullmatch(first) and not _ambiguous(first, roster) and not _misspelt(first, roster):
                return match.group(0)
            raise InvalidRequest(f"{exc} To send it as plain text, leave out the @.") from None
        return f"<@{uid}>" + "".join(f" {w}" for w in rest)

    return TYPED.sub(replace, text)


def _exact(name: str, people: Mapping[str, str]) -> str:
    """The id of the one person whose full name is ``name`` (any case), or ""."""
    found = [uid for uid, full in people.items() if full.casefold() == name.casefold()]
    return found[0] if len(found) == 1 else ""


def _close_names(typed: str, roster: Mapping[str, str]) -> list[str]:
    """The roster's full or first name closest to ``typed``, when one is close enough to be what was meant."""
    return difflib.get_close_matches(typed, [n for name in roster.values() for n in (name, name.split()[0])], n=1)


def _misspelt(word: str, roster: Mapping[str, str]) -> bool:
    """Whether ``word`` reads as a roster name typed wrong (@Danial, @dan)."""
    return bool(_close_names(word, roster))


def _ambiguous(word: str, roster: Mapping[str, str]) -> bool:
    """Whether ``word`` is a name (first, last or a word of it) that several roster members share."""
    folded = word.casefold()
    return sum(folded in name.casefold().split() for name in roster.values()) > 1
