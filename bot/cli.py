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
    from bot.encoder import make_encoder
    from bot.store import Store

    return Store(settings.db_path), make_encoder(settings)


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
@click.option(
    "--encoder", "backend", type=click.Choice(["torch", "onnx"]), default=None, help="Model backend ($OPSBOT_ENCODER)."
)
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
    backend: str | None,
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
    from bot.encoder import make_encoder
    from bot.evaluation import evaluate_experts, run_eval

    settings = load_settings(ctx, encoder=backend)
    if not knowledge.is_dir():
        raise OpsbotError(f"knowledge directory {str(knowledge)!r} does not exist.")
    encoder = make_encoder(settings)
    if task == "experts":
        result = evaluate_experts(knowledge, encoder, queries, relevant=relevant, with_services=with_services)
        click.echo(json.dumps(result, indent=2) if as_json else format_experts_table(result))
        return
    if queries is None:
        raise OpsbotError("--queries is required for the search task: a JSON-lines file of questions.")
    modes = ["hybrid", "dense", "bm25"] if mode == "all" else [mode]
    results, report = run_eval(knowledge, queries, modes, encoder)
    if as_json:
        click.echo(json.dumps({"encoder": settings.encoder, "modes": results, "index": report.as_dict()}, indent=2))
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
@click.argument("what", type=click.Choice(["index", "search", "experts", "slack", "process", "all"]), default="all")
@click.option("--sizes", default="1000,10000,100000", show_default=True, help="Chunk counts for the search benchmark.")
@click.option(
    "--encoder",
    "backend",
    type=click.Choice(["torch", "onnx", "both"]),
    default=None,
    help="Model backend (default $OPSBOT_ENCODER); both runs each and compares them.",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.pass_context
@handle_errors
def bench(ctx: click.Context, what: str, sizes: str, backend: str | None, as_json: bool) -> None:
    """Measure indexing speed and search latency on a seeded synthetic knowledge base.

    \b
    Example:
      opsbot bench search --sizes 1000,10000
      opsbot bench search --sizes 1000,10000 --encoder both
      opsbot bench --json > bench.json
    """
    try:
        size_list = [int(s) for s in sizes.split(",") if s.strip()]
    except ValueError:
        raise OpsbotError(f"--sizes {sizes!r} must be whole numbers separated by commas, like 1000,10000.") from None
    if not size_list or min(size_list) < 10:
        raise OpsbotError("--sizes needs at least one size of 10 chunks or more.")
    settings = load_settings(ctx)
    backends = ["torch", "onnx"] if backend == "both" else [backend or settings.encoder]
    runs = {name: _bench_run(settings.with_overrides(encoder=name), what, size_list) for name in backends}
    if len(runs) == 1:
        result = next(iter(runs.values()))
        click.echo(json.dumps(result, indent=2) if as_json else _bench_text(result))
        return
    if as_json:
        click.echo(json.dumps(runs, indent=2))
        return
    for name, result in runs.items():
        click.echo(f"== encoder {name}\n{_bench_text(result)}\n")
    click.echo(_bench_compare(runs))


def _bench_run(settings: Settings, what: str, size_list: list[int]) -> dict[str, Any]:
    """One backend's benchmarks, as a JSON-ready dict."""
    from bot import bench as benchmarks
    from bot.encoder import make_encoder

    encoder = make_encoder(settings)
    started = time.perf_counter()
    encoder.load()
    result: dict[str, Any] = {
        "model": encoder.model_id,
        "encoder": settings.encoder,
        "model_load_s": round(encoder.load_seconds, 2),
    }
    if getattr(encoder, "exported", False):
        result["onnx_exported"] = True  # the load time includes the one-off export
    if what in ("index", "all"):
        result["index"] = benchmarks.bench_index(encoder)
    if what in ("search", "all"):
        result["search"] = benchmarks.bench_search(encoder, size_list)
    if what in ("experts", "all"):
        result["experts"] = benchmarks.bench_experts(encoder)
    if what in ("slack", "all"):
        from bot.bench_slack import bench_slack

        result["slack"] = bench_slack(encoder, chunks=min(max(size_list), 10000))
    if what in ("process", "all"):
        from bot.bench_slack import bench_process

        result["process"] = bench_process(encoder, chunks=max(size_list))
    result["peak_rss_mb"] = benchmarks.peak_rss_mb()
    result["seconds"] = round(time.perf_counter() - started, 1)
    return result


def _bench_text(result: dict[str, Any]) -> str:
    exported = ", including the one-off ONNX export" if result.get("onnx_exported") else ""
    lines = [f"model: {result['model']} via {result['encoder']} (loaded in {result['model_load_s']} s{exported})"]
    if "index" in result:
        i = result["index"]
        lines.append(
            f"index: {i['index_chunks_per_s']} chunks/s vs raw encode {i['raw_encode_chunks_per_s']} chunks/s "
            f"(ratio {i['ratio']:.0%}) on {i['chunks']} chunks; unchanged re-index of {i['reindex_unchanged_docs']} "
            f"documents: {i['reindex_unchanged_s']} s (model loaded: {i['reindex_loaded_model']})"
        )
    for row in result.get("search", []):
        lines.append(
            f"search @ {row['chunks']:>7} chunks: encode p50 {row['encode_ms']['p50']:.1f} ms, "
            f"rest p50 {row['search_ms']['p50']:.1f} / p95 {row['search_ms']['p95']:.1f} ms, "
            f"total p50 {row['total_ms']['p50']:.1f} ms; vectors {row['index_memory_mb']} MB, db {row['db_mb']} MB"
        )
    if "experts" in result:
        e = result["experts"]
        lines.append(
            f"experts: {e['incidents']} incidents embedded in {e['embed_s']} s (once, at index time), "
            f"model fitted in {e['fit_s'] * 1000:.1f} ms, ranking p50 {e['rank_ms']['p50']:.1f} ms"
        )
    if "slack" in result:
        sl = result["slack"]
        lines.append(
            f"slack @ {sl['chunks']} chunks: ack p50 {sl['ack_ms']['p50']:.1f} / p99 {sl['ack_ms']['p99']:.1f} ms "
            f"({sl['acks']} signed /ask, {sl['concurrent']} at a time, indexing: {sl['indexing_during_acks']}); "
            f"/ask end to end p50 {sl['ask_end_to_end_ms']['p50']:.1f} / p95 {sl['ask_end_to_end_ms']['p95']:.1f} ms"
        )
    if "process" in result:
        pr = result["process"]
        lines.append(
            f"process @ {pr['chunks']} chunks: start to acknowledging {pr['start_to_ack_s']} s, "
            f"start to model and index loaded {pr['start_to_ready_s']} s, peak RSS {pr['peak_rss_mb']} MB"
        )
    lines.append(f"peak RSS {result['peak_rss_mb']} MB, {result['seconds']} s in all")
    return "\n".join(lines)


def _bench_compare(runs: dict[str, dict[str, Any]]) -> str:
    """The two backends side by side: query encode p50/p95 per size, and indexing throughput."""
    names = list(runs)
    header = f"{'':<34}" + "".join(f"{name:>16}" for name in names)
    lines = [header, "-" * len(header)]
    first = runs[names[0]]
    for n, row in enumerate(first.get("search", [])):
        cells = [runs[name]["search"][n]["encode_ms"] for name in names]
        label = f"query encode @ {row['chunks']} p50 / p95"
        lines.append(f"{label:<34}" + "".join(f"{c['p50']:>7.1f} / {c['p95']:>4.1f} ms" for c in cells))
        ends = [runs[name]["search"][n]["total_ms"]["p50"] for name in names]
        label = f"ask end to end @ {row['chunks']} p50"
        lines.append(f"{label:<34}" + "".join(f"{e:>13.1f} ms" for e in ends))
    if "index" in first:
        lines.append(
            f"{'index throughput':<34}"
            + "".join(f"{runs[name]['index']['index_chunks_per_s']:>9.1f} chunks/s" for name in names)
        )
    lines.append(f"{'model load':<34}" + "".join(f"{runs[name]['model_load_s']:>14.2f} s" for name in names))
    return "\n".join(lines)


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
@click.option(
    "--hooks-port",
    type=click.IntRange(1, 65535),
    default=None,
    help="Socket Mode: also serve /hooks/deploy and /healthz (only those) on this port, for CI/CD deploy events.",
)
@click.pass_context
@handle_errors
def serve(ctx: click.Context, port: int | None, host: str, hooks_port: int | None) -> None:
    """Run the Slack app: Socket Mode when SLACK_APP_TOKEN is set, else HTTP on /slack/events.

    The process acknowledges requests at once; the model and the index load in the background.
    Over HTTP, CI/CD deploy events arrive on /hooks/deploy (set OPSBOT_HOOK_SECRET); in Socket Mode,
    give --hooks-port to listen for them.

    \b
    Example:
      SLACK_BOT_TOKEN=xoxb-... SLACK_SIGNING_SECRET=... opsbot serve --port 3000
      SLACK_BOT_TOKEN=xoxb-... SLACK_APP_TOKEN=xapp-... opsbot serve --hooks-port 3000
    """
    from bot.runtime import Runtime
    from bot.slack.app import create_app
    from bot.slack.deploys import report_interrupted, start_sweeper
    from bot.slack.digest import start_digest_scheduler
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
    # Deploys an earlier process left running are reported, never re-run; pending ones expire on time.
    report_interrupted(runtime, app.client)
    start_sweeper(runtime, app.client)
    start_digest_scheduler(runtime, app.client)
    if settings.slack_app_token:
        hooks = None
        if hooks_port:
            if not settings.hook_secret:
                log.warning("--hooks-port given but OPSBOT_HOOK_SECRET is not set: deploy events will be refused")
            hooks = HttpServer(app, runtime, host=host, port=hooks_port, slack_events=False).start()
            log.info("deploy hooks listening host=%s port=%d path=/hooks/deploy", host, hooks.port)
        log.info("starting in Socket Mode api=%s", settings.slack_api_url)
        try:
            socket_mode_handler(app, runtime).start()
        finally:
            if hooks is not None:
                hooks.stop()
        return
    if hooks_port:
        log.info("--hooks-port is for Socket Mode; over HTTP the hooks are on port %d", port or settings.port)
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


# -- deploys, audit and DORA ----------------------------------------------------------------------


def _open_store(ctx: click.Context):  # noqa: ANN202
    from bot.store import Store

    return Store(load_settings(ctx).db_path)


def _check_names(store: Any, service: str | None, env: str | None) -> None:
    """Refuse a --service or --env that neither services.yaml nor the deploy history knows."""
    configs = store.service_configs()
    history = store.deploy_rows(limit=100000)
    services = set(configs) | {r["service"] for r in history}
    envs = {e for c in configs.values() for e in (c.get("environments") or {})} | {r["env"] for r in history}
    if service and service not in services:
        known = ", ".join(sorted(services)) or "none yet: add services to services.yaml and run `opsbot index`"
        raise OpsbotError(f"no service {service!r} in services.yaml or the deploy history; known services: {known}.")
    if env and envs and env not in envs:
        raise OpsbotError(f"no environment {env!r}; known environments: {', '.join(sorted(envs))}.")


def _when(value: str | None) -> str:
    return value.replace("T", " ")[:16] if value else "-"


def _took(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.1f} min"


def format_deploys_table(requests: list, names: dict[str, str]) -> str:
    """A plain-text table of deploy requests, one per line, columns as wide as their longest value."""
    header = ("ID", "KIND", "SERVICE", "ENV", "FROM → TO", "STATUS", "REQUESTER", "APPROVERS", "STARTED", "DURATION")
    rows = [
        (
            r.id,
            r.kind,
            r.service,
            r.env,
            f"{r.from_version or '?'} → {r.version}",
            r.status,
            names.get(r.requester, r.requester),
            ", ".join(names.get(a, a) for a in r.approvers) or "-",
            _when(r.started_at),
            _took(r.duration_s),
        )
        for r in requests
    ]
    widths = [max(len(str(row[n])) for row in [header, *rows]) for n in range(len(header))]
    return "\n".join(
        "  ".join(str(v).ljust(w) for v, w in zip(row, widths, strict=True)).rstrip() for row in [header, *rows]
    )


@main.command(name="deploys")
@click.option("--service", default=None, help="Only this service.")
@click.option("--env", default=None, help="Only this environment (staging, prod ...).")
@click.option("-n", "--limit", type=click.IntRange(1, 10000), default=20, show_default=True, help="How many requests.")
@click.option("--json", "as_json", is_flag=True, help="Print the requests as JSON.")
@click.pass_context
@handle_errors
def deploys_list(ctx: click.Context, service: str | None, env: str | None, limit: int, as_json: bool) -> None:
    """List recent deploy and rollback requests, from Slack and from CI, newest first.

    \b
    Example:
      opsbot deploys
      opsbot deploys --service checkout-api --env prod --limit 50
      opsbot deploys --json
    """
    from dataclasses import asdict

    from bot.deploys import recent_requests

    store = _open_store(ctx)
    try:
        _check_names(store, service, env)
        requests = recent_requests(store, service, env, limit)
        names = {e.id: e.name for e in store.load_experts()}
    finally:
        store.close()
    if as_json:
        click.echo(json.dumps([asdict(r) | {"duration_s": r.duration_s} for r in requests], indent=2))
        return
    if not requests:
        scope = " ".join(filter(None, [service, env]))
        click.echo(f"No deploy requests{' for ' + scope if scope else ''} yet.")
        return
    click.echo(format_deploys_table(requests, names))


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print the audit trail as JSON.")
@click.option("--csv", "as_csv", is_flag=True, help="Print the audit trail as CSV (for a spreadsheet).")
@click.pass_context
@handle_errors
def audit(ctx: click.Context, as_json: bool, as_csv: bool) -> None:
    """Print the deploy audit trail: who requested, approved, rejected and ran what, and when.

    \b
    Example:
      opsbot audit
      opsbot audit --csv > audit.csv
      opsbot audit --json
    """
    import csv
    import io

    if as_json and as_csv:
        raise OpsbotError("choose one of --json and --csv.")
    store = _open_store(ctx)
    try:
        rows = store.audit_rows()
    finally:
        store.close()
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if as_csv:
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(["at", "actor", "action", "request_id", "details"])
        for row in rows:
            details = json.dumps(row["details"], sort_keys=True)
            writer.writerow([row["at"], row["actor"], row["action"], row["request_id"], details])
        click.echo(out.getvalue(), nl=False)
        return
    if not rows:
        click.echo("The audit trail is empty: no deploy has been requested yet.")
    for row in rows:
        details = " ".join(
            f"{k}={','.join(map(str, v)) if isinstance(v, list) else v}" for k, v in row["details"].items()
        )
        click.echo(f"{row['at']}  {row['actor']}  {row['action']}  {row['request_id']}  {details}".rstrip())


@main.command(name="dora")
@click.option("--service", default=None, help="Only this service (default: all).")
@click.option("--env", default="prod", show_default=True, help="The environment.")
@click.option("--days", type=click.IntRange(1, 3650), default=30, show_default=True, help="The period, in days.")
@click.option("--json", "as_json", is_flag=True, help="Print the figures as JSON.")
@click.pass_context
@handle_errors
def dora_figures(ctx: click.Context, service: str | None, env: str, days: int, as_json: bool) -> None:
    """Show the four DORA figures: deploy frequency, change failure rate, time to restore, lead time.

    A change failed when its deploy failed, or a rollback or an incident on the service followed
    within the failure window (`failure_window_hours` in services.yaml, 24 by default).

    \b
    Example:
      opsbot dora
      opsbot dora --service checkout-api --days 90
      opsbot dora --env staging --json
    """
    from dataclasses import asdict

    from bot.deploy_config import ConfigProblem, parse_settings
    from bot.metrics import dora

    store = _open_store(ctx)
    try:
        _check_names(store, service, env)
        try:
            settings = parse_settings(json.loads(store.get_meta("deploy_settings") or "null"))
        except (ConfigProblem, ValueError) as exc:
            raise OpsbotError(
                f"the stored deploy settings cannot be read ({exc}); fix `settings:` in services.yaml and run "
                "`opsbot index`."
            ) from None
        figures = dora(store, service=service, env=env, days=days, failure_window_hours=settings.failure_window_hours)
    finally:
        store.close()
    if as_json:
        extra = {
            "change_failure_rate": figures.change_failure_rate,
            "per_week": figures.per_week,
            "failure_window_hours": settings.failure_window_hours,
            "line": figures.line(),
        }
        click.echo(json.dumps(asdict(figures) | extra, indent=2))
        return
    click.secho(f"{service or 'All services'} in {env}, last {days} days", bold=True)
    click.echo(figures.line())
    click.echo(f"  deploys in the period: {figures.deploys_period} ({figures.per_week:.1f} a week)")
    click.echo(
        f"  changes: {figures.changes}, of which failed: {figures.failed_changes} (failed, rolled back, or followed "
        f"by an incident within {settings.failure_window_hours} h)"
    )
    restore = "n/a" if figures.time_to_restore_min is None else f"{figures.time_to_restore_min:.0f} min"
    lead = "n/a" if figures.lead_time_h is None else f"{figures.lead_time_h:.1f} h"
    click.echo(f"  time to restore (median of incidents and failed deploys): {restore}")
    click.echo(f"  lead time (median, commit to deploy): {lead}")


# -- incidents declared in Slack ---------------------------------------------------------------------


@main.group()
def incidents() -> None:
    """Incidents declared in Slack with /incident: list them, export resolved ones as knowledge files.

    \b
    Example:
      opsbot incidents list --all
      opsbot incidents export INC-2026-0042
    """


@incidents.command(name="list")
@click.option("--all", "show_all", is_flag=True, help="Resolved incidents too, not only the open ones.")
@click.option("--json", "as_json", is_flag=True, help="Print the incidents, timelines included, as JSON.")
@click.pass_context
@handle_errors
def incidents_list(ctx: click.Context, show_all: bool, as_json: bool) -> None:
    """List incidents declared in Slack, newest first (only the open ones unless --all).

    \b
    Example:
      opsbot incidents list
      opsbot incidents list --all --json
    """
    from bot.incidents import IncidentService
    from bot.store import Store

    store = Store(load_settings(ctx).db_path)
    try:
        found = [i for i in IncidentService(store, set()).list_all() if show_all or i.is_open]
    finally:
        store.close()
    if as_json:
        click.echo(json.dumps([_live_incident_dict(i) for i in found], indent=2))
        return
    if not found:
        click.echo("No incidents declared in Slack yet." if show_all else "No open incidents.")
    for i in found:
        state = "open" if i.is_open else f"resolved after {i.minutes_to_restore} min"
        services = ", ".join(i.services) or "no service"
        click.echo(f"{i.id}  SEV{i.severity}  {state}  {i.title}  [{services}]  declared {i.declared_at}")


def _live_incident_dict(i: Any) -> dict:
    return {
        "id": i.id,
        "title": i.title,
        "severity": i.severity,
        "status": i.status,
        "services": list(i.services),
        "declared_by": i.declared_by,
        "declared_at": i.declared_at,
        "channel": i.channel,
        "roles": i.roles,
        "resolved_at": i.resolved_at or None,
        "resolution": i.resolution or None,
        "minutes_to_restore": i.minutes_to_restore,
        "responders": list(i.responders),
        "timeline": [dict(e) for e in i.events],
    }


@incidents.command(name="export")
@click.argument("ids", nargs=-1)
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Folder for the files (default: incidents/<year>/ in the knowledge directory).",
)
@click.option("--force", is_flag=True, help="Overwrite a file that exists with other content.")
@click.option("--service", default=None, help="The service of incidents declared without one.")
@click.pass_context
@handle_errors
def incidents_export(
    ctx: click.Context, ids: tuple[str, ...], out: Path | None, force: bool, service: str | None
) -> None:
    """Write resolved incidents as knowledge/incidents YAML files named <ID>.yaml (default: every resolved one).

    The files are what `opsbot index` reads, so the incidents stay searchable after the database is rebuilt.
    A file that exists with other content is left alone unless --force.

    \b
    Example:
      opsbot incidents export
      opsbot incidents export INC-2026-0042 --out /tmp/incidents --force
    """
    from dataclasses import replace

    from bot.incidents import IncidentService, export_yaml, to_incident
    from bot.store import Store

    settings = load_settings(ctx)
    store = Store(settings.db_path)
    try:
        found = IncidentService(store, set())
        chosen = [found.find(i, "") for i in ids] if ids else [i for i in found.list_all() if not i.is_open]
    finally:
        store.close()
    if not chosen:
        click.echo("No resolved incidents to export.")
    problems: list[str] = []
    for live in chosen:
        if live.is_open:
            problems.append(f"{live.id} is still open: resolve it first (/incident resolve RESOLUTION).")
            continue
        if not live.services and service:
            live = replace(live, services=(service,))
        elif not live.services:
            problems.append(f"{live.id} names no service, and incident files need one: add --service NAME.")
            continue
        incident = to_incident(live)
        folder = out or settings.knowledge_dir / "incidents" / str(incident.date.year)
        path = folder / f"{live.id}.yaml"
        text = export_yaml(incident)
        if path.exists():
            if path.read_text(encoding="utf-8") == text:
                click.echo(f"{path}: unchanged")
                continue
            if not force:
                problems.append(f"{path} exists with other content; pass --force to overwrite it.")
                continue
        folder.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        click.echo(f"wrote {path}")
    if problems:
        raise OpsbotError("\n  ".join([f"{len(problems)} incident(s) not exported:", *problems]))


# -- deploy events from CI/CD ------------------------------------------------------------------------


@main.command(name="notify-deploy")
@click.option("--service", required=True, help="The service deployed (as named in services.yaml).")
@click.option("--env", required=True, help="The environment, e.g. prod.")
@click.option("--version", "version", required=True, help="The version deployed.")
@click.option(
    "--status",
    type=click.Choice(["started", "succeeded", "failed", "rolled_back"]),
    default="succeeded",
    show_default=True,
    help="started when the pipeline begins; succeeded, failed or rolled_back when it ends.",
)
@click.option("--event-id", default=None, help="Unique per event; a replay is ignored (default: a random id).")
@click.option("--commit-sha", default=None, help="The commit deployed.")
@click.option("--commit-time", default=None, help="When it was committed (ISO 8601): DORA lead time.")
@click.option("--started-at", default=None, help="When the deploy started (ISO 8601; default now).")
@click.option("--finished-at", default=None, help="When it finished (ISO 8601; default now).")
@click.option("--actor", default=None, help="Who triggered the pipeline.")
@click.option("--pipeline-url", default=None, help="Link to the pipeline run.")
@click.option("--change", "changes", multiple=True, help="One change shipped (repeatable).")
@click.option("--url", default=None, help="The hook URL (default $OPSBOT_HOOK_URL): http://HOST:3000/hooks/deploy.")
@click.option(
    "--db",
    "db_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Record straight into this opsbot database instead (no Slack message).",
)
@handle_errors
def notify_deploy(
    service: str,
    env: str,
    version: str,
    status: str,
    event_id: str | None,
    commit_sha: str | None,
    commit_time: str | None,
    started_at: str | None,
    finished_at: str | None,
    actor: str | None,
    pipeline_url: str | None,
    changes: tuple[str, ...],
    url: str | None,
    db_path: Path | None,
) -> None:
    """Report a deploy from CI/CD: signs the event with $OPSBOT_HOOK_SECRET and POSTs it to opsbot.

    Send --status started when the pipeline begins deploying and succeeded, failed or rolled_back
    when it ends (same service, env and version): opsbot posts the progress and the summary in Slack,
    and the deploy counts in `opsbot deploys` and `opsbot dora`. With --db the event is recorded
    straight into a database file instead, without Slack.

    \b
    Example:
      export OPSBOT_HOOK_URL=http://opsbot.internal:3000/hooks/deploy OPSBOT_HOOK_SECRET=...
      opsbot notify-deploy --service checkout-api --env prod --version 1.4.2 --status started
      opsbot notify-deploy --service checkout-api --env prod --version 1.4.2 --status succeeded \\
        --commit-sha 3f9c2e1 --commit-time 2026-11-20T09:12:00Z --change "Retry card auth once"
      opsbot notify-deploy --db opsbot.db --service checkout-api --env prod --version 1.4.2
    """
    import urllib.error
    import urllib.request

    from bot.hooks import SIGNATURE_HEADER, TIMESTAMP_HEADER, build_event, sign

    event = build_event(
        service,
        env,
        version,
        status,
        event_id,
        commit_sha=commit_sha,
        commit_time=commit_time,
        started_at=started_at,
        finished_at=finished_at,
        actor=actor,
        pipeline_url=pipeline_url,
        changes=list(changes),
    )
    body = json.dumps(event).encode()
    if db_path is not None:
        answer = _record_event_locally(db_path, body)
    else:
        settings = Settings.from_env(require_model=False)
        target = url or settings.hook_url
        if not target:
            raise OpsbotError("give --url or set OPSBOT_HOOK_URL (e.g. http://opsbot.internal:3000/hooks/deploy).")
        if not target.startswith(("http://", "https://")):
            raise OpsbotError(f"--url {target!r} must start with http:// or https://.")
        if not settings.hook_secret:
            raise OpsbotError("set OPSBOT_HOOK_SECRET to the secret the opsbot server has, to sign the event.")
        timestamp = str(int(time.time()))
        request = urllib.request.Request(
            target,
            data=body,
            method="POST",
            headers={
                "Content-Type": "application/json",
                TIMESTAMP_HEADER: timestamp,
                SIGNATURE_HEADER: sign(str(settings.hook_secret), timestamp, body),
            },
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                answer = json.loads(response.read() or b"{}")
        except urllib.error.HTTPError as error:
            raise OpsbotError(f"opsbot refused the event (HTTP {error.code}): {_hook_error(error)}") from None
        except (urllib.error.URLError, OSError) as error:
            raise OpsbotError(f"could not reach {target}: {getattr(error, 'reason', error)}") from None
    click.echo(_describe_hook_answer(event, answer))


def _record_event_locally(db_path: Path, body: bytes) -> dict:
    from bot.deploys import DeployService
    from bot.hooks import EventProblem, known_services, parse_event, record_event
    from bot.store import Store

    if not db_path.exists():
        raise OpsbotError(f"{db_path} does not exist: give the opsbot database file (OPSBOT_DB), after `opsbot index`.")
    store = Store(db_path)
    try:
        deploys = DeployService.from_store(store)
        try:
            parsed = parse_event(body, known_services(deploys))
        except EventProblem as exc:
            raise OpsbotError(f"{exc} (field {exc.field})") from None
        return record_event(deploys, parsed).as_json()
    finally:
        store.close()


def _hook_error(error: Any) -> str:
    try:
        answer = json.loads(error.read() or b"{}")
    except ValueError:
        return error.reason or "no details"
    field = f" (field {answer['field']})" if answer.get("field") else ""
    return f"{answer.get('error') or error.reason}{field}"


def _describe_hook_answer(event: dict, answer: dict) -> str:
    what = f"{event['service']} {event['version']} to {event['env']}"
    if answer.get("duplicate"):
        return f"{what}: event {event['event_id']} was already recorded; nothing changed."
    verb = {"started": "running", "finished": "finished", "recorded": "recorded"}.get(answer.get("action", ""), "sent")
    arrow = f"{answer.get('from_version') or '?'} → {answer.get('version')}"
    return f"{what}: {verb} as {answer.get('id')} ({answer.get('kind')} {arrow}, {answer.get('status')})."
