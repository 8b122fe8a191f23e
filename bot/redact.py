"""Finding secrets in deploy output before anything of it is kept, tailed or shown.

The base is detect-secrets' ruleset (Yelp): every regex detector it ships (AWS, GitHub, GitLab, Slack,
Stripe, JWT, npm, basic-auth URLs, ...), its keyword detector, its base64 high-entropy detector for quoted
strings and its private-key detector. opsbot adds, on top (``ADDITIONS``): formats it does not know
(fine-grained GitHub tokens, Slack app tokens, Google API keys, bare npm tokens, Stripe keys of any
length), key names it does not list (``token``, ``credentials``, ``*_PASS``), command-line flags
(``--password x``, ``mysql -px``) and HTTP authorization headers; and, in ``Redactor``, whole private
key blocks across lines, even when their BEGIN line was never seen.

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
from detect_secrets.plugins.private_key import PrivateKeyDetector

MASK = "***"
KEY_REMOVED = "*** private key removed ***"

# detect-secrets' regex detectors, as many as the installed version ships, except two: private keys are
# removed as whole blocks by Redactor, and a public IP address is not a secret.
DETECTORS: tuple[RegexBasedDetector, ...] = tuple(
    plugin()
    for plugin in get_mapping_from_secret_type_to_class().values()
    if issubclass(plugin, RegexBasedDetector) and plugin.__name__ not in {"PrivateKeyDetector", "IPPublicDetector"}
)
# The hex detector stays off: hex strings in deploy output are commit SHAs and digests. The base64 one
# looks at quoted strings only (its default), and pure hex never reaches its 4.5 bits per character.
ENTROPY = Base64HighEntropyString()
# The keyword detector's patterns for config files (``DB_PASS=x``, ``password: x``) and for code
# (``password => "x"``): deploy output has both.
KEYWORD_TABLES = (CONFIG_DENYLIST_REGEX_TO_GROUP, QUOTES_REQUIRED_DENYLIST_REGEX_TO_GROUP)
# The keyword detector is most of the cost of a line; it cannot match a line without one of its words.
KEYWORD_HINT = re.compile("|".join(DENYLIST), re.IGNORECASE)
# Its patterns cost time quadratic in a line's length: a very long line (a progress bar redrawn with
# carriage returns) is read in overlapping windows; a ``key=value`` shorter than the overlap is whole in one.
KEYWORD_WINDOW = 8192
KEYWORD_OVERLAP = 1024
PRIVATE_KEY = PrivateKeyDetector()

WORD = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_")
# A detector may match only the start of a longer token (Stripe's rule stops after 24 characters): the
# mask grows to the whole token, leftwards over word characters, rightwards over base64 and JWT ones too.
GROW_LEFT = WORD | {"-"}
GROW_RIGHT = WORD | set("-+/=.")
HEX_DIGITS = frozenset("0123456789abcdefABCDEF")
DIGEST = re.compile(r"(?i)^(?:sha\d+|md5)[-:]")
ENV_PATH_KEY = re.compile(r"(?:OLD)?PWD$")
ID_KEY = re.compile(r"(?i)(?:\b(?:id|myid|userid)|_id)s?[\"']?\s*[:=]\s*$")

# A value in double or single quotes, or bare up to a space or separator; not a JSON object or list opening.
QUOTED_VALUE = r"""(?:"(?P<dq>[^"]*)"|'(?P<sq>[^']*)'|(?P<bare>(?![{\[])[^\s"',;]+))"""


@dataclass(frozen=True)
class Rule:
    """One of opsbot's additions: a regex whose named group ``value`` (or quoted value) is the secret."""

    name: str
    pattern: re.Pattern[str]
    accept: Callable[[str], bool] = lambda value: True
    hint: re.Pattern[str] | None = None  # a cheap search that must succeed before the pattern can


def _is_basic_credentials(value: str) -> bool:
    """True when a ``Basic`` value decodes to ``user:password``, as only real credentials do."""
    try:
        decoded = base64.b64decode(value + "=" * (-len(value) % 4), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return False
    return ":" in decoded and decoded.isprintable()


def _looks_like_token(value: str) -> bool:
    """True for a bearer value with a digit or punctuation in it, not an English word like "authentication"."""
    return len(value) >= 8 and any(c.isdigit() or c in "._~+/=-" for c in value)


ADDITIONS: tuple[Rule, ...] = (
    Rule("GitHub fine-grained token", re.compile(r"(?P<value>\bgithub_pat_[A-Za-z0-9_]{20,})")),
    Rule("Slack token", re.compile(r"(?P<value>\b(?:xapp-\d+|xox[a-z])-[A-Za-z0-9-]{10,})")),
    Rule("Stripe key", re.compile(r"(?P<value>\b[rs]k_(?:live|test)_[A-Za-z0-9]{10,})")),
    Rule("npm token", re.compile(r"(?P<value>\bnpm_[A-Za-z0-9]{36})")),
    Rule("Google API key", re.compile(r"(?P<value>\bAIza[0-9A-Za-z_-]{35})")),
    # detect-secrets' key words, whatever the value starts with (its patterns want a letter or digit
    # first, and an AWS secret key can start with "/" or "+"), and key names it does not list:
    # SessionToken, GITHUB_TOKEN, credentials, REDIS_PASS, X-Api-Key.
    Rule(
        "secret-named key",
        re.compile(
            r"(?i)(?<![\w-])[\"']?(?:[\w.-]*?(?:" + "|".join(DENYLIST) + r")[\w.-]*"
            r"|[\w.-]*?(?:token|credentials?|passphrase|(?<![a-z])pass|api-key|access[-_]?key)s?)[\"']?\s*[:=]\s*"
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
    # Also with no user name (redis://:pw@cache) or characters detect-secrets' basic-auth rule stops at.
    Rule("URL credentials", re.compile(r"://[^/\s:@]*:(?P<value>[^/\s@]+)@")),
    Rule("curl or wget user", re.compile(r"\b(?:curl|wget)\b.*?\s(?:-u|--user)[\s=][\"']?[^\s:\"']+:" + QUOTED_VALUE)),
    Rule(
        "MySQL -p",
        re.compile(r"\b(?:mysql|mysqldump|mysqladmin|mysqlimport|mysqlcheck|mariadb)\b.*?\s-p" + QUOTED_VALUE),
    ),
    Rule(
        "authorization header",
        re.compile(
            r"(?i)\b(?:proxy-)?authorization[\"']?\s*[:=]\s*[\"']?(?:(?:bearer|basic|token|bot|apikey)\s+)?"
            r"(?P<value>[^\s\"',]+)"
        ),
    ),
    Rule("bearer token", re.compile(r"(?i)\bbearer\s+(?P<value>[A-Za-z0-9._~+/-]+=*)"), _looks_like_token),
    Rule("basic credentials", re.compile(r"\bBasic\s+(?P<value>[A-Za-z0-9+/]{6,}={0,2})"), _is_basic_credentials),
)

PEM_INLINE = re.compile(r"-{4,5} ?BEGIN ([A-Z0-9 ]+?) ?-{4,5}.*?-{4,5} ?END \1 ?-{4,5}")
PEM_BEGIN = re.compile(r"-{4,5} ?BEGIN ([A-Z0-9 ]+?) ?-{4,5}")
PEM_END = re.compile(r"-{4,5} ?END [A-Z0-9 ]+? ?-{4,5}")
PUTTY_BEGIN = re.compile(r"PuTTY-User-Key-File-\d+:")
PUTTY_END = re.compile(r"Private-MAC:")
SECRET_LABEL = re.compile(r"PRIVATE|SECRET|ENCRYPTED")
ARMOR_HEADER = re.compile(r"^[A-Za-z][A-Za-z0-9-]*: ")
KEY_BODY = re.compile(r"=?[A-Za-z0-9+/]+={0,2}")
PREFIXED_KEY_BODY = re.compile(r".{0,60}?[\s\]|>]\s*([A-Za-z0-9+/]{40,}={0,2})")
# A body line met without its BEGIN line: 60-80 characters (PEM wraps at 64, OpenSSH at 70, some tools at
# 76), mixed case and digits, and as random as a key is. Decided line by line: a line already returned
# cannot be taken back, so waiting for a run of three would post the first two.
ORPHAN_BODY = re.compile(r"(?:.{0,60}?[\s\]|>])?\s*([A-Za-z0-9+/]{59,79}={0,2})\s*")


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


def _is_reference(value: str) -> bool:
    """True for a value that names a secret instead of holding it: ``$DB_PASS``, ``${{ secrets.X }}``, ``<token>``."""
    return heuristic.is_prefixed_with_dollar_sign(value) or heuristic.is_templated_secret(value)


def _keyword_spans(line: str) -> Iterator[tuple[int, int]]:
    """Values after detect-secrets' keywords (password, secret, api_key, db_pass ...)."""
    # The detector's own patterns and group numbers, with finditer: its analyze_string stops at the
    # first hit of each pattern, and a line can hold several.
    step = KEYWORD_WINDOW - KEYWORD_OVERLAP
    for offset in range(0, max(len(line) - KEYWORD_OVERLAP, 1), step):
        window = line[offset : offset + KEYWORD_WINDOW]
        if not KEYWORD_HINT.search(window):
            continue
        for table in KEYWORD_TABLES:
            for pattern, group in table.items():
                for match in pattern.finditer(window):
                    value = match.group(group).strip()
                    if value and not _is_reference(value) and not _is_env_path(window, match.start(group)):
                        start = match.start(group) + len(match.group(group)) - len(match.group(group).lstrip())
                        yield offset + start, offset + start + len(value)


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
    for detector in DETECTORS:
        found = set(detector.analyze_string(line))
        if not found:
            continue
        for pattern in detector.denylist:
            for match in pattern.finditer(line):
                groups = [i for i in range(1, pattern.groups + 1) if match.group(i)]
                if match.group(0) not in found and not found.intersection(match.group(i) for i in groups):
                    continue
                best = max(groups, key=lambda i: len(match.group(i)), default=0)
                if best and match.start(best) == match.start() and len(match.group(best)) < 8:
                    best = 0
                yield _grow(line, _trim(match.span(best), line))


def _addition_spans(line: str) -> Iterator[tuple[int, int]]:
    """opsbot's own rules (``ADDITIONS``)."""
    for rule in ADDITIONS:
        if rule.hint and not rule.hint.search(line):
            continue
        for match in rule.pattern.finditer(line):
            group = next(g for g in ("value", "dq", "sq", "bare") if g in match.re.groupindex and match.group(g))
            value = match.group(group)
            if value and not _is_reference(value) and rule.accept(value) and not _is_env_path(line, match.start(group)):
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


def scrub_line(line: str) -> str:
    """One line with every secret value detected in it replaced by ``***`` (no state, no private-key blocks)."""
    spans = [
        *_detector_spans(line),
        *_keyword_spans(line),
        *_entropy_spans(line),
        *_addition_spans(line),
    ]
    return _mask(line, [span for span in spans if line[span[0] : span[1]].strip("*")])


def _known_fragments(known: tuple[str, ...]) -> tuple[str, ...]:
    """The known secret values to replace, line by line (a known PEM key is several lines), longest first."""
    # A known key's BEGIN and END lines are not secret, and left alone they let Redactor remove it as one block.
    fragments = {piece.strip() for value in known for piece in value.splitlines()}
    return tuple(
        sorted(
            (f for f in fragments if len(f) >= 4 and not PEM_BEGIN.fullmatch(f) and not PEM_END.fullmatch(f)),
            key=len,
            reverse=True,
        )
    )


class _Block:
    """An armored block Redactor is inside: a private key (removed) or a certificate or public key (kept)."""

    def __init__(self, prefix: str, secret: bool = True, putty: bool = False, seen_body: bool = False) -> None:
        self.prefix = prefix
        self.secret = secret
        self.putty = putty
        self.seen_body = seen_body
        self.closed = False

    def holds(self, body: str) -> bool:
        """True when ``body`` still belongs to the block (closing it on its END line), False when it was cut off."""
        # Armor headers (Proc-Type:, Version:) and blank lines belong to it, and lines of base64 alone,
        # after the BEGIN line's prefix, or after a short log prefix (a timestamp) when long.
        text = body.strip()
        if self.putty and PUTTY_END.search(text) or not self.putty and PEM_END.search(text):
            self.closed = True
            return True
        if not text:
            return True
        if ARMOR_HEADER.match(text) and (self.putty or not self.seen_body):
            return True
        if self.prefix.strip() and body.startswith(self.prefix):
            text = body[len(self.prefix) :].strip()
        prefixed = PREFIXED_KEY_BODY.fullmatch(text)
        token = prefixed.group(1) if prefixed else text if KEY_BODY.fullmatch(text) else ""
        if token and not _is_hex(token) and (len(token) >= 40 or _could_end_a_key(token)):
            self.seen_body = True
            return True
        return False


def _is_hex(token: str) -> bool:
    """True for a commit SHA or a digest: printed after a key, still not part of it."""
    return all(c in HEX_DIGITS for c in token)


def _could_end_a_key(text: str) -> bool:
    """True for a short base64 line that may be a key's last one, not a word like "done" or "Deployed"."""
    # A key's short last line nearly always has a digit, +/= or mixed case; a word printed after a key
    # cut off at its end rarely does.
    if any(c.isdigit() or c in "+/=" for c in text):
        return True
    return not (text.islower() or text.isupper() or text.istitle())


def _is_random_key_body(token: str) -> bool:
    """True for a line-long token as random as key material: mixed case, digits, high entropy, no hex, no run."""
    return (
        any(c.isupper() for c in token)
        and any(c.islower() for c in token)
        and any(c.isdigit() for c in token)
        and not _is_hex(token)
        and not heuristic.is_sequential_string(token)
        and ENTROPY.calculate_shannon_entropy(token) > ENTROPY.entropy_limit
    )


class Redactor:
    """Scrubs runner output line by line as it arrives, remembering when it is inside a private key.

    ``line()`` returns the line with secrets masked, its line ending kept. A private key is removed whole:
    the line where it starts becomes ``*** private key removed ***`` (after the scrubbed text before the
    key, such as a log prefix), and every later line of it, up to and including its END line, becomes
    the empty string "" (no line ending): callers that keep or show lines should skip those.
    """

    def __init__(self, known: tuple[str, ...] = ()) -> None:
        self._known = _known_fragments(known)
        self._block: _Block | None = None

    def line(self, line: str) -> str:
        """The scrubbed line, or "" for a line inside a private key that was already announced as removed."""
        kept = self._next(line)
        return "" if kept is None else kept

    def _next(self, line: str) -> str | None:
        """The scrubbed line, or None when the line belongs to a removed private key."""
        body = line.rstrip("\r\n")
        ending = line[len(body) :]
        block = self._block
        if block is not None:
            if block.holds(body):
                if block.closed:
                    self._block = None
                return None if block.secret else self._scrub(body) + ending
            self._block = None  # the block was cut off: this is ordinary output again
        for value in self._known:
            body = body.replace(value, MASK)
        body = PEM_INLINE.sub(lambda m: MASK if SECRET_LABEL.search(m.group(1)) else m.group(0), body)
        start = self._key_start(body)
        if start is not None:
            self._block = _Block(body[:start], putty=bool(PUTTY_BEGIN.search(body)))
            return scrub_line(body[:start]) + KEY_REMOVED + ending
        public = PEM_BEGIN.search(body)
        if public:  # a certificate's body is as random as a key's, and must not pass for a key cut at its start
            self._block = _Block(body[: public.start()], secret=False)
            return scrub_line(body) + ending
        orphan = ORPHAN_BODY.fullmatch(body)
        if orphan and _is_random_key_body(orphan.group(1)):
            self._block = _Block("", seen_body=True)
            return KEY_REMOVED + ending
        return scrub_line(body) + ending

    def _key_start(self, body: str) -> int | None:
        """Where a private key starts in the line, if one does."""
        for match in PEM_BEGIN.finditer(body):
            if SECRET_LABEL.search(match.group(1)):
                return match.start()
        putty = PUTTY_BEGIN.search(body)
        if putty:
            return putty.start()
        for value in PRIVATE_KEY.analyze_string(body):  # detect-secrets' list, for spellings the regexes miss
            return max(body.find(value), 0)
        return None

    def _scrub(self, text: str) -> str:
        """Known values, then detected secrets, masked in one line."""
        for value in self._known:
            text = text.replace(value, MASK)
        return scrub_line(text)


def scrub(text: str, known: tuple[str, ...] = ()) -> str:
    """Replace the known secret values and every detected secret in ``text`` by ***; private keys leave one line.

    The text goes through a ``Redactor`` line by line, so it is scrubbed exactly as streamed output is;
    the lines of a removed private key are dropped rather than kept empty.
    """
    redactor = Redactor(known)
    kept = (redactor._next(line) for line in text.split("\n"))
    return "\n".join(line for line in kept if line is not None)
