"""How long OpenMP threads spin before they sleep: set before the OpenMP runtime loads.

PyTorch's CPU kernels run on OpenMP (libgomp in the official Linux wheels; Intel's libiomp in some
builds). Between parallel regions an idle thread spins, waiting for the next region, before it
sleeps. On a quiet machine that saves a futex wake-up per region, and a search step runs
thousands of small regions. On a machine shared with other busy processes the spinning thread
takes CPU time from the sibling that holds the work (or from the other process, which then
preempts the sibling for longer), and every region's barrier waits for the slowest thread.

libgomp's default (``OMP_WAIT_POLICY`` unset) spins 300,000 iterations; ``passive`` never spins.
A short bounded spin keeps the quick hand-over between back-to-back regions and gives the core
away soon when the sibling is not coming (``benchmarks/search_step.py --busy`` measures both
sides). Both runtimes read their settings once, when the library loads, so this module sets them
in the environment before ``torch`` is imported (``edgenas/__init__.py``), and only where the user
set none of them.
"""

from __future__ import annotations

import os
import sys
from collections.abc import MutableMapping

#: libgomp: iterations a waiting thread spins before it sleeps (libgomp's own default: 300000).
GOMP_SPIN_COUNT = "10000"
#: Intel OpenMP: milliseconds a thread spins before it sleeps (its default: 200).
KMP_BLOCK_TIME = "1"
#: Settings through which a user chooses a policy; any of them set means edgenas sets nothing.
USER_KNOBS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")
#: What :func:`apply` put into this process's environment (a child given its own policy drops it).
ADDED: dict[str, str] = {}


def bounded_spin(env: MutableMapping[str, str]) -> dict[str, str]:
    """Add the bounded-spin settings to ``env`` unless the user chose a policy; returns what was added."""
    if any(k in env for k in USER_KNOBS):
        return {}
    added = {"GOMP_SPINCOUNT": GOMP_SPIN_COUNT, "KMP_BLOCKTIME": KMP_BLOCK_TIME}
    env.update(added)
    return added


def apply() -> dict[str, str]:
    """Set the defaults in this process's environment; without effect (and so skipped) once torch,
    and with it the OpenMP runtime, is loaded."""
    if "torch" in sys.modules:
        return {}
    ADDED.update(bounded_spin(os.environ))
    return dict(ADDED)
