"""Figures (matplotlib, headless) and the Markdown/HTML run report.

Each figure function takes plain data and a path, draws with the Agg backend (no display needed)
and writes the PNG atomically. Add new figures here so there is one place that knows matplotlib.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from edgenas.files import atomic_path

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from edgenas.profiling import Profile


def new_figure(width: float = 8.0, height: float = 4.5) -> Figure:
    """A figure not attached to any pyplot state (safe in threads and without a display)."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=110, layout="constrained")


def save_figure(fig: Figure, path: str | Path) -> Path:
    """Write ``fig`` as PNG through a temp file, so a crash never leaves half an image."""
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return path


def plot_profile(profile: Profile, path: str | Path) -> Path:
    """Bar chart of measured latency per operator, grouped by shape (cf. EL-DARTS Fig. 1).

    Bars are median latency per batch with p10-p90 whiskers; the lower panel shows the measured
    memory so the two costs the prune rules weigh sit side by side. Log scale: the operators span
    three or more orders of magnitude (identity vs separable convolutions).
    """
    import numpy as np

    shapes = profile.shapes()
    ops = profile.ops()
    fig = new_figure(max(8.0, 1.3 * len(shapes) + 3), 7.0)
    ax_t, ax_m = fig.subplots(2, 1, sharex=True)
    width = 0.8 / max(len(ops), 1)
    centers = np.arange(len(shapes))
    colors = [f"C{i % 10}" for i in range(len(ops))]
    for i, op in enumerate(ops):
        xs, med, lo, hi, mem = [], [], [], [], []
        for j, s in enumerate(shapes):
            e = profile.lookup(op, s.C, s.H, s.W, s.stride)
            if e is None:
                continue
            xs.append(centers[j] + (i - (len(ops) - 1) / 2) * width)
            med.append(e.latency.median)
            lo.append(max(e.latency.median - e.latency.p10, 0.0))
            hi.append(max(e.latency.p90 - e.latency.median, 0.0))
            mem.append(e.memory_bytes / 2**20)
        ax_t.bar(xs, med, width, yerr=[lo, hi], label=op, color=colors[i], capsize=1.5,
                 error_kw={"elinewidth": 0.6})
        ax_m.bar(xs, mem, width, color=colors[i])
    ax_t.set_yscale("log")
    ax_t.set_ylabel(f"latency per batch of {profile.batch} (ms)")
    ax_t.set_title(f"{profile.device}: {profile.mode}, {profile.dtype}, batch {profile.batch} "
                   "(median, p10-p90)", fontsize=9)
    fig.legend(*ax_t.get_legend_handles_labels(), loc="outside upper center", fontsize=8,
               ncol=min(4, len(ops)), frameon=False)
    ax_t.grid(axis="y", alpha=0.3, which="both")
    kinds = sorted({e.memory_kind for e in profile.entries})
    ax_m.set_ylabel("memory (MiB)")
    ax_m.set_title(f"memory: {', '.join(kinds)}", fontsize=8)
    ax_m.grid(axis="y", alpha=0.3)
    ax_m.set_xticks(centers, [f"C={s.C} {s.H}x{s.W}\nstride {s.stride}" for s in shapes], fontsize=8)
    return save_figure(fig, path)
