"""Measuring commands: eval (retrieval and routing quality) and bench (speed)."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import click

from bot.cli.base import handle_errors, load_settings, main, typed
from bot.config import Settings
from bot.errors import OpsbotError

log = logging.getLogger(__name__)
MAX_BENCH_CHUNKS = 1_000_000
EVAL_CACHE = ".opsbot-eval-cache.db"  # beside the database: vectors by content hash, for repeated eval runs

PROBLEMS_SHOWN = 10  # of the knowledge's problems, shown before the figures' warnings


@main.command(name="eval")
@click.option(
    "--knowledge",
    "knowledge",
    type=click.Path(path_type=Path),
    required=True,
    help="A folder in the knowledge format (runbooks/, incidents/, experts.yaml), as `opsbot index` reads.",
)
@click.option(
    "--queries",
    type=click.Path(path_type=Path),
    default=None,
    help='A JSON-lines file of queries, one {"query": TEXT, "relevant": [PATH, ...]} per line.',
)
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
@click.option(
    "--documents",
    type=click.Choice(["all", "runbooks", "incidents"]),
    default="all",
    show_default=True,
    help="Search: rank only runbooks or only incidents, as an answer's two blocks in Slack show them.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
@click.option(
    "--misses", is_flag=True, help="Also list the queries whose first result, or its cited section, was wrong."
)
@click.option(
    "--encoder", "backend", type=click.Choice(["torch", "onnx"]), default=None, help="Model backend ($OPSBOT_ENCODER)."
)
@click.option(
    "--index-db",
    "index_db",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="Search: index into this database and keep it, so a later run embeds only what changed. Only a new "
    "file or one an earlier --index-db made: never your bot's database.",
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
    documents: str,
    as_json: bool,
    misses: bool,
    backend: str | None,
    index_db: Path | None,
) -> None:
    """Measure retrieval (Recall@1/3/5, MRR@10 per mode and kind) or expert suggestion (top-1/3, MRR).

    --knowledge is a folder in the knowledge format; --queries a JSON-lines file with one question per
    line: {"query": "...", "relevant": ["runbooks/x.md"]} (optional: "id", "kind", and "sections" as
    "runbooks/x.md#heading"), paths relative to the folder. The sample's are in knowledge/eval/.
    Indexes the folder into a temporary database (or --index-db, kept for the next run), so your index
    is untouched; the query file is only read to measure, the ranker is fitted on the documents alone. The expert task
    without --queries trains on the older 70% of the incidents and tests on the newer 30%; with a
    query file, services it gives are used. Expert suggestions are compared with five baselines
    (TF-IDF nearest incidents with and without ownership, the most active in the last year,
    ownership only, the most frequent responders). Its vectors are cached by content hash in
    .opsbot-eval-cache.db beside the database, so a second run embeds nothing.

    \b
    Example:
      opsbot eval --knowledge my-knowledge --queries my-knowledge/eval/queries.jsonl
      opsbot eval --knowledge knowledge --queries knowledge/eval/summaries.jsonl --documents runbooks
      opsbot eval --task experts --knowledge knowledge
    """
    from bot.answers.encoder import make_encoder
    from bot.tools.evaluation import run_eval
    from bot.tools.expert_eval import evaluate_experts

    # An option of the other task would be silently ignored: say so instead.
    search_only = ("--mode", "--documents", "--misses", "--index-db")
    other = search_only if task == "experts" else ("--relevant", "--with-services")
    given = [o for o in other if typed(ctx, o[2:].replace("-", "_"))]
    if given:
        verb = "applies" if len(given) == 1 else "apply"
        wanted = "search" if task == "experts" else "experts"
        raise OpsbotError(f"{', '.join(given)} only {verb} to --task {wanted}; leave it out or change --task.")
    split_only = [o for o in ("--relevant", "--with-services") if task == "experts" and queries is not None]
    given = [o for o in split_only if typed(ctx, o[2:].replace("-", "_"))]
    if given:  # a query file says who is relevant and which services each question gives
        verb, them = ("applies", "it") if len(given) == 1 else ("apply", "them")
        raise OpsbotError(
            f"{', '.join(given)} only {verb} to the time split (without --queries); a query file gives its own "
            f'"relevant" people and "services": leave {them} out or drop --queries.'
        )
    settings = load_settings(ctx, encoder=backend)
    if knowledge.exists() and not knowledge.is_dir():
        raise OpsbotError(f"--knowledge {str(knowledge)!r} is a file; pass the folder with runbooks/ in it.")
    if not knowledge.is_dir():
        raise OpsbotError(
            f"knowledge directory {str(knowledge)!r} does not exist; pass --knowledge the folder with runbooks/ "
            "(and incidents/, experts.yaml) in it, such as knowledge."
        )
    encoder = make_encoder(settings)
    if task == "experts":
        cache = settings.db_path.parent / EVAL_CACHE  # vectors by content hash: a second run embeds nothing
        result = evaluate_experts(
            knowledge, encoder, queries, relevant=relevant, with_services=with_services, cache=cache
        )
        click.echo(json.dumps(result, indent=2) if as_json else format_experts_table(result))
        return
    if queries is None:
        raise OpsbotError("--queries is required for the search task: a JSON-lines file of questions.")
    modes = ["hybrid", "dense", "bm25"] if mode == "all" else [mode]
    results, report = run_eval(
        knowledge, queries, modes, encoder, documents=documents, db_path=index_db, settings=settings
    )
    if as_json:
        click.echo(
            json.dumps(
                {"encoder": settings.encoder, "documents": documents, "modes": results, "index": report.as_dict()},
                indent=2,
            )
        )
        return
    click.echo(format_eval_table(results))
    if report.ranker and "trees" in report.ranker:
        r = report.ranker
        click.echo(
            f"ranker: fitted on {r['queries']} queries made from the documents ({r['votes']} votes); on the held-back "
            f"{r['held_back_documents']} documents' queries MRR@10 {r['held_back_mrr']:.3f} vs fusion "
            f"{r['held_back_mrr_fused']:.3f}{'' if r['trees'] else ', so fusion is used'}"
        )
    for problem in report.problems[:PROBLEMS_SHOWN]:  # a file that failed to load is missing from the figures
        click.echo(f"Warning: {problem}", err=True)
    if len(report.problems) > PROBLEMS_SHOWN:
        click.echo(
            f"Warning: {len(report.problems) - PROBLEMS_SHOWN} more problems: `opsbot check` lists them.", err=True
        )
    if unknown := results[modes[0]]["unknown_relevant"]:
        broken = [u for u in unknown if any(p.path == u for p in report.problems)]
        shown = ", ".join(unknown[:5]) + (", ..." if len(unknown) > 5 else "")
        why = (
            f"{len(broken)} of them failed to load (above): fix them, or"
            if broken
            else "Give paths relative to the knowledge folder, as `opsbot ask --json` shows them; or"
        )
        click.echo(
            f"Warning: {len(unknown)} relevant path(s) of {queries} are no document of {knowledge} and count as "
            f"misses: {shown}. {why} run `opsbot check {knowledge}`.",
            err=True,
        )
    skipped = results[modes[0]]["skipped"]
    if skipped:
        click.echo(f"{skipped} queries skipped: none of their relevant documents are {documents}.")
    if misses:
        for m in modes:
            for miss in results[m]["misses"]:
                click.echo(f"[{m}] {miss['id']}: got {miss['got'][:1]} want {miss['want']}")
            for miss in results[m]["section_misses"]:
                click.echo(f"[{m}] {miss['id']}: right document, cited {miss['got']} want {miss['want']}")


def format_eval_table(results: dict) -> str:
    """A plain-text table: one row per mode and query group."""
    from bot.tools.evaluation import RESERVED

    rows = [m for groups in results.values() for m in groups.values() if isinstance(m, dict)]
    sectioned = any("section@1" in m for m in rows)
    shown = any("shown@1" in m for m in rows)
    header = f"{'mode':<8} {'queries':<14} {'n':>4} {'R@1':>6} {'R@3':>6} {'R@5':>6} {'MRR@10':>7}"
    header += f" {'Shw@1':>6} {'Shown':>6}" if shown else ""
    header += f" {'Sec@1':>6} {'of':>4}" if sectioned else ""
    lines = [header, "-" * len(header)]
    for mode, groups in results.items():
        for group, m in groups.items():
            if group in RESERVED:
                continue
            line = (
                f"{mode:<8} {group:<14} {m['queries']:>4} {m['recall@1']:>6.3f} {m['recall@3']:>6.3f} "
                f"{m['recall@5']:>6.3f} {m['mrr@10']:>7.3f}"
            )
            if shown:
                line += f" {m['shown@1']:>6.3f} {m['shown']:>6.3f}" if "shown@1" in m else " " * 14
            if "section@1" in m:
                line += f" {m['section@1']:>6.3f} {m['sectioned']:>4}"
            lines.append(line.rstrip())
    if shown:
        lines.append(
            "Shw@1, Shown: what a reply shows after the relevance rule (hybrid): its first document is relevant; "
            "a relevant one is among those shown."
        )
    if sectioned:
        lines.append("Sec@1: the first result cites a labelled section (of the n queries that label sections).")
    return "\n".join(lines)


@main.command()
@click.argument(
    "what", type=click.Choice(["index", "search", "experts", "slack", "process", "alerts", "all"]), default="all"
)
@click.option(
    "--sizes",
    default="1000,10000,100000",
    show_default=True,
    help="Chunk counts: search runs at each, slack at the largest up to 10000, process at the largest.",
)
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

    `alerts` sends a storm of 200 alerts in 20 groups to /hooks/alertmanager, with your knowledge indexed into a
    temporary database, and measures firing to briefing posted, duplicates and lost groups.

    \b
    Example:
      opsbot bench search --sizes 1000,10000
      opsbot bench search --sizes 1000,10000 --encoder both
      opsbot bench alerts
      opsbot bench --json > bench.json
    """
    try:
        size_list = [int(s) for s in sizes.split(",") if s.strip()]
    except ValueError:
        raise OpsbotError(f"--sizes {sizes!r} must be whole numbers separated by commas, like 1000,10000.") from None
    if not size_list or min(size_list) < 10:
        raise OpsbotError("--sizes needs at least one size of 10 chunks or more.")
    if max(size_list) > MAX_BENCH_CHUNKS:
        raise OpsbotError(
            f"--sizes {max(size_list)} is over the limit of {MAX_BENCH_CHUNKS:,} chunks a synthetic store may hold "
            "(each size is built, embedded and searched in full); give smaller sizes, like 1000,10000,100000."
        )
    if what in ("index", "experts", "alerts") and typed(ctx, "sizes"):
        raise OpsbotError(f"--sizes does not apply to `opsbot bench {what}` (its corpus is fixed); leave it out.")
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
    from bot.answers.encoder import make_encoder
    from bot.tools import bench as benchmarks

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
        result["fit"] = benchmarks.bench_fit(encoder)
    if what in ("search", "all"):
        result["search"] = benchmarks.bench_search(encoder, size_list)
    if what in ("experts", "all"):
        result["experts"] = benchmarks.bench_experts(encoder)
    if what in ("slack", "all"):
        from bot.tools.bench_slack import bench_slack

        result["slack"] = bench_slack(encoder, chunks=min(max(size_list), 10000))
    if what in ("process", "all"):
        from bot.tools.bench_slack import bench_process

        result["process"] = bench_process(encoder, chunks=max(size_list))
    if what in ("alerts", "all"):
        from bot.tools.bench_alerts import bench_alerts

        result["alerts"] = bench_alerts(encoder, settings.knowledge_dir)
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
            f"(ratio {i['ratio']:.0%}) on {i['chunks']} chunks, then the ranker {i['ranker_s']} s (ratio with it "
            f"{i['ratio_with_ranker']:.0%}); unchanged re-index of {i['reindex_unchanged_docs']} "
            f"documents: {i['reindex_unchanged_s']} s (model loaded: {i['reindex_loaded_model']})"
        )
    if "fit" in result:
        f = result["fit"]
        lines.append(
            f"ranker for {f['documents']} documents: {f['queries']} training queries chosen in "
            f"{f['choose_queries_s']} s, embedded in {f['embed_queries_s']} s, fitted in {f['fit_s']} s "
            f"(features {f['features_s']} s, trees {f['boost_s']} s); "
            f"held-back MRR@10 {f['held_back_mrr']} vs fusion {f['held_back_mrr_fused']}"
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
            f"experts: `opsbot index` of {e['incidents']} incidents in {e['index_s']} s ({e['embedded']} texts "
            f"embedded, {e['texts_per_s']}/s against the model's own {e['raw_texts_per_s']}/s; the blend fitted "
            f"in {e['fit_s']} s), unchanged re-index "
            f"{e['reindex_unchanged_s']} s, ranking p50 {e['rank_ms']['p50']:.1f} ms, a second "
            f"`eval --task experts` {e['eval_second_run_s']} s"
        )
    if "slack" in result:
        sl = result["slack"]
        ack = sl["ack_ms"]
        lines.append(
            f"slack @ {sl['chunks']} chunks: ack p50 {ack['p50']:.1f} / p90 {ack['p90']:.1f} / p99 {ack['p99']:.1f} "
            f"/ max {ack['max']:.1f} ms ({sl['acks']} signed /ask, {sl['concurrent']} at a time; index job running: "
            f"{sl['indexing_during_acks']}, niceness {sl['index_niceness']}, {sl['index_cpu_s_during_acks']} s CPU "
            f"in the {sl['acks_s']} s of acks); /ask end to end p50 {sl['ask_end_to_end_ms']['p50']:.1f} / "
            f"p95 {sl['ask_end_to_end_ms']['p95']:.1f} ms"
        )
    if "process" in result:
        pr = result["process"]
        lines.append(
            f"process @ {pr['chunks']} chunks: start to acknowledging {pr['start_to_ack_s']} s, "
            f"start to model and index loaded {pr['start_to_ready_s']} s, peak RSS {pr['peak_rss_mb']} MB"
        )
    if "alerts" in result:
        al = result["alerts"]
        message, brief = al["firing_to_message_ms"], al["firing_to_briefing_ms"]
        lines.append(
            f"alerts: {al['alerts']} alerts in {al['groups']} groups, {al['parallel']} deliveries at a time: firing to "
            f"message p50 {message['p50']:.0f} / p95 {message['p95']:.0f} ms, to briefing posted p50 {brief['p50']:.0f}"
            f" / p95 {brief['p95']:.0f} ms; {al['duplicate_posts']} duplicate posts, {al['lost_groups']} lost groups "
            f"over redeliveries, changes and a second storm through {al['slack_429s']} Slack 429s "
            f"({al['rate_limited_storm_s']} s)"
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


def format_experts_table(result: dict) -> str:
    """The expert evaluation: the learned ranking and the baselines side by side, then what was used."""
    from bot.tools.expert_eval import RANKINGS

    who = "every responder" if result["relevant"] == "all" else "the main resolver"
    lines = [
        f"{result['split']}; relevant: {who}; services: {result['services']}",
        f"{'ranking':<54} {'n':>4} {'top-1':>7} {'top-3':>7} {'MRR':>7}",
    ]
    for name, label in RANKINGS.items():
        m = result["rankings"][name]
        lines.append(f"{label:<54} {m['queries']:>4} {m['top1']:>7.3f} {m['top3']:>7.3f} {m['mrr']:>7.3f}")
    blend = result["blend"]["services" if result["with_services"] else "text"]
    weights = ", ".join(
        f"{k.replace('_', ' ')} {blend[k]:.2f}" for k in blend if k not in ("half_life_days", "neighbours")
    )
    half_life = f"{blend['half_life_days']:.0f} days" if blend["half_life_days"] else "none (no decay)"
    lines.append(f"blend: {weights}; half-life {half_life}; {blend['neighbours']} neighbours")
    lines.append(f"       {result['blend']['how']}")
    unknown = result["unknown_services"]
    if unknown["count"]:
        lines.append(
            f"skipped {unknown['count']} unknown service name(s) in {unknown['queries']} query(s): "
            f"{', '.join(unknown['first'])}{', ...' if unknown['count'] > len(unknown['first']) else ''}"
        )
    if result["skipped_queries"]:
        lines.append(f"skipped {result['skipped_queries']} query(s) with nobody on the roster to find")
    missing = result["unknown_responders"]
    if missing["count"]:
        lines.append(
            f"{missing['count']} responder(s) of past incidents are not on the roster (never suggested): "
            f"{', '.join(missing['first'])}{', ...' if missing['count'] > len(missing['first']) else ''}"
        )
    cache, seconds = result["cache"], result["seconds"]
    lines.append(
        f"embedded {cache['embedded']}, reused {cache['reused']} from the cache; "
        f"{seconds['total']:.1f} s in all (embedding {seconds['embed']:.1f} s, fitting {seconds['fit']:.1f} s)"
    )
    return "\n".join(lines)
