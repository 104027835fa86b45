"""OpenMP's bounded spin: set before torch loads, never over a user's own choice, and measurable with
benchmarks/search_step.py --busy."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from edgenas.omp import GOMP_SPIN_COUNT, USER_KNOBS, bounded_spin

REPO = Path(__file__).resolve().parents[1]


def test_bounded_spin_is_added_only_where_the_user_chose_nothing():
    env: dict[str, str] = {"PATH": "/bin"}
    assert bounded_spin(env) == {"GOMP_SPINCOUNT": GOMP_SPIN_COUNT, "KMP_BLOCKTIME": "1"}
    assert env["GOMP_SPINCOUNT"] == GOMP_SPIN_COUNT
    for knob in USER_KNOBS:
        chosen = {knob: "passive" if knob == "OMP_WAIT_POLICY" else "7"}
        assert bounded_spin(chosen) == {} and len(chosen) == 1


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in USER_KNOBS}
    return {**env, "PYTHONPATH": str(REPO), **extra}


def test_importing_edgenas_sets_the_spin_before_torch_loads():
    code = "import os, edgenas, torch; print(os.environ.get('GOMP_SPINCOUNT'))"
    out = subprocess.run([sys.executable, "-c", code], env=_clean_env(), capture_output=True, text=True, check=True)
    assert out.stdout.strip() == GOMP_SPIN_COUNT
    # a user's policy wins
    out = subprocess.run([sys.executable, "-c", code], env=_clean_env(OMP_WAIT_POLICY="passive"),
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "None"


def test_search_step_benchmark_reports_the_slowdown_beside_busy_loops():
    spin = "300000"  # libgomp's own default, as before edgenas bounded it
    cmd = [sys.executable, str(REPO / "benchmarks/search_step.py"), "--methods", "darts", "--busy", "1",
           "--channels", "4", "--layers", "2", "--nodes", "2", "--batch", "4", "--hw", "8", "--steps", "1",
           "--warmup", "1", "--spin-count", spin, "--json"]
    out = subprocess.run(cmd, env=_clean_env(), capture_output=True, text=True, timeout=300, check=False)
    assert out.returncode == 0, out.stderr[-2000:]
    doc = json.loads(out.stdout)
    row = doc["rows"][0]
    assert row["quiet_step_s"] > 0 and row["busy_step_s"] > 0
    assert row["slowdown"] == pytest.approx(row["busy_step_s"] / row["quiet_step_s"])
    assert doc["omp"]["GOMP_SPINCOUNT"] == spin
