"""The fault suite's fixtures and its scale (the report is printed and written by tests/conftest.py).

Every test here is marked ``fault``. OPSBOT_FAULT_SCALE=small (the default, as in `make test`) runs each
scenario with small loop counts and leaves out what only a full run can afford (the 30 s hang); `make fault`
runs them at full size (OPSBOT_FAULT_SCALE=full).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fault.harness import ROOT, SCALE, Base, Cluster, build_base, kill_processes, processes_carrying
from tests.fault.report import COLLECTOR

COLLECTOR.scale = SCALE


@pytest.fixture(scope="session")
def fault_base(tmp_path_factory: pytest.TempPathFactory) -> Base:
    """The fault knowledge indexed once; the ONNX export is kept in build/ between sessions."""
    cache = Path(os.environ.get("OPSBOT_FAULT_ONNX_CACHE") or ROOT / "build" / "fault-onnx")
    base = build_base(tmp_path_factory.mktemp("fault-base"), cache)
    COLLECTOR.notes.append(
        f"setup: `opsbot index` of the fault knowledge {base.index_seconds:.1f} s; a cold `opsbot serve` answered "
        f"/healthz after {base.serve_seconds:.1f} s and had its model loaded after {base.ready_seconds:.1f} s "
        "(OPSBOT_ENCODER=onnx, cached export)"
    )
    return base


@pytest.fixture
def cluster(fault_base: Base, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Cluster]:
    """A scenario's folder, database copy, fake Slack behind the proxy; its processes are stopped after."""
    with Cluster(fault_base, tmp_path / "cluster") as c:
        yield c
    # After its processes stopped, nothing started for one of its requests may still run.
    left = processes_carrying([r["id"] for r in c.requests()])
    kill_processes(pid for pid, _ in left)
    if left:
        COLLECTOR.notes.append(f"{request.node.name}: {len(left)} process(es) outlived it: {[p for _, p in left]}")
        pytest.fail(f"processes outlived the scenario: {[cmd for _, cmd in left]}")
