"""CPU operator timings with glibc's default malloc vs freed memory kept in the heap, side by side.

``edgenas profile`` keeps freed memory in the heap while timing on the CPU
(:func:`edgenas.device.keep_cpu_memory`). This script shows why: it profiles the same operators
and shapes in fresh processes (the malloc setting lasts for a process), alternating the two
settings ``--repeats`` times, and prints per entry the median latency under each setting, their
ratio and how much each setting's medians vary between repeats (max/min).

    .venv/bin/python benchmarks/cpu_allocator.py [--shapes 16x32x32:1,32x32x32:2] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

SETTINGS = {"default malloc": ["--default-malloc"], "memory kept": []}


def profile_once(flags: list[str], shapes: str, batch: int, out: Path) -> dict[str, float]:
    cmd = [sys.executable, "-m", "edgenas", "profile", "--device", "cpu", "--shapes", shapes,
           "--batch", str(batch), "--out", str(out), "--quiet", *flags]
    subprocess.run(cmd, check=True)
    doc = json.loads(out.read_text())
    return {f"{e['op']}@{e['C']}x{e['H']}x{e['W']}:{e['stride']}": e["latency_ms"]["median"]
            for e in doc["entries"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shapes", default="16x32x32:1,32x32x32:2")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()

    runs: dict[str, list[dict[str, float]]] = {name: [] for name in SETTINGS}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            for name, flags in SETTINGS.items():
                runs[name].append(profile_once(flags, args.shapes, args.batch, Path(tmp) / f"{r}.json"))

    names = list(SETTINGS)
    print(f"median ms per batch of {args.batch}, {args.repeats} fresh processes per setting "
          f"(value: median of the repeats; spread: max/min across repeats)")
    print(f"{'op@shape':30s} " + " ".join(f"{n:>15s} {'spread':>7s}" for n in names) + "   ratio")
    ratios = []
    for key in runs[names[0]][0]:
        cells, meds = [], []
        for n in names:
            vals = sorted(run[key] for run in runs[n])
            med = vals[len(vals) // 2]
            meds.append(med)
            cells.append(f"{med:15.3f} {vals[-1] / max(vals[0], 1e-9):7.2f}")
        ratio = meds[0] / max(meds[1], 1e-9)
        ratios.append(ratio)
        print(f"{key:30s} " + " ".join(cells) + f"   {ratio:5.2f}x")
    ratios.sort()
    print(f"ratio default/kept: median {ratios[len(ratios) // 2]:.2f}x, max {ratios[-1]:.2f}x")


if __name__ == "__main__":
    main()
