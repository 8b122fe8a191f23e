"""An alert's runbook_url annotation: the runbook whose front-matter `url` it links to is cited first, always."""

from __future__ import annotations

from bot.runtime import Runtime
from bot.text import linked_runbook

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
