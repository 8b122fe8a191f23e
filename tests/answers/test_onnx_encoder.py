"""OPSBOT_ENCODER=onnx: the same MiniLM model through ONNX Runtime, exported once into a cache folder."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from bot.answers.encoder import OnnxEncoder, SentenceTransformerEncoder, make_encoder
from bot.cli import main
from bot.config import Settings
from bot.errors import ConfigError, ModelUnavailable

pytest.importorskip("onnxruntime")

TEXTS = [
    "pgbouncer says too many clients",
    "  Disk   full on node-3, kubelet evicting pods  ",
    "x509: certificate has expired or is not yet valid",
    "Über-langsame Antworten: café naïve 日本語 🚀",
    "a",
    "",
    "checkout p99 latency high after the deploy " * 80,  # longer than 256 tokens: truncated
]


@pytest.fixture(scope="session")
def onnx_cache(tmp_path_factory: pytest.TempPathFactory, minilm: SentenceTransformerEncoder) -> Path:
    """One export for the whole run (a few seconds)."""
    cache = tmp_path_factory.mktemp("onnx-cache")
    encoder = OnnxEncoder(minilm.model, cache)
    encoder.load()
    assert encoder.exported
    return cache


@pytest.fixture(scope="session")
def onnx(onnx_cache: Path, minilm: SentenceTransformerEncoder) -> OnnxEncoder:
    encoder = OnnxEncoder(minilm.model, onnx_cache)
    encoder.load()
    return encoder


def test_vectors_equal_the_torch_encoder(onnx: OnnxEncoder, minilm: SentenceTransformerEncoder) -> None:
    torch_vectors = minilm.encode(TEXTS, batch_size=3)
    onnx_vectors = onnx.encode(TEXTS, batch_size=3)

    assert onnx_vectors.shape == torch_vectors.shape == (len(TEXTS), 384)
    assert onnx_vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(onnx_vectors, axis=1), 1.0, atol=1e-5)
    assert (onnx_vectors * torch_vectors).sum(axis=1).min() > 1 - 1e-4
    # One at a time (no padding) gives the same vectors as in a padded batch.
    single = np.vstack([onnx.encode([t]) for t in TEXTS])
    assert (single * torch_vectors).sum(axis=1).min() > 1 - 1e-4


def test_same_model_id_so_stored_vectors_are_shared(onnx: OnnxEncoder, minilm: SentenceTransformerEncoder) -> None:
    assert onnx.model_id == minilm.model_id
    assert onnx.dim == minilm.dim


def test_second_construction_reuses_the_export(onnx_cache: Path, minilm: SentenceTransformerEncoder) -> None:
    folder = OnnxEncoder(minilm.model, onnx_cache).folder
    written = (folder / "model.onnx").stat().st_mtime_ns

    again = OnnxEncoder(minilm.model, onnx_cache)
    again.encode(["is the cache used"])

    assert again.loaded and not again.exported
    assert (folder / "model.onnx").stat().st_mtime_ns == written
    assert [p.name for p in onnx_cache.iterdir()] == [folder.name]
    assert not list(folder.glob("*.tmp"))
    assert json.loads((folder / "opsbot-onnx.json").read_text())["max_seq_length"] == 256


def test_missing_onnxruntime_says_how_to_install(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, minilm: SentenceTransformerEncoder
) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import fails
    with pytest.raises(ModelUnavailable, match=r"pip install -c constraints.txt onnxruntime"):
        OnnxEncoder(minilm.model, tmp_path).load()


def test_bad_encoder_setting_is_reported() -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({"OPSBOT_ENCODER": "tensorrt"}, dotenv=None)
    [problem] = caught.value.problems
    assert "OPSBOT_ENCODER='tensorrt'" in problem and "torch, onnx" in problem


def test_bad_encoder_setting_fails_the_command_cleanly(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPSBOT_ENCODER", "gpu")
    result = CliRunner().invoke(main, ["ask", "disk full"])
    assert result.exit_code == 1
    assert "OPSBOT_ENCODER='gpu'" in result.stderr and "Traceback" not in result.output


def test_factory_follows_the_setting(tmp_path: Path) -> None:
    default = Settings.from_env({"OPSBOT_DB": str(tmp_path / "x.db")}, dotenv=None)
    assert default.encoder == "torch"
    assert isinstance(make_encoder(default), SentenceTransformerEncoder)

    onnx = Settings.from_env({"OPSBOT_DB": str(tmp_path / "x.db"), "OPSBOT_ENCODER": "ONNX"}, dotenv=None)
    encoder = make_encoder(onnx)
    assert isinstance(encoder, OnnxEncoder) and not encoder.loaded  # still lazy
    assert encoder.cache_dir == tmp_path / ".opsbot-onnx"  # next to the database by default

    moved = Settings.from_env({"OPSBOT_ENCODER": "onnx", "OPSBOT_ONNX_CACHE": str(tmp_path / "c")}, dotenv=None)
    assert make_encoder(moved).cache_dir == tmp_path / "c"


def test_eval_and_bench_with_onnx(monkeypatch: pytest.MonkeyPatch, onnx_cache: Path, tmp_path: Path) -> None:
    monkeypatch.setenv("OPSBOT_ONNX_CACHE", str(onnx_cache))
    knowledge = tmp_path / "kb"
    (knowledge / "runbooks").mkdir(parents=True)
    (knowledge / "runbooks" / "disk.md").write_text("# Disk full\n\n## Fix\n\nDelete old logs on the node.\n")
    (knowledge / "runbooks" / "tls.md").write_text("# TLS certificate expired\n\n## Fix\n\nRenew it with certbot.\n")
    queries = tmp_path / "q.jsonl"
    queries.write_text(
        json.dumps({"id": "d", "query": "no space left on device", "relevant": ["runbooks/disk.md"]})
        + "\n"
        + json.dumps({"id": "t", "query": "x509 certificate has expired", "relevant": ["runbooks/tls.md"]})
        + "\n"
    )
    result = CliRunner().invoke(
        main, ["eval", "--knowledge", str(knowledge), "--queries", str(queries), "--encoder", "onnx", "--json"]
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["encoder"] == "onnx"
    assert data["modes"]["dense"]["all"]["mrr@10"] == 1.0

    result = CliRunner().invoke(main, ["bench", "search", "--sizes", "20", "--encoder", "onnx", "--json"])
    assert result.exit_code == 0, result.output
    bench = json.loads(result.stdout)
    assert bench["encoder"] == "onnx" and "onnx_exported" not in bench  # the session's export was reused
    assert bench["search"][0]["encode_ms"]["p50"] > 0


def test_onnx_runtimes_threads_stop_spinning_once_an_encode_is_done(
    onnx_cache: Path, minilm: SentenceTransformerEncoder
) -> None:
    # Spinning on after the encode, they held a core the search that follows needs (README "Speed").
    session = OnnxEncoder(minilm.model, onnx_cache).load()
    assert session.get_session_options().get_session_config_entry("session.force_spinning_stop") == "1"
