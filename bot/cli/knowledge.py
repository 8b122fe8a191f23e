"""Knowledge commands: check, index and ask."""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import sys
from pathlib import Path
from typing import Any

import click

from bot.cli.base import _open, handle_errors, knowledge_folder, load_settings, main, require_index
from bot.errors import OpsbotError
from bot.text import terminal_text

log = logging.getLogger(__name__)


INDEX_NICENESS = 10  # a batch job: the bot serving on the same cores acknowledges first


@main.command()
@click.argument("directory", required=False, type=click.Path(), callback=knowledge_folder)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option(
    "--nice",
    "niceness",
    type=click.IntRange(0, 19),
    default=INDEX_NICENESS,
    show_default=True,
    help="Run at lower CPU priority (Unix niceness added), so an `opsbot serve` on the same machine "
    "stays responsive while this embeds; 0 keeps the priority as it is.",
)
@click.option("--strict", is_flag=True, help="Exit with status 1 when any file has a problem (for CI).")
@click.pass_context
@handle_errors
def index(ctx: click.Context, directory: Path | None, as_json: bool, niceness: int, strict: bool) -> None:
    """Index a knowledge directory (default: $OPSBOT_KNOWLEDGE or ./knowledge).

    Only new or changed text is embedded; removed files leave the index. The job runs at lower
    CPU priority (--nice 10), so a bot serving on the same machine answers Slack first. A file or
    entry with a problem is left out and the rest indexed; --strict then exits with status 1.
    Incidents resolved in Slack that the bot did not index (it stopped first) are indexed too.

    \b
    Example:
      opsbot index knowledge/
      opsbot index --nice 0 knowledge/     # nothing to make way for: full priority
      opsbot index --strict knowledge/     # in CI: fail on any problem
    """
    from bot.answers.indexer import index_incidents, index_knowledge
    from bot.knowledge import root_problem
    from bot.ops.incidents import IncidentService
    from bot.store.base import DatabaseUnavailable, is_write_failure

    settings = load_settings(ctx)
    root = directory or settings.knowledge_dir
    if (problem := root_problem(root)) is not None:  # before anything else runs or is logged
        raise OpsbotError(problem)
    lower_priority(niceness)
    store, encoder = _open(settings)
    bar_state: dict[str, Any] = {}

    def progress(done: int, total: int) -> None:
        if as_json:
            return
        if "bar" not in bar_state:
            bar_state["bar"] = click.progressbar(length=total, label="Embedding sections", file=sys.stderr)
            bar_state["bar"].__enter__()
        bar_state["bar"].update(done - bar_state.get("done", 0))
        bar_state["done"] = done

    try:
        report = index_knowledge(store, encoder, root, progress)
        # Resolved in Slack, but the bot stopped (or failed) before indexing them: searchable from now on.
        late = index_incidents(store, encoder, IncidentService.from_store(store).unlearned())
    except sqlite3.OperationalError as exc:
        if not is_write_failure(exc):
            raise
        # Each write is a transaction of its own: the one that failed was rolled back, the ones before it stand.
        failure = DatabaseUnavailable(str(settings.db_path), str(exc), unwritable=True)
        raise OpsbotError(
            f"{failure} What was indexed before this is kept; run `opsbot index` again once the database can be "
            "written, and it carries on from there."
        ) from None
    finally:
        if "bar" in bar_state:
            bar_state["bar"].__exit__(None, None, None)
        store.close()
    if as_json:
        click.echo(json.dumps(report.as_dict() | {"resolved_incidents_indexed": late}, indent=2))
        if strict and report.problems:
            sys.exit(1)
        return
    click.echo(
        f"Indexed {root}: {report.runbooks} runbooks, {report.incidents} incidents, {report.experts} people "
        f"({report.added} added, {report.updated} updated, {report.unchanged} unchanged, {report.removed} removed; "
        f"{report.embedded} sections embedded, {report.reused} reused) in {report.seconds:.1f}s with {report.model_id}."
    )
    if late:
        ids = ", ".join(late)
        click.echo(f"Indexed {len(late)} incident(s) resolved in Slack that the bot had not indexed: {ids}.")
    if report.experts_fit:
        click.echo(f"Expert suggestions: {report.experts_fit}.")
    for problem in report.problems:
        click.echo(f"Warning: {problem}", err=True)
    if report.problems:
        click.echo(
            f"{problems_line(report.problems)} (above): fix them and index again; `opsbot check` lists them without "
            "indexing.",
            err=True,
        )
        if strict:
            sys.exit(1)


def problems_line(problems: list) -> str:
    """ "3 problems in 2 files" for a list of knowledge problems."""
    files = len({p.path for p in problems})
    return f"{len(problems)} problem{'s' if len(problems) != 1 else ''} in {files} file{'s' if files != 1 else ''}"


@main.command()
@click.argument("directory", required=False, type=click.Path(), callback=knowledge_folder)
@click.option("--json", "as_json", is_flag=True, help="Print the problems as JSON.")
@click.pass_context
@handle_errors
def check(ctx: click.Context, directory: Path | None, as_json: bool) -> None:
    """Check a knowledge directory without indexing it: every problem of every file at once.

    Exits with status 1 when there is any problem (a misspelt key in services.yaml, an approver
    nobody on the roster matches, a runbook without text ...), so CI can fail on a broken file.
    Loads no model and opens no database.

    \b
    Example:
      opsbot check knowledge/
      opsbot check --json knowledge/ | jq '.problems[]'
    """
    from bot.knowledge import load_knowledge, root_problem

    root = directory or load_settings(ctx).knowledge_dir
    if (problem := root_problem(root)) is not None:
        raise OpsbotError(problem)
    kb = load_knowledge(root)
    runbooks = sum(1 for d in kb.documents if d.kind == "runbook")
    counts = (
        f"{runbooks} runbooks, {len(kb.incidents)} incidents, {len(kb.experts)} people, {len(kb.services)} services"
    )
    if as_json:
        problems = [{"path": p.path, "line": p.line, "message": p.message} for p in kb.problems]
        report = {"directory": str(root), "ok": not problems, "problems": problems, "notes": kb.notes}
        click.echo(json.dumps(report, indent=2))
    else:
        for problem in kb.problems:
            click.echo(str(problem))
        if kb.problems:
            click.echo(f"{problems_line(kb.problems)} under {root} (fix them and run `opsbot check` again).", err=True)
        else:
            click.echo(f"No problems in {root}: {counts}.")
        for note in kb.notes:  # not wrong, so the status stays what the problems make it
            click.echo(f"Note: {note}")
    if kb.problems:
        sys.exit(1)


def lower_priority(niceness: int) -> None:
    """Add ``niceness`` to this process's Unix niceness (no-op at 0, or where there is no os.nice)."""
    if niceness and hasattr(os, "nice"):
        log.info("running at lower CPU priority niceness=%d", os.nice(niceness))


@main.command()
@click.argument("question", nargs=-1, required=True)
@click.option("-k", "top_k", type=click.IntRange(1, 50), default=None, help="How many documents to show, at most.")
@click.option("--mode", type=click.Choice(["hybrid", "dense", "bm25"]), default="hybrid", show_default=True)
@click.option(
    "--all",
    "show_all",
    is_flag=True,
    help="Show the k best documents with their scores, also those Slack leaves out as not relevant.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the answer as JSON.")
@click.pass_context
@handle_errors
def ask(
    ctx: click.Context, question: tuple[str, ...], top_k: int | None, mode: str, show_all: bool, as_json: bool
) -> None:
    """Answer a question, or a pasted alert or log line, from the index.

    Only what is relevant is shown, by the same rule as in Slack: a question nothing in the knowledge
    matches is declined rather than answered with the closest guesses. --all shows the k best documents
    anyway, with their scores; --mode dense or bm25 ranks by that signal alone and shows everything.

    \b
    Example:
      opsbot ask "FATAL: sorry, too many clients already"
      opsbot ask -k 3 --json "checkout latency high"
      opsbot ask --all "why is the build slow"
    """
    from bot.answers.replies import relevant_hits
    from bot.answers.search import SearchIndex
    from bot.hints import examples

    if not " ".join(question).strip():  # before the model loads: nothing to ask it
        raise OpsbotError("the question is empty; type what you are looking for, or paste the alert.")
    settings = load_settings(ctx, one_shot=True)
    k = top_k or settings.top_k
    filtered = mode == "hybrid" and not show_all  # Slack answers with hybrid search, filtered
    store, encoder = _open(settings, create=False)
    try:
        require_index(store, encoder)
        if mode != "bm25":
            encoder.load()  # so the reported encode time is the query's, not the model load's
        # As Slack does: twice as many candidates, then only the relevant ones.
        wanted = max(k, settings.top_k) * 2 if filtered else k
        answer = SearchIndex(store, encoder).search(" ".join(question), k=wanted, mode=mode)
        service = examples(store).service
    finally:
        store.close()
    # Slack's answer: the relevant runbooks, then the relevant past incidents, in that order (None: no relevance
    # outside hybrid search). --all lists the k best in the ranker's order, marking what Slack leaves out.
    shown = [h for part in relevant_hits(answer, settings) for h in part] if mode == "hybrid" else []
    relevant = {id(h) for h in shown} if mode == "hybrid" else None
    hits = shown[:k] if filtered else list(answer.hits)
    if as_json:
        marked = [(h, relevant is None or id(h) in relevant) for h in hits]
        click.echo(json.dumps(_answer_dict(answer, marked, declined=filtered and not hits), indent=2))
        return
    if not answer.hits:
        click.echo("Nothing in the knowledge base matches. Try other words, or paste the alert text.")
        return
    if not hits:
        example = f" (for example {service})" if service else ""
        click.echo(
            "I found nothing relevant in the runbooks or past incidents, so I won't guess (as in Slack).\n"
            f"Try: naming the service{example}, pasting the exact alert or error line, or using the words your "
            "dashboards use. `opsbot ask --all` lists the closest documents anyway, with their scores."
        )
        return
    for n, hit in enumerate(hits, start=1):
        label = f"[{hit.incident_id}] " if hit.incident_id else ""
        click.secho(terminal_text(f"{n}. {label}{hit.title}"), bold=True)
        if show_all or mode != "hybrid":
            below = "" if relevant is None or id(hit) in relevant else "; not relevant enough to show in Slack"
            click.echo(f"   {hit.citation}  (score {hit.score:.3f}, similarity {hit.similarity:.2f}{below})")
        else:
            click.echo(f"   {hit.citation}")
        if hit.url:
            click.echo(f"   {hit.section_url}")
        if hit.alert and hit.kind == "runbook":
            click.echo(f"   runbook for the alert {hit.alert}")
        elif hit.quoted:
            click.echo("   this section contains every word of the question")
        click.echo(terminal_text(f"   {hit.snippet}\n"))  # an incident resolved in Slack holds what people typed
    click.echo(f"({answer.mode} search; encode {answer.encode_ms:.0f} ms, search {answer.search_ms:.0f} ms)")


def _answer_dict(answer: Any, hits: list[tuple[Any, bool]], declined: bool) -> dict:
    """The answer as JSON: the hits shown, each saying whether Slack would show it; declined when none is."""
    from dataclasses import asdict

    return {
        "query": answer.query,
        "normalized_query": answer.normalized_query,
        "mode": answer.mode,
        "encode_ms": round(answer.encode_ms, 2),
        "search_ms": round(answer.search_ms, 2),
        "declined": declined,
        "hits": [
            asdict(h) | {"citation": h.citation, "section_url": h.section_url, "relevant": relevant}
            for h, relevant in hits
        ],
    }
