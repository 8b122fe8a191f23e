"""The Slack side of `opsbot shell` on its own: signed requests into the Bolt app, deliveries out of the fake API."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from bot.runtime import Runtime
from bot.shell.render import render_blocks
from bot.slack import ids
from bot.slack.local.shell_dispatch import COMMAND_CHANNEL, SHELL_TOKEN, Delivery, LocalSlack
from tests.slack.conftest import SIGNING_SECRET

PRIYA = "U03F8K2LQ1"


@pytest.fixture
def local(runtime: Runtime) -> Iterator[LocalSlack]:
    slack = LocalSlack(runtime).start()
    yield slack
    slack.close()


def settle(local: LocalSlack, method: str, count: int = 1) -> list[Delivery]:
    """Everything delivered once ``count`` calls of ``method`` arrived and the handlers are done."""
    local.fake.wait_for(method, count=count, timeout=60)
    assert local.wait_idle(30)
    return local.new_deliveries()


def test_start_uses_a_fresh_secret_and_the_local_fake_never_the_configured_slack(
    local: LocalSlack, runtime: Runtime
) -> None:
    settings = runtime.settings
    assert str(settings.slack_signing_secret) not in ("", SIGNING_SECRET)
    assert (settings.slack_bot_token, settings.slack_api_url) == (SHELL_TOKEN, local.fake.url)  # not BOT_TOKEN


def test_a_command_without_text_is_answered_in_the_acknowledgement_alone(local: LocalSlack) -> None:
    (ack,) = local.send_command(PRIYA, "priya", "/ask", "")
    assert ack.replaces is None and ack.post.ephemeral and ack.post.channel == COMMAND_CHANNEL
    assert ack.post.text == "Usage: /ask QUESTION" and "`/ask QUESTION`" in str(ack.post.blocks)
    assert local.wait_idle(10) and local.new_deliveries() == [] and local.fake.calls("response_url") == []


def test_the_answer_replaces_the_acknowledgement_and_sharing_removes_it(local: LocalSlack) -> None:
    (ack,) = local.send_command(PRIYA, "priya", "/ask", "Waymark Maps API returns 429 Too Many Requests")
    assert ack.post.text.startswith("Looking for: Waymark Maps API")

    (answer,) = [d for d in settle(local, "response_url") if d.replaces is ack.post]
    assert answer.post.updated and answer.post.ephemeral and answer.post.channel == COMMAND_CHANNEL
    _, buttons = render_blocks(answer.post.blocks)
    share = next(b for b in buttons if b.action_id == ids.SHARE_ANSWER)

    local.click(PRIYA, share, answer.post)
    delivered = settle(local, "chat.postMessage")
    removed = [d for d in delivered if d.replaces is answer.post]
    assert [d.post.note for d in removed] == ["opsbot removed the message only you could see"]
    (shared,) = [d.post for d in delivered if not d.post.note]
    assert shared.channel == COMMAND_CHANNEL and not shared.ephemeral and shared.ts
    assert "Shared by <@U03F8K2LQ1>" in str(shared.blocks)
