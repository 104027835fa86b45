"""Does the search beat picking at random? Searched genotypes against random ones at the same MAC budget.

For one dataset and one MAC budget of the retrained network:

1. search with el_darts (and darts over the same operators, for comparison), once per search seed,
   with the budget's penalty and exact derivation, and measure the seed agreement of each method's
   genotypes against random genotypes of the space that meet the budget;
2. draw ``--random`` distinct genotypes uniformly from the same space among those that meet the
   budget (rejection sampling on the budget's exact additive MAC model, the one the search's
   derivation uses);
3. retrain every genotype (the searched ones of every search seed, or of the first only with
   ``--retrain-first-only``) with the same short recipe, once per training seed, and record the
   last epoch's test top-1 (never the best epoch, which would select on the test set);
4. print per genotype its MACs and test top-1 mean and spread (min-max over training seeds), then
   each searched genotype's rank among the random ones and the percentile of random genotypes whose
   mean it beats (ties count half), and each method's seed agreement beside chance.

Every search and training has its own run folder under ``--out`` and is resumed from its checkpoint
when the script runs again, so an interrupted benchmark continues where it stopped.

Full run (the demo's settings; sized for about an hour on a quiet 2-core CPU from the demo's timings:
6 searches of ~1 min, 14 genotypes x 2 seeds retrained for 3 epochs of 6000 images at ~30 s each;
the first line it prints repeats the settings):

    PYTHONPATH=. .venv/bin/python benchmarks/search_quality.py --out runs/bench-search-quality

Smoke test (a couple of minutes, numbers meaningless):

    PYTHONPATH=. .venv/bin/python benchmarks/search_quality.py --quick --out /tmp/search-quality-quick
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edgenas.costs import parse_count
from edgenas.genotypes import Genotype
from edgenas.search.budgets import BudgetSpec, plan_budgets_for_data
from edgenas.search.decisiveness import agreement_report, sample_random_genotypes
from edgenas.search.loop import SearchConfig, search
from edgenas.search.methods import make_method
from edgenas.train import TrainConfig, train

# The demo's settings (edgenas/configs/demo.toml): what a user of `make demo` gets.
FULL = {"data": "fashion-mnist", "mac_budget": "40M", "methods": "el_darts,darts", "search_seeds": "0,1,2",
        "search_epochs": 4, "search_warmup": 1, "search_subset": 4000, "search_channels": 8, "search_layers": 5,
        "search_batch": 64, "arch_lr": 2e-2, "random": 8, "train_seeds": "0,1", "train_channels": 16,
        "train_layers": 8, "train_epochs": 3, "train_subset": 6000, "test_subset": 2000, "train_batch": 96}
QUICK = {**FULL, "data": "synthetic:240", "mac_budget": "median", "search_seeds": "0,1", "search_epochs": 2,
         "search_subset": 64, "search_channels": 8, "search_layers": 3, "search_batch": 16, "random": 2,
         "train_channels": 8, "train_layers": 3, "train_epochs": 1, "train_subset": 120, "test_subset": 60,
         "train_batch": 32}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny settings to check the script runs")
    for key, value in FULL.items():
        ap.add_argument(f"--{key.replace('_', '-')}", type=type(value), default=None, help=f"[{value}]")
    ap.add_argument("--retrain-first-only", action="store_true",
                    help="retrain only the first search seed's genotype of each method")
    ap.add_argument("--out", default="runs/bench-search-quality")
    ap.add_argument("--json", default=None, help="also write the results to this file [<out>/results.json]")
    args = ap.parse_args(argv)
    base = QUICK if args.quick else FULL
    for key, value in base.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


def ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def budget_plan(args: argparse.Namespace, ops: tuple[str, ...], steps: int) -> tuple[Any, float]:
    """The budget plan of the retrained network; ``median``: the median MACs of random genotypes."""
    def plan_for(limit: float) -> Any:
        spec = BudgetSpec(mac_budget=int(limit), channels=args.train_channels, layers=args.train_layers)
        return plan_budgets_for_data(spec, args.data, ops, steps, profile_path=None, device=torch.device("cpu"))

    if args.mac_budget != "median":
        limit = float(parse_count(args.mac_budget, "MAC budget"))
        return plan_for(limit), limit
    loose = plan_for(1e15)
    rng = np.random.default_rng(0)
    model = loose.budgets["mac_budget"].model
    costs = [model.genotype_cost(g) for g in sample_random_genotypes(ops, steps, 200, rng)]
    limit = float(np.median(costs))
    return plan_for(limit), limit


def run_searches(args: argparse.Namespace, plan: Any, ops: tuple[str, ...], space: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in args.methods.split(","):
        method = make_method(name)
        genotypes = {}
        for s in ints(args.search_seeds):
            cfg = SearchConfig(epochs=args.search_epochs, warmup_epochs=args.search_warmup,
                               batch_size=args.search_batch, layers=args.search_layers, channels=args.search_channels,
                               seed=s, subset=args.search_subset, arch_lr=args.arch_lr)
            folder = Path(args.out) / "search" / f"{name}-seed{s}"
            t0 = time.perf_counter()
            r = search(method, space, cfg, args.data, out=folder, device=torch.device("cpu"),
                       resume=(folder / "last.pt").exists(), quiet=True, budget=plan)
            dec = r.loop.history.records[-1]["decisiveness"]
            print(f"  searched {name} seed {s} in {time.perf_counter() - t0:.0f} s: "
                  f"{dec['chosen_decided_share']:.0%} of chosen edges decided", flush=True)
            genotypes[s] = r.genotype
        agreement = agreement_report(list(genotypes.values()), ops, plan.fits) if len(genotypes) > 1 else None
        out[name] = {"genotypes": genotypes, "agreement": agreement}
    return out


def retrain(args: argparse.Namespace, name: str, genotype: Genotype) -> list[float]:
    accs = []
    for s in ints(args.train_seeds):
        cfg = TrainConfig(setting="cifar10", channels=args.train_channels, layers=args.train_layers,
                          epochs=args.train_epochs, batch_size=args.train_batch, cutout=0, seed=s,
                          subset=args.train_subset, test_subset=args.test_subset)
        folder = Path(args.out) / "train" / f"{name}-seed{s}"
        t0 = time.perf_counter()
        r = train(genotype, cfg, args.data, out=folder, device=torch.device("cpu"),
                  resume=(folder / "last.pt").exists(), quiet=True, genotype_name=name)
        accs.append(float(r.loop.history.records[-1]["test_top1"]))
        print(f"  trained {name} seed {s} in {time.perf_counter() - t0:.0f} s: test top-1 {accs[-1]:.2f}%", flush=True)
    return accs


def percentile_among(value: float, others: list[float]) -> float:
    """Share (%) of ``others`` below ``value``, ties counted half."""
    below = sum(o < value for o in others) + 0.5 * sum(o == value for o in others)
    return 100.0 * below / len(others)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(torch.get_num_threads())
    space = make_method("el_darts").resolve_space(None)  # the space every method and random pick share
    ops, steps = space.ops, 4
    plan, limit = budget_plan(args, ops, steps)
    model = plan.budgets["mac_budget"].model
    settings = {k: getattr(args, k) for k in FULL} | {"mac_budget_macs": limit, "ops": list(ops),
                                                       "retrain_first_only": args.retrain_first_only}
    print("settings: " + json.dumps(settings), flush=True)

    print("searches:", flush=True)
    searched = run_searches(args, plan, ops, space)
    rng = np.random.default_rng(12345)
    randoms = sample_random_genotypes(ops, steps, args.random, rng, accept=plan.fits)

    rows: list[dict[str, Any]] = []
    print("retraining:", flush=True)
    for name, res in searched.items():
        seeds = list(res["genotypes"])[:1] if args.retrain_first_only else list(res["genotypes"])
        for s in seeds:
            g = res["genotypes"][s]
            rows.append({"name": f"{name} (search seed {s})", "kind": "searched", "genotype": g,
                         "accs": retrain(args, f"{name}-s{s}", g)})
    for i, g in enumerate(randoms):
        rows.append({"name": f"random {i + 1}", "kind": "random", "genotype": g,
                     "accs": retrain(args, f"random{i + 1}", g)})

    for r in rows:
        r["macs"] = model.genotype_cost(r["genotype"])
        r["mean"] = statistics.fmean(r["accs"])
        r["spread"] = max(r["accs"]) - min(r["accs"])
    random_means = [r["mean"] for r in rows if r["kind"] == "random"]
    print(f"\ntest top-1 (%), last epoch, {len(ints(args.train_seeds))} training seeds; MAC budget {limit / 1e6:.2f} M")
    print(f"{'genotype':28s} {'M MACs':>7s} {'mean':>6s} {'min-max':>13s} "
          f"{'rank among random':>18s} {'percentile':>10s}")
    for r in sorted(rows, key=lambda r: -r["mean"]):
        rank = pct = ""
        if r["kind"] == "searched":
            r["rank"] = 1 + sum(m > r["mean"] for m in random_means)
            r["percentile"] = percentile_among(r["mean"], random_means)
            rank, pct = f"{r['rank']} of {len(random_means) + 1}", f"{r['percentile']:.0f}"
        print(f"{r['name']:28s} {r['macs'] / 1e6:7.2f} {r['mean']:6.2f} {min(r['accs']):6.2f}-{max(r['accs']):6.2f} "
              f"{rank:>18s} {pct:>10s}")
    print("\nseed agreement of the searched genotypes (share of a node's 2 edges, mean over seed pairs):")
    for name, res in searched.items():
        a = res["agreement"]
        if a is None:
            print(f"  {name}: one search seed, no agreement")
            continue
        o, rnd = a["overall"], a["random"]["overall"]
        print(f"  {name}: operators {o['operators']:.2f} (random {rnd['operators']:.2f}, "
              f"x{a['ratio_to_random']['operators']}), inputs {o['inputs']:.2f} (random {rnd['inputs']:.2f}), "
              f"(input, op) {o['edges']:.2f} (random {rnd['edges']:.2f}); random: {a['random']['method']}")
    result = {"settings": settings,
              "rows": [{k: (v.to_dict() if isinstance(v, Genotype) else v) for k, v in r.items()} for r in rows],
              "agreement": {n: res["agreement"] for n, res in searched.items()},
              "search_genotypes": {n: {str(s): g.to_dict() for s, g in res["genotypes"].items()}
                                   for n, res in searched.items()}}
    path = Path(args.json or Path(args.out) / "results.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    print(f"\nresults: {path}")


if __name__ == "__main__":
    sys.exit(main())
