"""The one check every bad-input CLI test makes (imported by the test modules)."""

from __future__ import annotations

from typing import Any


def assert_clean_failure(result: Any, *needles: str) -> None:
    """Exit 2, exactly one line on stderr starting ``error:`` and naming the problem, no traceback."""
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for n in needles:
        assert n in lines[0], (n, lines[0])
