"""Why a short search does not choose, and where "decided" begins: the numbers behind the defaults.

Four parts, each printed as a table (``--json`` writes them all to one file as well):

A. Architecture steps and Adam's reach. Adam moves each logit by about ``arch_lr`` per step at most
   (its update is normalised), so ``arch_lr x architecture steps`` bounds how far any alpha can
   travel. Printed for the given search and for the published DARTS and PC-DARTS schedules.
B. EL-DARTS' entropy term. Its gradient at a given alpha spread for the temperatures of the schedule
   (T=5 at the start): near uniform, the entropy of softmax(alpha/T) is flat, and its gradient
   shrinks as 1/T^2, so it cannot break ties.
C. The budget penalty's share of the architecture gradient at the start of the search (weights near
   uniform), beside cross-entropy and the entropy term, on one batch of the data.
D. Short searches, several seeds per architecture learning rate: the operator margins right after the
   warm-up (no architecture step yet), per epoch afterwards, and how often two seeds agree on the
   strongest operator of an edge, split by margin; the derived genotypes' seed agreement against
   random genotypes. The margin at which seeds start to agree beyond chance is where an edge can be
   called decided (``edgenas.search.decisiveness.DECIDED_MARGIN``).

    PYTHONPATH=. .venv/bin/python benchmarks/search_decisiveness.py --data fashion-mnist --subset 4000 \\
        --epochs 4 --warmup-epochs 1 --channels 8 --layers 5 --arch-lrs 6e-4,2e-2 --seeds 0,1,2 \\
        --mac-budget 40M --budget-channels 16 --budget-layers 8 --out runs/bench-decisiveness
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edgenas.cells import CELL_TYPES
from edgenas.costs import parse_count
from edgenas.data.load import load_data, search_split
from edgenas.data.loaders import make_loader
from edgenas.search.budgets import BudgetSpec, plan_budgets_for_data
from edgenas.search.decisiveness import (
    agreement_report,
    edge_margins_entropies,
    real_ops,
)
from edgenas.search.loop import SearchConfig, search
from edgenas.search.methods import make_method
from edgenas.search.methods.el_darts import edge_entropy
from edgenas.search.supernet import Supernet, SupernetConfig

PUBLISHED = {  # (epochs, warm-up epochs, images per half, batch, arch lr) of the papers' CIFAR-10 searches
    "DARTS (Liu et al. 2019)": (50, 0, 25000, 64, 6e-4),
    "PC-DARTS (Xu et al. 2020)": (50, 15, 25000, 256, 6e-4),
}
MARGIN_BINS = (0.0, 0.01, 0.025, 0.05, 0.1, 0.2, 1.01)


def table(title: str, headers: list[str], rows: list[list[Any]]) -> None:
    print(f"\n{title}")
    widths = [max(len(str(h)), *(len(str(r[i])) for r in rows)) for i, h in enumerate(headers)]
    print("  ".join(str(h).ljust(w) for h, w in zip(headers, widths)))
    for r in rows:
        print("  ".join(str(v).ljust(w) for v, w in zip(r, widths)))


def part_a(args: argparse.Namespace, steps_per_epoch: int, lrs: list[float]) -> list[dict[str, Any]]:
    rows = []
    for name, (epochs, warm, half, batch, lr) in PUBLISHED.items():
        steps = (epochs - warm) * math.ceil(half / batch)
        rows.append({"search": name, "arch_steps": steps, "arch_lr": lr, "reach": round(steps * lr, 3)})
    steps = (args.epochs - args.warmup_epochs) * steps_per_epoch
    for lr in lrs:
        rows.append({"search": f"this search (arch lr {lr:g})", "arch_steps": steps, "arch_lr": lr,
                     "reach": round(steps * lr, 3)})
    table("A. architecture steps and Adam's reach (arch_lr x steps bounds any alpha's travel)",
          ["search", "arch steps", "arch lr", "reach"], [list(r.values()) for r in rows])
    return rows


def part_b(k: int, weight: float, temperatures: list[float]) -> list[dict[str, Any]]:
    rows = []
    gen = torch.Generator().manual_seed(0)
    for spread in (1e-3, 0.05, 0.5):
        alpha = (spread * torch.randn(1, k, generator=gen)).requires_grad_()
        for t in temperatures:
            (g,) = torch.autograd.grad(weight * edge_entropy(alpha, t), alpha)
            rows.append({"alpha_std": spread, "T": t, "grad_norm": float(g.norm()),
                         "softmax_margin": float(_margin(alpha.detach() / t))})
    table(f"B. entropy term lambda * H(softmax(alpha/T)), lambda={weight:g}, {k} operators: gradient per edge",
          ["alpha std", "T", "|grad|", "margin of softmax(alpha/T)"],
          [[r["alpha_std"], r["T"], f"{r['grad_norm']:.2e}", f"{r['softmax_margin']:.4f}"] for r in rows])
    return rows


def _margin(logits: torch.Tensor) -> float:
    p = logits.softmax(-1).sort(descending=True).values[0]
    return float(p[0] - p[1])


def part_c(args: argparse.Namespace, method: Any, plan: Any, ops: tuple[str, ...]) -> dict[str, Any]:
    torch.manual_seed(0)
    bundle = load_data(args.data, subset=args.subset, seed=0)
    _, a_data = search_split(bundle, 0)
    x, y = next(iter(make_loader(a_data, args.batch_size, shuffle=False, seed=0, device=torch.device("cpu"))))
    net = Supernet(method, SupernetConfig(ops=ops, C=args.channels, layers=args.layers, steps=4,
                                          num_classes=bundle.num_classes, in_channels=bundle.in_channels))
    alpha = [net.arch.alpha[t] for t in CELL_TYPES]
    terms = {"cross-entropy": torch.nn.functional.cross_entropy(net(x), y),
             **method.loss_terms(net, args.warmup_epochs)}
    if plan is not None:
        for name, p in plan.penalties().items():
            terms[name] = p.penalty(net.relaxed_op_weights(), net.edge_weights())[0]
    grads = {}
    for name, value in terms.items():
        g = torch.autograd.grad(value, alpha, retain_graph=True, allow_unused=True)
        grads[name] = torch.cat([(gi if gi is not None else torch.zeros_like(a)).flatten() for gi, a in zip(g, alpha)])
    total = sum(g.abs() for g in grads.values())
    rows = {name: {"value": float(terms[name].detach()), "grad_norm": float(g.norm()),
                   "median_share": float((g.abs() / total.clamp_min(1e-30)).median())} for name, g in grads.items()}
    table("C. architecture-gradient shares at the first architecture step (weights near uniform; share = "
          "|this term's gradient| / sum of |gradients| per alpha, median)",
          ["term", "value", "|grad|", "median share"],
          [[n, f"{r['value']:.4g}", f"{r['grad_norm']:.3e}", f"{r['median_share']:.2f}"] for n, r in rows.items()])
    return rows


def part_d(args: argparse.Namespace, method: Any, plan: Any, ops: tuple[str, ...], lrs: list[float],
           seeds: list[int]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    keep = real_ops(ops)
    for lr in lrs:
        runs = {}
        for s in seeds:
            cfg = SearchConfig(epochs=args.epochs, warmup_epochs=args.warmup_epochs, batch_size=args.batch_size,
                               layers=args.layers, channels=args.channels, seed=s, subset=args.subset, arch_lr=lr)
            runs[s] = search(method, None, cfg, args.data, out=Path(args.out) / f"lr{lr:g}-seed{s}",
                             device=torch.device("cpu"), resume=args.resume, quiet=True,
                             budget=plan)
        records = {s: r.loop.history.records for s, r in runs.items()}
        per_epoch = []
        for e in range(args.epochs):
            margins = np.concatenate([edge_margins_entropies(records[s][e]["op_weights"][t], ops)[0]
                                      for s in seeds for t in CELL_TYPES])
            per_epoch.append({"epoch": e + 1, "arch_updates": records[seeds[0]][e]["arch_updates"],
                              "margin_median": float(np.median(margins)),
                              "margin_p90": float(np.percentile(margins, 90)), "margin_max": float(margins.max())})
        # per edge and seed pair: do the two seeds' strongest operators agree, by the smaller margin?
        bins: dict[str, list[int]] = {f"{lo}-{hi}": [0, 0] for lo, hi in itertools.pairwise(MARGIN_BINS)}
        for a, b in itertools.combinations(seeds, 2):
            for t in CELL_TYPES:
                wa = np.asarray(records[a][-1]["op_weights"][t])[:, keep]
                wb = np.asarray(records[b][-1]["op_weights"][t])[:, keep]
                ma = edge_margins_entropies(records[a][-1]["op_weights"][t], ops)[0]
                mb = edge_margins_entropies(records[b][-1]["op_weights"][t], ops)[0]
                for e in range(len(wa)):
                    m = min(ma[e], mb[e])
                    key = next(f"{lo}-{hi}" for lo, hi in itertools.pairwise(MARGIN_BINS) if lo <= m < hi)
                    bins[key][0] += int(wa[e].argmax() == wb[e].argmax())
                    bins[key][1] += 1
        agreement = agreement_report([runs[s].genotype for s in seeds], ops, plan.fits if plan else None)
        out[f"{lr:g}"] = {"per_epoch": per_epoch, "argmax_agreement_by_margin": bins,
                          "genotype_agreement": agreement["overall"], "random": agreement["random"]["overall"],
                          "chosen_decided_share": {s: records[s][-1]["decisiveness"]["chosen_decided_share"]
                                                   for s in seeds}}
        table(f"D. arch lr {lr:g}, seeds {seeds}: operator margins (all edges, both cells, all seeds) per epoch",
              ["epoch", "arch updates", "median margin", "p90", "max"],
              [[r["epoch"], r["arch_updates"], f"{r['margin_median']:.4f}", f"{r['margin_p90']:.4f}",
                f"{r['margin_max']:.4f}"] for r in per_epoch])
        table("   same strongest operator in two seeds, by the smaller of the two margins "
              f"(chance {1 / len(keep):.2f})",
              ["margin bin", "agree", "edges", "share"],
              [[k, v[0], v[1], f"{v[0] / v[1]:.2f}" if v[1] else "-"] for k, v in bins.items()])
        o, r = agreement["overall"], agreement["random"]["overall"]
        print(f"   derived genotypes: inputs {o['inputs']:.2f} (random {r['inputs']:.2f}), operators "
              f"{o['operators']:.2f} (random {r['operators']:.2f}), (input, op) {o['edges']:.2f} (random "
              f"{r['edges']:.2f}); decided share of chosen edges per seed {out[f'{lr:g}']['chosen_decided_share']}")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default="fashion-mnist")
    ap.add_argument("--method", default="el_darts")
    ap.add_argument("--subset", type=int, default=4000)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--warmup-epochs", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--channels", type=int, default=8)
    ap.add_argument("--layers", type=int, default=5)
    ap.add_argument("--arch-lrs", default="6e-4,2e-2")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--mac-budget", default=None, help="e.g. 40M (the demo's)")
    ap.add_argument("--budget-channels", type=int, default=16)
    ap.add_argument("--budget-layers", type=int, default=8)
    ap.add_argument("--skip-searches", action="store_true", help="parts A-C only")
    ap.add_argument("--resume", action="store_true", help="reuse finished searches in --out")
    ap.add_argument("--out", default="runs/bench-decisiveness")
    ap.add_argument("--json", default=None, help="also write every number to this file")
    args = ap.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    lrs = [float(v) for v in args.arch_lrs.split(",")]
    seeds = [int(v) for v in args.seeds.split(",")]
    method = make_method(args.method)
    ops = method.resolve_space(None).ops
    plan = None
    if args.mac_budget:
        spec = BudgetSpec(mac_budget=parse_count(args.mac_budget, "MAC budget"), channels=args.budget_channels,
                          layers=args.budget_layers)
        plan = plan_budgets_for_data(spec, args.data, ops, 4, profile_path=None, device=torch.device("cpu"))
    half = args.subset // 2
    steps_per_epoch = math.ceil(half / args.batch_size)
    result: dict[str, Any] = {"settings": vars(args), "ops": list(ops),
                              "A": part_a(args, steps_per_epoch, lrs)}
    settings = method.settings()
    if "t_init" in settings:
        temps = sorted({settings["t_init"], method.temperature(args.epochs - 1), settings["t_min"], 1.0}, reverse=True)
        result["B"] = part_b(len(real_ops(ops)), settings["entropy_weight"], temps)
    result["C"] = part_c(args, method, plan, ops)
    if not args.skip_searches:
        result["D"] = part_d(args, method, plan, ops, lrs, seeds)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1, default=str) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
