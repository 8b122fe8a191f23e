"""An alert's runbook_url annotation: the runbook whose front-matter `url` it links to is cited first, always."""

from __future__ import annotations

from pathlib import Path

from bot.answers.indexer import index_knowledge
from bot.runtime import Runtime
from bot.store import Store
from bot.text import linked_runbook, slugify
from tests.conftest import FakeEncoder

WIKI = "https://wiki.larder.io/runbooks/"


def test_pages_are_compared_by_host_path_and_query_and_the_fragment_names_the_section() -> None:
    urls = {"runbooks/a.md": "https://Wiki.Larder.io/runbooks/a/", "runbooks/b.md": "https://wiki.larder.io/b?id=7"}
    assert linked_runbook("http://wiki.larder.io/runbooks/a", urls) == ("runbooks/a.md", "")
    assert linked_runbook("https://wiki.larder.io:443/runbooks/a#Mitigation%20steps", urls) == (
        "runbooks/a.md",
        "mitigation steps",
    )
    assert linked_runbook("https://wiki.larder.io/b?id=7", urls) == ("runbooks/b.md", "")
    assert linked_runbook("https://wiki.larder.io/b?id=8", urls) is None
    assert linked_runbook("https://wiki.larder.io:8443/runbooks/a", urls) is None
    assert linked_runbook("not a url", urls) is None and linked_runbook("ftp://wiki.larder.io/b?id=7", urls) is None


def test_the_linked_runbook_is_cited_first_for_every_runbook_whatever_the_alert_says(runtime: Runtime) -> None:
    paths = sorted(runtime.store.db.execute("SELECT path FROM documents WHERE kind = 'runbook'").fetchall())
    assert len(paths) >= 20
    for (path,) in paths:
        runtime.store.db.execute("UPDATE documents SET url = ? WHERE path = ?", [WIKI + path.removesuffix(".md"), path])
    runtime.store.db.conn.commit()
    # The alert's words point at another runbook (the next one); its runbook_url wins in every case.
    misses = []
    for n, (path,) in enumerate(paths):
        other = paths[(n + 1) % len(paths)][0]
        title = runtime.store.db.execute("SELECT title FROM documents WHERE path = ?", [other]).fetchone()[0]
        reply = runtime.answers.reply(f"{title} is firing", runbook_url=WIKI + path.removesuffix(".md"))
        if not reply.runbooks or reply.runbooks[0].path != path:
            misses.append((path, [h.path for h in reply.runbooks]))
    assert misses == []
    # Without a runbook_url, the same words cite the runbook they describe, as `opsbot ask` does.
    title = runtime.store.db.execute("SELECT title FROM documents WHERE path = ?", [paths[0][0]]).fetchone()[0]
    assert runtime.answers.reply(f"{title} is firing").runbooks[0].path == paths[0][0]


def test_headings_are_anchored_as_github_anchors_them_and_a_link_in_either_hosts_style_finds_its_section(
    tmp_path: Path,
) -> None:
    # Before, punctuation became hyphens and `_` or ü were dropped: #raise-max-connections, where GitHub's page
    # (and an alert's runbook_url) says #raise-max_connections; the link opened the top of the page.
    assert slugify("Raise `max_connections`") == "raise-max_connections"
    assert slugify("Roll back / revert") == "roll-back--revert"
    assert slugify("Überprüfung der Verbindungen") == "überprüfung-der-verbindungen"
    assert slugify("Ingress returning 502/503") == "ingress-returning-502503"
    runbook = "# Pool exhausted\n\nIntro.\n\n## Raise `max_connections`\n\nEdit it.\n\n## Roll back / revert\n\nUndo.\n"
    (tmp_path / "k" / "runbooks").mkdir(parents=True)
    (tmp_path / "k" / "runbooks" / "pool.md").write_text(runbook)
    store = Store(tmp_path / "links.db")
    index_knowledge(store, FakeEncoder(), tmp_path / "k")
    anchors = {a: i for i, a in store.db.execute("SELECT id, anchor FROM chunks WHERE doc_path = 'runbooks/pool.md'")}

    assert store.chunk_with_anchor("runbooks/pool.md", "raise-max_connections") == anchors["raise-max_connections"]
    # GitLab writes the same heading's anchor with one hyphen: either finds it
    assert store.chunk_with_anchor("runbooks/pool.md", "roll-back-revert") == anchors["roll-back--revert"]
    assert store.chunk_with_anchor("runbooks/pool.md", "roll-back--revert") == anchors["roll-back--revert"]
    assert store.chunk_with_anchor("runbooks/pool.md", "no-such-section") is None
    store.close()
