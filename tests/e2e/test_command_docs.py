"""Every subcommand in the registry is in the README's command table and in what `/bedrock help`
answers in Slack (the table once lacked `/bedrock digest`)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from bot.clock import FixedClock
from bot.db import Database
from bot.slash.registry import SUBCOMMANDS
from tests.harness import ALICE, Harness, reply_text, running_bot

ROOT = Path(__file__).resolve().parents[2]


def _readme_commands() -> set[str]:
    """The subcommands named in the first column of the README's "Commands in Slack" table."""
    text = (ROOT / "README.md").read_text()
    section = text.split("## Commands in Slack", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `/bedrock")]
    assert rows, "no command table under '## Commands in Slack'"
    return {name for row in rows for name in re.findall(r"`/bedrock ([a-z]+)", row.split(" | ")[0])}


@pytest.fixture
def bot(db: Database, clock: FixedClock) -> Iterator[Harness]:
    with running_bot(db, clock) as h:
        yield h


USAGE = {name: c.usage for name, c in SUBCOMMANDS.items()}


def test_each_usage_line_names_its_own_subcommand() -> None:
    for name, usage in USAGE.items():
        assert usage == f"/bedrock {name}" or usage.startswith(f"/bedrock {name} "), name


def test_every_subcommand_is_in_the_readme_table() -> None:
    documented = _readme_commands()
    assert set(USAGE) - documented == set(), "missing from README.md's command table"
    assert documented - set(USAGE) == set(), "README.md documents a subcommand the parser does not know"


def test_every_subcommand_is_in_slack_help(bot: Harness) -> None:
    answer = reply_text(bot.command("help", user=ALICE))  # anyone may ask
    for name, usage in USAGE.items():
        assert f"`{usage}`" in answer, name
