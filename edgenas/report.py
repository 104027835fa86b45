"""Figures (matplotlib, headless) and the Markdown/HTML run report.

Each figure function takes plain data and a path, draws with the Agg backend (no display needed)
and writes the PNG atomically. Add new figures here so there is one place that knows matplotlib.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgenas.cells import CELL_TYPES
from edgenas.files import atomic_path

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from edgenas.genotypes import Genotype
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
    ax_t.set_title(f"{profile.device}: {profile.units()}, {profile.mode} (median, p10-p90)", fontsize=9)
    fig.legend(*ax_t.get_legend_handles_labels(), loc="outside upper center", fontsize=8,
               ncol=min(4, len(ops)), frameon=False)
    ax_t.grid(axis="y", alpha=0.3, which="both")
    kinds = sorted({e.memory_kind for e in profile.entries})
    ax_m.set_ylabel("memory (MiB)")
    ax_m.set_title(f"memory: {', '.join(kinds)}", fontsize=8)
    ax_m.grid(axis="y", alpha=0.3)
    ax_m.set_xticks(centers, [f"C={s.C} {s.H}x{s.W}\nstride {s.stride}" for s in shapes], fontsize=8)
    return save_figure(fig, path)


def _draw_cell(ax: Any, edges: tuple[tuple[str, int], ...], concat: tuple[int, ...], title: str) -> None:
    """One cell as a left-to-right graph: inputs, intermediate nodes, output; edges carry op names.

    The intermediate nodes stand in one column; edges from the inputs are labelled at 35% (from
    c_{k-2}) or 65% (from c_{k-1}) of their length so the two fans' labels never share a spot, and
    edges between intermediate nodes bend out to the right of the column.
    """
    steps = len(edges) // 2
    gap = 1.5
    top = gap * (steps - 1) / 2
    pos = {0: (0.0, gap), 1: (0.0, -gap)}
    pos.update({j + 2: (3.2, top - gap * j) for j in range(steps)})
    out = steps + 2
    pos[out] = (6.4, 0.0)
    names = {0: r"$c_{k-2}$", 1: r"$c_{k-1}$", out: r"$c_{k}$", **{j + 2: str(j) for j in range(steps)}}
    colors = {0: "#c8e6c9", 1: "#c8e6c9", out: "#fff59d"}
    arrow = {"arrowstyle": "-|>", "color": "0.25", "lw": 1.0, "shrinkA": 13, "shrinkB": 13}

    def curve(src: int, dst: int, rad: float, t: float, **style: Any) -> tuple[float, float]:
        """Draw an arc3 arrow; return the point at parameter t of its quadratic Bezier curve."""
        (x1, y1), (x2, y2) = pos[src], pos[dst]
        ax.annotate("", xy=(x2, y2), xytext=(x1, y1),
                    arrowprops={**arrow, **style, "connectionstyle": f"arc3,rad={rad}"})
        # matplotlib's arc3 control point (equal aspect, so data units match display units)
        cx, cy = (x1 + x2) / 2 + rad * (y2 - y1), (y1 + y2) / 2 - rad * (x2 - x1)
        return ((1 - t) ** 2 * x1 + 2 * (1 - t) * t * cx + t * t * x2,
                (1 - t) ** 2 * y1 + 2 * (1 - t) * t * cy + t * t * y2)

    repeats: dict[tuple[int, int], int] = {}
    for i, (op, src) in enumerate(edges):
        dst = i // 2 + 2
        n = repeats.get((src, dst), 0)
        repeats[src, dst] = n + 1
        if src < 2:
            rad, t = 0.15 * n, (0.35 if src == 0 else 0.65)
        else:  # downward within the column: a negative rad bends right; longer spans bend further
            rad, t = -(0.1 + 0.2 * (dst - src) + 0.15 * n), 0.5
        lx, ly = curve(src, dst, rad, t)
        ax.text(lx, ly, op, fontsize=7, ha="center", va="center", color="#1a237e", zorder=2,
                bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none", "alpha": 0.9})
    for s_ in concat:
        curve(s_, out, 0.0, 0.5, color="0.6", linestyle="--")
    for state, (x, y) in pos.items():
        ax.text(x, y, names[state], fontsize=10, ha="center", va="center", zorder=3,
                bbox={"boxstyle": "round,pad=0.4", "fc": colors.get(state, "#bbdefb"), "ec": "0.3"})
    ax.set_title(title, fontsize=10)
    ax.set_xlim(-0.7, pos[out][0] + 0.7)
    ax.set_ylim(-max(top, gap) - 0.8, max(top, gap) + 0.8)
    ax.set_aspect("equal")
    ax.axis("off")


def plot_genotype(genotype: Genotype, path: str | Path, *, title: str = "") -> Path:
    """The normal and the reduction cell of ``genotype`` side by side (cf. EL-DARTS Fig. 4).

    Nodes: the cell inputs c_{k-2}, c_{k-1}, intermediate nodes 0..n-1 and the output c_{k}; solid
    edges are labelled with their operator, dashed edges feed the output concatenation.
    """
    steps = max(len(genotype.normal), len(genotype.reduce)) // 2
    fig = new_figure(14.0, max(4.0, 1.1 * steps + 1.2))
    ax_n, ax_r = fig.subplots(1, 2)
    _draw_cell(ax_n, genotype.normal, genotype.normal_concat, "(a) normal cell")
    _draw_cell(ax_r, genotype.reduce, genotype.reduce_concat, "(b) reduction cell")
    if title:
        fig.suptitle(title, fontsize=11)
    return save_figure(fig, path)


def plot_training_curves(records: list[dict[str, Any]], path: str | Path, *, title: str = "") -> Path:
    """Loss and accuracy per epoch of a training run (the records of its ``history.jsonl``).

    Left: train and test loss (main head; the training objective with the aux term is in the
    records as ``train_objective``); right: train top-1, test top-1 and test top-5 (percent).
    """
    from matplotlib.ticker import MaxNLocator

    fig = new_figure(9.0, 3.6)
    ax_loss, ax_acc = fig.subplots(1, 2)
    epochs = [r["epoch"] + 1 for r in records]
    for ax, series, ylabel in (
        (ax_loss, (("train_loss", "train"), ("test_loss", "test")), "loss"),
        (ax_acc, (("train_top1", "train top-1"), ("test_top1", "test top-1"), ("test_top5", "test top-5")),
         "accuracy (%)"),
    ):
        for key, label in series:
            values = [r.get(key) for r in records]
            if any(v is not None for v in values):
                ax.plot(epochs, values, marker="o", markersize=3, label=label)
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    return save_figure(fig, path)


def _edge_labels(n_edges: int) -> list[str]:
    """'node j <- input' for the edges of a cell in DARTS order (inputs c_{k-2}, c_{k-1}, nodes)."""
    labels, node = [], 0
    while len(labels) < n_edges:
        for i in range(node + 2):
            src = ("c_{k-2}", "c_{k-1}")[i] if i < 2 else f"node {i - 2}"
            labels.append(f"node {node} \u2190 {src}")
        node += 1
    return labels[:n_edges]


def plot_arch_weights(op_weights: dict[str, Any], ops: tuple[str, ...] | list[str], path: str | Path, *,
                      edge_weights: dict[str, Any] | None = None, title: str = "",
                      undecided: dict[str, list[bool]] | None = None, threshold: float | None = None) -> Path:
    """Operator weights of every edge as one heatmap per cell type (cf. EL-DARTS Fig. 3).

    ``op_weights[cell]`` is an (edges, ops) nested list or array, ``edge_weights[cell]`` (optional)
    the per-node normalised edge weights, drawn as an extra column. Each cell shows its value; the
    strongest non-``none`` operator of each edge is outlined, in red where the edge is decided and
    dashed grey where ``undecided[cell]`` marks it (its margin is below ``threshold``), whose row
    label then ends in "(undecided)": there the outline is noise, not a choice.
    """
    import numpy as np

    cells = [c for c in CELL_TYPES if c in op_weights]
    mats = {c: np.asarray(op_weights[c], dtype=float) for c in cells}
    n_edges = max(m.shape[0] for m in mats.values())
    fig = new_figure(4.0 + 1.9 * len(ops), 1.2 + 0.33 * n_edges)
    axes = fig.subplots(1, len(cells), squeeze=False)[0]
    for ax, cell in zip(axes, cells):
        m = mats[cell]
        cols = list(ops)
        ew = None if not edge_weights or edge_weights.get(cell) is None else np.asarray(edge_weights[cell], float)
        shown = m if ew is None else np.column_stack([m, ew])
        if ew is not None:
            cols.append("edge weight")
        flags = (undecided or {}).get(cell) or [False] * m.shape[0]
        im = ax.imshow(shown, cmap="viridis", aspect="auto", vmin=0.0, vmax=max(float(shown.max()), 1e-9))
        for r in range(shown.shape[0]):
            for c in range(shown.shape[1]):
                v = shown[r, c]
                ax.text(c, r, f"{v:.2f}", ha="center", va="center", fontsize=6.5,
                        color="white" if v < 0.6 * shown.max() else "black")
            real = [j for j, op in enumerate(ops) if op != "none"]
            best = max(real, key=lambda j: m[r, j])
            ax.add_patch(_outline(best, r, decided=not flags[r]))
        labels = [f"{lab} (undecided)" if u else lab for lab, u in zip(_edge_labels(m.shape[0]), flags)]
        ax.set_xticks(range(len(cols)), cols, rotation=40, ha="right", fontsize=7)
        ax.set_yticks(range(m.shape[0]), labels, fontsize=7)
        for tick, u in zip(ax.get_yticklabels(), flags):
            if u:
                tick.set_color("0.5")
        note = (f": {sum(flags)} of {len(flags)} edges undecided (margin < {threshold})"
                if undecided is not None and threshold is not None else "")
        ax.set_title(f"{cell} cell{note}", fontsize=9)
        fig.colorbar(im, ax=ax, shrink=0.8)
    if title:
        fig.suptitle(title, fontsize=10)
    return save_figure(fig, path)


def _outline(col: int, row: int, *, decided: bool = True) -> Any:
    from matplotlib.patches import Rectangle

    if decided:
        return Rectangle((col - 0.5, row - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=1.2)
    return Rectangle((col - 0.5, row - 0.5), 1, 1, fill=False, edgecolor="0.6", linewidth=1.0, linestyle="--")
