"""Benchmarks of the Slack side: acknowledgement latency under load, end-to-end /ask, process start."""

from __future__ import annotations

import json
import os
import random
import secrets
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bot.answers.encoder import SentenceTransformerEncoder
from bot.slack.local.fake_api import FakeSlackAPI
from bot.slack.local.shell_dispatch import sign
from bot.store import Store
from bot.tools.bench import Timing, _write_runbooks, fill_store, synthetic_documents, synthetic_sentence


def _post_command(url: str, secret: str, text: str, response_url: str) -> float:
    """Send one signed /ask as Slack would; seconds until the acknowledgement came back."""
    body = urllib.parse.urlencode(
        {
            "command": "/ask",
            "text": text,
            "user_id": "U0BENCH001",
            "channel_id": "C0BENCH001",
            "team_id": "T0BENCH",
            "response_url": response_url,
            "trigger_id": "t",
        }
    )
    ts = int(time.time())
    request = urllib.request.Request(
        url,
        data=body.encode(),
        method="POST",
        headers={
            "Content-Type": "application/x-www-form-urlencoded",
            "X-Slack-Request-Timestamp": str(ts),
            "X-Slack-Signature": sign(body, ts, secret),
        },
    )
    started = time.perf_counter()
    with urllib.request.urlopen(request, timeout=30) as response:
        response.read()
    return time.perf_counter() - started


def bench_slack(
    encoder: SentenceTransformerEncoder,
    chunks: int = 10000,
    concurrent: int = 50,
    rounds: int = 20,
    e2e: int = 30,
    index_while: bool = True,
) -> dict:
    """Ack p50/p99 of signed slash commands, `concurrent` at a time, to an `opsbot serve` process while an
    `opsbot index` process (as users run it, at its default niceness) embeds; then /ask end to end, from
    the request to the answer reaching Slack. ``rounds`` of 20 give 1,000 acks: p99 is the 10th slowest."""
    secret = secrets.token_hex(16)
    rng = random.Random(9)
    with tempfile.TemporaryDirectory(prefix="opsbot-bench-slack-") as tmp, FakeSlackAPI() as api:
        store = Store(Path(tmp) / "bench.db")
        fill_store(store, synthetic_documents(chunks), encoder.model_id, encoder.dim)
        store.set_meta("model", encoder.model_id)
        store.close()
        kb = Path(tmp) / "kb"
        _write_runbooks(kb, synthetic_documents(600, seed=11))
        port = _free_port()
        env = _serve_env(api, Path(tmp) / "bench.db", encoder, secret)
        server = _start_serve(env, port, tmp)
        indexer = None
        try:
            _wait_ready(port)
            url = f"http://127.0.0.1:{port}/slack/events"
            if index_while:
                index_env = env | {"OPSBOT_DB": str(Path(tmp) / "index.db")}
                indexer = subprocess.Popen(
                    [sys.executable, "-m", "bot", "index", str(kb)],
                    env=index_env,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    cwd=tmp,
                )
                time.sleep(8)  # past loading the model: embedding, on both cores
            acks: list[float] = []
            index_cpu_before = _cpu_seconds(indexer.pid) if indexer is not None else None
            acks_started = time.perf_counter()
            with ThreadPoolExecutor(max_workers=concurrent) as pool:
                for r in range(rounds):
                    futures = [
                        pool.submit(_post_command, url, secret, synthetic_sentence(rng), api.response_url(f"a{r}-{n}"))
                        for n in range(concurrent)
                    ]
                    acks.extend(f.result() * 1000 for f in futures)
            acks_seconds = time.perf_counter() - acks_started
            was_indexing = indexer is not None and indexer.poll() is None
            index_cpu = index_niceness = None
            if indexer is not None and was_indexing:
                index_cpu_after = _cpu_seconds(indexer.pid)  # CPU it used during the acks: it was embedding
                if index_cpu_before is not None and index_cpu_after is not None:
                    index_cpu = round(index_cpu_after - index_cpu_before, 2)
                index_niceness = _niceness(indexer.pid)
            if indexer is not None:
                indexer.wait(timeout=600)
            api.wait_for("response_url", count=rounds * concurrent, timeout=300)
            latencies = []
            for n in range(e2e):
                name = f"e2e-{n}"
                started = time.perf_counter()
                _post_command(url, secret, synthetic_sentence(rng), api.response_url(name))
                api.wait_for("response_url", timeout=60, predicate=lambda c, name=name: c.path.endswith(name))
                latencies.append((time.perf_counter() - started) * 1000)
        finally:
            if indexer is not None and indexer.poll() is None:
                indexer.kill()
            server.terminate()
            server.wait(timeout=10)
    ordered = sorted(acks)
    return {
        "chunks": chunks,
        "concurrent": concurrent,
        "acks": len(acks),
        "indexing_during_acks": was_indexing,
        "acks_s": round(acks_seconds, 2),
        "index_cpu_s_during_acks": index_cpu,
        "index_niceness": index_niceness,
        "ack_ms": {
            "p50": Timing.of(acks).p50,
            "p90": ordered[int(len(ordered) * 0.90)],
            "p99": ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))],
            "max": ordered[-1],
        },
        "ask_end_to_end_ms": Timing.of(latencies).__dict__,
    }


def _serve_env(api: FakeSlackAPI, db: Path, encoder: SentenceTransformerEncoder, secret: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLACK_", "OPSBOT_"))}
    return env | {
        "SLACK_BOT_TOKEN": "xoxb-bench",
        "SLACK_SIGNING_SECRET": secret,
        "SLACK_API_URL": api.url,
        "OPSBOT_DB": str(db),
        "OPSBOT_MODEL": encoder.model,
        "OPSBOT_ENCODER": getattr(encoder, "backend", "torch"),
        **({"OPSBOT_ONNX_CACHE": str(encoder.cache_dir)} if hasattr(encoder, "cache_dir") else {}),
        "OPSBOT_LOG_LEVEL": "WARNING",
    }


def _start_serve(env: dict[str, str], port: int, cwd: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "bot", "serve", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=cwd,
    )


def _wait_ready(port: int, timeout: float = 300) -> tuple[float | None, float | None]:
    """Seconds until /healthz answered, and until it said the model and index were loaded."""
    started = time.perf_counter()
    first = None
    while time.perf_counter() - started < timeout:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as response:
                state = json.loads(response.read())
        except urllib.error.HTTPError as error:  # 503 until the model is loaded: answering all the same
            state = json.loads(error.read())
        except OSError:
            state = None
        if state is not None:
            first = first or time.perf_counter() - started
            if state["ready"]:
                return first, time.perf_counter() - started
        time.sleep(0.02)
    return first, None


def bench_process(encoder: SentenceTransformerEncoder, chunks: int = 100000) -> dict:
    """`opsbot serve` as a process: start to acknowledging, start to model loaded, and its peak RSS."""
    with tempfile.TemporaryDirectory(prefix="opsbot-bench-proc-") as tmp, FakeSlackAPI() as api:
        store = Store(Path(tmp) / "serve.db")
        fill_store(store, synthetic_documents(chunks), encoder.model_id, encoder.dim)
        store.set_meta("model", encoder.model_id)
        store.close()
        port = _free_port()
        process = _start_serve(_serve_env(api, Path(tmp) / "serve.db", encoder, "bench"), port, tmp)
        try:
            first, ready = _wait_ready(port)
            peak = _peak_rss_mb(process.pid)
        finally:
            process.terminate()
            process.wait(timeout=10)
    return {
        "chunks": chunks,
        "start_to_ack_s": first and round(first, 2),
        "start_to_ready_s": ready and round(ready, 2),
        "peak_rss_mb": peak,
    }


def _proc_stat(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name (Linux), or None."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def _cpu_seconds(pid: int) -> float | None:
    fields = _proc_stat(pid)
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK") if fields else None


def _niceness(pid: int) -> int | None:
    fields = _proc_stat(pid)
    return int(fields[16]) if fields else None


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _peak_rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        return None
    return None
