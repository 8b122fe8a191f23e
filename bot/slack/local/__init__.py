"""Slack without a workspace: a fake of the Web API on loopback, and the shell's way into the real Bolt app."""
