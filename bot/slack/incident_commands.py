"""Reading `/incident` commands: every subcommand and the forms people bring from other tools, checked before
anything changes. ``parse_incident`` is the one parser: the handler runs what it returns, and a test runs every
command quoted in the knowledge directory through it."""

from __future__ import annotations

import html
import re
from dataclasses import dataclass

from bot.errors import InvalidRequest
from bot.ops.incidents import SERVICE_USAGE, check_severity

SUBCOMMANDS = (
    "declare",
    "status",
    "note",
    "update",
    "assign",
    "severity",
    "service",
    "rootcause",
    "resolve",
    "cancel",
    "list",
)
ALIASES = {"role": "assign", "sev": "severity", "services": "service", "root-cause": "rootcause", "help": "help"}
NEEDS_TEXT = {
    "note": "note TEXT",
    "update": "update TEXT",
    "rootcause": "rootcause TEXT",
}
ROLE_NAMES = {"lead": "lead", "ic": "lead", "commander": "lead", "comms": "comms", "communications": "comms"}
USER_REFERENCE = re.compile(r"^<@([UW][A-Z0-9]+)(?:\|[^>]*)?>$|^([UW][A-Z0-9]{6,})$")
SEVERITY_WORD = re.compile(r"^sev-?(\d+)$", re.IGNORECASE)  # sev2, SEV2, SEV-2: as other tools write it
ROOT_CAUSE_OPTIONS = ("--root-cause", "--rootcause")
DASHED_OPTION = re.compile(r"(?<!\S)[—–](?=root-?cause)", re.IGNORECASE)
DASHES = ("—", "–")
DECLARE_OPTIONS = ("--sev", "--severity", "--service", "--env")
QUOTES = "\"'“”‘’"
# A quote that opens a phrase, and the quotes that may close it: Slack's clients turn typed quotes into smart ones.
CLOSING_QUOTES = {'"': '"”“', "“": '”"“', "”": '”"', "'": "'’‘", "‘": "’'‘", "’": "’'"}
CLOSING_AT = {opening: re.compile(f"[{closing}](?=\\s|$)") for opening, closing in CLOSING_QUOTES.items()}
# A link with a label of its own, `<https://evil.example|https://grafana.internal>`: the label hides the address.
LABELLED_LINK = re.compile(r"<(https?://[^<>\s|]+)\|[^<>]*>")
DECLARE_USAGE = "/incident declare TITLE [sev1-4] [--service NAME] [--env NAME]"


@dataclass(frozen=True)
class IncidentCommand:
    """One `/incident` command, read and checked; ``sub`` is the canonical subcommand (aliases resolved)."""

    sub: str
    incident_id: str | None = None
    text: str = ""  # the note, status update, root cause, resolution or reason for cancelling
    title: str = ""
    severity: int | None = None
    services: tuple[str, ...] = ()  # declare, service: the services named (service: to add)
    removed: tuple[str, ...] = ()  # service --remove NAME
    env: str | None = None
    user: str = ""  # assign: who, and which role
    role: str = ""
    root_cause: str = ""  # resolve --root-cause TEXT


@dataclass(frozen=True)
class Word:
    """A word of a command, or a quoted phrase (``quoted``: its quotes taken off)."""

    text: str
    quoted: bool = False
    typed: str = ""  # a quoted phrase as typed, its quotes included
    at: int = 0  # where it starts in the text
    end: int = 0  # where it ends, its closing quote included


def words_of(text: str) -> list[Word]:
    """`"Pager sev1 down" --sev 2` -> [Word("Pager sev1 down", True), Word("--sev"), Word("2")]. A quote opens a phrase
    at the start of a word and closes it at the end of one; one that never closes is a character (`Bob's`, `'til`)."""
    words: list[Word] = []
    at = 0
    while at < len(text):
        if text[at].isspace():
            at += 1
            continue
        closing = CLOSING_AT[text[at]].search(text, at + 1) if text[at] in CLOSING_AT else None
        if closing is not None:
            phrase = text[at + 1 : closing.start()].strip()
            if phrase:
                words.append(Word(phrase, quoted=True, typed=text[at : closing.end()], at=at, end=closing.end()))
            at = closing.end()
            continue
        end = at
        while end < len(text) and not text[end].isspace():
            end += 1
        words.append(Word(text[at:end], at=at, end=end))
        at = end
    return words


def without_link_labels(text: str) -> str:
    """`<https://evil.example/x|https://grafana.internal>` -> `<https://evil.example/x>`: in what people type, a link
    shows its own address, never a label that could hide it. People and channels (`<@U123|dana>`) are kept."""
    return LABELLED_LINK.sub(r"<\1>", text)


def typed_text(text: str) -> str:
    """A slash command's text as typed: Slack's escapes undone (`&lt;` is `<`), links without their labels.

    Slack escapes the `<`, `>` and `&` people type, so undoing that lets typed text look like Slack's markup: a
    typed labelled link would be posted as one. Mentions, channels and plain links keep working."""
    return without_link_labels(html.unescape(text))


def split_subcommand(text: str) -> tuple[str, str]:
    """`note INC-2026-0042 pods restarted` -> ("note", "INC-2026-0042 pods restarted")."""
    parts = (text or "").strip().split(maxsplit=1)
    return (parts[0].lower() if parts else "", parts[1].strip() if len(parts) > 1 else "")


def subcommand_of(word: str) -> str | None:
    """The canonical subcommand a typed word names (`role` is assign, `sev2` sets the severity), else None."""
    if word in SUBCOMMANDS:
        return word
    if SEVERITY_WORD.match(word):
        return "severity"
    return ALIASES.get(word)


def unknown_subcommand(word: str) -> str:
    shown = word[:40].replace("`", "'")
    return f"`{shown}` is not an /incident subcommand; use {', '.join(SUBCOMMANDS)}."


def mentioned_services(title: str, known: set[str]) -> list[str]:
    """Known service names written in the title, when no --service was given."""
    lower = title.lower()
    return sorted(s for s in known if re.search(rf"(?<![\w/-]){re.escape(s.lower())}(?![\w/-])", lower))


def likely_services(title: str, known: set[str]) -> list[str]:
    """Services a title may mean by the first part of their name, when no other service's name starts so:
    "checkout p99 above 3s" may be checkout-api. Offered to the declarer, never assumed."""
    firsts: dict[str, list[str]] = {}
    for service in known:
        first = re.split(r"[-_./]", service.lower(), maxsplit=1)[0]
        if len(first) >= 3 and first != service.lower():
            firsts.setdefault(first, []).append(service)
    lower = title.lower()
    return sorted(
        names[0]
        for first, names in firsts.items()
        if len(names) == 1 and re.search(rf"(?<![\w/-]){re.escape(first)}(?![\w/-])", lower)
    )


def split_incident_id(rest: str) -> tuple[str | None, str]:
    """An incident id right after the subcommand, if one was given, and the rest."""
    parts = rest.strip().split(maxsplit=1)
    if parts and parts[0].upper().startswith("INC-"):
        return parts[0], parts[1].strip() if len(parts) > 1 else ""
    return None, rest.strip()


def unquote(text: str) -> str:
    """`"Checkout errors"` -> `Checkout errors`: people quote titles and resolutions as other tools want. Only a
    phrase quoted whole: `"pods restarted" and then "cache flushed"` keeps its quotes."""
    text = text.strip()
    if not text or text[0] not in QUOTES:
        return text
    words = words_of(text)
    if not words:  # `""`: quotes around nothing are nothing
        return ""
    if len(words) == 1 and words[0].quoted and words[0].typed == text:
        return words[0].text
    return text


def _option(word: str) -> str:
    """`—sev` is `--sev`: some clients turn a typed `--` into a dash. A dash before any other word stays a dash
    (`Checkout – EU payments failing`)."""
    if word[:1] in DASHES and ("--" + word[1:]).partition("=")[0] in DECLARE_OPTIONS:
        return "--" + word[1:]
    return word


def parse_declare(rest: str) -> tuple[str, int | None, list[str], str | None]:
    """`"checkout 503s" sev2 --service checkout-api --env prod` -> ("checkout 503s", 2, ["checkout-api"], "prod").

    Quoted words are the title's only: `"Pager sev1 escalations not delivered"` keeps its `sev1`. They keep their
    quotes (`Login fails with "invalid token"`), unless the quoted phrase is the whole title."""
    words = words_of(rest)
    title: list[Word] = []
    severity: int | None = None
    services: list[str] = []
    env: str | None = None
    i = 0
    while i < len(words):
        word = words[i].text
        if words[i].quoted:
            title.append(words[i])
            i += 1
            continue
        name, has_value, value = _option(word).partition("=")
        if name in DECLARE_OPTIONS:
            if not has_value:
                if i + 1 >= len(words):
                    raise InvalidRequest(f"{name} needs a value: {DECLARE_USAGE}.")
                value = words[i + 1].text
                i += 1
            if not value:  # `--env=` would otherwise fall back to the default environment without a word
                raise InvalidRequest(f"{name}= needs a value after the =: {DECLARE_USAGE}.")
            if name == "--service":
                services.append(value)
            elif name == "--env":
                env = value
            else:
                severity = _one_severity(severity, value)
        elif SEVERITY_WORD.match(word):
            severity = _one_severity(severity, word)
        else:
            title.append(words[i])
        i += 1
    if len(title) == 1 and title[0].quoted:  # `/incident declare "Pager sev1 down" sev2`: the title is the phrase
        return title[0].text, severity, services, env
    return " ".join(w.typed if w.quoted else w.text for w in title), severity, services, env


def _one_severity(before: int | None, value: str) -> int:
    severity = check_severity(value)
    if before is not None and before != severity:
        raise InvalidRequest(f"two severities given (SEV{before} and SEV{severity}): keep one. {DECLARE_USAGE}")
    return severity


def parse_assign(rest: str) -> tuple[str, str]:
    """`<@U123|dana> comms` or `comms <@U123|dana>` -> ("U123", "comms"); `ic` is the lead."""
    parts = rest.split()
    if len(parts) == 2 and not USER_REFERENCE.match(parts[0]):
        parts.reverse()  # `/incident role comms @dana`, as incident tools write it
    match = USER_REFERENCE.match(parts[0]) if parts else None
    if match is None or len(parts) != 2:
        raise InvalidRequest(
            "mention the person and name the role: `/incident assign @user lead` or `/incident role comms @user`."
        )
    role = ROLE_NAMES.get(parts[1].lower())
    if role is None:
        raise InvalidRequest(
            f"role {parts[1]!r} is not one opsbot records; use lead (or ic) or comms: `/incident role lead @user`."
        )
    return match[1] or match[2], role


def parse_services(rest: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """`checkout-api, payments-gateway --remove auth-service` -> (("checkout-api", "payments-gateway"),
    ("auth-service",)); names apart by spaces or commas, `--service NAME` as at the declaration."""
    added: list[str] = []
    removed: list[str] = []
    names = added
    for word in re.split(r"[\s,]+", rest):
        option = "--" + word[1:].lower() if word[:1] in DASHES else word.lower()
        if option in ("--service", "--services"):
            names = added
        elif option == "--remove":
            names = removed
        elif word:
            names.append(word)
    if names is removed and not removed:
        raise InvalidRequest(f"--remove needs the service after it: {SERVICE_USAGE}.")
    if not added and not removed:
        raise InvalidRequest(f"name the service: {SERVICE_USAGE}.")
    return tuple(added), tuple(removed)


def parse_resolve(rest: str) -> tuple[str, str]:
    """`"Rolled back" --root-cause bad config` -> ("Rolled back", "bad config"); an empty resolution opens the
    resolve dialog."""
    rest = DASHED_OPTION.sub("--", rest)  # some clients turn a typed `--` into a dash
    for word in words_of(rest):  # the option as a word of its own, outside quotes: not `--rootcause-analysis`
        option, _, value = word.text.partition("=")
        if word.quoted or option.lower() not in ROOT_CAUSE_OPTIONS:
            continue
        cause = unquote(f"{value}{rest[word.end :]}".strip().lstrip("= "))  # `--root-cause = X` too
        if not cause:
            raise InvalidRequest(f"{option} needs the root cause after it: /incident resolve TEXT {option} TEXT.")
        return unquote(rest[: word.at]), cause
    return unquote(rest), ""


def parse_incident(text: str) -> IncidentCommand:
    """Read one `/incident` command; raises InvalidRequest with the usage of what was wrong."""
    word, rest = split_subcommand(typed_text(text or ""))
    sub = subcommand_of(word)
    if sub is None:
        raise InvalidRequest(unknown_subcommand(word))
    if word != sub and SEVERITY_WORD.match(word):  # `/incident sev1 [INC-…]`: the word is the new severity
        rest = f"{rest} {word}"
    if sub in ("help", "list"):
        return IncidentCommand(sub)
    if sub == "declare":
        title, severity, services, env = parse_declare(rest)
        if not title:
            raise InvalidRequest(f"give the incident a title: {DECLARE_USAGE}.")
        return IncidentCommand(sub, title=title, severity=severity, services=tuple(services), env=env)
    incident_id, rest = split_incident_id(rest)
    if sub == "service":
        added, removed = parse_services(rest)
        return IncidentCommand(sub, incident_id, services=added, removed=removed)
    if sub in NEEDS_TEXT and not unquote(rest):
        raise InvalidRequest(f"say what to record: /incident {NEEDS_TEXT[sub]}.")
    if sub == "assign":
        user, role = parse_assign(rest)
        return IncidentCommand(sub, incident_id, user=user, role=role)
    if sub == "severity":
        return IncidentCommand(sub, incident_id, severity=check_severity(rest))
    if sub == "resolve":
        resolution, cause = parse_resolve(rest)
        return IncidentCommand(sub, incident_id, text=resolution, root_cause=cause)
    return IncidentCommand(sub, incident_id, text=unquote(rest))
