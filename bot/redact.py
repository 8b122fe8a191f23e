"""Finding secrets in text: everything posted or stored from a deploy goes through ``scrub``."""

from __future__ import annotations

import re

PATTERNS = [
    re.compile(r"\b(xox[abposr]|xapp)-[A-Za-z0-9-]+"),  # Slack
    re.compile(r"\bgh[pousr]_[A-Za-z0-9]{20,}"),  # GitHub
    re.compile(r"\bglpat-[A-Za-z0-9_-]{20,}"),  # GitLab
    re.compile(r"\bAKIA[0-9A-Z]{16}\b"),  # AWS access key id
    re.compile(r"\beyJ[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,}"),  # JWT
    re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?-----END [A-Z ]*PRIVATE KEY-----", re.S),
    re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]{12,}"),
    re.compile(r"(?i)\b([\w-]*(?:password|passwd|secret|token|api[_-]?key)[\w-]*)(\s*[=:]\s*)(\"[^\"]*\"|'[^']*'|\S+)"),
    re.compile(r"://([^/:@\s]+):([^/@\s]+)@"),  # credentials in URLs
]


def scrub(text: str, known: tuple[str, ...] = ()) -> str:
    """Replace anything that looks like a token, key or password (and the known secret values) by ***."""
    for value in known:
        if value and len(value) >= 4:
            text = text.replace(value, "***")
    for pattern in PATTERNS:
        if pattern.groups >= 3:
            text = pattern.sub(lambda m: f"{m.group(1)}{m.group(2)}***", text)
        elif pattern.pattern.startswith("://"):
            text = pattern.sub(r"://\1:***@", text)
        else:
            text = pattern.sub("***", text)
    return text
