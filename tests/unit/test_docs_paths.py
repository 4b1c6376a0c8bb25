"""Every source path the docs cite exists: a renamed or deleted module fails here, not in a
reader's hands."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
PATH = re.compile(r"(?<![\w/.-])((?:bot|handlers|jobs|demo|tests|bench)/[\w/.-]*?\.py)\b")


def cited_paths(text: str) -> set[str]:
    return set(PATH.findall(text))


def test_the_pattern_finds_paths_and_ignores_lookalikes() -> None:
    text = "see `bot/flows/access.py`, tests/unit/x.py; not mybot/y.py nor bot/pricing.json"
    assert cited_paths(text) == {"bot/flows/access.py", "tests/unit/x.py"}


def test_every_cited_source_path_exists() -> None:
    assert len(PAGES) > 10
    missing = sorted(f"{page.relative_to(ROOT)}: {path}" for page in PAGES
                     for path in cited_paths(page.read_text(encoding="utf-8"))
                     if not (ROOT / path).is_file())
    assert missing == []
