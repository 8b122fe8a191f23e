"""A harmless stand-in for a real deploy script, so the whole flow can be tried: `python -m bot.demo_deploy`.

It prints the steps a rollout would take and exits 0. A version ending in `-bad` fails, so a
failed deploy and its rollback can be tried too.
"""

from __future__ import annotations

import sys
import time


def main(argv: list[str]) -> int:
    if len(argv) < 4:
        print("usage: python -m bot.demo_deploy SERVICE VERSION ENV REQUEST_ID [deploy|rollback]")
        return 2
    service, version, env, request_id = argv[:4]
    action = argv[4] if len(argv) > 4 else "deploy"
    steps = [
        f"{action} {service} {version} to {env} (request {request_id})",
        f"pulling image registry.larder.example/{service}:{version}",
        "authenticating with token=demo-not-a-real-token",  # shows that secrets are scrubbed from the log
        f"rolling out: 1/3 pods on {version}",
        f"rolling out: 3/3 pods on {version}",
    ]
    for step in steps:
        print(step, flush=True)
        time.sleep(0.05)
    if version.endswith("-bad"):
        print("health check failed: 5xx rate 14% above the 2% limit", flush=True)
        return 1
    print("health checks passed", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
