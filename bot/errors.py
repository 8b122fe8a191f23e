"""Errors that users see: each says what is wrong and what to do next."""


class OpsbotError(Exception):
    """Base class for every error opsbot reports to a user."""


class ConfigError(OpsbotError):
    """One or more settings are missing or malformed."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"opsbot is not configured correctly:\n{lines}")


class NotFound(OpsbotError):
    """Something the user named does not exist."""


class InvalidRequest(OpsbotError):
    """The user's input cannot be used as it is."""


class PermissionDenied(OpsbotError):
    """The user may not do this."""


class ModelUnavailable(OpsbotError):
    """The embedding model cannot be loaded."""
