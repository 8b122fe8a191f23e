"""The ``opsbot`` command line: a thin layer over the domain modules.

This is the only module that turns errors into exit codes.
"""

from __future__ import annotations

import functools
import json
import logging
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import click

from bot.config import Settings
from bot.errors import OpsbotError
from bot.logs import configure_logging

log = logging.getLogger(__name__)


def handle_errors(func: Callable[..., Any]) -> Callable[..., Any]:
    """Print an OpsbotError as a clear message and exit 1; never a traceback."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except OpsbotError as exc:
            click.echo(f"Error: {exc}", err=True)
            sys.exit(1)

    return wrapper


def load_settings(ctx: click.Context, **overrides: Any) -> Settings:
    """Settings are read when a command runs, so `--help` works even while they are broken."""
    ctx.ensure_object(dict)
    if "settings" not in ctx.obj:
        settings = Settings.from_env()
        configure_logging(settings.log_level)
        ctx.obj["settings"] = settings
    return ctx.obj["settings"].with_overrides(**overrides)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="opsbot")
@click.pass_context
@handle_errors
def main(ctx: click.Context) -> None:
    """opsbot: answers from your runbooks and incidents, in Slack and here.

    \b
    Example:
      opsbot index knowledge/
      opsbot ask "pgbouncer says too many clients"
    """
    ctx.ensure_object(dict)


def _open(settings: Settings):  # noqa: ANN202
    from bot.encoder import SentenceTransformerEncoder
    from bot.store import Store

    return Store(settings.db_path), SentenceTransformerEncoder(settings.model)


@main.command()
@click.argument("directory", required=False, type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.pass_context
@handle_errors
def index(ctx: click.Context, directory: Path | None, as_json: bool) -> None:
    """Index a knowledge directory (default: $OPSBOT_KNOWLEDGE or ./knowledge).

    Only new or changed text is embedded; removed files leave the index.

    \b
    Example:
      opsbot index knowledge/
    """
    from bot.indexer import index_knowledge

    settings = load_settings(ctx)
    root = directory or settings.knowledge_dir
    if not root.is_dir():
        raise OpsbotError(f"knowledge directory {str(root)!r} does not exist; pass a folder with runbooks/ in it.")
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
    finally:
        if "bar" in bar_state:
            bar_state["bar"].__exit__(None, None, None)
        store.close()
    if as_json:
        click.echo(json.dumps(report.as_dict(), indent=2))
        return
    click.echo(
        f"Indexed {root}: {report.runbooks} runbooks, {report.incidents} incidents, {report.experts} people "
        f"({report.added} added, {report.updated} updated, {report.unchanged} unchanged, {report.removed} removed; "
        f"{report.embedded} sections embedded, {report.reused} reused) in {report.seconds:.1f}s with {report.model_id}."
    )
    for problem in report.problems:
        click.echo(f"Warning: {problem}", err=True)


@main.command()
@click.argument("question", nargs=-1, required=True)
@click.option("-k", "top_k", type=click.IntRange(1, 50), default=None, help="How many documents to show.")
@click.option("--mode", type=click.Choice(["hybrid", "dense", "bm25"]), default="hybrid", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the answer as JSON.")
@click.pass_context
@handle_errors
def ask(ctx: click.Context, question: tuple[str, ...], top_k: int | None, mode: str, as_json: bool) -> None:
    """Answer a question, or a pasted alert or log line, from the index.

    \b
    Example:
      opsbot ask "FATAL: sorry, too many clients already"
      opsbot ask -k 3 --json "checkout latency high"
    """
    from bot.search import SearchIndex

    settings = load_settings(ctx)
    store, encoder = _open(settings)
    try:
        if not store.counts()["chunks"]:
            raise OpsbotError("the index is empty; run `opsbot index` first.")
        if mode != "bm25":
            encoder.load()  # so the reported encode time is the query's, not the model load's
        answer = SearchIndex(store, encoder).search(" ".join(question), k=top_k or settings.top_k, mode=mode)
    finally:
        store.close()
    if as_json:
        click.echo(json.dumps(_answer_dict(answer), indent=2))
        return
    if not answer.hits:
        click.echo("Nothing in the knowledge base matches. Try other words, or paste the alert text.")
        return
    for n, hit in enumerate(answer.hits, start=1):
        label = f"[{hit.incident_id}] " if hit.incident_id else ""
        click.secho(f"{n}. {label}{hit.title}", bold=True)
        click.echo(f"   {hit.citation}  (score {hit.score:.3f})")
        click.echo(f"   {hit.snippet}\n")
    click.echo(f"({answer.mode} search; encode {answer.encode_ms:.0f} ms, search {answer.search_ms:.0f} ms)")


def _answer_dict(answer: Any) -> dict:
    from dataclasses import asdict

    return {
        "query": answer.query,
        "normalized_query": answer.normalized_query,
        "mode": answer.mode,
        "encode_ms": round(answer.encode_ms, 2),
        "search_ms": round(answer.search_ms, 2),
        "hits": [asdict(h) | {"citation": h.citation} for h in answer.hits],
    }


@main.command(name="eval")
@click.option("--knowledge", "knowledge", type=click.Path(path_type=Path), required=True, help="Knowledge directory.")
@click.option("--queries", type=click.Path(path_type=Path), default=None, help="JSON-lines query file.")
@click.option("--task", type=click.Choice(["search", "experts"]), default="search", show_default=True)
@click.option("--mode", type=click.Choice(["hybrid", "dense", "bm25", "all"]), default="all", show_default=True)
@click.option(
    "--relevant",
    type=click.Choice(["all", "main"]),
    default="all",
    show_default=True,
    help="Experts, time split: every responder counts, or only the main resolver.",
)
@click.option("--with-services", is_flag=True, help="Experts, time split: give each incident's services too.")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
@click.option("--misses", is_flag=True, help="Also list the queries whose first result was wrong.")
@click.pass_context
@handle_errors
def evaluate(
    ctx: click.Context,
    knowledge: Path,
    queries: Path | None,
    task: str,
    mode: str,
    relevant: str,
    with_services: bool,
    as_json: bool,
    misses: bool,
) -> None:
    """Measure retrieval (Recall@1/3/5, MRR@10 per mode and kind) or expert suggestion (top-1/3, MRR).

    Indexes the directory into a temporary database, so your index is untouched. The expert task
    without --queries trains on the older 70% of the incidents and tests on the newer 30%, against
    two baselines: service ownership only, and the most frequent responders.

    \b
    Example:
      opsbot eval --knowledge ../shared/eval/prometheus-runbooks/knowledge \\
                  --queries ../shared/eval/prometheus-runbooks/queries.jsonl
      opsbot eval --task experts --knowledge knowledge
    """
    from bot.encoder import SentenceTransformerEncoder
    from bot.evaluation import evaluate_experts, run_eval

    settings = load_settings(ctx)
    if not knowledge.is_dir():
        raise OpsbotError(f"knowledge directory {str(knowledge)!r} does not exist.")
    encoder = SentenceTransformerEncoder(settings.model)
    if task == "experts":
        result = evaluate_experts(knowledge, encoder, queries, relevant=relevant, with_services=with_services)
        click.echo(json.dumps(result, indent=2) if as_json else format_experts_table(result))
        return
    if queries is None:
        raise OpsbotError("--queries is required for the search task: a JSON-lines file of questions.")
    modes = ["hybrid", "dense", "bm25"] if mode == "all" else [mode]
    results, report = run_eval(knowledge, queries, modes, encoder)
    if as_json:
        click.echo(json.dumps({"modes": results, "index": report.as_dict()}, indent=2))
        return
    click.echo(format_eval_table(results))
    if misses:
        for m in modes:
            for miss in results[m]["misses"]:
                click.echo(f"[{m}] {miss['id']}: got {miss['got'][:1]} want {miss['want']}")


def format_eval_table(results: dict) -> str:
    """A plain-text table: one row per mode and query group."""
    header = f"{'mode':<8} {'queries':<14} {'n':>4} {'R@1':>6} {'R@3':>6} {'R@5':>6} {'MRR@10':>7}"
    lines = [header, "-" * len(header)]
    for mode, groups in results.items():
        for group, m in groups.items():
            if group == "misses":
                continue
            lines.append(
                f"{mode:<8} {group:<14} {m['queries']:>4} {m['recall@1']:>6.3f} {m['recall@3']:>6.3f} "
                f"{m['recall@5']:>6.3f} {m['mrr@10']:>7.3f}"
            )
    return "\n".join(lines)


@main.command()
@click.argument("what", type=click.Choice(["index", "search", "all"]), default="all")
@click.option("--sizes", default="1000,10000,100000", show_default=True, help="Chunk counts for the search benchmark.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.pass_context
@handle_errors
def bench(ctx: click.Context, what: str, sizes: str, as_json: bool) -> None:
    """Measure indexing speed and search latency on a seeded synthetic knowledge base.

    \b
    Example:
      opsbot bench search --sizes 1000,10000
      opsbot bench --json > bench.json
    """
    from bot import bench as benchmarks
    from bot.encoder import SentenceTransformerEncoder

    try:
        size_list = [int(s) for s in sizes.split(",") if s.strip()]
    except ValueError:
        raise OpsbotError(f"--sizes {sizes!r} must be whole numbers separated by commas, like 1000,10000.") from None
    if not size_list or min(size_list) < 10:
        raise OpsbotError("--sizes needs at least one size of 10 chunks or more.")
    settings = load_settings(ctx)
    encoder = SentenceTransformerEncoder(settings.model)
    started = time.perf_counter()
    encoder.load()
    result: dict[str, Any] = {"model": encoder.model_id, "model_load_s": round(encoder.load_seconds, 2)}
    if what in ("index", "all"):
        result["index"] = benchmarks.bench_index(encoder)
    if what in ("search", "all"):
        result["search"] = benchmarks.bench_search(encoder, size_list)
    result["peak_rss_mb"] = benchmarks.peak_rss_mb()
    result["seconds"] = round(time.perf_counter() - started, 1)
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    click.echo(f"model: {result['model']} (loaded in {result['model_load_s']} s)")
    if "index" in result:
        i = result["index"]
        click.echo(
            f"index: {i['index_chunks_per_s']} chunks/s vs raw encode {i['raw_encode_chunks_per_s']} chunks/s "
            f"(ratio {i['ratio']:.0%}) on {i['chunks']} chunks; unchanged re-index of {i['reindex_unchanged_docs']} "
            f"documents: {i['reindex_unchanged_s']} s (model loaded: {i['reindex_loaded_model']})"
        )
    for row in result.get("search", []):
        click.echo(
            f"search @ {row['chunks']:>7} chunks: encode p50 {row['encode_ms']['p50']:.1f} ms, "
            f"rest p50 {row['search_ms']['p50']:.1f} / p95 {row['search_ms']['p95']:.1f} ms, "
            f"total p50 {row['total_ms']['p50']:.1f} ms; vectors {row['index_memory_mb']} MB, db {row['db_mb']} MB"
        )
    click.echo(f"peak RSS {result['peak_rss_mb']} MB, {result['seconds']} s in all")


@main.command()
@click.option(
    "--user", metavar="ID", default=None, help="Act as this roster member (a Slack user id from experts.yaml)."
)
@click.pass_context
@handle_errors
def shell(ctx: click.Context, user: str | None) -> None:
    """Chat with opsbot in the terminal, through the same handlers as Slack.

    Plain text is a direct message to opsbot, slash commands such as /ask work as in Slack, and
    buttons are numbered: type the number to press one. You act as the first roster member
    unless --user says otherwise; /help lists the rest.

    \b
    Example:
      opsbot shell
      opsbot shell --user U04C2RN8VD
      echo "pgbouncer too many clients" | opsbot shell
    """
    from bot.runtime import Runtime
    from bot.shell import Shell

    settings = load_settings(ctx)
    root = logging.getLogger()
    level = root.level
    if settings.log_level != "DEBUG":
        root.setLevel(logging.WARNING)  # INFO lines would interleave with the conversation
    store, encoder = _open(settings)
    try:
        if not store.counts()["chunks"]:
            raise OpsbotError("the index is empty; run `opsbot index` first.")
        runtime = Runtime(settings, encoder=encoder, store=store)
        interactive = sys.stdin.isatty()
        with Shell(runtime, write=click.echo, user=user, style=click.style, echo=not interactive) as chat:
            runtime.start_loading()  # the prompt appears at once; the first answer waits for the model
            chat.run(_typed_lines(chat, interactive))
    finally:
        store.close()
        root.setLevel(level)


def _typed_lines(chat: Any, interactive: bool) -> Iterator[str]:
    """Lines from stdin, with line editing and a prompt naming who you act as when it is a terminal."""
    if interactive:
        try:
            import readline  # noqa: F401 - gives input() history and line editing
        except ImportError:  # not on every platform
            pass
    while True:
        try:
            yield input(chat.prompt if interactive else "")
        except EOFError:
            if interactive:
                click.echo()
            return
        except KeyboardInterrupt:  # Ctrl-C clears the line, as in a shell; Ctrl-D leaves
            click.echo()


@main.command()
@click.option("--port", type=click.IntRange(1, 65535), default=None, help="HTTP port (default $PORT, else 3000).")
@click.option("--host", default="0.0.0.0", show_default=True, help="HTTP address to listen on.")
@click.pass_context
@handle_errors
def serve(ctx: click.Context, port: int | None, host: str) -> None:
    """Run the Slack app: Socket Mode when SLACK_APP_TOKEN is set, else HTTP on /slack/events.

    The process acknowledges requests at once; the model and the index load in the background.

    \b
    Example:
      SLACK_BOT_TOKEN=xoxb-... SLACK_SIGNING_SECRET=... opsbot serve --port 3000
      SLACK_BOT_TOKEN=xoxb-... SLACK_APP_TOKEN=xapp-... opsbot serve
    """
    from bot.runtime import Runtime
    from bot.slack.app import create_app
    from bot.slack.server import HttpServer, socket_mode_handler

    settings = load_settings(ctx)
    missing = []
    if not settings.slack_bot_token:
        missing.append("SLACK_BOT_TOKEN (the bot token, xoxb-...; Slack app > OAuth & Permissions)")
    if not settings.slack_app_token and not settings.slack_signing_secret:
        missing.append("SLACK_SIGNING_SECRET (Slack app > Basic Information), or SLACK_APP_TOKEN for Socket Mode")
    if missing:
        raise OpsbotError(
            "cannot start the Slack app without " + " and ".join(missing) + ". Without a workspace, try `opsbot shell`."
        )
    runtime = Runtime(settings)
    runtime.start_loading()
    app = create_app(runtime)
    if settings.slack_app_token:
        log.info("starting in Socket Mode api=%s", settings.slack_api_url)
        socket_mode_handler(app, runtime).start()
        return
    server = HttpServer(app, runtime, host=host, port=port or settings.port)
    log.info("listening host=%s port=%d path=/slack/events", host, server.port)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        server.stop()


@main.command()
@click.option("--url", default="https://opsbot.example.com", show_default=True, help="Public base URL of `serve`.")
@click.option("--socket-mode", is_flag=True, help="For Socket Mode installs (no public URL needed).")
@click.option("--name", default="opsbot", show_default=True, help="The app's name in Slack.")
def manifest(url: str, socket_mode: bool, name: str) -> None:
    """Print the Slack app manifest (YAML) to create the app in a workspace.

    \b
    Example:
      opsbot manifest --socket-mode > manifest.yaml
      opsbot manifest --url https://opsbot.example.com
    """
    from bot.slack.manifest import manifest_yaml

    click.echo(manifest_yaml(name=name, base_url=url, socket_mode=socket_mode))


@main.group()
def channels() -> None:
    """Where opsbot answers without a mention: `all` questions, or `mentions` only (the default).

    \b
    Example:
      opsbot channels list
      opsbot channels set C04ALERTS1 all
    """


@channels.command(name="list")
@click.pass_context
@handle_errors
def channels_list(ctx: click.Context) -> None:
    """List channels with a setting.

    \b
    Example:
      opsbot channels list
    """
    from bot.store import Store

    store = Store(load_settings(ctx).db_path)
    try:
        modes = store.channel_answer_modes()
    finally:
        store.close()
    if not modes:
        click.echo("No channel settings: opsbot answers mentions and DMs everywhere.")
    for channel, mode in sorted(modes.items()):
        click.echo(f"{channel}  {mode}")


@channels.command(name="set")
@click.argument("channel")
@click.argument("mode", type=click.Choice(["all", "mentions"]))
@click.pass_context
@handle_errors
def channels_set(ctx: click.Context, channel: str, mode: str) -> None:
    """Make opsbot answer all questions in CHANNEL, or only mentions.

    \b
    Example:
      opsbot channels set C04ALERTS1 all
    """
    from bot.knowledge import CHANNEL_ID
    from bot.store import Store

    if not CHANNEL_ID.match(channel):
        raise OpsbotError(
            f"{channel!r} is not a Slack channel id; use the id (like C04ALERTS1: channel details > About), "
            "not the #name."
        )
    store = Store(load_settings(ctx).db_path)
    try:
        store.set_channel_answer_mode(channel, mode, "cli")
    finally:
        store.close()
    click.echo(f"{channel}: {'answers questions without a mention' if mode == 'all' else 'answers mentions only'}.")


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print the votes as JSON.")
@click.pass_context
@handle_errors
def feedback(ctx: click.Context, as_json: bool) -> None:
    """List the 👍/👎 votes people gave answers in Slack.

    \b
    Example:
      opsbot feedback
      opsbot feedback --json
    """
    from bot.store import Store

    store = Store(load_settings(ctx).db_path)
    try:
        rows = store.feedback_rows()
    finally:
        store.close()
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo("No feedback yet.")
    for row in rows:
        vote = "👍" if row["vote"] > 0 else "👎"
        click.echo(f"{row['at']}  {vote}  {row['user']}  {row['path']}  <- {row['query']!r}")


@main.command()
@click.argument("text", nargs=-1, required=True)
@click.option("--service", "services", multiple=True, help="A service involved (repeatable).")
@click.option("-n", "limit", type=click.IntRange(1, 20), default=3, show_default=True, help="How many people.")
@click.option("--json", "as_json", is_flag=True, help="Print the suggestions as JSON.")
@click.pass_context
@handle_errors
def experts(ctx: click.Context, text: tuple[str, ...], services: tuple[str, ...], limit: int, as_json: bool) -> None:
    """Suggest who to pull in, with the reasons: similar incidents they resolved, ownership, skills.

    \b
    Example:
      opsbot experts "pgbouncer pool exhausted, checkout 503s" --service checkout-api
      opsbot experts --json "kafka consumer lag on orders"
    """
    from bot.runtime import Runtime

    settings = load_settings(ctx)
    store, encoder = _open(settings)
    try:
        if not store.expert_count():
            raise OpsbotError("the roster is empty: add people to knowledge/experts.yaml and run `opsbot index`.")
        runtime = Runtime(settings, encoder=encoder, store=store)
        suggestions = runtime.suggest_experts(" ".join(text), list(services) or None, limit=limit)
    finally:
        store.close()
    if as_json:
        click.echo(json.dumps([_suggestion_dict(s) for s in suggestions], indent=2))
        return
    if not suggestions:
        click.echo("Nobody matches: no similar past incidents, owners or skills. Name the service or paste the alert.")
    for n, s in enumerate(suggestions, start=1):
        flags = f"  [{'; '.join(s.flags)}]" if s.flags else ""
        click.secho(f"{n}. {s.expert.name} ({s.expert.id}, {s.expert.team})  score {s.score:.2f}{flags}", bold=True)
        for reason in s.reasons():
            click.echo(f"   - {reason}")


def _suggestion_dict(s: Any) -> dict:
    return {
        "id": s.expert.id,
        "name": s.expert.name,
        "team": s.expert.team,
        "score": s.score,
        "reasons": s.reasons(),
        "incidents": [{"id": i.id, "similarity": i.similarity, "main_resolver": i.main_resolver} for i in s.incidents],
        "owns": list(s.owns),
        "skills": list(s.skills),
        "flags": list(s.flags),
    }


def format_experts_table(result: dict) -> str:
    """The expert evaluation: learned ranking and the two baselines side by side."""
    lines = [
        f"{result['split']}; relevant: {'every responder' if result['relevant'] == 'all' else 'the main resolver'}"
        f"{'; services given' if result['with_services'] else '; text only'}",
        f"{'ranking':<16} {'n':>4} {'top-1':>7} {'top-3':>7} {'MRR':>7}",
    ]
    for name in ("learned", "ownership", "most_frequent"):
        m = result[name]
        lines.append(f"{name:<16} {m['queries']:>4} {m['top1']:>7.3f} {m['top3']:>7.3f} {m['mrr']:>7.3f}")
    lines.append(f"(trained in {result['train_seconds']:.2f} s, embedding included)")
    return "\n".join(lines)
