"""How well a profile predicts whole networks, on ONNX Runtime (what export ships) and PyTorch eager.

For each runtime, one profile is taken of both settings (operators at every shape the evaluation
networks can have, plus each setting's fixed part) and timed; then every genotype (N sampled at
random from the DARTS space, plus the built-in ones) is built at both settings, predicted from the
profile (:func:`edgenas.latency.predict_latency`) and measured whole on the same runtime, provider,
batch and threads as :func:`edgenas.latency.measure_network` does, ``--rounds`` times (median
kept). Reported per runtime and setting: the median and maximum of |predicted - measured| /
measured and Kendall's tau-b between predicted and measured (targets for ONNX Runtime: median
<= 5 %, max <= 10 %, tau >= 0.9), and the profiling time (target <= 60 s for both settings).

``--runtimes ort,ort-independent,eager`` also profiles ORT with every operator copy on its own input
instead of stride-1 copies in a chain, and predicts the same measured networks from it.

``--busy`` then profiles once more while a background process keeps one core busy (started and
stopped by this script) and compares the two profiles entry by entry: the 90th percentile of
|busy - quiet| / quiet over the entries (target <= 10 %) and Kendall's tau between them (>= 0.9).

    PYTHONPATH=. .venv/bin/python benchmarks/latency_model.py [--genotypes 20] [--runtimes ort,eager]
        [--threads 0] [--rounds 3] [--busy] [--overhead] [--quick] [--json out.json]

``--quick`` is a smoke test (small networks, 3 random genotypes, short timings); its figures mean
nothing. Settings: cifar10 C=16, 8 cells, 32x32, 10 classes; imagenet-mobile C=48, 14 cells,
224x224, 1000 classes; batch 1.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import random
import statistics
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import torch

from edgenas.cells import node_states
from edgenas.device import cpu_model
from edgenas.export.runtime import physical_cores
from edgenas.genotypes import GENOTYPES, Genotype
from edgenas.latency import predict_latency, runtime_of
from edgenas.nets import inference_network, setting_config
from edgenas.ops import DARTS_OPS
from edgenas.profiling import (
    REFERENCE_GENOTYPE,
    Measured,
    NetKey,
    OrtRuntime,
    Profile,
    ProfileSettings,
    onnx_graph,
    profile_ops,
    setting_shapes,
)

CPU = torch.device("cpu")
CHOICES = tuple(op for op in DARTS_OPS if op != "none")  # the derivation never picks none


def random_genotype(rng: random.Random, steps: int = 4) -> Genotype:
    """Each node: two distinct inputs among the earlier states, an operator each (DARTS' encoding)."""
    def cell() -> tuple[tuple[str, int], ...]:
        edges = []
        for node in range(steps):
            for idx in sorted(rng.sample(range(node + 2), 2)):
                edges.append((rng.choice(CHOICES), idx))
        return tuple(edges)

    concat = node_states(steps)
    return Genotype(cell(), concat, cell(), concat)


def kendall_tau(a: list[float], b: list[float]) -> float:
    """Kendall's tau-b (ties in either list counted as neither concordant nor discordant)."""
    conc = disc = ties_a = ties_b = 0
    for i in range(len(a)):
        for j in range(i + 1, len(a)):
            da, db = a[i] - a[j], b[i] - b[j]
            if da == 0 and db == 0:
                continue
            if da == 0:
                ties_a += 1
            elif db == 0:
                ties_b += 1
            elif (da > 0) == (db > 0):
                conc += 1
            else:
                disc += 1
    denom = ((conc + disc + ties_a) * (conc + disc + ties_b)) ** 0.5
    return (conc - disc) / denom if denom else float("nan")


def _busy_loop() -> None:
    while True:
        pass


#: What ``--runtimes`` accepts: ``ort-independent`` is ORT with every operator copy on its own input
#: (stride-1 copies otherwise form a chain), to compare the two ways of timing an entry.
VARIANTS = {"ort": ("ort", True), "ort-independent": ("ort", False), "eager": ("eager", True)}


def profile_both(variant: str, cfgs: list[Any], threads: int, settings: ProfileSettings) -> tuple[Profile, float]:
    runtime, chain = VARIANTS[variant]
    shapes = list(dict.fromkeys(s for cfg in cfgs for s in setting_shapes(cfg)))
    t0 = time.perf_counter()
    prof = profile_ops(CPU, CHOICES, shapes, batch=1, runtime=runtime, threads=threads, networks=cfgs,
                       settings=replace(settings, chain=chain))
    return prof, time.perf_counter() - t0


#: A network measured while the machine ran more than this much faster or slower than when it was
#: profiled (by the setting's reference network, timed again beside it) is reported apart.
DRIFT = 0.10


def _stats(rows: list[dict[str, Any]]) -> dict[str, Any]:
    if len(rows) < 2:
        return {"median_abs_error": None, "max_abs_error": None, "kendall_tau": None, "n": len(rows)}
    errs = [abs(r["error"]) for r in rows]
    return {"median_abs_error": statistics.median(errs), "max_abs_error": max(errs),
            "kendall_tau": kendall_tau([r["predicted_ms"] for r in rows], [r["measured_ms"] for r in rows]),
            "n": len(rows)}


def network_timer(g: Genotype, cfg: Any, prof: Profile) -> Callable[[], Measured]:
    """Times ``g``'s evaluation network as :func:`edgenas.latency.measure_network` does, built (and
    exported) once so that it can be timed again in every round."""
    rt = runtime_of(prof, CPU)
    net = inference_network(g, cfg)
    if isinstance(rt, OrtRuntime):
        proto = onnx_graph(net, [torch.zeros(prof.batch, *cfg.input_shape)], rt.settings.opset)
        return lambda: rt.time_graph(proto, [(prof.batch, *cfg.input_shape)])
    return lambda: rt.time(net, cfg.input_shape, prof.batch)


def evaluate(prof: Profile, cfg: Any, genotypes: dict[str, Genotype], measured: dict[Any, Any],
             rounds: int) -> dict[str, Any]:
    """Predicted against measured; networks are measured once per runtime (``measured`` caches them).

    Every network is timed in ``rounds`` rounds, each visiting the networks in another order, and
    its median over the rounds kept: a moment when the machine ran slower lands in one round of a
    network, not in all. Right after every network the setting's reference network is timed again:
    its time over this profile's (``machine_speed``: the larger deviation of the two around a
    network, median over the rounds) says how much the machine itself drifted. Rows measured while
    it drifted by more than :data:`DRIFT` are reported apart (``steady`` leaves them out).
    """
    part = prof.part(NetKey.of(cfg))
    todo = [name for name in genotypes if (prof.runtime, cfg, name) not in measured]
    if todo:
        probe_timer = network_timer(REFERENCE_GENOTYPE, cfg, prof)
        timers = {name: network_timer(genotypes[name], cfg, prof) for name in todo}
        # untimed: the first network a runtime times at a setting (allocations and the runtime's own
        # first-use costs land in its timing despite the warm-up)
        timers[todo[0]]()
        times: dict[str, list[Measured]] = {name: [] for name in todo}
        probes: dict[str, list[tuple[float, float]]] = {name: [] for name in todo}
        order = list(todo)
        after = probe_timer().stats.median
        for r in range(rounds):
            if r:
                random.Random(r).shuffle(order)
            for name in order:
                before = after  # the previous network's probe was taken right before this one
                times[name].append(timers[name]())
                after = probe_timer().stats.median
                probes[name].append((before, after))
        for name in todo:
            measured[(prof.runtime, cfg, name)] = (times[name], probes[name])
    rows = []
    for name, g in genotypes.items():
        pred = predict_latency(g, cfg, prof)
        runs, around = measured[(prof.runtime, cfg, name)]
        meas = sorted(runs, key=lambda m: m.stats.median)[(len(runs) - 1) // 2]
        # the probes in this profile's terms (another variant of a runtime shares the measurements)
        speed = statistics.median(max(b / part.network_ms, a / part.network_ms, key=lambda v: abs(v - 1))
                                  for b, a in around)
        rows.append({"genotype": name, "predicted_ms": pred.total_ms, "measured_ms": meas.stats.median,
                     "measured_rounds_ms": [m.stats.median for m in runs], "measured_stable": meas.stable,
                     "machine_speed": speed, "error": (pred.total_ms - meas.stats.median) / meas.stats.median})
    steady = [r for r in rows if abs(r["machine_speed"] - 1) <= DRIFT]
    return {"setting": f"{cfg.setting} C={cfg.C}, {cfg.layers} cells, {cfg.input_hw[0]}x{cfg.input_hw[1]}",
            **_stats(rows), "steady": _stats(steady), "rows": rows,
            "machine_speed": [min(r["machine_speed"] for r in rows), max(r["machine_speed"] for r in rows)],
            "round_to_round": round_agreement(rows)}


def round_agreement(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """How well the measurement agrees with itself: Kendall's tau and the median |difference|
    between the first two rounds (the ceiling for any prediction's tau)."""
    if len(rows) < 2 or len(rows[0]["measured_rounds_ms"]) < 2:
        return None
    a = [r["measured_rounds_ms"][0] for r in rows]
    b = [r["measured_rounds_ms"][1] for r in rows]
    diffs = [abs(y - x) / x for x, y in zip(a, b)]
    return {"kendall_tau": kendall_tau(a, b), "median_abs_diff": statistics.median(diffs), "max_abs_diff": max(diffs)}


def compare_profiles(quiet: Profile, busy: Profile) -> dict[str, Any]:
    """Entry by entry (and fixed part by fixed part): the 90th percentile of |busy - quiet| / quiet
    and Kendall's tau, on the medians the predictions use and, for comparison, on the p10s."""
    def other(k: Any) -> Any:
        return busy.lookup(k.op, k.C, k.H, k.W, k.stride)

    out: dict[str, Any] = {"unstable_quiet": len(quiet.unstable()), "unstable_busy": len(busy.unstable())}
    for stat in ("median", "p10"):
        pairs = [(getattr(e.latency, stat), getattr(other(e.key).latency, stat)) for e in quiet.entries
                 if other(e.key) is not None and getattr(e.latency, stat) > 0]
        pairs += [(getattr(p.latency, stat), getattr(busy.part(p.net).latency, stat)) for p in quiet.parts
                  if busy.part(p.net) is not None and getattr(p.latency, stat) > 0]
        rel = sorted(abs(b - a) / a for a, b in pairs)
        out[stat] = {"entries": len(pairs), "p90_rel_diff": rel[int(0.9 * (len(rel) - 1))], "max_rel_diff": rel[-1],
                     "kendall_tau": kendall_tau([a for a, _ in pairs], [b for _, b in pairs])}
    return out


def call_overhead(threads: int, settings: ProfileSettings) -> list[dict[str, Any]]:
    """sep_conv_3x3 at three shapes: a one-operator session, the per-copy cost in a graph of k copies
    less the empty graph, and the empty graph itself (us per call)."""
    from edgenas.profiling import OrtRuntime, ShapeKey, _build, empty_graph, onnx_graph

    rt = OrtRuntime("cpu", CPU, "fp32", threads, settings)
    rows = []
    for C, H in ((16, 32), (64, 8), (48, 28)):
        key = ShapeKey("sep_conv_3x3", C, H, H, 1)
        shape = (1, C, H, H)
        single = rt.time_graph(onnx_graph(_build(key, "forward"), [torch.zeros(shape)], settings.opset), [shape])
        per_copy = rt.time_op(key, lambda key=key: _build(key, "forward"), 1)
        empty = rt.time_graph(empty_graph(shape, 1, settings.opset), [shape])
        rows.append({"shape": f"{C}x{H}x{H}", "one_op_session_us": single.stats.median * 1e3,
                     f"per_copy_of_{settings.copies}_less_empty_us": per_copy.stats.median * 1e3,
                     "empty_graph_us": empty.stats.median * 1e3})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--genotypes", type=int, default=20, help="random genotypes (the built-ins are added)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--runtimes", default="ort,eager", help=f"comma list of {', '.join(VARIANTS)}")
    ap.add_argument("--threads", type=int, default=0, help="intra-op threads (0: physical cores, as export)")
    ap.add_argument("--rounds", type=int, default=3, help="times each network is measured (median kept)")
    ap.add_argument("--busy", action="store_true", help="also profile with one core kept busy and compare")
    ap.add_argument("--quick", action="store_true", help="smoke test: small networks, short timings")
    ap.add_argument("--overhead", action="store_true", help="also time ORT's per-call cost (one-operator "
                    "session vs copies in one graph vs the empty graph)")
    ap.add_argument("--json", default=None, help="write every figure and row here")
    args = ap.parse_args()
    if args.rounds < 1:
        raise SystemExit(f"--rounds must be 1 or more, got {args.rounds}")
    threads = args.threads or physical_cores()
    if args.quick:
        cfgs = [setting_config("cifar10", channels=8, layers=5, input_hw=(16, 16)),
                setting_config("imagenet-mobile", channels=8, layers=5, input_hw=(64, 64))]
        settings = ProfileSettings(runs=5, max_warmup=5, min_seconds=0.02, max_seconds=0.2)
        n_random = min(args.genotypes, 3)
    else:
        cfgs = [setting_config("cifar10", channels=16, layers=8, num_classes=10),
                setting_config("imagenet-mobile")]
        settings = ProfileSettings()
        n_random = args.genotypes
    rng = random.Random(args.seed)
    genotypes = {**{f"random{i}": random_genotype(rng) for i in range(n_random)}, **GENOTYPES}
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"{cpu_model()}, {os.cpu_count()} logical CPUs; torch {torch.__version__}; threads {threads}; batch 1; "
          f"rounds {args.rounds}; "
          f"{len(genotypes)} genotypes ({n_random} random + {len(GENOTYPES)} built-in); load average {load:.2f}")
    result: dict[str, Any] = {"cpu": cpu_model(), "threads": threads, "load_before": load, "rounds": args.rounds,
                              "runtimes": {}}
    if args.overhead:
        rows = call_overhead(threads, settings)
        result["overhead"] = rows
        print("\nsep_conv_3x3, ORT CPU, batch 1 (us per call) | one-operator session | per copy (k copies less "
              "the empty graph) | empty graph")
        for r in rows:
            v = list(r.values())
            print(f"| {v[0]} | {v[1]:.1f} | {v[2]:.1f} | {v[3]:.1f} |")
    quiet_ort = None
    measured: dict[Any, Any] = {}
    for runtime in [r.strip() for r in args.runtimes.split(",") if r.strip()]:
        if runtime not in VARIANTS:
            raise SystemExit(f"unknown runtime {runtime!r}: use {', '.join(VARIANTS)}")
        prof, wall = profile_both(runtime, cfgs, threads, settings)
        if runtime == "ort":
            quiet_ort = prof
        evals = [evaluate(prof, cfg, genotypes, measured, args.rounds) for cfg in cfgs]
        result["runtimes"][runtime] = {"units": prof.units(), "profile_seconds": wall, "entries": len(prof.entries),
                                       "unstable": prof.unstable(), "settings": evals}
        print(f"\n{runtime}, {prof.units()}: profiled {len(prof.entries)} entries + {len(prof.parts)} fixed parts in "
              f"{wall:.1f} s ({len(prof.unstable())} unstable)")
        print("| setting | median abs error | max abs error | Kendall tau | n | machine speed | steady: median "
              "/ max / tau / n | round 1 vs 2: tau / median / max diff |")
        print("|---|---:|---:|---:|---:|---|---|---|")
        for e in evals:
            s = e["steady"]
            steady = (f"{s['median_abs_error']:.1%} / {s['max_abs_error']:.1%} / {s['kendall_tau']:.3f} / {s['n']}"
                      if s["n"] >= 2 else f"- / - / - / {s['n']}")
            rr = e["round_to_round"]
            again = f"{rr['kendall_tau']:.3f} / {rr['median_abs_diff']:.1%} / {rr['max_abs_diff']:.1%}" if rr else "-"
            print(f"| {e['setting']} | {e['median_abs_error']:.1%} | {e['max_abs_error']:.1%} | "
                  f"{e['kendall_tau']:.3f} | {e['n']} | {e['machine_speed'][0]:.2f}-{e['machine_speed'][1]:.2f} | "
                  f"{steady} | {again} |")
    if args.busy:
        if quiet_ort is None:
            quiet_ort, _ = profile_both("ort", cfgs, threads, settings)
        busy = mp.get_context("spawn").Process(target=_busy_loop, daemon=True)
        busy.start()
        try:
            busy_prof, wall = profile_both("ort", cfgs, threads, settings)
        finally:
            busy.terminate()
            busy.join()
        cmp = compare_profiles(quiet_ort, busy_prof)
        cmp["profile_seconds"] = wall
        result["busy"] = cmp
        for stat in ("median", "p10"):
            c = cmp[stat]
            print(f"\none core busy ({stat}s): {c['entries']} entries, p90 |busy - quiet| / quiet "
                  f"{c['p90_rel_diff']:.1%}, max {c['max_rel_diff']:.1%}, Kendall tau {c['kendall_tau']:.3f}")
        print(f"unstable {cmp['unstable_quiet']} quiet / {cmp['unstable_busy']} busy; profiled in {wall:.1f} s")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
