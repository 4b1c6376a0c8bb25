"""The fake Slack Web API for tests is the same stand-in the demo uses."""

from handlers.slack_stub import Call, FakeSlack

__all__ = ["Call", "FakeSlack"]
