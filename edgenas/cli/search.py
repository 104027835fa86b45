"""``edgenas search``: differentiable architecture search, with budgets or several seeds."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import typer
from rich.console import Console

from edgenas.cli.common import (
    DeviceOpt,
    JsonOpt,
    QuietOpt,
    app,
    command,
    emit_json,
    given,
    out_console,
)
from edgenas.errors import EdgenasError

if TYPE_CHECKING:  # the CLI imports the library lazily, so that --help stays fast
    from edgenas.search.loop import SearchResult


@command(app, "search", defaults_from=("edgenas.search.loop:SearchConfig",
                                       "edgenas.search.budgets:BudgetSpec"))
def search_cmd(
    data: str = typer.Option(..., "--data", help="cifar10[:DIR] | cifar100[:DIR] | imagefolder:PATH | "
                             "fashion-mnist[:DIR] | synthetic[:N] (its training set is split in half)."),
    method: str = typer.Option("darts", "--method", help="darts | pc_darts | adarts | swd | el_darts | "
                               "attn_darts (see `edgenas list methods`)."),
    space: Optional[Path] = typer.Option(None, "--space", help="space.json from `edgenas prune` [the method's "
                                         "default: DARTS' 8 operators; EL-DARTS' 4]."),
    epochs: Optional[int] = typer.Option(None, "--epochs", min=1, help="Search epochs [{SearchConfig.epochs}]."),
    warmup_epochs: Optional[int] = typer.Option(None, "--warmup-epochs", min=0, help="Epochs before architecture "
                                                "updates start [the method's share: 0; 30% for PC-DARTS family]."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", min=1, help="Images per step, for each half "
                                             "(global: split over torchrun processes) [{SearchConfig.batch_size}]."),
    layers: Optional[int] = typer.Option(None, "--layers", min=1, help="Cells [8; 5 for swd]."),
    channels: Optional[int] = typer.Option(None, "--channels", min=2,
                                           help="Initial channels C [{SearchConfig.channels}]."),
    nodes: Optional[int] = typer.Option(None, "--nodes", min=1,
                                        help="Intermediate nodes per cell [{SearchConfig.nodes}]."),
    partial_k: Optional[int] = typer.Option(None, "--partial-k", help="1/K of the channels go through the "
                                            "operators (pc_darts, adarts, swd, el_darts) [4]."),
    no_ess: bool = typer.Option(False, "--no-ess", help="el_darts ablation: search the full DARTS space."),
    no_dcss: bool = typer.Option(False, "--no-dcss", help="el_darts ablation: no dynamic edge coefficients."),
    no_entropy: bool = typer.Option(False, "--no-entropy", help="el_darts ablation: no entropy regulariser."),
    lr: Optional[float] = typer.Option(None, "--lr", help="Weight learning rate [0.1 x batch/256]."),
    arch_lr: Optional[float] = typer.Option(None, "--arch-lr", help="Architecture learning rate (Adam) "
                                            "[{SearchConfig.arch_lr}]. Adam moves each alpha by about this much "
                                            "per step, so a search of a few hundred architecture steps needs "
                                            "more to choose (the run records arch_reach)."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Seeds weights, split, data order and "
                                        "augmentation [{SearchConfig.seed}]."),
    seeds: Optional[str] = typer.Option(None, "--seeds", help="Run the same search once per seed (e.g. 0,1,2) "
                                        "into --out/seed-<s>/ and report how far their genotypes agree, "
                                        "against random genotypes of the space."),
    subset: Optional[int] = typer.Option(None, "--subset", min=1, help="Use a class-balanced N training images."),
    channels_last: Optional[bool] = typer.Option(None, "--channels-last/--no-channels-last",
                                                 help="Memory format [on for CPU (measured faster), off on CUDA]."),
    accumulate: Optional[int] = typer.Option(None, "--accumulate", min=1, help="Split each batch into N "
                                             "interleaved micro-batches (gradients averaged): what N torchrun "
                                             "processes compute [{SearchConfig.accumulate}]."),
    threads: Optional[str] = typer.Option(None, "--threads", help="CPU intra-op threads: 0 (one per physical core), "
                                          "N, or auto (use the cores other processes leave free; a run is then not "
                                          "bitwise reproducible) [{SearchConfig.threads}]."),
    out: Optional[Path] = typer.Option(None, "--out", help="Run folder [runs/search-<method>; with --seeds "
                                       "runs/search-<method>-seeds]."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its last.pt (with "
                                "--seeds: every seed's run that has one; the others start)."),
    stop_after: Optional[int] = typer.Option(None, "--stop-after", min=1,
                                             help="Stop after N epochs of this call (finish later with --resume)."),
    mac_budget: Optional[str] = typer.Option(None, "--mac-budget", help="MAC budget of the evaluation network "
                                             "the genotype becomes, e.g. 600M or 0.6G (hard: derivation meets it)."),
    latency_budget: Optional[str] = typer.Option(None, "--latency-budget", help="Latency budget of the whole "
                                                 "network on --profile's runtime, provider and batch, e.g. 12ms "
                                                 "(hard, like --mac-budget)."),
    profile: Optional[Path] = typer.Option(None, "--profile", help="Profile of the target device (latency budget)."),
    budget_setting: Optional[str] = typer.Option(None, "--budget-setting",
                                                 help="Evaluation network the budgets refer to: cifar10 | "
                                                 "cifar100 | imagenet-mobile [{BudgetSpec.setting}]."),
    budget_channels: Optional[int] = typer.Option(None, "--budget-channels",
                                                  help="Its initial channels [setting default: 36; 48 ImageNet]."),
    budget_layers: Optional[int] = typer.Option(None, "--budget-layers",
                                                help="Its cells [setting default: 20; 14 ImageNet]."),
    budget_batch: Optional[int] = typer.Option(None, "--budget-batch", help="Batch the latency budget is for "
                                               "(= profile's) [{BudgetSpec.budget_batch}]."),
    budget_weight: Optional[float] = typer.Option(None, "--budget-weight", help="Weight of the penalty weight * "
                                                  "max(0, E[cost]/budget - 1) [{BudgetSpec.weight}]."),
    profile_missing: bool = typer.Option(False, "--profile-missing", help="Measure operator shapes the profile "
                                         "lacks on this device (default: refuse, naming them)."),
    device: str = DeviceOpt,
    json_out: bool = JsonOpt,
    quiet: bool = QuietOpt,
) -> None:
    """Differentiable architecture search; writes the genotype, history, checkpoints and figures.

    With --mac-budget / --latency-budget the search adds a penalty on the expected cost and derives
    the best genotype that meets every budget exactly (or stops at once, naming the minimum).
    Works under torchrun (one process per GPU, or gloo on CPUs); rank 0 writes and prints.
    """
    from edgenas.device import resolve_device
    from edgenas.distributed import dist_from_env
    from edgenas.search import make_method
    from edgenas.search.loop import SearchConfig, default_run_folder, search
    from edgenas.search.seeds import parse_seeds, search_seeds
    from edgenas.space import SearchSpace

    if seeds is not None and seed is not None:
        raise EdgenasError("--seed and --seeds are both given",
                           "use --seed N for one search or --seeds 0,1,2 for several")
    seed_list = parse_seeds(seeds) if seeds is not None else None
    settings = {"partial_k": partial_k, "ess": False if no_ess else None, "dcss": False if no_dcss else None,
                "entropy": False if no_entropy else None}
    chosen = make_method(method, settings)
    given_space = SearchSpace.load(space) if space is not None else None
    cfg = SearchConfig(**given(epochs=epochs, warmup_epochs=warmup_epochs, batch_size=batch_size, layers=layers,
                               channels=channels, nodes=nodes, seed=seed, subset=subset, lr=lr, arch_lr=arch_lr,
                               channels_last=channels_last, accumulate=accumulate, threads=threads))
    from edgenas.costs import parse_count
    from edgenas.search.budgets import BudgetSpec, parse_latency, plan_budgets_for_data

    budget = BudgetSpec(
        mac_budget=parse_count(mac_budget, "MAC budget") if mac_budget is not None else None,
        latency_budget_ms=parse_latency(latency_budget) if latency_budget is not None else None,
        profile_missing=profile_missing, **given(setting=budget_setting, channels=budget_channels,
                                                 layers=budget_layers, budget_batch=budget_batch,
                                                 weight=budget_weight))
    if profile_missing and dist_from_env().active:
        # each rank would time the missing shapes itself, and budgets must be the same on every rank
        raise EdgenasError("--profile-missing measures in one process, not under torchrun",
                           "profile the shapes the search names without it (`edgenas profile --shapes "
                           "...`) so every rank reads the same profile, then launch without --profile-missing")
    dev = resolve_device(device)
    if seed_list is not None and dist_from_env().active:
        raise EdgenasError("--seeds runs one search after another in one process; it does not run under torchrun",
                           "run it plainly, or launch one torchrun search per --seed")
    ops = chosen.resolve_space(given_space).ops
    plan = plan_budgets_for_data(budget, data, ops, cfg.nodes, profile_path=profile, device=dev, seed=cfg.seed)
    con = out_console(json_out, quiet)
    main_rank = dist_from_env().main

    def run_one(run_cfg: SearchConfig, run_dir: Path, resume_run: bool) -> SearchResult:
        return search(chosen, given_space, run_cfg, data, out=run_dir, device=dev, resume=resume_run,
                      stop_after=stop_after, quiet=quiet or not main_rank, budget=plan,
                      space_source=str(space) if space is not None else None)

    if seed_list is not None:
        multi = search_seeds(run_one, cfg, seed_list, ops, out=out or Path(f"{default_run_folder(method)}-seeds"),
                             resume=resume, accept=plan.fits if plan else None)
        if json_out:
            emit_json(multi.summary())
            return
        for s, r in multi.runs.items():
            con.print(f"seed {s}: {r.genotype.to_literal()}", markup=False)
            _print_decisiveness(con, r.summary())
        if multi.agreement is None:
            con.print(f"stopped after --stop-after {stop_after}; continue with --resume --out {multi.out}")
        else:
            _print_agreement(con, multi.agreement)
        con.print(f"run folders: {multi.out}/seed-<s>", markup=False)
        return
    result = run_one(cfg, out or default_run_folder(method), resume)
    if not main_rank:
        return
    summary = result.summary()
    if result.budget is not None:
        summary["budget"] = result.budget
    if json_out:
        emit_json(summary)
        return
    if "budget" in summary:
        _print_budget(con, summary["budget"])
    con.print(f"{chosen.title} over {len(result.ops)} operators ({', '.join(result.ops)}): "
              f"{summary['epochs_done']}/{cfg.epochs} epochs, "
              f"{sum(s or 0 for s in summary['seconds_per_epoch']):.0f} s, "
              f"peak memory {summary['peak_memory_bytes'] / 2**20:.0f} MiB ({summary['memory_kind']})")
    con.print(f"genotype: {result.genotype.to_literal()}", markup=False)
    con.print(f"skip_connect in the normal cell: {summary['normal_skip_connect']}")
    _print_decisiveness(con, summary)
    if result.loop.stopped_early:
        con.print(f"stopped after --stop-after {stop_after}; continue with --resume --out {result.run}")
    else:
        con.print(f"genotype file: {summary['genotype_file']}  (train it: edgenas train {summary['genotype_file']} "
                  f"--data ...)", markup=False)
    con.print(f"run folder: {result.run}")


def _print_decisiveness(con: Console, summary: dict[str, Any]) -> None:
    from edgenas.search.decisiveness import summary_line

    dec = summary.get("decisiveness")
    if dec:
        con.print(summary_line(dec), markup=False)
    if summary.get("note"):
        con.print(f"warning: {summary['note']} (search longer or with a larger --arch-lr)", markup=False)


def _print_agreement(con: Console, agreement: dict[str, Any]) -> None:
    from rich.table import Table

    rnd = agreement["random"]
    table = Table("cell", "node", "inputs", "operators", "(input, op)", "choices per seed",
                  title=f"seed agreement over {agreement['seeds']} seeds (share of a node's 2 edges, mean over "
                        f"{agreement['pairs']} seed pairs)")
    for cell, nodes in agreement["cells"].items():
        for n in nodes:
            table.add_row(cell, str(n["node"]), f"{n['inputs']:.2f}", f"{n['operators']:.2f}", f"{n['edges']:.2f}",
                          " | ".join(",".join(f"{o}@{i}" for o, i in c) for c in n["choices"]))
    con.print(table)
    o, r = agreement["overall"], rnd["overall"]
    con.print(f"overall: inputs {o['inputs']:.2f} (random {r['inputs']:.2f}), operators {o['operators']:.2f} "
              f"(random {r['operators']:.2f}), (input, op) {o['edges']:.2f} (random {r['edges']:.2f}); "
              f"random genotypes: {rnd['method']}", markup=False)


def _print_budget(con: Console, check: dict[str, Any]) -> None:
    from rich.table import Table

    c = check["setting"]
    table = Table(title=f"budget check: {c['setting']} C={c['C']}, {c['layers']} cells, "
                        f"{c['input_hw'][0]}x{c['input_hw'][1]}")
    units = check.get("latency_units")
    for col in ("genotype", "MACs", "latency ms" + (f" ({units})" if units else ""), "log-weight score"):
        table.add_column(col)
    limits = check["limits"]
    table.add_row("budget", f"{limits['macs'] / 1e6:.2f} M" if "macs" in limits else "-",
                  f"{limits['latency_ms']:.3f}" if "latency_ms" in limits else "-", "")
    for name in ("constrained", "unconstrained"):
        r = check[name]
        lat = r.get("latency_ms")
        table.add_row(name, f"{r['macs'] / 1e6:.2f} M", "-" if lat is None else f"{lat:.3f}", f"{r['score']:.3f}")
    con.print(table)
    r = check["constrained"]
    if r.get("latency_ms") is not None and units:
        con.print(f"predicted {r['latency_ms']:.3g} ms, whole network, {units} "
                  f"(budget {limits['latency_ms']:.3g} ms)")
