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


CITED_TEST = re.compile(r"(test_\w+\.py)?::(test_\w+)")


def cited_tests(line: str) -> list[tuple[str, str]]:
    """`file.py::test_a`, `::test_b` on one line: a bare `::test_b` is in the file named before it."""
    out, current = [], ""
    for m in CITED_TEST.finditer(line):
        current = m.group(1) or current
        out.append((current, m.group(2)))
    return out


def test_a_bare_citation_belongs_to_the_file_named_before_it() -> None:
    line = "`test_a.py::test_one`, `::test_two`; `test_b.py::test_three`"
    assert cited_tests(line) == [("test_a.py", "test_one"), ("test_a.py", "test_two"),
                                 ("test_b.py", "test_three")]


def test_every_cited_test_exists_in_the_file_cited() -> None:
    sources = {p.name: p.read_text(encoding="utf-8") for p in (ROOT / "tests").rglob("test_*.py")}
    wrong = sorted(f"{page.relative_to(ROOT)}:{n}: {file}::{name}"
                   for page in PAGES
                   for n, line in enumerate(page.read_text(encoding="utf-8").splitlines(), 1)
                   for file, name in cited_tests(line)
                   if not re.search(rf"def {name}\b", sources.get(file, "")))
    assert wrong == []
