"""Per-channel answer settings from channels.yaml and from the CLI."""

from __future__ import annotations

import os
from pathlib import Path

from click.testing import CliRunner

from bot.answers.indexer import index_knowledge
from bot.cli import main
from bot.knowledge import load_knowledge
from bot.models import Expert
from bot.store import Store
from tests.conftest import FakeEncoder, invoke


def write_kb(root: Path, channels: str) -> Path:
    (root / "runbooks").mkdir(parents=True)
    (root / "runbooks" / "a.md").write_text("# Disk full\n\nClean the disk.\n", encoding="utf-8")
    (root / "channels.yaml").write_text(channels, encoding="utf-8")
    return root


def test_channels_file_is_read_and_bad_entries_reported_with_their_line(tmp_path: Path) -> None:
    root = write_kb(
        tmp_path / "kb", "channels:\n  C04ALERTS1: all\n  '#general': all\n  C04ONCALL2: sometimes\n  D0DM00001: all\n"
    )
    kb = load_knowledge(root)
    assert kb.channels == {"C04ALERTS1": "all"}
    messages = sorted(str(p) for p in kb.problems)
    assert messages == [
        "channels.yaml:3: '#general' is not a Slack channel id; use the id (like C04ALERTS1: channel details > "
        "About), not the #name",
        "channels.yaml:4: channel C04ONCALL2: 'sometimes' must be `all` or `mentions`",
        "channels.yaml:5: D0DM00001 is a direct message, and opsbot answers every direct message already: "
        "channel settings are for channels (ids starting with C or G)",
    ]


def test_index_applies_the_channels_file(tmp_path: Path) -> None:
    root = write_kb(tmp_path / "kb", "channels:\n  C04ALERTS1: all\n  C04GENERAL: mentions\n")
    store = Store(tmp_path / "o.db")
    index_knowledge(store, FakeEncoder(), root)
    assert store.channel_answer_modes() == {"C04ALERTS1": "all", "C04GENERAL": "mentions"}


def test_a_channel_taken_out_of_the_file_goes_back_to_the_default_and_one_set_by_the_cli_stays(tmp_path: Path) -> None:
    root = write_kb(tmp_path / "kb", "channels:\n  C04ALERTS1: all\n  C04GENERAL: mentions\n")
    store = Store(tmp_path / "o.db")
    index_knowledge(store, FakeEncoder(), root)
    store.set_channel_answer_mode("C04ONCALL2", "all", "cli")

    (root / "channels.yaml").write_text("channels:\n  C04GENERAL: all\n", encoding="utf-8")
    index_knowledge(store, FakeEncoder(), root)
    assert store.channel_answer_modes() == {"C04GENERAL": "all", "C04ONCALL2": "all"}

    (root / "channels.yaml").write_text("channels: [not, a, mapping\n", encoding="utf-8")  # broken: kept as it was
    assert index_knowledge(store, FakeEncoder(), root).problems
    assert store.channel_answer_modes() == {"C04GENERAL": "all", "C04ONCALL2": "all"}

    (root / "channels.yaml").unlink()
    index_knowledge(store, FakeEncoder(), root)
    assert store.channel_answer_modes() == {"C04ONCALL2": "all"}


def test_cli_sets_and_lists_channels_and_refuses_names(tmp_path: Path) -> None:
    Store(os.environ["OPSBOT_DB"]).close()  # made by `opsbot index`
    runner = CliRunner()
    assert "No channel settings" in runner.invoke(main, ["channels", "list"]).output
    result = runner.invoke(main, ["channels", "set", "C04ALERTS1", "all"])
    assert result.exit_code == 0 and "answers questions without a mention" in result.output
    assert runner.invoke(main, ["channels", "list"]).output.strip() == "C04ALERTS1  all"
    bad = runner.invoke(main, ["channels", "set", "#alerts", "all"])
    assert bad.exit_code == 1 and "is not a Slack channel id" in bad.output and "Traceback" not in bad.output
    wrong_mode = runner.invoke(main, ["channels", "set", "C04ALERTS1", "always"])
    assert wrong_mode.exit_code == 2 and "'always' is not one of 'all', 'mentions'" in wrong_mode.output


def test_cli_set_warns_when_channels_yaml_will_set_the_channel_back(tmp_path: Path) -> None:
    Store(os.environ["OPSBOT_DB"]).close()  # made by `opsbot index`
    root = write_kb(tmp_path / "kb", "channels:\n  C04ALERTS1: mentions\n")
    env = {"OPSBOT_KNOWLEDGE": str(root)}
    result = invoke("channels", "set", "C04ALERTS1", "all", env=env)
    assert result.exit_code == 0, result.output
    assert "answers questions without a mention" in result.stdout
    assert "sets C04ALERTS1 to `mentions`, and the next `opsbot index` applies it again" in result.stderr
    same = invoke("channels", "set", "C04ALERTS1", "mentions", env=env)
    assert same.exit_code == 0 and same.stderr == ""
    other = invoke("channels", "set", "C04OTHER01", "all", env=env)
    assert other.exit_code == 0 and other.stderr == ""


def test_feedback_command_lists_votes(tmp_path: Path) -> None:
    store = Store(tmp_path / "opsbot.db")
    store.record_feedback("a1", "U04C2RN8VD", "pgbouncer full", "runbooks/p.md", -1, None)
    store.record_feedback("a2", "U03F8K2LQ1", "latency", "runbooks/l.md", 1, None)
    store.replace_experts([Expert("U03F8K2LQ1", "Priya Raman", "payments")])  # the roster names the voters it has
    store.close()
    runner = CliRunner()
    output = runner.invoke(main, ["feedback"]).output
    assert "👎  U04C2RN8VD  runbooks/p.md  <- 'pgbouncer full'" in output
    assert "👍  Priya Raman (U03F8K2LQ1)  runbooks/l.md  <- 'latency'" in output
    rows = __import__("json").loads(runner.invoke(main, ["feedback", "--json"]).output)
    assert [(r["user"], r["vote"]) for r in rows] == [("U04C2RN8VD", -1), ("U03F8K2LQ1", 1)]
