"""`make bench`'s figures: what a bench emits (bench.common.Figures) and the summary table's verdict."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.common import Figures
from bench.summary import main, parse, summarise


def test_figures_emit_lines_to_stdout_and_the_collect_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "figures.tsv"
    monkeypatch.setenv("BENCH_FIGURES", str(out))
    report = Figures("bench_x")
    assert report.add("rate,\t8 threads", "1,234/s", "≥ 1,000/s", True)
    report.add("commit", "3.1 ms")
    assert report.emit() == 0
    lines = out.read_text().splitlines()
    assert lines == ["FIGURE\tbench_x\trate, 8 threads\t1,234/s\t≥ 1,000/s\tpass",
                     "FIGURE\tbench_x\tcommit\t3.1 ms\t—\tinfo"]
    assert lines[0] in capsys.readouterr().out
    assert not report.add("p99", "120 ms", "< 100 ms", False)
    assert report.emit() == 1  # a MISS makes the exit status


def test_summary_fails_on_a_miss_or_a_bench_that_exited_without_one() -> None:
    rows = parse("noise\nFIGURE\tbench_a\tf1\t1/s\t≥ 1/s\tpass\nFIGURE\tbench_b\tf2\t9\t≤ 5\tMISS\n")
    assert len(rows) == 2
    text, ok = summarise(rows, {"bench_a": 0, "bench_b": 1})
    assert not ok and "1 missed" in text  # bench_b's exit 1 is explained by its MISS row
    text, ok = summarise(rows[:1], {"bench_a": 0, "bench_c": 2, "bench_d": 0})
    assert not ok and "(exited 2, no figures reported)" in text and "(no figures reported)" in text
    assert summarise(rows[:1], {"bench_a": 0})[1]


def test_summary_main_exit_status(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    figures = tmp_path / "f.tsv"
    figures.write_text("FIGURE\tbench_a\tf1\t1/s\t≥ 1/s\tpass\n")
    assert main([str(figures), "bench/bench_a.py=0"]) == 0
    assert main([str(figures), "bench/bench_a.py=1"]) == 1
    assert main([str(figures), "not-a-status"]) == 2
    assert "bench_a" in capsys.readouterr().out
