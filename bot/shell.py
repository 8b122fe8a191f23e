"""The local terminal chat: ask opsbot questions without a Slack workspace."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from bot.errors import OpsbotError
from bot.models import Answer
from bot.search import SearchIndex

HELP = """Type a question, or paste an alert or a log line, and press Enter.
  /ask QUESTION   the same, as the Slack command
  /help           this text
  /quit           leave (or Ctrl-D)"""


def render_answer(answer: Answer) -> str:
    """An answer as plain text: numbered documents, each with its citation and snippet."""
    if not answer.hits:
        return "Nothing in the knowledge base matches. Try other words, or paste the alert text."
    lines = []
    for n, hit in enumerate(answer.hits, start=1):
        label = f"[{hit.incident_id}] " if hit.incident_id else ""
        lines.append(f"{n}. {label}{hit.title}\n   {hit.citation}\n   {hit.snippet}")
    lines.append(f"({answer.mode} search in {answer.encode_ms + answer.search_ms:.0f} ms)")
    return "\n\n".join(lines)


def run_shell(index: SearchIndex, lines: Iterable[str], write: Callable[[str], None], k: int = 5) -> None:
    """Answer each line until /quit or the end of input."""
    write(HELP)
    for raw in lines:
        line = raw.strip()
        if not line:
            continue
        if line in ("/quit", "/exit"):
            break
        if line == "/help":
            write(HELP)
            continue
        if line.startswith("/ask"):
            line = line[4:].strip()
            if not line:
                write("Usage: /ask QUESTION, for example /ask pgbouncer too many clients")
                continue
        elif line.startswith("/"):
            write(f"Unknown command {line.split()[0]}. Type /help for what works here.")
            continue
        try:
            write(render_answer(index.search(line, k=k)))
        except OpsbotError as exc:
            write(f"Sorry: {exc}")
