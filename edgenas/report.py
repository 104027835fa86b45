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
