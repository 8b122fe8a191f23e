"""PyTorch's OpenMP threads, as the encoder loads them: they sleep soon after an encode, not 17 ms later."""

from __future__ import annotations

import os
import subprocess
import sys

from bot.answers.encoder import OPENMP_SPIN
from bot.config import bundled_model_path

SHOW = """
import os, sys
from bot.answers.encoder import SentenceTransformerEncoder
encoder = SentenceTransformerEncoder(sys.argv[1])
encoder.encode(["disk full on node-3"])
import torch
print(os.environ.get("GOMP_SPINCOUNT"), "torch" in sys.modules)
"""


def spin_count_after_load() -> str:
    env = {k: v for k, v in os.environ.items() if k != "GOMP_SPINCOUNT"} | {"HF_HUB_OFFLINE": "1"}
    done = subprocess.run(
        [sys.executable, "-c", SHOW, str(bundled_model_path())], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    value, loaded = done.stdout.split()
    assert loaded == "True"
    return value


def test_the_encoder_shortens_openmp_spinning_before_pytorch_loads() -> None:
    # A value the user set is kept (os.environ.setdefault); loading the model a second time here would cost 5 s.
    assert spin_count_after_load() == OPENMP_SPIN
