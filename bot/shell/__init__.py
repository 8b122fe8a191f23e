"""`opsbot shell`: opsbot in a terminal, through the same Slack handlers, rendered as text."""
