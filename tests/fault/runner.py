"""The fault suite's deploy runner: records each run in ./runs.log, prints, sleeps, exits as asked.

services.yaml runs it as ``{python} .../runner.py MODE {service} {version} {env} {request_id}``, in the
working directory of the opsbot process (the scenario's folder). Stdlib only: deploy runners get a minimal
environment, without the test's import path.

The version says how long a run takes and how it ends: ``1.0.3-ms2500`` runs 2.5 s, a version with ``bad``
in it exits 1. MODE ``deploy``/``rollback`` prints a few lines; ``drip`` prints a line every 0.25 s;
``secrets`` prints the PEM key of ./secrets.json one line per 100 ms, then its other lines one per 250 ms
(or as its pem_delay and line_delay say).

runs.log gets ``start REQUEST_ID PID TIME`` when a run starts and ``end REQUEST_ID PID CODE TIME`` when it
ends, each one short write to a file opened for appending, so lines of concurrent runs never mix.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time

MARKER = "runs.log"


def mark(*words: object) -> None:
    line = " ".join(str(w) for w in words) + "\n"
    fd = os.open(MARKER, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def say(line: str) -> None:
    print(line, flush=True)


def main(argv: list[str]) -> int:
    mode, service, version, env, request_id = argv[:5]
    mark("start", request_id, os.getpid(), f"{time.time():.3f}")
    found = re.search(r"ms(\d+)", version)
    seconds = int(found[1]) / 1000 if found else 0.1
    code = 1 if "bad" in version else 0
    say(f"{mode} {service} {version} to {env} (request {request_id})")
    if mode == "secrets":
        with open("secrets.json", encoding="utf-8") as f:
            catalog = json.load(f)
        for line in catalog["pem"]:
            say(line)
            time.sleep(catalog.get("pem_delay", 0.1))
        for line in catalog["lines"]:  # last, and slowly: they are in the log tail and in progress updates
            say(line)
            time.sleep(catalog.get("line_delay", 0.25))
    elif mode == "drip":
        deadline = time.monotonic() + seconds
        n = 0
        while time.monotonic() < deadline:
            n += 1
            say(f"rolling out: step {n}")
            time.sleep(0.25)
    else:
        say(f"rolling out {service} {version}")
        time.sleep(seconds)
    say("health checks passed" if code == 0 else "health check failed")
    mark("end", request_id, os.getpid(), code, f"{time.time():.3f}")
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
