"""The Slack adapter: everything that speaks to Slack lives in this package."""
