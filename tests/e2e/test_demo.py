"""The README's first command must keep working: the offline demo exits 0."""

from __future__ import annotations

import pytest

from demo.walkthrough import run_demo


def test_demo_runs_clean(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_demo() == 0
    out = capsys.readouterr().out
    assert "✓ demo finished" in out and "✗" not in out
    assert "application-inference-profile/" in out
