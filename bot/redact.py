"""Finding secrets in deploy output before anything of it is kept, tailed or shown.

Each line goes through ``bot.redact_line`` (detect-secrets' ruleset and opsbot's additions); ``Redactor``
adds what needs more than one line: whole private key blocks across lines, even when their BEGIN line was
never seen, the lines of a YAML block scalar under a secret's name (``password: |``), and the secret values it is
given (a runner's ``secret_env``).

Only the secret value is replaced, by ``***``, so the line keeps its key name and stays readable.
"""

from __future__ import annotations

import bisect
import re

from detect_secrets.filters import heuristic
from detect_secrets.plugins.private_key import PrivateKeyDetector

from bot.redact_line import BLOCK_SCALAR, ENTROPY, MASK, names_a_secret, scrub_line

KEY_REMOVED = "*** private key removed ***"
PRIVATE_KEY = PrivateKeyDetector()
HEX_DIGITS = frozenset("0123456789abcdefABCDEF")

PEM_BEGIN = re.compile(r"-{4,5} ?BEGIN ([A-Z0-9 ]+?) ?-{4,5}")
PEM_END = re.compile(r"-{4,5} ?END ([A-Z0-9 ]+?) ?-{4,5}")
PUTTY_BEGIN = re.compile(r"PuTTY-User-Key-File-\d+:")
PUTTY_END = re.compile(r"Private-MAC:")
SECRET_LABEL = re.compile(r"PRIVATE|SECRET|ENCRYPTED")
ARMOR_HEADER = re.compile(r"^[A-Za-z][A-Za-z0-9-]*: ")
KEY_BODY = re.compile(r"=?[A-Za-z0-9+/]+={0,2}")
PREFIXED_KEY_BODY = re.compile(r".{0,60}?[\s\]|>]\s*([A-Za-z0-9+/]{40,}={0,2})")
PREFIXED_LAST_LINE = re.compile(r".{0,60}?[\s\]|>]\s*([A-Za-z0-9+/]{4,39}={0,2})")
# A body line met without its BEGIN line: 60-80 characters (PEM wraps at 64, OpenSSH at 70, some tools at
# 76), mixed case and digits, and as random as a key is. Decided line by line: a line already returned
# cannot be taken back, so waiting for a run of three would post the first two.
ORPHAN_BODY = re.compile(r"(?:.{0,60}?[\s\]|>])?\s*([A-Za-z0-9+/]{59,79}={0,2})\s*")
# What may stand before a token that is an argument or a header value, not a line of a key: a command's flag
# (kubectl apply -k PATH), or an HTTP header's name at the start of the line (curl -i, "< " in curl -v) that
# does not name a credential (x-amz-id-2, not x-amz-security-token).
AFTER_FLAG = re.compile(r"(?:^|\s)--?[A-Za-z][\w-]*\s+\Z")
HEADER_NAME = re.compile(r"(?:[<>] )?[A-Za-z][A-Za-z0-9-]*:\s+")
CREDENTIAL_HEADER = re.compile(r"(?i)key|token|secret|auth|pass|sig|cookie|credential|session")
# A path's words (deploy, Overlays, Checkout, Api, 2026) are 4 or more characters long on average; a key's, read
# the same way, under 2, as its letters change case at random: measured on random 64 to 76 character base64,
# 2 in 100,000 lines hold two "/" and average 3 or more.
PATH_WORD = re.compile(r"[A-Z]?[a-z]+|[A-Z]+(?![a-z])|\d+")
PATH_WORD_LENGTH = 3
# The base64 that ends a line, matched on the line reversed: a pattern anchored at the end and tried from each
# position would cost time quadratic in a long run of base64.
LAST_TOKEN_REVERSED = re.compile(r"={0,2}[A-Za-z0-9+/]+")
# How far a key's body may start from where its BEGIN did, when every line has a prefix of its own: a timestamp
# in RFC 3339 with nanoseconds drops its trailing zeros (up to 9 characters with the dot), a pid gains a digit.
COLUMN_SLACK = 10
# A YAML key whose value is a block scalar (`password: |`, `- tls.key: >-`); the name's column is where the block's
# more indented lines end.
YAML_BLOCK_KEY = re.compile(
    r"(?P<indent>\s*(?:-\s+)?)[\"']?(?P<name>[\w.-]+)[\"']?\s*:\s*(?:" + BLOCK_SCALAR.pattern + r")\s*(?:#.*)?"
)


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

    def __init__(
        self, prefix: str, column: int, secret: bool = True, putty: bool = False, seen_body: bool = False
    ) -> None:
        self.prefix = prefix
        self.column: int | None = column  # where the block starts in its first line, whatever comes before it
        self.secret = secret
        self.putty = putty
        self.seen_body = seen_body
        self.closed = False
        self.body_at: int | None = None  # where the base64 starts in a prefixed body line (after a timestamp)

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
            self.body_at = prefixed.start(1) if prefixed else None
            return True
        # A key's short last line after a prefix that changes each line (a timestamp): where the body lines
        # before it started, and shaped like a last line ("Deployed v2" has a longer prefix).
        last = PREFIXED_LAST_LINE.fullmatch(text) if self.body_at is not None else None
        if last and last.start(1) == self.body_at and not _is_hex(last.group(1)) and _could_end_a_key(last.group(1)):
            self.body_at = self.column = None  # a key has one last line: the END line comes next
            return True
        return self._holds_at_column(body)

    def _holds_at_column(self, body: str) -> bool:
        """True for a body line whose base64 starts where the block did, after a prefix of any length and text.

        journalctl's host and process, or kubectl's pod and timestamp, make a prefix that differs on every
        line and is longer than the short prefixes ``PREFIXED_KEY_BODY`` allows; its width barely changes.
        """
        if self.column is None:
            return False
        at, token = _last_token(body)
        if not token or abs(at - self.column) > COLUMN_SLACK or _is_hex(token):
            return False
        if at and not (body[at - 1].isspace() or body[at - 1] in "]|>"):
            return False  # the end of a word (a path, a name=value), not a token of its own
        if len(token) >= 40:
            self.seen_body = True
            return True
        if len(token.rstrip("=")) >= 4 and _could_end_a_key(token):
            self.body_at = self.column = None  # the key's last line: the END line comes next
            return True
        return False


def _last_token(body: str) -> tuple[int, str]:
    """The run of base64 that ends the line, and where it starts (its length when there is none)."""
    text = body.rstrip()
    found = LAST_TOKEN_REVERSED.match(text[::-1])
    at = len(text) - found.end() if found else len(text)
    return at, text[at:]


def _mask_inline_keys(text: str) -> str:
    """``text`` with each private key that begins and ends in it (a key in a JSON string) replaced by ***.

    Each BEGIN is paired with the first END of the same label after it, found among the END lines listed once:
    a pattern searching from each BEGIN to the end of the text cost time quadratic in its length (3.7 s for a
    40,000-character Slack message of BEGIN lines). A certificate is kept, and nothing inside it is paired.
    """
    ends: dict[str, list[re.Match[str]]] = {}
    for end in PEM_END.finditer(text):
        ends.setdefault(end.group(1), []).append(end)
    if not ends:
        return text
    pieces: list[str] = []
    position = 0
    for begin in PEM_BEGIN.finditer(text):
        same_label = ends.get(begin.group(1), [])
        after = bisect.bisect_left(same_label, begin.end(), key=lambda end: end.start())
        if begin.start() < position or after == len(same_label):
            continue
        end = same_label[after]
        if SECRET_LABEL.search(begin.group(1)):
            pieces += [text[position : begin.start()], MASK]
        else:
            pieces.append(text[position : end.end()])
        position = end.end()
    return "".join([*pieces, text[position:]])


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


def _is_argument(before: str, token: str) -> bool:
    """True for a token that is a path, a command flag's argument or an HTTP header's value, not key material."""
    if AFTER_FLAG.search(before):
        return True
    if HEADER_NAME.fullmatch(before) and not CREDENTIAL_HEADER.search(before):
        return True
    words = PATH_WORD.findall(token)
    return token.count("/") >= 2 and sum(map(len, words)) >= PATH_WORD_LENGTH * len(words)


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
        self._yaml_secret_column: int | None = None  # inside a secret's YAML block scalar: its key's column

    def line(self, line: str) -> str:
        """The scrubbed line, or "" for a line inside a private key that was already announced as removed."""
        kept = self._next(line)
        return "" if kept is None else kept

    def _next(self, line: str) -> str | None:
        """The scrubbed line, or None when the line belongs to a removed private key."""
        body = line.rstrip("\r\n")
        ending = line[len(body) :]
        if self._yaml_secret_column is not None:
            column = len(body) - len(body.lstrip())
            if not body.strip():
                return body + ending
            if column > self._yaml_secret_column:
                return body[:column] + MASK + ending  # a line of the value, a key's BEGIN and END lines too
            self._yaml_secret_column = None
        block = self._block
        if block is not None:
            if block.holds(body):
                if block.closed:
                    self._block = None
                return None if block.secret else self._scrub(body) + ending
            self._block = None  # the block was cut off: this is ordinary output again
        for value in self._known:
            body = body.replace(value, MASK)
        body = "\n".join(_mask_inline_keys(part) for part in body.split("\n"))
        start = self._key_start(body)
        if start is not None:
            self._block = _Block(body[:start], start, putty=bool(PUTTY_BEGIN.search(body)))
            return scrub_line(body[:start]) + KEY_REMOVED + ending
        public = PEM_BEGIN.search(body)
        if public:  # a certificate's body is as random as a key's, and must not pass for a key cut at its start
            self._block = _Block(body[: public.start()], public.start(), secret=False)
            return scrub_line(body) + ending
        orphan = ORPHAN_BODY.fullmatch(body)
        if (
            orphan
            and _is_random_key_body(orphan.group(1))
            and not _is_argument(body[: orphan.start(1)], orphan.group(1))
        ):
            self._block = _Block("", orphan.start(1), seen_body=True)
            self._block.body_at = orphan.start(1) - (len(body) - len(body.lstrip()))
            return KEY_REMOVED + ending
        yaml_key = YAML_BLOCK_KEY.fullmatch(body)
        if yaml_key and names_a_secret(yaml_key.group("name")):
            self._yaml_secret_column = len(yaml_key.group("indent"))
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
