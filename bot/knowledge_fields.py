"""What every file of knowledge/ shares: ``FileProblem`` (a problem with its line), lists of names, service names."""

from __future__ import annotations

import re
from typing import Any

from bot.knowledge_xref import SEPARATORS
from bot.text import service_name_problem


class FileProblem(ValueError):
    """A problem inside one file, with the line when it is known."""

    def __init__(self, message: str, line: int | None = None) -> None:
        super().__init__(message)
        self.line = line


class FileProblems(FileProblem):
    """Several problems of one file, found in one reading: each is reported (``problems``), not only the first."""

    def __init__(self, problems: list[FileProblem]) -> None:
        super().__init__("; ".join(str(p) for p in problems), problems[0].line)
        self.problems = problems


WEB_ADDRESS = re.compile(r"https?://[^\s<>|]+")


def web_address(value: Any, key: str, line: int | None = None) -> str:
    """A link's address (http or https, no spaces, `<`, `>` or `|`, which would end a Slack link early and let the
    rest be read as a message of its own); "" for none; a FileProblem otherwise."""
    address = text_field(value or "", key, line).strip()
    if address and not WEB_ADDRESS.fullmatch(address):
        raise FileProblem(
            f"{key} must be a web address starting with https:// (or http://), with no spaces, `<`, `>` or `|`; "
            "answers link this runbook to it. Percent-encode such characters (a space is %20).",
            line,
        )
    return address


# What each list of names looks like, for the message that says how to write it.
NAME_EXAMPLES = {
    "services": "checkout-api, payments-gateway",
    "tags": "latency, database",
    "owners": "payments, U04C2RN8VD",
    "alerts": "CheckoutApiErrorRateHigh, PgBouncerPoolExhausted",
    "responders": "U03F8K2LQ1, U04C2RN8VD",
}


def name_list(value: Any, key: str, example: str = "") -> tuple[str, ...]:
    """Names given as a YAML list or one comma-separated string (a number is its text: `tags: [v2, 1.5]`); a
    FileProblem naming ``key``, with an example of its own, otherwise."""
    if value is None:
        return ()
    if isinstance(value, str):
        return tuple(v.strip() for v in value.split(",") if v.strip())
    if isinstance(value, list) and all(isinstance(v, (str, int, float)) for v in value):
        return tuple(str(v) for v in value)
    example = example or NAME_EXAMPLES.get(key, "first, second")
    raise FileProblem(f"`{key}` must be a list of names, for example {key}: [{example}]")


# One rule for a service's name in every file (services.yaml, incidents, the roster and its rotations) and
# on every command line: letters, digits, '.', '_' and '-', with '/' between parts (checkout-api, storage/remote).
def service_names(value: Any) -> tuple[str, ...]:
    """``name_list`` of services, each name checked against that rule."""
    names = name_list(value, "services")
    for name in names:
        if problem := service_name_problem(name):
            raise FileProblem(problem)
    return names


def squashed(name: str) -> str:
    """A name without case or separators: two names that squash alike (`Checkout_API`, `checkout-api`) are one meant
    twice, as knowledge_xref tells a slip."""
    return SEPARATORS.sub("", name.lower())


def text_field(value: Any, key: str, line: int | None = None) -> str:
    """A field that holds text, as text: a number is written out; a list or a mapping is a FileProblem (shown as
    Python's repr, it would be indexed and posted to Slack as brackets and quotes)."""
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    kind = {list: "a list", dict: "a mapping", bool: "yes/no"}.get(type(value), type(value).__name__)
    raise FileProblem(
        f"{key} must be text, not {kind}; write it as a paragraph (for several lines, `{key}: |` and the lines "
        "indented under it).",
        line,
    )
