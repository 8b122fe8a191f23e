"""opsbot: a ChatOps assistant for Slack that answers from your runbooks and past incidents."""

__version__ = "0.1.0"
