"""Every slash command the knowledge directory teaches is one opsbot accepts: each quoted command goes through the
parser its handler uses, so a runbook can never again show a form that is refused."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from bot.errors import InvalidRequest
from bot.services import parse_service
from bot.slack.deploys import parse_deploy_args, parse_rollback_args
from bot.slack.incident_commands import parse_incident
from bot.slack.manifest import ESCAPED_COMMANDS, SLASH_COMMANDS

KNOWLEDGE = Path(__file__).resolve().parent.parent / "knowledge"
COMMANDS = {name for name, _, _ in SLASH_COMMANDS}
INLINE = re.compile(r"`(/[a-z]+(?:[ \t][^`\n]*)?)`")
FENCE = re.compile(r"^\s*(```|~~~)")
MENTION = re.compile(r"(?<![<\w])@([A-Za-z][\w.-]*)")


def quoted_commands(path: Path) -> list[tuple[int, str]]:
    """(line, command) for each registered slash command in an inline code span or on a line of a code block."""
    found: list[tuple[int, str]] = []
    in_block = False
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if FENCE.match(line):
            in_block = not in_block
            continue
        candidates = [line.strip()] if in_block else INLINE.findall(line)
        found += [(number, c.strip()) for c in candidates if set(c.split()[:1]) & COMMANDS]
    return found


def as_slack_sends(command: str) -> tuple[str, str]:
    """The command name and its text as Slack posts it: `@rosa.delgado` (picked from the list) becomes a mention
    for the commands registered with escaping."""
    name, _, text = command.partition(" ")
    if name in ESCAPED_COMMANDS:
        text = MENTION.sub(lambda m: f"<@U0TEST0001|{m[1]}>", text)
    return name, text.strip()


def deploy_config() -> dict[str, set[str]]:
    data = yaml.safe_load((KNOWLEDGE / "services.yaml").read_text(encoding="utf-8"))
    configs = {name: parse_service(name, entry) for name, entry in data["services"].items()}
    return {name: set(c.environments) if c else set() for name, c in configs.items()}


def check_service_env(service: str, env: str) -> None:
    environments = deploy_config()
    if env not in environments.get(service, set()):
        raise InvalidRequest(f"{service} has no environment {env!r} in services.yaml")


def check_incident(text: str) -> None:
    asked = parse_incident(text)
    environments = deploy_config()
    for service in asked.services:
        if service not in environments:
            raise InvalidRequest(f"unknown service {service!r}")
    if asked.env and not any(asked.env in envs for envs in environments.values()):
        raise InvalidRequest(f"unknown environment {asked.env!r}")


def check_deploy(text: str) -> None:
    args = parse_deploy_args(text)
    if args is None:
        raise InvalidRequest("not SERVICE VERSION ENV")
    check_service_env(args[0], args[2])


def check_rollback(text: str) -> None:
    args = parse_rollback_args(text)
    if args is None:
        raise InvalidRequest("not SERVICE ENV [VERSION]")
    check_service_env(args[0], args[1])


def check_text(text: str) -> None:
    if not text:
        raise InvalidRequest("needs text")


CHECKS: dict[str, Callable[[str], None]] = {
    "/incident": check_incident,
    "/deploy": check_deploy,
    "/rollback": check_rollback,
    "/ask": check_text,
    "/experts": check_text,
    "/oncall": lambda text: None,  # any team or service name, or none
}

QUOTED = [
    pytest.param(command, id=f"{path.relative_to(KNOWLEDGE)}:{line}")
    for path in sorted(KNOWLEDGE.rglob("*"))
    if path.suffix in (".md", ".yaml", ".yml") and path.is_file()
    for line, command in quoted_commands(path)
    if " " in command  # a bare `/incident` in prose names the command, it is not one to type
]


def test_every_registered_command_has_a_check() -> None:
    assert set(CHECKS) == COMMANDS


def test_the_knowledge_directory_quotes_commands_at_all() -> None:
    assert len(QUOTED) >= 10, [p.values for p in QUOTED]  # the extraction itself works


@pytest.mark.parametrize("command", QUOTED)
def test_each_quoted_command_is_accepted(command: str) -> None:
    name, text = as_slack_sends(command)
    CHECKS[name](text)


def test_a_refused_form_would_be_caught(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text("Run `/incident role ops @dana` and\n\n```\n/incident update\n/deploy web\n```\n", encoding="utf-8")
    commands = [c for _, c in quoted_commands(page)]
    assert commands == ["/incident role ops @dana", "/incident update", "/deploy web"]
    for command in commands:
        with pytest.raises(InvalidRequest):
            name, text = as_slack_sends(command)
            CHECKS[name](text)
