"""The search step's slowdown beside busy processes is measurable: benchmarks/search_step.py --busy."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_search_step_benchmark_reports_the_slowdown_beside_busy_loops():
    spin = "300000"  # libgomp's own default, set explicitly so the record shows it
    cmd = [sys.executable, str(REPO / "benchmarks/search_step.py"), "--methods", "darts", "--busy", "1",
           "--threads", "auto", "--settle", "1", "--channels", "4", "--layers", "2", "--nodes", "2", "--batch", "4",
           "--hw", "8", "--steps", "1", "--warmup", "1", "--spin-count", spin, "--json"]
    out = subprocess.run(cmd, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True,
                         timeout=300, check=False)
    assert out.returncode == 0, out.stderr[-2000:]
    doc = json.loads(out.stdout)
    row = doc["rows"][0]
    assert row["quiet_step_s"] > 0 and row["busy_step_s"] > 0
    assert row["slowdown"] == pytest.approx(row["busy_step_s"] / row["quiet_step_s"])
    assert doc["omp"]["GOMP_SPINCOUNT"] == spin
    # the workers ran as `edgenas search --threads auto`: each timed step says what count it had
    assert row["threads"] == "auto"
    assert all(1 <= n <= os.cpu_count() for n in row["quiet_threads"] + row["busy_threads"])
