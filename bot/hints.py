"""Examples for usage lines and hints, taken from the knowledge that was indexed, not from the sample.

Someone who indexed their own runbooks should read `/deploy billing-api 2.0.1 staging`, about a service of
theirs, not the sample's `checkout-api`; with nothing to take an example from, hints use placeholders.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from bot.services import DEFAULT_VERSION_PATTERN
from bot.store import Store

# Versions tried, in order, against a service's version_pattern when it has no deploy history to take one from.
VERSION_SHAPES = ("1.4.2", "v1.4.2", "1.4", "2026.01.15-1", "20260115.1", "42")


@dataclass(frozen=True)
class Examples:
    """What hints may name; each empty when the knowledge has nothing to take it from."""

    service: str = ""  # a service of this knowledge (services.yaml, the roster, past incidents)
    deploy: tuple[str, str, str] = ("", "", "")  # (service, version, environment) of a deployable service
    topic: str = ""  # the title of a runbook, to ask about
    topic_service: str = ""  # a service that runbook names

    def deploy_usage(self) -> str:
        """`/deploy SERVICE VERSION ENV`'s usage line, with an example from this knowledge when there is one."""
        service, version, env = self.deploy
        if not service:
            return "Usage: /deploy SERVICE VERSION ENV (the services and environments are in services.yaml)"
        return f"Usage: /deploy SERVICE VERSION ENV, for example `/deploy {service} {version} {env}`"

    def rollback_usage(self) -> str:
        """`/rollback SERVICE ENV [VERSION]`'s usage line, with examples from this knowledge when there are."""
        service, version, env = self.deploy
        if not service:
            return (
                "Usage: /rollback SERVICE ENV [VERSION]: without a version, back to the version that succeeded "
                "before the current one (the services and environments are in services.yaml)"
            )
        return (
            f"Usage: /rollback SERVICE ENV [VERSION], for example `/rollback {service} {env}` "
            f"(back to the version that succeeded before the current one) or `/rollback {service} {env} {version}`"
        )

    def question(self) -> str:
        """An example question: a runbook's title, or a placeholder."""
        return self.topic or "what the alert or error says"

    def experts_usage(self) -> str:
        """`/experts`'s example."""
        service = f" --service {self.topic_service}" if self.topic_service else ""
        return f"`/experts {self.question()}{service}`"


def examples(store: Store) -> Examples:
    """Examples from what `opsbot index` stored: services.yaml first, then the roster and past incidents."""
    configs = store.service_configs()
    deploy = ("", "", "")
    for name, config in configs.items():
        environments = config.get("environments") if isinstance(config, dict) else None
        if isinstance(environments, dict) and environments:
            env = next(iter(environments))
            pattern = str(config.get("version_pattern") or DEFAULT_VERSION_PATTERN)
            deploy = (name, _version(store, name, env, pattern), env)
            break
    service = deploy[0] or next(iter(configs), "")
    if not service:
        named = [s for e in store.load_experts() for s in e.services] + [
            s for i in store.load_incidents() for s in i.services
        ]
        service = named[0] if named else ""
    topics = store.runbook_topics()
    # A runbook about the example service, so one example reads as one story; else the first runbook.
    title, named = next((t for t in topics if service in t[1]), topics[0] if topics else ("", []))
    topic_service = service if service in named else (named[0] if named else "")
    return Examples(service=service, deploy=deploy, topic=title, topic_service=topic_service)


def _version(store: Store, service: str, env: str, pattern: str) -> str:
    """A version that fits: the last one that succeeded, else a usual shape the version_pattern accepts."""
    done = store.succeeded_for(service, env, limit=1)
    if done:
        return str(done[0]["version"])
    try:
        return next((v for v in VERSION_SHAPES if re.fullmatch(pattern, v)), "VERSION")
    except re.error:
        return "VERSION"
