"""Settings.from_env: defaults, every problem reported at once, .env files, masked secrets."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from bot.config import Secret, Settings, bundled_model_path
from bot.errors import ConfigError

TOKEN = "xoxb-1234567890-0987654321-AbCdEfGhIjKlMnOpQrStUvWx"


def config_problems(env: dict[str, str], dotenv: Path | None = None) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        Settings.from_env(env, dotenv=dotenv)
    return caught.value.problems


def model_folder(path: Path, *files: str) -> Path:
    path.mkdir()
    for name in files:
        (path / name).write_text("{}", encoding="utf-8")
    return path


def test_defaults_from_an_empty_environment() -> None:
    settings = Settings.from_env({}, dotenv=None)

    assert settings.knowledge_dir == Path("./knowledge")
    assert settings.db_path == Path("./opsbot.db")
    bundled = bundled_model_path()
    assert bundled is not None
    assert settings.model == str(bundled)
    assert settings.model_is_local
    assert settings.top_k == 5
    assert settings.log_level == "INFO"
    assert settings.port == 3000
    assert settings.slack_api_url == "https://slack.com/api/"
    assert settings.slack_bot_token == ""


def test_explicit_env_ignores_the_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPSBOT_TOP_K", "12")

    assert Settings.from_env({}, dotenv=None).top_k == 5


def test_valid_settings_are_parsed(tmp_path: Path) -> None:
    (tmp_path / "kb").mkdir()
    (tmp_path / "data").mkdir()
    env = {
        "OPSBOT_KNOWLEDGE": str(tmp_path / "kb"),
        "OPSBOT_DB": str(tmp_path / "data" / "bot.db"),
        "OPSBOT_MODEL": "sentence-transformers/all-MiniLM-L6-v2",
        "OPSBOT_TOP_K": "8",
        "OPSBOT_LOG_LEVEL": "debug",
        "SLACK_API_URL": "http://127.0.0.1:8123/api",
        "PORT": "8080",
        "SLACK_BOT_TOKEN": TOKEN,
    }

    settings = Settings.from_env(env, dotenv=None)

    assert settings.knowledge_dir == tmp_path / "kb"
    assert settings.db_path == tmp_path / "data" / "bot.db"
    assert settings.model == "sentence-transformers/all-MiniLM-L6-v2"
    assert not settings.model_is_local
    assert settings.top_k == 8
    assert settings.log_level == "DEBUG"
    assert settings.slack_api_url == "http://127.0.0.1:8123/api/"
    assert settings.port == 8080
    assert isinstance(settings.slack_bot_token, Secret)
    assert str(settings.slack_bot_token) == TOKEN


def test_every_malformed_setting_is_reported_at_once(tmp_path: Path) -> None:
    env = {
        "OPSBOT_TOP_K": "ten",
        "OPSBOT_DB": str(tmp_path / "missing-folder" / "opsbot.db"),
        "OPSBOT_MODEL": str(tmp_path / "no-such-model"),
        "OPSBOT_LOG_LEVEL": "LOUD",
        "SLACK_API_URL": "slack.com/api/",
    }

    problems = config_problems(env)

    assert len(problems) == 5
    by_name = {name: [p for p in problems if p.startswith(name + "=")] for name in env}
    assert all(len(found) == 1 for found in by_name.values()), problems
    top_k, db, model, level, url = (by_name[name][0] for name in env)
    assert "'ten' is not a whole number" in top_k and "from 1 to 50" in top_k
    assert "missing-folder" in db and "does not exist" in db and "create it or choose another path" in db
    assert "no-such-model" in model and "does not exist" in model and "model folder or a hub name" in model
    assert "'LOUD'" in level and "DEBUG, INFO, WARNING, ERROR" in level
    assert "'slack.com/api/'" in url and "must start with http:// or https://" in url


def test_config_error_message_lists_every_problem(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({"OPSBOT_TOP_K": "0", "PORT": "70000"}, dotenv=None)

    message = str(caught.value)
    assert message.startswith("opsbot is not configured correctly:")
    assert "  - OPSBOT_TOP_K=0 is out of range; use a value from 1 to 50." in message
    assert "  - PORT=70000 is out of range; use a value from 1 to 65535." in message


def test_stop_grace_period_defaults_under_the_platforms_kill_and_is_checked() -> None:
    assert Settings.from_env({}, dotenv=None, require_model=False).stop_grace_s == 20
    assert Settings.from_env({"OPSBOT_STOP_GRACE_S": "45"}, dotenv=None, require_model=False).stop_grace_s == 45
    (problem,) = config_problems({"OPSBOT_STOP_GRACE_S": "0"})
    assert problem == "OPSBOT_STOP_GRACE_S=0 is out of range; use a value from 1 to 3600."


@pytest.mark.parametrize("value", ["0", "51", "-3", "5.5", "five"])
def test_top_k_outside_its_range_is_rejected(value: str) -> None:
    (problem,) = config_problems({"OPSBOT_TOP_K": value})

    assert problem.startswith("OPSBOT_TOP_K=")
    assert "use a value from 1 to 50" in problem


@pytest.mark.parametrize("value", ["1", "1.0", "-0.1", "high"])
def test_min_similarity_outside_its_range_says_the_range_it_takes(value: str) -> None:
    # Before, 1 was refused as not "a number from 0 to 1".
    (problem,) = config_problems({"OPSBOT_MIN_SIMILARITY": value})

    assert problem.startswith(f"OPSBOT_MIN_SIMILARITY='{value}'")
    assert "from 0 up to, not including, 1" in problem


def test_db_path_that_is_a_directory_is_rejected(tmp_path: Path) -> None:
    (problem,) = config_problems({"OPSBOT_DB": str(tmp_path)})

    assert "is a directory" in problem and "give a file path" in problem


def test_knowledge_dir_that_does_not_exist_is_rejected(tmp_path: Path) -> None:
    (problem,) = config_problems({"OPSBOT_KNOWLEDGE": str(tmp_path / "nope")})

    assert problem.startswith("OPSBOT_KNOWLEDGE=")
    assert "is not a directory" in problem and "runbooks/" in problem


def test_empty_knowledge_setting_means_the_default() -> None:
    assert not Path("knowledge").exists()

    assert Settings.from_env({"OPSBOT_KNOWLEDGE": ""}, dotenv=None) == Settings.from_env({}, dotenv=None)


def test_model_folder_without_model_files_is_rejected(tmp_path: Path) -> None:
    folder = model_folder(tmp_path / "empty-model")

    (problem,) = config_problems({"OPSBOT_MODEL": str(folder)})

    assert problem.startswith("OPSBOT_MODEL=")
    assert "not a sentence-transformers model folder" in problem


@pytest.mark.parametrize("marker", ["modules.json", "config.json"])
def test_local_model_folder_is_accepted(tmp_path: Path, marker: str) -> None:
    folder = model_folder(tmp_path / "my-model", marker)

    settings = Settings.from_env({"OPSBOT_MODEL": str(folder)}, dotenv=None)

    assert settings.model == str(folder)
    assert settings.model_is_local


def test_dotenv_file_is_read(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text(
        f"OPSBOT_TOP_K=7\nOPSBOT_LOG_LEVEL=warning\nSLACK_BOT_TOKEN={TOKEN}\n", encoding="utf-8"
    )

    settings = Settings.from_env({})

    assert settings.top_k == 7
    assert settings.log_level == "WARNING"
    assert str(settings.slack_bot_token) == TOKEN


def test_explicit_env_wins_over_dotenv(tmp_path: Path) -> None:
    dotenv = tmp_path / "custom.env"
    dotenv.write_text("OPSBOT_TOP_K=7\nOPSBOT_LOG_LEVEL=DEBUG\n", encoding="utf-8")

    settings = Settings.from_env({"OPSBOT_TOP_K": "9"}, dotenv=dotenv)

    assert settings.top_k == 9
    assert settings.log_level == "DEBUG"


def test_real_environment_wins_over_dotenv(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / ".env").write_text("OPSBOT_TOP_K=7\nPORT=4000\n", encoding="utf-8")
    monkeypatch.setenv("OPSBOT_TOP_K", "11")

    settings = Settings.from_env()

    assert settings.top_k == 11
    assert settings.port == 4000
    assert settings.db_path == tmp_path / "opsbot.db"


def test_dotenv_is_skipped_when_disabled(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("OPSBOT_TOP_K=7\n", encoding="utf-8")

    assert Settings.from_env({}, dotenv=None).top_k == 5


def test_malformed_dotenv_values_are_reported(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("OPSBOT_TOP_K=lots\nOPSBOT_LOG_LEVEL=chatty\n", encoding="utf-8")

    problems = config_problems({}, dotenv=tmp_path / ".env")

    assert [p.split("=", 1)[0] for p in problems] == ["OPSBOT_TOP_K", "OPSBOT_LOG_LEVEL"]


def test_secret_repr_never_shows_the_token() -> None:
    secret = Secret(TOKEN)

    assert TOKEN not in repr(secret)
    assert repr(secret) == "Secret('********')"
    assert repr(Secret("")) == "Secret('')"
    assert secret == TOKEN


def test_settings_repr_never_shows_tokens() -> None:
    env = {
        "SLACK_BOT_TOKEN": TOKEN,
        "SLACK_SIGNING_SECRET": "8f14e45fceea167a5a36dedd4bea2543",
        "SLACK_APP_TOKEN": "xapp-1-A-1",
    }

    settings = Settings.from_env(env, dotenv=None)

    text = f"{settings!r} {settings} {[settings.slack_bot_token]}"
    for value in env.values():
        assert value not in text
    assert "Secret('********')" in text


def test_the_alertmanager_token_is_a_long_secret_or_unset() -> None:
    assert not Settings.from_env({}, dotenv=None).alertmanager_token
    token = "0123456789abcdef0123"
    settings = Settings.from_env({"OPSBOT_ALERTMANAGER_TOKEN": token}, dotenv=None)
    assert str(settings.alertmanager_token) == token and token not in repr(settings)
    for bad in ("short", f" {token}"):
        with pytest.raises(ConfigError, match="OPSBOT_ALERTMANAGER_TOKEN must be at least 16 characters"):
            Settings.from_env({"OPSBOT_ALERTMANAGER_TOKEN": bad}, dotenv=None)
    # Before, these passed, and no delivery could ever match them (headers arrive decoded as latin-1).
    for bad in ("pässwörd-0123456789", "0123456789abcdef\x07"):
        with pytest.raises(
            ConfigError, match="OPSBOT_ALERTMANAGER_TOKEN holds a character that is not printable ASCII"
        ):
            Settings.from_env({"OPSBOT_ALERTMANAGER_TOKEN": bad}, dotenv=None)


def test_the_hook_secret_is_a_long_secret_without_spaces_around_it() -> None:
    secret = "0123456789abcdef"
    assert str(Settings.from_env({"OPSBOT_HOOK_SECRET": secret}, dotenv=None).hook_secret) == secret
    for bad in ("short", " " * 16, f"{secret}\n", f" {secret}"):
        with pytest.raises(ConfigError, match="OPSBOT_HOOK_SECRET must be at least 16 characters without spaces"):
            Settings.from_env({"OPSBOT_HOOK_SECRET": bad}, dotenv=None)


def test_slack_credentials_with_a_newline_around_them_or_of_the_wrong_kind_are_refused() -> None:
    good = {"SLACK_BOT_TOKEN": "xoxb-1-2-abc", "SLACK_APP_TOKEN": "xapp-1-A1-abc", "SLACK_SIGNING_SECRET": "8f3c0a"}
    assert str(Settings.from_env(good, dotenv=None).slack_app_token) == "xapp-1-A1-abc"
    rotating = good | {"SLACK_BOT_TOKEN": "xoxe.xoxb-1-abc"}  # a bot token with token rotation on
    assert str(Settings.from_env(rotating, dotenv=None).slack_bot_token) == "xoxe.xoxb-1-abc"
    for name, bad, says in [
        ("SLACK_SIGNING_SECRET", "8f3c0a\n", "SLACK_SIGNING_SECRET has spaces or a newline around it"),
        ("SLACK_BOT_TOKEN", " xoxb-1-2-abc", "SLACK_BOT_TOKEN has spaces or a newline around it"),
        ("SLACK_APP_TOKEN", "xoxb-1-2-abc", "SLACK_APP_TOKEN must start with xapp- (an app-level token"),
        ("SLACK_BOT_TOKEN", "xapp-1-A1-abc", "SLACK_BOT_TOKEN must start with xoxb- (the Bot User OAuth Token"),
    ]:
        with pytest.raises(ConfigError, match=re.escape(says)):
            Settings.from_env(good | {name: bad}, dotenv=None)


def test_a_path_whose_tilde_cannot_be_expanded_is_a_problem_naming_its_setting() -> None:
    env = {
        "OPSBOT_KNOWLEDGE": "~nosuchuser-opsbot/knowledge",
        "OPSBOT_DB": "~nosuchuser-opsbot/opsbot.db",
        "OPSBOT_MODEL": "~nosuchuser-opsbot/model",
        "OPSBOT_ONNX_CACHE": "~nosuchuser-opsbot/onnx",
    }

    problems = config_problems(env)

    for name in env:
        assert (
            f"{name}={env[name]!r}: cannot expand ~ (no such user, or no home directory); give an absolute path."
            in (problems)
        )
    assert len(problems) == 4


def test_a_home_path_without_a_home_directory_is_a_problem(monkeypatch: pytest.MonkeyPatch) -> None:
    """An arbitrary uid in a container (OpenShift): no HOME variable and no passwd entry to find a home in."""
    import pwd

    def no_entry(uid: int) -> pwd.struct_passwd:
        raise KeyError(f"getpwuid(): uid not found: {uid}")

    monkeypatch.delenv("HOME", raising=False)
    monkeypatch.setattr(pwd, "getpwuid", no_entry)

    problems = config_problems({"OPSBOT_DB": "~/opsbot.db"})

    assert problems == [
        "OPSBOT_DB='~/opsbot.db': cannot expand ~ (no such user, or no home directory); give an absolute path."
    ]


@pytest.mark.parametrize(
    "content",
    [
        "\ufeffOPSBOT_TOP_K=7\n".encode("utf-16-le"),  # PowerShell 5's `echo ... > .env`
        "# mot de passe généré\nOPSBOT_TOP_K=7\n".encode("latin-1"),
    ],
)
def test_a_dotenv_that_is_not_utf8_is_a_problem_naming_the_file(tmp_path: Path, content: bytes) -> None:
    dotenv = tmp_path / ".env"
    dotenv.write_bytes(content)

    problem, other = config_problems({"OPSBOT_TOP_K": "0"}, dotenv=dotenv)  # the others are still checked

    assert problem.startswith(f"{dotenv}: not readable as UTF-8 text (")
    assert problem.endswith("); save it as UTF-8, or remove it.")
    assert other.startswith("OPSBOT_TOP_K=0 is out of range")
