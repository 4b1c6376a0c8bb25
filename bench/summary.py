"""The table `make bench` ends with: every figure every bench reported, and the benches that failed.

    python bench/summary.py FIGURES_FILE bench_a.py=0 bench_b.py=1 …

FIGURES_FILE holds the `FIGURE` lines the benches appended (`bench.common.Figures.emit`, through
`BENCH_FIGURES`); each further argument is a bench script and its exit status. A bench that exited
non-zero without reporting a MISS (it crashed, or does not use `Figures` yet) gets a row of its own.
Exits 1 when any figure missed or any bench exited non-zero. Not a benchmark (no `bench_` prefix).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import FIGURE_PREFIX


def parse(text: str) -> list[tuple[str, ...]]:
    rows = []
    for line in text.splitlines():
        parts = line.split("\t")
        if parts[0] == FIGURE_PREFIX and len(parts) == 6:
            rows.append(tuple(parts[1:]))
    return rows


def summarise(figures: list[tuple[str, ...]], statuses: dict[str, int]) -> tuple[str, bool]:
    rows = [list(r) for r in figures]
    for bench, status in statuses.items():
        mine = [r for r in figures if r[0] == bench]
        if status != 0 and not any(r[4] == "MISS" for r in mine):
            rows.append([bench, f"(exited {status}{'' if mine else ', no figures reported'})", "—", "—",
                         "MISS"])
        elif not mine:
            rows.append([bench, "(no figures reported)", "—", "—", "info"])
    ok = not any(r[4] == "MISS" for r in rows)
    missed = sum(1 for r in rows if r[4] == "MISS")
    text = _table(("bench", "figure", "value", "target", "result"), rows)
    return f"{text}\n\n{len(rows)} rows, {missed} missed", ok


def _table(header: tuple[str, ...], rows: list[list[str]]) -> str:
    """Markdown, bench and figure left-aligned, the rest right-aligned."""
    cells = [list(header), *rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]

    def line(row: list[str]) -> str:
        return "| " + " | ".join(c.ljust(w) if i < 2 else c.rjust(w)
                                 for i, (c, w) in enumerate(zip(row, widths, strict=True))) + " |"

    rule = "|" + "|".join("-" * (w + 1) + (":" if i >= 2 else "-") for i, w in enumerate(widths)) + "|"
    return "\n".join([line(cells[0]), rule, *(line(r) for r in cells[1:])])


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    path = Path(argv[0])
    figures = parse(path.read_text(encoding="utf-8")) if path.exists() else []
    statuses: dict[str, int] = {}
    for arg in argv[1:]:
        script, _, status = arg.rpartition("=")
        if not script or not status.lstrip("-").isdigit():
            print(f"not SCRIPT=STATUS: {arg!r}", file=sys.stderr)
            return 2
        statuses[Path(script).stem] = int(status)
    text, ok = summarise(figures, statuses)
    print(text)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
