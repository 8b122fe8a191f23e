"""Pure functions that build Block Kit (and mrkdwn) from domain values; no Slack calls, no state."""
