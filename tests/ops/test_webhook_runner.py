"""Deploys whose runner is a webhook: the body filled in and posted, and a body that cannot be filled in ending
the deploy as failed (lock released, cause logged) instead of leaving it running."""

from __future__ import annotations

import dataclasses
import logging
import random
import string
from collections.abc import Iterator
from http.server import ThreadingHTTPServer
from pathlib import Path

import pytest

from bot.answers.indexer import index_knowledge
from bot.ops.deploys import DeployService
from bot.ops.requests import DeployRequest
from bot.ops.runner import describe
from bot.services import Runner
from bot.store import Store
from tests.conftest import FakeEncoder
from tests.fakes import Clock
from tests.ops.fixtures import ALICE, BOB, make_knowledge, serve


@pytest.fixture
def elsewhere() -> Iterator[ThreadingHTTPServer]:
    """Another host, such as a sign-in page a CI endpoint redirects to."""
    server = serve()
    yield server
    server.shutdown()
    server.server_close()


def hook_service(tmp_path: Path, url: str, extra: str = "") -> tuple[DeployService, Store]:
    """A service ``hook`` whose deploy posts to ``url``; ``extra`` holds more lines of its webhook mapping."""
    services = f"""\
services:
  hook:
    environments:
      staging: {{approvals: 1, approvers: [web]}}
    deploy:
      webhook:
        url: "{url}"
        body:
          ref: "{{version}}"
          inputs: {{where: "{{env}}", runs: [{{id: "{{request_id}}"}}]}}
          args: ["--env", "{{env}}", "{{{{x}}}}"]
          n: 3
{extra}      timeout: 10
"""
    store = Store(tmp_path / "hook.db")
    report = index_knowledge(store, FakeEncoder(), make_knowledge(tmp_path / "k", services))
    assert report.problems == []
    return DeployService.from_store(store, clock=Clock()), store


def test_the_webhook_body_is_filled_in_and_posted(tmp_path: Path, ci: ThreadingHTTPServer) -> None:
    deploys, store = hook_service(tmp_path, f"http://127.0.0.1:{ci.server_port}/hooks/deploy")
    request = deploys.request("deploy", "hook", "staging", "1.4.2", ALICE)
    assert deploys.approve(request.id, BOB).start

    done = deploys.execute(request.id)

    assert done.status == "succeeded", done.log_tail
    assert "HTTP 202" in done.log_tail
    # every string is filled in, a mapping's value or a list's item, at any depth; a doubled brace is one brace
    assert ci.bodies == [  # type: ignore[attr-defined]
        {
            "ref": "1.4.2",
            "inputs": {"where": "staging", "runs": [{"id": request.id}]},
            "args": ["--env", "staging", "{x}"],
            "n": 3,
        }
    ]
    store.close()


def test_a_body_that_cannot_be_filled_in_fails_the_deploy_and_says_why(
    tmp_path: Path, ci: ThreadingHTTPServer, caplog: pytest.LogCaptureFixture
) -> None:
    deploys, store = hook_service(tmp_path, f"http://127.0.0.1:{ci.server_port}/hooks/deploy")
    # A runner that passed no check (services.yaml is checked when it is indexed): its body names {sha}.
    config = deploys.services["hook"]
    bad = dataclasses.replace(config.deploy, body={"ref": "{version}", "message": "deploy {sha}"})
    assert isinstance(bad, Runner)
    deploys.services["hook"] = dataclasses.replace(config, deploy=bad)
    request = deploys.request("deploy", "hook", "staging", "1.4.2", ALICE)
    assert deploys.approve(request.id, BOB).start

    with caplog.at_level(logging.ERROR, logger="bot.ops.runner"):
        done = deploys.execute(request.id)

    assert done.status == "failed"
    assert "unknown placeholder {sha}" in done.note
    assert "'service', 'version', 'env', 'request_id'" in done.note
    assert "unknown placeholder {sha}" in done.log_tail  # what the thread shows under the failed run
    assert ci.bodies == []  # type: ignore[attr-defined]
    assert any("unknown placeholder {sha}" in r.getMessage() and request.id in r.getMessage() for r in caplog.records)
    [finished] = [r for r in store.audit_rows() if r["action"] == "deploy.finished"]
    assert finished["details"]["status"] == "failed"
    assert "{sha}" in finished["details"]["reason"]
    # the lock is free: the next request for the service and environment is taken
    assert deploys.request("deploy", "hook", "staging", "1.4.3", ALICE).status == "pending"
    store.close()


def test_a_redirect_is_not_followed_and_fails_the_deploy_naming_where_it_pointed(
    tmp_path: Path, ci: ThreadingHTTPServer, elsewhere: ThreadingHTTPServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CI_TRIGGER_TOKEN", "s3cr3t-Trigger-Token-42")
    login = f"http://127.0.0.1:{elsewhere.server_port}/login?session=Zq81-secret-session"
    ci.answer = (302, {"Location": login}, "")  # type: ignore[attr-defined]
    extra = "        secret_header: X-Token\n        secret_env: CI_TRIGGER_TOKEN\n"
    deploys, store = hook_service(tmp_path, f"http://127.0.0.1:{ci.server_port}/hooks/deploy", extra)
    request = deploys.request("deploy", "hook", "staging", "1.4.2", ALICE)
    assert deploys.approve(request.id, BOB).start

    done = deploys.execute(request.id)

    assert done.status == "failed", done.log_tail
    assert elsewhere.seen == []  # type: ignore[attr-defined]  # nothing, and no token, went to the other host
    [(method, path, headers)] = ci.seen  # type: ignore[attr-defined]
    assert (method, path, headers["X-Token"]) == ("POST", "/hooks/deploy", "s3cr3t-Trigger-Token-42")
    assert "HTTP 302" in done.log_tail and "redirect" in done.log_tail
    assert f"http://127.0.0.1:{elsewhere.server_port}/login" in done.log_tail
    assert "Zq81-secret-session" not in done.log_tail
    assert deploys.request("deploy", "hook", "staging", "1.4.3", ALICE).status == "pending"  # lock released
    store.close()


def approved_with_secret_env(
    tmp_path: Path, ci: ThreadingHTTPServer, monkeypatch: pytest.MonkeyPatch, dot_env: str = ""
) -> tuple[DeployService, Store, DeployRequest]:
    """An approved request of a webhook whose secret_env is CI_TRIGGER_TOKEN, unset in the environment; ``dot_env``
    the .env beside opsbot, if any."""
    monkeypatch.delenv("CI_TRIGGER_TOKEN", raising=False)
    monkeypatch.chdir(tmp_path)
    if dot_env:
        (tmp_path / ".env").write_text(dot_env)
    extra = "        secret_header: X-Token\n        secret_env: CI_TRIGGER_TOKEN\n"
    deploys, store = hook_service(tmp_path, f"http://127.0.0.1:{ci.server_port}/hooks/deploy", extra)
    request = deploys.request("deploy", "hook", "staging", "1.4.2", ALICE)
    assert deploys.approve(request.id, BOB).start
    return deploys, store, request


def test_the_webhook_secret_is_read_from_dot_env_as_every_setting_is(
    tmp_path: Path, ci: ThreadingHTTPServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Before, only the process environment was read: a secret kept in .env (as the install steps say) went out empty.
    deploys, store, request = approved_with_secret_env(
        tmp_path, ci, monkeypatch, "CI_TRIGGER_TOKEN=from-dot-env-Trigger-7\n"
    )

    done = deploys.execute(request.id)

    assert done.status == "succeeded", done.log_tail
    [(_, _, headers)] = ci.seen  # type: ignore[attr-defined]
    assert headers["X-Token"] == "from-dot-env-Trigger-7"
    store.close()


def test_a_webhook_whose_secret_is_not_set_is_not_triggered_and_says_which_variable(
    tmp_path: Path, ci: ThreadingHTTPServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Before, the header went out empty and the deploy's fate was left to CI: an empty credential, without a word.
    deploys, store, request = approved_with_secret_env(tmp_path, ci, monkeypatch)

    done = deploys.execute(request.id)

    assert done.status == "failed" and done.never_started
    assert "CI_TRIGGER_TOKEN" in done.note and "set it" in done.note
    assert ci.seen == []  # type: ignore[attr-defined]
    assert deploys.request("deploy", "hook", "staging", "1.4.3", ALICE).status == "pending"  # lock released
    store.close()


def test_a_credential_in_the_webhook_url_is_sent_but_never_shown_or_stored(
    tmp_path: Path, ci: ThreadingHTTPServer, caplog: pytest.LogCaptureFixture
) -> None:
    key = "aB3dE5fG7hI9jK1lM3nO5pQ7rS9tU1vW3xY5zA7bC9dE1fG3hI5jK7lM9nO1pQ3rS5tU7vW9xY1zA3bC5dE7fG9hI1jK3kL5mN=="
    base = f"http://127.0.0.1:{ci.server_port}/api/deploy"
    url = f"http://deployer:Pa55-w0rd-9xq@127.0.0.1:{ci.server_port}/api/deploy?code={key}"
    ci.answer = (202, {}, f"queued for {url}")  # type: ignore[attr-defined]  # a CI system that echoes the URL
    deploys, store = hook_service(tmp_path, url)
    request = deploys.request("deploy", "hook", "staging", "1.4.2", ALICE)
    assert describe(deploys, request) == f"POST {base}"  # what the request message says will run
    assert deploys.approve(request.id, BOB).start

    with caplog.at_level(logging.DEBUG):
        done = deploys.execute(request.id)

    assert done.status == "succeeded", done.log_tail
    [(_, path, headers)] = ci.seen  # type: ignore[attr-defined]
    assert path.startswith("/api/deploy?code=")  # the query string is sent as written
    assert headers["Authorization"] == "Basic ZGVwbG95ZXI6UGE1NS13MHJkLTl4cQ=="  # the user as HTTP basic auth
    assert f"triggered {base}: HTTP 202" in done.log_tail
    # services.yaml's copy in the database keeps the URL to send; the deploy's row, audit and logs do not
    kept = [str(store.deploy_row(request.id)), str(store.audit_rows()), caplog.text]
    assert not [text for text in kept if key[:20] in text or "Pa55-w0rd" in text]
    store.close()


@pytest.mark.parametrize(
    ("userinfo", "query", "echoed"),
    [
        # '@', ':' and '/' are percent-encoded in a URL's password; opsbot sends it decoded (basic auth)
        ("deployer:Pa55%40w0rd%3A9xq%2FZt@", "", "authenticated as deployer:Pa55@w0rd:9xq/Zt"),
        ("deployer:Pa55%40w0rd%3A9xq%2FZt@", "", "Authorization: Basic ZGVwbG95ZXI6UGE1NUB3MHJkOjl4cS9adA=="),
        # a key with '+', '/' or '=' (an Azure ?code=) is encoded in the URL and echoed as sent, or decoded
        ("", "?code=zQ9%2Bk7Lm%2Fw3Xv8%3DRt5Y", "queued POST /api/deploy?code=zQ9%2Bk7Lm%2Fw3Xv8%3DRt5Y"),
        ("", "?code=zQ9%2Bk7Lm%2Fw3Xv8%3DRt5Y", "queued with code zQ9+k7Lm/w3Xv8=Rt5Y"),
    ],
)
def test_a_credential_of_the_url_is_scrubbed_in_each_of_its_encodings(
    tmp_path: Path, ci: ThreadingHTTPServer, userinfo: str, query: str, echoed: str
) -> None:
    # Before, the password was scrubbed only as written (encoded) and a query value only decoded: the form the
    # answer echoed reached the deploy's row and Slack.
    url = f"http://{userinfo}127.0.0.1:{ci.server_port}/api/deploy{query}"
    ci.answer = (200, {}, echoed)  # type: ignore[attr-defined]
    deploys, store = hook_service(tmp_path, url)
    request = deploys.request("deploy", "hook", "staging", "1.4.2", ALICE)
    assert deploys.approve(request.id, BOB).start
    done = deploys.execute(request.id)
    secret = echoed.rsplit(" ", 1)[-1].split(":", 1)[-1].split("?code=")[-1]
    assert done.status == "succeeded" and secret not in str(store.deploy_row(request.id))
    assert "***" in done.log_tail


def test_a_credential_in_the_webhook_url_is_not_shown_when_the_trigger_fails(tmp_path: Path) -> None:
    url = "http://deployer:Pa55-w0rd-9xq@127.0.0.1:9/api/deploy?sig=Zk2-very-secret-signature"
    deploys, store = hook_service(tmp_path, url)
    request = deploys.request("deploy", "hook", "staging", "1.4.2", ALICE)
    assert deploys.approve(request.id, BOB).start

    done = deploys.execute(request.id)

    assert done.status == "failed"
    assert "could not trigger http://127.0.0.1:9/api/deploy" in done.log_tail
    assert "Pa55-w0rd" not in done.log_tail and "very-secret" not in done.log_tail
    store.close()


def test_a_private_key_in_the_webhook_answer_is_removed_whole(tmp_path: Path, ci: ThreadingHTTPServer) -> None:
    rng = random.Random(11)
    alphabet = string.ascii_letters + string.digits + "+/"
    body = ["".join(rng.choice(alphabet) for _ in range(64)) for _ in range(13)] + ["/eDwonxNPaOnJKGcQQ=="]
    key = "\n".join(["-----BEGIN PRIVATE KEY-----", *body, "-----END PRIVATE KEY-----"])
    ci.answer = (200, {}, f"pipeline 4242 queued; the job's env:\nDEPLOY_KEY=\n{key}\nbye")  # type: ignore[attr-defined]
    deploys, store = hook_service(tmp_path, f"http://127.0.0.1:{ci.server_port}/hooks/deploy")
    request = deploys.request("deploy", "hook", "staging", "1.4.2", ALICE)
    assert deploys.approve(request.id, BOB).start

    done = deploys.execute(request.id)

    assert done.status == "succeeded"
    assert [line for line in body if line in done.log_tail] == []
    assert "END PRIVATE KEY" not in done.log_tail
    assert done.log_tail.splitlines()[-3:] == ["DEPLOY_KEY=", "*** private key removed ***", "bye"]
    store.close()


def test_query_values_that_are_not_credentials_are_not_scrubbed_from_the_answer(
    tmp_path: Path, ci: ThreadingHTTPServer
) -> None:
    """A GitLab trigger URL's `ref=production` is a word its answer repeats, not a secret; its token is one."""
    token = "glptt-0a1b2c3d4e5f60718293a4b5c6d7e8f9"
    url = f"http://127.0.0.1:{ci.server_port}/api/v4/projects/7/trigger/pipeline?token={token}&ref=production"
    ci.answer = (201, {}, f'{{"ref": "production", "environment": "production", "token": "{token}"}}')  # type: ignore[attr-defined]
    deploys, store = hook_service(tmp_path, url)
    request = deploys.request("deploy", "hook", "staging", "1.4.2", ALICE)
    assert deploys.approve(request.id, BOB).start

    done = deploys.execute(request.id)

    assert done.status == "succeeded", done.log_tail
    assert '"ref": "production", "environment": "production"' in done.log_tail and token not in done.log_tail
    store.close()


@pytest.mark.parametrize("key", ["auth_code", "passcode", "token_v2", "signature_b64", "sessionid"])
def test_a_credential_of_the_urls_query_under_any_credential_word_is_scrubbed_from_the_echo(
    tmp_path: Path, ci: ThreadingHTTPServer, key: str
) -> None:
    # The runner's own URL: any key holding a credential's word is its secret. For a while only the keys that
    # printed text is scrubbed under were (auth_code, passcode ... were echoed into the stored output).
    secret = "Zq8vN2pLx7RtW4mK"
    ci.answer = (202, {}, f"queued POST /api/deploy?{key}={secret}")  # type: ignore[attr-defined]
    deploys, store = hook_service(tmp_path, f"http://127.0.0.1:{ci.server_port}/api/deploy?{key}={secret}")
    request = deploys.request("deploy", "hook", "staging", "1.4.2", ALICE)
    assert deploys.approve(request.id, BOB).start

    done = deploys.execute(request.id)

    assert done.status == "succeeded", done.log_tail
    assert secret not in str(store.deploy_row(request.id)), done.log_tail
    store.close()
