"""One line of deploy output with every secret value in it masked: ``scrub_line``.

The base is detect-secrets' ruleset (Yelp): every regex detector it ships (AWS, GitHub, GitLab, Slack,
Stripe, JWT, npm, basic-auth URLs, ...), its keyword detector, and its base64 high-entropy detector for quoted
strings. opsbot adds, on top (``ADDITIONS``): formats it does not know (fine-grained GitHub tokens, Slack app
tokens, Google API keys, bare npm tokens, Stripe keys of any length), key names it does not list (``token``,
``credentials``, ``*_PASS``, a ``*_KEY`` with a random value), command-line flags (``--password x``, ``mysql -px``,
``docker login -p x``), HTTP authorization headers, a registry's ``"auth": base64(user:password)``, URL query values
under a credential's key (``?code=``, an Azure SAS ``sig=``), chat webhook URLs and base64 values that hide a key or a
secret (a Kubernetes Secret's ``data:``). Private keys, which span lines, are ``bot.redact``'s.

Only the secret value is replaced, by ``***``, so the line keeps its key name and stays readable.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from detect_secrets.core.plugins.util import get_mapping_from_secret_type_to_class
from detect_secrets.filters import heuristic
from detect_secrets.plugins.base import RegexBasedDetector
from detect_secrets.plugins.high_entropy_strings import Base64HighEntropyString
from detect_secrets.plugins.keyword import (
    CONFIG_DENYLIST_REGEX_TO_GROUP,
    DENYLIST,
    QUOTES_REQUIRED_DENYLIST_REGEX_TO_GROUP,
)

MASK = "***"

# detect-secrets' regex detectors, as many as the installed version ships, except two: private keys are
# removed as whole blocks by Redactor, and a public IP address is not a secret.
DETECTORS: tuple[RegexBasedDetector, ...] = tuple(
    plugin()
    for plugin in get_mapping_from_secret_type_to_class().values()
    if issubclass(plugin, RegexBasedDetector) and plugin.__name__ not in {"PrivateKeyDetector", "IPPublicDetector"}
)


def required_literal(pattern: re.Pattern[str]) -> str:
    """The longest run of plain characters that every match of ``pattern`` holds, or "" when there is none.

    Only the top level of the pattern counts (a branch or a group may not be taken, a repeat may be
    taken no times), and a pattern that ignores case has none. OpenAI's key pattern, for one, needs
    ``T3BlbkFJ``: a window without it cannot match, and its ``sk-[A-Za-z0-9-_]*`` tried at every ``sk-``
    of a long line took seconds (2.7 s for 60 kB of ``sk-``).
    """
    if pattern.flags & re.IGNORECASE:
        return ""
    try:
        parsed = re._parser.parse(pattern.pattern, pattern.flags)  # type: ignore[attr-defined]
    except (re.error, AttributeError):
        return ""
    best, run = "", ""
    for op, argument in parsed:
        if op is re._constants.LITERAL:  # type: ignore[attr-defined]
            run += chr(argument)
            continue
        best, run = max(best, run, key=len), ""
    best = max(best, run, key=len)
    return best if len(best) >= 3 else ""


# Per detector, the literals its patterns need, one of which a window must hold for it to match (None: no
# such literal for some pattern, so the detector always runs).
DETECTOR_LITERALS: tuple[tuple[str, ...] | None, ...] = tuple(
    literals if all(literals) else None
    for literals in (tuple(required_literal(p) for p in detector.denylist) for detector in DETECTORS)
)
# The hex detector stays off: hex strings in deploy output are commit SHAs and digests. The base64 one
# looks at quoted strings only (its default), and pure hex never reaches its 4.5 bits per character.
ENTROPY = Base64HighEntropyString()
# The keyword detector's patterns for config files (``DB_PASS=x``, ``password: x``) and for code
# (``password => "x"``): deploy output has both.
KEYWORD_TABLES = (CONFIG_DENYLIST_REGEX_TO_GROUP, QUOTES_REQUIRED_DENYLIST_REGEX_TO_GROUP)
# The keyword detector is most of the cost of a line; it cannot match a line without one of its words.
KEYWORD_HINT = re.compile("|".join(DENYLIST), re.IGNORECASE)
# A word longer than any key name: only in these can a key word repeat often enough to cost time.
LONG_WORD = re.compile(r"\w{64,}")
# Its patterns, and others, cost time quadratic in a line's length: a very long line (a progress bar redrawn
# with carriage returns) is read in overlapping windows; a secret shorter than the overlap is whole in one.
KEYWORD_WINDOW = 8192
KEYWORD_OVERLAP = 1024
# The same for the other detectors, whose secrets can be longer (a JWT of a few kB): a line up to this size is
# read whole, a longer one in windows that overlap by more than any single-line secret is long.
DETECTOR_WINDOW = 16384
DETECTOR_OVERLAP = 4096

WORD = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_")
# A detector may match only the start of a longer token (Stripe's rule stops after 24 characters): the
# mask grows to the whole token, leftwards over word characters, rightwards over base64 and JWT ones too.
GROW_LEFT = WORD | {"-"}
GROW_RIGHT = WORD | set("-+/=.")
DIGEST = re.compile(r"(?i)^(?:sha\d+|md5)[-:]")
ENV_PATH_KEY = re.compile(r"(?:OLD)?PWD$")
ID_KEY = re.compile(r"(?i)(?:\b(?:id|myid|userid)|_id)s?[\"']?\s*[:=]\s*$")

# A key name's words, in snake, kebab, dotted or camel case: "PGPASSWORD", "Session Token", "secret version".
NAME_WORD = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[^\W\dA-Z_]+")
# A key name holding a secret word names a secret (DB_PASSWORD, SessionToken, DB_PASSWORD_PROD), unless its last
# word says what it holds is about one: a password_reset, a secret_version, a token_ttl.
SECRET_HEAD = re.compile(
    r"(?i)(?:key|pass|passw(?:or)?d|pwd|secret|token|credentials?|passphrase|auth|contrase[ñn]a)s?$"
)
ABOUT_WORDS = frozenset(
    "version versions reset ttl expiry expires expiration age rotation days hours minutes seconds length len min "
    "max count size policy rule rules name names file path dir url uri endpoint host port header type format mode "
    "hint prompt strength store manager field env var required enabled disabled id ids".split()
)
COUNTED = frozenset("tokens keys secrets passwords credentials".split())  # max_tokens: 4096 is a count
# Values no secret takes: a number or a time (with a unit: 30s, 90d) under a name that is about a secret, a
# yes/no, an empty one.
NUMBER = re.compile(r"[-+]?\d+(?:[.:]\d+)*[a-z]{0,2}", re.I)
PLAIN_WORD = re.compile(r"true|false|yes|no|on|off|null|nil|none|empty", re.I)
PLAIN_VALUE = re.compile(f"{NUMBER.pattern}|{PLAIN_WORD.pattern}", re.I)
# Where an unquoted value ends: a sentence goes on after it ("api_key=x after the migration", "(secret_version=22)",
# "db_password: x, then restart"). A ",", ";" or ")" inside it (s3cr3t,more; Password=a;b) is part of it; so is
# the ";" of an HTML entity (Slack sends "&" as "&amp;").
UNQUOTED_END = re.compile(r"\s|[),;](?=\s|$)")
# The words prose says of a secret after its name ("api_key: missing", "token=expired"): kept. Any other lone word
# may be the secret itself (`password: letmein`) and is masked.
STATE_WORDS = frozenset(
    "missing expired expiring invalid valid empty blank unset set required optional wrong incorrect mismatch "
    "mismatched rotated revoked reset changed leaked exposed disabled enabled present absent ok bad broken stale "
    "failed failing denied rejected refused unknown redacted hidden masked removed deleted".split()
)
HTML_ENTITY_OPENING = re.compile(r"&#?\w{1,8}\Z")
# A YAML block scalar's indicator (`password: |`, `>-`, `|2`): the value is on the lines below, which
# ``bot.redact.Redactor`` masks.
BLOCK_SCALAR = re.compile(r"[|>](?:[1-9]?[-+]?|[-+][1-9])")
# Words before "key" in names of keys that are no secret: a public key, and keys that find a row, an object or a
# cached result (their value is a hash or a path, as random as a key may be).
LOOKUP_KEY_WORDS = frozenset(
    "public pub cache sort partition primary foreign routing idempotency dedup dedupe lookup object hash range row "
    "map index".split()
)
# What a value as random as a key has at least, in bits per character: detect-secrets' limit for hex strings;
# random base64 of 16 characters or more has over 3.5, a word or a version has less.
RANDOM_KEY_ENTROPY = 3.0
HEX_DIGITS = frozenset("0123456789abcdefABCDEF")
SIGNATURE_DIGEST = re.compile(r"[A-Za-z0-9+/_-]{16,}")  # an HMAC in hex or base64
VERSION = re.compile(r"[vV]?\d+(?:[.-][0-9A-Za-z]+)*(?:\+[0-9A-Za-z.]+)?")  # 1.4.3-rc.1+build.77
# A URL query key whose value is a credential, read by its last word: access_token, X-Goog-Signature, X-Amz-Credential,
# apiKey, _authToken, session. "code" (Azure Functions) and "sig" (Azure SAS) count only alone: a country_code is no
# credential. The webhook runner uses it too, for the query of its own URL.
CREDENTIAL_QUERY_WORD = re.compile(
    r"(?i)(?:api|access|auth|id|refresh|session|secret|client|private)?"
    r"(?:key|token|secret|signature|password|passwd|pwd|pass|credentials?|auth|session)s?"
)
CREDENTIAL_QUERY_ALONE = frozenset({"code", "sig"})
# A query value of lowercase words (?var-key=checkout, ?auth=oidc, ?key=orders-eu): a name, not a credential, which is
# longer or mixes case and digits.
QUERY_WORDS = re.compile(r"[a-z]{1,12}(?:[-_.][a-z]{1,12})*")
# A URL query parameter's "key=" just before a value: the value ends at the next "&", whatever rule found it.
QUERY_KEY_BEFORE = re.compile(r"[?&;][\w.-]+=\Z")

# A value in double or single quotes, or bare up to a space or separator; not a JSON object or list opening.
QUOTED_VALUE = r"""(?:"(?P<dq>[^"]*)"|'(?P<sq>[^']*)'|(?P<bare>(?![{\[])[^\s"',;]+))"""
# The same in a sentence: a bare value ends before the sentence's own punctuation ("is hunter2." keeps its period).
PROSE_VALUE = r"""(?:"(?P<dq>[^"]*)"|'(?P<sq>[^']*)'|(?P<bare>(?![{\[])[^\s"',;]+?)(?=[.!?:)]*(?:[\s"',;]|$)))"""


@dataclass(frozen=True)
class Rule:
    """One of opsbot's additions: a regex whose named group ``value`` (or quoted value) is the secret."""

    name: str
    pattern: re.Pattern[str]
    accept: Callable[[str], bool] = lambda value: True
    hint: re.Pattern[str] | None = None  # a cheap search that must succeed before the pattern can
    key: Callable[[str], bool] = lambda key: True  # checks the pattern's group ``key``, where it has one


def is_credential_query_key(key: str) -> bool:
    """True for a URL query key whose value is a credential: ``code``, ``sig``, ``access_token``, ``apiKey``."""
    words = NAME_WORD.findall(key)
    return key.lower() in CREDENTIAL_QUERY_ALONE or bool(words and CREDENTIAL_QUERY_WORD.fullmatch(words[-1]))


def _is_basic_credentials(value: str) -> bool:
    """True when a ``Basic`` value decodes to ``user:password``, as only real credentials do."""
    try:
        decoded = base64.b64decode(value + "=" * (-len(value) % 4), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return False
    return ":" in decoded and decoded.isprintable()


def _decodes_to_a_secret(value: str) -> bool:
    """True when a base64 value decodes to text in which a line holds a secret (a DSN, a token, a password)."""
    try:
        decoded = base64.b64decode(value + "=" * (-len(value) % 4), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return False  # bytes, not text: nothing to read a secret in
    return any(scrub_line(line) != line for line in decoded.splitlines())


def _is_random_key_value(value: str) -> bool:
    """True for a value as random as a key: hex of 32 digits or more, or base64 mixing upper and lower case and digits.

    A key name holds many other things (a cache key, a sort key, a UUID as an idempotency key): only these are
    masked under a name ending in "key" that detect-secrets does not list (ENCRYPTION_KEY, signingKey).
    """
    if heuristic.is_potential_uuid(value) or ENTROPY.calculate_shannon_entropy(value) <= RANDOM_KEY_ENTROPY:
        return False
    if all(c in HEX_DIGITS for c in value):
        return len(value) >= 32 and any(c.isdigit() for c in value) and any(c.isalpha() for c in value)
    return any(c.isupper() for c in value) and any(c.islower() for c in value) and any(c.isdigit() for c in value)


def _names_a_secret_key(name: str) -> bool:
    """False for a key name that says its key is a public one or a lookup key (PUBLIC_KEY, cache_key, sortKey)."""
    words = NAME_WORD.findall(name)
    return len(words) < 2 or words[-2].lower() not in LOOKUP_KEY_WORDS


def _is_picked_password(value: str) -> bool:
    """True for a value told in prose that reads as a password: seven characters or more, letters and digits, not a
    version (v2.13.0, 1.4.3-rc.1) nor a compound with a word in it (sha256-hashed, 3rd-party)."""
    return (
        len(value) >= 7
        and any(c.isalpha() for c in value)
        and any(c.isdigit() for c in value)
        and not VERSION.fullmatch(value)
        and not ("-" in value and any(len(part) >= 4 and part.isalpha() for part in value.split("-")))
    )


def _looks_like_token(value: str) -> bool:
    """True for a bearer value with a digit or punctuation in it, not an English word like "authentication"."""
    return len(value) >= 8 and any(c.isdigit() or c in "._~+/=-" for c in value)


ADDITIONS: tuple[Rule, ...] = (
    Rule("GitHub fine-grained token", re.compile(r"(?P<value>\bgithub_pat_[A-Za-z0-9_]{20,})")),
    Rule("Slack token", re.compile(r"(?P<value>\b(?:xapp-\d+|xox[a-z])-[A-Za-z0-9-]{10,})")),
    Rule("Stripe key", re.compile(r"(?P<value>\b[rs]k_(?:live|test)_[A-Za-z0-9]{10,})")),
    Rule("npm token", re.compile(r"(?P<value>\bnpm_[A-Za-z0-9]{36})")),
    Rule("Google API key", re.compile(r"(?P<value>\bAIza[0-9A-Za-z_-]{35})")),
    # Tokens known by their prefix that detect-secrets does not list: OpenAI's project and service keys and
    # Anthropic's (its OpenAI rule wants "T3BlbkFJ" inside), Hugging Face, Stripe's webhook secret, PyPI, an age
    # identity, a Google OAuth access token, DigitalOcean.
    Rule(
        "token with a known prefix",
        re.compile(
            r"(?P<value>\b(?:sk-(?:proj|ant|svcacct|admin)-[A-Za-z0-9_-]{20,}|hf_[A-Za-z0-9]{30,}"
            r"|whsec_[A-Za-z0-9+/=]{24,}|pypi-[A-Za-z0-9_-]{50,}|AGE-SECRET-KEY-1[0-9A-Z]{58,}"
            r"|ya29\.[0-9A-Za-z_-]{20,}|do[por]_v1_[a-f0-9]{64}))"
        ),
    ),
    # Vault's service, batch and recovery tokens (and the older s. ones after `vault login`).
    Rule("Vault token", re.compile(r"(?P<value>\bhv[sbr]\.[A-Za-z0-9_-]{24,})")),
    Rule("vault login token", re.compile(r"\bvault\s+login\s+(?!-)(?P<value>[A-Za-z0-9._-]{20,})")),
    # A cookie is a session: the whole header value goes (its attributes too, not worth a parser), up to the
    # quote that closes it in `curl -H "Cookie: ..."`.
    Rule(
        "cookie header", re.compile(r"(?i)(?<![\w-])(?:set-)?cookie:\s*(?P<value>[^\s\"'][^\"']*?)(?=\s*(?:[\"']|$))")
    ),
    # detect-secrets' key words, whatever the value starts with (its patterns want a letter or digit
    # first, and an AWS secret key can start with "/" or "+"), and key names it does not list:
    # SessionToken, GITHUB_TOKEN, credentials, REDIS_PASS, X-Api-Key. The name is the whole run of name
    # characters, taken at once and only from where the run starts; a lookahead checks its key word first.
    # Split lazily at every repeat, a run of key words with no ":" or "=" cost cubic time (`secret.` x 1,000,
    # 8 kB, took 55 s).
    Rule(
        "secret-named key",
        re.compile(
            r"(?i)(?<![\w.-])[\"']?(?=[\w.-]*?(?:" + "|".join(DENYLIST) + r"|(?:token|credentials?|passphrase"
            r"|(?<![a-z])pass|api-key|access[-_]?key)s?[\"']?\s*[:=]))(?P<name>(?>[\w.-]+))[\"']?\s*[:=]\s*"
            + QUOTED_VALUE
        ),
        hint=re.compile("|".join(DENYLIST) + "|token|credential|pass|api-key|access", re.IGNORECASE),
    ),
    # --password x, --token=x, --api-key x; not --password-stdin, whose next word is not a secret.
    Rule(
        "command-line flag",
        re.compile(
            r"(?i)(?<![\w-])--?[\w-]*(?:password|passwd|(?<![a-z])pass|token|secret|api-?key|credentials?)"
            r"(?![\w-])(?:=|\s+)(?!-)" + QUOTED_VALUE
        ),
    ),
    # Also with no user name (redis://:pw@cache) or characters detect-secrets' basic-auth rule stops at (a
    # password may hold #, ? or a quote). The password ends at the last "@" before the host, as urllib (and
    # redis-py, SQLAlchemy) reads it: Tr0ub@dor@db. A port (host:8443?owner=ops@example.com) is no password.
    Rule(
        "URL credentials",
        re.compile(r"://[^/\s:@]*:(?!\d+(?:[/?#]|$))(?P<value>[^/\s]+)@(?=[^@/\s?#\"'<>]*(?:[/?#\"'<>\s,;]|$))"),
    ),
    # The flag within 1,000 characters of the command: unbounded, a line repeating the command word was
    # searched to its end from each one (a 100 kB line took 11 s).
    Rule(
        "curl or wget user",
        re.compile(r"\b(?:curl|wget)\b.{0,1000}?\s(?:-u|--user)[\s=][\"']?[^\s:\"']+:" + QUOTED_VALUE),
    ),
    Rule(
        "MySQL -p",
        re.compile(r"\b(?:mysql|mysqldump|mysqladmin|mysqlimport|mysqlcheck|mariadb)\b.{0,1000}?\s-p" + QUOTED_VALUE),
    ),
    # Short password flags of other tools, as `set -x` echoes them: docker login -p x, sshpass -px, openssl -k x
    # (its -pass pass:x goes by its key name).
    Rule(
        "registry login -p",
        re.compile(
            r"\b(?:docker|podman|buildah|nerdctl|helm\s+registry)\s+login\b.{0,1000}?\s-p(?:\s+|=)(?!-)" + QUOTED_VALUE
        ),
    ),
    Rule("sshpass -p", re.compile(r"\bsshpass\s+-p\s*(?!-)" + QUOTED_VALUE)),
    Rule("az login -p", re.compile(r"\baz\s+login\b.{0,1000}?\s(?:-p|--password)(?:\s+|=)(?!-)" + QUOTED_VALUE)),
    Rule("openssl -k", re.compile(r"\bopenssl\b.{0,1000}?\s-k\s+(?!-)" + QUOTED_VALUE)),
    # htpasswd -b takes the password as its last argument: after FILE and USER, or after USER alone with -n.
    Rule(
        "htpasswd -b",
        re.compile(
            r"\bhtpasswd\s+(?=(?:-[A-Za-z]+\s+)*-[A-Za-z]*b)(?:(?=(?:-[A-Za-z]+\s+)*-[A-Za-z]*n)"
            r"(?:-[A-Za-z]+\s+)+[^\s-]\S*\s+|(?:-[A-Za-z]+\s+)+[^\s-]\S*\s+[^\s-]\S*\s+)" + QUOTED_VALUE
        ),
    ),
    Rule(
        "authorization header",
        re.compile(
            r"(?i)\b(?:proxy-)?authorization[\"']?\s*[:=]\s*[\"']?(?:(?:bearer|basic|token|bot|apikey)\s+)?"
            r"(?P<value>[^\s\"',]+)"
        ),
    ),
    # A query value under a credential's key (Azure Functions' ?code=, a SAS sig=, X-Goog-Signature=, ?key=); other
    # values (?ref=production, ?page=2) are kept. After "&amp;" too, as Slack sends a URL's "&"; a value ends where
    # the URL does in prose or in Slack's <url|label>.
    Rule(
        "credential in a URL query",
        re.compile(r"(?<=[?&;])(?P<key>[\w.-]+)=(?P<value>[^&;\s\"'`#<>|()]+)"),
        lambda value: not _is_plainly_not_a_secret(value) and not QUERY_WORDS.fullmatch(value),
        key=is_credential_query_key,
    ),
    # Chat webhook URLs are credentials whole (detect-secrets knows Slack's /services/ ones only).
    Rule(
        "chat webhook URL",
        re.compile(
            r"(?P<value>https://(?:hooks\.slack\.com/(?:workflows|triggers)/|(?:ptb\.|canary\.)?discord(?:app)?\.com"
            r"/api/webhooks/|[\w-]+\.webhook\.office\.com/)[^\s\"'<>()]+)"
        ),
    ),
    # A PEM block, base64-encoded again: a Kubernetes Secret's tls.key or id_rsa (LS0tLS1CRUdJTi is
    # "-----BEGIN"). A certificate goes too: cut off in a long line, its kind cannot be read.
    Rule("base64 PEM block", re.compile(r"(?<![A-Za-z0-9+/])(?P<value>LS0tLS1CRUdJTi[A-Za-z0-9+/]*={0,2})")),
    # Any other unquoted base64 value of a YAML key (`kubectl get secret -o yaml`: DATABASE_URL, .dockerconfigjson),
    # when what it decodes to holds a secret.
    Rule(
        "base64 value",
        re.compile(r"(?<![\w.-])[\w.-]+:\s+(?P<value>[A-Za-z0-9+/]{16,}={0,2})(?![\w+/=.-])"),
        _decodes_to_a_secret,
    ),
    Rule("bearer token", re.compile(r"(?i)\bbearer\s+(?P<value>[A-Za-z0-9._~+/-]+=*)"), _looks_like_token),
    Rule("basic credentials", re.compile(r"\bBasic\s+(?P<value>[A-Za-z0-9+/]{6,}={0,2})"), _is_basic_credentials),
    # A name ending in "key" after another word, which detect-secrets does not list (ENCRYPTION_KEY, SIGNING_KEY,
    # DD_APP_KEY, signingKey, hmac.key): its value is masked when it is as random as a key.
    Rule(
        "random value of a key name",
        re.compile(
            r"(?<![\w.-])[\"']?(?P<key>(?>[\w.-]+))(?<=[_.-][Kk][Ee][Yy]|[a-z]Key)[\"']?\s*[:=]\s*[\"']?"
            r"(?P<value>[A-Za-z0-9+/_-]{16,}={0,2})(?![\w+/=.-])"
        ),
        _is_random_key_value,
        hint=re.compile(r"(?i)key"),
        key=_names_a_secret_key,
    ),
    # docker's config.json ("auth": "<base64 of user:password>"), and .npmrc's _auth=.
    Rule(
        "registry auth",
        re.compile(r"(?<![\w-])[\"']?_?auth[\"']?\s*[:=]\s*[\"']?(?P<value>[A-Za-z0-9+/]{6,}={0,2})(?![\w+/=])"),
        _is_basic_credentials,
    ),
    # A request's signature header, as `curl -v` prints it (X-Hub-Signature-256, X-Slack-Signature, opsbot's own
    # X-Opsbot-Signature): an HMAC of the body with a secret, enough to replay that request while it is fresh.
    Rule(
        "signature header",
        re.compile(r"(?i)(?<![\w-])x-[\w-]*signature[\w-]*[\"']?\s*:\s*[\"']?(?P<value>[^\s\"']+)"),
        lambda value: SIGNATURE_DIGEST.search(value) is not None,  # not `x-amz-signature-version: 4`
        hint=re.compile(r"(?i)signature"),
    ),
    # A password told in a sentence, as people write one in an incident note or a question: "the temporary
    # password is Welcome123", "DB password was reset to hunter2!". Only a value a person would pick as one:
    # letters and digits; "the password is expired", "the token was rotated at 14:02" and a version are words.
    Rule(
        "credential told in prose",
        re.compile(
            r"(?i)\b(?:password|passwd|passphrase|passcode|secret|token|api[ -]?key)\s+"
            r"(?:is now|was set to|was reset to|set to|changed to|reset to|is|was)\s+" + PROSE_VALUE
        ),
        _is_picked_password,
        hint=re.compile(r"(?i)pass|secret|token|key"),
    ),
)


def _trim(span: tuple[int, int], line: str) -> tuple[int, int]:
    """Drop the separators some detectors include (Artifactory's rule takes the space before the token)."""
    start, end = span
    while start < end and line[start] in " \t\"'=:":
        start += 1
    while end > start and line[end - 1] in " \t\"'":
        end -= 1
    return start, end


def _grow(line: str, span: tuple[int, int]) -> tuple[int, int]:
    """The span grown to the whole token it starts (a detector may match only the first part of a key)."""
    start, end = span
    while start > 0 and line[start - 1] in GROW_LEFT:
        start -= 1
    while end < len(line) and line[end] in GROW_RIGHT:
        end += 1
    return start, end


def _unquoted_value(value: str) -> str:
    """An unquoted value up to the space or separator that ends it, an HTML entity's ";" (``&amp;``) kept in."""
    for end in UNQUOTED_END.finditer(value):
        if end.group() == ";" and HTML_ENTITY_OPENING.search(value[max(0, end.start() - 10) : end.start()]):
            continue
        return value[: end.start()]
    return value


def names_a_secret(name: str) -> bool:
    """True when a key name holds a secret word (``DB_PASSWORD``, ``SessionToken``, ``DB_PASSWORD_PROD``) and its
    last word does not say it is about one (``password_reset``, ``secret_version``)."""
    words = [word.lower() for word in NAME_WORD.findall(name) if len(word) > 1]  # "v2" in api_key_v2 says nothing
    if not words:
        return True
    return words[-1] not in ABOUT_WORDS and any(SECRET_HEAD.search(word) for word in words)


def _is_plainly_not_a_secret(value: str) -> bool:
    """True for a number, a yes/no, or a word said of a secret ("missing", "expired"): what prose puts after a key
    name."""
    if PLAIN_VALUE.fullmatch(value) or value.endswith(":"):  # "tokens: invalid_token: kid": a label, not a value
        return True
    if BLOCK_SCALAR.fullmatch(value):
        return True
    return value.lower() in STATE_WORDS


def _looks_random(value: str) -> bool:
    """True for a value as a secret is, letters and digits mixed (under a name about a secret: SECRET_KEY_BASE)."""
    return (
        len(value) >= 8
        and not value.startswith("/")
        and any(c.isdigit() for c in value)
        and any(c.isalpha() for c in value)
    )


def _is_secret_value(name: str, value: str) -> bool:
    """True when ``value``, found after the key ``name``, is to be masked. A number under a secret's name is a PIN
    or a password (PGPASSWORD=4815162342), unless the name counts (max_tokens: 4096)."""
    if NUMBER.fullmatch(value):  # under password_attempts or secret_refresh_interval, a number is a setting
        words = [word.lower() for word in NAME_WORD.findall(name) if len(word) > 1]
        return not words or (bool(SECRET_HEAD.search(words[-1])) and words[-1] not in COUNTED)
    if _is_plainly_not_a_secret(value):
        return False
    return names_a_secret(name) or _looks_random(value)


def _key_name(line: str, at: int) -> str:
    """The whole key name around ``at`` (where a key word was found): ``aws_secret_access_key``, ``X-Api-Key``."""
    start = end = at
    while start > 0 and (line[start - 1].isalnum() or line[start - 1] in "_.-"):
        start -= 1
    while end < len(line) and (line[end].isalnum() or line[end] in "_.-"):
        end += 1
    return line[start:end]


def _is_reference(value: str) -> bool:
    """True for a value that names a secret instead of holding it: ``$DB_PASS``, ``${{ secrets.X }}``, ``<token>``."""
    return heuristic.is_prefixed_with_dollar_sign(value) or heuristic.is_templated_secret(value)


def _windows(line: str, size: int, overlap: int) -> Iterator[tuple[int, str]]:
    """``(offset, window)`` pieces covering the line, each ``size`` long, overlapping by ``overlap``.

    Some patterns (detect-secrets' among them) cost time quadratic in the length of what they search:
    reading a very long line in windows keeps that cost linear in the line, and a secret shorter than
    the overlap whole in one window.
    """
    if len(line) <= size:
        yield 0, line
        return
    for offset in range(0, max(len(line) - overlap, 1), size - overlap):
        yield offset, line[offset : offset + size]


def _one_key_word_per_word(window: str) -> str:
    r"""``window`` with every long word cut to its first key word: the rest of the word becomes ``x``s.

    detect-secrets' keyword patterns read a key word, then ``\w*`` to the end of the word and back again, so a
    word repeating the key word (``SecretSecret...``) cost time quadratic in its length (32 s for 16 kB). A match
    from a later key word in the word is one from the first with the same value after it, and the ``x``s are
    word characters as the letters were: the values found, and where they are, stay the same.
    """
    if not LONG_WORD.search(window):
        return window
    pieces: list[str] = []
    position = 0
    for word in LONG_WORD.finditer(window):
        first = KEYWORD_HINT.search(window, word.start(), word.end())
        if first:
            pieces += [window[position : first.end()], "x" * (word.end() - first.end())]
            position = word.end()
    return "".join([*pieces, window[position:]])


def _keyword_spans(line: str) -> Iterator[tuple[int, int]]:
    """Values after detect-secrets' keywords (password, secret, api_key, db_pass ...)."""
    # The detector's own patterns and group numbers, with finditer: its analyze_string stops at the
    # first hit of each pattern, and a line can hold several.
    for offset, window in _windows(line, KEYWORD_WINDOW, KEYWORD_OVERLAP):
        if not KEYWORD_HINT.search(window):
            continue
        searched = _one_key_word_per_word(window)
        for table in KEYWORD_TABLES:
            for pattern, group in table.items():
                for match in pattern.finditer(searched):
                    found = window[match.start(group) : match.end(group)]
                    value = found.strip()
                    start = match.start(group) + len(found) - len(found.lstrip())
                    name = _key_name(window, match.start(1)) if group > 2 else ""  # group 2: value before key
                    # Unquoted, the detector's value runs to the end of the line. After a secret's name it is masked
                    # so, a comment aside (a passphrase of words, `Password=p@ss w0rd;Timeout=30`), unless its first
                    # word is said of a secret or is prose (`api_key: missing after the migration`, `token: we
                    # need a new one`); after a name about a secret, only a value of its own that looks random.
                    if not (start and window[start - 1] in "\"'`"):
                        first = _unquoted_value(value)
                        secret = group > 2 and names_a_secret(name) and _is_secret_value(name, first)
                        if group > 2 and names_a_secret(name) and not secret:
                            # "token: rotated, the new one is ghx7Kq2vLp9": prose, and a secret in it all the same
                            yield from _secrets_in_prose(value, len(first), offset + start)
                        value = _to_its_end(value) if secret and not _looks_random(first) else first
                    if (
                        value
                        and not _is_reference(value)
                        and not _is_env_path(window, start)
                        and _is_secret_value(name, value)
                    ):
                        yield offset + start, offset + start + len(value)


TOKEN_IN_PROSE = re.compile(r"[^\s,;()]*[^\s,;().?:]")  # a word of a sentence, without the punctuation after it


def _secrets_in_prose(value: str, after: int, at: int) -> Iterator[tuple[int, int]]:
    """Spans (from ``at``) of the words of ``value`` after its first ``after`` characters that look as random as a
    secret: what a sentence after a secret's name may hold (`set to Tr0ub4dor3`)."""
    for word in TOKEN_IN_PROSE.finditer(_to_its_end(value), after):
        if _looks_random(word.group()) and not _is_reference(word.group()):
            yield at + word.start(), at + word.end()


NEXT_FLAG = re.compile(r"\s--?[A-Za-z]")  # `-pass pass:x -out c.p12`: a command's next option ends the value


def _to_its_end(value: str) -> str:
    """A secret's unquoted value that may hold spaces (a passphrase of words, `p@ss w0rd;Timeout=30`): to the end of
    the line, but a `# comment` or the command's next option. One whole token that looks random (`api_key=a1B2c3D4
    after the incident`) is the secret alone; the caller keeps it to its own end."""
    value = value.split(" #", 1)[0].rstrip()
    flag = NEXT_FLAG.search(value)
    return value[: flag.start()] if flag else value


def _is_env_path(line: str, start: int) -> bool:
    """True for ``PWD=/srv/app`` in an environment dump: the shell's working directory, not a password."""
    return line.startswith("/", start) and bool(ENV_PATH_KEY.search(line[:start].rstrip(":= \"'")))


def _entropy_spans(line: str) -> Iterator[tuple[int, int]]:
    """Random-looking quoted base64 strings, less digests, UUIDs and ids (detect-secrets' heuristics)."""
    for match in ENTROPY.regex.finditer(line):  # the plugin's own pattern: a quoted string of its charset
        value = match.group(2)
        if (
            ENTROPY.calculate_shannon_entropy(value) <= ENTROPY.entropy_limit
            or DIGEST.match(value)
            or heuristic.is_potential_uuid(value)
            or heuristic.is_sequential_string(value)
            or heuristic.is_not_alphanumeric_string(value)
            # detect-secrets' is_likely_id_string looks for "_id" anywhere before the value, which in a
            # log line (request_id=... first) would excuse every later field: only the value's own key counts.
            or ID_KEY.search(line, max(0, match.start() - 64), match.start())
        ):
            continue
        yield match.span(2)


def _detector_spans(line: str) -> Iterator[tuple[int, int]]:
    """Tokens of a known shape, from detect-secrets' regex detectors.

    A detector says what it found, after its own checks (a JWT must decode); its patterns say where.
    The secret is a pattern's longest group (the password in ``://user:pw@``), or its whole match when
    there is none or the group is only the type prefix at the start (``ghp`` in GitHub's pattern).
    """
    for detector, literals in zip(DETECTORS, DETECTOR_LITERALS, strict=True):
        if literals is not None and not any(literal in line for literal in literals):
            continue
        found = set(detector.analyze_string(line))
        if not found:
            continue
        for pattern in detector.denylist:
            grown = (0, 0)  # the last token masked: a match inside it adds nothing (and growing it again
            # for each of thousands of matches in one long token made a line cost quadratic time)
            for match in pattern.finditer(line):
                groups = [i for i in range(1, pattern.groups + 1) if match.group(i)]
                if match.group(0) not in found and not found.intersection(match.group(i) for i in groups):
                    continue
                best = max(groups, key=lambda i: len(match.group(i)), default=0)
                if best and match.start(best) == match.start() and len(match.group(best)) < 8:
                    best = 0
                span = _trim(match.span(best), line)
                if grown[0] <= span[0] and span[1] <= grown[1]:
                    continue
                grown = _grow(line, span)
                yield grown


def _addition_spans(line: str) -> Iterator[tuple[int, int]]:
    """opsbot's own rules (``ADDITIONS``)."""
    for rule in ADDITIONS:
        if rule.hint and not rule.hint.search(line):
            continue
        for match in rule.pattern.finditer(line):
            groups = ("value", "dq", "sq", "bare")
            group = next((g for g in groups if g in match.re.groupindex and match.group(g)), None)
            if group is None:  # an empty value (`DB_PASSWORD=""`): nothing to mask
                continue
            value = match.group(group)
            if "key" in match.re.groupindex and not rule.key(match.group("key")):
                continue
            if value and not _is_reference(value) and rule.accept(value) and not _is_env_path(line, match.start(group)):
                if "name" in match.re.groupindex and not _is_secret_value(match.group("name"), value):
                    if group == "bare" and names_a_secret(match.group("name")):
                        yield from _secrets_in_prose(line[match.start(group) :], len(value), match.start(group))
                    continue
                if (
                    group == "bare"
                    and "name" in match.re.groupindex
                    and names_a_secret(match.group("name"))
                    and not _looks_random(value)
                ):  # to the end of the line but its comment or the next option, as above (`passphrase: a b c`)
                    whole = _to_its_end(line[match.start(group) :])
                    yield match.start(group), match.start(group) + len(whole)
                    continue
                yield match.span(group)


def _mask(line: str, spans: list[tuple[int, int]]) -> str:
    """``line`` with every span replaced by ``***``, overlapping or touching spans by one."""
    out: list[str] = []
    position = 0
    merged: list[list[int]] = []
    for start, end in sorted(spans):
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    for start, end in merged:
        out.append(line[position:start])
        out.append(MASK)
        position = end
    out.append(line[position:])
    return "".join(out)


def _end_at_next_parameter(line: str, span: tuple[int, int]) -> tuple[int, int]:
    """The span of a URL query value cut at the next "&": ``?access_token=x&ref=main`` keeps its ``ref``."""
    start, end = span
    if QUERY_KEY_BEFORE.search(line, max(0, start - 128), start):
        cut = line.find("&", start, end)
        if cut != -1:
            end = cut
    return start, end


def scrub_line(line: str) -> str:
    """One line with every secret value detected in it replaced by ``***`` (no state, no private-key blocks)."""
    spans = list(_keyword_spans(line))
    for offset, window in _windows(line, DETECTOR_WINDOW, DETECTOR_OVERLAP):
        for start, end in (*_detector_spans(window), *_entropy_spans(window), *_addition_spans(window)):
            spans.append((offset + start, offset + end))
    spans = [_end_at_next_parameter(line, span) for span in spans]
    return _mask(line, [span for span in spans if line[span[0] : span[1]].strip("*")])
