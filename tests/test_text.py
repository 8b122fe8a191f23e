"""Front matter, sections, word windows and the normalisation of alerts and log lines."""

from __future__ import annotations

import pytest

from bot.models import Section
from bot.text import (
    FrontMatter,
    FrontMatterError,
    drop_comments,
    drop_object_refs,
    first_heading,
    keyword_terms,
    normalize_query,
    spell_identifiers,
    split_front_matter,
    split_sections,
    strip_volatile,
    window_words,
)

STOPWORDS = frozenset({"the", "is", "why", "for", "a", "on", "and", "of"})


# -- front matter ------------------------------------------------------------


def test_front_matter_is_parsed_and_body_starts_after_it() -> None:
    text = "---\ntitle: Pool exhausted\nservices: [checkout-api, payments-gateway]\n---\n# Pool exhausted\n\nBody.\n"

    fm = split_front_matter(text)

    assert fm.data == {"title": "Pool exhausted", "services": ["checkout-api", "payments-gateway"]}
    assert fm.body == "# Pool exhausted\n\nBody.\n"
    assert fm.body_line == 5


def test_front_matter_may_close_with_dots_and_use_crlf() -> None:
    fm = split_front_matter("---\r\ntitle: Redis\r\n...\r\nBody\r\n")

    assert fm.data == {"title": "Redis"}
    assert fm.body == "Body\r\n"
    assert fm.body_line == 4


def test_front_matter_below_blank_lines_is_still_front_matter_and_a_rule_there_is_still_body() -> None:
    fm = split_front_matter("\n\n---\ntitle: Dead letters\nalerts: [OrderPipelineDlqGrowing]\n---\n# DLQ\n")

    assert fm.data == {"title": "Dead letters", "alerts": ["OrderPipelineDlqGrowing"]}
    assert (fm.body, fm.body_line) == ("# DLQ\n", 7)
    ruled = "\n---\nSome words, not YAML keys.\n---\nMore.\n"
    assert split_front_matter(ruled) == FrontMatter({}, ruled, 1)


def test_empty_front_matter_gives_empty_data() -> None:
    fm = split_front_matter("---\n---\ntext")

    assert fm.data == {}
    assert fm.body == "text"
    assert fm.body_line == 3


@pytest.mark.parametrize(
    "text", ["# Title\n\nNo front matter.\n", "----\ntitle: x\n----\n", "", "Text --- with dashes"]
)
def test_text_without_front_matter_is_all_body(text: str) -> None:
    fm = split_front_matter(text)

    assert fm.data == {}
    assert fm.body == text
    assert fm.body_line == 1


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ("---\ntitle: x\ntags: db: postgres\n---\nbody", 3),
        ("---\ntitle: x\nservices: [a]\nowners: [U1]\n  bad: indent\n---\nbody", 5),
        ("---\ntitle: 'unclosed\n---\nbody", 3),
    ],
)
def test_broken_yaml_reports_the_line_in_the_file(text: str, line: int) -> None:
    with pytest.raises(FrontMatterError) as caught:
        split_front_matter(text)

    assert caught.value.line == line
    assert str(caught.value).startswith("front matter is not valid YAML: ")


def test_front_matter_that_is_not_a_mapping_is_rejected() -> None:
    with pytest.raises(FrontMatterError) as caught:
        split_front_matter("---\n- checkout-api\n- redis\n---\nbody")

    assert caught.value.line == 2
    assert "must be a mapping" in str(caught.value)


def test_unclosed_front_matter_is_rejected() -> None:
    with pytest.raises(FrontMatterError) as caught:
        split_front_matter("---\ntitle: Stuck\nservices: [x]\n\n# Stuck\n\nText.\n")

    assert caught.value.line == 1
    assert "no closing ---" in str(caught.value)


# -- sections ----------------------------------------------------------------

RUNBOOK = """# Connection pool exhausted

Intro with a [Grafana dashboard](https://grafana.example.com/d/pg-pool) and <b>bold</b> text.

## Diagnosis

Check the pool. Details at https://wiki.example.com/pgbouncer for more.

### Check the pool

```bash
# this is a shell comment, not a heading
kubectl -n payments get pods
```

## Fix ##

Restart pgbouncer.

## Empty section

## Escalate

Page the DBA.

[runbook-ref]: https://wiki.example.com/escalation
"""


def test_sections_carry_heading_paths_without_the_single_h1() -> None:
    sections = split_sections(RUNBOOK, "Connection pool exhausted")

    assert [s.heading for s in sections] == ["", "Diagnosis", "Diagnosis > Check the pool", "Fix", "Escalate"]
    assert [s.anchor for s in sections] == [
        "connection-pool-exhausted",
        "diagnosis",
        "check-the-pool",
        "fix",
        "escalate",
    ]


def test_headings_inside_code_fences_are_code() -> None:
    sections = split_sections(RUNBOOK, "Connection pool exhausted")

    fenced = sections[2]
    assert "# this is a shell comment, not a heading" in fenced.text
    assert "kubectl -n payments get pods" in fenced.text
    assert all("shell comment" not in s.heading for s in sections)


def test_html_and_link_targets_are_cleaned() -> None:
    intro, diagnosis, *_, escalate = split_sections(RUNBOOK, "Connection pool exhausted")

    assert intro.text == "Intro with a Grafana dashboard and bold text."
    assert diagnosis.text == "Check the pool. Details at for more."
    assert escalate.text == "Page the DBA."
    joined = " ".join(s.text for s in split_sections(RUNBOOK, "x"))
    assert "http" not in joined and "<b>" not in joined


def test_html_comments_are_not_indexed_but_code_and_unclosed_comments_are_kept() -> None:
    body = (
        "## Meaning\n\nThe pool is full. <!-- TODO: say which pool -->\n\n"
        "<!--DS: The downstream edition says this.\n\n## Hidden heading\n\nand this.-->\n\n"
        "## Diagnosis\n\n```html\n<!-- a comment in code is code -->\n```\n\nLast words <!-- never closed\n"
    )

    sections = split_sections(body, "Pool")

    assert [s.heading for s in sections] == ["Meaning", "Diagnosis"]
    assert sections[0].text == "The pool is full."
    assert "<!-- a comment in code is code -->" in sections[1].text
    assert sections[1].text.endswith("Last words <!-- never closed")
    assert drop_comments("no comment here") == "no comment here"
    assert first_heading("<!-- # Template title -->\n# PoolFull\n\ntext") == "PoolFull"


def test_a_file_of_unclosed_comment_marks_is_kept_whole() -> None:
    # Each mark once made a search to the end of the text: 200 kB of them took 13 s to index.
    body = "word <!-- " * 20_000

    assert drop_comments(body) == body
    # As a renderer reads it, a comment runs from its mark to the first close after it.
    assert drop_comments("a <!-- b <!-- c\n--> d") == "a \n d"


def test_several_h1_headings_stay_in_the_paths() -> None:
    sections = split_sections("# Prod\n\na\n\n# Staging\n\nb\n\n## Rollback\n\nc\n", "Deploys")

    assert sections == [
        Section("Prod", "a", "prod"),
        Section("Staging", "b", "staging"),
        Section("Staging > Rollback", "c", "rollback"),
    ]


def test_text_without_headings_is_one_section() -> None:
    assert split_sections("Just a paragraph.\n\nAnd another.", "Notes") == [
        Section("", "Just a paragraph.\n\nAnd another.", "")
    ]


def test_sibling_headings_replace_each_other_in_the_path() -> None:
    body = "## A\n\na\n\n### A1\n\na1\n\n### A2\n\na2\n\n## B\n\nb\n\n#### B-deep\n\nd\n"

    assert [s.heading for s in split_sections(body, "t")] == ["A", "A > A1", "A > A2", "B", "B > B-deep"]


# -- windows -----------------------------------------------------------------


def test_short_text_is_one_window() -> None:
    text = " ".join(f"w{i}" for i in range(176))

    assert window_words(text) == [text]


def test_long_text_is_cut_into_overlapping_windows() -> None:
    words = [f"w{i}" for i in range(400)]

    windows = [w.split() for w in window_words(" ".join(words), size=160, overlap=32)]

    assert len(windows) == 3
    assert all(len(w) <= 160 for w in windows)
    assert windows[0][0] == "w0" and windows[-1][-1] == "w399"
    for before, after in zip(windows, windows[1:], strict=False):
        assert before[-32:] == after[:32]
    assert {w for window in windows for w in window} == set(words)


# -- volatile tokens ---------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (
            "KubePodCrashLooping: pod checkout-api-7d9f8c6b5-x2kqp in namespace payments restarted 14 times",
            "KubePodCrashLooping: pod checkout-api in namespace payments restarted times",
        ),
        (
            "PostgresConnectionsNearMax on 10.42.3.17:5432 at 97% for 5m",
            "PostgresConnectionsNearMax on at for",
        ),
        (
            "2025-04-12T19:42:07.123Z ERROR request 3f2b8c1e-9a4d-4e5f-b6c7-d8e9f0a1b2c3 failed after 2.5s",
            "ERROR request failed after",
        ),
        (
            "deploy of 9fceb02d0ae598e95dc970b74767f19372d61af8 (short a1b2c3d) rolled back",
            "deploy of short rolled back",
        ),
        ("latency 1200ms since 2025-04-12 19:42:05,123+02:00 (was 350 ms)", "latency since was"),
        ("redis memory 4.2GiB evicting keys, hit ratio 0.71", "redis memory evicting keys, hit ratio"),
        ("job stuck at 14:32:05, worker 0xdeadbeef", "job stuck at , worker"),
        ("fluent-bit-x2kqp OOMKilled on fe80:0:0:0:1ff:fe23:4567:890a", "fluent-bit OOMKilled on"),
        ('see https://grafana.example.com/d/abc?x=1 for {"status": 503}', "see for status :"),
    ],
)
def test_strip_volatile_removes_what_changes_between_firings(line: str, expected: str) -> None:
    assert strip_volatile(line) == expected


def test_two_firings_of_one_alert_normalise_the_same() -> None:
    first = "[FIRING] KubePodCrashLooping checkout-api-7d9f8c6b5-x2kqp 10.0.3.17 restarts=14 at 2025-04-12T19:42:00Z"
    second = "[FIRING] KubePodCrashLooping checkout-api-5c6b7d8f9-q7r4t 10.0.9.201 restarts=3 at 2025-05-02T03:11:59Z"

    assert normalize_query(first) == normalize_query(second) == "FIRING Kube Pod Crash Looping checkout-api restarts at"


@pytest.mark.parametrize(
    ("name", "words"),
    [
        ("KubePodCrashLooping", "Kube Pod Crash Looping"),
        ("PostgresReplicationLagHigh", "Postgres Replication Lag High"),
        ("TLSEndpointCertExpiringSoon", "TLS Endpoint Cert Expiring Soon"),
        ("CoreDNSErrorsHigh", "Core DNS Errors High"),
        ("KubeContainerOOMKilled", "Kube Container OOM Killed"),
    ],
)
def test_normalize_query_spells_out_camel_case_alert_names(name: str, words: str) -> None:
    assert normalize_query(f"{name} firing for 12m") == f"{words} firing for"


def test_normalize_query_keeps_plain_words_and_upper_case() -> None:
    assert normalize_query("Why is checkout slow? HTTP errors on EU") == "Why is checkout slow? HTTP errors on EU"


@pytest.mark.parametrize("name", ["CdnOrigin5xxHigh", "IngressHigh5xxRate"])
def test_alert_names_with_digits_survive_normalisation(name: str) -> None:
    assert normalize_query(name) == spell_identifiers(name)


def test_pod_suffix_without_digits_is_stripped() -> None:
    assert strip_volatile("pod checkout-api-7d9f8c6b5-kzqwt restarted") == "pod checkout-api restarted"


# -- keyword terms -----------------------------------------------------------


def test_keyword_terms_are_distinct_lower_case_without_stopwords() -> None:
    terms = keyword_terms("Why is KubePodCrashLooping firing for the Checkout API? checkout api", STOPWORDS)

    assert terms == ["kubepodcrashlooping", "firing", "checkout", "api", "kube", "pod", "crash", "looping"]


def test_keyword_terms_skip_numbers_and_single_letters() -> None:
    assert keyword_terms("a 5 x 503 p99 s3 disk", STOPWORDS) == ["p99", "s3", "disk"]


def test_keyword_terms_are_limited() -> None:
    text = " ".join(f"term{i}" for i in range(40))

    assert keyword_terms(text, STOPWORDS, limit=5) == ["term0", "term1", "term2", "term3", "term4"]
    assert len(keyword_terms(text, STOPWORDS)) == 24


# -- object references ---------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("Job checkout/backup-etcd-2901 is taking too long", "Job is taking too long"),
        ("Pod monitoring/prometheus-k8s-0 is crash looping", "Pod is crash looping"),
        ("Deployment default/nginx has not matched its replicas", "Deployment has not matched its replicas"),
        ("StatefulSet kube-system/coredns rollout stuck", "StatefulSet rollout stuck"),
    ],
)
def test_object_references_name_the_instance_and_leave(line: str, expected: str) -> None:
    assert drop_object_refs(line) == expected


@pytest.mark.parametrize(
    "line",
    [
        "read/write errors and/or timeouts on TCP/IP",
        "mounted on /var/lib/kubelet from /dev/mapper/vg0-var",
        "see runbooks/postgres for the pool",
    ],
)
def test_words_with_a_slash_and_paths_are_not_object_references(line: str) -> None:
    assert drop_object_refs(line) == line


# -- hostile input -------------------------------------------------------------


@pytest.mark.parametrize("unit", ["a-", "a.a-", "[a", "![x](", "[](", "<a ", "```\n", "\n", " \n", "<!-- ", "[a]: x "])
def test_a_flood_of_one_markup_fragment_is_read_in_linear_time(unit: str) -> None:
    """40 kB of one fragment, as a broken file or a pasted message may hold: each took seconds to minutes
    when a pattern searched to the end of the text from every position (`a-` 9 s, a fence 10 s)."""
    import signal

    from bot.answers.training import prose_sentences
    from bot.runbook_file import parse_runbook

    def too_slow(*_: object) -> None:
        raise TimeoutError(f"{unit!r} x 20000 took more than 5 s: a pattern backtracks")

    text = unit * 20_000
    previous = signal.signal(signal.SIGALRM, too_slow)
    signal.alarm(5)  # a hang guard, not a measurement: each case takes milliseconds
    try:
        normalize_query(text)
        strip_volatile(text)
        prose_sentences(text)
        try:
            parse_runbook("runbooks/flood.md", "# Flood\n\n" + text)
        except Exception as exc:  # noqa: BLE001 - a flood may be refused; only the time is checked here
            assert "Traceback" not in str(exc)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def test_a_heading_with_a_long_run_of_spaces_is_read_in_linear_time_and_as_before() -> None:
    """A run of spaces inside a heading line made the heading pattern backtrack in cubic time (4,000 spaces: a
    minute; a 10 kB line: a quarter of an hour), in opsbot check, index and eval."""
    import signal

    from bot.runbook_file import parse_runbook
    from bot.text import heading_of

    def too_slow(*_: object) -> None:
        raise TimeoutError("a heading with 20,000 spaces took more than 5 s: the pattern backtracks")

    previous = signal.signal(signal.SIGALRM, too_slow)
    signal.alarm(5)  # a hang guard, not a measurement: it takes milliseconds
    try:
        runbook = parse_runbook("runbooks/x.md", "# Pool" + " " * 20_000 + "exhausted ##\n\n## Steps\n\nRestart.\n")
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    assert runbook.title.startswith("Pool") and runbook.title.endswith("exhausted")
    cases = {
        "## Steps ##": (2, "Steps"),
        "# C#": (1, "C"),
        "# ##": (1, "#"),
        "#   ": (1, ""),
        "# ": None,
        "####### seven": None,
        "#no space": None,
        "### a\t#\t": (3, "a"),
    }
    read = {line: heading_of(line) for line in cases}
    assert {line: found and (found[0], found[1].strip()) for line, found in read.items()} == cases


def test_a_heading_repeated_in_a_page_is_numbered_in_its_anchor_as_code_hosts_number_it() -> None:
    text = "# Queues\n\n## Orders\n\n### Steps\nDrain it.\n\n## Refunds\n\n### Steps\nReplay it.\n\n### Steps\nAgain.\n"
    sections = split_sections(text, "Queues")
    # the empty `## Orders` and `## Refunds` count too: GitHub numbers every heading, with text or not
    assert [(s.heading, s.anchor) for s in sections] == [
        ("Orders > Steps", "steps"),
        ("Refunds > Steps", "steps-1"),
        ("Refunds > Steps", "steps-2"),
    ]


def test_camelcase_words_are_found_in_linear_time_and_as_the_old_pattern_found_them() -> None:
    """The CamelCase patterns backtracked in quadratic time on a long run of letters: a pasted 40,000-character
    token stalled every search for 9 s (under the index's lock), a 64 KB top heading held `opsbot index` a minute."""
    import random
    import re
    import signal

    from bot.runbook_file import heading_alert, parse_runbook
    from bot.text import CAMEL_PART, camel_words, keyword_terms, normalize_query, spell_identifiers

    old_word = re.compile(r"\b[A-Za-z]*[a-z][A-Z][A-Za-z0-9]*\b")  # the patterns replaced, as the oracle
    old_heading = re.compile(
        r"((?=[A-Za-z0-9]*[a-z])[A-Za-z][A-Za-z0-9]*[A-Z][A-Za-z0-9]*)(?:\s*(?:\[[^\]]*\]|\([^)]*\)))?"
    )
    rng = random.Random(7)
    for _ in range(50_000):
        text = "".join(rng.choice("aAbBzZ09_- .é[]()!\tx") for _ in range(rng.randint(0, 14)))
        assert camel_words(text) == [m[0] for m in old_word.finditer(text)], text
        assert spell_identifiers(text) == old_word.sub(lambda m: " ".join(CAMEL_PART.findall(m[0])), text), text
        found = old_heading.fullmatch(text)
        assert heading_alert(text) == (found[1] if found else None), text

    def too_slow(*_: object) -> None:
        raise TimeoutError("CamelCase words of a long token took more than 5 s: the pattern backtracks")

    previous = signal.signal(signal.SIGALRM, too_slow)
    signal.alarm(5)  # a hang guard, not a measurement: it takes milliseconds
    try:
        token = "aB" * 20_000 + "_"
        normalize_query(token)
        keyword_terms(token, frozenset())
        runbook = parse_runbook("runbooks/x.md", "# " + "Ab" * 32_000 + "!\n\n## Steps\n\nRestart.\n")
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    assert runbook.alerts == ()
    assert heading_alert("KubeMacPoolDown [Deprecated]") == "KubeMacPoolDown" and heading_alert("README") is None


def test_terminal_text_shows_what_a_terminal_would_act_on_as_codes() -> None:
    from bot.text import terminal_text

    typed = "title \x1b]0;x\x07 \x1b[2J\u202eevil\u2066 tab\there\nline two é 🚀"
    assert terminal_text(typed) == (
        "title <U+001B>]0;x<U+0007> <U+001B>[2J<U+202E>evil<U+2066> tab\there\nline two é 🚀"
    )
