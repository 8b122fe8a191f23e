"""Secret scrubbing: detect-secrets' rules and opsbot's additions mask values only, private keys go whole.

Every secret here is made up from random characters of the right shape.
"""

from __future__ import annotations

import base64
import json
import random
import re
import string
import time

import pytest

from bot.redact import KEY_REMOVED, Redactor, scrub
from bot.redact_line import DETECTORS, is_credential_query_key, required_literal

RNG = random.Random(20261102)
ALNUM = string.ascii_letters + string.digits
UPPER_DIGITS = string.ascii_uppercase + string.digits
B64 = ALNUM + "+/"
HEX = "0123456789abcdef"


def fake(n: int, alphabet: str = ALNUM) -> str:
    """n random characters: the shape of a secret, never a real one."""
    return "".join(RNG.choice(alphabet) for _ in range(n))


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def fake_jwt() -> str:
    header = b64url(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    payload = b64url(json.dumps({"sub": fake(8), "exp": 1_800_000_000}).encode())
    return f"{header}.{payload}.{fake(43, ALNUM + '-_')}"


def pem(label: str, body_lines: int, width: int = 64, headers: tuple[str, ...] = ()) -> list[str]:
    """A private key of random bytes as a tool prints it: BEGIN, optional headers, base64 body, END."""
    body = base64.b64encode(RNG.randbytes(body_lines * width * 3 // 4 - 5)).decode()
    lines = [body[i : i + width] for i in range(0, len(body), width)]
    return [f"-----BEGIN {label}-----", *headers, *lines, f"-----END {label}-----"]


def pgp_private_key(body_lines: int = 20) -> list[str]:
    body = pem("X", body_lines)[1:-1]
    checksum = "=" + fake(4, B64)
    return [
        "-----BEGIN PGP PRIVATE KEY BLOCK-----",
        "Version: GnuPG v2",
        "",
        *body,
        checksum,
        "-----END PGP PRIVATE KEY BLOCK-----",
    ]


def putty_key() -> list[str]:
    public = pem("X", 6)[1:-1]
    private = pem("X", 14)[1:-1]
    return [
        "PuTTY-User-Key-File-2: ssh-rsa",
        "Encryption: none",
        "Comment: deploy@ci",
        f"Public-Lines: {len(public)}",
        *public,
        f"Private-Lines: {len(private)}",
        *private,
        f"Private-MAC: {fake(40, HEX)}",
    ]


def body_of(key: list[str]) -> list[str]:
    """The key-material lines of a printed key: long enough that finding one anywhere is a leak."""
    return [line for line in key if len(line) >= 16 and "BEGIN" not in line and "END" not in line and ":" not in line]


def leaked(outputs: list[str], key: list[str]) -> list[str]:
    body = body_of(key)
    return [line for line in outputs if any(part in line for part in body)]


PASSWORD = fake(18)
SLACK_BOT = f"xoxb-{RNG.randint(10**11, 10**12)}-{RNG.randint(10**11, 10**12)}-{fake(24)}"
SLACK_APP = f"xapp-1-A{fake(10, UPPER_DIGITS)}-{RNG.randint(10**12, 10**13)}-{fake(64, HEX)}"
AWS_KEY_ID = "AKIA" + fake(16, UPPER_DIGITS)
AWS_STS_KEY_ID = "ASIA" + fake(16, UPPER_DIGITS)
AWS_SECRET = fake(40, B64)
AWS_SESSION_TOKEN = fake(356, B64)
GITHUB_PAT = "ghp_" + fake(36)
GITHUB_OAUTH = "gho_" + fake(36)
GITHUB_FINE = "github_pat_" + fake(22) + "_" + fake(59)
GITLAB = "glpat-" + fake(20, ALNUM + "-_")
STRIPE_LIVE = "sk_live_" + fake(99)
STRIPE_RESTRICTED = "rk_live_" + fake(24)
JWT = fake_jwt()
BEARER = fake(40, ALNUM + "-._")
BASIC = base64.b64encode(f"deploy:{PASSWORD}".encode()).decode()
NPM = "npm_" + fake(36)
GOOGLE = "AIza" + fake(35, ALNUM + "-_")
SENDGRID = f"SG.{fake(22, ALNUM + '-_')}.{fake(43, ALNUM + '-_')}"
# Known by their prefix alone, and passed whole before (detect-secrets does not list them).
PREFIXED = [
    "sk-proj-" + fake(48, ALNUM + "-_"),
    "sk-ant-api03-" + fake(40, ALNUM + "-_"),
    "hf_" + fake(34),
    "whsec_" + fake(32),
    "pypi-AgEIcHlwaS5vcmc" + fake(60, ALNUM + "-_"),
    "AGE-SECRET-KEY-1" + fake(58, string.ascii_uppercase + string.digits),
    "ya29." + fake(60, ALNUM + "-_"),
    "dop_v1_" + fake(64, HEX),
]

HMAC = fake(64, HEX)

# (what is printed, what must be shown): only the value goes, the key name and the rest of the line stay.
CASES = [
    (f"posting with {SLACK_BOT} to #deploys", "posting with *** to #deploys"),
    (f"socket mode app token {SLACK_APP}", "socket mode app token ***"),
    (f"aws configure set aws_access_key_id {AWS_KEY_ID}", "aws configure set aws_access_key_id ***"),
    (f"aws_secret_access_key = {AWS_SECRET}", "aws_secret_access_key = ***"),
    (f"aws_secret_access_key = /{AWS_SECRET[1:]}", "aws_secret_access_key = ***"),  # not a letter first
    (f'"SecretAccessKey": "+{AWS_SECRET[1:]}"', '"SecretAccessKey": "***"'),
    (
        json.dumps(
            {
                "Credentials": {
                    "AccessKeyId": AWS_STS_KEY_ID,
                    "SecretAccessKey": AWS_SECRET,
                    "SessionToken": AWS_SESSION_TOKEN,
                    "Expiration": "2026-11-02T12:00:00Z",
                }
            }
        ),
        '{"Credentials": {"AccessKeyId": "***", "SecretAccessKey": "***", "SessionToken": "***", '
        '"Expiration": "2026-11-02T12:00:00Z"}}',
    ),
    (f'    "SecretAccessKey": "{AWS_SECRET}",', '    "SecretAccessKey": "***",'),
    (f'    "SessionToken": "{AWS_SESSION_TOKEN}",', '    "SessionToken": "***",'),
    (f"remote: pushing with {GITHUB_PAT}", "remote: pushing with ***"),
    (f"oauth token {GITHUB_OAUTH} refreshed", "oauth token *** refreshed"),
    (f"gh auth login with {GITHUB_FINE}", "gh auth login with ***"),
    (f"registry login {GITLAB} ok", "registry login *** ok"),
    (f"charging with {STRIPE_LIVE}", "charging with ***"),
    (f"restricted key {STRIPE_RESTRICTED} loaded", "restricted key *** loaded"),
    (f"session cookie {JWT} set", "session cookie *** set"),
    (
        f'curl -H "Authorization: Bearer {BEARER}" https://api.example.com',
        'curl -H "Authorization: Bearer ***" https://api.example.com',
    ),
    (f"Authorization: Basic {BASIC}", "Authorization: Basic ***"),
    (f"> GET /v1 HTTP/1.1 bearer {JWT}", "> GET /v1 HTTP/1.1 bearer ***"),
    (
        f"git clone https://deploy:{PASSWORD}@git.example.com/app.git",
        "git clone https://deploy:***@git.example.com/app.git",
    ),
    (f"connecting to redis://:{PASSWORD}@cache:6379/0", "connecting to redis://:***@cache:6379/0"),
    (
        f"+ curl -fsS -u deploy:{PASSWORD} https://ci.example.com/job",
        "+ curl -fsS -u deploy:*** https://ci.example.com/job",
    ),
    (f"X-Api-Key: {fake(32)}", "X-Api-Key: ***"),
    (f"  password: {PASSWORD}", "  password: ***"),
    (json.dumps({"user": "app", "password": PASSWORD}), '{"user": "app", "password": "***"}'),
    (f"mysql -h db --password {PASSWORD} -e 'select 1'", "mysql -h db --password *** -e 'select 1'"),
    (f"mysqldump --password={PASSWORD}", "mysqldump --password=***"),
    (f"mysql -u root -p{PASSWORD} -h db.internal app", "mysql -u root -p*** -h db.internal app"),
    (f"export PGPASSWORD={PASSWORD}", "export PGPASSWORD=***"),
    (f"DB_PASS={PASSWORD}", "DB_PASS=***"),
    (f"REDIS_PASS={PASSWORD}", "REDIS_PASS=***"),
    (f"API_KEY={fake(32)}", "API_KEY=***"),
    (f"deploy-cli --api-key {fake(32)} --env prod", "deploy-cli --api-key *** --env prod"),
    (f"vault login --token={fake(26)}", "vault login --token=***"),
    (f"//registry.npmjs.org/:_authToken={NPM}", "//registry.npmjs.org/:_authToken=***"),
    (f"npm notice publishing as {NPM}", "npm notice publishing as ***"),
    (f"maps client configured with {GOOGLE}", "maps client configured with ***"),
    *((f"exported {token} for the job", "exported *** for the job") for token in PREFIXED),
    (f"mail relay {SENDGRID} accepted", "mail relay *** accepted"),  # detect-secrets' rule, not one of ours
    ("authenticating with token=demo-not-a-real-token", "authenticating with token=***"),
    # a password told in a sentence, as in an incident note: the value goes, the sentence's punctuation stays
    ("the temporary password is Welcome123 until Monday", "the temporary password is *** until Monday"),
    ("DB password was reset to Tr0ub4dor&3.", "DB password was reset to ***."),
    ("(the new API key is AKd83kslq09x)", "(the new API key is ***)"),
    ("Token is now 'ghs 8kq9 Lm2p' for the bridge", "Token is now '***' for the bridge"),
    # a request's signature header, as curl -v prints it: enough to replay the request while it is fresh
    (f"> X-Hub-Signature-256: sha256={HMAC}", "> X-Hub-Signature-256: ***"),
    (
        f'curl -H "X-Opsbot-Signature: t=1700000000,v1={HMAC}" -d @event.json',
        'curl -H "X-Opsbot-Signature: ***" -d @event.json',
    ),
]


@pytest.mark.parametrize(("printed", "shown"), CASES, ids=[shown for _, shown in CASES])
def test_a_secret_value_is_masked_and_its_context_kept(printed: str, shown: str) -> None:
    assert scrub(printed) == shown


def test_the_base_is_detect_secrets_own_detector_list() -> None:
    names = {type(detector).__name__ for detector in DETECTORS}

    assert {"AWSKeyDetector", "GitHubTokenDetector", "GitLabTokenDetector", "SlackDetector", "StripeDetector"} <= names
    assert {"JwtTokenDetector", "BasicAuthDetector", "NpmDetector", "SendGridDetector"} <= names
    assert "IPPublicDetector" not in names  # an address in a log is not a secret


def test_multi_line_sts_json_is_masked_line_by_line() -> None:
    printed = json.dumps(
        {
            "Credentials": {
                "AccessKeyId": AWS_STS_KEY_ID,
                "SecretAccessKey": AWS_SECRET,
                "SessionToken": AWS_SESSION_TOKEN,
                "Expiration": "2026-11-02T12:00:00+00:00",
            }
        },
        indent=4,
    ).splitlines()
    redactor = Redactor()

    shown = [redactor.line(line + "\n") for line in printed]

    assert "".join(shown) == (
        '{\n    "Credentials": {\n        "AccessKeyId": "***",\n        "SecretAccessKey": "***",\n'
        '        "SessionToken": "***",\n        "Expiration": "2026-11-02T12:00:00+00:00"\n    }\n}\n'
    )


def test_known_values_are_masked_wherever_they_appear_even_a_multi_line_one() -> None:
    key = pem("RSA PRIVATE KEY", 6)
    known = (f"hook-{PASSWORD}", "\n".join(key))
    text = f"calling https://hooks.example.com/hook-{PASSWORD}?x=1\necho {key[3]}\ndone"

    assert scrub(text, known) == "calling https://hooks.example.com/***?x=1\necho ***\ndone"


def test_a_known_value_shorter_than_four_characters_is_not_a_secret_to_hunt() -> None:
    assert scrub("step 1 of 3", ("1",)) == "step 1 of 3"


@pytest.mark.parametrize(
    "reference",
    [
        "password: ${{ secrets.DB_PASSWORD }}",
        "DB_PASS=$DB_PASS",
        "vault login --token $VAULT_TOKEN",
        "mysql -u root -p$MYSQL_PWD app",
        'password: "<your password>"',
    ],
)
def test_a_reference_to_a_secret_is_not_a_secret(reference: str) -> None:
    assert scrub(reference) == reference


SHA1 = fake(40, HEX)
SHA256 = fake(64, HEX)
UUID = f"{fake(8, HEX)}-{fake(4, HEX)}-4{fake(3, HEX)}-a{fake(3, HEX)}-{fake(12, HEX)}"
ORDINARY = [
    f"HEAD is now at {SHA1[:7]} deploy payments-api",
    f"commit {SHA1}",
    f'{{"commit": "{SHA1}", "status": "Running"}}',
    f"revision={SHA1} branch=main",
    SHA256,  # a digest alone on a line
    f"pushed registry.larder.example/payments-api@sha256:{SHA256}",
    f'{{"digest": "sha256:{SHA256}", "size": 5242}}',
    f'"integrity": "sha512-{base64.b64encode(RNG.randbytes(64)).decode()}",',
    f"request {UUID} accepted",
    f'{{"request_id": "{UUID}", "trace_id": "{fake(32)}", "span_id": "{fake(16)}"}}',
    "request dep-20261102-ab12cd approved by U_BOB",
    "payments-api 1.4.2 -> 1.4.3-rc.1+build.77 (v2.13.0)",
    '{"version": "1.4.2", "env": "prod"}',
    "pulling https://registry.larder.example/v2/payments-api/manifests/1.4.2",
    "connecting to postgres://db.internal:5432/app?sslmode=require",
    "GET https://api.example.com/search?q=deploy&page=2 200",
    "secret/db-credentials configured",
    "deployment.apps/payments-api configured",
    "docker login -u deploy --password-stdin registry.larder.example",
    "Basic configuration loaded from /etc/app/config.yaml",
    "bearer authentication enabled for /v1",
    "password policy checked: 12 rules",
    "PWD=/srv/releases/20261102",
    "=" * 72,
    "-" * 72,
    "/opt/app/releases/2026/current/bin/server/Main/Handler/V2/Routes/Index",
    "rolling out: 3/3 pods on 1.4.3",
    "installing scikit-learn (the sk-learn extras), hf_hub_download, pypi-simple mirror, task-proj-alpha",
    # a sentence about a password or a token, not telling one
    "the password is expired; the token is invalid (401) and the api key was rotated at 14:02",
    "password is 90 days old, token is v2.13.0, secret is 1.4.3-rc.1+build.77",
    "the secret is sha256-hashed, the token was 3rd-party, the password is base64 encoded",
    "signature verified with X-Hub-Signature-256; x-amz-signature-version: 4",
]


@pytest.mark.parametrize(
    "line",
    ['password: ""', "password: ''", 'DB_PASSWORD=""', 'export API_TOKEN=""', '--password ""', 'the token="" in prod'],
)
def test_an_empty_quoted_secret_is_kept_as_it_is(line: str) -> None:
    # It raised (a StopIteration inside the scrubber's generator): a deploy printing one lost its output reader.
    assert scrub(line) == line


@pytest.mark.parametrize("line", ORDINARY)
def test_ordinary_deploy_output_is_left_alone(line: str) -> None:
    assert scrub(line) == line
    assert Redactor().line(line + "\n") == line + "\n"


def test_a_stream_of_ordinary_output_is_left_alone_as_a_whole() -> None:
    redactor = Redactor()

    assert [redactor.line(line) for line in ORDINARY] == ORDINARY


SALT = fake(32, HEX.upper())
KEYS = {
    "rsa": pem("RSA PRIVATE KEY", 24),
    "pkcs8": pem("PRIVATE KEY", 26),
    "ec encrypted pem": pem(
        "EC PRIVATE KEY", 4, headers=("Proc-Type: 4,ENCRYPTED", f"DEK-Info: AES-128-CBC,{SALT}", "")
    ),
    "encrypted pkcs8": pem("ENCRYPTED PRIVATE KEY", 28),
    "openssh": pem("OPENSSH PRIVATE KEY", 27, width=70),
    "pgp": pgp_private_key(),
    "putty": putty_key(),
}
BEFORE = ["$ cat deploy/key", "reading key from vault"]
AFTER = ["key installed", "rolling out: 1/3 pods on 1.4.3"]


@pytest.mark.parametrize("kind", KEYS)
def test_a_private_key_printed_whole_leaves_one_line(kind: str) -> None:
    key = KEYS[kind]

    assert scrub("\n".join(BEFORE + key + AFTER)) == "\n".join([*BEFORE, KEY_REMOVED, *AFTER])


@pytest.mark.parametrize("kind", KEYS)
def test_a_private_key_printed_one_line_at_a_time_is_announced_once_then_empty(kind: str) -> None:
    key = KEYS[kind]
    redactor = Redactor()

    shown = [redactor.line(line + "\n") for line in BEFORE + key + AFTER]

    assert shown == [f"{line}\n" for line in BEFORE] + [KEY_REMOVED + "\n"] + [""] * (len(key) - 1) + [
        f"{line}\n" for line in AFTER
    ]


def test_a_76_line_key_printed_slowly_shows_no_base64_line_in_tail_or_progress() -> None:
    key = pem("RSA PRIVATE KEY", 76)
    assert len(body_of(key)) == 76
    redactor = Redactor()
    kept: list[str] = []
    progress_edits: list[str] = []

    for line in ["deploying payments-api 1.4.3", *key, "health checks passed"]:
        shown = redactor.line(line + "\n")
        if shown:
            kept.append(shown)
        progress_edits.append("".join(kept[-8:]))  # what a progress edit would post at this moment

    assert leaked(kept[-40:], key) == []
    assert leaked(progress_edits, key) == []
    assert kept == ["deploying payments-api 1.4.3\n", KEY_REMOVED + "\n", "health checks passed\n"]


def test_a_key_whose_begin_line_fell_outside_the_tail_is_still_removed() -> None:
    key = pem("RSA PRIVATE KEY", 76)
    output = ["deploying payments-api 1.4.3", *key, "health checks passed"]

    tail = scrub("\n".join(output[-40:]))

    assert leaked(tail.splitlines(), key) == []
    assert tail.splitlines() == [KEY_REMOVED, "health checks passed"]


@pytest.mark.parametrize("kind", ["rsa", "pkcs8", "openssh", "encrypted pkcs8"])
def test_a_key_cut_at_its_start_is_removed_from_its_first_body_line(kind: str) -> None:
    key = KEYS[kind]
    redactor = Redactor()

    shown = [redactor.line(line) for line in key[10:] + AFTER]

    assert leaked(shown, key) == []
    assert shown == [KEY_REMOVED] + [""] * (len(key) - 11) + AFTER


@pytest.mark.parametrize("kind", KEYS)
def test_a_key_cut_at_its_end_is_removed_and_the_output_after_it_kept(kind: str) -> None:
    key = KEYS[kind]
    printed = BEFORE + key[: len(key) // 2] + AFTER

    assert scrub("\n".join(printed)) == "\n".join([*BEFORE, KEY_REMOVED, *AFTER])


@pytest.mark.parametrize("after", ["done", "Deployed", "OK", SHA1, f"HEAD is now at {SHA1}", "3/3 pods ready"])
def test_a_word_or_a_sha_after_a_key_cut_at_its_end_is_kept(after: str) -> None:
    key = KEYS["rsa"]

    assert scrub("\n".join([*key[:10], after])).splitlines() == [KEY_REMOVED, after]


def test_runs_of_long_tokens_that_are_not_key_material_are_kept() -> None:
    runs = [
        *[fake(64, HEX) for _ in range(3)],  # sha256sum without file names
        *["=" * 64] * 3,
        *[f"/srv/releases/current/lib/python/site/packages/module{i}/handlers" for i in range(3)],
        *["ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"] * 3,  # the base64 alphabet table
    ]
    redactor = Redactor()

    assert [redactor.line(line) for line in runs] == runs


def test_a_key_cut_at_both_ends_is_removed() -> None:
    key = KEYS["openssh"]

    shown = scrub("\n".join(key[5:20] + AFTER))

    assert shown == "\n".join([KEY_REMOVED, *AFTER])


def test_a_key_in_prefixed_log_lines_is_removed_and_the_prefix_kept() -> None:
    key = KEYS["rsa"]
    printed = [f"web-1  | {line}" for line in key] + ["web-1  | key installed"]

    assert scrub("\n".join(printed)) == "web-1  | *** private key removed ***\nweb-1  | key installed"


def test_a_key_in_timestamped_log_lines_is_removed() -> None:
    key = KEYS["pkcs8"]
    printed = [f"2026-11-02T10:00:{i:02d}.{RNG.randint(100, 999)}Z {line}" for i, line in enumerate(key)]

    shown = scrub("\n".join([*printed, "2026-11-02T10:01:00.000Z key installed"]))

    assert leaked(shown.splitlines(), key) == []
    assert shown.splitlines()[-1] == "2026-11-02T10:01:00.000Z key installed"


def test_a_key_inside_one_json_line_is_masked_in_place() -> None:
    key = "\n".join(pem("PRIVATE KEY", 26)) + "\n"
    account = json.dumps({"type": "service_account", "private_key": key, "client_email": "ci@x.iam"})
    bundle = json.dumps({"name": "tls", "pem": key, "chain": 2})

    assert scrub(account) == '{"type": "service_account", "private_key": "***", "client_email": "ci@x.iam"}'
    assert scrub(bundle) == '{"name": "tls", "pem": "***\\n", "chain": 2}'


def test_a_begin_line_followed_by_ordinary_output_removes_nothing_else() -> None:
    printed = ["config/old.pem:-----BEGIN RSA PRIVATE KEY-----", "config/new.pem: no key", "2 files checked"]

    assert scrub("\n".join(printed)).splitlines() == ["config/old.pem:" + KEY_REMOVED, *printed[1:]]


def test_certificates_and_public_keys_are_kept() -> None:
    certificate = pem("CERTIFICATE", 20)
    public = pem("PUBLIC KEY", 6)
    printed = [*certificate, *public, "certificate installed"]

    assert scrub("\n".join(printed)) == "\n".join(printed)


def test_scrub_is_the_streamed_output_less_the_lines_of_removed_keys() -> None:
    printed = [*BEFORE, f"DB_PASS={PASSWORD}", *KEYS["rsa"], f"token={fake(20)}", *KEYS["pgp"][:9], *AFTER]
    redactor = Redactor()
    streamed = [redactor.line(line) for line in printed]

    assert scrub("\n".join(printed)).split("\n") == [line for line in streamed if line]


def test_line_endings_are_kept() -> None:
    redactor = Redactor()

    assert redactor.line(f"DB_PASS={PASSWORD}\r\n") == "DB_PASS=***\r\n"
    assert redactor.line("plain\n") == "plain\n"
    assert redactor.line("no newline") == "no newline"


def test_a_very_long_line_is_scrubbed_whole_in_reasonable_time() -> None:
    values = [fake(14) for _ in range(4000)]
    fields = (f'"password": "{value}", "step": {i}, "note": "{fake(40)} {fake(20)}"' for i, value in enumerate(values))
    line = ", ".join(fields)

    started = time.monotonic()
    shown = Redactor().line(line)  # ~400 KB in one "line", as a progress bar redrawn with \r makes

    assert time.monotonic() - started < 30  # well under a second here; guards against quadratic patterns
    assert [value for value in values if value in shown] == []
    assert shown.count('"password": "***"') == 4000


@pytest.mark.parametrize("unit", ["AKIA", "ghp_", "curl ", "mysql ", "sk-"])
def test_a_long_line_repeating_a_secrets_prefix_is_scrubbed_in_linear_time(unit: str) -> None:
    """80 to 120 kB of one fragment in one line of deploy output: each match once made a pass to the end of
    the line (`AKIA` 14 s, `mysql ` 13 s, `sk-` 2.7 s for 60 kB). Now each case takes well under a second."""
    import signal

    def too_slow(*_: object) -> None:
        raise TimeoutError(f"{unit!r} x 20000 took more than 5 s to scrub")

    previous = signal.signal(signal.SIGALRM, too_slow)
    signal.alarm(5)  # a hang guard, not a measurement: each case takes well under a second
    try:
        scrubbed = scrub(unit * 20_000)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    assert len(scrubbed) <= len(unit) * 20_000


def test_a_long_jwt_in_a_very_long_line_is_masked_wherever_it_stands() -> None:
    """Long lines are read in windows; a 3 kB token is whole in one of them, wherever it stands."""
    header = base64.urlsafe_b64encode(json.dumps({"alg": "HS256", "typ": "JWT"}).encode()).decode().rstrip("=")
    claims = base64.urlsafe_b64encode(json.dumps({"sub": "svc-deploy", "pad": "x" * 2200}).encode()).decode()
    token = f"{header}.{claims.rstrip('=')}.c2lnbmF0dXJlc2lnbmF0dXJl"
    for before in range(0, 40_000, 3_000):  # across every window boundary of a 40 kB line
        line = "x" * before + " " + token + " " + "y" * (40_000 - before)
        scrubbed = scrub(line)
        assert token[:40] not in scrubbed and "***" in scrubbed, before


def test_a_detector_is_skipped_only_where_its_pattern_cannot_match() -> None:
    """A window without the literal a detector's pattern needs is not searched; one with it still is."""
    openai = next(d for d in DETECTORS if type(d).__name__ == "OpenAIDetector")
    (pattern,) = openai.denylist
    assert required_literal(pattern) == "T3BlbkFJ"
    assert required_literal(re.compile(r"(?i)token\s*=\s*(\w+)")) == ""  # case-free: no literal to insist on
    assert required_literal(re.compile(r"(?:abcd|efgh)xy")) == ""  # a branch, and a run too short
    assert required_literal(re.compile(r"ab(cdef)?ghij")) == "ghij"  # an optional group is not required
    key = "sk-" + fake(20) + "T3BlbkFJ" + fake(20)
    assert scrub(f"export OPENAI_KEY_USED_BY_DEPLOY {key} done") == "export OPENAI_KEY_USED_BY_DEPLOY *** done"
    assert scrub("sk-" * 20_000 + " " + key).endswith(" ***")


@pytest.mark.parametrize("unit", ["secret.", "Secret", "-----BEGIN A-----", "-----BEGIN RSA PRIVATE KEY-----"])
def test_a_slack_message_of_repeated_key_words_or_begin_lines_is_scrubbed_quickly(unit: str) -> None:
    """40,000 characters, the most a Slack message holds, that a secret-named key or a one-line private key
    could start at each repeat and never end: the key name rule tried every split of the run (`secret.` x 1,000
    took 55 s at 8 kB) and the one-line key pattern searched to the line's end from each BEGIN (3.7 s)."""
    import signal

    def too_slow(*_: object) -> None:
        raise TimeoutError(f"{unit!r} repeated to 40,000 characters took more than 10 s to scrub")

    line = (unit * (40_000 // len(unit) + 1))[:40_000]
    previous = signal.signal(signal.SIGALRM, too_slow)
    signal.alarm(10)  # stops a pattern that backtracks for minutes; the bound measured is below
    try:
        elapsed = []
        for scrubbing in (scrub, Redactor().line):
            started = time.monotonic()
            scrubbing(line)
            elapsed.append(time.monotonic() - started)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    assert max(elapsed) < 1.0  # each pass takes 0.2 s at most here


def test_keys_and_certificates_in_one_line_are_paired_with_their_own_end() -> None:
    key, other, certificate = (
        "\\n".join(pem("EC PRIVATE KEY", 3)),
        "\\n".join(pem("PRIVATE KEY", 3)),
        "\\n".join(pem("CERTIFICATE", 3)),
    )
    line = f'{{"cert": "{certificate}", "key": "{key}", "next": "{other}"}} -----END RSA PRIVATE KEY-----'

    assert scrub(line) == f'{{"cert": "{certificate}", "key": "***", "next": "***"}} -----END RSA PRIVATE KEY-----'


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def test_base64_data_of_a_kubernetes_secret_is_masked_when_it_holds_a_key_or_a_secret() -> None:
    """`kubectl get secret -o yaml` prints each value base64-encoded and unquoted, under any key name."""
    docker = json.dumps({"auths": {"ghcr.io": {"username": "ci", "password": PASSWORD, "auth": b64(f"ci:{PASSWORD}")}}})
    printed = [
        "apiVersion: v1",
        "data:",
        f"  tls.key: {b64(chr(10).join(KEYS['pkcs8']) + chr(10))}",
        f"  id_rsa: {b64(chr(10).join(KEYS['openssh']))}",
        f"  ca.crt: {b64(chr(10).join(pem('CERTIFICATE', 8)))}",
        f"  DATABASE_URL: {b64(f'postgres://app:{PASSWORD}@db.internal:5432/app?sslmode=require')}",
        f"  .dockerconfigjson: {b64(docker)}",
        f"  settings.env: {b64(f'LOG_LEVEL=info{chr(10)}STRIPE_KEY={STRIPE_LIVE}{chr(10)}')}",
        "kind: Secret",
    ]
    shown = [
        "apiVersion: v1",
        "data:",
        "  tls.key: ***",
        "  id_rsa: ***",
        "  ca.crt: ***",  # a certificate is masked too: where a base64 PEM block is cut off, its kind is unknown
        "  DATABASE_URL: ***",
        "  .dockerconfigjson: ***",
        "  settings.env: ***",
        "kind: Secret",
    ]

    assert scrub("\n".join(printed)).splitlines() == shown


@pytest.mark.parametrize(
    "line",
    [
        f"  app.properties: {b64('server.port=8080' + chr(10) + 'feature.search=enabled' + chr(10))}",
        f"  motd: {b64('Welcome to the payments cluster')}",
        f"  username: {b64('deploy-bot')}",
        f"  seed: {base64.b64encode(RNG.randbytes(32)).decode()}",  # bytes, not text: nothing to read
        "  replicas: 3",
        "  path: /opt/app/releases/2026/current/bin/server",
    ],
)
def test_base64_values_that_decode_to_ordinary_text_are_kept(line: str) -> None:
    assert scrub(line) == line


@pytest.mark.parametrize("indicator", ["|", ">", "|-", ">+", "|2"])
def test_a_yaml_block_scalar_under_a_secrets_name_is_masked_to_the_end_of_its_indentation(indicator: str) -> None:
    printed = [
        "db:",
        f"  password: {indicator}",
        "    Correct-Horse-Battery-Staple",
        "",
        f"    {PASSWORD}",
        "  user: app",
        "  notes: |",
        "    rotate the password every 90 days",
        "tls:",
        f"- tls.key: {indicator}",
        *("    " + line for line in KEYS["pkcs8"]),
        "  tls.crt: |",
        "    see runbooks/certificates.md",
    ]
    shown = [
        "db:",
        f"  password: {indicator}",
        "    ***",
        "",
        "    ***",
        "  user: app",
        "  notes: |",
        "    rotate the password every 90 days",
        "tls:",
        f"- tls.key: {indicator}",
        *["    ***"] * len(KEYS["pkcs8"]),
        "  tls.crt: |",
        "    see runbooks/certificates.md",
    ]

    assert scrub("\n".join(printed)).splitlines() == shown
    redactor = Redactor()
    assert [redactor.line(line + "\n") for line in printed] == [line + "\n" for line in shown]


REGISTRY_AUTH = b64("deploy:Sup3rS3cretRegistryPw")  # a password of words: too little entropy to be caught as random


@pytest.mark.parametrize(
    ("printed", "shown"),
    [
        (
            f'{{"auths":{{"registry.example.com":{{"auth":"{REGISTRY_AUTH}"}}}}}}',
            '{"auths":{"registry.example.com":{"auth":"***"}}}',
        ),
        (f'    "auth": "{b64("ci:hunter2")}",', '    "auth": "***",'),
        (f"//registry.example.com/:_auth={REGISTRY_AUTH}", "//registry.example.com/:_auth=***"),
    ],
)
def test_a_registry_auth_value_that_decodes_to_user_and_password_is_masked(printed: str, shown: str) -> None:
    """docker's config.json and .npmrc keep user:password base64-encoded under "auth"."""
    assert scrub(printed) == shown


@pytest.mark.parametrize(
    "line", ['{"auth": "oidc", "provider": "github"}', f'"auth": "{b64("service-account")}"', "auth: kubernetes"]
)
def test_an_auth_value_that_is_no_user_and_password_is_kept(line: str) -> None:
    assert scrub(line) == line


SAS = fake(43, B64).replace("+", "%2B").replace("/", "%2F") + "%3D"
GUID = f"{fake(8, HEX)}-{fake(4, HEX)}-4{fake(3, HEX)}-a{fake(3, HEX)}-{fake(12, HEX)}"
SIGNED_URLS = [
    (
        f"uploading to https://acct.blob.core.windows.net/c/b.zip?sv=2022-11-02&sp=r&se=2030-01-01T00:00:00Z&sig={SAS}",
        "uploading to https://acct.blob.core.windows.net/c/b.zip?sv=2022-11-02&sp=r&se=2030-01-01T00:00:00Z&sig=***",
    ),
    (f"GET /c/b.zip?sig={SAS}&sv=2022-11-02 200", "GET /c/b.zip?sig=***&sv=2022-11-02 200"),
    (
        f"POST https://hooks.slack.com/workflows/T{fake(8, UPPER_DIGITS)}/A{fake(8, UPPER_DIGITS)}/"
        f"{RNG.randint(10**17, 10**18)}/{fake(24)} 200",
        "POST *** 200",
    ),
    (
        f"POST https://hooks.slack.com/triggers/T{fake(8, UPPER_DIGITS)}/{RNG.randint(10**12, 10**13)}/{fake(32, HEX)}",
        "POST ***",
    ),
    (f"notify: https://discord.com/api/webhooks/{RNG.randint(10**18, 10**19)}/{fake(68, ALNUM + '-_')}", "notify: ***"),
    (
        f"teams: https://contoso.webhook.office.com/webhookb2/{GUID}@{GUID}/IncomingWebhook/"
        f"{fake(32, HEX)}/{GUID} sent",
        "teams: *** sent",
    ),
]


@pytest.mark.parametrize(("printed", "shown"), SIGNED_URLS, ids=[shown for _, shown in SIGNED_URLS])
def test_a_sas_signature_and_chat_webhook_urls_are_masked(printed: str, shown: str) -> None:
    assert scrub(printed) == shown


FUNCTION_KEY = fake(54, B64) + "=="
SIGNATURE = fake(64, HEX)
QUERY_CREDENTIALS = [
    (
        f"+ curl -sf -X POST 'https://hooks-fn.azurewebsites.net/api/warmup?code={FUNCTION_KEY}'",
        "+ curl -sf -X POST 'https://hooks-fn.azurewebsites.net/api/warmup?code=***'",
    ),
    (
        f"GET https://storage.googleapis.com/b/o?X-Goog-Algorithm=GOOG4-RSA-SHA256&X-Goog-Signature={SIGNATURE} 200",
        "GET https://storage.googleapis.com/b/o?X-Goog-Algorithm=GOOG4-RSA-SHA256&X-Goog-Signature=*** 200",
    ),
    (
        f"https://x.example.com/hook?ref=production&signature={SIGNATURE}",
        "https://x.example.com/hook?ref=production&signature=***",
    ),
    (f"https://maps.example.com/api/js?key={PASSWORD}&page=2", "https://maps.example.com/api/js?key=***&page=2"),
    (f"https://x.example.com/hook?auth={PASSWORD}", "https://x.example.com/hook?auth=***"),
    (
        f"https://x.example.com/feed?access_token={PASSWORD}&page=2",
        "https://x.example.com/feed?access_token=***&page=2",
    ),
    # Slack sends a URL's "&" as "&amp;"
    (
        f"https://x.example.com/hook?ref=main&amp;sig={SIGNATURE}&amp;sv=1",
        "https://x.example.com/hook?ref=main&amp;sig=***&amp;sv=1",
    ),
    (
        f"<https://x.example.com/api?code={FUNCTION_KEY}|warm up> done",
        "<https://x.example.com/api?code=***|warm up> done",
    ),
]


@pytest.mark.parametrize(("printed", "shown"), QUERY_CREDENTIALS, ids=[shown for _, shown in QUERY_CREDENTIALS])
def test_a_url_query_value_under_a_credentials_key_is_masked(printed: str, shown: str) -> None:
    assert scrub(printed) == shown


@pytest.mark.parametrize(
    "line",
    [
        "GET https://api.github.com/repos/acme/app/contents/deploy.yaml?ref=production&page=2 200",
        "https://shop.example.com/api/rates?country_code=DE&zipcode=10115&author=ops&keyword=deploy",
        "GET /search?q=token&page=3 200",
        "https://x.example.com/hook?token=expired",
        "https://grafana.example.com/d/abc123/checkout?orgId=1&from=now-6h&var-key=checkout",
        "https://login.example.com/start?auth=oidc&provider=github",
    ],
)
def test_query_values_that_are_no_credential_are_kept(line: str) -> None:
    assert scrub(line) == line


@pytest.mark.parametrize(
    ("key", "credential"),
    [
        ("code", True),
        ("sig", True),
        ("X-Amz-Credential", True),
        ("apiKey", True),
        ("_authToken", True),
        ("session", True),
        ("country_code", False),
        ("author", False),
        ("monkey", False),
        ("ref", False),
        ("sv", False),
    ],
)
def test_credential_query_keys_in_printed_urls(key: str, credential: bool) -> None:
    """The scrubber masks printed URLs' query values under these keys (the runner's own URL takes more: any key
    holding a credential's word, see test_webhook_runner)."""
    assert is_credential_query_key(key) is credential


@pytest.mark.parametrize(
    "line",
    [
        "gpg --verify release.tar.gz.sig release.tar.gz",
        "sig verification passed for 3 artifacts",
        "GET https://api.example.com/search?q=sig&page=2 200",
        "see https://api.slack.com/workflows for the workflow builder",
        "https://discord.com/channels/1234567890/987654321 is the ops channel",
        "docs: https://learn.microsoft.com/en-us/microsoftteams/platform/webhooks-and-connectors/",
    ],
)
def test_sig_and_chat_urls_that_are_not_credentials_are_kept(line: str) -> None:
    assert scrub(line) == line


@pytest.mark.parametrize(
    ("printed", "shown"),
    [
        (
            f"DATABASE_URL=postgres://app:{PASSWORD[:9]}@{PASSWORD[9:]}@db.internal:5432/app",
            "DATABASE_URL=postgres://app:***@db.internal:5432/app",
        ),
        (f"connecting to redis://:{PASSWORD[:6]}@h@rse@cache:6379/0", "connecting to redis://:***@cache:6379/0"),
        (f'{{"url": "amqp://ci:{PASSWORD}@@mq", "next": "a@b"}}', '{"url": "amqp://ci:***@mq", "next": "a@b"}'),
        # a password holding #, ? or a quote, which the first version of this rule stopped at and so let through
        (
            "DATABASE_URL=postgres://app:Xk9#pQ2vL@db.internal:5432/app",
            "DATABASE_URL=postgres://app:***@db.internal:5432/app",
        ),
        ("redis://:s3cr?t-Pw@cache:6379/0", "redis://:***@cache:6379/0"),
        ("amqp://svc:pa'ss-w0rd@mq.internal/vhost", "amqp://svc:***@mq.internal/vhost"),
    ],
)
def test_a_url_password_holding_at_signs_is_masked_up_to_the_host(printed: str, shown: str) -> None:
    """A URL's password ends at the last "@" before the host, as urllib, redis-py and SQLAlchemy read it."""
    assert scrub(printed) == shown


@pytest.mark.parametrize(
    "line",
    [
        "pip install https://files.example.com:8443/pkgs/app@1.4.2",
        "GET https://api.example.com:8443?owner=ops@example.com 200",
        "npm install https://registry.example.com/@scope/pkg@1.2.0",
        "cloning ssh://git@github.com:22/org/repo.git",
    ],
)
def test_urls_with_at_signs_and_no_password_are_kept(line: str) -> None:
    assert scrub(line) == line


SHORT_FLAGS = [
    (f"+ htpasswd -b /etc/nginx/.htpasswd admin {PASSWORD}", "+ htpasswd -b /etc/nginx/.htpasswd admin ***"),
    (f"htpasswd -cbB .htpasswd ci {PASSWORD}", "htpasswd -cbB .htpasswd ci ***"),
    (f"htpasswd -nb admin {PASSWORD} > users", "htpasswd -nb admin *** > users"),
    (f"+ docker login -u ci -p {PASSWORD} registry.example.com", "+ docker login -u ci -p *** registry.example.com"),
    (f"podman login --username ci -p={PASSWORD} quay.io", "podman login --username ci -p=*** quay.io"),
    (f"+ sshpass -p {PASSWORD} ssh deploy@web1 uptime", "+ sshpass -p *** ssh deploy@web1 uptime"),
    (f"sshpass -p{PASSWORD} scp app.tar web1:/srv", "sshpass -p*** scp app.tar web1:/srv"),
    (
        f"+ openssl enc -aes-256-cbc -k {PASSWORD} -in backup.tar -out backup.enc",
        "+ openssl enc -aes-256-cbc -k *** -in backup.tar -out backup.enc",
    ),
    (
        f"openssl pkcs12 -export -in c.pem -passout pass:{PASSWORD} -out c.p12",
        "openssl pkcs12 -export -in c.pem -passout pass:*** -out c.p12",
    ),
    (f"openssl rsa -in k.pem -passin pass:{PASSWORD}", "openssl rsa -in k.pem -passin pass:***"),
    (f"openssl enc -d -aes-256-cbc -pass pass:{PASSWORD} -in x", "openssl enc -d -aes-256-cbc -pass *** -in x"),
]


@pytest.mark.parametrize(("printed", "shown"), SHORT_FLAGS, ids=[shown for _, shown in SHORT_FLAGS])
def test_short_password_flags_of_login_sshpass_and_openssl_are_masked(printed: str, shown: str) -> None:
    assert scrub(printed) == shown


@pytest.mark.parametrize(
    "line",
    [
        "docker login -u ci --password-stdin registry.example.com",
        "podman login -u ci -p $REGISTRY_PASSWORD quay.io",
        "docker run -p 8080:80 payments-api:1.4.3",
        "ssh -p 2222 deploy@web1 uptime",
        "openssl enc -d -aes-256-cbc -kfile /run/secrets/backup-key -in x",
        "openssl pkcs12 -in c.p12 -passin env:P12_PASSWORD -nokeys",
        "openssl rsa -in k.pem -passin file:/run/secrets/pass",
        "htpasswd -c /etc/nginx/.htpasswd admin",  # asks for the password: none on the line
        "htpasswd -v .htpasswd admin",
    ],
)
def test_short_flags_that_are_not_passwords_are_kept(line: str) -> None:
    assert scrub(line) == line


def test_the_short_last_line_of_a_key_in_timestamped_log_lines_is_removed() -> None:
    """GitHub Actions raw logs stamp every line: the key's last line, 24 characters, was kept, and its END line."""
    body = base64.b64encode(RNG.randbytes(48 * 20 + 18)).decode()  # 20 lines of 64, then one of 24
    key = [
        "-----BEGIN PRIVATE KEY-----",
        *(body[i : i + 64] for i in range(0, len(body), 64)),
        "-----END PRIVATE KEY-----",
    ]
    assert len(key[-2]) == 24
    stamped = [f"2026-11-02T10:00:00.{i:07d}Z {line}" for i, line in enumerate([*key, "key installed", "Deployed v2"])]

    for printed in (stamped, stamped[5:]):  # whole, and with its BEGIN line scrolled away
        shown = scrub("\n".join(printed)).splitlines()

        assert leaked(shown, key) == []
        assert shown[1:] == [stamped[-2], stamped[-1]]
        assert not any("END" in line for line in shown)


def nanoseconds(n: int) -> str:
    """A fraction of a second as RFC 3339 with nanoseconds writes it: trailing zeros dropped, none at all for 0."""
    digits = f"{n % 10**9:09d}".rstrip("0")
    return f".{digits}" if digits else ""


LONG_PREFIXES = {
    "journalctl with an EC2 host name": lambda n: (
        f"Dec 07 10:00:{n:02d} ip-10-0-3-17.eu-west-1.compute.internal deploy-agent[4242]: "
    ),
    "kubectl logs --prefix --timestamps": lambda n: (
        f"[pod/checkout-api-7f9c8d6b5-x2kqz/checkout-api] 2026-12-07T10:00:{n:02d}.{RNG.randint(10**8, 10**9 - 1)}Z "
    ),
    # RFC 3339 nanoseconds as kubectl prints them: trailing zeros dropped, so the prefix is not always as wide
    "kubectl, a fraction of varying width": lambda n: (
        f"[pod/checkout-api-7f9c8d6b5-x2kqz/checkout-api] 2026-12-07T10:00:{n:02d}{nanoseconds(n * 125_000_000)}Z "
    ),
}


@pytest.mark.parametrize("kind", LONG_PREFIXES)
def test_a_key_in_lines_with_a_long_changing_prefix_is_removed_through_its_end(kind: str) -> None:
    """A log prefix of 76 or 79 characters that changes every line: only the BEGIN line went, every body line stayed."""
    prefix = LONG_PREFIXES[kind]
    key = pem("RSA PRIVATE KEY", 19)
    printed = [prefix(n) + line for n, line in enumerate([*key, "key installed"])]
    redactor = Redactor()

    shown = [redactor.line(line) for line in printed]

    assert leaked(shown, key) == []
    assert shown == [printed[0].split("-----")[0] + KEY_REMOVED] + [""] * (len(key) - 1) + [printed[-1]]


def test_output_after_a_cut_key_and_a_certificate_in_long_prefixed_lines_is_kept() -> None:
    prefix = LONG_PREFIXES["journalctl with an EC2 host name"]
    after = ["Deployed v2", "rolling out 3/3", f"HEAD is now at {SHA1}"]
    certificate = [prefix(n) + line for n, line in enumerate(pem("CERTIFICATE", 10))]
    cut = [prefix(n) + line for n, line in enumerate([*KEYS["rsa"][:8], *after])]

    assert scrub("\n".join(certificate)) == "\n".join(certificate)
    assert scrub("\n".join(cut)).splitlines() == [prefix(0) + KEY_REMOVED, *cut[-3:]]


# Free text (incident titles, notes, alert descriptions, commit subjects) that names a secret without holding one.
PROSE = [
    "Partner orders failing: api_key: missing after the config migration",
    "receiver still verifies with secret_version=14 while Paylane signs with 15, so every webhook is rejected",
    "Restored the partner block; password_rotation_days: 0 had disabled rotation, set to 90",
    "checkout-api rejects tokens: invalid_token: kid not found in JWKS (12% of requests)",
    "Webhook secret: mismatch since 20:45; Paylane signs with 15.",
    "Raise token_ttl: 3600 -> 7200 for mobile clients (#4412)",
    "Fix password_reset: send the link once, not twice (#4431)",
    "auth failed: token: invalid",
    "token=expired for checkout-api",
    "password_min_length=12",
    "secret_name=checkout-db",
    "POSTGRES_PASSWORD_FILE=/run/secrets/db_password",
    "max_tokens: 4096",
    "password_attempts: 3",
    "secret_refresh_interval: 300",
    "token: invalid since the migration of the signing keys",
    "secret: true",
    "api_key=none (the partner never had one)",
]


@pytest.mark.parametrize("line", PROSE)
def test_prose_that_names_a_secret_without_holding_one_is_kept_whole(line: str) -> None:
    assert scrub(line) == line


NAMED_SECRETS = [
    ("password: hunter2isnotsafe", "password: ***"),
    ("password: letmein", "password: ***"),  # a lone word may be the password itself, unless prose says it of one
    ("DB_PASSWORD=correcthorse", "DB_PASSWORD=***"),
    ("PASSWORD=S3cr3t!", "PASSWORD=***"),
    (f"api_key={AWS_KEY_ID}", "api_key=***"),
    (f"token: {GITHUB_PAT}", "token: ***"),
    ('password: "correct horse battery staple" ok', 'password: "***" ok'),
    # only the value goes: the sentence after it stays
    (f"rotated: api_key={PASSWORD} after the incident", "rotated: api_key=*** after the incident"),
    (f"set the new db_password: {PASSWORD}, then restart", "set the new db_password: ***, then restart"),
    ("password=ab&amp;cdefgh", "password=***"),  # Slack sends "&" as "&amp;": its ";" is no separator
    # a name that is about a secret still hides a value as random as a secret
    (f"SECRET_KEY_BASE={fake(64, HEX)}", "SECRET_KEY_BASE=***"),
    # Masked before the value was cut at a space, and kept for a while after (found reviewing that change): a
    # number under a secret's name, a name qualified after its secret word, a "," or ";" inside the value, and a
    # config line's value of several words.
    ("export PGPASSWORD=4815162342", "export PGPASSWORD=***"),
    ("token: 99887766554433221100", "token: ***"),
    ("password=583920ab", "password=***"),
    ("api_key=1234567890123456", "api_key=***"),
    ("DB_PASSWORD_PROD=correct-horse-battery-staple", "DB_PASSWORD_PROD=***"),
    ("ADMIN_PASSWORD_STAGING=sunshinebeach", "ADMIN_PASSWORD_STAGING=***"),
    ("SECRET_PROD=bananarama", "SECRET_PROD=***"),
    ("DB_PASS=s3cr3t,moresecret", "DB_PASS=***"),
    ("Server=db;User Id=sa;Password=hunter2;tail9x;Encrypt=true", "Server=db;User Id=sa;Password=***"),
    ("password: correct horse battery staple", "password: ***"),
    ("  passphrase: Sup3r Secret phrase  # rotated monthly", "  passphrase: ***  # rotated monthly"),
    # The same behind the prefix a log line carries; a connection string's value with a space; the next option of
    # a command ends it; a secret in the sentence after a word said of one (second review of that change).
    ("app-1  | DB_PASSWORD=correct horse battery staple", "app-1  | DB_PASSWORD=***"),
    ("2026-12-07T10:00:00Z password: correct horse battery staple", "2026-12-07T10:00:00Z password: ***"),
    ("+ export DB_PASS=correct horse battery", "+ export DB_PASS=***"),
    ("Server=db;Database=app;Password=p@ss w0rd;Timeout=30", "Server=db;Database=app;Password=***"),
    (
        "openssl pkcs12 -export -passout pass:hunter2word -out c.p12",
        "openssl pkcs12 -export -passout pass:*** -out c.p12",
    ),
    ("db password: set to Tr0ub4dor3", "db password: set to ***"),
    ("token: rotated, the new one is ghx7Kq2vLp9", "token: rotated, the new one is ***"),
]


@pytest.mark.parametrize(("printed", "shown"), NAMED_SECRETS, ids=[shown for _, shown in NAMED_SECRETS])
def test_a_secret_after_a_key_name_is_masked_up_to_its_end(printed: str, shown: str) -> None:
    assert scrub(printed) == shown


RANDOM_KEYS = [
    (f"ENCRYPTION_KEY={fake(32)}", "ENCRYPTION_KEY=***"),
    (f"+ export SIGNING_KEY={fake(43, B64)}=", "+ export SIGNING_KEY=***"),
    (f"MASTER_KEY: {fake(44, ALNUM + '-_')}", "MASTER_KEY: ***"),
    (f"HMAC_KEY={fake(64, HEX)} set", "HMAC_KEY=*** set"),
    (f"DD_APP_KEY={fake(40, HEX)}", "DD_APP_KEY=***"),
    (f"  signingKey: {fake(32)}", "  signingKey: ***"),
    (f"  hmac.key: {fake(32)}", "  hmac.key: ***"),
]


@pytest.mark.parametrize(("printed", "shown"), RANDOM_KEYS, ids=[shown for _, shown in RANDOM_KEYS])
def test_a_random_value_under_a_name_ending_in_key_is_masked(printed: str, shown: str) -> None:
    assert scrub(printed) == shown


@pytest.mark.parametrize(
    "line",
    [
        f"CACHE_KEY={fake(40, HEX)}",
        f"  partitionKey: {fake(32)}",
        f"PUBLIC_KEY={fake(44, B64)}",
        f"IDEMPOTENCY_KEY={GUID}",
        f"Cache restored from key: Linux-node-{fake(64, HEX)}",
        "RELEASE_KEY=payments-api-1.4.2",
        "ROUTING_KEY=orders.created.eu-west-1",
        f"commit {fake(40, HEX)} deployed to checkout-api-7d9f8b6c5-x2k9q",
        f"image: registry.example.com/checkout@sha256:{fake(64, HEX)}",
    ],
)
def test_a_key_names_value_that_is_no_secret_is_kept(line: str) -> None:
    assert scrub(line) == line


AMZ_ID = base64.b64encode(RNG.randbytes(56)).decode()  # S3's x-amz-id-2: 76 characters of base64, "=" last
ARGUMENTS_AND_HEADERS = [
    "+ kubectl apply -k deploy/Overlays/ProdEU2/CheckoutApiService/Patches2026Q4/Kustomize",
    "kubectl apply -f k8s/Overlays/Prod2/CheckoutApiDeploymentV4Patch7/kustomization",
    "  src/main/java/com/acme/checkout/PaymentService2Impl/RetryPolicyV3Test",
    f"x-amz-id-2: {AMZ_ID}",
    f"< x-amz-id-2: {AMZ_ID}",
    f"deploy-cli --bundle-digest {fake(64, B64)}",
]


@pytest.mark.parametrize("line", ARGUMENTS_AND_HEADERS)
def test_a_path_a_flags_argument_or_a_header_value_is_no_line_of_a_key(line: str) -> None:
    """Random enough and of a key line's length, each was replaced by "*** private key removed ***"."""
    assert scrub(line) == line
    assert Redactor().line(line + "\n") == line + "\n"


def test_a_key_line_after_a_header_naming_a_secret_is_still_masked() -> None:
    line = f"x-amz-security-token: {AMZ_ID}"

    assert scrub(line) != line and AMZ_ID not in scrub(line)


VAULT = "hvs." + fake(91, ALNUM + "_-")
LOGINS_AND_COOKIES = [
    (f"+ vault login {VAULT}", "+ vault login ***"),
    (f"VAULT_TOKEN is {VAULT} now", "VAULT_TOKEN is *** now"),
    (
        f"+ az login --service-principal -u http://app -p {PASSWORD} --tenant t",
        "+ az login --service-principal -u http://app -p *** --tenant t",
    ),
    (f"Cookie: session={PASSWORD}; theme=dark", "Cookie: ***"),
    (f"< Set-Cookie: sid={PASSWORD}; Path=/; HttpOnly", "< Set-Cookie: ***"),
    (f'curl -H "Cookie: session={PASSWORD}" https://x', 'curl -H "Cookie: ***" https://x'),
]


@pytest.mark.parametrize(("printed", "shown"), LOGINS_AND_COOKIES, ids=[shown for _, shown in LOGINS_AND_COOKIES])
def test_vault_tokens_az_login_passwords_and_cookies_are_masked(printed: str, shown: str) -> None:
    assert scrub(printed) == shown


@pytest.mark.parametrize(
    "line",
    ["vault login -method=oidc", "az login --identity", "Cookie consent banner shown", "hvs. is Vault's token prefix"],
)
def test_logins_without_a_secret_and_cookie_prose_are_kept(line: str) -> None:
    assert scrub(line) == line
